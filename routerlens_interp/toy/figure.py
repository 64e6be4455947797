"""Loss and EM curves of a pretraining run (plotly; PNG export needs kaleido + Chromium).

    python -m routerlens_interp.toy.figure --input routerlens_interp/toy/weights/training_log.jsonl \
        --out assets/toy_training.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def training_figure(log_path: str | Path):
    """A two-panel plotly figure: loss (left) and dev metrics in % (right) against training tokens."""
    from plotly.subplots import make_subplots

    recs = [json.loads(x) for x in Path(log_path).read_text().splitlines() if x.strip()]
    recs = [r for r in recs if "step" in r]
    tok = [r["tokens"] / 1e6 for r in recs]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training loss (weighted next-token CE)",
                                                        "dev metrics, greedy decoding (%)"))
    fig.add_scatter(x=tok, y=[r["loss"] for r in recs], name="loss", row=1, col=1)
    names = {"open_em": "open-book EM (unseen people)", "recall": "closed-book recall",
             "conflict_em": "conflict EM (context answer)", "memory_rate": "conflict memory rate"}
    for k, label in names.items():
        fig.add_scatter(x=tok, y=[r[k] for r in recs], name=label, mode="lines+markers", row=1, col=2)
    starts = {}
    for r, t in zip(recs, tok):
        starts.setdefault(r.get("stage", 1), t)
    for st, t in starts.items():  # multi-stage recipes: mark where each later stage begins
        if st > 1:
            for col in (1, 2):
                fig.add_vline(x=t, line_dash="dot", line_color="grey", row=1, col=col)
    fig.update_xaxes(title_text="training tokens (millions)")
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(width=1100, height=420, template="plotly_white", legend=dict(orientation="h", y=-0.25))
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True, help="log.jsonl of a pretraining run")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    training_figure(a.input).write_image(a.out, scale=2)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
