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
        n_experts: routed experts per MoE layer (the router's width; with ``identity_experts`` included).
        top_k: experts per token.
        routing: name of the family's routing rule (DESIGN §7; documentation only: ``reroute`` runs the
            family's own router code, see :mod:`routerlens_interp.hooks`).
        layers_path: path of the decoder-layer ``ModuleList``.
        moe_attr: path of the MoE block inside a decoder layer (``"mlp"``, ``"block_sparse_moe"``).
        router_attr / experts_attr: paths inside the MoE block.
        attn_attr: self-attention module inside a decoder layer.
        final_norm_path / unembed_path: final norm and unembedding (logit lens); ``final_norm_path`` is ``""``
            when the family has none of its own (Qwen4-Exp: its stream mixer normalises).
        final_mix: ``(kind, path)`` of the module the base model applies to the last layer's streams before its
            final norm (``"streams"``: hyper-connections, ``"blocks"``: block attention residuals; see
            :mod:`routerlens_interp.arch.final_step`), or None when the last layer's output goes to the norm.
        shared_experts_attr: shared (never routed) experts inside the MoE block, if any.
        router_shared_rows: ``S`` when the router's linear also scores the shared experts (Inkling: weight
            ``[E+S, H]``, rows ``E..E+S-1`` for the shared experts, whose weights the family normalises together
            with the chosen routed experts'); 0 otherwise. Only the routed part ``[T, E]`` is read or edited:
            the shared experts' logits are left as the model computed them, and ids ``>= E`` are not maskable.
        routing_params: constants read off the router (scaling factor, groups, ...), for reference.
        hidden_size: ``H``, the width of the residual stream (the router's linear is ``[E, H]``).
        routing_scope: path, inside a decoder layer, of the module whose forward decides the top-k (the
            router when it returns weights and indices, else the MoE block or the layer itself).
        experts_io: ``"fused"`` (the experts module takes ``hidden, indices [T,k], weights [T,k]``) or
            ``"dense_scores"`` (Llama 4: the router returns ``[T, E]`` scores that scale the experts' inputs).
        experts_kind: ``"fused"`` (one module of stacked ``[E, ., .]`` projections, transformers 5) or
            ``"module_list"`` (an ``nn.ModuleList`` of per-expert MLPs with 2-D linears: remote code such as
            MiniCPM-MoE or DeepSeek-V2 with ``trust_remote_code``; see :mod:`routerlens_interp.hooks.experts_list`).
        experts_layout: ``"stacked"`` (tensor ``[e]`` is expert ``e``) or ``"flat"`` (DBRX: 2-D ``[E·I, H]``
            matrices in ``experts.<expert_weights_attr>``, expert ``e`` = ``w.view(E, I, H)[e]``); see
            :mod:`routerlens_interp.arch.layouts`.
        expert_weights_attr: the child of the experts module that holds the flat matrices (``"mlp"``), else "".
        identity_experts: ``Z``, the zero-compute identity experts among the ``n_experts`` ids (LongCat-Flash):
            ids ``n_experts - Z .. n_experts - 1`` return their input times the routing weight and have no
            weights; counting, reroute and zero treat them as experts, CEFT refuses them.
        implementation: ``"transformers native"`` or ``"remote code: <module>"`` (the model class's module, as
            a ``trust_remote_code=True`` load picked it).
        attention_layers: decoder layers whose mixer is softmax attention returning its probabilities
            (hybrids also have linear-attention, Mamba or convolution layers: see ``mixers``).
        mixers: ``{layer: kind}`` for every layer that is not softmax attention.
        logit_scale: the model's own step from ``lm_head`` to its logits: ``("divide", s)``,
            ``("multiply", s)``, ``("softcap", c)`` or None.
        logit_scale_fp32: True when the family casts ``lm_head``'s output to float32 before that step
            (Inkling2: ``lm_head(h).float()`` then the soft-cap); found by the lens self-check.
        reroute_refused: ``{layer: reason}`` for MoE layers where ``reroute`` is refused (set by the
            self-check when a mask is first applied); layers not listed reroute exactly.
        lens: None when the logit lens is available, else the reason it is off.
        notes: what the loader had to do for this model (text model of a multimodal checkpoint...).
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
    final_mix: tuple | None = None
    shared_experts_attr: str | None = None
    router_shared_rows: int = 0
    routing_params: dict = field(default_factory=dict)
    hidden_size: int = 0
    routing_scope_attr: str = ""
    experts_io: str = "fused"
    experts_kind: str = "fused"
    experts_layout: str = "stacked"
    expert_weights_attr: str = ""
    identity_experts: int = 0
    implementation: str = "transformers native"
    attention_layers: list[int] | None = None
    mixers: dict = field(default_factory=dict)
    logit_scale: tuple | None = None
    logit_scale_fp32: bool = False
    reroute_refused: dict = field(default_factory=dict)
    lens: str | None = None
    notes: list = field(default_factory=list)

    def __post_init__(self):
        if self.attention_layers is None:
            self.attention_layers = [l for l in range(self.n_layers) if l not in self.mixers]
        if not self.routing_scope_attr:
            self.routing_scope_attr = f"{self.moe_attr}.{self.router_attr}" if self.moe_attr else self.router_attr

    # -- module access -------------------------------------------------------------------------
    def layers(self, model: nn.Module) -> nn.ModuleList:
        return get_path(model, self.layers_path)

    def moe_block(self, model: nn.Module, layer: int) -> nn.Module:
        self.check_moe_layer(layer)
        return get_path(self.layers(model)[layer], self.moe_attr) if self.moe_attr else self.layers(model)[layer]

    def router(self, model: nn.Module, layer: int) -> nn.Module:
        """The router of decoder layer ``layer``: returns ``(logits [T,E], weights [T,k], indices [T,k])``."""
        return get_path(self.moe_block(model, layer), self.router_attr)

    def experts(self, model: nn.Module, layer: int) -> nn.Module:
        """Fused experts (``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``), or for ``experts_kind ==
        "module_list"`` the ``nn.ModuleList`` of ``E`` per-expert MLPs."""
        return get_path(self.moe_block(model, layer), self.experts_attr)

    def attention(self, model: nn.Module, layer: int) -> nn.Module:
        """The softmax attention module of ``layer`` (ValueError for a linear-attention/Mamba/conv layer)."""
        if layer not in self.attention_layers:
            raise ValueError(f"layer {layer} of this {self.family} model has no softmax attention "
                             f"({self.mixer_kind(layer)}); attention layers: {self.attention_layers}")
        return get_path(self.layers(model)[layer], self.attn_attr)

    def attention_modules(self, model: nn.Module, layer: int) -> list[nn.Module]:
        """The attention module of ``layer``, or each of its attention sublayers in order where ``attn_attr`` is
        an ``nn.ModuleList`` (LongCat-Flash: ``self_attn[0]``, ``self_attn[1]``; the layer's pattern is then
        their heads side by side, and an attention mask edit applies to each)."""
        m = self.attention(model, layer)
        return list(m) if isinstance(m, nn.ModuleList) else [m]

    def mixer_kind(self, layer: int) -> str:
        """``"softmax attention"`` or what mixes tokens in ``layer`` instead."""
        return self.mixers.get(layer, "softmax attention")

    def routing_scope(self, model: nn.Module, layer: int) -> nn.Module:
        """The module whose forward computes the router logits and decides the top-k in ``layer``."""
        self.check_moe_layer(layer)
        return get_path(self.layers(model)[layer], self.routing_scope_attr)

    def final_norm(self, model: nn.Module) -> nn.Module | None:
        """The final norm, or None for a family without one (``final_norm_path == ""``)."""
        return get_path(model, self.final_norm_path) if self.final_norm_path else None

    def final_mixer(self, model: nn.Module) -> nn.Module | None:
        """The module mixing the last layer's streams before the final norm (``final_mix``), or None."""
        return get_path(model, self.final_mix[1]) if self.final_mix else None

    def unembed(self, model: nn.Module) -> nn.Module:
        return get_path(model, self.unembed_path)

    # -- paths as strings (for nnsight / TransformerLens / state-dict keys) --------------------
    def router_path(self, layer: int) -> str:
        return ".".join(p for p in (self.layers_path, str(layer), self.moe_attr, self.router_attr) if p)

    def experts_path(self, layer: int) -> str:
        return ".".join(p for p in (self.layers_path, str(layer), self.moe_attr, self.experts_attr) if p)

    def check_moe_layer(self, layer: int) -> None:
        if layer not in self.moe_layers:
            kind = "a dense layer" if 0 <= layer < self.n_layers else "out of range"
            raise ValueError(f"layer {layer} is {kind}; MoE layers of this {self.family} model are "
                             f"{self.moe_layers}")

    def check_expert(self, layer: int, expert: int) -> None:
        self.check_moe_layer(layer)
        if not 0 <= int(expert) < self.n_experts:
            shared = (f"; ids {self.n_experts}..{self.n_experts + self.router_shared_rows - 1} of its router are the "
                      f"{self.router_shared_rows} shared expert(s), which every token uses and which cannot be masked"
                      if self.router_shared_rows and self.n_experts <= int(expert) < self.n_experts + self.router_shared_rows
                      else "")
            raise ValueError(f"expert id {expert} out of range for layer {layer}: this model has "
                             f"{self.n_experts} routed experts (ids 0..{self.n_experts - 1}){shared}")

    def to_dict(self) -> dict:
        return asdict(self)


def get_path(root: nn.Module, path: str) -> nn.Module:
    """``get_path(model, "model.layers")`` → the submodule at that dotted path."""
    mod = root
    for part in filter(None, path.split(".")):
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
    return mod
