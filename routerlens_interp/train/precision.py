"""Mixed precision and gradient checkpointing for a training run, set up reversibly on the model.

``precision="bf16"``: the model's forward runs under ``torch.autocast(dtype=torch.bfloat16)`` (matmuls in
bf16, softmax/norms as autocast decides; the loss is taken in float32 from the logits) and the tensors the
optimizer updates are float32 *master weights*: a model loaded in bf16 has its trained tensors upcast in
place for the run (routers and CE expert slices are small; FFT upcasts everything, as mixed-precision
training always does), and put back in the model's dtype at the end, so frozen weights stay bf16.

``gradient_checkpointing``: transformers' per-decoder-layer checkpointing (non-reentrant, so gradients
reach routers and experts with frozen embeddings): activations are recomputed in backward instead of kept.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["training_precision", "autocast"]


def autocast(precision: str, device: torch.device):
    """The autocast context of ``precision`` on ``device`` (a no-op for ``"fp32"``)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@contextmanager
def training_precision(hf: nn.Module, params: list[nn.Parameter], precision: str = "fp32",
                       gradient_checkpointing: bool = False, values: list[torch.Tensor] | None = None,
                       fsdp: bool = False) -> Iterator[None]:
    """While the block runs: ``params`` in float32 and ``hf``'s forward under bf16 autocast (``"bf16"``),
    and/or gradient checkpointing on. Undone on exit, also after an exception.

    Args:
        params: the tensors the optimizer will update (the model's own or CEFT's slices).
        values: float32 values to put into ``params`` after the upcast (a resumed checkpoint: the copy into
            a bf16 tensor before the upcast would have rounded them).
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', not {precision!r}")
    low = [p for p in params if p.dtype != torch.float32]
    if precision == "bf16" and low and fsdp:
        raise ValueError("precision='bf16' with FSDP needs a model loaded in float32 (FSDP shards one dtype per "
                         "layer); load it with dtype=torch.float32, or train on one process")
    handles, dtypes, was_ckpt = [], [], bool(getattr(hf, "is_activation_checkpointing", False))
    try:
        if precision == "bf16":
            for p in low:
                dtypes.append((p, p.dtype))
                p.data = p.data.float()
            if values is not None:
                with torch.no_grad():
                    for p, v in zip(params, values):
                        p.copy_(v.to(p.device))
            state: list = []
            # one autocast per device type the model runs on (a device map may mix cuda and cpu layers)
            kinds = {p.device: None for p in hf.parameters() if p.device.type != "meta"} or {torch.device("cpu"): None}
            types = list({d.type: d for d in kinds}.values())

            def enter(module, args):
                ctxs = [autocast(precision, d) for d in types]
                for c in ctxs:
                    c.__enter__()
                state.append(ctxs)

            def leave(module, args, output):
                for c in reversed(state.pop()):
                    c.__exit__(None, None, None)
            handles += [hf.register_forward_pre_hook(enter), hf.register_forward_hook(leave, always_call=True)]
        had_input_hook = hasattr(hf, "_require_grads_hook")
        if gradient_checkpointing and not was_ckpt:
            if not getattr(hf, "supports_gradient_checkpointing", False):
                raise ValueError(f"{type(hf).__name__} does not support gradient checkpointing in transformers; "
                                 f"train without gradient_checkpointing")
            hf.activation_checkpointing_enable({"use_reentrant": False})
            handles.append(hf.register_forward_pre_hook(_warm_parametrizations))
        yield
    finally:
        if gradient_checkpointing and not was_ckpt and getattr(hf, "is_activation_checkpointing", False):
            hf.activation_checkpointing_disable()
            if not had_input_hook and hasattr(hf, "_require_grads_hook"):
                hf.disable_input_require_grads()  # enable put it on the embeddings; disable leaves it
        for h in handles:
            h.remove()
        for p, dt in dtypes:
            p.data = p.data.to(dt)
            if p.grad is not None:
                p.grad = None


def _warm_parametrizations(module, args) -> None:
    """Under ``parametrize.cached()``, compute every parametrised tensor (CEFT's slices) before the decoder
    layers run: computed first inside a checkpointed layer, it would be saved for backward in the forward but
    read from the cache in the recompute, and the two would not match."""
    if not parametrize._cache_enabled:
        return
    for m in module.modules():
        if parametrize.is_parametrized(m):
            for name in m.parametrizations:
                getattr(m, name)
