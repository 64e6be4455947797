"""Batched greedy decoding and EM/F1 scoring of a model on QA examples.

Decoding follows the paper's code (``evaluation.py`` of bigai-nlco/RouterLens): greedy, at most 32 new
tokens, stop at EOS (and at the chat template's end-of-turn token), decode without special tokens and strip
the surrounding white space. ``stop="newline"`` is this toolkit's earlier rule: stop also at any token
holding a newline and keep the text before the first newline.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..examples import QAExample
from .metrics import aggregate
from ..prompts.target import end_of_turn_ids
from ..prompts import encode, truncation_report

STOPS = ("eos", "newline")


def _check_stop(stop: str) -> None:
    if stop not in STOPS:
        raise UserError(f"unknown stop rule {stop!r}; use 'eos' (the paper's: EOS and the template's end-of-turn "
                        "token) or 'newline' (also at the first newline)")


def stop_token_ids(lm, stop: str = "eos") -> list[int]:
    """Token ids at which decoding stops: EOS and the chat template's end-of-turn token(s); with
    ``stop="newline"`` also every token whose text holds a newline. Cached on ``lm``."""
    _check_stop(stop)
    cache = lm.__dict__.setdefault("_stop_ids", {})
    if not isinstance(cache, dict):  # an older cache value
        cache = lm._stop_ids = {}
    if stop not in cache:
        tok = lm.tokenizer
        ids = set(end_of_turn_ids(tok))
        if stop == "newline":
            ids |= {i for i in range(len(tok)) if "\n" in tok.decode([i])}
        cache[stop] = sorted(ids)
    return cache[stop]


def _prediction(tokenizer, row: list[int], stops: set[int], stop: str) -> str:
    """Text of the new tokens ``row`` up to the first stop token, without special tokens, stripped."""
    cut = next((i for i, t in enumerate(row) if t in stops), len(row))
    text = tokenizer.decode(row[:cut], skip_special_tokens=True)
    if stop == "newline":
        text = text.split("\n")[0]
    return text.strip()


_OBSERVERS: dict[int, list] = {}


@contextmanager
def observe_batches(lm, fn):
    """While the block runs, :func:`generate` (and so :func:`evaluate`) calls ``fn(encoded, batch)`` before
    each batch of ``lm``, as its ``on_batch`` does: how an intervention learns the prompts' spans."""
    fns = _OBSERVERS.setdefault(id(lm.hf), [])
    fns.append(fn)
    try:
        yield
    finally:
        fns.remove(fn)
        if not fns:
            del _OBSERVERS[id(lm.hf)]


@torch.no_grad()
def generate(lm, examples: list[QAExample], max_new_tokens: int = 32, batch_size: int = 16,
             progress: bool = False, stop: str = "eos", on_batch=None) -> list[str]:
    """Greedy answers for each example, as the paper decodes (see the module docstring).

    Prompts are left padded into batches of ``batch_size`` and decoded with the KV cache. A context too
    long for the window less ``max_new_tokens`` is truncated around its answer, so the generated tokens
    stay inside the window; how many were is reported in one warning. ``on_batch(encoded, batch)``, when
    given, is called before each batch is decoded with its :class:`~routerlens_interp.prompts.Encoded` list
    and the padded ``input_ids`` / ``attention_mask`` ``[B, S]`` (for interventions that depend on the spans).
    """
    _check_stop(stop)
    preds: list[str] = []
    stops = stop_token_ids(lm, stop)
    stop_set = set(stops)
    window = getattr(lm, "window", None)
    if window is not None and window <= max_new_tokens:
        raise UserError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's window of "
                        f"{window} tokens; generate fewer new tokens")
    was_training = lm.hf.training
    lm.hf.eval()
    try:
        with truncation_report("generate"):
            for s in tqdm(range(0, len(examples), batch_size), desc="generate", disable=not progress, unit="batch"):
                chunk = examples[s:s + batch_size]
                enc = [encode(lm.tokenizer, ex, max_length=window, reserve=max_new_tokens) for ex in chunk]
                batch = lm.batch(enc, side="left")
                if on_batch is not None:
                    on_batch(enc, batch)
                for fn in list(_OBSERVERS.get(id(lm.hf), ())):
                    fn(enc, batch)
                out = lm.hf.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                                     pad_token_id=lm.tokenizer.pad_token_id)
                for row in out[:, batch["input_ids"].shape[1]:].tolist():
                    preds.append(_prediction(lm.tokenizer, row, stop_set, stop))
    finally:
        lm.hf.train(was_training)
    return preds


def evaluate(lm, data: list[QAExample], max_new_tokens: int = 32, batch_size: int = 16,
             progress: bool = False, stop: str = "eos", on_batch=None) -> dict:
    """Score ``lm`` on ``data`` by greedy decoding (:func:`generate`; ``stop`` = ``"eos"``, the paper's,
    or ``"newline"``).

    Returns ``{"em", "f1", "n", "memory_rate", "predictions"}``: EM/F1 ×100 with SQuAD v1.1
    normalisation (max over gold answers); ``memory_rate`` = % of predictions equal to the example's
    ``memory_answer`` among examples that have one (None when none has).
    Masks and adapters in force (context managers) apply; ``on_batch``: see :func:`generate`.
    """
    if not data:
        raise ValueError("evaluate got no examples")
    preds = generate(lm, list(data), max_new_tokens, batch_size, progress, stop=stop, on_batch=on_batch)
    scores = aggregate(preds, list(data))
    scores["predictions"] = preds
    return scores
