"""``load_dataset``: local JSON/JSONL files, hub data sets and the bundled toy data → QAExamples."""
from __future__ import annotations

import json
import random
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..examples import QAExample
from .formats import (describe_formats, flatten_mrqa_nested, flatten_squad_nested, is_mrqa_nested,
                      is_squad_nested, normalize_format, record_to_example, records_format)

__all__ = ["load_dataset", "read_records", "records_to_examples", "HubSpec", "HUB_DATASETS", "TOY_NAMES",
           "SINGLE_SPLIT_FRACTIONS", "CONFIQA_URL", "accepted_names"]

log = logging.getLogger(__name__)


class HubDataUnavailable(UserError, RuntimeError):
    """A named data set could not be fetched from the hub (offline, unknown, gated); a local file works."""

TOY_NAMES = ("toy-open", "toy-conflict", "toy-memory", "toy2-open", "toy2-conflict", "toy2-memory")

#: ConFiQA (Bi et al., "Context-DPO", 2024) is published as JSON files (ConFiQA-QA/-MR/-MC.json) in the
#: authors' GitHub repository, not as a hub data set; it is read through ``datasets``' "json" builder.
#: The address below is where the Context-DPO repository keeps them; it is not verified here (no
#: network). Set the environment variable ``ROUTERLENS_CONFIQA_URL`` (with ``{subset}`` standing for
#: QA / MR / MC) to use another copy, or pass a local file path to ``load_dataset``.
CONFIQA_URL = "https://raw.githubusercontent.com/byronBBL/Context-DPO/main/ConFiQA/ConFiQA-{subset}.json"

#: Data sets published as one split (NQ-Swap's ``dev``, ConFiQA's single file) are cut into disjoint
#: train / validation / test parts by position (no shuffling): fractions ``[start, end)``. Asking for
#: the native split name (e.g. ``"dev"`` for NQ-Swap) or ``"all"`` gives everything.
SINGLE_SPLIT_FRACTIONS = {"train": (0.0, 0.8), "validation": (0.8, 0.9), "test": (0.9, 1.0)}


@dataclass(frozen=True)
class HubSpec:
    """How to fetch one named data set through ``datasets.load_dataset``.

    ``splits`` maps our split names to the hub's; ``single_split`` names the only split of a data set
    published as one (then :data:`SINGLE_SPLIT_FRACTIONS` applies); ``subset`` keeps only rows whose
    ``subset`` column equals it (MRQA).
    """

    path: str
    format: str
    config: str | None = None
    data_files: str | None = None
    splits: dict = field(default_factory=dict)
    single_split: str | None = None
    subset: str | None = None


HUB_DATASETS: dict[str, HubSpec] = {
    "squad": HubSpec("rajpurkar/squad", "squad", splits={"test": "validation", "dev": "validation"}),
    "nq-swap": HubSpec("pminervini/NQ-Swap", "nq-swap", single_split="dev"),
    "confiqa": HubSpec("json", "confiqa", data_files="QA", single_split="train"),
    "confiqa-qa": HubSpec("json", "confiqa", data_files="QA", single_split="train"),
    "confiqa-mr": HubSpec("json", "confiqa", data_files="MR", single_split="train"),
    "confiqa-mc": HubSpec("json", "confiqa", data_files="MC", single_split="train"),
    # MRQA's test split holds only the out-of-domain sets; NQ and HotpotQA live in train/validation.
    "nq": HubSpec("mrqa-workshop/mrqa", "mrqa", splits={"test": "validation", "dev": "validation"},
                  subset="NaturalQuestionsShort"),
    "hotpotqa": HubSpec("mrqa-workshop/mrqa", "mrqa", splits={"test": "validation", "dev": "validation"},
                        subset="HotpotQA"),
}


