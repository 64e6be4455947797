"""FSDP for the training loop: torch's ``fully_shard`` (FSDP2) per decoder layer, undone after training.

Each process holds 1/P of every parameter, gradient and AdamW state between layers (DTensors sharded on
dim 0); a layer's weights are all-gathered for its forward and again for its backward. The same code
runs on GPUs (NCCL) and CPUs (gloo). Sharding is done here, not by accelerate's FSDP plugin, because
accelerate enables its FSDP only on GPU-like devices and wraps the model for good, while the training
methods must leave ``lm`` as they found it: :func:`sharded` records every module's state before
sharding and puts it back afterwards, with the trained values written into the original parameters.

CEFT under FSDP: its parametrisation writes the trained ``slices`` into the *unsharded* base tensor in
forward, but FSDP frees that tensor after forward and all-gathers the (sharded) base again for
backward, which would bring back the old rows. :func:`sharded` therefore also copies the slices into the
sharded base after every update (``sync``), so every all-gather yields base-with-slices.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from .params import ExpertSlices, Trainable

__all__ = ["sharded", "full", "full_optimizer_state", "load_optimizer_state"]

# Module hook tables fully_shard adds to (besides the class, parameters and __dict__ entries). The
# state-dict hooks matter: left behind, a later ``state_dict()`` would re-register sharded parameters.
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_state_dict_hooks",
               "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (all-gathered when ``t`` is a sharded DTensor: every process must call it)."""
    return t.full_tensor() if _is_dtensor(t) else t


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of ``t`` (``t`` itself when it is not a DTensor)."""
    return t.to_local() if _is_dtensor(t) else t


def full_optimizer_state(opt: torch.optim.Optimizer) -> dict:
    """``opt.state_dict()`` with every sharded state tensor gathered to a whole CPU tensor (collective),
    so a checkpoint holds the complete state whatever the number of processes."""
    sd = opt.state_dict()
    state = {i: {k: (full(v).detach().cpu() if torch.is_tensor(v) else v) for k, v in s.items()}
             for i, s in sd["state"].items()}
    return {**sd, "state": state}


def load_optimizer_state(opt: torch.optim.Optimizer, sd: dict) -> None:
    """Load a :func:`full_optimizer_state` dict; state of DTensor parameters is re-sharded like them."""
    from torch.distributed.tensor import distribute_tensor

    opt.load_state_dict(sd)
    for group in opt.param_groups:
        for p in group["params"]:
            if not _is_dtensor(p):
                continue
            for k, v in opt.state.get(p, {}).items():
                if torch.is_tensor(v) and not _is_dtensor(v) and v.shape == p.shape:
                    # every process holds the same whole tensor: each keeps its own chunk, no communication
                    opt.state[p][k] = distribute_tensor(v.to(p.device), p.device_mesh, p.placements,
                                                        src_data_rank=None)


def _snapshot(hf: nn.Module) -> list:
    return [(m, m.__class__, dict(m._parameters), set(m.__dict__),
             {h: getattr(m, h).copy() for h in _HOOK_DICTS}) for m in hf.modules()]


def _restore(snap: list) -> None:
    from torch.distributed import _composable_state

    for m, cls, params, keys, hooks in snap:
        m.__class__ = cls
        m._parameters.clear()
        m._parameters.update(params)
        for k in set(m.__dict__) - keys:  # FSDP state, registry, managed-module flags
            del m.__dict__[k]
        for h, d in hooks.items():
            setattr(m, h, d)
        _composable_state._module_state_mapping.pop(m, None)


def _expert_slices(hf: nn.Module):
    """``(parametrization list, ExpertSlices)`` for every CEFT parametrisation in ``hf``."""
    for m in hf.modules():
        if parametrize.is_parametrized(m):
            for plist in m.parametrizations.values():
                if isinstance(plist[0], ExpertSlices):
                    yield plist, plist[0]


@torch.no_grad()
def _sync_rows(pairs) -> None:
    """Copy every ExpertSlices' trained rows into its sharded base (each process writes the rows of its
    own chunk; chunks follow ``torch.chunk`` along dim 0, as FSDP and DTensor ``Shard(0)`` do)."""
    from torch.distributed.tensor import Shard

    for plist, es in pairs:
        base, rows = plist.original, full(es.slices)  # slices: [n, ...], all processes get all rows
        shard = local(base)
        if not _is_dtensor(base):
            es.rows(shard).index_copy_(0, es.idx, rows)
            continue
        if es.experts is not None:  # a flat [E·I, H] matrix (DBRX): dim-0 chunks do not follow experts
            raise NotImplementedError("CEFT under FSDP needs experts stacked on dim 0; this family keeps them as "
                                      "flat [E·I, H] matrices: train on one process or with a device map")
        if base.device_mesh.ndim != 1 or base.placements[0] != Shard(0):  # FSDP's default, used by sharded()
            raise NotImplementedError(f"CEFT under FSDP needs experts sharded on dim 0, got {base.placements}")
        chunk = math.ceil(base.shape[0] / base.device_mesh.size())
        start = base.device_mesh.get_local_rank() * chunk
        for j, e in enumerate(es.idx.tolist()):
            if start <= e < start + shard.shape[0]:
                shard[e - start].copy_(rows[j])


def _repoint(data: dict) -> None:
    for p, d in data.values():
        if p.device != d.device:
            p.data = d


@contextmanager
def sharded(lm, trainable: Trainable, device: torch.device):
    """Shard ``lm.hf`` with ``fully_shard`` over all processes for the duration of the block.

    Yields ``(params, sync)``: ``params`` key → the sharded DTensor parameter that replaced
    ``trainable.params[key]`` (what the optimizer must update), ``sync()`` to call after every update and
    after loading a checkpoint (CEFT: see the module docstring; a no-op otherwise). On exit the modules,
    hooks and original ``nn.Parameter`` objects are put back, the trained values are all-gathered into
    ``trainable.params`` (a collective: every process must leave the block), and the other parameters
    keep their original storage (FSDP only ever read them).
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    hf = lm.hf
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    where = {id(p): k for k, p in trainable.params.items()}
    owners = {}  # key → (module, local name): where the sharded replacement will be registered
    for m in hf.modules():
        for n, p in m._parameters.items():
            if p is not None and id(p) in where:
                owners[where[id(p)]] = (m, n)
    missing = set(trainable.params) - set(owners)
    if missing:
        raise ValueError(f"trainable tensors not registered in the model: {sorted(missing)}")
    snap = _snapshot(hf)
    data = {id(p): (p, p.data) for m in hf.modules() for p in m._parameters.values() if p is not None}
    bufs = [(b, b.data) for b in hf.buffers()]
    try:
        for layer in lm.spec.layers(hf):
            fully_shard(layer, mesh=mesh)
            # FSDP moved the original tensors to the device before copying its chunk out of them: point
            # them back at their original storage so that no whole layer stays on the device.
            _repoint(data)
        fully_shard(hf, mesh=mesh, reshard_after_forward=False)  # the root's forward is the last one
        _repoint(data)
        params = {k: m._parameters[n] for k, (m, n) in owners.items()}
        pairs = list(_expert_slices(hf))
        sync = (lambda: _sync_rows(pairs)) if pairs else (lambda: None)
        yield params, sync
        with torch.no_grad():
            values = {k: full(p).detach() for k, p in params.items()}  # collective, in key order
            for k, v in values.items():
                trainable.params[k].copy_(v.to(trainable.params[k].device))
    finally:
        _restore(snap)
        for b, d in bufs:  # buffers (e.g. rotary tables, expert ids) were moved to the device in place
            b.data = d
