"""Expert masking: the causal test of Router Lens, as a context manager.

``reroute``: a forward hook on each affected router sets the masked experts' logits to −inf and re-runs
the family's routing function (:mod:`routerlens_interp.arch.routing`), so k experts stay active and the
top-k is re-picked from the others. ``zero``: a forward pre-hook on the fused experts module sets the
routing weight of masked experts to 0, so routing is unchanged and their contribution disappears.
Both are plain PyTorch hooks: they act in ``forward``, ``generate``, nnsight traces and training, and
are removed on exit, also after an exception.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch

from ..arch import route

MODES = ("reroute", "zero")


def normalize_mask(spec, experts: Mapping[int, list[int]], mode: str = "reroute") -> dict[int, list[int]]:
    """Validate ``{layer: [expert, ...]}`` against ``spec`` → a clean dict of sorted unique ids."""
    if mode not in MODES:
        raise ValueError(f"unknown masking mode {mode!r}; use one of {MODES}")
    items = experts.items() if hasattr(experts, "items") else experts
    clean: dict[int, list[int]] = {}
    for layer, ids in items:
        layer = int(layer)
        ids = sorted({int(e) for e in ids})
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


def _reroute_hook(routing: str, masked: torch.Tensor):
    def hook(module, args, output):
        logits = output[0]
        m = masked.to(logits.device)
        weights, indices = route(routing, logits, module, m)
        return (logits.masked_fill(m, float("-inf")), weights.to(output[1].dtype), indices) + tuple(output[3:])
    return hook


def _zero_hook(masked: torch.Tensor):
    def hook(module, args, kwargs):
        args = list(args)
        if len(args) >= 3:
            idx, w = args[1], args[2]
        else:
            idx, w = kwargs["top_k_index"], kwargs["top_k_weights"]
        w = w.masked_fill(masked.to(idx.device)[idx], 0.0)
        if len(args) >= 3:
            args[2] = w
        else:
            kwargs = {**kwargs, "top_k_weights": w}
        return tuple(args), kwargs
    return hook


_MARK = {"reroute": "_routerlens_reroute", "zero": "_routerlens_zero"}


def active_mask(module, mode: str = "reroute") -> torch.Tensor | None:
    """Bool ``[E]`` union of the ``mode`` masks now in force on ``module`` (None when none is).

    ``reroute`` masks mark the router, ``zero`` masks the experts module. Tracers that read values
    where the mask's hook cannot reach (nnsight reads a router's output before its forward hooks
    run; TransformerLens reads top-k weights before the experts' pre-hook) use this to report what
    the model really used.
    """
    masks = module.__dict__.get(_MARK[mode])
    if not masks:
        return None
    out = masks[0].clone()
    for m in masks[1:]:
        out |= m
    return out


def active_reroute_mask(router) -> torch.Tensor | None:
    """Shorthand for ``active_mask(router, "reroute")``."""
    return active_mask(router, "reroute")


@contextmanager
def mask_experts(lm, experts: Mapping[int, list[int]], mode: str = "reroute") -> Iterator[dict[int, list[int]]]:
    """Mask routed experts while the ``with`` block runs.

    Args:
        lm: a :class:`~routerlens_interp.model.MoEModel`.
        experts: ``{decoder_layer: [expert_id, ...]}`` (an ``ExpertSet`` works too).
        mode: ``"reroute"`` (logit −inf before the routing function; k experts stay active) or
            ``"zero"`` (routing kept, masked experts' outputs dropped).

    Yields the validated mask. Raises ``ValueError`` for ids out of range, dense layers, or (under
    ``reroute``) masking so many experts that fewer than ``top_k`` remain.
    """
    spec = lm.spec
    clean = normalize_mask(spec, experts, mode)
    handles, marked = [], []
    try:
        for layer, ids in clean.items():
            masked = _bool_mask(ids, spec.n_experts)
            if mode == "reroute":
                module = spec.router(lm.hf, layer)
                handles.append(module.register_forward_hook(_reroute_hook(spec.routing, masked)))
            else:
                module = spec.experts(lm.hf, layer)
                handles.append(module.register_forward_pre_hook(_zero_hook(masked), with_kwargs=True))
            module.__dict__.setdefault(_MARK[mode], []).append(masked)
            marked.append((module, masked))
        yield clean
    finally:
        for h in handles:
            h.remove()
        for module, masked in marked:
            lst = module.__dict__.get(_MARK[mode], [])
            lst[:] = [m for m in lst if m is not masked]
            if not lst:
                module.__dict__.pop(_MARK[mode], None)
