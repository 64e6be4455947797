"""Shared start of the bundled-model CE benchmarks: the common options, threads, seed, sizes and log."""
from __future__ import annotations

import argparse
import sys


def parse(doc: str, argv, extra=None):
    """``--json --fast --seed --threads`` (+ ``extra(parser)``) parsed from ``argv``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--fast", action="store_true", help="tiny sizes: a smoke run of the script")
    ap.add_argument("--seed", type=int, default=826)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    if extra is not None:
        extra(ap)
    return ap.parse_args(argv)


def start(args, full: dict, fast: dict):
    """Threads and seed set; → ``(cfg, log, lm)``: the sizes, a print to stdout (stderr with ``--json``, whose
    last stdout line is the JSON) and the bundled model."""
    import torch

    import routerlens_interp as rl
    from routerlens_interp.cli.common import seed_everything

    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    log = lambda *a: print(*a, file=sys.stderr if args.json else sys.stdout, flush=True)  # noqa: E731
    return (fast if args.fast else full), log, rl.load("toy")


def router_tuned(lm, train, dev, seed: int, max_steps=None):
    """Router tuning with the demo's recipe (``max_steps`` to cut it short) in a temporary directory: the adapter."""
    import tempfile
    from pathlib import Path

    import routerlens_interp as rl
    from routerlens_interp.pipeline.demo import RECIPES

    recipe = dict(RECIPES["router"], seed=seed, progress=False, eval_points=4)
    if max_steps:
        recipe["max_steps"] = max_steps
    with tempfile.TemporaryDirectory() as tmp:
        return rl.tune_router(lm, train, dev, out_dir=Path(tmp) / "rt", **recipe)
