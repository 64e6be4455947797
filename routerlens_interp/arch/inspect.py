"""Build a :class:`MoESpec` for a loaded model: known families by name, the rest by inspection.

Known families (explicit, tested): OLMoE, Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V2, DeepSeek-V3.
Any other transformers family whose MoE blocks have a router (``gate``/``router``, returning
``(logits, weights, indices)``) next to a fused ``experts`` module (3-D ``gate_up_proj``) is found by
walking the module tree (tested on PhiMoE and GraniteMoE).
"""
from __future__ import annotations

import torch
from torch import nn

from .routing import ROUTING_FUNCTIONS
from .spec import MoESpec

# model_type → routing function; the module layout is read off the tree for all of them.
KNOWN_FAMILIES = {
    "olmoe": "softmax_topk",
    "mixtral": "softmax_topk",
    "qwen2_moe": "softmax_topk",
    "qwen3_moe": "softmax_topk",
    "deepseek_v2": "deepseek_v2",
    "deepseek_v3": "deepseek_v3",
}
INSPECTED_FAMILIES = {"phimoe": "sparsemixer", "granitemoe": "topk_softmax"}
# Router class-name fragments → routing function, for families found by inspection only.
_ROUTER_CLASS_HINTS = {"Phimoe": "sparsemixer", "GraniteMoe": "topk_softmax", "DeepseekV3": "deepseek_v3",
                       "DeepseekV2": "deepseek_v2"}
SUPPORTED = ("OLMoE, Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V2, DeepSeek-V3 (explicit); PhiMoE, GraniteMoE "
             "and other transformers MoE families with a router and a fused `experts` module (inspected)")


class NotMoEError(ValueError):
    """The model has no routed-expert layers this toolkit can read."""


def _find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (best is None or len(mod) > len(best[1])):
            if "layers" in name.split(".")[-1] or name.endswith(".h") or name.endswith("blocks"):
                best = (name, mod)
    if best is None:
        raise NotMoEError(f"cannot find the decoder layers of {type(model).__name__}; supported: {SUPPORTED}")
    return best


def _is_experts(mod: nn.Module) -> bool:
    p = getattr(mod, "gate_up_proj", None)
    return isinstance(p, (nn.Parameter, torch.Tensor)) and p.dim() == 3 and hasattr(mod, "down_proj")


def _find_moe(layer: nn.Module):
    """→ (moe_attr, router_attr, experts_attr, shared_attr) or None for a dense layer."""
    for name, block in layer.named_modules():
        if not name or name.count(".") > 1:
            continue
        experts = [n for n, c in block.named_children() if _is_experts(c)]
        if not experts:
            continue
        routers = [n for n, c in block.named_children()
                   if n in ("gate", "router") and getattr(c, "weight", None) is not None]
        if not routers:
            continue
        shared = next((n for n, _ in block.named_children() if n in ("shared_expert", "shared_experts")), None)
        return name, routers[0], experts[0], shared
    return None


def inspect_model(model: nn.Module) -> MoESpec:
    """Read the MoE layout of a transformers causal LM → :class:`MoESpec`. Raises :class:`NotMoEError`."""
    cfg = model.config
    family = getattr(cfg, "model_type", type(model).__name__)
    layers_path, layers = _find_layers(model)
    found = {i: _find_moe(layer) for i, layer in enumerate(layers)}
    moe_layers = [i for i, f in found.items() if f is not None]
    if not moe_layers:
        raise NotMoEError(
            f"{type(model).__name__} ({family}) is not an MoE model, or its layout is one this toolkit "
            f"cannot read (no router next to a fused `experts` module). Supported families: {SUPPORTED}.")
    moe_attr, router_attr, experts_attr, shared_attr = found[moe_layers[0]]
    block = layers[moe_layers[0]].get_submodule(moe_attr)
    router = getattr(block, router_attr)
    experts = getattr(block, experts_attr)
    n_experts = int(experts.gate_up_proj.shape[0])
    top_k = int(getattr(router, "top_k", None) or getattr(cfg, "num_experts_per_tok"))
    routing = KNOWN_FAMILIES.get(family) or INSPECTED_FAMILIES.get(family)
    if routing is None:
        routing = next((r for hint, r in _ROUTER_CLASS_HINTS.items() if hint in type(router).__name__),
                       "softmax_topk" if hasattr(router, "norm_topk_prob") else "unknown")
    assert routing == "unknown" or routing in ROUTING_FUNCTIONS
    attn_attr = next((n for n, _ in layers[0].named_children() if n in ("self_attn", "attn", "attention")),
                     "self_attn")
    base = layers_path.rsplit(".", 1)[0] if "." in layers_path else ""
    norm_path = next((p for p in (f"{base}.norm" if base else "norm", f"{base}.final_layernorm" if base else "")
                      if p and _has(model, p)), None)
    unembed = "lm_head" if hasattr(model, "lm_head") else None
    if norm_path is None or unembed is None:
        raise NotMoEError(f"cannot find the final norm / unembedding of {type(model).__name__}; load a "
                          f"causal-LM class (AutoModelForCausalLM). Supported: {SUPPORTED}")
    params = {k: getattr(router, k) for k in ("norm_topk_prob", "routed_scaling_factor", "num_group",
                                               "topk_group", "topk_method") if hasattr(router, k)}
    return MoESpec(family=family, n_layers=len(layers), moe_layers=moe_layers, n_experts=n_experts,
                   top_k=top_k, routing=routing, layers_path=layers_path, moe_attr=moe_attr,
                   router_attr=router_attr, experts_attr=experts_attr, attn_attr=attn_attr,
                   final_norm_path=norm_path, unembed_path=unembed, shared_experts_attr=shared_attr,
                   routing_params=params, hidden_size=int(cfg.hidden_size), logit_scale=logit_scale(cfg))


def logit_scale(cfg) -> tuple | None:
    """The family's own step from ``lm_head`` output to logits, read off its config."""
    if getattr(cfg, "logits_scaling", None) not in (None, 1, 1.0):
        return ("divide", float(cfg.logits_scaling))
    if getattr(cfg, "logit_scale", None) not in (None, 1, 1.0):
        return ("multiply", float(cfg.logit_scale))
    if getattr(cfg, "final_logit_softcapping", None):
        return ("softcap", float(cfg.final_logit_softcapping))
    return None


def _has(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False
