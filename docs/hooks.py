"""MkDocs hooks, and the renderer of the bundled model's headline table.

- ``on_files``: the figures in ``assets/*.png`` (written by the project's own code: ``make figures``, the
  browser test's screenshot) are served as ``assets/<name>.png`` of the site, without a copy in ``docs/``.
- ``on_page_content``: the docstrings' Sphinx roles (``:class:`~a.b.C` ``) are shown as code (``C``), since
  mkdocstrings renders docstrings as Markdown and would print the role itself.
- ``on_page_markdown``: ``<!-- demo-report:table -->`` and ``<!-- demo-report:mechanisms -->`` in a page become
  the headline table and the per-layer mechanisms of ``assets/demo_report.json`` (``make figures`` writes it),
  so the docs always show the measured numbers.

The README holds the same table verbatim between ``<!-- demo-table:start -->`` and ``<!-- demo-table:end -->``
(``tests/test_docs.py`` checks it); ``python docs/hooks.py --readme`` rewrites it there (``make figures`` does,
after writing a new report), ``python docs/hooks.py`` prints it.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
REPORT = ASSETS / "demo_report.json"
TABLE, MECHANISMS = "<!-- demo-report:table -->", "<!-- demo-report:mechanisms -->"
README_START, README_END = "<!-- demo-table:start -->", "<!-- demo-table:end -->"


def _paper() -> dict:
    """The paper's OLMoE / NQ-Swap EM per row of the table (``routerlens_interp.pipeline.paper``)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from routerlens_interp.pipeline.paper import PAPER_NUMBERS

    p = PAPER_NUMBERS[("OLMoE-1B-7B", "nq-swap")]
    em = lambda s: s.split("/")[0]
    return {"base": em(p["base"]), "router_tuned": em(p["router_tuned"]), "masked_ce": p["masked_ce_em"],
            "masked_random": f"{p['masked_other_em']} (other experts)", "ceft": p["ceft_em"], "fft": p["fft_em"]}


def demo_table(report: dict) -> str:
    """The headline table of a ``routerlens demo`` report: one row per model / mask, EM columns ×100 (1 decimal),
    the paper's OLMoE NQ-Swap EM beside."""
    n, paper = report["n_ce_per_layer"], _paper()
    rnd, ce, ft = report["masked_random"], report["ceft"], report["fft"]
    share = 100 * ce["trainable_params"] / ft["trainable_params"]
    rows = [("base", "base"),
            ("router_tuned", "router-tuned (routers only, 1.7 % of weights)"),
            ("masked_ce", f"router-tuned, {n} CEs/layer masked"),
            ("masked_random", f"router-tuned, {n} random non-CE experts/layer masked ({rnd['draws']} draws, "
                              f"±{rnd['em_ci95']:.1f} CI95)"),
            ("masked_grown", f"router-tuned, {n} experts whose usage grew most masked"),
            ("masked_base_busiest", f"router-tuned, the base model's {n} busiest experts masked"),
            ("ceft", f"CEFT (the {n} CEs/layer, {ce['trainable_params']:,} params = {share:.1f} % of FFT)"),
            ("fft", f"FFT ({ft['trainable_params']:,} params)")]
    lines = ["| | conflict EM | memory rate | open-book EM | recall | paper (OLMoE, NQ-Swap EM) |",
             "|---|---|---|---|---|---|"]
    for key, label in rows:
        r = report[key]
        cells = [f"{r[c]:.1f}" for c in ("em", "memory_rate", "open_em", "recall")]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {paper.get(key, '—')} |")
    return "\n".join(lines)


def mechanisms(report: dict) -> str:
    """CAG / AAG / APG per layer and the knockout accuracies of a demo report, as a Markdown table."""
    layers = range(len(report["cag"]))
    up = lambda xs: sum(xs[len(xs) // 2:]) / len(xs[len(xs) // 2:])
    ko = report["knockout"]
    lines = ["| layer | " + " | ".join(str(l) for l in layers) + " | upper-half mean |",
             "|---|" + "---|" * (len(layers) + 1)]
    for key in ("cag", "aag", "apg"):
        xs = report[key]
        lines.append(f"| {key.upper()} | " + " | ".join(f"{x:+.2f}" for x in xs) + f" | {up(xs):+.3f} |")
    acc = dict(zip(ko["labels"], ko["accuracy"]))
    lines.append(f"| knockout: first answer token correct (%), none = {ko['none']:.1f} | "
                 + " | ".join(f"{acc[str(l)]:.1f}" for l in layers) + f" | all layers: {acc['all']:.1f} |")
    return "\n".join(lines)


_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj|py:\w+):<code>(~?)([^<]+)</code>")


def strip_roles(html: str) -> str:
    """``:class:<code>~a.b.C</code>`` → ``<code>C</code>``; without ``~`` the full path stays."""
    return _ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>", html)


def on_page_content(html, page, config, files):
    """Show the docstrings' Sphinx roles as plain code (see the module docstring)."""
    return strip_roles(html)


def on_files(files, config):
    """Add every ``assets/*.png`` of the repository to the site's files (pages link ``assets/x.png``)."""
    from mkdocs.structure.files import File

    for png in sorted(ASSETS.glob("*.png")):
        files.append(File(f"assets/{png.name}", src_dir=str(ROOT), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    """Replace the demo-report markers with the numbers of ``assets/demo_report.json``."""
    if TABLE in markdown or MECHANISMS in markdown:
        report = json.loads(REPORT.read_text(encoding="utf-8"))
        markdown = markdown.replace(TABLE, demo_table(report)).replace(MECHANISMS, mechanisms(report))
    return markdown


def write_readme(readme: Path = ROOT / "README.md") -> None:
    """Replace the README's table between its demo-table markers with the one of ``assets/demo_report.json``."""
    text = readme.read_text(encoding="utf-8")
    a, b = text.index(README_START) + len(README_START), text.index(README_END)
    table = demo_table(json.loads(REPORT.read_text(encoding="utf-8")))
    readme.write_text(text[:a] + "\n" + table + "\n" + text[b:], encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] == ["--readme"]:
        write_readme()
    else:
        print(demo_table(json.loads(REPORT.read_text(encoding="utf-8"))))
