"""Routing contrast: which experts a question's context makes the router pick, with no training."""
from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..examples import QAExample
from .scores import ExpertScores


@dataclass
class RoutingContrast:
    """Top-k selection counts with and without the context, and their difference as scores.

    Attributes:
        last: :class:`ExpertScores` ``[L, E]``: selection rate at the last prompt position (the one that
            predicts the first answer token) open-book minus closed-book; rates are per example, so a
            row sums to 0 and each entry is in ``[-1, 1]``.
        context: :class:`ExpertScores`: selection rate over the open-book prompt's context tokens minus
            the rate over every token of the closed-book prompt (which has no context: its tokens are the
            model's usage on the same question without one).
        counts: int64 ``[L, E]`` tensors ``open_last``, ``closed_last``, ``open_context``, ``closed_prompt``.
        n_tokens: tokens counted for each of ``counts``.
    """

    last: ExpertScores
    context: ExpertScores
    counts: dict
    n_tokens: dict


def _closed(ex: QAExample) -> QAExample:
    return replace(ex, context="")


@torch.no_grad()
def _count(lm, encoded, select, batch_size: int, progress: bool, desc: str) -> tuple[torch.Tensor, int]:
    """Top-k counts ``[L, E]`` over the positions ``select(enc) → [n]`` of each encoded example."""
    spec = lm.spec
    E = spec.n_experts
    counts = torch.zeros(len(spec.moe_layers), E, dtype=torch.long)
    state = {}

    def read(r):
        def fn(idx, w):
            k = idx.shape[-1]
            sel = idx.reshape(-1, k)[state["mask"].to(idx.device)]
            counts[r] += torch.bincount(sel.reshape(-1).long().cpu(), minlength=E)[:E]
        return fn

    n = 0
    with ExitStack() as st:
        for r, l in enumerate(spec.moe_layers):
            st.enter_context(lm.hooks.read(f"blocks.{l}.experts.hook_route", read(r)))
        for s in tqdm(range(0, len(encoded), batch_size), desc=desc, disable=not progress, unit="batch"):
            chunk = encoded[s:s + batch_size]
            b = lm.batch(chunk)
            T = b["input_ids"].shape[1]
            mask = torch.zeros(len(chunk), T, dtype=torch.bool)
            for i, e in enumerate(chunk):
                mask[i, select(e)] = True
            state["mask"] = mask.reshape(-1)
            n += int(mask.sum())
            lm.hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    return counts, n


def routing_contrast(lm, data, batch_size: int = 32, progress: bool = False) -> RoutingContrast:
    """Per expert, how much more often it is in the top-k when the question comes with its context.

    Each example is run twice: open-book (the paper's prompt) and closed-book (the same question with an
    empty context, ``templates.CLOSED_BOOK``). Counts are of top-k selections as the model routes them
    (masks and adapters in force apply). See :class:`RoutingContrast` for the two scores.
    """
    t0 = time.time()
    data = [ex for ex in data]
    if not data:
        raise UserError("routing_contrast got no examples")
    no_ctx = [i for i, ex in enumerate(data) if not ex.context]
    if no_ctx:
        raise UserError(f"examples {no_ctx[:5]} have no context; routing_contrast compares open-book with "
                        f"closed-book prompts, so every example needs a context")
    spec = lm.spec
    open_enc = [lm.encode(ex) for ex in data]
    closed_enc = [lm.encode(_closed(ex)) for ex in data]
    was = lm.hf.training
    lm.hf.eval()
    try:
        last = lambda e: torch.tensor([e.last_prompt])
        ol, nol = _count(lm, open_enc, last, batch_size, progress, "open-book")
        cl, ncl = _count(lm, closed_enc, last, batch_size, progress, "closed-book")
        oc, noc = _count(lm, open_enc, lambda e: e.context, batch_size, progress, "open-book context")
        cp, ncp = _count(lm, closed_enc, lambda e: torch.arange(e.prompt_len), batch_size, progress, "closed-book prompt")
    finally:
        lm.hf.train(was)
    n = len(data)
    rate = lambda c, m: c.double() / max(m, 1)
    meta = {"seconds": round(time.time() - t0, 2)}
    return RoutingContrast(
        last=ExpertScores(rate(ol, nol) - rate(cl, ncl), list(spec.moe_layers), "contrast_last", "selection_rate", n,
                          spec.top_k, meta=meta),
        context=ExpertScores(rate(oc, noc) - rate(cp, ncp), list(spec.moe_layers), "contrast_context",
                             "selection_rate", n, spec.top_k, meta=meta),
        counts={"open_last": ol, "closed_last": cl, "open_context": oc, "closed_prompt": cp},
        n_tokens={"open_last": nol, "closed_last": ncl, "open_context": noc, "closed_prompt": ncp})
