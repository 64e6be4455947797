"""``load_dataset``: local JSON/JSONL files, directories of split files, hub data sets and the bundled toy
data → QAExamples, with train / dev / test always disjoint (see :mod:`.splits`)."""
from __future__ import annotations

import json
import random
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

from ..errors import UserError
from ..examples import QAExample
from .formats import (describe_formats, flatten_mrqa_nested, flatten_squad_nested, is_mrqa_nested,
                      is_squad_nested, normalize_format, record_to_example, records_format)
from .hub import CONFIQA_URL, HUB_DATASETS, HubDataUnavailable, HubSpec, fetch_rows
from .splits import DEV_FROM_TRAIN, SINGLE_SPLIT_FRACTIONS, cut, normalize_split

__all__ = ["load_dataset", "read_records", "records_to_examples", "HubSpec", "HUB_DATASETS", "TOY_NAMES",
           "SINGLE_SPLIT_FRACTIONS", "DEV_FROM_TRAIN", "CONFIQA_URL", "HubDataUnavailable", "accepted_names",
           "split_files", "is_single_file", "is_directory", "default_split"]

log = logging.getLogger(__name__)

TOY_NAMES = ("toy-open", "toy-conflict", "toy-memory", "toy2-open", "toy2-conflict", "toy2-memory")
#: The file names a directory of split files may use for each of our splits (``.json`` or ``.jsonl``).
SPLIT_FILE_STEMS = {"train": ("train",), "dev": ("dev", "validation", "val"), "test": ("test",)}
_SUFFIXES = (".json", ".jsonl", ".ndjson")


def accepted_names() -> str:
    """Human-readable list of what ``load_dataset`` accepts."""
    return (f"  hub names: {', '.join(HUB_DATASETS)} (confiqa = ConFiQA-MC)\n"
            f"  bundled toy data: {', '.join(TOY_NAMES)}\n"
            f"  a directory holding train.json / dev.json / test.json (or .jsonl; dev may be validation.json)\n"
            f"  or a path to a .json / .jsonl file in one of these forms:\n{describe_formats()}")


