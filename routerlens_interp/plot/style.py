"""Shared look of every figure in :mod:`routerlens_interp.plot`: one colour per role, layout defaults."""
from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from .export import FONT_FAMILY

#: One colour per role, used by every figure so that the same quantity looks the same everywhere.
COLORS = {"context": "#4C78A8", "answer": "#E45756", "base": "#8C8C8C", "tuned": "#E45756",
          "apg": "#F58518", "em": "#4C78A8", "f1": "#72B7B2", "recall": "#54A24B", "open_em": "#B279A2",
          "loss": "#4C78A8", "dev_loss": "#E45756", "outline": "#111111", "fit": "#8C8C8C"}
SEQUENCE = ["#4C78A8", "#E45756", "#54A24B", "#F58518", "#B279A2", "#72B7B2", "#FF9DA6", "#9D755D"]
SEQ_SCALE = "YlGnBu"
DIV_SCALE = "RdBu_r"  # negative blue, 0 white, positive red
_TOP_LEGEND = dict(orientation="h", x=0.5, xanchor="center", y=1.0, yanchor="bottom")
_METRIC_NAMES = {"em": "EM", "f1": "F1", "recall": "Recall", "open_em": "Open-book EM"}


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=float)


def _style(fig: go.Figure, title: str | None, width: int = 900, height: int = 450, **kw: Any) -> go.Figure:
    fig.update_layout(template="plotly_white", width=width, height=height,
                      title=dict(text=title, x=0.5, xanchor="center") if title else None,
                      font=dict(family=FONT_FAMILY, size=14), margin=dict(l=70, r=40, t=70, b=60),
                      hoverlabel=dict(font_family=FONT_FAMILY), **kw)
    return fig
