"""Context-faithful experts without training: attribution, exact effects, routing contrast, steering —
each checked against an independent computation (finite differences, masking by hand, plain traces,
plain PyTorch hooks on the experts' inputs)."""
from __future__ import annotations

import warnings

import pytest
import torch

import families
import routerlens_interp as rl
from routerlens_interp.arch import NotMoEError
from routerlens_interp.ces import ExpertScores, spearman
from routerlens_interp.ces.objective import build_items, mean_metric
from routerlens_interp.errors import UserError
from routerlens_interp.hooks import RerouteUnavailable, check_reroute

DATA = [  # context and memory answers start with different tokens of the tiny tokenizer (" b" / " ", " A" / " ")
    rl.QAExample("Alice Smith was born in 1950 in Paris. She works as a baker.", "What does Alice Smith do?",
                 ["baker"], memory_answer="painter"),
    rl.QAExample("Bob Jones lives in Rome and is a painter born in 1972.", "Who lives in Rome?", ["Bob Jones"],
                 memory_answer="Alice Smith"),
    rl.QAExample("Alice Smith works as a baker in Paris.", "Who works as a baker?", ["Alice Smith"],
                 memory_answer="Bob Jones"),
]


@pytest.fixture(scope="module")
def olmoe(load_tiny):
    """A tiny OLMoE whose weights are large enough (std 1/√fan-in) that experts change the answer's log-probs."""
    lm = load_tiny("olmoe", fresh=True)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in lm.hf.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return lm


@pytest.mark.parametrize("tokens", ["first", "all"])
def test_attribution_equals_finite_difference(olmoe, tokens):
    lm = olmoe
    att = rl.attribute_experts(lm, DATA, metric="faithfulness", tokens=tokens, batch_size=2)
    items = build_items(lm, DATA, "faithfulness", tokens)
    base = mean_metric(lm, items)
    assert att.base == pytest.approx(base, abs=1e-4)
    eps = 1e-3
    l = lm.spec.moe_layers[-1]
    checked = 0
    for l, e, est in att.top(3) + [(lm.spec.moe_layers[0], 0, None)]:
        # scale the routing weights of expert e by (1 − ε): Δm / ε → the drop that zero-masking would give
        def edit(idx, w, e=e):
            return torch.where(idx == e, w * (1 - eps), w)
        with lm.hooks.edit(f"blocks.{l}.experts.hook_route", edit):
            m = mean_metric(lm, items)
        fd = (base - m) / eps
        got = float(att.row(l)[e])
        assert got == pytest.approx(fd, rel=0.05, abs=2e-3), (l, e, got, fd)
        checked += abs(fd) > 1e-2
    assert checked >= 2  # the comparison is not between zeros


def test_faithfulness_is_context_minus_memory(olmoe):
    lm = olmoe
    ex = DATA[0]
    enc = lm.encode(ex)
    with torch.no_grad():
        logp = lm.hf(enc.input_ids[None]).logits[0, enc.last_prompt].float().log_softmax(-1)
    ctx = lm.tokenizer(" baker", add_special_tokens=False)["input_ids"][0]
    mem = lm.tokenizer(" painter", add_special_tokens=False)["input_ids"][0]
    assert ctx != mem
    assert mean_metric(lm, build_items(lm, [ex])) == pytest.approx(float(logp[ctx] - logp[mem]), abs=1e-4)
    with pytest.raises(UserError, match="memory answer"):
        rl.attribute_experts(lm, [rl.QAExample("c", "q", ["a"])])


@pytest.mark.parametrize("mode", ["zero", "reroute"])
def test_effects_equal_masking_by_hand(olmoe, mode):
    lm = olmoe
    pairs = [(lm.spec.moe_layers[0], 1), (lm.spec.moe_layers[-1], 5)]
    eff = rl.expert_effects(lm, DATA, experts=pairs, mode=mode, metric="answer", batch_size=2)
    items = build_items(lm, DATA, "answer")
    base = mean_metric(lm, items, batch_size=3)
    for l, e in pairs:
        with rl.mask_experts(lm, {l: [e]}, mode=mode):
            m = mean_metric(lm, items, batch_size=3)
        assert float(eff.row(l)[e]) == pytest.approx(base - m, abs=1e-5)
        assert eff.measured[lm.spec.moe_layers.index(l), e]
        assert abs(base - m) > 1e-4
    assert int(eff.measured.sum()) == 2 and float(eff.scores[~eff.measured].abs().sum()) == 0


def test_scores_round_trip_and_select(olmoe, tmp_path):
    att = rl.attribute_experts(olmoe, DATA)
    att.save(tmp_path / "a.safetensors")
    back = ExpertScores.load(tmp_path / "a.safetensors")
    assert torch.equal(back.scores, att.scores) and back.layers == att.layers and back.base == att.base
    ces = rl.select_experts(back, n=2)
    for r, l in enumerate(att.layers):
        assert ces[l] == sorted(att.scores[r].topk(2).indices.tolist())
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError):
        ExpertScores.load(tmp_path / "bad.safetensors")
    assert spearman(torch.tensor([1., 2, 3, 4]), torch.tensor([10., 20, 25, 100])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1., 2, 3]), torch.tensor([3., 2, 1])) == pytest.approx(-1.0)


