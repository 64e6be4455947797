"""Build a :class:`MoESpec` for a loaded model by walking its module tree.

An MoE layer is a module with per-expert stacked projections (3-D ``*proj`` parameters ``[E, ., .]``; LongCat-Flash
adds zero-compute identity experts, DBRX keeps flat ``[E·I, H]`` matrices: :mod:`.layouts`), or an
``nn.ModuleList`` of ``E`` like MLPs of 2-D linears (remote code: ``experts_kind = "module_list"``), next to
a router: a sibling module holding a ``[E, H]`` weight (``gate``, ``router``, a nested ``.wg``/``.classifier``/
``.proj`` linear, or a router on the decoder layer itself), or a ``[E+S, H]`` weight that also scores its
``n_shared_experts`` shared experts (Inkling: ``spec.router_shared_rows``). The family's routing is never
re-implemented: ``reroute`` runs the family's own code on masked logits (:mod:`routerlens_interp.hooks`), so
the table of routing rules below is documentation. Families the design cannot represent are refused by name with the
reason (:data:`UNSUPPORTED`); all 66 MoE families of transformers 5.24 are checked in ``tests/test_families.py``.
"""
from __future__ import annotations

import inspect as inspect_sig

import torch
from torch import nn

from . import layouts
from .final_step import find_final_mix
from .spec import MoESpec

# model_type → name of its routing rule in tests/routing_oracle.py (the hand-written rules the tests compare with).
KNOWN_FAMILIES = {
    "olmoe": "softmax_topk",
    "mixtral": "softmax_topk",
    "qwen2_moe": "softmax_topk",
    "qwen3_moe": "softmax_topk",
    "deepseek_v2": "deepseek_v2",
    "deepseek_v3": "deepseek_v3",
}
INSPECTED_FAMILIES = {"phimoe": "sparsemixer", "granitemoe": "topk_softmax"}
class NotMoEError(ValueError):
    """The model has no routed-expert layers this toolkit can read."""


# DESIGN §7: the routing rule of each family's own router code (for the spec and the README; `reroute`
# runs the family's code itself, so nothing here is re-implemented).
ROUTING_RULES = {
    **{f: "softmax_topk" for f in ("olmoe", "mixtral", "qwen2_moe", "qwen3_moe", "dbrx", "flex_olmo", "hunyuan_v1_moe",
                                   "jamba", "lara_mini", "mellum", "minimax", "qwen3_5_moe_text", "qwen3_next",
                                   "qwen4_exp_text", "qwen3_vl_moe_text")},
    "deepseek_v2": "deepseek_v2", "deepseek_v3": "deepseek_v3",
    **{f: "sigmoid_group" for f in ("deepseek_v32", "axk1", "axk2", "bailing_hybrid", "beam", "dots1", "dots3_note_text",
                                    "exaone_moe", "glm4_moe", "glm4_moe_lite", "glm_moe_dsa", "hy_v4", "kimi_linear",
                                    "mimo_v2_flash", "nemotron_h", "solar_open", "glm4v_moe_text", "hy_v4_vl_text",
                                    "glm5_next_text")},
    **{f: "sigmoid_topk" for f in ("afmoe", "hy_v3", "inkling_text", "inkling2_text", "inkling2_loop_text", "laguna",
                                   "lfm2_moe", "minimax_m2", "minimax_m3_vl_text", "step3p5")},
    "kolibri1": "topk_sigmoid", "llama4_text": "topk_sigmoid", "flint": "sigmoid_topk",
    **{f: "topk_softmax" for f in ("granitemoe", "granitemoe_swa", "granitemoehybrid", "granitemoeshared", "aria_text",
                                   "cohere2_moe", "gpt_oss", "jetmoe")},
    "ernie4_5_moe": "softmax_bias", "longcat_flash": "softmax_bias",
    "mistral4": "softmax_group", "mistral_large4_text": "softmax_group",
    "phimoe": "sparsemixer", "gemma4_text": "scaled_softmax", "deepseek_v4": "sqrt_softplus_bias",
    "minicpm": "softmax_topk",  # MiniCPM-MoE remote code: softmax → top-k → renormalised
}
# Families this design cannot represent: the reason goes into the refusal.
UNSUPPORTED = {
    "doge": "product-key experts (Embedding tables addressed by pairs of sub-keys): no router scores over experts "
            "and no experts module to mask",
    "zaya": "an MLP router over E+1 classes with a skip class and recurrent router state: no [E, H] router linear "
            "whose logits can be masked",
    "jetmoe": "dispatch experts and a mixture of attention heads (experts inside attention too): the expert "
              "inputs are not (indices, weights) of one experts module",
}
SUPPORTED = ("63 MoE families of transformers 5.24, among them OLMoE, Mixtral, Qwen2-MoE, Qwen3-MoE, Qwen3-Next, "
             "DeepSeek-V2, DeepSeek-V3, GLM-4.5, GPT-OSS, Llama 4, ERNIE 4.5, dots.llm1, MiniMax-M2, Kimi-Linear, "
             "Hunyuan, Jamba, Gemma 4, PhiMoE, GraniteMoE, DBRX, LongCat-Flash (any family with a router linear [E, H] "
             "next to an experts module of per-expert stacked projections, DBRX's 2-D [E·I, H] expert matrices, or "
             "LongCat-Flash's zero-compute identity experts; the README's table lists all 66); remote code whose "
             "experts are an nn.ModuleList of per-expert MLPs next to an [E, H] gate (MiniCPM-MoE, DeepSeek-V2 with "
             "trust_remote_code=True); not Doge, Zaya, JetMoE")
