"""Generation metrics from the libraries that define them: BLEU (sacrebleu), ROUGE-L (rouge-score), METEOR (nltk).

Nothing here re-implements a metric; each function calls the library and only shapes the inputs:

- **BLEU**: ``sacrebleu.corpus_bleu`` with its defaults (13a tokenisation, exponential smoothing), corpus-level,
  0–100. One reference stream per gold variant (examples with fewer references are padded by repeating
  their first, which adds no n-gram a real reference would not).
- **ROUGE-L**: ``rouge_score.rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)``, F-measure per example,
  max over references, mean ×100.
- **METEOR**: ``nltk.translate.meteor_score.meteor_score`` per example (all references at once, it takes the
  best), mean ×100, on lower-cased white-space tokens. Its synonym stage needs NLTK's WordNet data, a separate
  download (``python -m nltk.downloader wordnet``); without it the synonym stage is switched off (exact +
  Porter-stem matching only) and the result says so in ``meteor_stages``. Scores with and without WordNet
  are not comparable: the stages are always reported.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..errors import UserError

__all__ = ["bleu", "rouge_l", "meteor", "text_scores", "wordnet_available", "METEOR_STAGES_FULL",
           "METEOR_STAGES_NO_WORDNET"]

METEOR_STAGES_FULL = "exact+stem+synonym"
METEOR_STAGES_NO_WORDNET = "exact+stem"


def _require(module: str, pip_name: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise UserError(f"this metric needs the '{pip_name}' package ({err}); install it with "
                        f"`pip install {pip_name}` (a dependency of routerlens_interp)") from None


def _refs(references: Sequence) -> list[list[str]]:
    out = []
    for i, r in enumerate(references):
        refs = [r] if isinstance(r, str) else [str(x) for x in r]
        if not refs:
            raise UserError(f"reference {i} is empty; every prediction needs at least one reference text")
        out.append(refs)
    return out


def _check(predictions: Sequence[str], references: Sequence) -> tuple[list[str], list[list[str]]]:
    preds = ["" if p is None else str(p) for p in predictions]
    refs = _refs(references)
    if len(preds) != len(refs):
        raise UserError(f"{len(preds)} predictions for {len(refs)} references; give one (list of) reference(s) "
                        f"per prediction")
    if not preds:
        raise UserError("no predictions to score")
    return preds, refs


def bleu(predictions: Sequence[str], references: Sequence) -> float:
    """Corpus BLEU (0–100) of ``predictions`` ``[n]`` against ``references`` ``[n]`` (a string or a list each)."""
    sacrebleu = _require("sacrebleu", "sacrebleu")
    preds, refs = _check(predictions, references)
    k = max(len(r) for r in refs)
    streams = [[r[j] if j < len(r) else r[0] for r in refs] for j in range(k)]
    return float(sacrebleu.corpus_bleu(preds, streams).score)


def rouge_l(predictions: Sequence[str], references: Sequence, use_stemmer: bool = True) -> float:
    """Mean ROUGE-L F-measure ×100 (max over each example's references)."""
    rs = _require("rouge_score.rouge_scorer", "rouge-score")
    preds, refs = _check(predictions, references)
    scorer = rs.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    # rouge-score's argument order is score(target, prediction)
    vals = [max(scorer.score(r, p)["rougeL"].fmeasure for r in rr) for p, rr in zip(preds, refs)]
    return 100.0 * sum(vals) / len(vals)


def wordnet_available() -> bool:
    """Whether NLTK's WordNet data is installed (METEOR's synonym stage needs it)."""
    nltk = _require("nltk", "nltk")
    for res in ("corpora/wordnet", "corpora/wordnet.zip"):
        try:
            nltk.data.find(res)
            return True
        except LookupError:
            continue
    return False


class _NoSynonyms:
    """Stands in for nltk's WordNet reader: no synsets, so METEOR's synonym stage matches nothing."""

    def synsets(self, *args, **kwargs):
        return []


def meteor(predictions: Sequence[str], references: Sequence, synonyms: bool | None = None) -> tuple[float, str]:
    """Mean METEOR ×100 and the stages that ran (``"exact+stem+synonym"`` or ``"exact+stem"``).

    ``synonyms=None`` uses WordNet when its data is installed; ``True`` requires it (UserError naming the
    download otherwise); ``False`` never uses it. Tokens: lower-cased white-space split.
    """
    _require("nltk", "nltk")
    from nltk.translate.meteor_score import meteor_score

    preds, refs = _check(predictions, references)
    have = wordnet_available()
    if synonyms and not have:
        raise UserError("METEOR's synonym stage needs NLTK's WordNet data, which is not installed; run "
                        "`python -m nltk.downloader wordnet` (or pass synonyms=False)")
    use = have if synonyms is None else bool(synonyms)
    kwargs = {} if use else {"wordnet": _NoSynonyms()}
    vals = [meteor_score([r.lower().split() for r in rr], p.lower().split(), **kwargs) for p, rr in zip(preds, refs)]
    return 100.0 * sum(vals) / len(vals), (METEOR_STAGES_FULL if use else METEOR_STAGES_NO_WORDNET)


def text_scores(predictions: Sequence[str], references: Sequence) -> dict:
    """``{"bleu", "rouge_l", "meteor", "meteor_stages", "n"}`` — all ×100, as the paper's Gigaword table."""
    m, stages = meteor(predictions, references)
    return {"bleu": bleu(predictions, references), "rouge_l": rouge_l(predictions, references), "meteor": m,
            "meteor_stages": stages, "n": len(predictions)}
