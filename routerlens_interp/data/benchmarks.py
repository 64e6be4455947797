"""The paper's other benchmarks: CounterFact, MemoTrap, Gigaword, MMLU → examples the scorers understand.

Sources and schemas (read from the published data cards and repositories; the hub needs the network, local
files of the same schema always work):

- **CounterFact** (Meng et al., ROME, 2022): hub ``azhx/counterfact`` (splits ``train`` 19,728 / ``test``
  2,191), or ROME's ``counterfact.json`` (https://rome.baulab.info/data/dsets/counterfact.json, one list).
  A record: ``case_id``, ``pararel_idx``, ``requested_rewrite {prompt (with "{}" for the subject), subject,
  relation_id, target_new {str, id}, target_true {str, id}}``, ``paraphrase_prompts``, ``neighborhood_prompts``,
  ``attribute_prompts``, ``generation_prompts``. Turned into a context-faithfulness QA example: the context
  states the counterfactual (``prompt.format(subject) + " " + target_new + "."``), the question is the same
  cloze (``prompt.format(subject)``, or the first paraphrase with ``question="paraphrase"``), the gold
  answer is ``target_new`` and the memorised one ``target_true`` (→ ``memory_answer``). Scored with EM/F1
  and memory rate, like NQ-Swap.
- **MemoTrap** (Liu & Liu, Inverse Scaling Prize, 2023): hub ``pminervini/inverse-scaling`` config
  ``memo-trap`` (one split ``data``, 936 rows), or the CSV files of github.com/liujch1998/memo-trap
  (``data/1-proverb-ending.csv`` …). A record: ``prompt``, ``classes`` (two endings, a Python-literal
  string on the hub and in the CSVs, e.g. ``"[' heavy.', ' fonder.']"``), ``answer_index`` (the ending
  the prompt asks for — never the memorised one). Scored by comparing the endings' log-likelihoods after the
  prompt (:mod:`routerlens_interp.evaluation.choice`), as the Inverse Scaling Prize and lm-eval's task do.
- **Gigaword** (Rush et al., 2015; article → headline): hub ``Harvard/gigaword`` read from its parquet
  export (``revision="refs/convert/parquet"``: the main branch holds a loading script, which ``datasets`` ≥ 4
  no longer runs); splits ``train`` / ``validation`` / ``test`` (1,951). A record: ``document``,
  ``summary``. Turned into QA examples with the article as context and :data:`SUMMARY_QUESTION` as
  question (so the paper's prompt, chat template and greedy decoding apply); scored with BLEU, METEOR and
  ROUGE-L (:mod:`routerlens_interp.evaluation.text_metrics`).
- **MMLU** (Hendrycks et al., 2021): hub ``cais/mmlu``, config ``all`` or one subject (``abstract_algebra``
  …); splits ``test`` (14,042 in ``all``), ``validation``, ``dev`` (5 per subject: the 5-shot examples),
  ``auxiliary_train``. A record: ``question``, ``subject``, ``choices`` (4 strings), ``answer`` (int 0–3).
  Scored by the log-likelihood of each letter after the lm-eval prompt (0-shot or k-shot from ``dev``).

The paper's public code (bigai-nlco/RouterLens: ``evaluation.py``, ``utils_data.py``) reads only the five QA
sets and scores EM/F1; it holds nothing about these four, so the conventions above follow each benchmark's
own release and lm-evaluation-harness.
"""
from __future__ import annotations

import ast
import csv
import io
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError
from ..examples import QAExample

__all__ = ["ChoiceExample", "BENCHMARKS", "BENCHMARK_FORMATS", "SUMMARY_QUESTION", "COUNTERFACT_URL",
           "load_benchmark", "benchmark_format", "counterfact_example", "memotrap_example", "gigaword_example",
           "mmlu_example", "benchmark_examples"]

#: The question Gigaword examples ask (the article is the context).
SUMMARY_QUESTION = "Write a one-sentence headline that summarises the context."
COUNTERFACT_URL = "https://rome.baulab.info/data/dsets/counterfact.json"
LETTERS = "ABCDEFGHIJ"


