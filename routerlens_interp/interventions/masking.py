"""Expert masking: the causal test of Router Lens, as a context manager.

``reroute``: the masked experts' router logits become −inf inside the family's own routing code (and so
does every top-k input over the experts), so the family's rule — softmax or sigmoid, correction bias,
groups, renormalisation, scaling — re-picks k experts from the others. Nothing is re-implemented; a
self-check on the first ``reroute`` of a model refuses layers where this is not exact. ``zero``: the
routing weight of masked experts reaching the experts module is set to 0, so routing is unchanged and
their contribution disappears. Both are edits on the hook layer (``lm.hooks``): they act in ``forward``,
``generate``, nnsight traces and training, tracers read what they did, and they are removed on exit,
also after an exception.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator, Mapping

import torch

from ..hooks.selfcheck import RerouteUnavailable, masking_edits, require_reroute

MODES = ("reroute", "zero")


def normalize_mask(spec, experts: Mapping[int, list[int]], mode: str = "reroute") -> dict[int, list[int]]:
    """Validate ``{layer: [expert, ...]}`` against ``spec`` → a clean dict of sorted unique ids."""
    if mode not in MODES:
        raise ValueError(f"unknown masking mode {mode!r}; use one of {MODES}")
    from .ids import _expert_id, _layer_key  # int() would turn 1.5 or True into expert 1

    items = experts.items() if hasattr(experts, "items") else experts
    clean: dict[int, list[int]] = {}
    for layer, ids in items:
        layer = _layer_key(layer)
        ids = sorted({_expert_id(layer, e) for e in ids})
        for e in ids:
            spec.check_expert(layer, e)
        if not ids:
            continue
        if mode == "reroute" and len(ids) > spec.n_experts - spec.top_k:
            raise ValueError(
                f"masking {len(ids)} of {spec.n_experts} experts in layer {layer} leaves fewer than top_k="
                f"{spec.top_k} to route to; mask at most {spec.n_experts - spec.top_k} per layer under "
                f"'reroute', or use mode='zero'")
        clean[layer] = ids
    return clean


def _bool_mask(ids: list[int], n: int) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool)
    m[ids] = True
    return m


def _guard(family: str, layer: int, masked: torch.Tensor):
    """A read on the experts' inputs: a masked expert chosen under ``reroute`` is an error, never a number."""
    def read(idx, w):
        m = masked.to(idx.device)
        if bool(m[idx.long()].any()):
            hit = sorted(set(idx[m[idx.long()]].reshape(-1).tolist()))
            raise RerouteUnavailable(
                f"{family}: layer {layer}: the family's routing chose masked experts {hit} for some tokens (scores "
                f"underflowed or a selection step bypasses the top-k); use mode='zero'")
    return read


def _zero_edit(masked: torch.Tensor):
    def edit(idx, w):
        return w.masked_fill(masked.to(idx.device)[idx.long()], 0.0)
    return edit


def active_mask(lm, layer: int, mode: str = "reroute") -> torch.Tensor | None:
    """Bool ``[E]`` union of the ``mode`` masks now in force on MoE ``layer`` of ``lm`` (None when none is)."""
    masks = [m for md, m in lm.hooks.masks.get(layer, []) if md == mode]
    if not masks:
        return None
    out = masks[0].clone()
    for m in masks[1:]:
        out |= m
    return out


@contextmanager
def mask_experts(lm, experts: Mapping[int, list[int]], mode: str = "reroute") -> Iterator[dict[int, list[int]]]:
    """Mask routed experts while the ``with`` block runs.

    Args:
        lm: a :class:`~routerlens_interp.model.MoEModel`.
        experts: ``{decoder_layer: [expert_id, ...]}`` (an ``ExpertSet`` works too).
        mode: ``"reroute"`` (logit −inf before the family's own routing; k experts stay active) or
            ``"zero"`` (routing kept, masked experts' outputs dropped).

    Yields the validated mask. Raises ``ValueError`` for ids out of range, dense layers, or (under
    ``reroute``) masking so many experts that fewer than ``top_k`` remain, also together with masks
    already in force; :class:`RerouteUnavailable` where the model's routing cannot be masked exactly
    (found by the self-check on the first ``reroute``), naming the family, the layer and the reason.
    """
    spec, hooks = lm.spec, lm.hooks
    clean = normalize_mask(spec, experts, mode)
    if mode == "reroute" and clean:
        require_reroute(lm, clean, "reroute", "use mode='zero'")
        for layer, ids in clean.items():
            prior = active_mask(lm, layer, "reroute")
            union = _bool_mask(ids, spec.n_experts) | (prior if prior is not None else False)
            if spec.n_experts - int(union.sum()) < spec.top_k:
                raise ValueError(f"together with the masks already in force, layer {layer} would have "
                                 f"{spec.n_experts - int(union.sum())} unmasked experts, fewer than top_k="
                                 f"{spec.top_k}; exit the outer mask or mask fewer experts")
    with ExitStack() as stack:
        for layer, ids in clean.items():
            masked = _bool_mask(ids, spec.n_experts)
            if mode == "reroute":
                for point, fn in masking_edits(masked):
                    stack.enter_context(hooks.edit(f"blocks.{layer}.router.{point}", fn))
                stack.enter_context(hooks.read(f"blocks.{layer}.experts.hook_route", _guard(spec.family, layer, masked)))
            else:
                stack.enter_context(hooks.edit(f"blocks.{layer}.experts.hook_route", _zero_edit(masked)))
            entry = (mode, masked)
            hooks.masks.setdefault(layer, []).append(entry)
            stack.callback(_drop, hooks.masks, layer, entry)
        yield clean


def _drop(masks: dict, layer: int, entry) -> None:
    lst = masks.get(layer, [])
    for i in range(len(lst) - 1, -1, -1):
        if lst[i] is entry:
            del lst[i]
            break
    if not lst:
        masks.pop(layer, None)
