"""TransformerLens backend: the same records as the nnsight backend, read from a ``TransformerBridge``.

TransformerLens 4.x wraps a transformers model with ``TransformerBridge.boot_transformers(name,
hf_model=..., tokenizer=...)``, and exposes hook points named as paths:

- ``blocks.L.attn.hook_pattern``            ``[B, H, T, T]`` attention probabilities
- ``blocks.L.hook_resid_post``              ``[B, T, D]`` residual stream after layer L
- ``blocks.L.mlp.gate.hook_out``            ``[B·T, E]`` router logits
- ``blocks.L.mlp.hook_expert_indices``      ``[B·T, k]`` chosen experts (OLMoE, Mixtral, Qwen2/3-MoE; GraniteMoE
                                            with logits and indices swapped, corrected here)
- ``blocks.L.mlp.hook_expert_weights``      ``[B·T, E]`` top-k weights scattered over all experts

Routing is read from the hook layer (``lm.hooks``) in both backends: TransformerLens's router hooks sit
outside the family's routing, where masks act, and DeepSeek-V2/V3 get only ``gate.hook_in/out``.
:func:`router_logits` returns TransformerLens's own ``gate.hook_out`` so tests can check the two agree.

Booting a bridge *replaces* modules of the transformers model in place (each wrapped in a bridge
component). That would change ``lm.hf`` for everything else (spec paths, nnsight, masks), so the
replacements are recorded, undone right after booting, and re-installed only while the bridge runs
(:func:`bridged`). Hooks that masks put on the original modules keep firing inside the bridge, since
every bridge component calls its original module. The bridge is cached on the model as
``lm._tl_bridge``. The bridge runs eager attention (booting it would switch the model to eager for good;
that is undone, and :func:`bridged` switches to eager only while it runs). PhiMoE is not supported by TransformerLens 4.3 (no architecture adapter).
"""
from __future__ import annotations

import warnings
from contextlib import ExitStack, contextmanager

import torch


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
    # the bridge switches the model to eager attention; the model keeps its own (bridged() runs eager)
    impls = [(c, c._attn_implementation) for c in {id(c): c for c in
             [hf.config] + [getattr(m, "config", None) for m in hf.modules()] if c is not None}.values()
             if hasattr(c, "_attn_implementation_internal")]
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
        for c, v in impls:
            c._attn_implementation_internal = v  # not the setter: it would overwrite the sub-configs again
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
    from ..hooks.attn_rows import use_implementation

    with use_implementation(lm, "eager"):  # TransformerLens reads the full [B, H, T, T] pattern
        for mod, name, _, comp in lm._tl_swaps:
            mod._modules[name] = comp
        try:
            yield bridge
        finally:
            for mod, name, orig, _ in lm._tl_swaps:
                mod._modules[name] = orig


def hook_names(lm, bridge, span_masks: bool, lens: bool) -> list[str]:
    """The TransformerLens hook points one trace reads (attention and residual stream)."""
    spec, avail = lm.spec, set(bridge.hook_dict)
    names = []
    for i in range(spec.n_layers):
        if span_masks and i in spec.attention_layers:
            names.append(f"blocks.{i}.attn.hook_pattern")
        if lens:
            names.append(f"blocks.{i}.hook_resid_post")
    missing = [n for n in names if n not in avail]
    if missing:
        raise TLUnsupportedError(f"the TransformerLens bridge of this {spec.family} model lacks hook points "
                                 f"{missing[:4]}; use backend='nnsight'")
    return names


def router_logits(lm, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
    """TransformerLens's own ``blocks.L.mlp.gate.hook_out`` per MoE layer, flattened to ``[B*T, E]`` (only
    where the bridge has it), to check against the hook layer's ``router.hook_logits``."""
    spec = lm.spec
    with bridged(lm) as bridge:
        names = [f"blocks.{i}.mlp.gate.hook_out" for i in spec.moe_layers
                 if f"blocks.{i}.mlp.gate.hook_out" in bridge.hook_dict]
        with torch.no_grad():
            _, cache = bridge.run_with_cache(ids, attention_mask=attention_mask, names_filter=names, return_type=None)
    out = {}
    for i in spec.moe_layers:
        x = cache[f"blocks.{i}.mlp.gate.hook_out"] if f"blocks.{i}.mlp.gate.hook_out" in cache else None
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.shape[-1] == spec.n_experts:
            out[i] = x.reshape(-1, x.shape[-1])
    return out


def collect(lm, batch: dict, query: torch.Tensor, span_masks: torch.Tensor | None, routing: bool,
            lens: bool) -> dict:
    """Run one batch through the bridge; same contract as :func:`..nnsight_backend.collect`.

    Attention and residual stream come from TransformerLens hooks; routing from the hook layer's router
    and experts points (TransformerLens's router hooks sit outside the family's routing, where masks
    act; :func:`router_logits` reads them for comparison).

    Args:
        batch: ``input_ids``/``attention_mask`` ``[B, T]`` (right padded).
        query: ``[B]`` query positions.
        span_masks: ``[B, S, T]`` float masks of the spans, or None for no attention.

    Returns ``{"logits": {l: [B*T, E]}, "weights": {l: [B*T, k]}, "indices": {l: [B*T, k]},
    "attention": {l: [B, H, S]}, "resid": {l: [B, D]}}`` (``[B, S, D]`` / ``[B, S·D]`` with several residual
    streams: ``hook_resid_post`` as it is).
    """
    from .nnsight_backend import routing_reads

    spec = lm.spec
    if lens and spec.final_mix is not None and spec.final_mix[0] == "blocks":
        raise TLUnsupportedError(f"the logit lens of this {spec.family} model reads the block states each layer "
                                 f"receives ({spec.final_mix[1]}), which TransformerLens's hook_resid_post does not "
                                 f"carry; use backend='nnsight'")
    ids = batch["input_ids"]
    B = ids.shape[0]
    rows = torch.arange(B, device=ids.device)
    q = query.to(ids.device)
    out = {"logits": {}, "weights": {}, "indices": {}, "attention": {}, "resid": {}}
    with ExitStack() as stack:
        if routing:  # on the original modules, before the bridge swaps its components in (they call them)
            routing_reads(lm, stack, out)
        bridge = stack.enter_context(bridged(lm))
        names = hook_names(lm, bridge, span_masks is not None, lens)
        with torch.no_grad():
            _, cache = bridge.run_with_cache(ids, attention_mask=batch["attention_mask"], names_filter=names,
                                             return_type=None)
    for i in range(spec.n_layers):
        if span_masks is not None and i in spec.attention_layers:
            pat = cache[f"blocks.{i}.attn.hook_pattern"]
            pat = pat[rows.to(pat.device), :, q.to(pat.device)]  # [B, H, T], on the layer's device
            out["attention"][i] = torch.einsum("bhk,bsk->bhs", pat.float(), span_masks.to(pat.device))
        if lens:
            h = cache[f"blocks.{i}.hook_resid_post"]
            out["resid"][i] = h[rows.to(h.device), q.to(h.device)]
    return out
