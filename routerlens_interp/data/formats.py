"""Native record forms of the QA data sets and their conversion to :class:`QAExample`.

Each form is recognised from its fields (:func:`detect_format`) or named explicitly; one record (a
dict) becomes one :class:`~routerlens_interp.examples.QAExample`, or ``None`` when it has no gold
answer (e.g. SQuAD 2.0's unanswerable questions, which the loader skips and counts).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..examples import QAExample

__all__ = ["FORMATS", "FIELD_SETS", "detect_format", "normalize_format", "record_to_example",
           "flatten_squad_nested", "is_squad_nested", "flatten_mrqa_nested", "is_mrqa_nested",
           "describe_formats"]

FORMATS = ("canonical", "squad", "nq-swap", "confiqa", "mrqa")

#: What each form needs, for error messages and documentation.
FIELD_SETS = {
    "canonical": "context, question, answer (str or list) or answers (list of str); optional memory_answer, id, meta",
    "squad": "context, question, answers: {text: [...], answer_start: [...]} "
             "(or the nested SQuAD v1.1 file {data: [{paragraphs: [{context, qas: [{question, answers}]}]}]})",
    "nq-swap": "question, org_context, org_answer, sub_context, sub_answer (answers: lists of str, as on the hub; "
               "or str)",
    "confiqa": "question, cf_context, cf_answer (+ cf_alias list), orig_answer (+ orig_alias list), as in "
               "ConFiQA-QA/MR/MC.json",
    "mrqa": "context, question, answers: [...] (+ detected_answers, qid, subset); or the original MRQA "
            ".jsonl lines {context, qas: [{qid, question, answers, detected_answers}]} after a header line",
}

_ALIASES = {"nqswap": "nq-swap", "nq_swap": "nq-swap", "conflqa": "confiqa", "confi-qa": "confiqa",
            "squad1": "squad", "squad-v1": "squad", "mrqa-nq": "mrqa", "mrqa-hotpotqa": "mrqa"}


def describe_formats() -> str:
    """One line per accepted form: ``name: fields``."""
    return "\n".join(f"  {name}: {fields}" for name, fields in FIELD_SETS.items())


def normalize_format(fmt: str) -> str:
    """Canonical spelling of a format name; ValueError listing the accepted ones otherwise."""
    key = str(fmt).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; accepted formats and their fields:\n{describe_formats()}")
    return key


# --- helpers ----------------------------------------------------------------------------------
def _first(rec: Mapping, *keys):
    for k in keys:
        if k in rec and rec[k] is not None:
            return rec[k]
    return None


def _kind(value) -> str:
    return f"{type(value).__name__} ({str(value)[:40]!r})" if not isinstance(value, (Mapping, list)) \
        else type(value).__name__


def _answer_list(value, field: str = "answer") -> list[str]:
    """str | list[str] | {"text": [...]} | list of {"text": ...} → de-duplicated non-empty strings.

    ValueError for anything else (a number, a nested list, an object without ``text``): a gold answer
    is text, and ``str()`` of another type would be scored silently."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        if "text" not in value:
            raise ValueError(f"{field} is an object without 'text' (keys {sorted(value)}); give a string, a list of "
                             f"strings or {{\"text\": [...]}}")
        value = value["text"]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{field} is a {_kind(value)}, not a string or a list of strings; write it as a string")
    out = []
    for v in value:
        if isinstance(v, Mapping):
            v = v.get("text")
        if v is None:
            continue
        if not isinstance(v, str):
            raise ValueError(f"{field} holds a {_kind(v)}, not a string; write every answer as a string")
        v = v.strip()
        if v and v not in out:
            out.append(v)
    return out


def _raw_text(value, field: str = "text") -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return " ".join(value)
    if not isinstance(value, str):
        raise ValueError(f"{field} is a {_kind(value)}, not a string; write it as a string")
    return value


def _text(value, field: str = "text") -> str:
    """The text of a field, surrounding white space stripped: chat templates that trim the user message
    (Llama-3's ``| trim``) would otherwise render a prompt that differs from the toolkit's (141 of
    RouterLens' 4,330 SQuAD dev questions end in white space)."""
    return _raw_text(value, field).strip()


def _rec_id(rec: Mapping, index: int, *keys) -> str:
    v = _first(rec, *keys, "id")
    return str(v) if v is not None else str(index)


