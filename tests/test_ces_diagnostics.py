"""benchmarks/ces_steering_diagnostics.py: the route-gain score against finite differences on a tiny OLMoE,
and the answer-position edit against the rows it must (and must not) touch."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from routerlens_interp.ces.objective import build_items, mean_metric
from test_ces import DATA, olmoe  # noqa: F401  (the fixture)

_path = Path(__file__).resolve().parents[1] / "benchmarks" / "ces_steering_diagnostics.py"
_spec = importlib.util.spec_from_file_location("ces_steering_diagnostics", _path)
diag = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(diag)


def test_route_gain_equals_finite_difference(olmoe):
    """gain[l, e] = d/dδ of the mean faithfulness when δ·f_e(x_t) is added to layer l's MoE output at every token."""
    lm = olmoe
    gain = diag.route_gain(lm, DATA, batch_size=2)
    items = build_items(lm, DATA, "faithfulness", "first")
    base = mean_metric(lm, items)
    delta, checked = 1e-3, 0
    l0 = lm.spec.moe_layers[0]
    picks = [(l, e) for l, e, _ in gain.top(2)] + [(l0, int(gain.row(l0).argmin()))]
    for l, e in picks:
        mod = lm.spec.experts(lm.hf, l)

        def add(module, args, kwargs, output, e=e):
            hid = args[0].reshape(-1, args[0].shape[-1])
            T = hid.shape[0]
            one = module.forward(hid, torch.full((T, 1), e, dtype=args[1].dtype), torch.ones(T, 1, dtype=args[2].dtype))
            return output + delta * one.reshape(output.shape)

        h = mod.register_forward_hook(add, with_kwargs=True)
        try:
            m = mean_metric(lm, items)
        finally:
            h.remove()
        fd = (m - base) / delta
        got = float(gain.row(l)[e])
        assert got == pytest.approx(fd, rel=0.05, abs=2e-3), (l, e, got, fd)
        checked += abs(fd) > 1e-2
    assert checked >= 2  # the comparison is not between zeros
    # the score leaves the model as it was: no hook left behind, the metric unchanged
    assert mean_metric(lm, items) == pytest.approx(base, abs=1e-6)


def test_answer_positions_edit_only_the_predicting_row():
    fn = diag.at_answer_positions(lambda x: x + 1.0)
    prefill = torch.zeros(5, 4)
    out = diag.at_answer_positions(lambda x: x + 1.0)(prefill)
    assert torch.equal(out[:-1], prefill[:-1]) and torch.equal(out[-1], torch.ones(4))
    assert torch.equal(fn(torch.zeros(1, 4)), torch.ones(1, 4))  # a decoding step: its one row
    assert torch.equal(prefill, torch.zeros(5, 4))  # the input is not edited in place
