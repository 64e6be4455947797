"""Which tensors a method trains, set up reversibly on the model.

Each context manager freezes every parameter of ``lm.hf``, makes only its method's tensors trainable,
yields a :class:`Trainable`, and on exit (also after an exception) puts back the original values and
``requires_grad`` flags, so training never leaves the base model changed.

CEFT cannot use ``requires_grad`` on a sub-module: transformers 5 keeps all experts of a layer in one
fused tensor (``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``). A gradient mask would keep full-size
gradients and AdamW state and let weight decay move the masked experts. Instead each fused tensor is
re-parametrised (``torch.nn.utils.parametrize``) as "base with rows ``idx`` replaced by ``slices``":
the base stays a frozen parameter, and the only new parameter is ``slices [n_selected, ...]``, so
gradients and optimizer state exist for the selected experts only; the other rows are never written,
so they stay bit-identical. (The selected rows are written into the base's storage, no full copy, and
put back on exit from a CPU copy.)

DBRX keeps each of ``w1``, ``v1``, ``w2`` as one flat ``[E·I, H]`` matrix: the same parametrisation works on
its ``[E, I, H]`` view (slices ``[n, I, H]``). LongCat-Flash's zero-compute identity experts have no weights:
CEFT refuses them (the rows of ``gate_up_proj`` their ids have are never used by the family's code).

Experts kept as an ``nn.ModuleList`` (remote code, ``spec.experts_kind == "module_list"``) need none of that:
each selected expert is its own module, so CEFT sets ``requires_grad`` on its linears only and the others get
no gradient and no optimizer state at all (a real memory saving: ``n_selected / E`` of the experts' state).

Per training step that costs one batched row write after the update (:attr:`Trainable.sync`, a single
``_foreach_copy_`` over all selected rows of all layers) plus, per fused tensor, an alias in forward and
an ``index_select`` of the gradient in backward. A forward writes the rows itself only when the slices or
the base changed since the last write (tracked by their version counters), e.g. after a checkpoint was
loaded into the slices, so the model always computes with the current slices whoever changed them.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..arch import layouts

__all__ = ["Trainable", "router_trainable", "expert_trainable", "full_trainable", "expert_tensor_names",
           "expert_param_index"]


@dataclass
class Trainable:
    """The trainable tensors of one method.

    Attributes:
        params: key → the ``nn.Parameter`` the optimizer updates. The key is the dotted name of the base
            parameter in ``lm.hf`` it replaces (whole, or the selected slices for CEFT).
        index: key → ``[n]`` long tensor of expert ids along dim 0 for slice parameters, ``None`` for
            whole tensors.
        sync: to call after every optimizer update (single process): puts the updated values where the
            model reads them (CEFT: the selected rows into the base tensors, one batched copy); ``None``
            when the parameters are the model's own tensors.
    """

    params: dict[str, nn.Parameter]
    index: dict[str, torch.Tensor | None] = field(default_factory=dict)
    sync: Callable[[], None] | None = None

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def values(self) -> dict[str, torch.Tensor]:
        """Detached CPU copies of the current values (the adapter's tensors)."""
        return {k: p.detach().to("cpu", copy=True) for k, p in self.params.items()}


@contextmanager
def _frozen(hf: nn.Module):
    """Freeze every parameter; restore the ``requires_grad`` flags on exit."""
    flags = {id(p): (p, p.requires_grad) for p in hf.parameters()}
    try:
        for p in hf.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags.values():
            p.requires_grad_(flag)


@contextmanager
def _whole(lm, names: list[str]):
    """Make the named parameters trainable in place; put their original values back on exit."""
    named = dict(lm.hf.named_parameters())
    # Originals are kept on CPU: a second full copy on the accelerator would double FFT's footprint.
    saved = {n: named[n].detach().to("cpu", copy=True) for n in names}
    with _frozen(lm.hf):
        try:
            for n in names:
                named[n].requires_grad_(True)
            yield Trainable({n: named[n] for n in names}, {n: None for n in names})
        finally:
            with torch.no_grad():
                for n in names:
                    named[n].copy_(saved[n].to(named[n].device))


def router_param_names(lm) -> list[str]:
    """Parameters of every MoE layer's router (weight ``[E, H]``, and bias ``[E]`` where present).

    DeepSeek-V3's ``e_score_correction_bias`` is a buffer, not a parameter: it only decides which
    experts are picked (it gets no gradient) and DeepSeek adjusts it with a load-balancing rule the
    method deliberately leaves out, so it stays fixed and is not part of the adapter.
    """
    names = []
    for layer in lm.spec.moe_layers:
        prefix = lm.spec.router_path(layer)
        # DeepSeek-V3's remote code keeps the correction bias as a Parameter: left out for the same reason
        names += [f"{prefix}.{n}" for n, _ in lm.spec.router(lm.hf, layer).named_parameters()
                  if "correction_bias" not in n]
    return names


def expert_tensor_names(lm, layer: int) -> list[str]:
    """Local names of the fused per-expert tensors of a layer's experts module (dim 0 = expert):
    ``gate_up_proj`` (or ``up_proj``), ``down_proj`` and their ``*_bias`` where present; DBRX's flat
    ``mlp.w1`` / ``mlp.v1`` / ``mlp.w2`` (``[E·I, H]``, expert ``e`` = ``view(E, I, H)[e]``, see
    :mod:`routerlens_interp.arch.layouts`)."""
    # sorted: a canonical order (optimizer state and checkpoints are matched by position)
    return list(layouts.expert_tensors(lm.spec, lm.spec.experts(lm.hf, layer)))


def _check_weighted(lm, table: dict[int, list[int]]) -> None:
    """Refuse zero-compute identity experts (LongCat-Flash): they have no weights to train."""
    first = layouts.n_weighted(lm.spec)
    bad = {l: [e for e in ids if e >= first] for l, ids in table.items()}
    bad = {l: ids for l, ids in bad.items() if ids}
    if bad:
        raise ValueError(f"{lm.spec.family}: experts {bad} are zero-compute identity experts (ids {first}.."
                         f"{lm.spec.n_experts - 1} return their input times the routing weight): they have no "
                         f"weights, so CEFT cannot train them; choose among experts 0..{first - 1}")


def expert_param_index(lm, table: dict[int, list[int]]) -> dict[str, torch.Tensor | None]:
    """Adapter index of CEFT on ``{layer: [expert ids]}``: fused tensors → ``[n]`` expert ids along dim 0;
    per-expert modules (``experts_kind == "module_list"``) → their whole parameters (``None``)."""
    _check_weighted(lm, table)
    index: dict[str, torch.Tensor | None] = {}
    for layer, ids in sorted(table.items()):
        if lm.spec.experts_kind == "module_list":
            index.update((n, None) for n in _listed_expert_names(lm, layer, ids))
        else:
            for name in expert_tensor_names(lm, layer):
                index[f"{lm.spec.experts_path(layer)}.{name}"] = torch.tensor(ids, dtype=torch.long)
    return index


def _listed_expert_names(lm, layer: int, ids: list[int]) -> list[str]:
    """Dotted names in ``lm.hf`` of every parameter of experts ``ids`` of a ``module_list`` layer."""
    experts = lm.spec.experts(lm.hf, layer)
    return [f"{lm.spec.experts_path(layer)}.{e}.{n}" for e in ids for n, _ in experts[e].named_parameters()]


def _needs_autograd(family: str, layer: int, expert: int):
    """A forward hook refusing a chosen expert that the family's code runs without autograd in training mode
    (an inference-only dispatch under ``torch.no_grad``): it would get no gradient and never change."""
    def hook(module, args, output):
        if module.training and not torch.is_grad_enabled():
            raise NotImplementedError(f"{family}: layer {layer} runs expert {expert} under torch.no_grad in training mode "
                               "(its remote code has an inference-only expert dispatch), so CEFT cannot train it; "
                               "use the checkpoint's training-capable modeling code")
    return hook


@contextmanager
def router_trainable(lm):
    """Train only the routers (see :func:`router_param_names`)."""
    with _whole(lm, router_param_names(lm)) as t:
        yield t


@contextmanager
def full_trainable(lm, names: list[str] | None = None):
    """Train every parameter (the FFT baseline), or only ``names``."""
    with _whole(lm, names if names is not None else [n for n, _ in lm.hf.named_parameters()]) as t:
        yield t


class _Rows(torch.autograd.Function):
    """``base [E, ...]`` itself (an alias, no copy) as a function of ``slices [n, ...]`` standing in rows
    ``idx``: backward sends ``grad[idx]`` to ``slices`` and nothing to ``base``.

    The rows are *written* by :class:`ExpertSlices` (before this is applied), not here, so a forward adds
    no kernel when they are current. An out-of-place ``index_copy`` would allocate a full copy of every
    fused expert tensor per forward and keep it alive for backward (+50 % of the weights of every trained
    layer): measured on a GPU, that pushed CEFT's peak memory above the goal.
    """

    @staticmethod
    def forward(ctx, base, slices, idx):
        ctx.save_for_backward(idx)
        return base.view_as(base)

    @staticmethod
    def backward(ctx, grad):
        (idx,) = ctx.saved_tensors
        return None, grad.index_select(0, idx), None


class ExpertSlices(nn.Module):
    """Parametrisation ``base [E, ...] → base with rows idx replaced by slices``.

    ``slices [n, ...]`` is the only trainable tensor; ``idx [n]`` the selected expert ids. The selected
    rows of the (frozen) base are overwritten in place while training and put back by
    :func:`expert_trainable` on exit; unselected rows are never written. The rows are written by
    :meth:`write_rows` (batched over all parametrisations after each update) or, when the slices or the
    base changed since the last write, by :meth:`forward` itself.
    """

    def __init__(self, base: torch.Tensor, idx: list[int], experts: int | None = None):
        super().__init__()
        # experts=E: base is a flat [E·I, H] matrix (DBRX) whose expert e is rows(base)[e], rows = view(E, I, H)
        self.experts = experts
        self.register_buffer("idx", torch.tensor(idx, dtype=torch.long, device=base.device))
        self.slices = nn.Parameter(self.rows(base).detach()[self.idx].clone())
        self._written = None  # _state() right after the last write of the rows
        self._views = (None, [], [])  # (storage pointers, base rows, slice rows) for write_rows

    def rows(self, base: torch.Tensor) -> torch.Tensor:
        """``base`` with dim 0 = expert: itself, or the ``[E, I, H]`` view of a flat matrix (no copy)."""
        return base if self.experts is None else base.view(self.experts, -1, base.shape[-1])

    def _state(self, base: torch.Tensor) -> tuple:
        # _version counts in-place changes (optimizer updates, copy_, our own writes); data_ptr catches a
        # replaced storage (.data =, FSDP's gathered tensor)
        return base.data_ptr(), base._version, self.slices.data_ptr(), self.slices._version

    def forward(self, base: torch.Tensor) -> torch.Tensor:
        if self._written != self._state(base):
            with torch.no_grad():
                # only the selected rows; originals kept by caller (slices may be fp32 masters of a bf16 base)
                self.rows(base).index_copy_(0, self.idx, self.slices.to(base.dtype))
            self._written = self._state(base)
        if self.experts is None:
            return _Rows.apply(base, self.slices, self.idx)
        return _Rows.apply(self.rows(base), self.slices, self.idx).view(base.shape)

    @staticmethod
    @torch.no_grad()
    def write_rows(pairs: list[tuple[torch.Tensor, ExpertSlices]]) -> None:
        """Write the slices of every ``(base, ExpertSlices)`` pair into their base rows with one
        ``_foreach_copy_`` (one multi-tensor kernel on a GPU instead of an ``index_copy_`` per tensor)."""
        dst, src = [], []
        for base, es in pairs:
            ptrs = (base.data_ptr(), es.slices.data_ptr())
            if es._views[0] != ptrs:  # row views, made once per storage
                rows = es.idx.tolist()
                es._views = (ptrs, [es.rows(base)[e] for e in rows], list(es.slices.detach().unbind(0)))
            dst += es._views[1]
            src += es._views[2]
        if dst:
            torch._foreach_copy_(dst, src)
        for base, es in pairs:
            es._written = es._state(base)


@contextmanager
def expert_trainable(lm, experts):
    """Train only the selected experts' slices of the fused expert tensors.

    Args:
        experts: ``ExpertSet`` or mapping ``{layer: [expert ids]}`` (MoE layers only).
    """
    table = {int(layer): sorted({int(e) for e in ids}) for layer, ids in experts.items() if len(ids)}
    if not table:
        raise ValueError("ceft needs at least one selected expert; the ExpertSet is empty")
    for layer, ids in table.items():
        for e in ids:
            lm.spec.check_expert(layer, e)
    _check_weighted(lm, table)
    if lm.spec.experts_kind == "module_list":  # one module per expert: requires_grad on the chosen ones only
        names = [n for layer, ids in sorted(table.items()) for n in _listed_expert_names(lm, layer, ids)]
        handles = [lm.spec.experts(lm.hf, layer)[e].register_forward_hook(_needs_autograd(lm.spec.family, layer, e))
                   for layer, ids in sorted(table.items()) for e in ids]
        try:
            with _whole(lm, names) as t:
                yield t
        finally:
            for h in handles:
                h.remove()
        return
    registered: list[tuple[nn.Module, str]] = []
    orders: list[tuple[nn.Module, list[str]]] = []
    saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (base, idx, original rows)
    with _frozen(lm.hf):
        try:
            params, index = {}, {}
            flat = layouts.n_weighted(lm.spec) if lm.spec.experts_layout == "flat" else None
            for layer, ids in sorted(table.items()):
                experts = lm.spec.experts(lm.hf, layer)
                for name in expert_tensor_names(lm, layer):
                    owner_name, _, local = name.rpartition(".")  # DBRX: "mlp.w1" lives in experts.mlp
                    mod = experts.get_submodule(owner_name) if owner_name else experts
                    if not any(m is mod for m, _ in orders):
                        orders.append((mod, list(mod._parameters)))
                    base = getattr(mod, local)
                    p = ExpertSlices(base, ids, flat)
                    # Originals on the CPU, as for FFT (_whole): a device copy would add the selected
                    # share of expert weights to CEFT's footprint (1/8 of OLMoE's experts: 1.6 GB bf16).
                    rows = p.rows(base).detach()[ids].to("cpu", copy=True)
                    saved.append((p.rows(base), torch.tensor(ids, device=base.device), rows))
                    parametrize.register_parametrization(mod, local, p)
                    registered.append((mod, local))
                    key = f"{lm.spec.experts_path(layer)}.{name}"
                    params[key], index[key] = p.slices, p.idx.detach().cpu()
            pairs = [(getattr(mod.parametrizations, name).original, getattr(mod.parametrizations, name)[0])
                     for mod, name in registered]
            yield Trainable(params, index, sync=lambda: ExpertSlices.write_rows(pairs))
        finally:
            for mod, name in reversed(registered):
                # leave_parametrized=False puts the original Parameter object back (rows restored below).
                parametrize.remove_parametrizations(mod, name, leave_parametrized=False)
            with torch.no_grad():  # training wrote the selected rows into the base: put the originals back
                for base, idx, rows in saved:
                    base.index_copy_(0, idx, rows.to(base.device))
            for mod, order in orders:  # removal re-adds the parameter last: keep the state-dict order
                params = mod._parameters
                mod._parameters = type(params)((k, params[k]) for k in order if k in params)
