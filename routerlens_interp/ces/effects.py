"""Exact single-expert masking effects: the reference the attribution estimate is checked against."""
from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from ..interventions.masking import MODES, mask_experts
from .objective import build_items, mean_metric
from .scores import ExpertScores


def _pairs(spec, experts) -> list[tuple[int, int]]:
    if experts is None:
        return [(l, e) for l in spec.moe_layers for e in range(spec.n_experts)]
    if hasattr(experts, "pairs"):  # ExpertSet
        pairs = sorted(experts.pairs())
    elif hasattr(experts, "items"):
        pairs = sorted({(int(l), int(e)) for l, ids in experts.items() for e in ids})
    else:
        pairs = sorted({(int(l), int(e)) for l, e in experts})
    for l, e in pairs:
        spec.check_expert(l, e)
    return pairs


def expert_effects(lm, data, experts=None, mode: str = "zero", metric: str = "faithfulness", tokens: str = "first",
                   batch_size: int = 32, progress: bool = False) -> ExpertScores:
    """Mask each expert alone and measure the drop of ``metric`` exactly (base − masked, mean over examples).

    Args:
        lm: a :class:`~routerlens_interp.model.MoEModel`.
        data: QAExamples (conflict data for ``"faithfulness"``).
        experts: which experts: ``None`` = every routed expert (``len(moe_layers) × E`` passes over the
            data), an ExpertSet / ``{layer: [ids]}`` or ``[(layer, expert), ...]``.
        mode: ``"zero"`` (what :func:`attribute_experts` estimates) or ``"reroute"``; through
            :func:`~routerlens_interp.mask_experts`, so the same refusals apply.
        metric, tokens: as in :func:`attribute_experts`.
        batch_size: examples per forward. Tokenization is done once and reused for every expert.

    Returns :class:`ExpertScores` of kind ``"effect_<mode>"``; experts not measured are 0 with
    ``measured[l, e] = False``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown masking mode {mode!r}; use one of {MODES}")
    t0 = time.time()
    spec = lm.spec
    pairs = _pairs(spec, experts)
    items = build_items(lm, data, metric, tokens)
    L, E = len(spec.moe_layers), spec.n_experts
    out = torch.zeros(L, E, dtype=torch.float64)
    measured = torch.zeros(L, E, dtype=torch.bool)
    base = mean_metric(lm, items, batch_size)
    for l, e in tqdm(pairs, desc=f"mask ({mode})", disable=not progress, unit="expert"):
        with mask_experts(lm, {l: [e]}, mode=mode):
            out[spec.moe_layers.index(l), e] = base - mean_metric(lm, items, batch_size)
        measured[spec.moe_layers.index(l), e] = True
    return ExpertScores(out, list(spec.moe_layers), f"effect_{mode}", metric, len(items), spec.top_k, base, measured,
                        meta={"tokens": tokens, "seconds": round(time.time() - t0, 2), "n_masked": len(pairs)})
