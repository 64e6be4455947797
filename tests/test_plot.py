"""Figures build from small synthetic inputs and show what the inputs say; batched PNG export."""
from __future__ import annotations

import re
import shutil
import struct
import warnings
from types import SimpleNamespace as NS

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from routerlens_interp import plot as P
from routerlens_interp.plot.export import clean_token


class FakeExpertSet:
    """Only what the plots may rely on: items(), [layer], in."""

    def __init__(self, d):
        self._d = {k: list(v) for k, v in d.items()}

    def items(self):
        return self._d.items()

    def __getitem__(self, layer):
        return self._d[layer]

    def __contains__(self, layer):
        return layer in self._d


def _counts(seed=0, layers=(1, 2, 3, 5), n_exp=6, n_tokens=50):
    g = torch.Generator().manual_seed(seed)
    return NS(counts=torch.randint(0, 40, (len(layers), n_exp), generator=g), layers=list(layers), n_tokens=n_tokens)


def _outlined(fig, layers):
    """(layer, expert) of every outline rectangle, from its coordinates."""
    out = set()
    for s in fig.layout.shapes:
        if s.type == "rect":
            out.add((layers[round((s.y0 + s.y1) / 2)], round((s.x0 + s.x1) / 2)))
    return out


def test_expert_heatmap_values_and_outlines():
    c = _counts()
    ces = FakeExpertSet({1: [0, 3], 5: [2, 5]})
    fig = P.expert_heatmap(c, ces)
    assert isinstance(fig, go.Figure) and len(fig.data) == 1 and fig.data[0].type == "heatmap"
    np.testing.assert_allclose(np.asarray(fig.data[0].z), c.counts.numpy() / 50)
    assert _outlined(fig, c.layers) == {(1, 0), (1, 3), (5, 2), (5, 5)}
    assert list(fig.layout.yaxis.ticktext) == ["1", "2", "3", "5"]  # decoder-layer indices, not rows
    raw = P.expert_heatmap(c, normalize=False)
    np.testing.assert_allclose(np.asarray(raw.data[0].z), c.counts.numpy())
    assert len(raw.layout.shapes) == 0
    with pytest.raises(ValueError, match="layers"):
        P.expert_heatmap(c, {4: [1]})  # layer 4 is not an MoE layer of these counts


def test_expert_diff_heatmap_is_centred_difference():
    t, b = _counts(0), _counts(1)
    fig = P.expert_diff_heatmap(t, b, {2: [1]})
    z = np.asarray(fig.data[0].z)
    np.testing.assert_allclose(z, (t.counts.numpy() - b.counts.numpy()) / 50)
    h = fig.data[0]
    assert h.zmid == 0 and h.zmin == -h.zmax and h.zmax == pytest.approx(np.abs(z).max())
    assert _outlined(fig, t.layers) == {(2, 1)}
    with pytest.raises(ValueError):
        P.expert_diff_heatmap(t, _counts(layers=(0, 1, 2, 3)))


def _gain(L=6, seed=0):
    rng = np.random.default_rng(seed)
    cpe = rng.normal(0.2, 0.1, (5, L))
    ape = rng.normal(2.0, 1.0, (4, L))
    ape[0, 1] = np.nan
    ape[:, 2] = np.nan  # no example has the answer in context at this layer: no bar, no crash
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of the all-nan column
        aag = np.nanmean(ape, 0)
    return NS(layers=list(range(L)), cag=cpe.mean(0), aag=aag, cag_abs=np.linspace(-0.01, 0.02, L),
              aag_abs=np.linspace(0, 0.05, L), cag_per_example=cpe, aag_per_example=ape)


