"""rl.widgets: the live-ablation panel, driven without a browser and checked against direct computations."""
from __future__ import annotations

import html
import importlib.util
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402

import routerlens_interp as rl  # noqa: E402
from routerlens_interp.board.view import fmt_p  # noqa: E402
from routerlens_interp.evaluation.generate import generate  # noqa: E402
from routerlens_interp.board.widgets import AblationPanel, default_presets, describe_change  # noqa: E402

EX = rl.QAExample(context="Alice Smith was born in 1950 in Paris. She works as a baker.",
                  question="Where was Alice Smith born?", answers=["Paris"])
PRESETS = {"A": {0: [0, 1, 2, 3], 1: [4, 5, 6], 2: [1, 7]}, "B": {2: [0, 3, 5]}}


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rl.load(tiny.save("olmoe", tmp_path_factory.mktemp("widgets") / "olmoe"))


def n_hooks(lm) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.hf.modules())


@torch.no_grad()
def direct(lm, ex, experts=None, mode="reroute"):
    """p(first gold token) at the last prompt position and the logit lens, computed without the panel."""
    enc = lm.encode(ex)
    tgt = int(enc.answer_ids[0])

    def run():
        out = lm.hf(input_ids=enc.input_ids[None], output_hidden_states=True)
        p = out.logits[0, enc.last_prompt].float().softmax(-1)[tgt].item()
        hs = torch.stack([h[0, enc.last_prompt] for h in out.hidden_states[1:]])  # after each layer
        lens = lm.spec.unembed(lm.hf)(lm.spec.final_norm(lm.hf)(hs)).float().softmax(-1)[:, tgt]
        lens[-1] = p  # HF applies the final norm to the last hidden state already
        return p, lens.numpy(), generate(lm, [ex], max_new_tokens=16)[0]

    if experts:
        with rl.mask_experts(lm, experts, mode):
            return run()
    return run()


def test_no_mask_gives_zero_apg_and_reference(tiny_lm):
    panel = AblationPanel(tiny_lm, EX, presets=PRESETS)
    r = panel.update()
    assert r["error"] is None and r["experts"] == {} and r["preset"] == "none"
    np.testing.assert_allclose(r["apg"], 0.0, atol=0)
    p, lens, ans = direct(tiny_lm, EX)
    assert r["p_answer"] == pytest.approx(p, rel=1e-5)
    np.testing.assert_allclose(r["lens"], lens, rtol=1e-5, atol=1e-9)
    assert r["answer"] == ans == r["reference"]["answer"]
    assert len(r["lens"]) == tiny_lm.spec.n_layers


