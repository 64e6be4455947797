"""The live-ablation panel's view: the layers × experts board, the answer, the APG figure, batch EM.

:class:`PanelView` draws every control from the panel's one :class:`~routerlens_interp.board.widgets.PanelState`
(:meth:`PanelView.render`) and turns every user action into a call on the panel, which changes the
state, recomputes and calls ``render`` again. So a control can never show a value the state does not
hold (the old panel kept a stale error after "Run All" because its pickers held their own values).

The board is a plotly ``FigureWidget`` (needs anywidget) scatter of square markers, one per (MoE
layer, expert): clicks and box/lasso selections arrive as point indices ``row * n_experts + expert``.
"""
from __future__ import annotations

import html
import threading

import numpy as np
import plotly.graph_objects as go

from ..plot.style import COLORS, DIV_SCALE, SEQ_SCALE, _style
from .state import CUSTOM

__all__ = ["PanelView", "apg_figure", "board_figure", "describe_change", "summary"]

GREY = "#b0b0b0"


def fmt_p(p: float) -> str:
    """A probability as the panel shows it: 4 decimals, or 3 significant digits below 0.001 (a random
    model's 0.0004 would not move in 4 decimals when one expert is masked)."""
    return f"{p:.4f}" if p >= 1e-3 else f"{p:.3e}"


def summary(r: dict | None) -> str:
    """One readable line about a result of :meth:`AblationPanel.update`."""
    if r is None:
        return "not computed yet; call update()"
    n = sum(len(v) for v in r["experts"].values())
    head = f"[{r['preset']}] {n} expert(s) masked ({r['mode']})"
    if r["error"]:
        return f"{head}: error: {r['error']}"
    ok = "correct" if r["em"] else "wrong"
    return (f"{head}: answer {r['answer']!r} ({ok}; gold {r['gold'][0]!r}), p({r['answer_token'].strip()!r}) = "
            f"{r['p_answer']:.3f} (no mask {r['reference']['p_answer']:.3f}), APG last layer {r['apg'][-1]:+.3f}")


def _apg_values(r: dict, last_valid: dict | None) -> dict:
    """What the APG figure shows for result ``r``: bars, lines, title, axis ranges, greyed or not."""
    from ..plot import _zero_aligned_ranges

    shown = r if not r["error"] else last_valid
    ref = np.asarray(r["reference"]["lens"], dtype=float)
    apg = np.asarray(shown["apg"], dtype=float) if shown else np.full_like(ref, np.nan)
    lens = np.asarray(shown["lens"], dtype=float) if shown else np.full_like(ref, np.nan)
    title = f"APG of the mask vs no mask — p({r['answer_token'].strip()!r})"
    if r["error"]:
        title = ("last valid selection (greyed): the current one cannot be masked" if shown
                 else "the current selection cannot be masked")
    finite = np.concatenate([apg[np.isfinite(apg)], [0.0]])
    ranges = _zero_aligned_ranges([(float(finite.min()), float(finite.max())), (0.0, 1.0)], pad=0.04)
    return {"apg": apg, "ref": ref, "lens": lens, "title": title, "grey": bool(r["error"]), "ranges": ranges}


def apg_figure(r: dict, last_valid: dict | None = None) -> go.Figure:
    """APG bars (masked − no mask) and the two logit-lens lines of one result ``r``.

    When ``r`` holds an error, ``last_valid`` (if any) is drawn greyed and the title says so; without
    one only the no-mask line is drawn. NaN is never turned into 0."""
    from .. import plot
    from ..analysis.gains import ProbabilityGain

    v = _apg_values(r, last_valid)
    fig = plot.answer_probability_gain(ProbabilityGain(r["layers"], v["apg"], None, v["ref"], v["lens"]),
                                       title=v["title"])  # one example: no error bars
    fig.data[0].name = "APG (masked − no mask)"
    fig.data[1].name, fig.data[2].name = "p(answer), no mask", "p(answer), masked"
    _apply_apg(fig, v)
    return fig