def test_attention_gain_twin_axes_and_sem():
    g = _gain()
    fig = P.attention_gain(g)
    assert len(fig.data) == 2
    cag, aag = fig.data
    assert cag.yaxis == "y" and aag.yaxis == "y2" and fig.layout.yaxis2.overlaying == "y"
    assert fig.layout.yaxis2.side == "right"
    np.testing.assert_allclose(cag.y, g.cag)
    sem = np.std(g.cag_per_example, axis=0, ddof=1) / np.sqrt(5)
    np.testing.assert_allclose(cag.error_y.array, sem)
    col = g.aag_per_example[:, 1]
    col = col[~np.isnan(col)]
    assert aag.error_y.array[1] == pytest.approx(np.std(col, ddof=1) / np.sqrt(3))
    assert aag.error_y.array[2] == 0
    # zero sits at the same height on both axes
    (a0, a1), (b0, b1) = fig.layout.yaxis.range, fig.layout.yaxis2.range
    assert -a0 / (a1 - a0) == pytest.approx(-b0 / (b1 - b0))
    assert a0 < np.nanmin(cag.y - cag.error_y.array) and np.nanmax(cag.y + cag.error_y.array) < a1
    assert b0 < np.nanmin(aag.y - aag.error_y.array) and np.nanmax(aag.y + aag.error_y.array) < b1
    # one curve all negative, the other around 0: both keep a good share of their axis
    neg = NS(**{**vars(g), "aag": -np.linspace(1, 3, 6), "aag_per_example": None,
                "cag": np.linspace(-0.2, 0.2, 6), "cag_per_example": None})
    f2 = P.attention_gain(neg)
    (a0, a1), (b0, b1) = f2.layout.yaxis.range, f2.layout.yaxis2.range
    assert -a0 / (a1 - a0) == pytest.approx(-b0 / (b1 - b0))
    assert 0.4 / (a1 - a0) > 0.5 and 3.0 / (b1 - b0) > 0.5  # spans of the curves (with 0)
    ab = P.attention_gain(g, relative=False)
    np.testing.assert_allclose(ab.data[0].y, g.cag_abs)
    np.testing.assert_allclose(ab.data[1].y, g.aag_abs)
    assert ab.data[0].error_y.array is None  # no per-example absolute values given


def test_answer_probability_gain():
    L = 5
    tuned = np.linspace(0.0, 0.8, L)
    base = np.full(L, 0.05)
    pe = np.tile(tuned - base, (3, 1)) + np.array([[0.1], [0.0], [-0.1]])
    p = NS(layers=list(range(L)), apg=tuned - base, per_example=pe, base=base, tuned=tuned)
    fig = P.answer_probability_gain(p)
    assert [t.type for t in fig.data] == ["bar", "scatter", "scatter"]
    assert fig.data[0].yaxis == "y" and fig.data[1].yaxis == "y2" and fig.data[2].yaxis == "y2"
    np.testing.assert_allclose(fig.data[0].y, tuned - base)
    np.testing.assert_allclose(fig.data[0].error_y.array, np.full(L, 0.1 / np.sqrt(3)))
    np.testing.assert_allclose(fig.data[2].y, tuned)


def test_masking_bars_order_metrics_and_errors():
    rows = {"router-tuned": {"em": 76.4, "f1": 77.8, "em_ci95": 2.0, "f1_ci95": 1.5},
            "− other experts": {"em": 33.2, "f1": 40.0},
            "− CEs": {"em": 18.5, "f1": 25.0, "em_ci95": 1.0},
            "base": {"em": 28.1, "f1": 40.5}}
    fig = P.masking_bars(rows)
    assert [t.name for t in fig.data] == ["EM", "F1"]
    assert list(fig.data[0].x) == list(rows)
    assert list(fig.data[0].y) == [76.4, 33.2, 18.5, 28.1]
    assert list(fig.data[0].error_y.array) == [2.0, 0.0, 1.0, 0.0]
    assert fig.layout.barmode == "group"
    rows["base"]["recall"] = 50.0
    rows["router-tuned"]["open_em"] = 60.0
    assert [t.name for t in P.masking_bars(rows).data] == ["EM", "F1", "Recall", "Open-book EM"]


def test_knockout_bars_one_series_per_result_with_none_first():
    from types import SimpleNamespace as K

    base = K(labels=["0", "1", "all"], accuracy=np.array([20.0, 79.0, 10.0]), base_accuracy=80.0,
             span="answer_in_context")
    tuned = K(labels=["0", "1", "all"], accuracy=np.array([11.0, 53.0, 8.0]), base_accuracy=54.0,
              span="answer_in_context")
    fig = P.knockout_bars({"base": base, "router-tuned": tuned})
    assert [t.name for t in fig.data] == ["base", "router-tuned"]
    assert list(fig.data[0].x) == ["none", "0", "1", "all"]
    assert list(fig.data[1].y) == [54.0, 11.0, 53.0, 8.0]
    assert "answer in context" in fig.layout.xaxis.title.text and fig.layout.barmode == "group"


