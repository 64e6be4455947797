"""SteerMoE-style selection: the risk difference of experts' activation rates between paired inputs.

SteerMoE (Fayyaz et al., ICLR 2026; ``adobe-research/SteerMoE``, ``calc_risk_diff``) runs paired inputs
that show opposite behaviours, counts on the target tokens how often each expert is in a token's top-k,
and scores ``risk_diff = a₁ / n₁ − a₂ / n₂`` (activation rate in behaviour 1 minus behaviour 2, tokens
pooled). Experts with the largest positive difference are activated, the most negative ones deactivated;
the ranking is global over (layer, expert), by ``|risk_diff|``. Two pairings of a conflict example here:

- ``"context"``: the answer after the open-book prompt vs the same answer after the closed-book prompt
  (the question alone): experts the context brings in.
- ``"faithful"``: the open-book prompt followed by the context answer (faithful) vs by the memory answer
  (unfaithful): experts of the faithful generation.

``span="answer"`` counts at the answer tokens (teacher-forced, as SteerMoE counts at the response
tokens); ``span="last"`` at the last prompt position (``"context"`` only: under ``"faithful"`` both inputs
share the prompt, so the difference there is 0 by construction).
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from ..errors import UserError
from .contrast import _count
from .scores import ExpertScores

PAIRINGS = ("context", "faithful")
SPANS = ("answer", "last")


def _pairs(data, pairing: str):
    """Per example the two QAExamples of the pair (behaviour 1, behaviour 2)."""
    out = []
    for i, ex in enumerate(data):
        if not ex.context:
            raise UserError(f"example {i} has no context; risk_difference pairs inputs with and without their context")
        if pairing == "context":
            out.append((ex, replace(ex, context="")))
        else:
            if not getattr(ex, "memory_answer", None):
                raise UserError(f"pairing='faithful' needs conflict data with a memory answer; example {i} has none "
                                f"(use toy-conflict / nq-swap, or pairing='context')")
            out.append((ex, replace(ex, answers=[ex.memory_answer])))
    return out


def _rates(lm, encoded, span: str, batch_size: int) -> tuple[torch.Tensor, int]:
    """Top-k counts ``[L, E]`` at the ``span`` positions of each encoded sequence, and the number of positions
    (:func:`.contrast._count`, the same span-restricted routing count the contrast uses)."""
    if span == "answer":
        select = lambda e: e.answer
    else:
        select = lambda e: torch.tensor([e.last_prompt])
    return _count(lm, encoded, select, batch_size, progress=False, desc="risk")


def risk_difference(lm, data, pairing: str = "context", span: str = "answer", batch_size: int = 32) -> ExpertScores:
    """Activation rate of every (MoE layer, expert) in behaviour 1 minus behaviour 2 (see the module docstring).

    Returns :class:`ExpertScores` of kind ``"risk_difference"``, ``scores [L, E]`` in ``[-1, 1]`` (a row
    sums to 0 when every token has ``k`` distinct experts); ``meta`` holds ``pairing``, ``span``, the counts
    ``a1``/``a2`` (nested lists ``[L][E]``) and the token totals ``n1``/``n2``. Positive: more active in the
    first input of the pair (with the context / the faithful answer). Masks and adapters in force apply.
    """
    if pairing not in PAIRINGS:
        raise UserError(f"unknown pairing {pairing!r}; use 'context' (open vs closed book) or 'faithful' "
                        f"(context answer vs memory answer)")
    if span not in SPANS:
        raise UserError(f"unknown span {span!r}; use 'answer' (answer tokens) or 'last' (last prompt position)")
    if pairing == "faithful" and span == "last":
        raise UserError("pairing='faithful' with span='last' compares the same prompt with itself; use span='answer'")
    data = list(data)
    if not data:
        raise UserError("risk_difference got no examples")
    t0 = time.time()
    pairs = _pairs(data, pairing)
    enc1 = [lm.encode(a, with_answer=True) for a, _ in pairs]
    enc2 = [lm.encode(b, with_answer=True) for _, b in pairs]
    was = lm.hf.training
    lm.hf.eval()
    try:
        a1, n1 = _rates(lm, enc1, span, batch_size)
        a2, n2 = _rates(lm, enc2, span, batch_size)
    finally:
        lm.hf.train(was)
    rd = a1.double() / max(n1, 1) - a2.double() / max(n2, 1)
    spec = lm.spec
    return ExpertScores(rd, list(spec.moe_layers), "risk_difference", "selection_rate", len(data), spec.top_k,
                        meta={"pairing": pairing, "span": span, "a1": a1.tolist(), "a2": a2.tolist(), "n1": n1,
                              "n2": n2, "seconds": round(time.time() - t0, 2)})


def steermoe_sets(rd: ExpertScores, n_activate: int = 0, n_deactivate: int = 0):
    """SteerMoE's choice from a risk difference: the ``n_activate`` largest positive differences (at most
    ``k`` per layer: an expert in a full layer is skipped and the next one taken) and the ``n_deactivate``
    most negative ones (at most ``E − k`` per layer), ranked globally over (layer, expert).

    Returns ``(activate, deactivate)`` ExpertSets (``meta`` records method and n); fewer experts than asked
    when fewer have a difference of that sign.
    """
    from ..analysis.selection import ExpertSet

    for name, v in (("n_activate", n_activate), ("n_deactivate", n_deactivate)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise UserError(f"{name}={v!r}: give a whole number ≥ 0 of experts")
    L, E = rd.scores.shape
    k = rd.top_k
    flat = rd.scores.reshape(-1)

    def take(order, n, cap, sign):
        per: dict[int, list[int]] = {}
        got = 0
        for i in order.tolist():
            if got >= n or sign * float(flat[i]) <= 0:
                break
            layer = rd.layers[i // E]
            if len(per.get(layer, [])) < cap:
                per.setdefault(layer, []).append(i % E)
                got += 1
        return per

    # stable sorts: ties go to the lower (layer, expert), so the same scores always give the same sets
    act = take(torch.sort(-flat, stable=True).indices, n_activate, k, +1)
    deact = take(torch.sort(flat, stable=True).indices, n_deactivate, E - k, -1)
    meta = {"method": f"risk_difference_{rd.meta.get('pairing', '?')}"}
    return (ExpertSet(act, meta={**meta, "n": n_activate, "direction": "activate"}),
            ExpertSet(deact, meta={**meta, "n": n_deactivate, "direction": "deactivate"}))