def _apply_apg(fig, v: dict) -> None:
    """Write the values of :func:`_apg_values` into an APG figure (also a live FigureWidget: no rebuild)."""
    bar, _, masked = fig.data
    bar.y, fig.data[1].y, masked.y = v["apg"], v["ref"], v["lens"]
    bar.marker.color = GREY if v["grey"] else COLORS["apg"]
    masked.line.color = masked.marker.color = GREY if v["grey"] else COLORS["tuned"]
    bar.opacity, masked.opacity = (0.5, 0.5) if v["grey"] else (0.85, 1.0)
    fig.layout.title.text = v["title"]
    fig.layout.yaxis.range, fig.layout.yaxis2.range = v["ranges"]


def _cells(n_rows: int, n_experts: int) -> tuple[np.ndarray, np.ndarray]:
    return np.tile(np.arange(n_experts), n_rows), np.repeat(np.arange(n_rows), n_experts)


def board_figure(values: np.ndarray, layers: list[int], label: str, coloring: str,
                 masked: dict[int, list[int]] | None = None, width: int = 920) -> go.Figure:
    """The board: ``values`` ``[n_moe_layers, n_experts]`` as square cells (trace 0, clickable),
    masked cells marked with a cross (trace 1), and one row header per layer (trace 2, clickable)."""
    L, E = values.shape
    cell = max(3.0, min(16.0, (width - 190) / E))
    height = int(min(900, max(200, cell * L + 134)))
    cell = min(cell, (height - 134) / L)
    x, _ = _cells(L, E)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=np.repeat(np.arange(L), E), mode="markers", name="experts",
                             unselected=dict(marker=dict(opacity=1.0)), selected=dict(marker=dict(opacity=1.0)),
                             **_board_colors(values, layers, label, coloring, cell)))
    mx, my = _masked_xy(layers, masked or {})
    fig.add_trace(go.Scatter(x=mx, y=my, mode="markers", name="masked", hoverinfo="skip",
                             marker=dict(symbol="x-thin", size=cell * 0.8, line=dict(width=2, color=COLORS["outline"]))))
    step = max(1, int(np.ceil(11 / cell)))  # row labels 11 px apart at least: every step-th row is named
    fig.add_trace(go.Scatter(x=np.full(L, -1.2), y=np.arange(L), mode="markers+text", name="layers",
                             text=[f"L{l}" if i % step == 0 else "" for i, l in enumerate(layers)],
                             customdata=[f"L{l}" for l in layers], textposition="middle left", cliponaxis=False,
                             marker=dict(symbol="triangle-right", size=min(12, max(4, cell)), color="#666"),
                             hovertemplate="layer %{customdata}: click to mask / unmask all its experts<extra></extra>"))
    fig.update_xaxes(range=[-1.2 - max(3.0, 0.04 * E), E - 0.5], showgrid=False, zeroline=False, title="expert",
                     tickmode="auto")
    fig.update_yaxes(range=[L - 0.5, -0.5], showgrid=False, zeroline=False, showticklabels=False)
    _style(fig, None, width=width, height=height, showlegend=False, dragmode="select", clickmode="event",
           hovermode="closest")
    fig.update_layout(margin=dict(l=10, r=10, t=34, b=40))  # the top margin keeps the mode bar off row 0
    return fig


def _board_colors(values: np.ndarray, layers: list[int], label: str, coloring: str, cell: float) -> dict:
    """Marker, hover data and template of the board's cell trace for ``values`` ``[L, E]``."""
    L, E = values.shape
    z = np.nan_to_num(values.reshape(-1).astype(float), nan=0.0)
    lim = float(np.abs(z).max()) or 1.0
    if coloring in ("usage change", "attribution"):  # signed: white at 0
        scale = dict(colorscale=DIV_SCALE, cmin=-lim, cmax=lim)
    else:  # CE rank 1 (the CEs) darkest, like the most-used experts under usage
        scale = dict(colorscale=SEQ_SCALE, reversescale=coloring == "CE rank", cmin=float(z.min()),
                     cmax=float(z.max()) if z.max() > z.min() else float(z.min()) + 1)
    return dict(customdata=np.stack([np.repeat(layers, E), np.tile(np.arange(E), L), z], 1),
                marker=dict(symbol="square", size=cell * 0.92, color=z, line=dict(width=0), **scale,
                            colorbar=dict(title=dict(text=label, side="right"), thickness=12, len=1.0)),
                hovertemplate=f"L%{{customdata[0]}} E%{{customdata[1]}}<br>{label} %{{customdata[2]:.4g}}<extra></extra>")