def _rgb(c):
    return tuple(int(float(v)) for v in re.findall(r"[\d.]+", c)[:3])


def test_token_attention_diff_colours_lines_and_highlight():
    toks = ["Based", "Ġon", "Ġthe", "Ġcontext", "ĊĊ", "Context", ":", "Ċ", "ĠCafÃ©", "Ġin", "Ġ1964", "."]
    diff = np.array([0.01, -0.02, 0.0, 0.05, 0.0, -0.03, 0.0, 0.0, 0.02, -0.01, 0.2, 0.0])
    fig = P.token_attention_diff(toks, diff, title="layer 12", highlight=[(10, 11)])
    boxes = {int(s.name[3:]): s for s in fig.layout.shapes if s.name and s.name.startswith("tok")}
    assert set(boxes) == set(range(len(toks)))  # every token has a box (newlines as ↵)
    for i, d in enumerate(diff):
        r, _, b = _rgb(boxes[i].fillcolor)
        if d > 0:
            assert r > b, (i, boxes[i].fillcolor)
        elif d < 0:
            assert b > r, (i, boxes[i].fillcolor)
    # strongest value is the darkest red
    assert _rgb(boxes[10].fillcolor)[1] == min(_rgb(s.fillcolor)[1] for s in boxes.values())
    # newlines break lines: "Context" starts a new line below "context", "Café" below "Context"
    assert boxes[5].y0 > boxes[3].y0 and boxes[8].y0 > boxes[5].y0
    assert boxes[5].x0 == boxes[0].x0
    texts = [a.text for a in fig.layout.annotations]
    assert "Café" in texts and "context" in texts and not any("Ġ" in t or "Ċ" in t for t in texts)
    # highlight: one frame, around token 10 only
    frames = [s for s in fig.layout.shapes if s.name and s.name.startswith("highlight")]
    assert [f.name for f in frames] == ["highlight10-10"] and frames[0].line.width > 0
    assert frames[0].x0 < boxes[10].x0 < boxes[10].x1 < frames[0].x1
    assert frames[0].y0 < boxes[10].y0 < boxes[10].y1 < frames[0].y1
    assert not any(s.line.width for s in boxes.values())
    # a multi-token span gets one frame covering all its tokens
    two = P.token_attention_diff(toks, diff, highlight=[(0, 2), (8, 9)])
    assert sorted(s.name for s in two.layout.shapes if s.name.startswith("highlight")) == [
        "highlight0-1", "highlight8-8"]
    hover = fig.data[0]
    assert hover.marker.cmin == -0.2 and hover.marker.cmax == 0.2 and hover.marker.showscale
    assert [c[2] for c in hover.customdata] == pytest.approx(list(diff))
    with pytest.raises(ValueError):
        P.token_attention_diff(toks, diff[:-1])


def test_token_wrapping_long_text():
    toks = ["Ġword"] * 300
    fig = P.token_attention_diff(toks, np.linspace(-1, 1, 300), width=800)
    xs = [s.x1 for s in fig.layout.shapes]
    assert max(xs) <= fig.layout.xaxis.range[1]
    assert len({s.y0 for s in fig.layout.shapes}) > 5  # wrapped onto many lines
    assert fig.layout.height > 300


def test_clean_token():
    assert clean_token("Ġhello") == " hello"
    assert clean_token("Ċ") == "\n" and clean_token("ĊĊ") == "\n\n"
    assert clean_token("ĠCafÃ©") == " Café"
    assert clean_token("▁the") == " the"
    assert clean_token("<0x0A>") == "\n"
    assert clean_token("é") == "é" and clean_token("plain") == "plain"