@pytest.mark.parametrize("mode", ["reroute", "zero"])
def test_preset_matches_direct_masked_forward(tiny_lm, mode):
    panel = AblationPanel(tiny_lm, EX, presets=PRESETS, mode=mode)
    hooks = n_hooks(tiny_lm)
    r = panel.run_preset("A")
    assert n_hooks(tiny_lm) == hooks  # nothing left behind
    assert r["error"] is None and r["experts"] == PRESETS["A"] and r["preset"] == "A"
    p, lens, ans = direct(tiny_lm, EX, PRESETS["A"], mode)
    p0, lens0, _ = direct(tiny_lm, EX)
    assert r["p_answer"] == pytest.approx(p, rel=1e-5)
    assert abs(p - p0) / p0 > 5e-5  # the mask really changes something (a random tiny model is near uniform)
    np.testing.assert_allclose(r["lens"], lens, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(r["apg"], lens - lens0, rtol=1e-4, atol=1e-8)
    assert r["answer"] == ans
    assert r["reference"]["p_answer"] == pytest.approx(p0, rel=1e-5)


def test_manual_selection_and_toggle(tiny_lm):
    panel = AblationPanel(tiny_lm, EX, presets=PRESETS)
    panel.set_experts(1, [3, 1, 3])
    panel.toggle(2, 6)
    panel.toggle(2, 0)
    panel.toggle(2, 6)
    assert panel.experts == {1: [1, 3], 2: [0]} and panel.preset == "(custom)"
    r = panel.update()
    p, _, _ = direct(tiny_lm, EX, {1: [1, 3], 2: [0]})
    assert r["p_answer"] == pytest.approx(p, rel=1e-5)
    panel.clear()
    assert panel.experts == {} and panel.update()["apg"].tolist() == [0.0] * tiny_lm.spec.n_layers
    with pytest.raises(KeyError):
        panel.apply_preset("nope")
    with pytest.raises(KeyError):
        panel.set_experts(99, [0])


def test_invalid_selection_reports_error(tiny_lm):
    panel = AblationPanel(tiny_lm, EX)
    hooks = n_hooks(tiny_lm)
    panel.set_experts(0, range(tiny_lm.spec.n_experts))  # every expert: nothing left to route to
    r = panel.update()
    assert r["error"] and "top_k" in r["error"]
    assert r["answer"] is None and np.isnan(r["apg"]).all()
    assert "error" in panel.summary()
    assert n_hooks(tiny_lm) == hooks
    panel.mode = "zero"  # the same set is valid when experts are only zeroed
    assert panel.update()["error"] is None
    panel.set_experts(0, [0, 99])  # id out of range
    panel.mode = "reroute"
    assert panel.update()["error"]
    bad = AblationPanel(tiny_lm, EX, presets={"dense": {7: [0]}})  # layer 7 does not exist
    assert bad.run_preset("dense")["error"]


def _click(fig, trace: int, points: list[int], event: str = "plotly_click") -> None:
    """Deliver the message plotly.js sends on a click / box selection to a FigureWidget."""
    fig._js2py_pointsCallback = {
        "event_type": event, "device_state": None, "selector": None,
        "points": {"trace_indexes": [trace] * len(points), "point_indexes": list(points),
                   "xs": [0] * len(points), "ys": [0] * len(points)}}


def test_board_clicks_drive_the_one_state(tiny_lm):
    pytest.importorskip("anywidget")
    panel = AblationPanel(tiny_lm, EX, presets=PRESETS)
    panel.widget()
    c, E, layers = panel.controls, tiny_lm.spec.n_experts, list(tiny_lm.spec.moe_layers)
    board = c["board"]
    assert len(board.data[0].x) == len(layers) * E and list(board.data[1].x) == []
    ref = panel.result["p_answer"]
    assert panel.result["preset"] == "none" and fmt_p(ref) in c["status"].value

    _click(board, 0, [1 * E + 5])  # row 1 = second MoE layer, expert 5
    assert panel.experts == {layers[1]: [5]} and c["preset"].value == "(custom)"
    assert list(board.data[1].x) == [5] and list(board.data[1].y) == [1]
    p, _, _ = direct(tiny_lm, EX, {layers[1]: [5]})
    assert panel.result["p_answer"] == pytest.approx(p, rel=1e-5) and fmt_p(p) in c["status"].value

    _click(board, 0, [0 * E + 1, 0 * E + 2, 1 * E + 5], "plotly_selected")  # a box: not all masked -> mask all
    assert panel.experts == {layers[0]: [1, 2], layers[1]: [5]}
    _click(board, 0, [0 * E + 1, 0 * E + 2], "plotly_selected")  # all masked -> unmask
    assert panel.experts == {layers[1]: [5]}

    c["preset"].value = "A"  # a preset replaces the selection; every control follows
    assert panel.result["experts"] == PRESETS["A"] and len(board.data[1].x) == sum(map(len, PRESETS["A"].values()))
    c["mode"].value = "zero"
    p, _, _ = direct(tiny_lm, EX, PRESETS["A"], "zero")
    assert panel.result["mode"] == "zero" and panel.result["p_answer"] == pytest.approx(p, rel=1e-5)
    c["mode"].value = "reroute"

    valid = panel.result
    _click(board, 2, [0])  # the row header of the first layer: every expert -> invalid under reroute
    r = panel.result
    assert r["error"] and "top_k" in r["error"] and panel.experts[layers[0]] == list(range(E))
    assert "Cannot mask" in c["status"].value and "rl-stale" in c["status"].value  # last valid result, greyed
    apg = c["apg"]
    np.testing.assert_allclose(np.asarray(apg.data[2].y, dtype=float), valid["lens"])  # never zeros
    np.testing.assert_allclose(np.asarray(apg.data[0].y, dtype=float), valid["apg"])
    assert "cannot be masked" in apg.layout.title.text and apg.data[0].marker.color == "#b0b0b0"

    c["preset"].value = "none"  # "none" restores the unmasked probability and clears the error
    assert panel.result["error"] is None and panel.result["p_answer"] == ref
    assert list(board.data[1].x) == [] and "Cannot mask" not in c["status"].value
    np.testing.assert_allclose(np.asarray(apg.data[0].y, dtype=float), 0.0)


def test_script_changes_resync_the_controls(tiny_lm):
    """The notebook drives the shown panel from code; afterwards the page must not show a stale error."""
    pytest.importorskip("anywidget")
    panel = AblationPanel(tiny_lm, EX, presets=PRESETS)
    panel.widget()
    c = panel.controls
    panel.run_preset("A")
    assert c["preset"].value == "A" and len(c["board"].data[1].x) == 9
    panel.set_experts(tiny_lm.spec.moe_layers[0], range(tiny_lm.spec.n_experts))
    assert "Cannot mask" in c["status"].value and c["preset"].value == "(custom)"
    panel.clear()  # recomputes and redraws: no error left, no masked cell, preset "none"
    assert c["preset"].value == "none" and panel.result["error"] is None and panel.experts == {}
    assert "Cannot mask" not in c["status"].value and list(c["board"].data[1].x) == []
    panel.mode = "zero"
    assert c["mode"].value == "zero" and panel.result["mode"] == "zero"
    seen, answer = [], panel._answer

    def spy(model):  # p(answer) is on the page before the (slow) greedy decode starts
        seen.append(c["status"].value)
        return answer(model)

    panel._answer = spy
    panel.toggle(tiny_lm.spec.moe_layers[1], 3)
    assert "decoding" in seen[0] and fmt_p(panel.result['p_answer']) in seen[0]
    assert "decoding" not in c["status"].value and repr(panel.result["answer"]) in html.unescape(c["status"].value)


def test_received_tokens_and_colorings_match_counting(tiny_lm):
    counts = rl.count_experts(tiny_lm, [EX], span="prompt", with_answer=False)  # independent hooks
    base = rl.count_experts(tiny_lm, [EX, EX])
    panel = AblationPanel(tiny_lm, EX, presets=PRESETS, counts=counts, base_counts=base)
    r = panel.run_preset("A")
    usage = counts.counts.numpy()
    rows = {l: i for i, l in enumerate(counts.layers)}
    assert r["received"] == {l: {e: int(usage[rows[l], e]) for e in ids} for l, ids in PRESETS["A"].items()}
    col = panel.colorings()
    assert set(col) == {"usage", "CE rank", "usage change"}
    np.testing.assert_array_equal(col["usage"][0], usage)
    for i in range(usage.shape[0]):  # rank 1 is the most used expert of its layer
        assert usage[i, int(np.argmin(col["CE rank"][0][i]))] == usage[i].max()
        assert sorted(col["CE rank"][0][i]) == list(range(1, tiny_lm.spec.n_experts + 1))
    np.testing.assert_allclose(col["usage change"][0], (counts.frequencies() - base.frequencies()).numpy())

    class Attribution:  # any object with scores [L, E] and layer ids (rl.attribute_experts' result)
        layers = list(reversed(counts.layers))
        scores = torch.arange(usage.size, dtype=torch.float32).reshape(usage.shape)

    panel.set_attribution(Attribution())
    assert panel.state.coloring == "attribution"
    np.testing.assert_array_equal(panel.colorings()["attribution"][0], Attribution.scores.numpy()[::-1])
    Attribution.scores = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="do not fit"):
        panel.set_attribution(Attribution())
    with pytest.raises(TypeError):
        panel.set_attribution(object())
    with pytest.raises(ValueError, match="cannot colour"):
        AblationPanel(tiny_lm, EX).set_coloring("CE rank")


