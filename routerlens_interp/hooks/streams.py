"""The logit lens on families with several residual streams: each layer's *lens state*, and the family's own mix.

The lens of layer ``l`` is the model's own final step applied to what it would have read had it ended after
layer ``l``: ``lm_head(final_norm(mix(state_l)))`` (then the family's logit scale). ``state_l``, the lens state,
is by ``spec.final_mix`` (:mod:`routerlens_interp.arch.final_step`):

- None: the layer's output ``[B, T, D]`` (``mix`` is the identity);
- ``"streams"``: the layer's output, ``[B, T, S, D]`` or ``[B, T, S·D]`` (hyper-connection streams);
- ``"blocks"``: the block states stacked with the layer's output, ``[B, T, n_l + 1, D]``: the ``n_l`` block
  states are the inputs of the block-boundary layers up to ``l`` (the model appends a boundary layer's input
  to the stack after calling it, so the state of a boundary layer ``l`` includes its own input).

Traces keep the lens state at the query positions only (``[B, ...]`` per layer): the mixers act on each
position alone. A layer the model runs several times per forward (Inkling2-Loop's looped layers) gives one
state per call; readers keep the last, the one the layers after it consumed.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch


def lens_state(spec, layer, args: tuple, kwargs: dict, output) -> torch.Tensor:
    """The lens state ``[B, T, ...]`` of one decoder-layer call, from its inputs and output (see above)."""
    h = output[0] if isinstance(output, tuple) else output  # some layers also return indexer state
    if spec.final_mix is None or spec.final_mix[0] == "streams":
        return h
    hidden_in = args[0] if args else kwargs["hidden_states"]
    blocks = args[1] if len(args) > 1 else kwargs["block_states"]  # [B, T, n, D] entering the layer
    if layer.is_block_boundary:  # the model appends this layer's input once the layer returns
        blocks = torch.cat([blocks.to(hidden_in.device), hidden_in.unsqueeze(-2)], dim=-2)
    return torch.cat([blocks.to(h.device, h.dtype), h.unsqueeze(-2)], dim=-2)


@contextmanager
def read_lens_states(lm, layers, fn: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
    """Call ``fn(layer, state [B, T, ...])`` after every call of each of ``layers`` while the block runs
    (plain forward hooks, removed on exit, also after an exception)."""
    spec, handles = lm.spec, []
    blocks = spec.layers(lm.hf)
    try:
        for l in layers:
            def hook(module, args, kwargs, output, l=l):
                fn(l, lens_state(spec, module, args, kwargs, output))
            handles.append(blocks[l].register_forward_hook(hook, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def mix_streams(lm, state: torch.Tensor) -> torch.Tensor:
    """Lens state ``[..., (S|n+1), D]`` or ``[..., S·D]`` → ``[..., D]`` by the family's own mixing module
    (identity without ``spec.final_mix``). Leading axes are flattened into the mixer's token axis
    (``[1, N, ...]``): the mixers read one position at a time."""
    spec = lm.spec
    if spec.final_mix is None:
        return state
    from .devices import module_device

    kind = spec.final_mix[0]
    mixer = spec.final_mixer(lm.hf)
    items = 2 if kind == "blocks" or state.shape[-1] == spec.hidden_size else 1  # [S, D] or [S·D] per position
    lead = state.shape[:-items]
    x = state.reshape(1, -1, *state.shape[-items:]).to(module_device(mixer, state.device))
    out = mixer(x[..., :-1, :], x[..., -1, :])[0] if kind == "blocks" else mixer(x)
    if not isinstance(out, torch.Tensor) or out.shape[-1] != spec.hidden_size:
        raise TypeError(f"{type(mixer).__name__} returned {type(out).__name__} "
                        f"{tuple(getattr(out, 'shape', ()))}, not the [..., {spec.hidden_size}] hidden state")
    return out.reshape(*lead, out.shape[-1])
