"""``make figures``: regenerate the README's figures in ``assets/`` from the project's own code.

Runs the full demo on the bundled model (seeded), then copies its PNGs and ``report.json`` into
``assets/`` under stable names, and redraws the toy model's training curves from its log.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

KEEP = {"masking.png": "masking.png", "expert_counts.png": "expert_counts.png", "expert_diff.png": "expert_diff.png",
        "analysis/attention_gain.png": "attention_gain.png", "analysis/apg.png": "apg.png",
        "knockout.png": "knockout.png"}


def toy_training_figure(out: Path) -> Path:
    """Loss and EM curves of the bundled model's pretraining → ``out/toy_training.png``."""
    from .. import plot
    from ..model import TOY_DIR
    from ..toy.figure import training_figure

    return plot.save_figures({"toy_training": training_figure(TOY_DIR / "training_log.jsonl")}, out, html=False,
                             png=True)[0]


def main(argv: list[str] | None = None) -> None:
    from ..train.seed import seed_everything
    from .demo import run_demo

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="assets")
    p.add_argument("--seed", type=int, default=826)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: fastest for the toy model)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from ..plot.export import resolve_png

    png = resolve_png("auto")  # said once when no browser: the figures then come as HTML
    seed_everything(args.seed)
    ext = "png" if png else "html"
    with tempfile.TemporaryDirectory() as tmp:
        report = run_demo(Path(tmp), seed=args.seed, png=png)
        for src, dst in KEEP.items():
            src, dst = src.replace(".png", f".{ext}"), dst.replace(".png", f".{ext}")
            shutil.copy(Path(tmp) / src, out / dst)
        for f in (Path(tmp) / "analysis").glob(f"token_attention_diff_layer*.{ext}"):
            shutil.copy(f, out / f"token_attention_diff.{ext}")
        if not png:
            shutil.copy(Path(tmp) / "plotly.min.js", out / "plotly.min.js")
    (out / "demo_report.json").write_text(json.dumps(report, indent=2, default=float))
    if png:
        toy_training_figure(out)
    print(f"figures → {out}" + ("" if png else f" as HTML (no PNGs: no Chromium; the PNGs in {out} were not updated)"))


if __name__ == "__main__":
    main()