def test_batch_em_matches_evaluate_and_cancels(tiny_lm):
    data = [EX, rl.QAExample(context="Bob Jones lives in Rome.", question="Where does Bob Jones live?",
                             answers=["Rome"]), rl.QAExample(context="Carl is 7.", question="How old is Carl?",
                                                             answers=["7"])] * 2
    with rl.mask_experts(tiny_lm, PRESETS["A"]):  # two gold answers the masked model gives: EM is not always 0
        own = generate(tiny_lm, data[:2], max_new_tokens=8)
    data[0] = rl.QAExample(context=EX.context, question=EX.question, answers=[own[0] or "x"])
    data[3] = rl.QAExample(context=data[1].context, question=data[1].question, answers=[own[1] or "x"])
    panel = AblationPanel(tiny_lm, data=data, presets=PRESETS, max_new_tokens=8)
    assert panel.example is data[0] and panel.state.example == 0
    panel.apply_preset("A")
    seen = []
    b = panel.run_batch(5, chunk=2, on_progress=lambda done, n: seen.append((done, n)))
    with rl.mask_experts(tiny_lm, PRESETS["A"]):
        em = rl.evaluate(tiny_lm, data[:5], max_new_tokens=8)["em"]
    assert seen == [(2, 5), (4, 5), (5, 5)] and not b["running"] and not b["cancelled"]
    assert b["predictions"][0] == own[0] and b["em"] >= 20.0
    assert b["em"] == pytest.approx(em) and b["em_reference"] == pytest.approx(rl.evaluate(tiny_lm, data[:5], max_new_tokens=8)["em"])
    b = panel.run_batch(6, chunk=2, on_progress=lambda done, n: panel.cancel())
    assert b["cancelled"] and b["done"] == 2
    panel.set_experts(0, range(tiny_lm.spec.n_experts))
    assert panel.run_batch(2)["error"]
    if importlib.util.find_spec("anywidget"):  # the button runs it in a thread; the page follows its progress
        panel.apply_preset("A")
        panel.widget()
        c = panel.controls
        c["progress"].max = 0
        panel.view.batch_n.value = 3
        c["batch_run"].click()
        end = time.time() + 120
        while panel.state.batch["running"] and time.time() < end:
            time.sleep(0.05)
        assert panel.state.batch["done"] == 3 and c["progress"].value == c["progress"].max == 3
        assert f"EM {panel.state.batch['em']:.1f} masked" in panel.view.batch_out.value
        assert not c["batch_run"].disabled and c["batch_cancel"].disabled
        panel.view = None
    panel.set_example(2)
    assert panel.example is data[2] and panel.result is None
    free = rl.QAExample(context="Dana was born in Oslo.", question="Where was Dana born?", answers=["Oslo"])
    panel.set_example(free)
    assert panel.state.example is None and panel.update()["gold"] == ["Oslo"]
    with pytest.raises(ValueError, match="answer"):
        panel.set_example(rl.QAExample(context="x", question="y", answers=[]))
    with pytest.raises(IndexError):
        panel.set_example(99)


