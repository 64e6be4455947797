"""Render the family suite's results (``ROUTERLENS_FAMILY_REPORT`` JSON) as the docs' architectures table.

``python tests/family_report.py assets/families.json docs/architectures.md README.md`` replaces the text between
the ``<!-- families:start -->`` and ``<!-- families:end -->`` markers: in the docs page with the full table and
its notes, in the README with the counts and a link to that page. ``make families`` runs the suite first.
"""
from __future__ import annotations

import json
import sys

STAGES = [("load", "load"), ("count", "count"), ("reroute", "reroute"), ("zero", "zero"), ("trace", "trace"),
          ("lens", "lens"), ("tl", "TransformerLens")]
START, END = "<!-- families:start -->", "<!-- families:end -->"


def mark(status: str | None) -> tuple[str, str | None]:
    """Status text → (cell, reason or None)."""
    if status is None:
        return "·", None
    if status.startswith("ok") or status.startswith("exact"):
        rest = status.split("(", 1)[1].rstrip(")") if "(" in status and status.startswith("exact") else None
        if status.startswith("ok;") or (status.startswith("exact") and "refused" in status):
            return "✓*", status.split(";", 1)[1].strip()
        return "✓", None
    if status.startswith("partial"):
        return "✓*", status
    return "✗", status


def counts(report: dict) -> dict:
    """``{"families", "loaded", "full", "refused", "tl"}``: how many families the suite tried, load, pass every
    stage with no refusal, are refused at load, and have a working TransformerLens bridge."""
    # rows "<family> (remote code)" (tests/test_remote_code.py) are layouts, not transformers families: not counted
    res = {f: r for f, r in report["results"].items() if not f.endswith("(remote code)")}
    full = [f for f in res if all(mark(res[f].get(k))[0].startswith("✓") or k == "tl" for k, _ in STAGES[:-1])
            and "knockout" not in res[f]]
    loaded = [f for f in res if not res[f]["load"].startswith("refused")]
    tl = [f for f in res if mark(res[f].get("tl"))[0].startswith("✓")]
    return {"families": len(res), "loaded": len(loaded), "full": len(full), "refused": len(res) - len(loaded),
            "tl": len(tl)}


def remote_rows(report: dict) -> list[str]:
    """The remote-code layouts checked beside the families (``"<family> (remote code)"`` rows)."""
    return sorted(f for f in report["results"] if f.endswith("(remote code)"))


def headline(report: dict) -> str:
    """The counts as one sentence."""
    c = counts(report)
    return (f"{c['loaded']} of {c['families']} MoE families of transformers load and pass every stage they are not "
            f"refused with a reason; {c['full']} pass every stage with no refusal at all; "
            f"{c['refused']} are refused by name at load with the reason.")


def summary(report: dict, link: str = "docs/architectures.md") -> str:
    """The README's part: the counts, the TransformerLens coverage, and a link to the full table."""
    c = counts(report)
    remote = remote_rows(report)
    extra = (f" Remote-code checkpoints that keep their experts as an nn.ModuleList of per-expert MLPs "
             f"({', '.join(r.replace(' (remote code)', '') for r in remote)}, loaded with trust_remote_code=True) "
             "pass the same stage checks.") if remote else ""
    return (headline(report) + f" The TransformerLens backend bridges {c['tl']} of them (the nnsight backend traces "
            f"every family that loads).{extra} Full table, with the reason for every refusal: [{link}]({link}).")


def render(report: dict) -> str:
    """The full table (one row per family, one column per stage) and its notes, as Markdown."""
    res, cases = report["results"], report["cases"]
    remote = remote_rows(report)
    native = {f: r for f, r in res.items() if f not in remote}
    extra = (f" Rows marked (remote code) are checkpoints whose own modeling code keeps the experts as an nn.ModuleList "
             f"of per-expert MLPs, loaded with trust_remote_code=True: the same stage checks, in "
             "tests/test_remote_code.py.") if remote else ""
    lines = [headline(report) + " ✓ passes, ✓* passes with the note below, ✗ refused with the reason below, "
             "· not run." + extra, "",
             "| family | routing rule | " + " | ".join(h for _, h in STAGES) + " |",
             "|---|---|" + "---|" * len(STAGES)]
    notes = []
    for fam in sorted(res):
        row, why = [], []
        for key, head in STAGES:
            cell, reason = mark(res[fam].get(key))
            row.append(cell)
            if reason:
                why.append(f"{head}: {reason}")
        if "knockout" in res[fam]:
            row[4] = "✓*"
            why.append(f"knockout: {res[fam]['knockout']}")
        mm = " (multimodal)" if cases.get(fam, {}).get("multimodal") else ""
        lines.append(f"| {fam}{mm} | {cases.get(fam, {}).get('routing', '')} | " + " | ".join(row) + " |")
        notes += [f"- **{fam}** — {w.split('. Supported:')[0]}" for w in why
                  if not w.startswith("TransformerLens: no adapter")]
    no_tl = sorted(f for f in native if str(native[f].get("tl", "")).startswith("no adapter"))
    lines += ["", "Notes:", *notes, "",
              f"TransformerLens 4.3 has no working bridge for {len(no_tl)} families ({', '.join(no_tl)}); "
              "the nnsight backend traces all of them" + (" (nor for the remote-code rows)." if remote else ".")]
    return "\n".join(lines)


def replace_between_markers(path: str, body: str) -> None:
    """Write ``body`` between the ``START`` and ``END`` markers of the file at ``path`` (the rest is kept)."""
    text = open(path, encoding="utf-8").read()
    a, b = text.index(START) + len(START), text.index(END)
    open(path, "w", encoding="utf-8").write(text[:a] + "\n" + body + "\n" + text[b:])


def main(report_path: str, page: str, readme: str | None = None) -> None:
    """Full table into ``page`` (docs/architectures.md); counts + link into ``readme`` when given."""
    report = json.load(open(report_path, encoding="utf-8"))
    replace_between_markers(page, render(report))
    if readme:
        replace_between_markers(readme, summary(report))


if __name__ == "__main__":
    main(*sys.argv[1:4])
