"""Attention knockout: stop one query position from attending to chosen key positions at chosen layers.

The causal test for attention claims (is the attention a gain measures *used*?): the blocked entries get
the dtype's minimum in the additive mask each chosen layer's attention module receives, so their softmax
weight is 0 and the rest renormalises. Other layers keep the model's own mask, and other query positions
are untouched at every layer.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch

SUPPORTED = ("eager", "sdpa")


def causal_mask(t: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``[1, 1, T, T]`` additive causal mask (0 on and below the diagonal, the dtype's minimum above)."""
    lo = torch.finfo(dtype).min
    return torch.full((t, t), lo, dtype=dtype, device=device).triu(1)[None, None]


@contextmanager
def knock_out_attention(lm, layers: list[int], query: int, keys: list[int], length: int):
    """Within the block, a single-sequence forward of ``length`` tokens (no padding) cannot attend from
    position ``query`` to positions ``keys`` at decoder ``layers``; hooks are removed on exit.

    The model's own mask is edited (sliding windows and padding stay as they are); where a layer gets no
    mask (SDPA's pure-causal shortcut), a causal one is materialised with the entries blocked. Where the
    attention module builds its mask itself from a sparse-attention indexer's top-k (GLM-5-Next), the mask it
    builds is edited (the indexer and its top-k, which a later layer may reuse, are untouched). A knockout that
    leaves the query row no key (a sliding window or a top-k selection inside ``keys``) is refused: softmax
    over no key has no value, and eager and SDPA would give different garbage.
    """
    from ..hooks.attn_rows import implementation

    impl = implementation(lm)
    if impl not in SUPPORTED:
        raise ValueError(f"attention knockout needs eager or sdpa attention, not {impl!r}; load the model with "
                         f"rl.load(...) (sdpa by default) or attn_implementation='eager'")
    n_layers = len(lm.spec.layers(lm.hf))
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has decoder layers 0..{n_layers - 1}")
    if not 0 <= query < length or any(not 0 <= k <= query for k in keys):
        raise ValueError(f"query {query} and keys {list(keys)} must satisfy 0 <= key <= query < length {length}")
    if set(range(query + 1)) <= set(keys):
        raise ValueError("cannot block every position the query can see: the attention row would be empty")
    mask = causal_mask(length, lm.hf.dtype, "cpu")
    mask[0, 0, query, list(keys)] = torch.finfo(mask.dtype).min
    # one copy per device the chosen layers run on (a device map spreads them): built where it is used
    on_device: dict = {}

    no_attn = [l for l in layers if l not in lm.spec.attention_layers]
    if no_attn:
        raise ValueError(f"layers {no_attn} have no softmax attention to knock out "
                         f"({lm.spec.mixer_kind(no_attn[0])}); attention layers: {lm.spec.attention_layers}")
    lo = torch.finfo(lm.hf.dtype).min

    def edit(old, layer):
        """Block the entries in the model's own mask (keeps its sliding windows and sinks); a plain causal
        mask where the model passes none."""
        if old is None:
            return mask  # replaced below by the copy on the layer's device
        if isinstance(old, torch.Tensor) and old.dim() >= 2 and old.shape[-2] == length and old.shape[-1] >= length:
            new = old.clone()
            new[..., query, list(keys)] = False if new.dtype == torch.bool else lo
            row = new[..., query, :]
            if not bool((row if row.dtype == torch.bool else row > lo).any(-1).all()):
                seen = torch.nonzero((old[..., query, :] if old.dtype == torch.bool else old[..., query, :] > lo)
                                     .reshape(-1, old.shape[-1]).any(0)).flatten().tolist()
                raise ValueError(f"attention knockout at layer {layer} leaves query {query} no key to attend: its "
                                 f"mask lets it see only keys {seen}, all among the blocked {list(keys)}")
            return new
        raise RuntimeError(f"attention knockout cannot edit this {lm.spec.family} model's attention mask "
                           f"({type(old).__name__} {tuple(getattr(old, 'shape', ()))}); it supports additive or "
                           f"boolean [.., T, T] masks")

    from ..hooks.devices import module_device

    def on(dev):
        if dev not in on_device:
            on_device[dev] = mask.to(dev)
        return on_device[dev]

    def edit_on(dev, layer):
        def fn(old):
            new = edit(old, layer)
            return on(dev) if new is mask else new
        return fn

    with ExitStack() as stack:
        for l in layers:
            dev = module_device(lm.spec.attention(lm.hf, l), lm.device)
            stack.enter_context(lm.hooks.edit(f"blocks.{l}.attn.hook_mask", edit_on(dev, l)))
        yield
