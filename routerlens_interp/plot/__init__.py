"""Plotly figures for routing statistics and the mechanistic analysis (CAG, AAG, APG, masking, knockout).

Every function returns a ``plotly.graph_objects.Figure``. Inputs are plain numbers/arrays (numpy or
torch) or duck-typed result objects (see each docstring for the attributes read). Export many
figures at once (HTML + PNG through one browser session) with :func:`save_figures`.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .bars import knockout_bars, masking_bars  # noqa: F401
from .export import (FONT_FAMILY, _esc, clean_token, jaccard_matrix, png_unavailable, resolve_png, save_figures,  # noqa: F401
                          text_width, token_attention_diff)
from .style import (_METRIC_NAMES, _TOP_LEGEND, COLORS, DIV_SCALE, SEQ_SCALE, SEQUENCE,  # noqa: F401
                         _np, _style)

__all__ = ["COLORS", "expert_heatmap", "expert_diff_heatmap", "attention_gain", "answer_probability_gain",
           "masking_bars", "knockout_bars", "token_attention_diff", "overlap_matrix", "jaccard_matrix",
           "routing_heatmap", "logit_lens", "training_curves", "scatter_gain_vs_em", "save_figures", "clean_token"]


def _sem(per_example: Any, n_cols: int) -> np.ndarray | None:
    """Standard error of the mean over examples (rows), ignoring nan; None if not available."""
    if per_example is None:
        return None
    a = _np(per_example)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] != n_cols:
        return None
    n = np.sum(~np.isnan(a), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan columns (e.g. no answer in context)
        sd = np.nanstd(a, axis=0, ddof=1) if a.shape[0] > 1 else np.zeros(n_cols)
        sem = sd / np.sqrt(np.maximum(n, 1))
    return np.where((n > 1) & np.isfinite(sem), sem, 0.0)


def _err(sem: np.ndarray | None, color: str) -> dict | None:
    if sem is None:
        return None
    return dict(type="data", array=sem, visible=True, color=color, thickness=1.2, width=3)


def _span(trace: Any) -> tuple[float, float]:
    """Data range of a trace including its error bars, always containing 0."""
    y = np.asarray(trace.y, dtype=float)
    e = np.asarray(trace.error_y.array, dtype=float) if trace.error_y and trace.error_y.array is not None else 0 * y
    vals = np.concatenate([y - e, y + e, [0.0]])
    vals = vals[np.isfinite(vals)]
    return float(vals.min()), float(vals.max())


def _zero_aligned_ranges(spans: list[tuple[float, float]], pad: float = 0.08) -> list[tuple[float, float]]:
    """Axis ranges that put 0 at the same height on every axis (twin axes)."""
    out = []
    for lo, hi in spans:
        w = (hi - lo) or 1.0
        out.append((lo - pad * w if lo < 0 else -pad * w, hi + pad * w if hi > 0 else pad * w))
    fi = [-lo / (hi - lo) for lo, hi in out]  # share of each axis below 0 (in (0, 1) thanks to the padding)

    def used(f: float) -> float:  # the smallest share of its axis that any curve keeps when 0 sits at f
        return min((1 - f) / (1 - g) if f >= g else f / g for g in fi)

    f = max(np.linspace(min(fi), max(fi), 201), key=used)
    return [(-f * hi / (1 - f), hi) if f >= g else (lo, -lo * (1 - f) / f) for (lo, hi), g in zip(out, fi)]


# ----------------------------------------------------------------------------------------- experts
def _frequencies(counts: Any, normalize: bool) -> np.ndarray:
    z = _np(counts.counts)
    return z / max(int(counts.n_tokens), 1) if normalize else z


def _outline(fig: go.Figure, layers: list[int], experts: Mapping | None) -> None:
    """Outline the cells (layer, expert) of ``experts`` (mapping decoder layer -> expert ids)."""
    if experts is None:
        return
    unknown = [lay for lay, _ in experts.items() if lay not in layers]
    if unknown:
        raise ValueError(f"experts name layers {sorted(unknown)} that the counts do not have; "
                         f"counted layers: {layers}")
    for lay, ids in experts.items():
        row = layers.index(lay)
        for e in ids:
            fig.add_shape(type="rect", x0=int(e) - 0.5, x1=int(e) + 0.5, y0=row - 0.5, y1=row + 0.5,
                          line=dict(color=COLORS["outline"], width=2), fillcolor="rgba(0,0,0,0)",
                          name=f"L{lay}-E{int(e)}", layer="above")


def _layer_expert_heatmap(z: np.ndarray, layers: list[int], title: str, cbar: str, hover_label: str,
                          **heat: Any) -> go.Figure:
    n_layers, n_exp = z.shape
    custom = np.broadcast_to(np.asarray(layers)[:, None], z.shape)
    fig = go.Figure(go.Heatmap(z=z, x=np.arange(n_exp), y=np.arange(n_layers), customdata=custom,
                               colorbar=dict(title=dict(text=cbar, side="right")), xgap=1, ygap=1,
                               hovertemplate=f"layer %{{customdata}}<br>expert %{{x}}<br>{hover_label}"
                                             f" %{{z:.4g}}<extra></extra>", **heat))
    step = max(1, math.ceil(n_layers / 24))
    fig.update_yaxes(title="decoder layer", tickmode="array", tickvals=list(range(0, n_layers, step)),
                     ticktext=[str(layers[i]) for i in range(0, n_layers, step)], autorange="reversed",
                     showgrid=False, zeroline=False)
    fig.update_xaxes(title="expert", showgrid=False, zeroline=False, dtick=max(1, math.ceil(n_exp / 32)))
    width = int(min(1600, max(600, 180 + 16 * n_exp)))
    height = int(min(1400, max(350, 150 + 24 * n_layers)))
    return _style(fig, title, width=width, height=height)


def expert_heatmap(counts: Any, experts: Mapping | None = None, normalize: bool = True,
                   title: str | None = None) -> go.Figure:
    """Selection frequency per (layer, expert); ``experts`` (layer -> ids, e.g. an ExpertSet) outlined.

    ``counts`` needs ``.counts`` ``[n_moe_layers, n_experts]``, ``.layers`` and ``.n_tokens``.
    With ``normalize`` the value is the share of tokens whose top-k contains the expert.
    """
    layers = [int(x) for x in counts.layers]
    z = _frequencies(counts, normalize)
    label = "share of tokens" if normalize else "tokens"
    default = f"Expert selection {'frequency' if normalize else 'counts'} ({int(counts.n_tokens)} tokens)"
    fig = _layer_expert_heatmap(z, layers, title or default, label, label, colorscale=SEQ_SCALE, zmin=0)
    _outline(fig, layers, experts)
    return fig


def expert_diff_heatmap(tuned_counts: Any, base_counts: Any, experts: Mapping | None = None,
                        title: str | None = None) -> go.Figure:
    """Tuned minus base selection frequency per (layer, expert), diverging scale centred at 0."""
    layers = [int(x) for x in tuned_counts.layers]
    if layers != [int(x) for x in base_counts.layers] or tuple(tuned_counts.counts.shape) != tuple(
            base_counts.counts.shape):
        raise ValueError("tuned and base counts come from different models (layers or experts differ)")
    z = _frequencies(tuned_counts, True) - _frequencies(base_counts, True)
    m = float(np.nanmax(np.abs(z))) if z.size else 0.0
    fig = _layer_expert_heatmap(z, layers, title or "Change in expert selection frequency (tuned − base)",
                                "Δ share", "Δ share", colorscale=DIV_SCALE, zmid=0,
                                zmin=-m or -1, zmax=m or 1)
    _outline(fig, layers, experts)
    return fig


def overlap_matrix(sets: Mapping[str, Mapping], title: str | None = None) -> go.Figure:
    """Jaccard overlap of expert sets over (layer, expert) pairs, as an annotated heatmap."""
    names = list(sets)
    m = jaccard_matrix(sets)
    fig = go.Figure(go.Heatmap(z=m, x=names, y=names, colorscale="Blues", zmin=0, zmax=1,
                               texttemplate="%{z:.2f}", textfont=dict(size=13), xgap=2, ygap=2,
                               colorbar=dict(title=dict(text="Jaccard", side="right")),
                               hovertemplate="%{y} vs %{x}<br>Jaccard %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", side="bottom")
    size = int(min(1100, max(420, 220 + 90 * len(names))))
    return _style(fig, title or "Overlap of expert sets (Jaccard over (layer, expert) pairs)",
                  width=size + 80, height=size)


def routing_heatmap(tokens: Sequence[str], indices: Any, layers: Sequence[int], weights: Any = None,
                    n_experts: int | None = None, title: str | None = None) -> go.Figure:
    """Top-1 expert per (token, layer) for one example, coloured by expert id.

    ``indices`` ``[n_layers, T, k]`` top-k expert ids; ``weights`` (same shape, optional) routing
    weights. Top-1 is the id with the largest weight (or the first id when no weights are given).
    """
    idx = _np(indices).astype(int)
    if idx.ndim == 2:
        idx = idx[..., None]
    n_layers, T, k = idx.shape
    if len(tokens) != T or len(layers) != n_layers:
        raise ValueError(f"indices {idx.shape} do not match {len(layers)} layers × {len(tokens)} tokens")
    w = _np(weights) if weights is not None else None
    if w is not None:
        w = w.reshape(idx.shape)
        order = np.argsort(-w, axis=-1, kind="stable")
        idx, w = np.take_along_axis(idx, order, -1), np.take_along_axis(w, order, -1)
    n_exp = int(n_experts or idx.max() + 1)
    palette = (qualitative.Dark24 + qualitative.Alphabet + qualitative.Light24)
    colors = [palette[i % len(palette)] for i in range(n_exp)]
    scale = []
    for i, c in enumerate(colors):  # stepped scale: one flat band per expert id
        scale += [[i / n_exp, c], [(i + 1) / n_exp, c]]
    shown = [_esc(clean_token(t).replace("\n", "↵").strip() or "␣") for t in tokens]
    hover = np.empty((n_layers, T), dtype=object)
    for li in range(n_layers):
        for t in range(T):
            ids = ", ".join(f"E{idx[li, t, j]}" + (f" ({w[li, t, j]:.3f})" if w is not None else "")
                            for j in range(k))
            hover[li, t] = f"token {t} {shown[t]!r}<br>layer {layers[li]}<br>top-{k}: {ids}"
    fig = go.Figure(go.Heatmap(z=idx[:, :, 0], x=np.arange(T), y=np.arange(n_layers), zmin=-0.5,
                               zmax=n_exp - 0.5, colorscale=scale, text=hover, xgap=1, ygap=1,
                               hovertemplate="%{text}<extra></extra>",
                               colorbar=dict(title=dict(text="top-1 expert", side="right"),
                                             tickmode="array", tickvals=list(range(0, n_exp, max(1, n_exp // 16))))))
    step = max(1, math.ceil(T / 100))
    fig.update_xaxes(tickmode="array", tickvals=list(range(0, T, step)), ticktext=shown[::step],
                     tickangle=-60, tickfont=dict(size=11), showgrid=False, title="token")
    lstep = max(1, math.ceil(n_layers / 24))
    fig.update_yaxes(tickmode="array", tickvals=list(range(0, n_layers, lstep)),
                     ticktext=[str(layers[i]) for i in range(0, n_layers, lstep)], autorange="reversed",
                     showgrid=False, title="decoder layer")
    return _style(fig, title or "Top-1 expert per token and layer", width=int(min(1800, max(600, 200 + 14 * T))),
                  height=int(min(1400, max(380, 220 + 22 * n_layers))))


# ---------------------------------------------------------------------------------- layer curves
def attention_gain(g: Any, relative: bool = True, title: str | None = None) -> go.Figure:
    """CAG (context) and AAG (answer) per layer on twin y-axes, with standard-error bars.

    ``g`` needs ``.layers``, ``.cag``, ``.aag`` (relative), ``.cag_abs``, ``.aag_abs`` and optionally
    ``.cag_per_example`` ``[N, L]`` / ``.aag_per_example`` ``[M, L]`` for the error bars.
    """
    layers = [int(x) for x in g.layers]
    L = len(layers)
    suffix = "" if relative else "_abs"
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for key, name, sec in (("cag", "Context (CAG)", False), ("aag", "Answer (AAG)", True)):
        y = _np(getattr(g, key + suffix))
        sem = _sem(getattr(g, f"{key}{suffix}_per_example", None), L)
        c = COLORS["context" if key == "cag" else "answer"]
        fig.add_trace(go.Scatter(x=layers, y=y, name=name, mode="lines+markers", error_y=_err(sem, c),
                                 line=dict(color=c, width=2.5), marker=dict(size=8, color=c),
                                 hovertemplate=f"layer %{{x}}<br>{key.upper()} %{{y:.4g}}<extra></extra>"),
                      secondary_y=sec)
    (lo1, hi1), (lo2, hi2) = _zero_aligned_ranges([_span(t) for t in fig.data])
    kind = "relative gain" if relative else "attention difference"
    fig.update_yaxes(title=dict(text=f"CAG ({kind})", font=dict(color=COLORS["context"])),
                     tickfont=dict(color=COLORS["context"]), zeroline=True, zerolinecolor="#bbb",
                     range=[lo1, hi1], secondary_y=False)
    fig.update_yaxes(title=dict(text=f"AAG ({kind})", font=dict(color=COLORS["answer"])),
                     tickfont=dict(color=COLORS["answer"]), showgrid=False, zeroline=False,
                     tickmode="auto", range=[lo2, hi2], secondary_y=True)
    fig.update_xaxes(title="layer", dtick=max(1, math.ceil(L / 20)))
    default = ("Attention gain of the last prompt position (tuned vs base)" if relative
               else "Attention difference of the last prompt position (tuned − base)")
    return _style(fig, title or default, legend=_TOP_LEGEND)


def answer_probability_gain(p: Any, title: str | None = None) -> go.Figure:
    """APG per layer (bars, standard-error bars) and base/tuned answer probabilities (lines, right axis).

    ``p`` needs ``.layers``, ``.apg`` ``[L]``, ``.per_example`` ``[N, L]``, ``.base`` and ``.tuned`` ``[L]``.
    """
    layers = [int(x) for x in p.layers]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    sem = _sem(getattr(p, "per_example", None), len(layers))
    fig.add_trace(go.Bar(x=layers, y=_np(p.apg), name="APG (tuned − base)", marker_color=COLORS["apg"],
                         opacity=0.85, error_y=_err(sem, "#444"),
                         hovertemplate="layer %{x}<br>APG %{y:.4f}<extra></extra>"), secondary_y=False)
    for key in ("base", "tuned"):
        fig.add_trace(go.Scatter(x=layers, y=_np(getattr(p, key)), name=f"p(answer), {key}",
                                 mode="lines+markers", line=dict(color=COLORS[key], width=2,
                                                                 dash="dot" if key == "base" else "solid"),
                                 marker=dict(size=6, color=COLORS[key]),
                                 hovertemplate=f"layer %{{x}}<br>{key} p %{{y:.4f}}<extra></extra>"),
                      secondary_y=True)
    (lo1, hi1), (lo2, hi2) = _zero_aligned_ranges([_span(fig.data[0]), (0.0, 1.0)], pad=0.04)
    fig.update_yaxes(title=dict(text="APG", font=dict(color=COLORS["apg"])), tickfont=dict(color=COLORS["apg"]),
                     zeroline=True, zerolinecolor="#bbb", range=[lo1, hi1], secondary_y=False)
    # the range may reach below 0 (0 aligned with the APG axis): a probability axis only labels [0, 1]
    fig.update_yaxes(title="p(first answer token)", range=[lo2, hi2], showgrid=False, zeroline=False,
                     tickmode="array", tickvals=[0, 0.25, 0.5, 0.75, 1.0], secondary_y=True)
    fig.update_xaxes(title="layer", dtick=max(1, math.ceil(len(layers) / 20)))
    return _style(fig, title or "Answer probability gain by layer (logit lens)",
                  legend=_TOP_LEGEND, bargap=0.25)


def logit_lens(layers: Sequence[int], probs: Any, token: str | None = None,
               title: str | None = None) -> go.Figure:
    """Probability of the target token per layer; ``probs`` ``[L]`` or a dict name -> ``[L]`` (one line each)."""
    series = dict(probs) if isinstance(probs, Mapping) else {"model": probs}
    fig = go.Figure()
    for i, (name, y) in enumerate(series.items()):
        c = COLORS["base"] if "base" in str(name).lower() else SEQUENCE[i % len(SEQUENCE)]
        fig.add_trace(go.Scatter(x=list(layers), y=_np(y), name=str(name), mode="lines+markers",
                                 line=dict(color=c, width=2.5), marker=dict(size=7, color=c),
                                 hovertemplate=f"{name}<br>layer %{{x}}<br>p %{{y:.4f}}<extra></extra>"))
    fig.update_yaxes(title="probability" + (f" of {clean_token(token).strip()!r}" if token else ""),
                     range=[-0.02, 1.02])
    fig.update_xaxes(title="layer", dtick=max(1, math.ceil(len(layers) / 20)))
    what = f"p({clean_token(token).strip()!r})" if token else "Target-token probability"
    return _style(fig, title or f"{what} by layer (logit lens)", showlegend=len(series) > 1)


# ------------------------------------------------------------------------------------ summaries
_NOT_METRICS = {"step", "loss", "dev_loss", "epoch", "lr", "learning_rate", "grad_norm", "time", "tokens"}


def training_curves(log: Sequence[Mapping[str, Any]], title: str | None = None) -> go.Figure:
    """Loss (train, dev) and evaluation metrics vs step; entries without a key are skipped for it."""
    def series(key: str) -> tuple[list, list]:
        pts = [(e["step"], float(e[key])) for e in log if e.get(key) is not None and "step" in e]
        return [s for s, _ in pts], [v for _, v in pts]

    metrics = []
    for e in log:
        for k, v in e.items():
            if k not in _NOT_METRICS and k not in metrics and isinstance(v, (int, float)) and not isinstance(v, bool):
                metrics.append(k)
    cols = 2 if metrics else 1
    fig = make_subplots(rows=1, cols=cols, subplot_titles=["loss", "metrics"][:cols], horizontal_spacing=0.1)
    for key, name in (("loss", "train loss"), ("dev_loss", "dev loss")):
        x, y = series(key)
        if x:
            fig.add_trace(go.Scatter(x=x, y=y, name=name, mode="lines" if key == "loss" else "lines+markers",
                                     line=dict(color=COLORS[key], width=2), legendgroup="loss",
                                     hovertemplate=f"step %{{x}}<br>{name} %{{y:.4f}}<extra></extra>"), 1, 1)
    for i, key in enumerate(metrics):
        x, y = series(key)
        c = COLORS.get(key, SEQUENCE[(i + 2) % len(SEQUENCE)])
        fig.add_trace(go.Scatter(x=x, y=y, name=_METRIC_NAMES.get(key, key), mode="lines+markers",
                                 line=dict(color=c, width=2), marker=dict(size=6), legendgroup="metrics",
                                 hovertemplate=f"step %{{x}}<br>{key} %{{y:.4g}}<extra></extra>"), 1, 2)
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="loss", row=1, col=1)
    if metrics:
        fig.update_yaxes(title="score", row=1, col=2)
    return _style(fig, title or "Training", width=1100 if metrics else 700, height=430)


_LABEL_SPOTS = ["top center", "bottom center", "middle right", "middle left", "top right", "top left",
                "bottom right", "bottom left"]


def _label_positions(xs: np.ndarray, ys: np.ndarray, labels: list[str], xr: tuple, yr: tuple, size: tuple,
                     font: float = 14, marker: float = 10, extra: tuple = (np.array([]), np.array([]))) -> list[str]:
    """A ``textposition`` per point so that no label box overlaps another label or a marker (greedy,
    highest point first; the least-overlapping spot when none is free). ``size``: plot area in px;
    ``extra``: (x, y) of other things not to cover (points along a fitted line)."""
    (w, h), placed = size, []
    to_px = lambda x, y: ((np.asarray(x) - xr[0]) / (xr[1] - xr[0]) * w, (yr[1] - np.asarray(y)) / (yr[1] - yr[0]) * h)
    px, py = to_px(xs, ys)
    ex, ey = to_px(*extra)
    dots = [(x - marker / 2, y - marker / 2, x + marker / 2, y + marker / 2) for x, y in zip(px, py)]
    line = [(x - 2, y - 2, x + 2, y + 2) for x, y in zip(ex, ey)]
    out = ["top center"] * len(labels)

    def box(i: int, spot: str) -> tuple:
        tw, th, g = text_width(labels[i], font), font * 1.25, marker / 2 + 2
        v, hz = spot.split()
        x0 = {"center": px[i] - tw / 2, "right": px[i] + g, "left": px[i] - g - tw}[hz]
        y0 = {"top": py[i] - g - th, "bottom": py[i] + g, "middle": py[i] - th / 2}[v]
        return x0, y0, x0 + tw, y0 + th

    def clash(b: tuple, others: list[tuple]) -> float:
        inside = max(0.0, -b[0]) + max(0.0, b[2] - w) + max(0.0, -b[1]) + max(0.0, b[3] - h)
        return inside + sum(max(0.0, min(b[2], o[2]) - max(b[0], o[0])) * max(0.0, min(b[3], o[3]) - max(b[1], o[1]))
                            for o in others)

    for i in sorted(range(len(labels)), key=lambda i: py[i]):
        others = placed + line + [d for j, d in enumerate(dots) if j != i]
        spot = min(_LABEL_SPOTS, key=lambda sp: (clash(box(i, sp), others), _LABEL_SPOTS.index(sp)))
        out[i] = spot
        placed.append(box(i, spot))
    return out


def scatter_gain_vs_em(points: Sequence[Mapping[str, Any]], x: str = "attention_gain", y: str = "em_gain",
                       label: str = "label", title: str | None = None) -> go.Figure:
    """Scatter of ``y`` against ``x`` over ``points``, least-squares line, Pearson r in the title.
    Point labels are placed so that they do not overlap (close points get labels on different sides)."""
    xs = np.array([float(p[x]) for p in points])
    ys = np.array([float(p[y]) for p in points])
    labels = [str(p.get(label, p.get("name", i))) for i, p in enumerate(points)]
    named = any(label in p or "name" in p for p in points)
    r = float(np.corrcoef(xs, ys)[0, 1]) if len(xs) > 1 else float("nan")
    width, height = 700, 500  # plot area 590 × 370 px inside _style's margins
    pad = lambda v, f: (float(v.min() - f * (np.ptp(v) or 1.0)), float(v.max() + f * (np.ptp(v) or 1.0)))
    xr, yr = pad(xs, 0.22), pad(ys, 0.12)  # room for the labels of the outermost points
    fit = np.polyfit(xs, ys, 1) if len(xs) > 1 and np.ptp(xs) > 0 else None
    line = np.linspace(xs.min(), xs.max(), 24) if fit is not None else np.array([])  # the fit line: not under a label
    spots = _label_positions(xs, ys, labels, xr, yr, (width - 110, height - 130),
                             extra=(line, np.polyval(fit, line) if fit is not None else line)) if len(xs) else []
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="markers+text" if named and len(xs) <= 20 else "markers", text=labels,
                               textposition=spots, name="points",
                               marker=dict(size=10, color=COLORS["context"], line=dict(color="white", width=1)),
                               hovertemplate=f"%{{text}}<br>{x} %{{x:.4g}}<br>{y} %{{y:.4g}}<extra></extra>"))
    if fit is not None:
        slope, icpt = fit
        gx = np.array([xs.min(), xs.max()])
        fig.add_trace(go.Scatter(x=gx, y=slope * gx + icpt, mode="lines", name="least squares",
                                 line=dict(color=COLORS["fit"], dash="dash"), hoverinfo="skip"))
    fig.update_xaxes(title=x.replace("_", " "), range=list(xr) if len(xs) else None)
    fig.update_yaxes(title=y.replace("_", " "), range=list(yr) if len(xs) else None)
    head = title or f"{y.replace('_', ' ')} vs {x.replace('_', ' ')}"
    return _style(fig, f"{head} (Pearson r = {r:.3f}, n = {len(xs)})", width=width, height=height, showlegend=False)