def test_overlap_matrix_jaccard_by_hand():
    a = FakeExpertSet({0: [1, 2], 1: [3]})
    b = FakeExpertSet({0: [2, 5], 1: [3]})
    c = FakeExpertSet({1: [1, 2]})  # same expert ids as a, other layer: no overlap
    fig = P.overlap_matrix({"A": a, "B": b, "C": c})
    z = np.asarray(fig.data[0].z)
    # A={(0,1),(0,2),(1,3)}, B={(0,2),(0,5),(1,3)}: |A∩B|=2, |A∪B|=4
    expected = np.array([[1, 2 / 4, 0], [2 / 4, 1, 0], [0, 0, 1]])
    np.testing.assert_allclose(z, expected)
    assert list(fig.data[0].x) == ["A", "B", "C"] and fig.data[0].texttemplate


def test_routing_heatmap_top1_and_hover():
    idx = torch.tensor([[[3, 1], [0, 2]], [[4, 5], [1, 0]]])  # [2 layers, 2 tokens, k=2]
    w = torch.tensor([[[0.2, 0.7], [0.6, 0.1]], [[0.5, 0.4], [0.3, 0.3]]])
    fig = P.routing_heatmap(["ĠHello", "Ċ"], idx, [3, 7], weights=w, n_experts=8)
    z = np.asarray(fig.data[0].z)
    np.testing.assert_array_equal(z, [[1, 0], [4, 1]])  # top-1 by weight, ties keep order
    assert "E1 (0.700), E3 (0.200)" in fig.data[0].text[0][0]
    assert "layer 7" in fig.data[0].text[1][0]
    assert list(fig.layout.xaxis.ticktext) == ["Hello", "↵"]
    nw = P.routing_heatmap(["a", "b"], idx.numpy(), [3, 7])
    np.testing.assert_array_equal(np.asarray(nw.data[0].z), [[3, 0], [4, 1]])
    with pytest.raises(ValueError):
        P.routing_heatmap(["a"], idx, [3, 7])


def test_logit_lens_lines():
    L = [0, 1, 2]
    one = P.logit_lens(L, np.array([0.1, 0.2, 0.9]), token="Ġ1964")
    assert len(one.data) == 1 and "'1964'" in one.layout.title.text
    two = P.logit_lens(L, {"base": [0.1, 0.1, 0.2], "tuned": torch.tensor([0.1, 0.5, 0.9])})
    assert [t.name for t in two.data] == ["base", "tuned"]
    np.testing.assert_allclose(two.data[1].y, [0.1, 0.5, 0.9])


def test_training_curves():
    log = [{"step": s, "loss": 1.0 / (s + 1)} for s in range(0, 100, 10)]
    log += [{"step": 50, "dev_loss": 0.5, "open_em": 40.0, "recall": 30.0, "conflict_em": 20.0}]
    fig = P.training_curves(log)
    names = [t.name for t in fig.data]
    assert names == ["train loss", "dev loss", "Open-book EM", "Recall", "conflict_em"]
    assert list(fig.data[0].x) == list(range(0, 100, 10)) and list(fig.data[2].x) == [50]
    assert fig.data[2].xaxis == "x2"
    assert len(P.training_curves(log[:3]).data) == 1  # loss only, one panel


def test_scatter_pearson_in_title():
    rng = np.random.default_rng(3)
    pts = [{"attention_gain": float(a), "em_gain": float(2 * a + rng.normal()), "label": f"m{i}"}
           for i, a in enumerate(rng.uniform(0, 5, 7))]
    fig = P.scatter_gain_vs_em(pts)
    r = float(re.search(r"r = (-?[\d.]+)", fig.layout.title.text).group(1))
    expected = np.corrcoef([p["attention_gain"] for p in pts], [p["em_gain"] for p in pts])[0, 1]
    assert r == pytest.approx(expected, abs=5e-4)
    assert len(fig.data) == 2  # points + least-squares line
    neg = P.scatter_gain_vs_em([{"a": 0, "b": 1}, {"a": 1, "b": 0}, {"a": 2, "b": -1}], x="a", y="b")
    assert "r = -1.000" in neg.layout.title.text


def test_save_figures_html_only(tmp_path):
    figs = {"masking bars": P.masking_bars({"a": {"em": 1.0, "f1": 2.0}})}
    paths = P.save_figures(figs, tmp_path / "figs", png=False)
    html = tmp_path / "figs" / "masking_bars.html"
    assert html in paths and (tmp_path / "figs" / "plotly.min.js").exists()
    assert 'src="plotly.min.js"' in html.read_text()
    assert not list((tmp_path / "figs").glob("*.png"))


