"""Exact where it matters: the first-order estimate for every expert, exact masking for its top candidates.

The attribution (:func:`~.attribution.attribute_experts`) ranks all experts in one forward and one
backward pass, but its error is largest where an expert matters most (removing a whole expert is not a
small perturbation). AtP*-style repair (Kramár et al. 2024): keep the estimate as a cheap filter and
recompute exactly where the ranking is decided — here, zero-masking each of the ``K`` highest-estimated
experts alone (:func:`~.effects.expert_effects`, ``K`` + 1 forward passes over the data) and re-ranking
them by the exact drop. Cost in passes over the data: 1 forward + 1 backward + (K + 1) forwards, against
``L·E + 1`` forwards for exhaustive masking.
"""
from __future__ import annotations

from .scores import ExpertScores


def cost(n_layers: int, n_experts: int, verify: int) -> dict:
    """Passes over the data: ``{"forward", "backward", "forward_equiv"}`` for attribute + verify ``verify``, and
    ``"exhaustive"`` (forwards of single-expert masking of every expert). A backward counts as two forwards
    in ``forward_equiv`` (the usual rule of thumb); ``"ratio"`` = forward_equiv / exhaustive."""
    fwd, bwd = 1 + (verify + 1 if verify else 0), 1
    ex = n_layers * n_experts + 1
    return {"forward": fwd, "backward": bwd, "forward_equiv": fwd + 2 * bwd, "exhaustive": ex,
            "ratio": (fwd + 2 * bwd) / ex}


def verify_top(lm, data, estimate: ExpertScores, k: int, metric: str = "faithfulness", tokens: str = "first",
               batch_size: int = 32, progress: bool = False) -> ExpertScores:
    """Replace the ``k`` largest estimates of ``estimate`` by the exact zero-masking drop of each expert alone.

    Returns :class:`ExpertScores` of kind ``"attribution_verified"``: ``scores [L, E]`` = exact drop for the
    verified experts, the estimate elsewhere (so the ranking of the top is by exact effect, and an expert the
    estimate over-rated falls below the ones it under-rated); ``meta["verified"]`` = ``[[layer, expert], ...]``
    in the order of the estimate, ``meta["estimate_verified"]`` their estimates, ``meta["cost"]`` the passes
    (:func:`cost`).
    """
    from ..errors import UserError
    from .effects import expert_effects

    L, E = estimate.scores.shape
    if not isinstance(k, int) or isinstance(k, bool) or not 0 < k <= L * E:
        raise UserError(f"verify={k!r}: give a whole number of experts to verify between 1 and {L * E}")
    top = estimate.top(k)
    pairs = [(l, e) for l, e, _ in top]
    exact = expert_effects(lm, data, experts=pairs, mode="zero", metric=metric, tokens=tokens,
                           batch_size=batch_size, progress=progress)
    scores = estimate.scores.clone()
    scores[exact.measured] = exact.scores[exact.measured]
    meta = dict(estimate.meta, verified=[[l, e] for l, e in pairs], estimate_verified=[v for _, _, v in top],
                cost=cost(L, E, k), seconds_verify=exact.meta["seconds"],
                seconds=round(estimate.meta.get("seconds", 0) + exact.meta["seconds"], 2))
    return ExpertScores(scores, list(estimate.layers), "attribution_verified", estimate.metric, estimate.n_examples,
                        estimate.top_k, estimate.base, meta=meta)
