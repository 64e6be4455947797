"""Multiple choice by log-likelihood: MemoTrap's two endings, MMLU's letters (0-shot and k-shot).

Every choice is a continuation of a context string; its score is the summed log-probability of the
continuation's tokens given the context, exactly as lm-evaluation-harness computes it for
``output_type: multiple_choice`` (trailing spaces of the context move to the continuation; the pair is
tokenised whole and split at the context's length; no special tokens; an empty context is replaced by the
EOS token; over-long inputs lose tokens from the left). The prediction is the arg-max; ``accuracy_norm``
divides each score by the continuation's length in characters first (lm-eval's ``acc_norm``).

MMLU's prompt is lm-eval's ``mmlu`` task: ``"The following are multiple choice questions (with answers) about
{subject}.\\n\\n"``, then k solved ``dev`` examples and the question, each ``"{question}\\nA. …\\nD. …\\nAnswer:"``
(solved ones followed by ``" {letter}"``), separated by blank lines; the continuations are ``" A"`` … ``" D"``.
Masks and adapters in force (context managers) apply: scoring runs the model's ordinary forward.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..data.benchmarks import LETTERS, ChoiceExample
from ..errors import UserError

__all__ = ["render_choice", "encode_pair", "loglikelihood_tokens", "loglikelihoods", "choice_accuracy",
           "fewshot_pool", "MMLU_DESCRIPTION"]

MMLU_DESCRIPTION = "The following are multiple choice questions (with answers) about {subject}.\n\n"


def _letters_block(ex: ChoiceExample) -> str:
    opts = "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(ex.choices))
    return f"{ex.prompt.strip()}{opts}\nAnswer:"


def render_choice(ex: ChoiceExample, shots: Sequence[ChoiceExample] = ()) -> tuple[str, list[str]]:
    """→ (context text, continuation texts ``[n_choices]``) for ``ex`` after the solved examples ``shots``."""
    if ex.style == "letters":
        subject = str(ex.meta.get("subject") or "").replace("_", " ").strip()
        head = MMLU_DESCRIPTION.format(subject=subject) if subject else ""
        solved = [f"{_letters_block(s)} {LETTERS[s.label]}" for s in shots]
        return head + "\n\n".join(solved + [_letters_block(ex)]), [f" {LETTERS[i]}" for i in range(len(ex.choices))]
    solved = [s.prompt + s.choices[s.label] for s in shots]
    return "\n\n".join(solved + [ex.prompt]), list(ex.choices)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's ``TemplateLM._encode_pair`` (causal): → (context ids, continuation ids), no special tokens."""
    enc = lambda s: list(tokenizer(s, add_special_tokens=False)["input_ids"])
    if context == "":
        cont = enc(continuation)
        eos = tokenizer.eos_token_id
        return ([eos], cont) if not cont or cont[0] != eos else (cont[:1], cont[1:])
    n = len(context) - len(context.rstrip())
    if n:
        continuation, context = context[-n:] + continuation, context[:-n]
    whole, ctx = enc(context + continuation), enc(context)
    return ctx, whole[len(ctx):]


def loglikelihood_tokens(lm, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 16,
                         progress: bool = False, desc: str = "loglikelihood") -> list[tuple[float, bool]]:
    """Summed log-probability of each continuation given its context, and whether greedy decoding yields it.

    Args:
        pairs: ``[(context_ids, continuation_ids)]``; the continuation must not be empty.
    Returns:
        ``[(logprob, is_greedy)]`` in the order given. One forward per batch of ``batch_size`` inputs, right
        padded (positions of a row do not depend on the padding after it). Inputs longer than the model's
        window keep their last ``window`` tokens.
    """
    window = lm.window or 10 ** 9
    rows, truncated = [], 0
    for ctx, cont in pairs:
        if not cont:
            raise UserError("a choice encodes to no tokens; every choice needs some text")
        full = (list(ctx) + list(cont))[-(window + 1):]
        truncated += len(ctx) + len(cont) > window + 1
        rows.append((full[:-1], list(cont)))
    if truncated:
        warnings.warn(f"{truncated} of {len(rows)} inputs were longer than the model's window of {window} tokens and "
                      f"lost tokens from the left", stacklevel=2)
    return _score_rows(lm, rows, batch_size, progress, desc)


@torch.no_grad()
def _score_rows(lm, rows: list[tuple[list[int], list[int]]], batch_size: int, progress: bool,
                desc: str) -> list[tuple[float, bool]]:
    """(input ids, continuation ids) rows → (summed log-probability, is greedy); one forward per batch."""
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    out: list[tuple[float, bool]] = []
    was = lm.hf.training
    lm.hf.eval()
    try:
        for s in tqdm(range(0, len(rows), batch_size), desc=desc, disable=not progress, unit="batch"):
            chunk = rows[s:s + batch_size]
            T = max(len(inp) for inp, _ in chunk)
            ids = torch.full((len(chunk), T), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), T), dtype=torch.long)
            for b, (inp, _) in enumerate(chunk):
                ids[b, :len(inp)] = torch.tensor(inp)
                mask[b, :len(inp)] = 1
            logits = lm.hf(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)).logits  # [B, T, V]
            for b, (inp, cont) in enumerate(chunk):
                n = len(cont)
                # [n, V] in float32, only the continuation's rows: position t predicts token t + 1
                rows_lp = torch.log_softmax(logits[b, len(inp) - n:len(inp)].float(), dim=-1)
                tgt = torch.tensor(cont, device=rows_lp.device)
                lp = float(rows_lp.gather(1, tgt[:, None]).sum())
                out.append((lp, bool((rows_lp.argmax(-1) == tgt).all())))
    finally:
        lm.hf.train(was)
    return out


