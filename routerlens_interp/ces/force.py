"""Force experts in or out of every token's top-k (SteerMoE-style activation / deactivation).

SteerMoE (Fayyaz et al., ICLR 2026, ``adobe-research/SteerMoE``) sets, per token, a steered expert's
router score to ``max + ε`` (activate) or ``min − ε`` (deactivate) before the family's own top-k. Here the
same guarantee is reached with the smallest change, per token and per routing step:

- **in**: an expert forced in whose score is not already above the threshold ``t`` — the
  ``(k − m + 1)``-th largest score among the *other* experts, ``m`` the number forced in — is raised to
  just above ``t``. At most ``k`` scores are then ``> t`` and all forced experts are among them, so each
  is in the top-k; a token that already routes to them keeps its scores bit for bit.
- **out**: an expert forced out whose score is not already below the ``k``-th largest of the experts not
  forced out is lowered to just below the token's smallest score. At least ``k`` others then beat it.

``placement="max"`` is SteerMoE's own rule instead (every token: ``max + ε`` / ``min − ε``, whether or
not the token already complies; it also moves the weights of tokens that already route as asked).

Both edits act where :func:`~.steering.boost_experts` acts: on the router logits (so the family's
softmax / sigmoid computes the weights from the edited logit, as router tuning would) and, for the choice
only, at every top-k over the experts (``router.hook_select``: a correction bias or a group-limited top-k
cannot undo it, and the weights stay the family's own).
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

import torch

from ..errors import UserError

PLACEMENTS = ("kth", "max")


def _step(x: torch.Tensor, up: bool) -> torch.Tensor:
    """``x`` moved strictly up (``up``) or down by a few ulps: larger than rounding, smaller than any real
    gap between router scores (±inf stay where they are)."""
    fin = torch.finfo(x.dtype)
    d = torch.where(torch.isfinite(x), x.abs() * (4 * fin.eps) + fin.tiny, torch.zeros_like(x))
    return x + d if up else x - d


def force_edit(forced_in: torch.Tensor, forced_out: torch.Tensor, k: int, placement: str = "kth"):
    """An edit ``scores [..., E] → scores`` forcing ``forced_in`` (bool ``[E]``) into the top-``k`` of every
    row and ``forced_out`` (bool ``[E]``) out of it (see the module docstring). Rows that already comply
    are returned unchanged under ``placement="kth"``."""
    if placement not in PLACEMENTS:
        raise UserError(f"unknown placement {placement!r}; use 'kth' (just above the k-th) or 'max' (SteerMoE)")
    m_in, m_out = int(forced_in.sum()), int(forced_out.sum())
    E = forced_in.numel()

    def edit(x: torch.Tensor) -> torch.Tensor:
        pin, pout = forced_in.to(x.device), forced_out.to(x.device)
        if m_out:
            low = _step(x.min(dim=-1, keepdim=True).values, up=False)
            if placement == "max":
                x = torch.where(pout, low, x)
            else:
                others = x.masked_fill(pout, float("-inf"))
                kth = others.topk(min(k, E - m_out), dim=-1).values[..., -1:]
                x = torch.where(pout & (x >= kth), low, x)
        if m_in:
            if placement == "max":
                x = torch.where(pin, _step(x.max(dim=-1, keepdim=True).values, up=True), x)
            else:
                others = x.masked_fill(pin, float("-inf"))
                t = others.topk(k - m_in + 1, dim=-1).values[..., -1:]
                x = torch.where(pin & ~(x > t), _step(t, up=True), x)
        return x
    return edit


def check_force(spec, forced: dict[int, list[int]], direction: str) -> None:
    """Refuse sets the top-k cannot honour: more than ``k`` forced in, or fewer than ``k`` left when forcing out."""
    k, E = spec.top_k, spec.n_experts
    for layer, ids in forced.items():
        if direction == "in" and len(ids) > k:
            raise UserError(f"cannot force {len(ids)} experts into the top-{k} of layer {layer}; force at most {k} "
                            f"per layer (SteerMoE activates at most k per layer too)")
        if direction == "out" and E - len(ids) < k:
            raise UserError(f"forcing {len(ids)} of {E} experts out of layer {layer} leaves fewer than top_k={k}; "
                            f"force out at most {E - k} per layer")


@contextmanager
def force_experts(lm, activate=None, deactivate=None, placement: str = "kth") -> Iterator[dict]:
    """Force ``activate`` experts into every token's top-k and ``deactivate`` experts out of it.

    Args:
        lm: a :class:`~routerlens_interp.model.MoEModel`.
        activate / deactivate: ``{decoder_layer: [expert_id, ...]}`` (ExpertSets work); at most ``k`` per
            layer in, at most ``E − k`` out, and not the same expert in both.
        placement: ``"kth"`` (just past the threshold, tokens that comply unchanged) or ``"max"`` (SteerMoE's
            ``max + ε`` / ``min − ε`` on every token).

    Refused where ``mask_experts(mode="reroute")`` is (:class:`RerouteUnavailable` naming the family, the
    layer and the reason): it edits the routing through the same tap. Yields ``{"in": …, "out": …}``.
    """
    from ..hooks.selfcheck import require_reroute
    from ..interventions.masking import active_mask
    from .steering import _clean

    spec = lm.spec
    ins, outs = _clean(spec, activate or {}), _clean(spec, deactivate or {})
    if placement not in PLACEMENTS:
        raise UserError(f"unknown placement {placement!r}; use 'kth' (just above the k-th) or 'max' (SteerMoE)")
    check_force(spec, ins, "in")
    check_force(spec, outs, "out")
    for layer in set(ins) & set(outs):
        both = sorted(set(ins[layer]) & set(outs[layer]))
        if both:
            raise UserError(f"layer {layer}: experts {both} are both activated and deactivated; pick one")
    layers = sorted(set(ins) | set(outs))
    if layers:
        require_reroute(lm, layers, "forcing experts in or out", "it edits the routing as mode='reroute' masking does")
    for layer, ids in ins.items():
        masked = active_mask(lm, layer, "reroute")
        if masked is not None and bool(masked[ids].any()):
            raise UserError(f"layer {layer}: experts {[e for e in ids if masked[e]]} are masked (reroute) and cannot "
                            f"be forced in; exit the mask first")
    E = spec.n_experts
    with ExitStack() as stack:
        for layer in layers:
            pin, pout = torch.zeros(E, dtype=torch.bool), torch.zeros(E, dtype=torch.bool)
            pin[ins.get(layer, [])] = True
            pout[outs.get(layer, [])] = True
            fn = force_edit(pin, pout, spec.top_k, placement)
            stack.enter_context(lm.hooks.edit(f"blocks.{layer}.router.hook_logits", fn))
            stack.enter_context(lm.hooks.edit(f"blocks.{layer}.router.hook_select", fn))
        yield {"in": ins, "out": outs}
