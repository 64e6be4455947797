"""The result of a trace: routing, attention mass on spans, and logit-lens probabilities."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..prompts import Encoded


@dataclass
class Routing:
    """Routing of one MoE layer, one entry per example (padding removed).

    Attributes:
        logits: list of ``[T_i, E]`` router logits (−inf at masked experts under a ``reroute`` mask).
        weights: list of ``[T_i, k]`` weights that reached the experts module.
        indices: list of ``[T_i, k]`` expert ids that reached the experts module.
    """

    logits: list[torch.Tensor] = field(default_factory=list)
    weights: list[torch.Tensor] = field(default_factory=list)
    indices: list[torch.Tensor] = field(default_factory=list)


@dataclass
class Trace:
    """What :func:`routerlens_interp.trace.trace` recorded.

    Attributes:
        encoded: the encoded examples (token ids and spans), ``N`` of them.
        layers: decoder-layer indices, ``L = n_layers``; ``moe_layers`` the routed ones.
        routing: ``{moe_layer: Routing}`` (empty when ``routing=False``).
        spans: names of the attention spans, ``S`` of them.
        attention: ``[N, L, H, S]`` attention mass from the query position onto each span (sum of the
            attention probabilities over the span's tokens), or None.
        query: ``[N]`` query position of each example (default: last prompt position).
        lens: ``[N, L]`` logit-lens probability of the target token at the query position after each
            layer (``softmax(unembed(final_norm(mix(h_l))))``, ``mix`` the family's own stream mixing where
            it carries several residual streams, :mod:`routerlens_interp.hooks.streams`), or None.
        lens_targets: ``[N]`` target token ids.
        attention_layers: the layers whose attention was recorded; the others (linear attention, Mamba,
            convolution layers of hybrid models) are NaN in ``attention``.
    """

    encoded: list[Encoded]
    layers: list[int]
    moe_layers: list[int]
    routing: dict[int, Routing]
    spans: tuple[str, ...]
    attention: torch.Tensor | None
    query: torch.Tensor
    lens: torch.Tensor | None
    lens_targets: torch.Tensor | None
    attention_layers: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.encoded)

    def attention_to(self, span: str, heads: str = "mean") -> torch.Tensor:
        """``[N, L]`` attention mass on ``span`` averaged over heads (``heads="all"`` → ``[N, L, H]``)."""
        if self.attention is None:
            raise ValueError("this trace recorded no attention; trace with attention=True")
        if span not in self.spans:
            raise KeyError(f"span {span!r} not traced; traced spans: {self.spans}")
        a = self.attention[..., self.spans.index(span)]
        # nanmean: layers with fewer heads pad with NaN; layers without attention stay NaN
        return a if heads == "all" else a.nanmean(dim=-1)

    def tokens(self, i: int, tokenizer) -> list[str]:
        """Token strings of example ``i``."""
        return tokenizer.convert_ids_to_tokens(self.encoded[i].input_ids.tolist())

    _NAME = re.compile(r"blocks\.(\d+)\.(mlp\.gate\.hook_out|mlp\.hook_expert_indices|mlp\.hook_expert_weights)$")

    def __getitem__(self, name: str):
        """TransformerLens-style names: ``blocks.L.mlp.gate.hook_out`` (router logits),
        ``blocks.L.mlp.hook_expert_indices`` / ``hook_expert_weights`` → list over examples."""
        m = self._NAME.match(name)
        if not m:
            raise KeyError(f"unknown name {name!r}; use blocks.L.mlp.gate.hook_out, blocks.L.mlp.hook_expert_indices "
                           f"or blocks.L.mlp.hook_expert_weights")
        r = self.routing[int(m.group(1))]
        return {"mlp.gate.hook_out": r.logits, "mlp.hook_expert_indices": r.indices,
                "mlp.hook_expert_weights": r.weights}[m.group(2)]