def loglikelihoods(lm, requests: Sequence[tuple[str, str]], batch_size: int = 16, progress: bool = False,
                   desc: str = "loglikelihood") -> list[tuple[float, bool]]:
    """:func:`loglikelihood_tokens` of text pairs ``[(context, continuation)]`` (encoded by :func:`encode_pair`)."""
    pairs = [encode_pair(lm.tokenizer, c, x) for c, x in requests]
    return loglikelihood_tokens(lm, pairs, batch_size, progress, desc)


def fewshot_pool(examples: Sequence[ChoiceExample], ex: ChoiceExample, k: int) -> list[ChoiceExample]:
    """The first ``k`` examples of ``examples`` with ``ex``'s subject (lm-eval's ``first_n`` sampler), never ``ex``."""
    subject = ex.meta.get("subject")
    same = [s for s in examples if s.meta.get("subject") == subject and s is not ex
            and (s.prompt, s.choices) != (ex.prompt, ex.choices)]
    if len(same) < k:
        raise UserError(f"{k}-shot needs {k} solved examples of subject {subject!r}; the few-shot pool has "
                        f"{len(same)} (MMLU keeps 5 per subject in its 'dev' split: "
                        f"fewshot=rl.load_dataset('mmlu', split='dev'))")
    return same[:k]


def choice_accuracy(lm, data: Sequence[ChoiceExample], shots: int = 0, fewshot: Sequence[ChoiceExample] | None = None,
                    batch_size: int = 16, progress: bool = False) -> dict:
    """Accuracy ×100 of choosing each example's ``label`` by log-likelihood.

    Args:
        data: ``[n]`` :class:`~routerlens_interp.data.benchmarks.ChoiceExample`.
        shots: solved examples before each question (MMLU: 0 or 5); they come from ``fewshot`` (same
            subject, in order). MMLU loaded from the hub fetches its ``dev`` split when ``fewshot`` is None.
    Returns:
        ``{"accuracy", "accuracy_norm", "n", "shots", "predictions" [n] (chosen index),
        "logprobs" [n][n_choices], "metric": "accuracy"}``.
    """
    data = list(data)
    if not data:
        raise UserError("choice_accuracy got no examples")
    if not all(isinstance(ex, ChoiceExample) for ex in data):
        raise UserError("choice_accuracy scores multiple-choice examples (MemoTrap, MMLU); QA data is scored by "
                        "rl.evaluate with EM/F1")
    shots = int(shots)
    if shots < 0:
        raise UserError(f"shots must be ≥ 0; got {shots}")
    if shots and fewshot is None:
        fewshot = _hub_fewshot(data)
    requests, spans = [], []
    for ex in data:
        ctx, conts = render_choice(ex, fewshot_pool(fewshot, ex, shots) if shots else ())
        spans.append((len(requests), len(conts), conts))
        requests.extend((ctx, c) for c in conts)
    scores = loglikelihoods(lm, requests, batch_size, progress, desc="choices")
    preds, preds_norm, logprobs = [], [], []
    for start, k, conts in spans:
        lp = [scores[start + j][0] for j in range(k)]
        norm = [v / max(len(c), 1) for v, c in zip(lp, conts)]  # lm-eval's acc_norm: per character
        logprobs.append(lp)
        preds.append(max(range(k), key=lp.__getitem__))
        preds_norm.append(max(range(k), key=norm.__getitem__))
    n = len(data)
    acc = 100.0 * sum(p == ex.label for p, ex in zip(preds, data)) / n
    acc_norm = 100.0 * sum(p == ex.label for p, ex in zip(preds_norm, data)) / n
    return {"metric": "accuracy", "accuracy": acc, "accuracy_norm": acc_norm, "n": n, "shots": shots,
            "predictions": preds, "logprobs": logprobs}


def _hub_fewshot(data: Sequence[ChoiceExample]) -> list[ChoiceExample]:
    """MMLU's ``dev`` split for the configs ``data`` came from (the network); UserError for anything else."""
    if any(ex.meta.get("benchmark") != "mmlu" or ex.meta.get("source") != "mmlu" for ex in data):
        raise UserError("k-shot scoring needs solved examples: pass fewshot=[ChoiceExample, ...] (for MMLU from a "
                        "local file: the 'dev' split of the same subjects)")
    from ..data import load_dataset

    pool: list[ChoiceExample] = []
    for config in sorted({str(ex.meta.get("config") or "all") for ex in data}):
        pool.extend(load_dataset("mmlu" if config == "all" else f"mmlu:{config}", split="dev"))
    return pool