def test_save_figures_missing_chromium_message(tmp_path, monkeypatch):
    import kaleido
    from routerlens_interp.plot import export as plot_export
    from choreographer.errors import ChromeNotFoundError

    def boom(*a, **k):
        raise ChromeNotFoundError("no chrome")

    monkeypatch.setattr(kaleido, "write_fig_from_object_sync", boom)
    monkeypatch.setattr(plot_export, "png_unavailable", lambda: None)  # a browser "found" that does not start
    with pytest.raises(RuntimeError, match=r"apt-get install chromium.*png=False") as info:
        P.save_figures({"x": P.logit_lens([0, 1], [0.1, 0.2])}, tmp_path, html=False, png=True)
    # a UserError: the CLI prints it as one line (exit 2) instead of a traceback
    from routerlens_interp.errors import UserError
    assert isinstance(info.value, UserError) and "--no-png" in str(info.value)


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("google-chrome") is None,
                    reason="PNG export needs a Chromium: apt-get install chromium")
def test_save_figures_png_batch(tmp_path):
    g = _gain()
    figs = {"attention_gain": P.attention_gain(g),
            "tokens": P.token_attention_diff(["a", "Ġb", "Ċ", "c"], [0.1, -0.1, 0.0, 0.05]),
            "overlap": P.overlap_matrix({"A": {0: [1]}, "B": {0: [1, 2]}})}
    paths = P.save_figures(figs, tmp_path, scale=1)
    pngs = [p for p in paths if p.suffix == ".png"]
    assert sorted(p.name for p in pngs) == ["attention_gain.png", "overlap.png", "tokens.png"]
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
        w, h = struct.unpack(">II", data[16:24])
        fig = figs[p.stem]
        assert (w, h) == (fig.layout.width, fig.layout.height)
    assert len([p for p in paths if p.suffix == ".html"]) == 3


def test_scatter_labels_of_close_points_do_not_overlap():
    """Notebook 05's last figure: "base − random" sat on "base − CEs" (two points almost at one place)."""
    pts = [("RT", 0.061, 42.0), ("RT − CEs", 0.031, 1.5), ("RT − random", 0.058, 39.0), ("RT − base top", 0.05, 30.0),
           ("base − CEs", 0.002, -0.5), ("base − random", 0.001, 0.0)]
    fig = P.scatter_gain_vs_em([{"label": l, "attention_gain": x, "em_gain": y} for l, x, y in pts])
    tr, (x0, x1), (y0, y1) = fig.data[0], fig.layout.xaxis.range, fig.layout.yaxis.range
    w, h = 700 - 110, 500 - 130  # the plot area inside the figure's margins, px
    boxes = []
    for x, y, text, spot in zip(tr.x, tr.y, tr.text, tr.textposition):  # the label boxes, re-derived here
        px, py = (x - x0) / (x1 - x0) * w, (y1 - y) / (y1 - y0) * h
        tw, th = P.text_width(text, 14), 14 * 1.25
        v, hz = spot.split()
        bx = {"center": px - tw / 2, "right": px + 7, "left": px - 7 - tw}[hz]
        by = {"top": py - 7 - th, "bottom": py + 7, "middle": py - th / 2}[v]
        assert 0 <= bx and bx + tw <= w and 0 <= by and by + th <= h, text
        boxes.append((bx, by, bx + tw, by + th))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1])


def test_token_map_colour_bar_stays_inside_the_figure():
    toks = ["Based", " on", " the", " context", "\n", "Jidis", " plays", "."]
    fig = P.token_attention_diff(toks, np.linspace(-0.05, 0.05, len(toks)))
    lay, cb = fig.layout, fig.data[0].marker.colorbar
    plot_w = lay.width - lay.margin.l - lay.margin.r
    right = lay.margin.l + cb.x * plot_w + cb.thickness + 80  # bar + tick labels + title
    assert right <= lay.width and lay.margin.autoexpand is False
    assert fig.layout.xaxis.range[1] - fig.layout.xaxis.range[0] == plot_w  # 1 unit = 1 px: boxes keep their size
    assert abs(fig.layout.yaxis.range[0] - fig.layout.yaxis.range[1]) == lay.height - lay.margin.t - lay.margin.b
