"""TransformerLens backend: the same records as the nnsight backend, read from a ``TransformerBridge``.

TransformerLens 4.x wraps a transformers model with ``TransformerBridge.boot_transformers(name,
hf_model=..., tokenizer=...)``, and exposes hook points named as paths:

- ``blocks.L.attn.hook_pattern``            ``[B, H, T, T]`` attention probabilities
- ``blocks.L.hook_resid_post``              ``[B, T, D]`` residual stream after layer L
- ``blocks.L.mlp.gate.hook_out``            ``[B·T, E]`` router logits
- ``blocks.L.mlp.hook_expert_indices``      ``[B·T, k]`` chosen experts (OLMoE, Mixtral, Qwen2/3-MoE; GraniteMoE
                                            with logits and indices swapped, corrected here)
- ``blocks.L.mlp.hook_expert_weights``      ``[B·T, E]`` top-k weights scattered over all experts

DeepSeek-V2/V3 get only ``gate.hook_in/out``; there the top-k is re-derived from the recorded logits
with the family's own routing function (:func:`routerlens_interp.arch.route`), which reproduces the
router exactly, with −inf logits (a ``reroute`` mask) treated as masked.

Booting a bridge *replaces* modules of the transformers model in place (each wrapped in a bridge
component). That would change ``lm.hf`` for everything else (spec paths, nnsight, masks), so the
replacements are recorded, undone right after booting, and re-installed only while the bridge runs
(:func:`bridged`). Hooks that masks put on the original modules keep firing inside the bridge, since
every bridge component calls its original module. The bridge is cached on the model as
``lm._tl_bridge``. PhiMoE is not supported by TransformerLens 4.3 (no architecture adapter).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch

from ..arch import route
from ..interventions.masking import active_mask

BRIDGE_NAME = "routerlens-local-model"  # a neutral name: "olmoe" etc. are read as hub aliases


class TLUnsupportedError(NotImplementedError):
    """TransformerLens cannot bridge this model."""


def get_bridge(lm):
    """The model's ``TransformerBridge`` (booted once, cached as ``lm._tl_bridge``)."""
    bridge = getattr(lm, "_tl_bridge", None)
    if bridge is None:
        bridge, swaps = _boot(lm)
        lm._tl_bridge, lm._tl_swaps = bridge, swaps
    return bridge


def _boot(lm):
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as err:  # pragma: no cover - dependency of the package
        raise TLUnsupportedError(f"transformer_lens is not importable: {err}") from err
    hf = lm.hf
    if not getattr(hf.config, "architectures", None):
        hf.config.architectures = [type(hf).__name__]
    snapshot = [(mod, dict(mod._modules)) for mod in hf.modules()]
    params = {n: p for n, p in hf.named_parameters()}
    was_training = hf.training
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bridge = TransformerBridge.boot_transformers(BRIDGE_NAME, hf_model=hf, tokenizer=lm.tokenizer,
                                                         dtype=next(hf.parameters()).dtype, device=lm.device)
    except ValueError as err:
        if "architecture" in str(err):
            raise TLUnsupportedError(
                f"TransformerLens has no architecture adapter for {hf.config.architectures} "
                f"({lm.spec.family}); use backend='nnsight'") from None
        raise
    finally:
        swaps = []
        for mod, children in snapshot:
            for name, child in children.items():
                now = mod._modules.get(name)
                if now is not child:
                    swaps.append((mod, name, child, now))
                    mod._modules[name] = child
        hf.train(was_training)
    moved = [n for n, p in hf.named_parameters() if params.get(n) is not p]
    if moved:  # pragma: no cover - would mean the bridge copied weights
        raise TLUnsupportedError(f"booting the TransformerLens bridge replaced parameters {moved[:3]}")
    return bridge, swaps


@contextmanager
def bridged(lm):
    """Install the bridge components into ``lm.hf`` while the block runs; undone on exit."""
    bridge = get_bridge(lm)
    if any(mod._modules.get(name) is not orig for mod, name, orig, _ in lm._tl_swaps):
        lm._tl_bridge = None  # modules were replaced since booting (e.g. an adapter): boot afresh
        bridge = get_bridge(lm)
    for mod, name, _, comp in lm._tl_swaps:
        mod._modules[name] = comp
    try:
        yield bridge
    finally:
        for mod, name, orig, _ in lm._tl_swaps:
            mod._modules[name] = orig


