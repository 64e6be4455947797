"""The metrics attribution and masking effects are measured on, as token log-probabilities of a batch.

- ``faithfulness``: log p(context answer) − log p(memory answer), on conflict data (NQ-Swap-like: each
  example has a ``memory_answer``); positive = the model prefers what the context says.
- ``answer``: log p(gold answer).

``tokens="first"`` scores the first answer token at the last prompt position (one sequence per
example, the prompt alone); ``tokens="all"`` scores the whole answer by teacher forcing (one sequence per
answer: gold, and for faithfulness the memory answer too). Both are means over examples.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import UserError
from ..examples import QAExample

METRICS = ("faithfulness", "answer")
TOKENS = ("first", "all")


@dataclass
class Item:
    """One sequence to run and the log-probabilities it contributes: ``Σ sign · log p(token | prefix)``.

    Attributes:
        encoded: the :class:`~routerlens_interp.prompts.Encoded` sequence.
        pos: ``[n]`` positions whose next-token distribution is scored.
        tok: ``[n]`` the token scored at each position.
        sign: +1 or −1 (the memory answer of ``faithfulness`` counts negatively).
    """

    encoded: object
    pos: torch.Tensor
    tok: torch.Tensor
    sign: float


def check_metric(metric: str, tokens: str) -> None:
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; use one of {list(METRICS)}")
    if tokens not in TOKENS:
        raise UserError(f"unknown tokens={tokens!r}; use 'first' (first answer token) or 'all' (the whole answer)")


def build_items(lm, data, metric: str = "faithfulness", tokens: str = "first") -> list[list[Item]]:
    """Per example the :class:`Item` s its metric is made of (tokenization done once, reused by every pass)."""
    check_metric(metric, tokens)
    data = list(data)
    if not data:
        raise UserError("no examples given; pass a non-empty list of QAExamples")
    if metric == "faithfulness":
        missing = [i for i, ex in enumerate(data) if not getattr(ex, "memory_answer", None)]
        if missing:
            raise UserError(f"metric='faithfulness' needs conflict data with a memory answer, but examples {missing[:5]} "
                            f"have none; use conflict data (toy-conflict, nq-swap, confiqa) or metric='answer'")
    out = []
    for ex in data:
        if not isinstance(ex, QAExample):
            raise UserError(f"expected QAExamples, got {type(ex).__name__}")
        answers = [ex.answer] + ([ex.memory_answer] if metric == "faithfulness" else [])
        if tokens == "first":
            enc = lm.encode(ex)
            ids = [int(lm.encode(replace(ex, answers=[a])).answer_ids[0]) if a != ex.answer else int(enc.answer_ids[0])
                   for a in answers]
            last = torch.tensor([enc.last_prompt])
            out.append([Item(enc, last, torch.tensor([t]), 1.0 if j == 0 else -1.0) for j, t in enumerate(ids)])
        else:
            items = []
            for j, a in enumerate(answers):
                enc = lm.encode(replace(ex, answers=[a]), with_answer=True)
                pos = enc.answer
                items.append(Item(enc, pos - 1, enc.input_ids[pos], 1.0 if j == 0 else -1.0))
            out.append(items)
    return out


def batches(items: list[list[Item]], batch_size: int):
    """Group whole examples into batches of at most ``batch_size`` examples → lists of Items."""
    for s in range(0, len(items), batch_size):
        yield [it for ex in items[s:s + batch_size] for it in ex], min(batch_size, len(items) - s)


def forward_metric(lm, batch_items: list[Item]) -> torch.Tensor:
    """Run one right-padded forward over ``batch_items`` → the summed metric (a 0-d tensor, in the graph)."""
    enc = [it.encoded for it in batch_items]
    b = lm.batch(enc)
    logits = lm.hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    total = logits.new_zeros((), dtype=torch.float32)
    rows = torch.cat([torch.full((len(it.pos),), i) for i, it in enumerate(batch_items)])
    pos = torch.cat([it.pos for it in batch_items])
    tok = torch.cat([it.tok for it in batch_items]).to(logits.device)
    sign = torch.cat([torch.full((len(it.pos),), it.sign) for it in batch_items]).to(logits.device)
    picked = logits[rows.to(logits.device), pos.to(logits.device)].float().log_softmax(-1)
    total = total + (sign * picked.gather(-1, tok[:, None]).squeeze(-1)).sum()
    return total


@torch.no_grad()
def mean_metric(lm, items: list[list[Item]], batch_size: int = 32) -> float:
    """The metric averaged over examples (masks and adapters in force apply)."""
    was = lm.hf.training
    lm.hf.eval()
    try:
        tot = sum(float(forward_metric(lm, b)) for b, _ in batches(items, batch_size))
    finally:
        lm.hf.train(was)
    return tot / len(items)
