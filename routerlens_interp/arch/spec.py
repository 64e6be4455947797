"""Where the MoE parts of a transformers model live, and how it routes tokens.

One :class:`MoESpec` per loaded model. It is built by :func:`routerlens_interp.arch.inspect_model`
from the model's config (known families) and its module tree (anything with a router and a fused
``experts`` module). Paths are attribute paths relative to the ``PreTrainedModel`` (``lm.hf``) or,
for ``*_attr`` fields, relative to one decoder layer.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn


@dataclass
class MoESpec:
    """Description of one MoE model's layout.

    Attributes:
        family: ``config.model_type`` (e.g. ``"olmoe"``).
        n_layers: number of decoder layers.
        moe_layers: decoder-layer indices that hold routed experts (dense layers are left out).
        n_experts: routed experts per MoE layer.
        top_k: experts per token.
        routing: name of the routing function (see :mod:`routerlens_interp.arch.routing`).
        layers_path: path of the decoder-layer ``ModuleList``.
        moe_attr: path of the MoE block inside a decoder layer (``"mlp"``, ``"block_sparse_moe"``).
        router_attr / experts_attr: paths inside the MoE block.
        attn_attr: self-attention module inside a decoder layer.
        final_norm_path / unembed_path: final norm and unembedding (logit lens).
        shared_experts_attr: shared (never routed) experts inside the MoE block, if any.
        routing_params: extra constants of the routing function (scaling factor, groups, ...).
    """

    family: str
    n_layers: int
    moe_layers: list[int]
    n_experts: int
    top_k: int
    routing: str
    layers_path: str = "model.layers"
    moe_attr: str = "mlp"
    router_attr: str = "gate"
    experts_attr: str = "experts"
    attn_attr: str = "self_attn"
    final_norm_path: str = "model.norm"
    unembed_path: str = "lm_head"
    shared_experts_attr: str | None = None
    routing_params: dict = field(default_factory=dict)

    # -- module access -------------------------------------------------------------------------
    def layers(self, model: nn.Module) -> nn.ModuleList:
        return get_path(model, self.layers_path)

    def moe_block(self, model: nn.Module, layer: int) -> nn.Module:
        self.check_moe_layer(layer)
        return get_path(self.layers(model)[layer], self.moe_attr)

    def router(self, model: nn.Module, layer: int) -> nn.Module:
        """The router of decoder layer ``layer``: returns ``(logits [T,E], weights [T,k], indices [T,k])``."""
        return get_path(self.moe_block(model, layer), self.router_attr)

    def experts(self, model: nn.Module, layer: int) -> nn.Module:
        """Fused experts: ``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``."""
        return get_path(self.moe_block(model, layer), self.experts_attr)

    def attention(self, model: nn.Module, layer: int) -> nn.Module:
        return get_path(self.layers(model)[layer], self.attn_attr)

    def final_norm(self, model: nn.Module) -> nn.Module:
        return get_path(model, self.final_norm_path)

    def unembed(self, model: nn.Module) -> nn.Module:
        return get_path(model, self.unembed_path)

    # -- paths as strings (for nnsight / TransformerLens / state-dict keys) --------------------
    def router_path(self, layer: int) -> str:
        return f"{self.layers_path}.{layer}.{self.moe_attr}.{self.router_attr}"

    def experts_path(self, layer: int) -> str:
        return f"{self.layers_path}.{layer}.{self.moe_attr}.{self.experts_attr}"

    def check_moe_layer(self, layer: int) -> None:
        if layer not in self.moe_layers:
            kind = "a dense layer" if 0 <= layer < self.n_layers else "out of range"
            raise ValueError(f"layer {layer} is {kind}; MoE layers of this {self.family} model are "
                             f"{self.moe_layers}")

    def check_expert(self, layer: int, expert: int) -> None:
        self.check_moe_layer(layer)
        if not 0 <= int(expert) < self.n_experts:
            raise ValueError(f"expert id {expert} out of range for layer {layer}: this model has "
                             f"{self.n_experts} routed experts (ids 0..{self.n_experts - 1})")

    def to_dict(self) -> dict:
        return asdict(self)


def get_path(root: nn.Module, path: str) -> nn.Module:
    """``get_path(model, "model.layers")`` → the submodule at that dotted path."""
    mod = root
    for part in path.split("."):
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
    return mod