# --- detection --------------------------------------------------------------------------------
def is_squad_nested(obj) -> bool:
    """True for the nested SQuAD v1.1 file form ``{"data": [{"paragraphs": [...]}]}``."""
    return (isinstance(obj, Mapping) and isinstance(obj.get("data"), list) and bool(obj["data"])
            and isinstance(obj["data"][0], Mapping) and "paragraphs" in obj["data"][0])


def flatten_squad_nested(obj: Mapping) -> list[dict]:
    """Nested SQuAD v1.1 → flat records ``{id, title, context, question, answers: {text, answer_start}}``."""
    rows = []
    for article in obj["data"]:
        title = article.get("title")
        for para in article.get("paragraphs", []):
            context = para.get("context", "")
            for qa in para.get("qas", []):
                answers = qa.get("answers") or []
                rows.append({
                    "id": qa.get("id"), "title": title, "context": context, "question": qa.get("question", ""),
                    "answers": {"text": [a.get("text", "") for a in answers],
                                "answer_start": [a.get("answer_start", -1) for a in answers]},
                })
    return rows


def is_mrqa_nested(obj) -> bool:
    """True for a line of an original MRQA ``.jsonl`` file: ``{"context", "qas": [...]}`` or its header."""
    return isinstance(obj, Mapping) and ("header" in obj and len(obj) == 1
                                         or ("context" in obj and isinstance(obj.get("qas"), list)))


def flatten_mrqa_nested(rows) -> list[dict]:
    """Original MRQA lines (header + one context with its ``qas`` per line) → flat MRQA records."""
    out, dataset = [], None
    for obj in rows:
        if isinstance(obj, Mapping) and "header" in obj and len(obj) == 1:
            header = obj["header"]
            dataset = header.get("dataset") if isinstance(header, Mapping) else None
            continue
        if not (isinstance(obj, Mapping) and "context" in obj and isinstance(obj.get("qas"), list)):
            out.append(obj)
            continue
        subset = obj.get("subset", dataset)
        for qa in obj["qas"]:
            rec = {"context": obj["context"], "question": qa.get("question", ""), "qid": qa.get("qid"),
                   "answers": qa.get("answers", []), "detected_answers": qa.get("detected_answers", [])}
            if subset is not None:
                rec["subset"] = subset
            out.append(rec)
    return out


def detect_format(rec) -> str | None:
    """The form of one record, from its fields; ``None`` if it matches none (see :data:`FIELD_SETS`)."""
    if not isinstance(rec, Mapping):
        return None
    keys = set(rec)
    if "question" in keys and {"sub_context", "sub_answer"} <= keys:
        return "nq-swap"
    if "question" in keys and keys & {"cf_context", "counterfactual_context"} \
            and keys & {"cf_answer", "counterfactual_answer", "cf_alias", "cf_answer_alias"}:
        return "confiqa"
    if {"context", "question"} <= keys:
        if "answer" in keys:
            return "canonical"
        answers = rec.get("answers")
        if isinstance(answers, Mapping) and "text" in answers:
            return "squad"
        if keys & {"detected_answers", "qid", "subset"} and (isinstance(answers, (list, tuple)) or answers is None):
            return "mrqa"
        if isinstance(answers, (list, tuple, str)):
            return "canonical"
    return None


def _missing(rec: Mapping, fmt: str, *needed: str | tuple) -> None:
    miss = []
    for need in needed:
        alts = need if isinstance(need, tuple) else (need,)
        if not any(a in rec for a in alts):
            miss.append(" or ".join(alts))
    if miss:
        raise ValueError(f"record lacks {', '.join(miss)} for format {fmt!r} (has fields {sorted(rec)}); "
                         f"accepted formats and their fields:\n{describe_formats()}")


# --- conversion -------------------------------------------------------------------------------
def _canonical(rec: Mapping, index: int) -> QAExample | None:
    _missing(rec, "canonical", "context", "question", ("answer", "answers"))
    answers = _answer_list(rec["answer"], "answer") if "answer" in rec else _answer_list(rec["answers"], "answers")
    mem = _answer_list(rec.get("memory_answer"), "memory_answer")
    meta = dict(rec["meta"]) if isinstance(rec.get("meta"), Mapping) else {}
    if len(mem) > 1:
        meta["memory_answers"] = mem
    if not answers:
        return None
    return QAExample(context=_text(rec["context"], "context"), question=_text(rec["question"], "question"),
                     answers=answers, memory_answer=mem[0] if mem else None, id=_rec_id(rec, index), meta=meta)


