"""What every ``routerlens`` subcommand shares: the common options, seeding, and model loading."""
from __future__ import annotations

import argparse

from .checks import add_load_options, load_model, load_options, positive_int, seed_int

__all__ = ["seed_everything", "_common", "_load"]


def seed_everything(seed: int) -> None:
    """:func:`routerlens_interp.train.seed.seed_everything`, imported when called (``--help`` stays fast)."""
    from ..train.seed import seed_everything as seed_all

    seed_all(seed)


def _common(p: argparse.ArgumentParser, data: bool = True, model: bool = True, threads_default=None) -> None:
    if model:
        p.add_argument("--model", default="toy", help="'toy' (bundled), a hub id or a local directory (default: toy)")
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cpu); the weights are read "
                                                      "straight onto it")
        add_load_options(p)
    if data:
        p.add_argument("--data", required=True,
                       help="a hub name (squad, nq-swap, confiqa = ConFiQA-MC, the paper's; confiqa-qa, confiqa-mr, "
                            "confiqa-mc; nq, hotpotqa; counterfact, memotrap, gigaword, mmlu[:SUBJECT]), a bundled toy name (toy-open, toy-conflict, toy-memory), a "
                            "directory of split files (train.json, dev.json, test.json), or one JSON/JSONL (or MemoTrap CSV) file")
        p.add_argument("--split", default=None,
                       help="train, dev (alias validation), test, or all (default: test for evaluation, train for "
                            "training). Dev never overlaps test: squad/nq/hotpotqa test = the hub's validation, dev "
                            "= a fixed 5 %% of the hub's train; nq-swap/confiqa are cut 80/10/10 (train/dev/test) "
                            "by a fixed hash. A single file without --split is used whole (but training without "
                            "--dev trains on its train part and selects on its dev part); with --split it is cut "
                            "80/10/10 the same way")
        p.add_argument("--limit", type=positive_int, default=None, help="use only the first N examples")
    p.add_argument("--seed", type=seed_int, default=826, help="random seed (default: 826, the paper's)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--threads", type=positive_int, default=threads_default,
                   help="torch CPU threads (default: %(default)s; None = torch's own). One thread is fastest for "
                        "small models on busy cores")


def _load(args):
    seed_everything(args.seed)
    return load_model(args.model, **load_options(args))
