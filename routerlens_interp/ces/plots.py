"""Figures of expert scores: a layer × expert heatmap, estimate vs exact, and a steering sweep."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from ..plot import _layer_expert_heatmap, _outline
from ..plot.style import COLORS, DIV_SCALE, _np, _style

_LABELS = {"attribution": "estimated drop when masked", "attribution_verified": "drop when masked (top verified)",
           "reap": "REAP: routing weight × output norm", "risk_difference": "activation rate difference", "effect_zero": "drop when masked (zero)",
           "effect_reroute": "drop when masked (reroute)", "contrast_last": "selection rate, open − closed book",
           "contrast_context": "selection rate, context − closed book"}


def scores_heatmap(scores: Any, experts: Mapping | None = None, title: str | None = None) -> go.Figure:
    """``scores.scores [L, E]`` on a diverging scale centred at 0; ``experts`` (an ExpertSet) outlined."""
    z = _np(scores.scores)
    layers = [int(x) for x in scores.layers]
    lim = float(np.nanmax(np.abs(z))) or 1.0
    label = _LABELS.get(scores.kind, scores.kind)
    what = f"{scores.n_examples} examples" if scores.metric == "selection_rate" else \
        f"{scores.metric}, {scores.n_examples} examples"
    fig = _layer_expert_heatmap(z, layers, title or f"{label} ({what})",
                                label, label, colorscale=DIV_SCALE, zmin=-lim, zmax=lim, zmid=0)
    _outline(fig, layers, experts)
    return fig


def estimate_vs_exact(estimate: Any, exact: Any, top: int | None = 50, title: str | None = None) -> go.Figure:
    """Scatter of attribution estimates against exact masking effects, one point per measured expert;
    the ``top`` largest estimates are highlighted. The diagonal is where the estimate is exact."""
    est, ex = _np(estimate.scores).reshape(-1), _np(exact.scores).reshape(-1)
    keep = _np(exact.measured).reshape(-1).astype(bool) if exact.measured is not None else np.ones_like(ex, bool)
    E = estimate.n_experts
    names = np.array([f"layer {estimate.layers[i // E]}, expert {i % E}" for i in range(len(est))])
    fig = go.Figure()
    order = np.argsort(-est)
    hi = np.zeros_like(keep)
    if top:
        hi[order[:top]] = True
    for mask, name, color in ((keep & ~hi, "other experts", COLORS["base"]),
                              (keep & hi, f"top {top} estimates", COLORS["answer"])):
        fig.add_trace(go.Scatter(x=est[mask], y=ex[mask], mode="markers", name=name, text=names[mask],
                                 marker=dict(color=color, size=6, opacity=0.7),
                                 hovertemplate="%{text}<br>estimate %{x:.4f}<br>exact %{y:.4f}<extra></extra>"))
    lo, up = float(min(est[keep].min(), ex[keep].min())), float(max(est[keep].max(), ex[keep].max()))
    fig.add_trace(go.Scatter(x=[lo, up], y=[lo, up], mode="lines", name="estimate = exact",
                             line=dict(color=COLORS["fit"], dash="dot")))
    fig.update_xaxes(title="attribution estimate (drop of the metric)")
    fig.update_yaxes(title="exact drop, zero-mode masking")
    return _style(fig, title or "Attribution vs exact single-expert masking", width=700, height=520)


def steering_curve(rows: Sequence[Mapping], title: str | None = None, reference: float | None = None,
                   x: str = "beta", x_title: str = "β added to the boosted experts' router logits") -> go.Figure:
    """Conflict EM, memory rate, open-book EM and recall against β (rows of :func:`steer`; ``x="scale"`` for
    route-vector rows); ``reference`` draws a horizontal line (e.g. the router-tuned model's conflict EM)."""
    betas = [r[x] for r in rows]
    fig = go.Figure()
    for key, name, color in (("em", "conflict EM", COLORS["em"]), ("memory_rate", "memory rate", COLORS["base"]),
                             ("open_em", "open-book EM", COLORS["open_em"]), ("recall", "closed-book recall",
                                                                              COLORS["recall"])):
        ys = [r.get(key) for r in rows]
        if all(y is None for y in ys):
            continue
        fig.add_trace(go.Scatter(x=betas, y=ys, mode="lines+markers", name=name, line=dict(color=color)))
    if reference is not None:
        fig.add_hline(y=reference, line=dict(color=COLORS["tuned"], dash="dash"),
                      annotation_text="router-tuned conflict EM", annotation_position="top left")
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title="%", range=[-2, 102])
    return _style(fig, title or "Steering the base model", width=760, height=460)
