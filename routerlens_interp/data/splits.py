"""Disjoint train / dev / test parts, the same on every machine, and the check that dev never meets test.

**Our split names** are ``train``, ``dev`` (alias ``validation``) and ``test``; ``all`` asks for
everything a source holds, and is never a default.

**How a source without three splits is cut.** Examples are grouped by their *key*, the context and
the question with white space normalised (:func:`example_key`); the distinct keys are ranked by
``sha256(SPLIT_SALT + key)`` and the first ranks go to test, the next to dev, the rest to train.
So the cut depends neither on ``--seed`` nor on the order of the rows, copies of one example (NQ-Swap
has some) always land in the same part, and within a part the source's order is kept.

- one-split hub sets (NQ-Swap's ``dev``, each ConFiQA file) and a single local file:
  :data:`SINGLE_SPLIT_FRACTIONS` = test 10 %, dev 10 %, train the rest (of the distinct keys, each
  rounded, at least one each; 3 keys at least);
- two-split hub sets (SQuAD, NQ and HotpotQA of MRQA: hub ``train`` / ``validation``): test = the hub's
  ``validation``; dev = :data:`DEV_FROM_TRAIN` = 5 % of the hub's ``train``; train = the rest of it.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ..errors import UserError
from ..examples import QAExample

__all__ = ["SPLIT_NAMES", "SPLIT_SALT", "SINGLE_SPLIT_FRACTIONS", "DEV_FROM_TRAIN", "normalize_split",
           "example_key", "cut", "check_disjoint"]

#: Accepted split names (``validation`` is read as ``dev``).
SPLIT_NAMES = ("train", "dev", "test", "all")
#: Fixed salt of the hash that ranks the keys: a documented constant, independent of ``--seed``, so
#: train, dev and test are the same rows for everyone. Changing it changes every cut.
SPLIT_SALT = "routerlens-split-v1:"
#: Parts of a source published as one split (and of a single local file).
SINGLE_SPLIT_FRACTIONS = {"train": 0.8, "dev": 0.1, "test": 0.1}
#: Share of a two-split hub set's ``train`` that becomes our ``dev``.
DEV_FROM_TRAIN = 0.05


def normalize_split(split: str) -> str:
    """``train`` / ``dev`` / ``test`` / ``all`` (``validation`` → ``dev``); UserError for anything else."""
    key = str(split).strip().lower()
    key = {"validation": "dev", "val": "dev", "valid": "dev"}.get(key, key)
    if key not in SPLIT_NAMES:
        raise UserError(f"unknown split {split!r}; choose train, dev (alias validation), test, or all (everything "
                        "the source holds)")
    return key


def _norm(text: str) -> str:
    return " ".join(str(text).split())


def example_key(ex: QAExample) -> str:
    """What makes two examples "the same": context and question, white space normalised."""
    return _norm(ex.context) + "\x1f" + _norm(ex.question)


def _rank(key: str) -> bytes:
    return hashlib.sha256((SPLIT_SALT + key).encode("utf-8")).digest()


def cut(examples: Sequence[QAExample], fractions: dict[str, float], rest: str = "train",
        source: str = "data") -> dict[str, list[QAExample]]:
    """Cut ``examples`` into disjoint parts: ``fractions`` (e.g. ``{"test": .1, "dev": .1}``, taken in that
    order from the hash ranking of the distinct keys, each ``max(1, round(f * n_keys))``) and ``rest``
    (everything else). Returns ``{part: [QAExample]}`` in the source's order; UserError when there are
    too few distinct examples for every part to get one."""
    keys = [example_key(ex) for ex in examples]
    distinct = sorted(set(keys), key=_rank)
    sizes = {name: max(1, round(f * len(distinct))) for name, f in fractions.items()}
    if sum(sizes.values()) >= len(distinct):
        raise UserError(f"{source}: {len(distinct)} distinct examples are too few to cut into "
                        f"{', '.join([*fractions, rest])} parts; give a larger file, or a separate --dev file "
                        "(a file without --split is used whole)")
    part_of, at = {}, 0
    for name, size in sizes.items():
        for k in distinct[at:at + size]:
            part_of[k] = name
        at += size
    out = {name: [] for name in [*fractions, rest]}
    for ex, k in zip(examples, keys):
        out[part_of.get(k, rest)].append(ex)
    return out


def check_disjoint(dev: Sequence[QAExample], test: Sequence[QAExample], name: str = "data",
                   drop: bool = False) -> list[QAExample]:
    """Refuse a dev set that shares an example (same context and question, white space normalised) with
    the test set: checkpoint selection on it would see the test set.

    Returns ``dev`` unchanged; with ``drop=True`` returns it without the shared examples (their number
    is in the UserError otherwise). Raises :class:`~routerlens_interp.errors.UserError` naming the data
    set, how many are shared and the first one.
    """
    seen = {example_key(ex) for ex in test}
    shared = [i for i, ex in enumerate(dev) if example_key(ex) in seen]
    if not shared:
        return list(dev)
    if drop:
        bad = set(shared)
        return [ex for i, ex in enumerate(dev) if i not in bad]
    first = dev[shared[0]]
    where = first.meta.get("record", shared[0]) if isinstance(first.meta, dict) else shared[0]
    raise UserError(f"{name}: {len(shared)} of {len(dev)} dev examples have the context and question of a test "
                    f"example (first: dev record {where}, question {first.question[:60]!r}), so checkpoint "
                    "selection would see the test set; drop them (--drop-dev-overlap, or check_disjoint(..., "
                    "drop=True)) or give a dev set disjoint from the test split (--dev)")