def _masked_xy(layers: list[int], masked: dict[int, list[int]]) -> tuple[list[int], list[int]]:
    rows = {l: i for i, l in enumerate(layers)}
    pairs = [(e, rows[l]) for l, ids in masked.items() if l in rows for e in ids]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _status_html(panel, r: dict, last_valid: dict | None) -> str:
    esc = html.escape
    ref = r["reference"]
    ex = panel.example
    rows = [f"<b>Question:</b> {esc(ex.question)} &nbsp; <b>gold:</b> {esc(r['gold'][0])}"]

    def body(x: dict) -> list[str]:
        mark = "✔" if x["em"] else "✘"
        answer = "<i>decoding…</i>" if x.get("pending") else f"{esc(repr(x['answer']))} {mark}"
        return [f"<b>Answer:</b> {answer} &nbsp; (no mask: {esc(repr(ref['answer']))})",
                f"<b class='rl-p'>p({esc(x['answer_token'].strip())!r}):</b> <span class='rl-p-value'>"
                f"{fmt_p(x['p_answer'])}</span> (no mask {fmt_p(ref['p_answer'])}) &nbsp; <b>top next token:</b> "
                f"{esc(repr(x['top_token']))} ({x['p_top']:.3f})"]

    if r["error"]:
        rows.append(f"<span class='rl-error' style='color:#c00'><b>Cannot mask this selection:</b> "
                    f"{esc(r['error'])}</span>")
        if last_valid is not None:
            rows.append("<div class='rl-stale' style='opacity:0.45'><i>last valid selection:</i><br>"
                        + "<br>".join(body(last_valid)) + "</div>")
    else:
        rows.extend(body(r))
    n = sum(len(v) for v in r["experts"].values())
    masked = "; ".join(f"L{l}: {_ranges(ids)}" for l, ids in r["experts"].items()) or "nothing"
    rows.append(f"<b>Masked</b> ({n} experts, {esc(r['mode'])}, preset {esc(r['preset'])}): {esc(masked)}")
    got = [(l, e, t) for l, d in r.get("received", {}).items() for e, t in d.items()]
    if got:
        busy = sorted(got, key=lambda x: -x[2])
        rows.append(f"<b>Tokens the masked experts receive without the mask</b> (of {r['n_tokens']} prompt tokens): "
                    f"{sum(t for *_, t in got)} in total; "
                    + esc(", ".join(f"L{l}E{e} {t}" for l, e, t in busy[:12]))
                    + (f", … ({sum(1 for g in got if g[2] == 0)} of {len(got)} receive none)" if len(got) > 12 else ""))
    return "<br>".join(rows)


