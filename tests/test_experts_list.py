"""Unit checks of the ModuleList-experts machinery that need no model: the weight-follow rule of the routing
tap's observer, the CEFT adapter index of per-expert tensors, and the family report's remote-code rows."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


def test_report_counts_only_transformers_families():
    import family_report

    report = {"results": {"olmoe": {k: "ok" for k, _ in family_report.STAGES},
                          "minicpm (remote code)": {k: "ok" for k, _ in family_report.STAGES}},
              "cases": {"olmoe": {"routing": "softmax_topk"}, "minicpm (remote code)": {"routing": "softmax_topk"}}}
    text = family_report.render(report)
    assert text.startswith("1 of 1 MoE families") and "| minicpm (remote code) | softmax_topk |" in text


def test_weights_are_followed_from_the_topk():
    """The route follows the top-k values through the family's operations (and a gather at the chosen indices),
    ignoring [T, k] tensors that do not derive from them."""
    from types import SimpleNamespace

    from routerlens_interp.hooks.experts_list import ListRoute

    hl = SimpleNamespace(spec=SimpleNamespace(n_experts=6, top_k=2, hidden_size=4))
    r = ListRoute(hl, 0, "blocks.0.experts.hook_route")
    r.state = {}
    scores = torch.rand(5, 6)
    top = torch.topk(scores, 2, dim=-1)
    r.observe(torch.topk, (scores, 2), top)
    assert r.state["idx"] is top.indices and r.state["w"] is top.values
    other = torch.rand(5, 2)
    r.observe(torch.add, (other, 1.0), other + 1)  # unrelated [T, k]: not followed
    assert r.state["w"] is top.values
    w2 = top.values / top.values.sum(-1, keepdim=True)
    r.observe(torch.Tensor.__truediv__, (top.values, None), w2)
    assert r.state["w"] is w2
    g = scores.gather(1, top.indices) * 2
    r.observe(torch.gather, (scores * 2, 1, top.indices), g)
    assert r.state["w"] is g


def test_ceft_adapter_index_checks_per_expert_tensors(tmp_path):
    """A CEFT adapter of per-expert tensors must name experts, and exactly the manifest's, like sliced ones."""
    from routerlens_interp.errors import IntegrityError
    from routerlens_interp.train.adapters import _check_index

    t = {f"model.layers.1.mlp.experts.{e}.w1.weight": torch.zeros(2, 2) for e in (2, 5)}
    _check_index(t, {k: None for k in t}, {"method": "ceft", "experts": {"1": [2, 5]}}, tmp_path)
    with pytest.raises(IntegrityError, match="manifest lists experts"):
        _check_index(t, {k: None for k in t}, {"method": "ceft", "experts": {"1": [2]}}, tmp_path)
    fused = {"model.layers.1.mlp.experts.gate_up_proj": torch.zeros(2, 2)}
    with pytest.raises(IntegrityError, match="is neither"):
        _check_index(fused, {k: None for k in fused}, {"method": "ceft", "experts": {"1": [0]}}, tmp_path)
