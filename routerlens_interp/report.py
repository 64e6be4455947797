"""Write analysis results to disk: CSV tables and HTML/PNG figures (used by the CLI and the demo)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def write_csv(rows: list[dict], path: Path) -> None:
    """One dict per row → CSV with the first row's keys as header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def write_analysis(lm, tuned, data, out: Path, layer: int | None = None, png: bool = True) -> dict:
    """CAG/AAG/APG of ``tuned`` vs ``lm`` on ``data`` → ``out/{attention_gain,apg}.csv`` + figures.

    ``layer`` picks the layer of the per-token attention figure (default: the layer with the largest
    CAG). Returns ``{"cag", "aag", "cag_abs", "aag_abs", "apg": lists per layer, "files": [...]}``.
    """
    from . import plot
    from .analysis import answer_probability_gain, attention_gain, token_attention_diff

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    g = attention_gain(lm, tuned, data)
    p = answer_probability_gain(lm, tuned, data)
    write_csv(g.table(), out / "attention_gain.csv")
    write_csv(p.table(), out / "apg.csv")
    if layer is None:
        layer = int(g.layers[int(np.nanargmax(g.cag))]) if np.isfinite(g.cag).any() else g.layers[-1]
    ex = next((e for e in data if e.context and any(a in e.context for a in e.answers)), data[0])
    td = token_attention_diff(lm, tuned, ex, layer)
    hl = _ranges(td["answer_in_context"])
    figs = {"attention_gain": plot.attention_gain(g), "apg": plot.answer_probability_gain(p),
            f"token_attention_diff_layer{layer}": plot.token_attention_diff(
                td["tokens"], td["diff"], title=f"Attention from the last prompt token, tuned − base (layer {layer})",
                highlight=hl)}
    files = plot.save_figures(figs, out, png=png)
    return {"cag": g.cag.tolist(), "aag": g.aag.tolist(), "cag_abs": g.cag_abs.tolist(), "aag_abs": g.aag_abs.tolist(),
            "apg": p.apg.tolist(), "n": g.n, "n_skipped_aag": g.n_skipped_aag,
            "files": [str(f) for f in files] + [str(out / "attention_gain.csv"), str(out / "apg.csv")]}


def _ranges(pos: list[int]) -> list[tuple[int, int]]:
    """Sorted positions → contiguous ``(start, end)`` ranges (end exclusive)."""
    out: list[tuple[int, int]] = []
    for i in sorted(pos):
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out
