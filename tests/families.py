"""Every MoE family in transformers as a tiny, randomly initialised model: the table the family suite runs on.

Each :class:`FamilyCase` says how to build a tiny config of one family (a few hundred thousand parameters),
which decoder layers are dense, and which routing rule the family's own code applies (DESIGN §7). The
configs live in ``family_table_a.py`` and ``family_table_b.py``; :func:`save` writes a case with
``save_pretrained`` (the way a hub checkpoint looks) so tests exercise real loading.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class FamilyCase:
    """One MoE family.

    Attributes:
        family: the family's name in DESIGN §7 (``"qwen3_5_moe_text"``, ``"glm4v_moe"``, ``"olmoe"``...).
        model_type: ``model_type`` of the language model's config once loaded (``"glm4v_moe_text"``);
            empty = same as ``family``.
        config: builds the tiny config that is saved: the causal-LM config, or for families that exist
            only inside a multimodal model, the whole multimodal config (tiny vision/audio towers).
        routing: DESIGN §7 routing rule of the family's own router code, one of ``softmax_topk``,
            ``sigmoid_group``, ``sigmoid_topk``, ``topk_softmax``, ``softmax_bias``, ``softmax_group``,
            ``sparsemixer``, ``topk_sigmoid``, ``other``.
        n_experts / top_k: routed experts per MoE layer and experts per token in the tiny config.
        dense_layers: decoder layers that hold no routed experts in the tiny config.
        model_class: name of the transformers class that a hub checkpoint of this family loads as
            (``"OlmoeForCausalLM"``, ``"Qwen3VLMoeForConditionalGeneration"``...).
        multimodal: True when the family exists only inside a multimodal model.
        unsupported: None, or why this toolkit cannot support the family in its design (it is then
            expected to be refused with that reason).
        notes: anything surprising about the family's layout.
        router_shared_rows: shared experts scored by the router's own linear after the routed ones (Inkling:
            weight ``[E+S, H]``); 0 for routers of ``[E, H]``.
    """

    family: str
    config: Callable[[], object]
    routing: str
    n_experts: int
    top_k: int
    dense_layers: list[int] = field(default_factory=list)
    model_class: str = ""
    multimodal: bool = False
    unsupported: str | None = None
    notes: str = ""
    model_type: str = ""
    router_shared_rows: int = 0


# Families the toolkit must refuse by name (our reading of their code; the refusal must name the family).
REFUSED = {
    "doge": "product-key experts", "zaya": "MLP router with a skip class", "jetmoe": "dispatch experts + MoA",
}


def cases() -> dict[str, FamilyCase]:
    """Family → case, for all families of both tables."""
    from family_table_a import CASES as A
    from family_table_b import CASES as B

    out = {c.family: c for c in A + B}
    assert len(out) == len(A) + len(B), "a family is listed twice"
    for name, why in REFUSED.items():
        out[name].unsupported = out[name].unsupported or why
    return out


_ROUTER_HINTS = ("gate", "router", "classifier", ".wg")


def sharpen(model: torch.nn.Module, seed: int = 0) -> None:
    """Make routing decisions matter: router weights ~ N(0, 1) (many families start them at 0), correction
    biases and other router biases non-zero, so a wrong re-implementation of routing picks other experts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            low = name.lower()
            if "bias" in low and ("correction" in low or "expert_bias" in low or "router" in low or "gate." in low):
                if t.is_floating_point():
                    t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif low.endswith("weight") and any(h in low for h in _ROUTER_HINTS) and "proj" not in low \
                    and "norm" not in low and t.dim() == 2 and t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g))


def build(case: FamilyCase, seed: int = 0) -> torch.nn.Module:
    """Instantiate ``case`` (random weights, eager attention, eval mode), routers sharpened."""
    import transformers as tf

    torch.manual_seed(seed)
    cfg = case.config()
    cls = getattr(tf, case.model_class) if case.model_class else tf.AutoModelForCausalLM
    if hasattr(cls, "from_config"):
        model = cls.from_config(cfg, attn_implementation="eager")
    else:
        model = cls._from_config(cfg, attn_implementation="eager")
    sharpen(model, seed)
    return model.eval()


def save(case: FamilyCase, path, seed: int = 0) -> str:
    """Build ``case`` and write model + the tiny tokenizer of ``tiny.py`` with ``save_pretrained``."""
    import tiny

    model = build(case, seed)
    model.save_pretrained(path)
    tiny.tokenizer().save_pretrained(path)
    return str(path)
