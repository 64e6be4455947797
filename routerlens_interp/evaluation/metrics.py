"""Answer scoring: SQuAD v1.1 exact match and token F1, and their aggregate over a data set.

The normalisation is the one of the official SQuAD v1.1 evaluation script: lower-case, drop
punctuation, drop the articles ``a``/``an``/``the``, fold white space. Scores of one prediction are in
``[0, 1]``; :func:`aggregate` reports them ×100 as the paper's tables do.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

__all__ = ["normalize_answer", "em_f1", "exact_match", "f1_score", "aggregate"]

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation: lower-case, remove punctuation, remove articles, fold white space.

    >>> normalize_answer("The  Eiffel Tower!")
    'eiffel tower'
    """
    s = str(s).lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _as_list(answers: str | Sequence[str]) -> list[str]:
    if isinstance(answers, str):
        return [answers]
    answers = [str(a) for a in answers]
    if not answers:
        raise ValueError("em_f1 needs at least one gold answer")
    return answers


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when ``prediction`` and ``gold`` are equal after :func:`normalize_answer`, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-level F1 (bag of normalised white-space tokens) between one prediction and one gold answer.

    As in SQuAD v1.1, no shared token (including an empty prediction) gives 0.0.
    """
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def em_f1(prediction: str, answers: str | Sequence[str]) -> tuple[float, float]:
    """Exact match and F1 of ``prediction`` against the gold ``answers`` (a string or a list).

    Each score is the maximum over the gold answers (EM and F1 maximised separately), in ``[0, 1]``.
    """
    golds = _as_list(answers)
    prediction = "" if prediction is None else str(prediction)
    em = max(exact_match(prediction, g) for g in golds)
    f1 = max(f1_score(prediction, g) for g in golds)
    return em, f1


def aggregate(preds: Sequence[str], examples: Sequence) -> dict:
    """Scores of a list of predictions against the matching examples.

    Args:
        preds: ``[n]`` predicted answer strings.
        examples: ``[n]`` :class:`~routerlens_interp.examples.QAExample` (anything with ``.answers``
            and ``.memory_answer``), in the same order.

    Returns:
        ``{"em", "f1", "n", "memory_rate"}``: ``em``/``f1`` are means ×100 (0.0 when ``n == 0``);
        ``memory_rate`` is the share ×100 of the examples that have a ``memory_answer`` whose
        prediction matches it by exact match, ``None`` when no example has one.
    """
    if len(preds) != len(examples):
        raise ValueError(f"aggregate: {len(preds)} predictions for {len(examples)} examples")
    em_sum = f1_sum = 0.0
    n_mem = mem_hits = 0
    for pred, ex in zip(preds, examples):
        em, f1 = em_f1(pred, ex.answers)
        em_sum += em
        f1_sum += f1
        memory = getattr(ex, "memory_answer", None)
        if memory is not None:
            n_mem += 1
            mem_hits += int(exact_match("" if pred is None else str(pred), memory))
    n = len(preds)
    return {
        "em": 100.0 * em_sum / n if n else 0.0,
        "f1": 100.0 * f1_sum / n if n else 0.0,
        "n": n,
        "memory_rate": 100.0 * mem_hits / n_mem if n_mem else None,
    }
