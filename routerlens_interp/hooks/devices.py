"""The device rule for models spread over several devices (``device_map="auto"``, or a hand-written map).

With a device map, the decoder layers sit on different devices: router outputs, attention rows and residuals
come back on their own layer's device, the logits on the unembedding's. The rule every reader, edit, mask,
trainer and metric follows:

- a record is moved to where it is accumulated (``to_acc(x, acc)`` → ``x`` on ``acc.device``) before it is
  combined with anything else; records kept for later go to the CPU;
- an edit builds its mask on the device of the tensor it edits (``mask.to(x.device)``);
- input ids go to the input embedding's device (:func:`input_device`), labels and positions used on the
  logits to the unembedding's (:func:`output_device`).
"""
from __future__ import annotations

import torch
from torch import nn


def _param_device(module: nn.Module | None, default: torch.device | None = None) -> torch.device:
    p = next(module.parameters(), None) if module is not None else None
    if p is None or p.device.type == "meta":
        return default if default is not None else torch.device("cpu")
    return p.device


def input_device(hf: nn.Module) -> torch.device:
    """Device of the input embedding (where ``input_ids`` must be); the first parameter's as a fallback."""
    try:
        emb = hf.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        emb = None
    return _param_device(emb, _param_device(hf))


def output_device(hf: nn.Module) -> torch.device:
    """Device of the unembedding (where the logits come out)."""
    try:
        out = hf.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        out = None
    return _param_device(out, input_device(hf))


def spread(hf: nn.Module) -> bool:
    """Whether a device map put ``hf``'s modules on more than one device."""
    m = getattr(hf, "hf_device_map", None) or {}
    return len({str(v) for v in m.values()}) > 1


def index_device(hf: nn.Module) -> torch.device:
    """Where an index tensor into the model's last hidden states goes: the unembedding's device, or the CPU
    when a device map spreads the model (a CPU index works on a tensor of any device, a CUDA one only on CUDA)."""
    return torch.device("cpu") if spread(hf) else output_device(hf)


def module_device(module: nn.Module, default: torch.device | None = None) -> torch.device:
    """Device of ``module``'s first parameter (``default``, else CPU, when it has none)."""
    return _param_device(module, default)


def to_acc(x: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """``x`` on ``acc``'s device (no copy when it is already there): the one move before accumulating."""
    return x if x.device == acc.device else x.to(acc.device)


def devices(hf: nn.Module) -> list[torch.device]:
    """The distinct devices ``hf``'s parameters live on (one for a model on one device)."""
    seen: list[torch.device] = []
    for p in hf.parameters():
        if p.device not in seen:
            seen.append(p.device)
    return seen