class ScaleRouter:
    """A stand-in adapter: scales every router weight while applied."""

    def __init__(self, factor):
        self.factor = factor

    @contextmanager
    def applied(self, lm):
        gates = [lm.spec.router(lm.hf, l).weight for l in lm.spec.moe_layers]
        saved = [g.detach().clone() for g in gates]
        with torch.no_grad():
            for g in gates:
                g.mul_(self.factor)
        try:
            yield self
        finally:
            with torch.no_grad():
                for g, s in zip(gates, saved):
                    g.copy_(s)


def test_tuned_adapter_is_applied(tiny_lm):
    adapter = ScaleRouter(-3.0)
    panel = AblationPanel(tiny_lm, EX, presets=PRESETS, tuned=adapter)
    r = panel.run_preset("B")
    with adapter.applied(tiny_lm):
        p_ref, lens_ref, _ = direct(tiny_lm, EX)
        p, lens, _ = direct(tiny_lm, EX, PRESETS["B"])
    assert r["reference"]["p_answer"] == pytest.approx(p_ref, rel=1e-5)
    assert r["p_answer"] == pytest.approx(p, rel=1e-5)
    np.testing.assert_allclose(r["apg"], lens - lens_ref, rtol=1e-4, atol=1e-8)
    p_base, _, _ = direct(tiny_lm, EX, PRESETS["B"])  # and the adapter is gone afterwards
    assert abs(p_base - p) / p > 1e-4
    with pytest.raises(TypeError):
        AblationPanel(tiny_lm, EX, tuned=object()).update()


