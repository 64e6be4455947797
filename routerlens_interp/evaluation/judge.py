"""Judged accuracy (AccLLM): a language model decides whether a prediction answers the question.

EM misses correct answers worded differently ("JFK" for "John F. Kennedy"); the paper also reports accuracy
judged by a language model. The judge sees the question, the gold answer(s) and the prediction in
:data:`JUDGE_PROMPT` and says yes or no. Judges:

- a **callable** ``judge(prompt: str) -> str`` (an API client, a person at a keyboard): its text is the raw
  verdict, parsed by :func:`parse_verdict` (first word yes/no; anything else is *unparsed*, counted as
  incorrect and reported in ``n_unparsed`` — never guessed);
- a **local causal LM**: ``"toy"``, a hub id or a directory (loaded with transformers; dense models are fine),
  a :class:`~routerlens_interp.model.MoEModel`, or ``(hf_model, tokenizer)``. ``mode="likelihood"`` (default)
  compares the log-probabilities of "yes" and "no" as the first word of the answer (both capitalisations,
  log-sum-exp'd) — a verdict for every example, the two log-probabilities kept as the raw verdict;
  ``mode="generate"`` decodes up to 8 tokens greedily and parses them like a callable's text.

The prompt is wrapped in the judge's chat template when it has one. Returned with the verdicts: the
agreement with exact match (share of examples where judge and EM agree) and the four-cell table.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..errors import UserError

__all__ = ["JUDGE_PROMPT", "judge_prompt", "parse_verdict", "judge_accuracy", "load_judge"]

JUDGE_PROMPT = (
    "You are checking answers to questions. Decide whether the predicted answer gives the same answer as the "
    "gold answer (different wording of the same answer counts as the same).\n\n"
    "Question: {question}\n"
    "Gold answer: {gold}\n"
    "Predicted answer: {prediction}\n\n"
    "Is the predicted answer correct? Reply with one word, yes or no.\n"
    "Verdict:"
)


def judge_prompt(question: str, answers: Sequence[str], prediction: str) -> str:
    """:data:`JUDGE_PROMPT` filled in; several gold answers are joined with " / " (any one counts)."""
    gold = " / ".join(str(a) for a in answers) if not isinstance(answers, str) else answers
    return JUDGE_PROMPT.format(question=question.strip(), gold=gold, prediction=(prediction or "").strip() or "(empty)")


def parse_verdict(text: str) -> bool | None:
    """``True`` for a reply starting with yes/correct, ``False`` for no/incorrect, ``None`` otherwise."""
    m = re.match(r"\W*([A-Za-z]+)", text or "")
    word = m.group(1).lower() if m else ""
    if word in ("yes", "correct", "true", "y"):
        return True
    if word in ("no", "incorrect", "wrong", "false", "n"):
        return False
    return None


class _LocalJudge:
    """A causal LM and its tokenizer, with the attributes :mod:`routerlens_interp.evaluation.choice` reads."""

    def __init__(self, hf, tokenizer, name: str = ""):
        self.hf, self.tokenizer, self.name = hf, tokenizer, name or getattr(hf.config, "_name_or_path", "")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @property
    def device(self):
        return next(self.hf.parameters()).device

    @property
    def window(self):
        return getattr(self.hf.config, "max_position_embeddings", None)

    def wrap(self, prompt: str) -> tuple[str, bool]:
        """→ (text the judge reads, whether a chat template framed it)."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True), True
        return prompt, False


def load_judge(judge, device=None):
    """A judge from a name / path / model handle / ``(hf, tokenizer)`` / callable (returned as is)."""
    from ..model import MoEModel

    if isinstance(judge, _LocalJudge):
        return judge
    if isinstance(judge, MoEModel):
        return _LocalJudge(judge.hf, judge.tokenizer, judge.name)
    if isinstance(judge, tuple) and len(judge) == 2:
        return _LocalJudge(*judge)
    if isinstance(judge, str):
        if judge in ("toy", "toy-v1"):
            from ..model import load

            lm = load(judge, device=device)
            return _LocalJudge(lm.hf, lm.tokenizer, judge)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            hf = AutoModelForCausalLM.from_pretrained(judge)
            tok = AutoTokenizer.from_pretrained(judge)
        except Exception as err:
            raise UserError(f"could not load the judge model {judge!r} ({type(err).__name__}: {err}); give a local "
                            f"model directory, a hub id (needs the network) or a callable") from err
        if device is not None:
            hf = hf.to(device)
        return _LocalJudge(hf.eval(), tok, judge)
    if callable(judge):
        return judge
    raise UserError(f"a judge is a model name or directory, a MoEModel, (hf_model, tokenizer) or a callable "
                    f"prompt -> text; got {type(judge).__name__}")