# --- local files ------------------------------------------------------------------------------
def read_records(path: str | Path) -> list:
    """Raw records of a JSON file (a list, ``{"data": [...]}``, or nested SQuAD v1.1) or a JSONL file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = p.read_bytes()[:err.start].count(b"\n") + 1
        raise UserError(f"{p} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}, line "
                        f"{line}); save it as UTF-8") from None
    if p.suffix.lower() in (".jsonl", ".ndjson"):
        return _jsonl(text, p)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        if "Extra data" in str(err):  # a .json file holding one object per line
            return _jsonl(text, p)
        raise UserError(f"{p} is not valid JSON ({err}); fix the file (one JSON list, or one object per line)") \
            from None
    if isinstance(obj, list):
        return obj
    if is_squad_nested(obj):
        return flatten_squad_nested(obj)
    if isinstance(obj, Mapping) and isinstance(obj.get("data"), list):
        return obj["data"]
    if isinstance(obj, Mapping):
        return [obj]
    raise ValueError(f"{p}: expected a JSON list of records or {{\"data\": [...]}}; got {type(obj).__name__}")


def _jsonl(text: str, p: Path) -> list:
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{p}, line {i}: not valid JSON ({err}); fix or remove that line") from None
    return rows


def records_to_examples(records, format: str | None = None, source: str = "") -> list[QAExample]:
    """Convert raw records (dicts) to QAExamples; the form is detected from the fields unless given.

    Records without any gold answer (e.g. SQuAD 2.0's unanswerable questions) are skipped with a
    warning. ValueError, listing the accepted field sets, when a record does not fit the form.
    """
    records = list(records)
    if not records:
        return []
    if is_squad_nested(records[0]):
        records = [r for obj in records for r in flatten_squad_nested(obj)]
    elif any(is_mrqa_nested(r) for r in records[:2]):
        records = flatten_mrqa_nested(records)
        if not records:
            return []
    fmt = normalize_format(format) if format is not None else records_format(records)
    out, skipped = [], 0
    for i, rec in enumerate(records):
        try:
            ex = record_to_example(rec, fmt, i)
        except ValueError as err:
            where = f"{source}: " if source else ""
            raise UserError(f"{where}record {i}: {err}") from None
        if ex is None:
            skipped += 1
            continue
        if source and "source" not in ex.meta:
            ex.meta["source"] = source
        ex.meta.setdefault("record", i)  # position in the file: error messages name the record
        out.append(ex)
    if skipped:
        _report(f"{source or 'data'}: skipped {skipped} of {len(records)} records without a gold answer")
    return out


# --- directories of split files ---------------------------------------------------------------
def split_files(directory: str | Path) -> dict[str, Path]:
    """Our split name → its file in ``directory`` (``train`` / ``dev`` / ``test``; ``dev`` may be spelt
    ``validation`` or ``val``; ``.json``, ``.jsonl`` or ``.ndjson``). Empty when it holds none."""
    d = Path(directory)
    out = {}
    for split, stems in SPLIT_FILE_STEMS.items():
        for stem in stems:
            hits = [d / f"{stem}{suf}" for suf in _SUFFIXES if (d / f"{stem}{suf}").is_file()]
            if hits:
                out[split] = hits[0]
                break
    return out


def _load_dir(d: Path, split: str, format: str | None) -> list[QAExample]:
    files = split_files(d)
    if not files:
        held = sorted(p.name for p in d.iterdir())[:12]
        raise UserError(f"{str(d)!r} is not a data file, and not a directory of split files either (train.json, "
                        f"dev.json, test.json; it holds {held or 'nothing'}). load_dataset accepts:\n"
                        f"{accepted_names()}")
    if split == "all":
        return [ex for s in ("train", "dev", "test") if s in files for ex in
                records_to_examples(read_records(files[s]), format=format, source=f"{d.name}/{files[s].name}")]
    if split not in files:
        names = " / ".join(f"{stem}.json" for stem in SPLIT_FILE_STEMS[split])
        raise UserError(f"{d} has no {split} split file ({names}, or .jsonl); it holds "
                        f"{', '.join(f'{s} ({p.name})' for s, p in files.items())}; choose one of those splits")
    f = files[split]
    return records_to_examples(read_records(f), format=format, source=f"{d.name}/{f.name}")


# --- hub --------------------------------------------------------------------------------------
def _load_hub(name: str, spec: HubSpec, split: str, format: str | None) -> list[QAExample]:
    """Our ``split`` of hub set ``name``: one-split sets are cut 80/10/10 (test, dev, train); two-split
    sets give test = hub validation, dev = 5 % of hub train, train = the rest (:mod:`.splits`)."""
    fmt = format or spec.format
    conv = lambda hub_split: records_to_examples(fetch_rows(name, spec, hub_split), format=fmt, source=name)
    if spec.single_split is not None:
        examples = conv(spec.single_split)
        if split == "all":
            return examples
        return cut(examples, {"test": SINGLE_SPLIT_FRACTIONS["test"], "dev": SINGLE_SPLIT_FRACTIONS["dev"]},
                   source=name)[split]
    if split == "test":
        return conv(spec.splits["test"])
    train = conv(spec.splits["train"])
    if split == "all":
        return train + conv(spec.splits["test"])
    return cut(train, {"dev": DEV_FROM_TRAIN}, source=name)[split]


# --- toy --------------------------------------------------------------------------------------
def _load_toy(name: str, split: str) -> list[QAExample]:
    try:
        from ..toy.data import toy_dataset
    except ImportError as err:
        raise ValueError(f"the bundled toy data ({name!r}) is not available: {err}") from err
    splits = ("train", "dev", "test") if split == "all" else (split,)
    # the toy world's own seed: the bundled model was trained on it
    data = [ex for s in splits for ex in toy_dataset(name, s)]
    return [ex if isinstance(ex, QAExample) else QAExample.from_dict(ex) for ex in data]


# --- which split ------------------------------------------------------------------------------
def is_single_file(name_or_path: str | os.PathLike) -> bool:
    """True when ``name_or_path`` is one local data file (it has no splits of its own)."""
    return Path(os.fspath(name_or_path)).expanduser().is_file()


def is_directory(name_or_path: str | os.PathLike) -> bool:
    """True when ``load_dataset`` reads ``name_or_path`` as a directory of split files (a bare toy / hub
    name means that data set even where a directory of that name exists; write ``./name`` for it)."""
    raw = os.fspath(name_or_path)
    key = raw.strip().lower().replace("_", "-")
    named = os.sep not in raw and "/" not in raw
    if named and (key in TOY_NAMES or key in HUB_DATASETS):
        return False
    return Path(raw).expanduser().is_dir()


def default_split(name_or_path: str | os.PathLike, split: str | None, default: str) -> str | None:
    """The split a command uses: ``split`` when given; else ``None`` (the whole file) for a single local
    file, ``default`` for anything with splits (hub and toy names, directories of split files)."""
    if split:
        return split
    return None if is_single_file(name_or_path) else default


# --- filters ----------------------------------------------------------------------------------
def _report(msg: str) -> None:
    log.info(msg)
    warnings.warn(msg, stacklevel=3)


def _n_tokens(lm, ex: QAExample) -> int:
    """Tokens of prompt + answer + end token *before* any truncation to the window (the paper drops
    examples over 300 tokens by their full length; a truncated length would never exceed the window)."""
    tokenizer = getattr(lm, "tokenizer", None)
    if tokenizer is not None:
        from ..prompts import encode

        ids = encode(tokenizer, ex, with_answer=True, max_length=None).input_ids
    else:  # a stand-in without a tokenizer (tests): its own count
        ids = lm.encode(ex, with_answer=True).input_ids
    shape = getattr(ids, "shape", None)
    return int(shape[-1]) if shape is not None and len(shape) else len(ids)


def _filter_length(examples: list[QAExample], max_tokens: int, lm, limit: int | None) -> list[QAExample]:
    kept, dropped, seen = [], 0, 0
    for ex in examples:
        if limit is not None and len(kept) >= limit:
            break
        seen += 1
        if _n_tokens(lm, ex) > max_tokens:
            dropped += 1
        else:
            kept.append(ex)
    if dropped:
        _report(f"dropped {dropped} of {seen} examples longer than {max_tokens} tokens (prompt + answer + end "
                "token, measured before any truncation to the window)")
    return kept


def load_dataset(name_or_path: str | os.PathLike, split: str | None = None, limit: int | None = None,
                 format: str | None = None, max_tokens: int | None = None, lm=None,
                 seed: int | None = None) -> list[QAExample]:
    """Load a QA data set as a list of :class:`QAExample`, white space stripped from context, question
    and answers (chat templates that trim would otherwise change the prompt).

    Args:
        name_or_path: one of
            - a ``.json`` / ``.jsonl`` file (canonical, SQuAD flat or nested, NQ-Swap, ConFiQA or MRQA
              records; the form is detected from the fields);
            - a directory holding split files ``train.json`` / ``dev.json`` / ``test.json`` (or
              ``.jsonl``; ``validation.json`` for dev), e.g. RouterLens' ``data/<set>/``;
            - a hub name (:data:`HUB_DATASETS`: ``squad``, ``nq-swap``, ``confiqa`` = ConFiQA-MC, the
              paper's variant; ``confiqa-qa`` / ``-mr`` / ``-mc``; ``nq``, ``hotpotqa``; needs the network
              or the ``datasets`` cache);
            - a bundled toy name (:data:`TOY_NAMES`).
        split: ``"train"``, ``"dev"`` (alias ``"validation"``), ``"test"``, or ``"all"`` (everything the
            source holds; never a default). Dev is always disjoint from test:
            - SQuAD, NQ, HotpotQA (hub train / validation): test = hub validation; dev = 5 %
              (:data:`DEV_FROM_TRAIN`) of hub train; train = the other 95 %;
            - NQ-Swap (hub ``dev`` only), ConFiQA (one file each): test 10 %, dev 10 %, train 80 %;
            - a single local file: used whole when ``split`` is ``None`` (the default) or ``"all"``; a
              named split cuts it 80/10/10 like NQ-Swap;
            - a directory: the split's file;
            - toy names: the toy world's own splits.
            The cuts rank the distinct (context, question) pairs by a fixed salted hash
            (:data:`~routerlens_interp.data.splits.SPLIT_SALT`, independent of ``seed``), so they are the
            same rows on every run and machine and copies of one example stay together. ``None`` means
            ``"test"`` for everything but a single file.
        limit: keep the first ``limit`` examples (after the ``max_tokens`` filter; after the shuffle
            when ``seed`` is given).
        format: force a form (``canonical``, ``squad``, ``nq-swap``, ``confiqa``, ``mrqa``) instead of
            detecting it.
        max_tokens: with ``lm``, drop examples whose prompt + answer is longer than this many tokens
            (``lm.encode(example, with_answer=True).input_ids``, 1-D); the count is reported through
            ``warnings`` and logging.
        lm: the model handle used to count tokens (only with ``max_tokens``).
        seed: ``None`` (default) keeps the data set's order; an integer shuffles the examples
            deterministically (``random.Random(seed)``) before ``limit``/``max_tokens``, to draw a
            random subset. It never changes which examples a split holds.

    Returns:
        ``list[QAExample]``, NQ-Swap / ConFiQA with ``memory_answer`` set (all memorised aliases in
        ``meta["memory_answers"]``).

    Raises:
        ValueError: unknown name, missing file, or records matching no form (the message lists what
            is accepted); :class:`~routerlens_interp.errors.UserError` (a ValueError) names the file and
            record, an unknown split, or a split file a directory lacks.
        HubDataUnavailable (a UserError and a RuntimeError): a hub data set could not be fetched; the
            message says whether offline, not found or gated, with the fix.
    """
    if max_tokens is not None and lm is None:
        raise ValueError("max_tokens needs lm= (the model handle whose tokenizer counts the tokens)")
    if limit is not None and (isinstance(limit, bool) or int(limit) < 0):
        raise ValueError(f"limit must be a non-negative integer; got {limit!r}")
    from .benchmarks import load_benchmark  # CounterFact, MemoTrap, Gigaword, MMLU: data/benchmarks.py

    bench = load_benchmark(name_or_path, split, format, limit=limit, seed=seed, max_tokens=max_tokens, lm=lm)
    if bench is not None:
        return bench
    raw = os.fspath(name_or_path)
    key = raw.strip().lower().replace("_", "-")
    path = Path(raw).expanduser()
    if path.is_file():
        examples = records_to_examples(read_records(path), format=format, source=path.name)
        part = None if split is None else normalize_split(split)
        if part not in (None, "all"):  # a file has no splits of its own: its documented 80/10/10 part
            examples = cut(examples, {"test": SINGLE_SPLIT_FRACTIONS["test"], "dev": SINGLE_SPLIT_FRACTIONS["dev"]},
                           source=path.name)[part]
    else:
        part = normalize_split("test" if split is None else split)
        if is_directory(raw):  # a bare name is a toy / hub name; ./squad is a directory
            examples = _load_dir(path, part, format)
        elif key in TOY_NAMES:
            examples = _load_toy(key, part)
        elif key in HUB_DATASETS:
            examples = _load_hub(key, HUB_DATASETS[key], part, format)
        elif path.suffix.lower() in _SUFFIXES or os.sep in raw:
            raise ValueError(f"no such data file: {raw!r}. load_dataset accepts:\n{accepted_names()}")
        else:
            raise ValueError(f"unknown data set {raw!r}. load_dataset accepts:\n{accepted_names()}")
    if seed is not None:
        examples = list(examples)
        random.Random(seed).shuffle(examples)
    if max_tokens is not None:
        examples = _filter_length(examples, int(max_tokens), lm, limit)
    if limit is not None:
        examples = examples[: int(limit)]
    return examples