_NORM_NAMES = ("norm", "final_layernorm", "norm_f", "embedding_norm", "ln_f", "final_norm")
_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")


def _find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder layers: the longest ModuleList named like layers, the language model's before a tower's."""
    best = None
    for name, mod in model.named_modules():
        if not (isinstance(mod, nn.ModuleList) and len(mod) > 0):
            continue
        last = name.split(".")[-1]
        if not ("layers" in last or last in ("h", "blocks")):
            continue
        if any(t in name for t in ("vision", "visual", "audio", "encoder", "tower", "mtp")):
            continue
        if best is None or len(mod) > len(best[1]):
            best = (name, mod)
    if best is None:
        raise NotMoEError(f"cannot find the decoder layers of {type(model).__name__}; supported: {SUPPORTED}")
    return best


def _expert_count(mod: nn.Module) -> int | None:
    """E when ``mod`` holds per-expert stacked projections (``[E, ., .]`` parameters named *proj*), or is an
    ``nn.ModuleList`` of ``E`` like MLPs made of 2-D linears (remote code: ``w1/w2/w3``, ``gate/up/down_proj``)."""
    if isinstance(mod, nn.ModuleList):
        return len(mod) if _expert_list(mod) else None
    dims = {p.shape[0] for n, p in mod.named_parameters(recurse=False) if p.dim() == 3 and "proj" in n}
    return dims.pop() if len(dims) == 1 and hasattr(mod, "down_proj") else None


def _expert_list(mod: nn.ModuleList) -> bool:
    """Every item the same MLP class with at least two ``nn.Linear`` children and nothing deeper than 2-D."""
    if len(mod) < 2 or len({type(m) for m in mod}) != 1:
        return False
    first = mod[0]
    linears = [c for c in first.children() if isinstance(c, nn.Linear)]
    return len(linears) >= 2 and all(p.dim() <= 2 for p in first.parameters())


def _router_in(mod: nn.Module, E: int, H: int) -> bool:
    return any(p.dim() == 2 and tuple(p.shape) == (E, H) for _, p in mod.named_parameters())


def _shared_rows(mod: nn.Module, E: int, H: int) -> int:
    """``S`` when ``mod`` is a router whose one linear scores the ``E`` routed experts and then its
    ``n_shared_experts`` shared ones (Inkling: weight ``[E+S, H]``); 0 otherwise."""
    S = getattr(mod, "n_shared_experts", 0)
    if not isinstance(S, int) or S <= 0:
        return 0
    return S if any(p.dim() == 2 and tuple(p.shape) == (E + S, H) for _, p in mod.named_parameters()) else 0


def _find_moe(layer: nn.Module, H: int):
    """→ (moe_attr, router_attr, experts_attr, shared_attr, E, layout) or None for a dense layer. ``layout``
    holds the :class:`MoESpec` fields of an unusual experts layout (:mod:`.layouts`): ``{}``,
    ``{"identity_experts": Z}`` or ``{"experts_layout": "flat", "expert_weights_attr": child}``."""
    for name, mod in layer.named_modules():
        if name.count(".") > 1:
            continue
        E, layout = _expert_count(mod), {}
        if E is None and (ident := layouts.identity_layout(mod)) is not None:
            E, layout = ident[0], {"identity_experts": ident[1]}
        if E is None:
            continue
        parent_name, _, experts_attr = name.rpartition(".")
        block = layer.get_submodule(parent_name) if parent_name else layer
        routers = [n for n, c in block.named_children()
                   if n != experts_attr and (_router_in(c, E, H) or _shared_rows(c, E, H))]
        if not routers:
            continue
        router = routers[0] if len(routers) == 1 else next((n for n in routers if n in ("gate", "router")), routers[0])
        return parent_name, router, experts_attr, _shared(block), E, layout
    return _find_flat(layer, H)


def _find_flat(layer: nn.Module, H: int):
    """The DBRX layout (2-D ``[E·I, H]`` experts matrices, :func:`.layouts.flat_layout`), as :func:`_find_moe`."""
    for name, mod in layer.named_modules():
        flat = layouts.flat_layout(mod, H) if name and name.count(".") <= 1 else None
        if flat is None:
            continue
        parent_name, _, experts_attr = name.rpartition(".")
        block = layer.get_submodule(parent_name) if parent_name else layer
        found = layouts.flat_router(block, experts_attr, flat[0], H)
        if found is not None:
            return (parent_name, found[0], experts_attr, _shared(block), found[1],
                    {"experts_layout": "flat", "expert_weights_attr": flat[1]})
    return None


def _shared(block: nn.Module) -> str | None:
    return next((n for n, _ in block.named_children() if n in ("shared_expert", "shared_experts")), None)


def inspect_model(model: nn.Module) -> MoESpec:
    """Read the MoE layout of a transformers causal LM → :class:`MoESpec`. Raises :class:`NotMoEError`."""
    cfg = model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    family = getattr(text_cfg, "model_type", None) or getattr(cfg, "model_type", type(model).__name__)
    if family in UNSUPPORTED or getattr(cfg, "model_type", None) in UNSUPPORTED:
        raise NotMoEError(f"{type(model).__name__} ({family}) cannot be supported: {UNSUPPORTED.get(family) or UNSUPPORTED[cfg.model_type]}. "
                          f"Supported: {SUPPORTED}")
    H = int(getattr(text_cfg, "hidden_size"))
    layers_path, layers = _find_layers(model)
    found = {i: _find_moe(layer, H) for i, layer in enumerate(layers)}
    moe_layers = [i for i, f in found.items() if f is not None]
    if not moe_layers:
        raise NotMoEError(
            f"{type(model).__name__} ({family}) is not an MoE model, or its layout is one this toolkit "
            f"cannot read (no router linear [E, H] next to an experts module of stacked projections). "
            f"Supported: {SUPPORTED}.")
    moe_attr, router_attr, experts_attr, shared_attr, n_experts, layout = found[moe_layers[0]]
    block = layers[moe_layers[0]].get_submodule(moe_attr) if moe_attr else layers[moe_layers[0]]
    router = getattr(block, router_attr)
    experts = getattr(block, experts_attr)
    top_k = int(getattr(router, "top_k", None) or getattr(block, "top_k", None) or getattr(text_cfg, "num_experts_per_tok", None)
                or getattr(text_cfg, "moe_topk", None) or getattr(text_cfg, "top_k_experts", None)
                or getattr(text_cfg, "num_experts_per_token"))
    routing = KNOWN_FAMILIES.get(family) or INSPECTED_FAMILIES.get(family) or ROUTING_RULES.get(family, "family code")
    attn_attr = next((n for l in layers for n, _ in l.named_children() if n in _ATTN_NAMES), None) or next(
        (n for l in layers for n, c in l.named_children() if type(c).__name__.endswith("Attention")), None) or next(
        # one level down (DBRX: norm_attn_norm.attn)
        (n for l in layers for n, _ in l.named_modules() if n.count(".") == 1 and n.split(".")[1] in _ATTN_NAMES),
        "self_attn")
    mixers = {i: type(next((c for n, c in l.named_children() if n in ("mamba", "linear_attn", "conv", "mixer")),
                           l)).__name__ for i, l in enumerate(layers)
              if not (_has(l, attn_attr) if "." in attn_attr else hasattr(l, attn_attr))}
    base = layers_path.rsplit(".", 1)[0] if "." in layers_path else ""
    norm_path = next((p for p in (f"{base}.{n}" if base else n for n in _NORM_NAMES) if _has(model, p)), None)
    final_mix = find_final_mix(model.get_submodule(base) if base else model, base, layers)
    unembed = "lm_head" if hasattr(model, "lm_head") else None
    if unembed is None:
        raise NotMoEError(f"cannot find the unembedding (lm_head) of {type(model).__name__}; load a causal-LM or "
                          f"image-text-to-text class. Supported: {SUPPORTED}")
    # Routers that are a plain Linear give logits only; the block then decides the top-k. So does a router
    # module without a top_k of its own next to a block that has one (DBRX: ffn.router returns logits).
    logits_only = type(router) is nn.Linear or (not hasattr(router, "top_k") and hasattr(block, "top_k"))
    scope = ".".join(p for p in (moe_attr, router_attr) if p) if not logits_only else moe_attr
    kind = "module_list" if isinstance(experts, nn.ModuleList) else "fused"
    params = list(inspect_sig.signature(experts.forward).parameters) if kind == "fused" else []
    io = "module_list" if kind == "module_list" else "fused" if len(params) >= 3 else "dense_scores"
    consts = {k: getattr(router, k) for k in ("norm_topk_prob", "routed_scaling_factor", "num_group",
                                               "topk_group", "topk_method") if hasattr(router, k)}
    spec = MoESpec(family=family, n_layers=len(layers), moe_layers=moe_layers, n_experts=n_experts,
                   top_k=top_k, routing=routing, layers_path=layers_path, moe_attr=moe_attr,
                   router_attr=router_attr, experts_attr=experts_attr, attn_attr=attn_attr,
                   final_norm_path=norm_path or "", unembed_path=unembed, final_mix=final_mix,
                   shared_experts_attr=shared_attr,
                   routing_params=consts, hidden_size=H, routing_scope_attr=scope, experts_io=io, mixers=mixers,
                   router_shared_rows=0 if _router_in(router, n_experts, H) else _shared_rows(router, n_experts, H),
                   logit_scale=logit_scale(text_cfg), experts_kind=kind, implementation=implementation(model),
                   **layout)
    if norm_path is None and final_mix is None:  # a stream mixer may normalise itself (check_lens verifies)
        spec.lens = f"no final norm found (looked for {', '.join(_NORM_NAMES)} next to the decoder layers)"
    subs = next((len(m) for l in layers if _has(l, attn_attr) and isinstance(m := l.get_submodule(attn_attr),
                                                                            nn.ModuleList)), 0)
    if subs:
        spec.notes.append(f"each decoder layer holds {subs} attention sublayers ({attn_attr}[0..{subs - 1}]): "
                          f"attn.hook_pattern gives their heads side by side [B, {subs}·H, R, T], attn.hook_mask "
                          "edits the mask of each")
    if model.config is not text_cfg:
        spec.notes.append(f"text model of {type(model).__name__}: the other towers are not traced")
    return spec


def implementation(model: nn.Module) -> str:
    """``"transformers native"``, or ``"remote code: <module>"`` when the model class came from the checkpoint's
    own modeling file (``trust_remote_code=True`` with an ``auto_map``: transformers imports it as
    ``transformers_modules.…``)."""
    module = type(model).__module__
    if module.startswith("transformers.") or module == "transformers":
        return "transformers native"
    if module.startswith("transformers_modules"):
        return f"remote code: {module}"
    return f"custom class: {module}.{type(model).__name__}"


def logit_scale(cfg) -> tuple | None:
    """The family's own step from ``lm_head`` output to logits, read off its config (MiniCPM divides the last
    hidden state by ``hidden_size / dim_model_base`` before ``lm_head``: the same as dividing the logits)."""
    if getattr(cfg, "logits_scaling", None) not in (None, 1, 1.0):
        return ("divide", float(cfg.logits_scaling))
    if getattr(cfg, "logit_scale", None) not in (None, 1, 1.0):
        return ("multiply", float(cfg.logit_scale))
    if getattr(cfg, "logits_mup_width_multiplier", None) not in (None, 1, 1.0):  # Inkling: hidden / m before lm_head
        return ("divide", float(cfg.logits_mup_width_multiplier))
    if getattr(cfg, "dim_model_base", None) and getattr(cfg, "scale_emb", None) is not None:
        ratio = float(cfg.hidden_size) / float(cfg.dim_model_base)
        if ratio != 1.0:
            return ("divide", ratio)
    if getattr(cfg, "final_logit_softcapping", None):
        return ("softcap", float(cfg.final_logit_softcapping))
    return None


def _has(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False