@dataclass
class ChoiceExample:
    """A multiple-choice example scored by log-likelihood.

    ``style="endings"``: ``prompt`` is continued by each of ``choices`` (MemoTrap). ``style="letters"``:
    ``prompt`` is a question whose ``choices`` are listed as ``A. …``, and the letters are scored (MMLU).
    ``label`` is the index of the correct choice; ``meta["subject"]`` groups MMLU's few-shot examples.
    """

    prompt: str
    choices: list[str]
    label: int
    style: str = "endings"
    id: str | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.choices = [str(c) for c in self.choices]
        if len(self.choices) < 2:
            raise ValueError(f"a multiple-choice example needs at least two choices; got {self.choices!r}")
        if isinstance(self.label, bool) or not 0 <= int(self.label) < len(self.choices):
            raise ValueError(f"label {self.label!r} is not an index into the {len(self.choices)} choices")
        self.label = int(self.label)
        if self.style not in ("endings", "letters"):
            raise ValueError(f"style must be 'endings' or 'letters'; got {self.style!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Source:
    path: str
    config: str | None = None
    revision: str | None = None
    splits: tuple = ()  # (our name, hub name) or (our name, (hub name, (start, end))) for a positional cut
    single_split: str | None = None


#: Hub sources of the four benchmarks (see the module docstring for schemas).
BENCHMARKS = {
    # published as train / test: our validation is the last 10 % of train (disjoint from test and from our train)
    "counterfact": _Source("azhx/counterfact", splits=(("train", ("train", (0.0, 0.9))),
                                                       ("validation", ("train", (0.9, 1.0))),
                                                       ("dev", ("train", (0.9, 1.0))))),
    "memotrap": _Source("pminervini/inverse-scaling", config="memo-trap", single_split="data"),
    "gigaword": _Source("Harvard/gigaword", revision="refs/convert/parquet", splits=(("dev", "validation"),)),
    "mmlu": _Source("cais/mmlu", config="all", splits=(("train", "auxiliary_train"),)),
}
_ALIASES = {"memo-trap": "memotrap", "counter-fact": "counterfact", "cais/mmlu": "mmlu", "azhx/counterfact": "counterfact",
            "harvard/gigaword": "gigaword"}
BENCHMARK_FORMATS = tuple(BENCHMARKS)


# --- one record → one example -------------------------------------------------------------------
def _text(rec: Mapping, key: str, where: str) -> str:
    v = rec.get(key)
    if isinstance(v, Mapping):
        v = v.get("str")
    if not isinstance(v, str) or not v.strip():
        raise UserError(f"{where}: field {key!r} is missing or not text ({v!r})")
    return v.strip()


def counterfact_example(rec: Mapping, i: int = 0, question: str = "prompt") -> QAExample:
    """One CounterFact record → QAExample (context states ``target_new``; ``memory_answer`` = ``target_true``)."""
    where = f"CounterFact record {i}"
    rw = rec.get("requested_rewrite")
    if isinstance(rw, list) and rw:  # some copies keep a list of rewrites (MEMIT's multi-counterfact)
        rw = rw[0]
    if not isinstance(rw, Mapping):
        raise UserError(f"{where}: no 'requested_rewrite' object; a CounterFact record has requested_rewrite "
                        f"{{prompt, subject, target_new {{str}}, target_true {{str}}}}")
    prompt, subject = _text(rw, "prompt", where), _text(rw, "subject", where)
    if "{}" not in prompt:
        raise UserError(f"{where}: requested_rewrite.prompt {prompt!r} has no '{{}}' for the subject")
    new, true = _text(rw, "target_new", where), _text(rw, "target_true", where)
    cloze = prompt.format(subject)
    q = cloze
    if question == "paraphrase":
        para = [p for p in (rec.get("paraphrase_prompts") or []) if isinstance(p, str) and p.strip()]
        q = para[0].strip() if para else cloze
    elif question != "prompt":
        raise UserError(f"question must be 'prompt' or 'paraphrase'; got {question!r}")
    meta = {"benchmark": "counterfact", "subject": subject, "relation_id": rw.get("relation_id"),
            "paraphrase_prompts": list(rec.get("paraphrase_prompts") or [])}
    cid = rec.get("case_id")
    return QAExample(context=f"{cloze} {new}.", question=q, answers=[new], memory_answer=true,
                     id=None if cid is None else str(cid), meta=meta)


def _classes(value, where: str) -> list[str]:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)  # the published files keep the list as its Python repr
        except (ValueError, SyntaxError):
            raise UserError(f"{where}: 'classes' {value[:60]!r} is not a list literal like \"[' a', ' b']\"") from None
    if not isinstance(value, (list, tuple)) or len(value) < 2 or not all(isinstance(c, str) for c in value):
        raise UserError(f"{where}: 'classes' must be a list of at least two strings; got {value!r}")
    return list(value)


