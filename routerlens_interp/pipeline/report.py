"""Write analysis results to disk: CSV tables and HTML/PNG figures (used by the CLI and the demo)."""
from __future__ import annotations

import csv
import warnings
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
    CAG). AAG is measured over the examples whose gold answer occurs in their context; the others are
    counted (``n_skipped_aag``), and :class:`~routerlens_interp.errors.UserError` is raised before any
    tracing when no example is left (or ``layer`` is not one of the model's attention layers).
    Returns ``{"cag", "aag", "cag_abs", "aag_abs", "apg": lists per layer, "n", "n_aag",
    "n_skipped_aag", "files": [...]}``.
    """
    from .. import plot
    from ..analysis.gains import answer_probability_gain, attention_gain, token_attention_diff
    from ..errors import UserError

    if not data:
        raise UserError("no examples to analyse; give a data set with at least one example")
    layers = list(lm.spec.attention_layers)
    if layer is not None and layer not in layers:
        span = f"{layers[0]}-{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else str(layers)
        raise UserError(f"layer {layer} is not an attention layer of this model (layers {span}); "
                        f"pick one of them for the per-token figure (--layer)")
    n_aag = sum(len(lm.encode(e).answer_in_context) > 0 for e in data)
    if n_aag == 0:
        raise UserError(f"none of the {len(data)} examples has its gold answer inside its context, so AAG (attention "
                        "to the answer in the context) is undefined; use context-QA data whose answers occur in the "
                        "context (e.g. toy-conflict, nq-swap)")
    if n_aag < len(data):
        warnings.warn(f"AAG over {n_aag} of {len(data)} examples: {len(data) - n_aag} skipped (gold answer not in "
                      "their context)", stacklevel=2)
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
            "apg": p.apg.tolist(), "n": g.n, "n_aag": g.n - g.n_skipped_aag, "n_skipped_aag": g.n_skipped_aag,
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