def _lse(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def _likelihood_verdicts(j: _LocalJudge, prompts: list[str], batch_size: int, progress: bool) -> list[dict]:
    from .choice import loglikelihoods

    reqs, forms = [], []
    for p in prompts:
        text, chat = j.wrap(p)
        sep = "" if chat else " "
        words = {"yes": [sep + "yes", sep + "Yes"], "no": [sep + "no", sep + "No"]}
        forms.append(words)
        reqs.extend((text, w) for w in words["yes"] + words["no"])
    scores = loglikelihoods(j, reqs, batch_size, progress, desc="judge")
    out = []
    for i in range(len(prompts)):
        lp = [s for s, _ in scores[4 * i:4 * i + 4]]
        yes, no = _lse(lp[:2]), _lse(lp[2:])
        out.append({"verdict": "yes" if yes > no else "no", "logprob_yes": yes, "logprob_no": no})
    return out


@torch.no_grad()
def _generated_verdicts(j: _LocalJudge, prompts: list[str], batch_size: int, progress: bool) -> list[str]:
    tok, out = j.tokenizer, []
    for s in tqdm(range(0, len(prompts), batch_size), desc="judge", disable=not progress, unit="batch"):
        texts = [j.wrap(p)[0] for p in prompts[s:s + batch_size]]
        enc = [tok(t, add_special_tokens=not getattr(tok, "chat_template", None))["input_ids"] for t in texts]
        T = max(len(e) for e in enc)
        ids = torch.full((len(enc), T), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, e in enumerate(enc):  # left padding for generation
            ids[b, T - len(e):] = torch.tensor(e)
            mask[b, T - len(e):] = 1
        gen = j.hf.generate(input_ids=ids.to(j.device), attention_mask=mask.to(j.device), max_new_tokens=8,
                            do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        out.extend(tok.decode(row[T:], skip_special_tokens=True).strip() for row in gen)
    return out


def judge_accuracy(predictions: Sequence[str], examples: Sequence, judge: Callable | object, mode: str | None = None,
                   batch_size: int = 8, progress: bool = False, em: Sequence[float] | None = None) -> dict:
    """AccLLM ×100 of ``predictions`` ``[n]`` on QA ``examples`` ``[n]`` (with ``.question``, ``.answers``).

    Args:
        judge: see the module docstring (callable, name/path, MoEModel, ``(hf, tokenizer)``).
        mode: ``"likelihood"`` (default for local models) or ``"generate"``; callables always generate.
        em: ``[n]`` exact-match scores (0/1) to compare with; computed with SQuAD normalisation when None.
    Returns:
        ``{"acc_llm", "n", "n_unparsed", "agreement_with_em", "table" {both_correct, judge_only, em_only,
        both_wrong}, "judged" [n] (True / False / None), "verdicts" [n] (raw), "judge", "judge_mode",
        "judge_prompt"}``.
    """
    from .metrics import em_f1

    preds, exs = list(predictions), list(examples)
    if len(preds) != len(exs):
        raise UserError(f"{len(preds)} predictions for {len(exs)} examples")
    if not exs:
        raise UserError("judge_accuracy got no examples")
    j = load_judge(judge)
    prompts = [judge_prompt(ex.question, ex.answers, p) for p, ex in zip(preds, exs)]
    if isinstance(j, _LocalJudge):
        mode = mode or "likelihood"
        if mode == "likelihood":
            raw = _likelihood_verdicts(j, prompts, batch_size, progress)
            judged = [r["verdict"] == "yes" for r in raw]
        elif mode == "generate":
            raw = _generated_verdicts(j, prompts, batch_size, progress)
            judged = [parse_verdict(r) for r in raw]
        else:
            raise UserError(f"judge mode must be 'likelihood' or 'generate'; got {mode!r}")
        name = j.name
    else:
        if mode not in (None, "generate"):
            raise UserError("a callable judge returns text: its mode is 'generate'")
        mode, name = "generate", getattr(j, "__name__", type(j).__name__)
        raw = []
        for p in tqdm(prompts, desc="judge", disable=not progress):
            r = j(p)
            if not isinstance(r, str):
                raise UserError(f"the judge callable returned {type(r).__name__}, not text")
            raw.append(r)
        judged = [parse_verdict(r) for r in raw]
    ems = [em_f1(p, ex.answers)[0] for p, ex in zip(preds, exs)] if em is None else [float(e) for e in em]
    ok = [bool(v) for v in judged]
    table = {"both_correct": 0, "judge_only": 0, "em_only": 0, "both_wrong": 0}
    for v, e in zip(ok, ems):
        table["both_correct" if v and e else "judge_only" if v else "em_only" if e else "both_wrong"] += 1
    n = len(exs)
    return {"acc_llm": 100.0 * sum(ok) / n, "n": n, "n_unparsed": sum(v is None for v in judged),
            "agreement_with_em": 100.0 * (table["both_correct"] + table["both_wrong"]) / n, "table": table,
            "judged": judged, "verdicts": raw, "judge": str(name), "judge_mode": mode, "judge_prompt": JUDGE_PROMPT}
