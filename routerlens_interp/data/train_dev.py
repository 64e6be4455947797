"""The data of a training command: train, a dev set for checkpoint selection, and the proof that the dev
set shares no example with the test split — all read before any model is loaded."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import UserError
from ..examples import QAExample
from .loaders import default_split, is_directory, is_single_file, load_dataset, split_files
from .splits import check_disjoint, normalize_split

__all__ = ["TrainDevData", "train_dev_data", "test_split_of"]


@dataclass
class TrainDevData:
    """``train`` and ``dev`` examples; ``n_test``: how many test examples dev was checked against
    (``None`` when the data has no test split); ``notes``: one-line remarks for the user."""

    train: list[QAExample]
    dev: list[QAExample]
    n_test: int | None = None
    notes: list[str] = field(default_factory=list)


def test_split_of(data: str | os.PathLike, cut_file: bool = True) -> list[QAExample] | None:
    """The test split of ``data``: hub and toy names, a directory's test file, a single file's 10 % test
    part (only with ``cut_file``); ``None`` when there is none."""
    path = os.fspath(data)
    if is_single_file(path):
        return load_dataset(path, split="test") if cut_file else None
    if is_directory(path) and "test" not in split_files(path):
        return None
    return load_dataset(path, split="test")


def train_dev_data(data: str | os.PathLike, split: str | None = None, dev: str | os.PathLike | None = None,
                   dev_split: str | None = None, limit: int | None = None,
                   drop_dev_overlap: bool = False) -> TrainDevData:
    """Train and dev examples for ``tune-router`` / ``ceft`` / ``finetune``, dev checked against test.

    - ``split`` (default ``train``) of ``data`` trains; ``limit`` keeps its first examples.
    - Without ``dev``: ``dev_split`` (default ``dev``) of ``data`` selects the checkpoint. For a single
      file that is its dev part (10 %, :mod:`.splits`); it trains on its train part (80 %) and its test
      part (10 %) is left for ``evaluate --split test``.
    - With ``dev``: that data set (its ``dev_split``; a file without one is used whole) selects; a single
      file ``data`` without ``split`` then trains whole.
    - Dev is checked against the test split of ``data`` (:func:`test_split_of`;
      :func:`~routerlens_interp.data.splits.check_disjoint`): a shared example is a UserError, or is
      dropped from dev with ``drop_dev_overlap`` (counted in ``notes``).
    """
    data = os.fspath(data)
    single = is_single_file(data)
    whole_file = single and split is None and dev is not None
    if not whole_file and split is None:
        split = "train"
    part = None if whole_file else normalize_split(split)
    if dev is None and part == "all":
        raise UserError(f"--split all trains on every example of {data}, so none is left to choose the checkpoint on; "
                        "give a --dev data set (or train on --split train)")
    train = load_dataset(data, split=None if whole_file else split, limit=limit)
    if dev is None:
        dev_examples = load_dataset(data, split=dev_split or "dev")
        dev_name = f"{data} ({normalize_split(dev_split or 'dev')})"
    else:
        dev_examples = load_dataset(dev, split=default_split(dev, dev_split, "dev"))
        dev_name = os.fspath(dev)
    if not train:
        raise UserError(f"{data}: no training examples (split {part or 'whole file'}); check --data, --split and "
                        "--limit")
    if not dev_examples:
        raise UserError(f"{dev_name}: the dev set is empty; give another --dev or --dev-split")
    notes = []
    test = test_split_of(data, cut_file=not whole_file)
    if test is None:
        notes.append(f"{data} has no test split, so the dev set was not checked against one")
    else:
        n_dev = len(dev_examples)
        dev_examples = check_disjoint(dev_examples, test, name=f"{dev_name} vs the test split of {data}",
                                      drop=drop_dev_overlap)
        if len(dev_examples) < n_dev:
            notes.append(f"dropped {n_dev - len(dev_examples)} of {n_dev} dev examples that equal test examples of "
                         f"{data} (same context and question)")
        if not dev_examples:
            raise UserError(f"{dev_name}: every dev example is also a test example of {data}; give another --dev")
    if single and not whole_file:
        notes.append(f"{data} is one file, cut by a fixed hash into train / dev / test parts (80/10/10): training on "
                     f"its {part} part ({len(train)} examples)"
                     + (f", choosing the checkpoint on its dev part ({len(dev_examples)})" if dev is None else "")
                     + f"; its test part ({len(test)}) is held out: evaluate on it with --data {data} --split test")
    return TrainDevData(train=train, dev=dev_examples, n_test=None if test is None else len(test), notes=notes)
