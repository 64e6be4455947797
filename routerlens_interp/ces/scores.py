"""A score per (MoE layer, expert): the result type of attribution, exact masking effects and routing contrast.

:class:`ExpertScores` has the shape of :class:`~routerlens_interp.analysis.counting.ExpertCounts` (a ``[L, E]``
tensor plus the decoder-layer id of each row), so ``select_experts``, the heatmaps and the live board
take it as they take counts. Files are safetensors (the tensor) with the rest as JSON in the header:
nothing is unpickled.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError

_FORMAT = "routerlens.expert_scores.v1"


@dataclass
class ExpertScores:
    """Scores ``[n_moe_layers, n_experts]`` (float64) for every routed expert.

    Attributes:
        scores: ``[L, E]``; what a row means is in ``kind`` / ``metric``. For attribution and exact
            effects it is the *drop* of the metric when the expert is masked (base − masked), so a
            positive score is an expert the metric relies on, and the top scores are the candidate CEs.
        layers: decoder-layer index of each row (``spec.moe_layers`` order).
        kind: ``"attribution"``, ``"attribution_verified"``, ``"effect_zero"``, ``"effect_reroute"``,
            ``"contrast_last"``, ``"contrast_context"``, ``"risk_difference"``, ``"reap"``.
        metric: ``"faithfulness"``, ``"answer"`` or ``"selection_rate"``.
        n_examples: examples the scores were measured on.
        top_k: experts per token of the model.
        base: the metric without any intervention (mean over examples), where it applies.
        measured: bool ``[L, E]``, False where an expert was not measured (``expert_effects(experts=…)``).
        meta: anything else (seed, seconds, data name ...), JSON-serialisable.
    """

    scores: torch.Tensor
    layers: list[int]
    kind: str
    metric: str
    n_examples: int
    top_k: int
    base: float | None = None
    measured: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    # ExpertCounts look-alike, so select_experts(scores, n) ranks by score and the plots draw it.
    @property
    def counts(self) -> torch.Tensor:
        """The scores (the name ``select_experts`` and the heatmaps read from an ``ExpertCounts``)."""
        return self.scores

    @property
    def n_tokens(self) -> int:
        return self.n_examples

    @property
    def n_experts(self) -> int:
        return int(self.scores.shape[1])

    def row(self, layer: int) -> torch.Tensor:
        """Scores ``[n_experts]`` of decoder layer ``layer``."""
        if layer not in self.layers:
            raise KeyError(f"layer {layer} is not an MoE layer here; MoE layers: {self.layers}")
        return self.scores[self.layers.index(layer)]

    def top(self, n: int = 10) -> list[tuple[int, int, float]]:
        """The ``n`` highest ``(layer, expert, score)`` over all measured experts, best first."""
        flat = self.scores.clone().double()
        if self.measured is not None:
            flat[~self.measured] = float("-inf")
        vals, idx = flat.reshape(-1).topk(min(n, flat.numel()))
        E = self.n_experts
        return [(self.layers[i // E], i % E, float(v)) for v, i in zip(vals.tolist(), idx.tolist())
                if v != float("-inf")]

    def plot(self, experts=None, title: str | None = None):
        """Heatmap of the scores (diverging, 0 = white), ``experts`` (an ExpertSet) outlined."""
        from .plots import scores_heatmap

        return scores_heatmap(self, experts, title)

    # ---------------------------------------------------------------------------------------- files
    def save(self, path: str | Path) -> None:
        """Write a ``.safetensors`` file (:mod:`~routerlens_interp.safe_state`: the tensors, the rest as JSON
        in its header; written atomically; nothing in it can run code when loaded)."""
        from .. import safe_state

        safe_state.save(path, {"scores": self.scores.double().contiguous(), "layers": list(self.layers),
                               "measured": None if self.measured is None else self.measured.to(torch.uint8),
                               "kind": self.kind, "metric": self.metric, "n_examples": int(self.n_examples),
                               "top_k": int(self.top_k), "base": self.base, "meta": self.meta}, _FORMAT)

    @classmethod
    def load(cls, path: str | Path) -> "ExpertScores":
        """Read a file written by :meth:`save`; anything else is refused with the reason."""
        from .. import safe_state

        p = Path(path)
        if not p.exists():
            raise UserError(f"no expert-scores file at {p}; write one with `routerlens attribute --out FILE`")
        d = safe_state.load(p, _FORMAT, "write expert scores with `routerlens attribute --out FILE`")
        s = d.get("scores") if isinstance(d, dict) else None
        if not isinstance(s, torch.Tensor) or s.dim() != 2 or s.shape[0] != len(d.get("layers") or []):
            raise UserError(f"{p}: its scores do not match its layers; write it again with `routerlens attribute`")
        m = d.get("measured")
        return cls(s, [int(x) for x in d["layers"]], d["kind"], d["metric"], int(d["n_examples"]),
                   int(d["top_k"]), d.get("base"), None if m is None else m.bool(), d.get("meta") or {})


def rank(x: torch.Tensor) -> torch.Tensor:
    """Ranks ``[n]`` (1 = smallest) with ties sharing their mean rank, as Spearman's ρ needs."""
    x = x.double().reshape(-1)
    order = x.argsort()
    r = torch.empty_like(x)
    r[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    uniq, inv = torch.unique(x, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, r)
    cnt = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, torch.ones_like(r))
    return (sums / cnt)[inv]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two equally long tensors (NaN when either is constant)."""
    ra, rb = rank(a), rank(b)
    if len(ra) != len(rb):
        raise ValueError(f"spearman: {len(ra)} vs {len(rb)} values")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float((ra.square().sum() * rb.square().sum()).sqrt())
    return float((ra * rb).sum()) / den if den > 0 else float("nan")