def test_contrast_counts_equal_two_traces(olmoe):
    lm = olmoe
    con = rl.routing_contrast(lm, DATA, batch_size=2)
    closed = [rl.QAExample("", ex.question, ex.answers) for ex in DATA]
    E = lm.spec.n_experts
    for key, data, span in (("open_last", DATA, "last"), ("closed_last", closed, "last"),
                            ("open_context", DATA, "context"), ("closed_prompt", closed, "prompt")):
        tr = lm.trace(data, attention=False, lens=False, batch_size=1)  # one example per forward: no padding
        expected = torch.zeros(len(lm.spec.moe_layers), E, dtype=torch.long)
        for r, l in enumerate(lm.spec.moe_layers):
            for b, enc in enumerate(tr.encoded):
                pos = torch.tensor([enc.last_prompt]) if span == "last" else enc.span(span)
                expected[r] += torch.bincount(tr.routing[l].indices[b][pos].reshape(-1).long(), minlength=E)[:E]
        assert torch.equal(con.counts[key], expected), key
    n = len(DATA)
    assert torch.allclose(con.last.scores, (con.counts["open_last"] - con.counts["closed_last"]).double() / n)
    assert torch.allclose(con.last.scores.sum(dim=1), torch.zeros(len(lm.spec.moe_layers), dtype=torch.float64))


# --------------------------------------------------------------------------- steering, on every family
CASES = families.cases()
_BUILT: dict = {}


def _family_lm(name):
    if name not in _BUILT:
        case = CASES[name]
        if case.unsupported:
            _BUILT[name] = None
        else:
            import tiny
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    _BUILT[name] = rl.from_hf(families.build(case), tiny.tokenizer(), name=name)
                except NotMoEError:
                    _BUILT[name] = None
    if _BUILT[name] is None:
        pytest.skip("family not supported")
    return _BUILT[name]


def _expert_inputs(lm):
    """Plain PyTorch hooks (not the hook layer): the expert ids each token gets, per MoE layer."""
    s, seen, handles = lm.spec, {l: [] for l in lm.spec.moe_layers}, []
    for l in s.moe_layers:
        if s.experts_io == "dense_scores":
            handles.append(s.router(lm.hf, l).register_forward_hook(
                lambda m, a, out, l=l: seen[l].append(out[0].topk(s.top_k, dim=-1).indices.detach().clone())))
        else:
            def pre(m, args, kwargs, l=l):
                vals = list(args[1:3]) + [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
                seen[l].append(vals[0].detach().clone())
            handles.append(s.experts(lm.hf, l).register_forward_pre_hook(pre, with_kwargs=True))
    return seen, handles


@pytest.mark.parametrize("name", sorted(CASES))
def test_boost_zero_identical_and_large_selects(name):
    lm = _family_lm(name)
    s = lm.spec
    ids = torch.tensor([lm.tokenizer(DATA[0].context)["input_ids"]])
    refused = check_reroute(lm)
    ok = [l for l in s.moe_layers if l not in refused]
    if refused:
        with pytest.raises(RerouteUnavailable, match=s.family):
            with rl.boost_experts(lm, {next(iter(refused)): [0]}, 1.0):
                pass
    if not ok:
        pytest.skip(f"reroute refused: {next(iter(refused.values()))}")
    seen, handles = _expert_inputs(lm)
    try:
        with torch.no_grad():
            ref = lm.hf(ids).logits
        # boost the k experts each layer used least, so that a large β must change every token's choice
        boost = {}
        for l in ok:
            used = torch.bincount(seen[l][0].reshape(-1).long(), minlength=s.n_experts)[:s.n_experts]
            boost[l] = sorted(used.argsort(stable=True)[:s.top_k].tolist())
        with rl.boost_experts(lm, boost, 0.0), torch.no_grad():
            zero = lm.hf(ids).logits
        assert torch.equal(zero, ref), "beta = 0 changed the output"
        for l in seen:
            seen[l].clear()
        with rl.boost_experts(lm, boost, 1e4), torch.no_grad():
            big = lm.hf(ids).logits
        for l in ok:
            chosen = seen[l][0].reshape(-1, seen[l][0].shape[-1]).long()
            assert all(sorted(r.tolist()) == boost[l] for r in chosen), f"layer {l}: boosted experts not all chosen"
        assert not torch.equal(big, ref)
        with torch.no_grad():
            assert torch.equal(lm.hf(ids).logits, ref)  # undone on exit
    finally:
        for h in handles:
            h.remove()


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    from routerlens_interp.cli.commands import main

    (tmp_path / "e.json").write_text('{"0": [1]}')
    assert main(["steer", "--data", "toy-conflict", "--experts", str(tmp_path / "e.json"), "--betas", "0,x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--betas" in err and len(err.splitlines()) == 1
    assert main(["steer", "--data", "toy-conflict", "--experts", str(tmp_path / "missing.json")]) == 2
    assert "no experts file" in capsys.readouterr().err