def hook_names(lm, bridge, span_masks: bool, routing: bool, lens: bool) -> list[str]:
    """The hook points one trace reads."""
    spec, avail = lm.spec, set(bridge.hook_dict)
    names = []
    for i in range(spec.n_layers):
        if span_masks:
            names.append(f"blocks.{i}.attn.hook_pattern")
        if routing and i in spec.moe_layers:
            names.append(f"blocks.{i}.mlp.gate.hook_out")
            for h in ("hook_expert_indices", "hook_expert_weights"):
                if f"blocks.{i}.mlp.{h}" in avail:
                    names.append(f"blocks.{i}.mlp.{h}")
        if lens:
            names.append(f"blocks.{i}.hook_resid_post")
    missing = [n for n in names if n not in avail]
    if missing:
        raise TLUnsupportedError(f"the TransformerLens bridge of this {spec.family} model lacks hook points "
                                 f"{missing[:4]}; use backend='nnsight'")
    return names


def collect(lm, batch: dict, query: torch.Tensor, span_masks: torch.Tensor | None, routing: bool,
            lens: bool) -> dict:
    """Run one batch through the bridge; same contract as :func:`..nnsight_backend.collect`.

    Args:
        batch: ``input_ids``/``attention_mask`` ``[B, T]`` (right padded).
        query: ``[B]`` query positions.
        span_masks: ``[B, S, T]`` float masks of the spans, or None for no attention.

    Returns ``{"logits": {l: [B*T, E]}, "weights": {l: [B*T, k]}, "indices": {l: [B*T, k]},
    "attention": {l: [B, H, S]}, "resid": {l: [B, D]}}``.
    """
    spec = lm.spec
    ids = batch["input_ids"]
    B = ids.shape[0]
    rows = torch.arange(B, device=ids.device)
    q = query.to(ids.device)
    with bridged(lm) as bridge:
        names = hook_names(lm, bridge, span_masks is not None, routing, lens)
        with torch.no_grad():
            _, cache = bridge.run_with_cache(ids, attention_mask=batch["attention_mask"], names_filter=names,
                                             return_type=None)
    out = {"logits": {}, "weights": {}, "indices": {}, "attention": {}, "resid": {}}
    for i in range(spec.n_layers):
        if span_masks is not None:
            pat = cache[f"blocks.{i}.attn.hook_pattern"][rows, :, q]  # [B, H, T]
            out["attention"][i] = torch.einsum("bhk,bsk->bhs", pat.float(), span_masks)
        if routing and i in spec.moe_layers:
            logits = cache[f"blocks.{i}.mlp.gate.hook_out"]
            idx = cache[f"blocks.{i}.mlp.hook_expert_indices"] if f"blocks.{i}.mlp.hook_expert_indices" in cache \
                else None
            if idx is not None and not logits.is_floating_point() and idx.is_floating_point():
                # TL 4.3's GraniteMoE adapter reads the router tuple in the pre-5.x order (indices,
                # weights, logits); transformers 5 returns (logits, weights, indices), so the two
                # hooks carry each other's tensors. Read them the right way round.
                logits, idx = idx, logits
            logits = logits.reshape(-1, logits.shape[-1])
            out["logits"][i] = logits
            if idx is not None:
                w = cache[f"blocks.{i}.mlp.hook_expert_weights"]
                if w.shape[-1] != idx.shape[-1]:  # scattered over all experts → back to top-k
                    w = w.gather(-1, idx.long())
            else:  # DeepSeek: no top-k hooks; re-derive with the family's routing function
                masked = torch.isneginf(logits)
                w, idx = route(spec.routing, logits, spec.router(lm.hf, i), masked if masked.any() else None)
            zero = active_mask(spec.experts(lm.hf, i), "zero")  # TL reads weights before a `zero` mask acts
            if zero is not None:
                w = w.masked_fill(zero.to(idx.device)[idx], 0.0)
            out["indices"][i], out["weights"][i] = idx, w
        if lens:
            out["resid"][i] = cache[f"blocks.{i}.hook_resid_post"][rows, q]
    return out