def _ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5] → '0–2, 5' (a whole layer stays short)."""
    out, start = [], None
    for i, e in enumerate(ids):
        if start is None:
            start = e
        if i + 1 == len(ids) or ids[i + 1] != e + 1:
            out.append(f"{start}" if start == e else f"{start}–{e}")
            start = None
    return ", ".join(out)


class PanelView:
    """ipywidgets controls over one :class:`~routerlens_interp.board.widgets.AblationPanel`; ``root`` is the VBox."""

    def __init__(self, panel):
        import ipywidgets as w

        self.panel, p, st = panel, panel, panel.state
        self._syncing = False
        self._coloring = None
        opts = lambda: list(p.presets) + [CUSTOM]
        self.preset = w.Dropdown(options=opts(), description="preset", layout=w.Layout(width="220px"))
        self.mode = w.Dropdown(options=["reroute", "zero"], description="mode", layout=w.Layout(width="200px"))
        self.coloring = w.Dropdown(options=list(p.colorings()), description="colour by", layout=w.Layout(width="240px"))
        self.seed = w.IntText(description="seed", layout=w.Layout(width="140px"), disabled=p._random is None)
        self.example = w.Dropdown(options=[(f"{i}: {e.question[:60]}", i) for i, e in enumerate(p.data)],
                                  description="example", layout=w.Layout(width="420px"))
        self.context = w.Textarea(placeholder="context", layout=w.Layout(width="420px", height="60px"))
        self.question = w.Text(placeholder="question", layout=w.Layout(width="300px"))
        self.answer = w.Text(placeholder="gold answer", layout=w.Layout(width="160px"))
        self.use_text = w.Button(description="probe this text")
        self.status = w.HTML()
        self.batch_n = w.IntText(value=min(32, len(p.data)), description="N", layout=w.Layout(width="130px"))
        self.batch_run = w.Button(description="batch EM", tooltip="EM on N examples of the data, mask vs no mask")
        self.batch_cancel = w.Button(description="cancel")
        self.progress = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width="200px"))
        self.batch_out = w.HTML()
        try:
            self.board = go.FigureWidget(self._board_fig())
            self.apg = go.FigureWidget(apg_figure(p.state.result or p.update(), st.last_valid))
        except ImportError:  # plotly >= 6 needs anywidget for FigureWidget; without it nothing is clickable
            self.board = self.apg = None
        self._wire(w)
        spec = p.lm.spec
        title = w.HTML(
            f"<b>Live expert ablation</b> — {'tuned model' if p.tuned is not None else 'base model'}, "
            f"{len(p.layers)} MoE layers × {spec.n_experts} experts, top-{spec.top_k}. Click a cell to mask / "
            "unmask an expert, drag a box (or lasso) to mask many, click a row header (▶) for a whole layer."
            + ("" if self.board is not None else " <i>(pip install anywidget for the clickable board)</i>"))
        rows = [title, w.HBox([self.preset, self.mode, self.coloring, self.seed])]
        if p.data:
            rows.append(self.example)
        rows.append(w.HBox([self.context, w.VBox([self.question, w.HBox([self.answer, self.use_text])])]))
        if self.board is not None:
            rows.append(self.board)
        rows.append(self.status)
        if self.apg is not None:
            rows.append(self.apg)
        if p.data:
            rows.append(w.HBox([self.batch_n, self.batch_run, self.batch_cancel, self.progress, self.batch_out]))
        self.root = w.VBox(rows)
        self.root.add_class("rl-panel")
        self.status.add_class("rl-status")
        panel.controls = {"preset": self.preset, "mode": self.mode, "coloring": self.coloring, "seed": self.seed,
                          "example": self.example, "board": self.board, "apg": self.apg, "status": self.status,
                          "batch_run": self.batch_run, "batch_cancel": self.batch_cancel, "progress": self.progress}

    # ------------------------------------------------------------------------------- drawing
    def _board_fig(self) -> go.Figure:
        p = self.panel
        values, label = p.colorings()[p.state.coloring]
        self._coloring = (p.state.coloring, id(p.reference()))
        return board_figure(values, p.layers, label, p.state.coloring, p.experts)

    def render(self) -> None:
        """Set every control from ``panel.state`` (no callbacks fire while doing so)."""
        p, st = self.panel, self.panel.state
        running = bool(st.batch and st.batch["running"])
        self._syncing = True
        try:
            options = list(p.presets) + [CUSTOM]
            if list(self.preset.options) != options:
                self.preset.options = options
            self.preset.value = st.preset if st.preset in p.presets else CUSTOM
            self.mode.value = st.mode
            if list(self.coloring.options) != list(p.colorings()):
                self.coloring.options = list(p.colorings())
            self.coloring.value = st.coloring
            self.seed.value = st.seed
            self.example.value = st.example if st.example is not None and p.data else None
            for c in (self.preset, self.mode, self.coloring, self.example, self.use_text, self.batch_run):
                c.disabled = running
            self.seed.disabled = running or p._random is None
            self.batch_cancel.disabled = not running
        finally:
            self._syncing = False
        r = st.result
        if r is not None:
            self.status.value = _status_html(p, r, st.last_valid)
            if self.apg is not None:
                with self.apg.batch_update():
                    _apply_apg(self.apg, _apg_values(r, st.last_valid))
        if self.board is not None:
            with self.board.batch_update():
                key = (st.coloring, id(p.reference()))  # usage colours change with the example
                if self._coloring != key:
                    values, label = p.colorings()[st.coloring]
                    new = _board_colors(values, p.layers, label, st.coloring, self.board.data[0].marker.size / 0.92)
                    self.board.data[0].update(new)
                    self._coloring = key
                mx, my = _masked_xy(p.layers, p.experts)
                self.board.data[1].x, self.board.data[1].y = mx, my
        self.render_batch()

    def render_batch(self) -> None:
        b = self.panel.state.batch
        if b is None:
            return
        self.progress.max, self.progress.value = max(b["n"], 1), b["done"]
        if b["error"]:
            text = f"<span style='color:#c00'>cannot mask this selection: {html.escape(b['error'])}</span>"
        elif b["em"] is None:
            text = "running…" if b["running"] else "cancelled before the first chunk"
        else:
            n = sum(len(v) for v in b.get("mask", {}).values())
            text = (f"EM {b['em']:.1f} masked vs {b['em_reference']:.1f} without the mask on {b['done']} of {b['n']} "
                    f"(mask: {n} experts, preset {html.escape(str(b.get('preset')))}, {b.get('mode')})"
                    + (" (running…)" if b["running"] else " (cancelled)" if b["cancelled"] else ""))
        self.batch_out.value = text

    # ------------------------------------------------------------------------------- events
    def _wire(self, w) -> None:
        p = self.panel
        E = p.lm.spec.n_experts

        def guarded(fn):
            def cb(change):
                if not self._syncing:
                    fn(change["new"])
            return cb

        self.preset.observe(guarded(lambda v: v != CUSTOM and p.apply_preset(v)), names="value")
        self.mode.observe(guarded(lambda v: setattr(p, "mode", v)), names="value")
        self.coloring.observe(guarded(p.set_coloring), names="value")
        self.seed.observe(guarded(p.set_seed), names="value")
        self.example.observe(guarded(lambda v: v is not None and self._new_example(v)), names="value")

        def use_text(_):
            from ..examples import QAExample

            ex = QAExample(context=self.context.value, question=self.question.value,
                           answers=[self.answer.value] if self.answer.value.strip() else [])
            self._new_example(ex)

        self.use_text.on_click(use_text)
        self.batch_run.on_click(lambda _: self._start_batch())
        self.batch_cancel.on_click(lambda _: p.cancel())
        if self.board is None:
            return

        def cells(points):
            return [(p.layers[i // E], i % E) for i in points.point_inds]

        def on_cells(trace, points, state):
            if not self._busy() and points.point_inds:
                p.toggle_many(cells(points))

        self.board.data[0].on_click(on_cells)
        self.board.data[0].on_selection(on_cells)
        self.board.data[2].on_click(lambda t, pts, s: not self._busy() and pts.point_inds
                                    and p.toggle_layer(p.layers[pts.point_inds[0]]))

    def _busy(self) -> bool:
        b = self.panel.state.batch
        return bool(b and b["running"])

    def _new_example(self, example) -> None:
        try:
            self.panel.set_example(example)
        except (ValueError, IndexError) as e:
            self.status.value = f"<span class='rl-error' style='color:#c00'><b>Cannot use this example:</b> " \
                                f"{html.escape(str(e))}</span>"
            return
        self.render()

    def _start_batch(self) -> None:
        p = self.panel

        def run():
            p.run_batch(self.batch_n.value or None, on_progress=lambda *_: self.render_batch())
            self.render()

        # a thread: the kernel keeps handling the cancel button meanwhile
        p.state.batch = {"n": self.batch_n.value, "done": 0, "em": None, "em_reference": None, "running": True,
                         "cancelled": False, "error": None}
        self.render()
        threading.Thread(target=run, daemon=True).start()


def describe_change(a: dict, b: dict) -> str:
    """What changed from result ``a`` to result ``b`` of :meth:`AblationPanel.update`, as text."""
    name = lambda r: f"[{r['preset']}]"
    if a.get("error") or b.get("error"):
        return f"{name(a)} → {name(b)}: " + "; ".join(f"{name(r)} error: {r['error']}" for r in (a, b) if r.get("error"))
    parts = [f"{name(a)} → {name(b)}:",
             f"answer {a['answer']!r} → {b['answer']!r}" + (" (unchanged)" if a["answer"] == b["answer"] else ""),
             f"p(answer) {a['p_answer']:.3f} → {b['p_answer']:.3f} ({b['p_answer'] - a['p_answer']:+.3f})"]
    d = np.asarray(b["lens"]) - np.asarray(a["lens"])
    i = int(np.nanargmax(np.abs(d))) if np.isfinite(d).any() else 0
    parts.append(f"largest logit-lens change at layer {b['layers'][i]} ({d[i]:+.3f})")
    return " ".join(parts[:1]) + " " + "; ".join(parts[1:])
