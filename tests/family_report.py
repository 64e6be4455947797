"""Render the family suite's results (``ROUTERLENS_FAMILY_REPORT`` JSON) as the README's architectures table.

``python tests/family_report.py assets/families.json README.md`` replaces the text between the
``<!-- families:start -->`` and ``<!-- families:end -->`` markers; ``make families`` runs the suite first.
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


def render(report: dict) -> str:
    res, cases = report["results"], report["cases"]
    # rows "<family> (remote code)" (tests/test_remote_code.py) are layouts, not transformers families: not counted
    native = {f: r for f, r in res.items() if not f.endswith("(remote code)")}
    remote = sorted(set(res) - set(native))
    full = [f for f in native if all(mark(native[f].get(k))[0].startswith("✓") or k == "tl" for k, _ in STAGES[:-1])
            and "knockout" not in native[f]]
    loaded = [f for f in native if not native[f]["load"].startswith("refused")]
    extra = (f" Rows marked (remote code) are checkpoints whose own modeling code keeps the experts as an nn.ModuleList "
             f"of per-expert MLPs, loaded with trust_remote_code=True ({', '.join(remote)}): the same stage checks, "
             "in tests/test_remote_code.py.") if remote else ""
    lines = [f"{len(loaded)} of {len(native)} MoE families of transformers load and pass every stage they are not refused "
             f"with a reason; {len(full)} pass every stage with no refusal at all; "
             f"{len(native) - len(loaded)} are refused by name at load with the reason. "
             "✓ passes, ✓* passes with the note below, ✗ refused with the reason below, · not run." + extra, "",
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


def main(report_path: str, readme: str) -> None:
    table = render(json.load(open(report_path)))
    text = open(readme).read()
    a, b = text.index(START) + len(START), text.index(END)
    open(readme, "w").write(text[:a] + "\n" + table + "\n" + text[b:])


if __name__ == "__main__":
    main(*sys.argv[1:3])
