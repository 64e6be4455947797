"""Router steering: raise chosen experts' router scores by β, the training-free counterpart of router tuning."""
from __future__ import annotations

import math
import time
from contextlib import ExitStack, contextmanager
from typing import Iterator, Mapping

import torch

from ..errors import UserError
from ..hooks.selfcheck import require_reroute
from ..hooks.tap import logit_bias


def _clean(spec, experts) -> dict[int, list[int]]:
    items = experts.items() if hasattr(experts, "items") else experts
    out = {}
    for layer, ids in items:
        layer = int(layer)
        ids = sorted({int(e) for e in ids})
        for e in ids:
            spec.check_expert(layer, e)
        if ids:
            out[layer] = ids
    return out


FORCE = ("in", "out")


@contextmanager
def boost_experts(lm, experts: Mapping[int, list[int]], beta) -> Iterator[dict[int, list[int]]]:
    """Add ``beta`` to the chosen experts' router scores while the ``with`` block runs (``beta = "in"`` /
    ``"out"``: force them into / out of every token's top-k instead, :func:`~.force.force_experts`).

    "Router score" is the router linear's output, the logit ``[T, E]`` before the family's own
    normalisation (softmax, sigmoid, sparsemixer ...): the family's code then computes the weights from the
    boosted logits, as if router tuning had moved those rows of the router by β. The same β is added, for
    the choice only, wherever the family ranks experts (every top-k over the expert axis): a family that
    chooses on scores that are not a monotone function of the logit alone (a correction bias added to
    sigmoid scores, group-limited top-k) then still gives a boosted expert a rank raised by β, while the
    weights it applies stay the family's own. Consequences: ``beta = 0`` is bit-identical to no
    intervention; a large ``beta`` puts the boosted experts in every token's top-k (the ``k`` best of them
    when more than ``k`` are boosted); a negative ``beta`` is soft deactivation (a large one keeps them out
    of every top-k while more than ``k`` experts are not lowered).

    Acts through the same routing tap as ``mask_experts(mode="reroute")`` and is refused where reroute is
    (:class:`RerouteUnavailable`, found by the model's self-check), naming the family, layer and reason.

    Args:
        lm: a :class:`~routerlens_interp.model.MoEModel`.
        experts: ``{decoder_layer: [expert_id, ...]}`` (an ExpertSet works).
        beta: a finite float added to the logits of the chosen experts (negative: deactivation), or
            ``"in"`` / ``"out"`` (SteerMoE-style forcing: just above the ``k``-th largest score / below the
            smallest, per token; at most ``k`` per layer in, ``E − k`` out).

    Yields the validated ``{layer: [ids]}``.
    """
    if isinstance(beta, str):
        if beta not in FORCE:
            raise UserError(f"beta {beta!r}: give a number, 'in' (force into the top-k) or 'out' (force out of it)")
        from .force import force_experts

        with force_experts(lm, **{"activate" if beta == "in" else "deactivate": experts}) as f:
            yield f[beta]
        return
    beta = float(beta)
    if not math.isfinite(beta):
        raise UserError(f"beta must be finite (got {beta}); to exclude experts use rl.mask_experts")
    spec, hooks = lm.spec, lm.hooks
    clean = _clean(spec, experts)
    if clean:
        require_reroute(lm, clean, "steering", "it edits the routing as mode='reroute' masking does")
    with ExitStack() as stack:
        for layer, ids in clean.items():
            bias = torch.zeros(spec.n_experts)
            bias[ids] = beta
            fn = logit_bias(bias)
            stack.enter_context(hooks.edit(f"blocks.{layer}.router.hook_logits", fn))
            stack.enter_context(hooks.edit(f"blocks.{layer}.router.hook_select", fn))
        yield clean


def steer(lm, experts, betas, conflict, open_book=None, memory=None, batch_size: int = 16,
          progress: bool = False, log=None) -> list[dict]:
    """Sweep β: per β the conflict EM and memory rate, open-book EM and closed-book recall (greedy decoding).

    Args:
        experts: the experts to boost (an ExpertSet or ``{layer: [ids]}``).
        betas: the values of β to try (0 gives the unsteered model; ``"in"`` / ``"out"`` force the experts
            into / out of every top-k, see :func:`boost_experts`).
        conflict: conflict QAExamples (with ``memory_answer``); ``open_book`` / ``memory``: optional
            open-book and closed-book sets (recall = EM on closed-book questions).

    Returns one dict per β: ``beta, em, f1, memory_rate, open_em, recall, seconds``.
    """
    from ..evaluation.generate import evaluate

    rows = []
    for beta in betas:
        t0 = time.time()
        with boost_experts(lm, experts, beta):
            c = evaluate(lm, conflict, batch_size=batch_size, progress=progress)
            o = evaluate(lm, open_book, batch_size=batch_size) if open_book else None
            m = evaluate(lm, memory, batch_size=batch_size) if memory else None
        row = {"beta": beta if isinstance(beta, str) else float(beta), "em": c["em"], "f1": c["f1"], "memory_rate": c["memory_rate"],
               "open_em": o["em"] if o else None, "recall": m["em"] if m else None,
               "seconds": round(time.time() - t0, 2)}
        rows.append(row)
        if log:
            log(row)
    return rows


def best_beta(rows: list[dict], key: str = "em") -> dict:
    """The row of :func:`steer` with the highest ``key`` (the smallest |β| among ties; forcing counts as
    the largest)."""
    return max(rows, key=lambda r: (r[key], -(math.inf if isinstance(r["beta"], str) else abs(r["beta"]))))