def memotrap_example(rec: Mapping, i: int = 0) -> ChoiceExample:
    """One MemoTrap record (``prompt``, ``classes``, ``answer_index``) → ChoiceExample (style "endings")."""
    where = f"MemoTrap record {i}"
    prompt = rec.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise UserError(f"{where}: 'prompt' is missing or not text")
    try:
        label = int(rec["answer_index"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{where}: 'answer_index' is missing or not an integer ({rec.get('answer_index')!r})") from None
    meta = {"benchmark": "memotrap"}
    meta.update({k: rec[k] for k in ("round", "part", "subtask") if k in rec})
    try:
        return ChoiceExample(prompt, _classes(rec.get("classes"), where), label, "endings", str(i), meta)
    except ValueError as err:
        raise UserError(f"{where}: {err}") from None


def gigaword_example(rec: Mapping, i: int = 0) -> QAExample:
    """One Gigaword record (``document``, ``summary``) → QAExample(context=document, answers=[summary])."""
    where = f"Gigaword record {i}"
    doc = _text(rec, "document", where)
    summ = rec.get("summary")
    refs = [summ] if isinstance(summ, str) else list(summ or [])
    refs = [r.strip() for r in refs if isinstance(r, str) and r.strip()]
    if not refs:
        raise UserError(f"{where}: 'summary' is missing or empty")
    return QAExample(context=doc, question=SUMMARY_QUESTION, answers=refs, id=str(rec.get("id", i)),
                     meta={"benchmark": "gigaword", "task": "summarization"})


def mmlu_example(rec: Mapping, i: int = 0, config: str | None = None) -> ChoiceExample:
    """One MMLU record (``question``, ``subject``, ``choices``, ``answer``) → ChoiceExample (style "letters")."""
    where = f"MMLU record {i}"
    q = rec.get("question")
    choices = rec.get("choices")
    if not isinstance(q, str) or not isinstance(choices, (list, tuple)) or len(choices) < 2:
        raise UserError(f"{where}: needs 'question' (text) and 'choices' (a list of ≥ 2 strings)")
    ans = rec.get("answer")
    if isinstance(ans, str) and len(ans) == 1 and ans.upper() in LETTERS:  # some copies store the letter
        ans = LETTERS.index(ans.upper())
    try:
        label = int(ans)
    except (TypeError, ValueError):
        raise UserError(f"{where}: 'answer' must be an index 0–{len(choices) - 1} or a letter; got {ans!r}") from None
    subject = str(rec.get("subject") or config or "")
    try:
        return ChoiceExample(q, list(choices), label, "letters", str(i),
                             {"benchmark": "mmlu", "subject": subject, "config": config or subject or "all"})
    except ValueError as err:
        raise UserError(f"{where}: {err}") from None


_CONVERT = {"counterfact": counterfact_example, "memotrap": memotrap_example, "gigaword": gigaword_example,
            "mmlu": mmlu_example}


def benchmark_format(rec) -> str | None:
    """The benchmark whose schema ``rec`` (a dict) has, or None."""
    if not isinstance(rec, Mapping):
        return None
    keys = set(rec)
    if "requested_rewrite" in keys:
        return "counterfact"
    if {"prompt", "classes", "answer_index"} <= keys:
        return "memotrap"
    if {"document", "summary"} <= keys:
        return "gigaword"
    if {"question", "choices", "answer"} <= keys and "context" not in keys:
        return "mmlu"
    return None


def benchmark_examples(records, fmt: str, source: str = "", config: str | None = None, **kw) -> list:
    """Records of benchmark ``fmt`` → examples (QAExample or ChoiceExample), ``meta["source"]`` set."""
    conv = _CONVERT[fmt]
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise UserError(f"{source or fmt}: record {i} is a {type(rec).__name__}, not an object")
        ex = conv(rec, i, config=config) if fmt == "mmlu" else conv(rec, i, **kw) if fmt == "counterfact" \
            else conv(rec, i)
        if source:
            ex.meta.setdefault("source", source)
        ex.meta.setdefault("record", i)
        out.append(ex)
    return out


# --- reading ------------------------------------------------------------------------------------
def _read_csv(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    return [dict(r) for r in csv.DictReader(io.StringIO(text))]


def _read_local(path: Path) -> list:
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    from .loaders import read_records

    return read_records(path)


#: A benchmark published as one split (MemoTrap) is cut by position: [start, end) fractions per part, disjoint.
_POSITIONAL = {"train": (0.0, 0.8), "dev": (0.8, 0.9), "validation": (0.8, 0.9), "test": (0.9, 1.0)}


def _hub_rows(name: str, src: _Source, split: str, config: str | None) -> list[dict]:
    import datasets  # attribute access at call time, so tests can monkeypatch datasets.load_dataset

    from .loaders import HubDataUnavailable

    cut = None
    if src.single_split is not None:
        if split in _POSITIONAL:
            cut = _POSITIONAL[split]
        elif split not in (src.single_split, "all"):
            raise UserError(f"unknown split {split!r} for {name}: it is published as one split "
                            f"({src.single_split!r}); choose train, dev (alias validation), test (positional cuts "
                            f"80/10/10) or {src.single_split!r} / 'all'")
        hub_split = src.single_split
    else:
        hub_split = dict(src.splits).get(split, split)
        if isinstance(hub_split, tuple):
            hub_split, cut = hub_split
    args = [src.path] + ([config or src.config] if (config or src.config) else [])
    kwargs = {"split": hub_split}
    if src.revision:
        kwargs["revision"] = src.revision
    try:
        ds = datasets.load_dataset(*args, **kwargs)
    except Exception as err:  # offline, unknown config, gated … told apart as for the QA sets
        from .hub import describe_hub_failure

        kind, fix = describe_hub_failure(err)
        cause = next((l.strip() for l in str(err).splitlines() if l.strip()), "")
        raise HubDataUnavailable(f"could not load {name!r} from the hub ({src.path}"
                                 f"{', ' + args[1] if len(args) > 1 else ''}, split {hub_split!r}): {kind}: "
                                 f"{type(err).__name__}: {cause}; {fix}") from err
    rows = [dict(r) for r in ds]
    if cut is not None:
        rows = rows[int(round(cut[0] * len(rows))):int(round(cut[1] * len(rows)))]
    return rows


def _parse_name(raw: str) -> tuple[str, str | None] | None:
    """``"mmlu"`` / ``"mmlu:abstract_algebra"`` / ``"memo-trap"`` → (benchmark, config) or None."""
    base, _, config = raw.strip().partition(":")
    base = base.lower().replace("_", "-")
    base = _ALIASES.get(base, base)
    if base not in BENCHMARKS:
        return None
    return base, (config.strip() or None)


def load_benchmark(name_or_path, split: str = "test", format: str | None = None, limit: int | None = None,
                   seed: int | None = None, max_tokens: int | None = None, lm=None, **kw) -> list | None:
    """Examples of one of the four benchmarks, or None when ``name_or_path`` is none of them.

    ``name_or_path``: ``counterfact``, ``memotrap`` (``memo-trap``), ``gigaword``, ``mmlu`` or
    ``mmlu:<subject>`` (hub; the network), or a local ``.json`` / ``.jsonl`` / ``.csv`` file whose records have
    one of the four schemas (detected from the fields, or ``format=`` one of :data:`BENCHMARK_FORMATS`).
    ``split`` maps as in :data:`BENCHMARKS` (CounterFact's train/test: validation = the last 10 % of its train,
    train = the first 90 %; MemoTrap's one split is cut 80/10/10 by position for train/validation/test,
    ``"data"``/``"all"`` gives all 936; Gigaword and MMLU have their own validation, MMLU's ``train`` is
    ``auxiliary_train``); local files ignore it. Every cut is disjoint from the others.
    ``limit``, ``seed``, ``max_tokens``/``lm`` as in :func:`~routerlens_interp.data.load_dataset` (the length
    filter applies to the QA-shaped sets; multiple-choice prompts are cut from the left when too long, as
    lm-eval does). ``kw``: ``question="paraphrase"`` for CounterFact.
    """
    examples = _load(name_or_path, split, format, **kw)
    if examples is None:
        return None
    if seed is not None:
        import random

        random.Random(seed).shuffle(examples)
    if max_tokens is not None and examples and isinstance(examples[0], QAExample):
        from .loaders import _filter_length

        examples = _filter_length(examples, int(max_tokens), lm, limit)
    return examples if limit is None else examples[:int(limit)]


def _load(name_or_path, split: str, format: str | None, **kw) -> list | None:
    raw = os.fspath(name_or_path)
    fmt = None if format is None else _ALIASES.get(str(format).lower(), str(format).lower())
    if fmt is not None and fmt not in BENCHMARKS:
        return None  # a QA format: the QA loader handles it
    path = Path(raw).expanduser()
    if path.is_file():
        records = _read_local(path)
        fmt = fmt or (benchmark_format(records[0]) if records else None)
        if fmt is None:
            if path.suffix.lower() == ".csv":
                raise UserError(f"{path.name}: the CSV's columns {sorted(records[0]) if records else []} match no "
                                f"benchmark (MemoTrap: prompt, classes, answer_index); QA data must be JSON/JSONL")
            return None  # a QA file: the QA loader reads it
        return benchmark_examples(records, fmt, source=path.name, **kw)
    parsed = _parse_name(raw)
    if parsed is None:
        return None
    name, config = parsed
    src = BENCHMARKS[name]
    if config is not None and name != "mmlu":
        raise UserError(f"{name} has no configs; use plain {name!r}")
    rows = _hub_rows(name, src, split, config)
    return benchmark_examples(rows, name, source=name, config=(config or src.config) if name == "mmlu" else None,
                              **kw)
