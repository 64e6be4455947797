"""Batched greedy decoding and EM/F1 scoring of a model on QA examples."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .examples import QAExample
from .metrics import aggregate


def stop_token_ids(lm) -> list[int]:
    """EOS plus every token whose text contains a newline (decoding stops at either); cached on ``lm``."""
    cached = getattr(lm, "_stop_ids", None)
    if cached is None:
        tok = lm.tokenizer
        ids = [i for i in range(len(tok)) if "\n" in tok.decode([i])]
        cached = sorted(set(ids) | ({tok.eos_token_id} if tok.eos_token_id is not None else set()))
        lm._stop_ids = cached
    return cached


@torch.no_grad()
def generate(lm, examples: list[QAExample], max_new_tokens: int = 32, batch_size: int = 16,
             progress: bool = False) -> list[str]:
    """Greedy answers (text up to EOS or the first newline, stripped) for each example.

    Prompts are left padded into batches of ``batch_size`` and decoded with the KV cache.
    """
    preds: list[str] = []
    stops = stop_token_ids(lm)
    was_training = lm.hf.training
    lm.hf.eval()
    try:
        for s in tqdm(range(0, len(examples), batch_size), desc="generate", disable=not progress, unit="batch"):
            enc = [lm.encode(ex) for ex in examples[s:s + batch_size]]
            batch = lm.batch(enc, side="left")
            out = lm.hf.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                                 pad_token_id=lm.tokenizer.pad_token_id)
            new = out[:, batch["input_ids"].shape[1]:]
            for row in new:
                text = lm.tokenizer.decode(row, skip_special_tokens=True)
                preds.append(text.split("\n")[0].strip())
    finally:
        lm.hf.train(was_training)
    return preds


def evaluate(lm, data: list[QAExample], max_new_tokens: int = 32, batch_size: int = 16,
             progress: bool = False) -> dict:
    """Score ``lm`` on ``data`` by greedy decoding.

    Returns ``{"em", "f1", "n", "memory_rate", "predictions"}``: EM/F1 ×100 with SQuAD v1.1
    normalisation (max over gold answers); ``memory_rate`` = % of predictions equal to the example's
    ``memory_answer`` among examples that have one (None when none has).
    Masks and adapters in force (context managers) apply.
    """
    if not data:
        raise ValueError("evaluate got no examples")
    preds = generate(lm, list(data), max_new_tokens, batch_size, progress)
    scores = aggregate(preds, list(data))
    scores["predictions"] = preds
    return scores
