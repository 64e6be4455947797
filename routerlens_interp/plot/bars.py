"""Bar charts behind :mod:`routerlens_interp.plot`: expert masking and attention knockout."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go

from .style import _METRIC_NAMES, _TOP_LEGEND, COLORS, SEQUENCE, _style


def masking_bars(rows: Mapping[str, Mapping[str, float]], title: str | None = None) -> go.Figure:
    """Grouped bars of EM and F1 (and recall / open-book EM where given) per condition, in order.

    ``rows``: condition -> {"em", "f1", optional "recall", "open_em", and "<metric>_ci95" half-widths}.
    """
    names = list(rows)
    fig = go.Figure()
    for m, label in _METRIC_NAMES.items():
        if not any(m in r and r[m] is not None for r in rows.values()):
            continue
        y = [rows[n].get(m, np.nan) for n in names]
        y = [np.nan if v is None else float(v) for v in y]
        ci = [rows[n].get(f"{m}_ci95") for n in names]
        err = (dict(type="data", array=[0.0 if c is None else float(c) for c in ci], visible=True,
                    color="#333", thickness=1.2, width=4) if any(c is not None for c in ci) else None)
        fig.add_trace(go.Bar(x=names, y=y, name=label, marker_color=COLORS[m], error_y=err,
                             text=[f"{v:.1f}" if not math.isnan(v) else "" for v in y],
                             textposition="inside", insidetextanchor="middle",
                             hovertemplate=f"%{{x}}<br>{label} %{{y:.2f}}<extra></extra>"))
    ymax = max([0.0] + [float(r.get(k) or 0) + float(r.get(f"{k}_ci95") or 0) for r in rows.values()
                        for k in _METRIC_NAMES])
    fig.update_yaxes(title="score", range=[0, max(100.0, ymax * 1.05) if ymax > 1.5 else 1.05])
    fig.update_xaxes(title=None, type="category")
    return _style(fig, title or "Expert masking", width=int(max(600, 220 + 150 * len(names))), height=450,
                  barmode="group", bargap=0.25, bargroupgap=0.05,
                  legend=_TOP_LEGEND)


def knockout_bars(results: Mapping[str, Any], title: str | None = None) -> go.Figure:
    """Grouped bars: % of examples whose first answer token is the argmax, with no knockout and with the
    last prompt position blocked at each layer set, one colour per model/condition.

    ``results``: name -> a :class:`~routerlens_interp.analysis.knockout.Knockout` (reads ``labels`` and
    ``accuracy`` ``[K]``, ``base_accuracy`` and ``span``).
    """
    fig = go.Figure()
    span = None
    for i, (name, k) in enumerate(results.items()):
        y = [float(k.base_accuracy)] + [float(a) for a in k.accuracy]
        fig.add_trace(go.Bar(x=["none", *k.labels], y=y, name=name, marker_color=SEQUENCE[i % len(SEQUENCE)],
                             text=[f"{v:.0f}" for v in y], textposition="outside",
                             hovertemplate=f"{name}<br>blocked at %{{x}}: %{{y:.1f}} %<extra></extra>"))
        span = span or k.span
    fig.update_yaxes(title="first answer token correct (%)", range=[0, 105])
    fig.update_xaxes(title="layers where the last prompt position cannot attend to the "
                           + (span or "span").replace("_", " "),
                     type="category")
    return _style(fig, title or "Attention knockout", width=900, height=450, barmode="group", bargap=0.25,
                  legend=_TOP_LEGEND)
