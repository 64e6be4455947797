"""Exact-where-it-matters attribution, SteerMoE's risk difference and REAP's score, each against an
independent computation: masking by hand, counts from ``lm.trace`` routing, expert outputs recomputed by
calling each expert's weights directly."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import routerlens_interp as rl
from routerlens_interp.ces import risk_difference, steermoe_sets
from routerlens_interp.ces.objective import build_items, mean_metric
from routerlens_interp.ces.verify import cost
from routerlens_interp.errors import UserError
from test_ces import DATA, olmoe  # noqa: F401  (the fixture: a tiny OLMoE with weights that matter)




def test_verify_is_exact_zero_masking_of_the_top(olmoe):
    lm = olmoe
    K = 4
    plain = rl.attribute_experts(lm, DATA, batch_size=2)
    ver = rl.attribute_experts(lm, DATA, batch_size=2, verify=K)
    assert ver.kind == "attribution_verified"
    top = plain.top(K)
    assert ver.meta["verified"] == [[l, e] for l, e, _ in top]
    assert ver.meta["estimate_verified"] == pytest.approx([v for _, _, v in top])
    items = build_items(lm, DATA)
    base = mean_metric(lm, items, batch_size=3)
    diffs = 0
    for l, e, est in top:
        with rl.mask_experts(lm, {l: [e]}, mode="zero"):
            exact = base - mean_metric(lm, items, batch_size=3)
        assert float(ver.row(l)[e]) == pytest.approx(exact, abs=1e-5)
        diffs += abs(exact - est) > 1e-3  # the estimate really was replaced
    assert diffs >= 1
    rest = torch.ones_like(plain.scores, dtype=torch.bool)
    for l, e, _ in top:
        rest[plain.layers.index(l), e] = False
    assert torch.equal(ver.scores[rest], plain.scores[rest])
    c = ver.meta["cost"]
    L, E = plain.scores.shape
    assert (c["forward"], c["backward"], c["exhaustive"]) == (K + 2, 1, L * E + 1)
    assert cost(L, E, 0)["forward"] == 1
    with pytest.raises(UserError, match="verify"):
        rl.attribute_experts(lm, DATA, verify=L * E + 1)


@pytest.mark.parametrize("pairing", ["context", "faithful"])
def test_risk_difference_equals_hand_count_from_trace(olmoe, pairing):
    lm = olmoe
    rd = risk_difference(lm, DATA, pairing=pairing, batch_size=2)
    if pairing == "context":
        one, two = DATA, [replace(ex, context="") for ex in DATA]
    else:
        one, two = DATA, [replace(ex, answers=[ex.memory_answer]) for ex in DATA]
    E = lm.spec.n_experts
    rates = []
    for data in (one, two):
        tr = lm.trace(data, attention=False, lens=False, with_answer=True, batch_size=1)  # no padding
        c = torch.zeros(len(lm.spec.moe_layers), E)
        n = 0
        for b, enc in enumerate(tr.encoded):
            n += len(enc.answer)
            for r, l in enumerate(lm.spec.moe_layers):
                for pos in enc.answer.tolist():
                    for e in tr.routing[l].indices[b][pos].tolist():
                        c[r, int(e)] += 1
        rates.append(c.double() / n)
    assert torch.allclose(rd.scores, rates[0] - rates[1])
    assert float(rd.scores.abs().sum()) > 0
    assert rd.meta["n1"] == sum(len(lm.encode(ex, with_answer=True).answer) for ex in one)


def test_steermoe_sets_rule():
    from routerlens_interp.ces.scores import ExpertScores

    s = torch.tensor([[0.5, 0.4, 0.3, -0.1, 0.0, -0.6], [0.45, -0.2, 0.2, -0.7, 0.1, 0.0]], dtype=torch.float64)
    rd = ExpertScores(s, [1, 3], "risk_difference", "selection_rate", 4, 2)
    act, deact = steermoe_sets(rd, n_activate=4, n_deactivate=3)
    # 0.5, 0.45, 0.4 (layer 1 now has k=2), 0.3 skipped (layer 1 full), 0.2 → layer 3
    assert act.to_dict()["experts"] == {"1": [0, 1], "3": [0, 2]}
    assert deact.to_dict()["experts"] == {"1": [5], "3": [1, 3]}
    act, _ = steermoe_sets(rd, n_activate=10)
    assert len(act) == 4  # at most k per layer
    with pytest.raises(UserError):
        steermoe_sets(rd, n_activate=-1)


def test_risk_difference_refusals(olmoe):
    with pytest.raises(UserError, match="same prompt"):
        risk_difference(olmoe, DATA, pairing="faithful", span="last")
    with pytest.raises(UserError, match="memory answer"):
        risk_difference(olmoe, [rl.QAExample("ctx", "q?", ["a"])], pairing="faithful")


def test_reap_equals_expert_outputs_by_hand(olmoe):
    """REAP from the experts' own weights: f_e(x) = down(act(gate x) · up x) of OLMoE's experts, recomputed
    at each token's input to the MoE block."""
    lm = olmoe
    s = lm.spec
    got = rl.reap_scores(lm, DATA[:2], batch_size=2)
    L, E = len(s.moe_layers), s.n_experts
    sums, cnt = torch.zeros(L, E, dtype=torch.float64), torch.zeros(L, E, dtype=torch.float64)
    seen = {}
    handles = []
    for r, l in enumerate(s.moe_layers):
        def pre(m, args, kwargs, r=r):
            vals = list(args) + list(kwargs.values())
            seen[r] = (vals[0].detach().reshape(-1, s.hidden_size), vals[1].detach(), vals[2].detach())
        handles.append(s.experts(lm.hf, l).register_forward_pre_hook(pre, with_kwargs=True))
    try:
        for ex in DATA[:2]:
            enc = lm.encode(ex)
            with torch.no_grad():
                lm.hf(enc.input_ids[None])
            for r, l in enumerate(s.moe_layers):
                x, idx, w = seen[r]
                mod = s.experts(lm.hf, l)
                for t in range(enc.prompt_len):
                    for j in range(idx.shape[-1]):
                        e = int(idx[t, j])
                        with torch.no_grad():
                            gate, up = (mod.gate_up_proj[e] @ x[t]).chunk(2)
                            y = mod.down_proj[e] @ (mod.act_fn(gate) * up)
                        sums[r, e] += float(w[t, j]) * float(y.norm())
                        cnt[r, e] += 1
    finally:
        for h in handles:
            h.remove()
    want = torch.where(cnt > 0, sums / cnt.clamp(min=1), torch.zeros_like(sums))
    assert torch.allclose(got.scores, want, rtol=1e-4, atol=1e-6)
    assert got.meta["n_routed"] == cnt.long().tolist()


