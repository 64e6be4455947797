"""One seed for Python, NumPy and torch (every command's ``--seed``), and torch's deterministic algorithms.

Seeding alone is not enough for "same seed, same numbers": with more than one CPU thread, the backward of the
experts' token gather (``hidden[token_idx]``: an accumulating ``index_put_``) adds its rows in whatever order
the threads finish, so two runs of router tuning with 2 threads gave different adapters (measured: 4 runs, 4
checksums; 1 thread: identical). torch's deterministic algorithms fix the order (+5 % per training step on the
bundled model, 2 threads).
"""
from __future__ import annotations

import os
import random
from contextlib import contextmanager


def _deterministic_on() -> None:
    import torch

    # cuBLAS is deterministic only with a fixed workspace; read when torch creates its handles, so set early
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: an op without a deterministic implementation warns instead of stopping a user's run
    torch.use_deterministic_algorithms(True, warn_only=True)


def seed_rngs(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) random number generators."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_everything(seed: int) -> None:
    """:func:`seed_rngs` and torch's deterministic algorithms on for the process, so the same seed gives the
    same numbers on the same machine, whatever the number of threads."""
    seed_rngs(seed)
    _deterministic_on()


@contextmanager
def deterministic():
    """torch's deterministic algorithms inside the block (a training run, an attribution backward), the
    caller's setting restored after it: library calls stay reproducible without changing a notebook's mode."""
    import torch

    was, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    _deterministic_on()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn)