def _squad(rec: Mapping, index: int) -> QAExample | None:
    _missing(rec, "squad", "context", "question", "answers")
    raw = rec["answers"]
    answers = _answer_list(raw)
    meta = {}
    if rec.get("title") is not None:
        meta["title"] = rec["title"]
    raw_context = _raw_text(rec["context"], "context")
    if isinstance(raw, Mapping) and "answer_start" in raw:
        shift = len(raw_context) - len(raw_context.lstrip())  # offsets into the stripped context
        meta["answer_start"] = [int(s) - shift for s in raw["answer_start"]]
    if not answers:
        return None
    return QAExample(context=raw_context.strip(), question=_text(rec["question"]), answers=answers,
                     id=_rec_id(rec, index), meta=meta)


def _nq_swap(rec: Mapping, index: int) -> QAExample | None:
    _missing(rec, "nq-swap", "question", "sub_context", "sub_answer")
    answers = _answer_list(rec["sub_answer"])
    mem = _answer_list(rec.get("org_answer"))
    meta = {}
    if rec.get("org_context") is not None:
        meta["original_context"] = _text(rec["org_context"])
    if mem:
        meta["memory_answers"] = mem
    if not answers:
        return None
    return QAExample(context=_text(rec["sub_context"]), question=_text(rec["question"]), answers=answers,
                     memory_answer=mem[0] if mem else None, id=_rec_id(rec, index), meta=meta)


def _confiqa(rec: Mapping, index: int) -> QAExample | None:
    _missing(rec, "confiqa", "question", ("cf_context", "counterfactual_context"),
             ("cf_answer", "counterfactual_answer", "cf_alias", "cf_answer_alias"))
    answers = _answer_list(_first(rec, "cf_answer", "counterfactual_answer"))
    for key in ("cf_alias", "cf_answer_alias", "cf_aliases"):
        answers += [a for a in _answer_list(rec.get(key)) if a not in answers]
    mem = _answer_list(_first(rec, "orig_answer", "original_answer"))
    for key in ("orig_alias", "orig_answer_alias", "orig_aliases"):
        mem += [a for a in _answer_list(rec.get(key)) if a not in mem]
    meta = {}
    orig_ctx = _first(rec, "orig_context", "original_context")
    if orig_ctx is not None:
        meta["original_context"] = _text(orig_ctx)
    if mem:
        meta["memory_answers"] = mem
    if not answers:
        return None
    return QAExample(context=_text(_first(rec, "cf_context", "counterfactual_context")),
                     question=_text(rec["question"]), answers=answers,
                     memory_answer=mem[0] if mem else None, id=_rec_id(rec, index), meta=meta)


def _mrqa(rec: Mapping, index: int) -> QAExample | None:
    _missing(rec, "mrqa", "context", "question", ("answers", "detected_answers"))
    answers = _answer_list(rec.get("answers"))
    if not answers:  # fall back on the spans found in the context
        answers = _answer_list(rec.get("detected_answers"))
    meta = {}
    if rec.get("subset") is not None:
        meta["subset"] = rec["subset"]
    if not answers:
        return None
    return QAExample(context=_text(rec["context"]), question=_text(rec["question"]), answers=answers,
                     id=_rec_id(rec, index, "qid"), meta=meta)


_CONVERTERS = {"canonical": _canonical, "squad": _squad, "nq-swap": _nq_swap, "confiqa": _confiqa, "mrqa": _mrqa}


def record_to_example(rec: Mapping, fmt: str, index: int = 0) -> QAExample | None:
    """Convert one record of form ``fmt`` (see :data:`FORMATS`); ``None`` when it has no gold answer.

    Raises ValueError (listing the accepted field sets) when the record lacks the fields of ``fmt``.
    """
    if not isinstance(rec, Mapping):
        raise ValueError(f"record {index} is a {type(rec).__name__}, not an object with fields; "
                         f"accepted formats and their fields:\n{describe_formats()}")
    return _CONVERTERS[normalize_format(fmt)](rec, index)


def records_format(records: Sequence[Mapping]) -> str:
    """Form of a list of records, detected from the first one that matches any form."""
    for rec in records[:50]:
        fmt = detect_format(rec)
        if fmt is not None:
            return fmt
    sample = sorted(records[0]) if records and isinstance(records[0], Mapping) else type(records[0]).__name__
    raise ValueError(f"the records match no known form (first record's fields: {sample}); "
                     f"accepted formats and their fields:\n{describe_formats()}")
