"""Experts layouts beyond "E stacked experts along dim 0", and per-expert views of their weights.

Two families keep their experts so that tensor ``[e]`` is not expert ``e``:

- **flat** (DBRX): ``ffn.experts.mlp`` holds ``w1``, ``v1``, ``w2`` as 2-D ``[E·I, H]`` matrices; expert ``e``
  is rows ``e·I .. (e+1)·I`` (the family's own code reads ``w.view(E, I, H)[e]``). The experts module still
  receives ``(hidden, indices [T, k], weights [T, k])``: it is the ``fused`` kind, addressed through that view.
- **identity experts** (LongCat-Flash): the router is ``[E+Z, H]``; ids ``E .. E+Z-1`` are zero-compute
  experts whose output is their input (``nn.Identity``), scaled by the routing weight like any other expert.
  ``gate_up_proj`` has ``E+Z`` rows (the last ``Z`` unused), ``down_proj`` ``E``. All ``E+Z`` are experts for
  counting, reroute and zero (a zero weight removes ``w · x`` exactly); they have no weights to train.

:func:`expert_tensors` and :func:`per_expert` give every client (CEFT, adapters, tests) the tensors of one
layer as ``[E_w, ...]`` along dim 0, ``E_w`` the experts that have weights, whatever the layout.
"""
from __future__ import annotations

import inspect as inspect_sig

import torch
from torch import nn


def identity_layout(mod: nn.Module) -> tuple[int, int] | None:
    """``(E + Z, Z)`` when ``mod``'s stacked ``*proj`` parameters have ``E + Z`` rows (gate/up) and ``E`` rows
    (``down_proj``) and ``mod`` has an ``nn.Identity`` child: the ``Z`` extra ids are zero-compute experts."""
    dims = {p.shape[0] for n, p in mod.named_parameters(recurse=False) if p.dim() == 3 and "proj" in n}
    down = getattr(mod, "down_proj", None)
    if len(dims) != 2 or not isinstance(down, torch.Tensor) or down.dim() != 3:
        return None
    if down.shape[0] != min(dims) or not any(isinstance(c, nn.Identity) for c in mod.children()):
        return None
    return max(dims), max(dims) - min(dims)


def flat_layout(mod: nn.Module, H: int) -> tuple[int, str] | None:
    """``(N, child)`` when ``mod`` is an experts module called with (hidden, indices, weights) whose one child
    ``child`` holds its own (not ``nn.Linear``) 2-D parameters, at least two, all ``[N, H]``: ``E`` experts of
    ``N / E`` rows each (``E`` is the width of the router next to it, see :func:`flat_router`)."""
    try:
        params = list(inspect_sig.signature(mod.forward).parameters)
    except (TypeError, ValueError):
        return None
    if len(params) < 3 or any(True for _ in mod.parameters(recurse=False)):
        return None
    for name, child in mod.named_children():
        if isinstance(child, nn.Linear):
            continue
        own = [p for _, p in child.named_parameters(recurse=False)]
        if len(own) >= 2 and all(p.dim() == 2 and p.shape[1] == H for p in own) and len({p.shape for p in own}) == 1:
            return own[0].shape[0], name
    return None


def flat_router(block: nn.Module, experts_attr: str, N: int, H: int) -> tuple[str, int] | None:
    """``(router attr, E)``: the sibling of a flat experts module holding an ``[E, H]`` weight with ``E`` dividing
    ``N`` (``E ≥ 2``), the router whose width says how many experts the ``[N, H]`` matrices hold."""
    for name, child in block.named_children():
        if name == experts_attr:
            continue
        for _, p in child.named_parameters():
            if p.dim() == 2 and p.shape[1] == H and 2 <= p.shape[0] < N and N % p.shape[0] == 0:
                return name, int(p.shape[0])
    return None


def n_weighted(spec) -> int:
    """Experts with weights: ``n_experts`` minus the zero-compute identity experts (ids ``≥`` this number)."""
    return spec.n_experts - spec.identity_experts


def expert_tensors(spec, experts: nn.Module) -> dict[str, nn.Parameter]:
    """Local name (inside the experts module) → parameter, for every per-expert tensor of one layer: stacked
    ``[E or E+Z, ...]`` tensors, or the flat ``[E·I, H]`` matrices (``"mlp.w1"``...). Sorted by name."""
    E, Ew = spec.n_experts, n_weighted(spec)
    if spec.experts_layout == "flat":
        owner = experts.get_submodule(spec.expert_weights_attr)
        out = {f"{spec.expert_weights_attr}.{n}": p for n, p in owner.named_parameters(recurse=False)
               if p.dim() == 2 and p.shape[0] % Ew == 0}
    else:
        out = {n: p for n, p in experts.named_parameters(recurse=False) if p.dim() >= 1 and p.shape[0] in (E, Ew)}
    return dict(sorted(out.items()))


def per_expert(spec, t: torch.Tensor) -> torch.Tensor:
    """``t`` as ``[E_w, ...]`` along dim 0 (a view, no copy): flat ``[E·I, H]`` → ``[E, I, H]``; stacked unchanged."""
    if spec.experts_layout == "flat":
        return t.view(n_weighted(spec), -1, t.shape[-1])
    return t


def flat_names(spec, model: nn.Module) -> set[str]:
    """Dotted names (in ``model``) of the flat ``[E·I, H]`` experts matrices; empty for stacked layouts."""
    if spec.experts_layout != "flat":
        return set()
    return {f"{spec.experts_path(l)}.{n}" for l in spec.moe_layers for n in expert_tensors(spec, spec.experts(model, l))}


def expert_rows(spec, model: nn.Module, name: str, p: torch.Tensor) -> torch.Tensor:
    """Parameter ``name`` of ``model`` with dim 0 = expert: the per-expert view of a flat matrix, else ``p``."""
    return per_expert(spec, p) if name in flat_names(spec, model) else p