def test_default_presets_and_describe(tiny_lm):
    data = [EX, rl.QAExample(context="Bob Jones lives in Rome.", question="Where does Bob Jones live?",
                             answers=["Rome"])]
    pre = default_presets(tiny_lm, data, n=2, tuned=ScaleRouter(2.0))
    assert set(pre) == {"CEs", "random", "base top"}
    for name, s in pre.items():
        assert s.layers == list(tiny_lm.spec.moe_layers) and all(len(v) == 2 for _, v in s.items()), name
    assert not (pre["CEs"].pairs() & pre["random"].pairs())
    counts = rl.count_experts(tiny_lm, data)
    assert pre["base top"] == rl.select_experts(counts, n=2)
    panel = AblationPanel.from_data(tiny_lm, data, n=2, tuned=ScaleRouter(2.0), seed=0)  # the same sets
    assert {k: v for k, v in panel.presets.items() if k != "none"} == {k: dict(v.items()) for k, v in pre.items()}
    assert set(panel.colorings()) == {"usage", "CE rank", "usage change"} and panel.example is data[0]
    panel.apply_preset("random")
    panel.set_seed(5)  # the random preset is re-drawn, and the selection follows it
    redrawn = rl.random_experts(2, tiny_lm.spec.moe_layers, tiny_lm.spec.n_experts, exclude=pre["CEs"], seed=5)
    assert panel.presets["random"] == dict(redrawn.items()) and panel.experts == dict(redrawn.items())
    with pytest.raises(ValueError, match="random preset"):
        AblationPanel(tiny_lm, EX).set_seed(1)
    panel = AblationPanel(tiny_lm, EX, presets=pre)
    a, b = panel.run_preset("none"), panel.run_preset("random")
    text = describe_change(a, b)
    assert "[none] → [random]" in text and "p(answer)" in text


def test_notebooks_match_their_generator_and_hold_no_outputs():
    """notebooks/*.ipynb are written by notebooks/_build.py (outputs stripped); hand edits or saved outputs fail."""
    import importlib.util
    import json

    build = Path(__file__).parent.parent / "notebooks" / "_build.py"
    if not build.exists():
        pytest.skip("no notebooks/ in this checkout")
    spec = importlib.util.spec_from_file_location("_nb_build", build)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.stale() == [], "run `.venv/bin/python notebooks/_build.py` and commit the notebooks"
    for fname, text in mod.notebooks().items():
        nb = json.loads(text)
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c["outputs"] and c["execution_count"] is None for c in code), fname
        assert nb["cells"][0]["cell_type"] == "markdown" and nb["cells"][-2]["cell_type"] == "markdown", fname
        assert "found" in "".join(nb["cells"][-2]["source"]).lower(), fname


def test_widget_without_anywidget_still_computes(tiny_lm, monkeypatch):
    """Without anywidget (plotly's FigureWidget) the panel still shows its numbers, with no board."""
    ipywidgets = pytest.importorskip("ipywidgets")
    import plotly.graph_objects as go

    def missing(*a, **k):
        raise ImportError("Please install anywidget to use the FigureWidget class")

    monkeypatch.setattr(go, "FigureWidget", missing)
    panel = AblationPanel(tiny_lm, EX, presets=PRESETS)
    assert isinstance(panel.widget(), ipywidgets.VBox) and panel.controls["board"] is None
    panel.controls["preset"].value = "A"
    assert panel.result["experts"] == PRESETS["A"] and fmt_p(panel.result['p_answer']) in panel.controls["status"].value


def test_figure_never_draws_an_error_as_zero(tiny_lm):
    panel = AblationPanel(tiny_lm, EX)
    panel.set_experts(0, range(tiny_lm.spec.n_experts))
    fig = panel.figure(panel.update())  # no valid result yet: nothing drawn for the masked model
    assert np.isnan(np.asarray(fig.data[0].y, dtype=float)).all() and np.isnan(np.asarray(fig.data[2].y, dtype=float)).all()
    np.testing.assert_allclose(np.asarray(fig.data[1].y, dtype=float), panel.result["reference"]["lens"])


def test_granitemoe_panel_probability_equals_plain_forward(tmp_path):
    """GraniteMoE divides its logits by logits_scaling inside forward: the panel must not divide again."""
    import transformers as tf

    cfg = tiny.configs()["granitemoe"]
    cfg.logits_scaling = 4.0
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    model.save_pretrained(tmp_path)
    tiny.tokenizer().save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = rl.load(str(tmp_path))
    assert lm.spec.logit_scale == ("divide", 4.0)
    r = AblationPanel(lm, EX).update()
    enc = lm.encode(EX)
    with torch.no_grad():
        p = lm.hf(input_ids=enc.input_ids[None]).logits[0, enc.last_prompt].float().softmax(-1)[int(enc.answer_ids[0])]
    assert r["p_answer"] == pytest.approx(float(p), rel=1e-5)
    assert r["lens"][-1] == pytest.approx(float(p), rel=1e-4)  # the lens applies the scaling exactly once