def test_cli_risk_reap_verify_and_steer(tmp_path, capsys):
    """The CLI commands write what the API computes (bundled model, 4 examples)."""
    import json

    from routerlens_interp.cli import main

    a, d, o = tmp_path / "act.json", tmp_path / "deact.json", tmp_path / "rd.safetensors"
    common = ["--model", "toy", "--data", "toy-conflict", "--limit", "4", "--json"]
    assert main(["risk", *common, "--out", str(o), "--activate-out", str(a), "--deactivate-out", str(d),
                 "--n-activate", "3", "--n-deactivate", "5"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    lm = rl.load("toy")
    data = rl.load_dataset("toy-conflict", split="test", limit=4)
    rd = risk_difference(lm, data)
    assert torch.equal(rl.ExpertScores.load(o).scores, rd.scores)
    act, dea = steermoe_sets(rd, 3, 5)
    assert rl.ExpertSet.load(a) == act and rl.ExpertSet.load(d) == dea and len(act) == 3 and len(dea) == 5
    assert got["activate"] == json.loads(act.to_json())["experts"]

    assert main(["reap", *common, "--out", str(tmp_path / "reap.safetensors")]) == 0
    capsys.readouterr()
    assert torch.allclose(rl.ExpertScores.load(tmp_path / "reap.safetensors").scores, rl.reap_scores(lm, data).scores)

    assert main(["attribute", *common, "--limit", "2", "--verify", "3", "--out", str(tmp_path / "att.safetensors")]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(got["verified"]) == 3 and got["cost"]["forward"] == 5

    assert main(["steer", *common, "--experts", str(a), "--deactivate", str(d), "--betas", "-2,0,in"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["beta"] for r in got["rows"]] == [-2.0, 0.0, "in"]
    with rl.force_experts(lm, activate=act, deactivate=dea):
        want = rl.evaluate(lm, data)["em"]
    assert got["rows"][2]["em"] == pytest.approx(want)
