"""A small, dependency-free greedy-decoding EM helper for the toy model (used in pretraining and tests).

The toolkit's own ``rl.evaluate`` is the reference; this one exists so that ``toy/`` runs on a bare
machine (torch + transformers only). Prompts are ``plain_prompt(context, question)``; decoding is
greedy and stops at EOS or a newline, as in the toolkit.
"""
from __future__ import annotations

import re
import string

import torch

from routerlens_interp.prompts.templates import plain_prompt


_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower-case, strip punctuation and articles, fold white space."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


@torch.no_grad()
def greedy_answers(model, tokenizer, examples, batch_size: int = 128, max_new_tokens: int = 6) -> list[str]:
    """Greedy answers (text, stripped) for ``examples`` (QAExample list), left-padded batches."""
    model_was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    out: list[str] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        seqs = [tokenizer.encode(plain_prompt(e.context, e.question), add_special_tokens=False) for e in chunk]
        L = max(map(len, seqs))
        ids = torch.full((len(seqs), L), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), L), dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, L - len(s):] = torch.tensor(s)
            mask[j, L - len(s):] = 1
        ids, mask = ids.to(device), mask.to(device)
        gen = [[] for _ in chunk]
        done = [False] * len(chunk)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        o = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        for _ in range(max_new_tokens):
            nxt = o.logits[:, -1].argmax(-1)
            for j, t in enumerate(nxt.tolist()):
                if not done[j]:
                    if t == eos:
                        done[j] = True
                    else:
                        gen[j].append(t)
                        done[j] = "\n" in tokenizer.decode(gen[j])
            if all(done):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            pos = pos[:, -1:] + 1
            o = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                      past_key_values=o.past_key_values, use_cache=True)
        out += [tokenizer.decode(g).split("\n")[0].strip() for g in gen]
    model.train(model_was_training)
    return out


def score(predictions: list[str], examples) -> dict:
    """EM (x100, max over gold answers) and memory_rate (x100, prediction == memory_answer)."""
    em = [max(normalize_answer(p) == normalize_answer(a) for a in e.answers) for p, e in zip(predictions, examples)]
    res = {"em": 100.0 * sum(em) / max(len(em), 1), "n": len(em)}
    mem = [(p, e) for p, e in zip(predictions, examples) if e.memory_answer is not None]
    if mem:
        res["memory_rate"] = 100.0 * sum(normalize_answer(p) == normalize_answer(e.memory_answer) for p, e in mem) / len(mem)
    return res


def evaluate_toy(model, tokenizer, examples, batch_size: int = 128) -> dict:
    """Greedy-decode ``examples`` and score them: {"em", "n", ["memory_rate"], "predictions"}."""
    preds = greedy_answers(model, tokenizer, examples, batch_size=batch_size)
    return {**score(preds, examples), "predictions": preds}


def toy_prefix(world: str) -> str:
    """Data-set name prefix of a toy world: "v1" -> "toy" (toy-open ...), "v2" -> "toy2"."""
    if world not in ("v1", "v2"):
        raise ValueError(f"toy world {world!r}: choose 'v1' or 'v2'")
    return "toy" if world == "v1" else "toy2"


def model_world(config) -> str:
    """The toy world a model was pretrained on (``config.routerlens_toy_world``; "v1" when absent)."""
    return getattr(config, "routerlens_toy_world", None) or "v1"


def toy_metrics(model, tokenizer, split: str = "dev", n: int | None = 200, batch_size: int = 128,
                world: str = "v1") -> dict:
    """The three headline numbers on the first ``n`` examples of ``split`` (``world`` "v2": the toy2-* sets).

    Returns {"open_em", "recall", "conflict_em", "memory_rate"} (all x100): open-book EM on unseen
    people (toy-open), closed-book recall (toy-memory EM), and toy-conflict EM / memory rate.
    """
    from routerlens_interp.toy.data import toy_dataset
    sel = (lambda d: d[:n]) if n else (lambda d: d)
    pre = toy_prefix(world)
    op = evaluate_toy(model, tokenizer, sel(toy_dataset(f"{pre}-open", split)), batch_size)
    me = evaluate_toy(model, tokenizer, sel(toy_dataset(f"{pre}-memory", split)), batch_size)
    co = evaluate_toy(model, tokenizer, sel(toy_dataset(f"{pre}-conflict", split)), batch_size)
    return {"open_em": op["em"], "recall": me["em"], "conflict_em": co["em"], "memory_rate": co["memory_rate"],
            "samples": [op["predictions"][:3], me["predictions"][:3], co["predictions"][:3]]}
