"""What a family does between its last decoder layer and its final norm; the logit lens does the same.

Most families hand the last layer's output ``[B, T, D]`` straight to the final norm. Some carry more than one
residual stream, and the base model (the module holding the decoder layers) mixes them first with a module of
its own, found here as ``spec.final_mix = (kind, path)``:

- ``("streams", path)``: hyper-connections. The layers pass ``S`` streams, ``[B, T, S, D]`` (DeepSeek-V4, HY-V4,
  GLM-5-Next: ``hc_head``) or ``[B, T, S·D]`` (Qwen4-Exp: ``hyper_connection_mixer``, which normalises the
  streams itself: that family has no separate final norm). ``module(streams) → [B, T, D]``.
- ``("blocks", path)``: block attention residuals (Inkling2: ``final_input``). Each block-boundary layer
  (``layer.is_block_boundary``) has its input appended to a stack of block states;
  ``module(block_states [B, T, n, D], h [B, T, D])[0]`` attends over the stack and the last output ``h``.

The module is found by name and by its forward's signature, and it is called, never re-implemented
(:mod:`routerlens_interp.hooks.streams`); :func:`routerlens_interp.hooks.check_lens` checks at run time that
the last layer's lens equals the model's logits and switches the lens off with the reason where it does not.
"""
from __future__ import annotations

import inspect

from torch import nn

# name on the base model → kind, and the positional arguments its forward must take
MIXERS = {"hc_head": ("streams", 1), "hyper_connection_mixer": ("streams", 1), "final_input": ("blocks", 2)}


def _positional(fn) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [n for n, p in inspect.signature(fn).parameters.items() if p.kind in kinds]


def find_final_mix(base: nn.Module, base_path: str, layers: nn.ModuleList) -> tuple[str, str] | None:
    """``(kind, path from the model)`` of the base model's stream mixing before its final norm, or None.

    A ``"blocks"`` mixer counts only when every decoder layer says whether it is a block boundary and takes
    ``(hidden_states, block_states, ...)``: the lens rebuilds each layer's block states from those two inputs.
    """
    for name, (kind, n_args) in MIXERS.items():
        mod = base._modules.get(name)
        if not isinstance(mod, nn.Module) or len(_positional(mod.forward)) != n_args:
            continue
        if kind == "blocks" and not all(hasattr(l, "is_block_boundary")
                                        and _positional(l.forward)[1:2] == ["block_states"] for l in layers):
            continue
        return kind, f"{base_path}.{name}" if base_path else name
    return None