def accepted_names() -> str:
    """Human-readable list of what ``load_dataset`` accepts."""
    return (f"  hub names: {', '.join(HUB_DATASETS)}\n  bundled toy data: {', '.join(TOY_NAMES)}\n"
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


# --- hub --------------------------------------------------------------------------------------
def _hub_split(spec: HubSpec, split: str) -> tuple[str, tuple[float, float] | None]:
    if spec.single_split is not None:
        if split in SINGLE_SPLIT_FRACTIONS:
            return spec.single_split, SINGLE_SPLIT_FRACTIONS[split]
        if split in (spec.single_split, "all"):
            return spec.single_split, None
        raise ValueError(f"unknown split {split!r}; this data set is published as one split ({spec.single_split!r}); "
                         f"choose one of {list(SINGLE_SPLIT_FRACTIONS)} (positional cuts {SINGLE_SPLIT_FRACTIONS}) "
                         f"or {spec.single_split!r} / 'all' for everything")
    return spec.splits.get(split, split), None


def _load_hub(name: str, spec: HubSpec, split: str) -> list[dict]:
    import datasets  # attribute access at call time, so tests can monkeypatch datasets.load_dataset

    hub_split, cut = _hub_split(spec, split)
    kwargs = {"split": hub_split}
    args = [spec.path] + ([spec.config] if spec.config else [])
    where = spec.path
    if spec.data_files is not None:
        url = os.environ.get("ROUTERLENS_CONFIQA_URL", CONFIQA_URL).format(subset=spec.data_files)
        kwargs["data_files"] = url
        where = url
    try:
        ds = datasets.load_dataset(*args, **kwargs)
    except Exception as err:  # offline, unknown repo, gated, …
        cause = next((l.strip() for l in str(err).splitlines() if l.strip()), "")
        raise HubDataUnavailable(f"could not load {name!r} from the hub ({where}, split {hub_split!r}) (offline?): "
                                 f"{type(err).__name__}: {cause}; pass a local file path instead") from err
    if spec.subset is not None and "subset" in getattr(ds, "column_names", []):
        ds = ds.filter(lambda s: s == spec.subset, input_columns="subset")
    rows = [dict(r) for r in ds]
    if cut is not None:
        lo, hi = int(round(cut[0] * len(rows))), int(round(cut[1] * len(rows)))
        rows = rows[lo:hi]
    return rows


# --- toy --------------------------------------------------------------------------------------
def _load_toy(name: str, split: str) -> list[QAExample]:
    try:
        from ..toy.data import toy_dataset
    except ImportError as err:
        raise ValueError(f"the bundled toy data ({name!r}) is not available: {err}") from err
    split = {"validation": "dev"}.get(split, split)
    data = toy_dataset(name, split)  # the toy world's own seed: the bundled model was trained on it
    return [ex if isinstance(ex, QAExample) else QAExample.from_dict(ex) for ex in data]


# --- filters ----------------------------------------------------------------------------------
def _report(msg: str) -> None:
    log.info(msg)
    warnings.warn(msg, stacklevel=3)


def _n_tokens(lm, ex: QAExample) -> int:
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
        _report(f"dropped {dropped} of {seen} examples longer than {max_tokens} tokens")
    return kept


def load_dataset(name_or_path: str | os.PathLike, split: str = "test", limit: int | None = None,
                 format: str | None = None, max_tokens: int | None = None, lm=None,
                 seed: int | None = None) -> list[QAExample]:
    """Load a QA data set as a list of :class:`QAExample`.

    Args:
        name_or_path: a path to a ``.json`` / ``.jsonl`` file (canonical, SQuAD flat or nested,
            NQ-Swap, ConfiQA or MRQA records; the form is detected from the fields), a hub name
            (:data:`HUB_DATASETS`: ``squad``, ``nq-swap``, ``confiqa`` [-qa/-mr/-mc], ``nq``,
            ``hotpotqa``; needs the network), or a bundled toy name (:data:`TOY_NAMES`).
        split: ``"train"``, ``"validation"`` or ``"test"`` (mapped to each hub set's names; SQuAD's
            and MRQA's "test" is their validation split; single-split sets are cut by
            :data:`SINGLE_SPLIT_FRACTIONS`). Ignored for local files.
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
            random subset. (The toy data always come from the toy world's own seed.)

    Returns:
        ``list[QAExample]``, NQ-Swap / ConfiQA with ``memory_answer`` set (all memorised aliases in
        ``meta["memory_answers"]``).

    Raises:
        ValueError: unknown name, missing file, or records matching no form (the message lists what
            is accepted); :class:`~routerlens_interp.errors.UserError` (a ValueError) names the file and record.
        HubDataUnavailable (a UserError and a RuntimeError): a hub data set could not be fetched.
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
    elif key in TOY_NAMES:
        examples = _load_toy(key, split)
    elif key in HUB_DATASETS:
        spec = HUB_DATASETS[key]
        rows = _load_hub(key, spec, split)
        examples = records_to_examples(rows, format=format or spec.format, source=key)
    elif path.exists():
        raise ValueError(f"{raw!r} is not a data file (a directory?). load_dataset accepts:\n{accepted_names()}")
    elif path.suffix.lower() in (".json", ".jsonl", ".ndjson") or os.sep in raw:
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
