"""Steering by deactivation and by forcing experts in / out of the top-k, on every family: checked with
plain PyTorch hooks on the experts' inputs (not the hook layer), token by token."""
from __future__ import annotations

import pytest
import torch

import routerlens_interp as rl
from routerlens_interp.ces.force import force_edit
from routerlens_interp.errors import UserError
from routerlens_interp.hooks import RerouteUnavailable, check_reroute
from test_ces import CASES, DATA, _family_lm


def _route_inputs(lm):
    """Plain hooks: per MoE layer a list of ``(indices [T, k], weights [T, k])`` the experts received."""
    s, seen, handles = lm.spec, {l: [] for l in lm.spec.moe_layers}, []
    for l in s.moe_layers:
        if s.experts_io == "dense_scores":
            def post(m, a, out, l=l):
                w, i = out[0].topk(s.top_k, dim=-1)
                seen[l].append((i.detach().clone(), w.detach().clone()))
            handles.append(s.router(lm.hf, l).register_forward_hook(post))
        else:
            def pre(m, args, kwargs, l=l):
                vals = list(args[1:3]) + [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
                seen[l].append((vals[0].detach().clone(), vals[1].detach().clone()))
            handles.append(s.experts(lm.hf, l).register_forward_pre_hook(pre, with_kwargs=True))
    return seen, handles


def _run(lm, ids, ctx=None):
    seen, handles = _route_inputs(lm)
    try:
        with torch.no_grad():
            if ctx is None:
                logits = lm.hf(ids).logits
            else:
                with ctx:
                    logits = lm.hf(ids).logits
    finally:
        for h in handles:
            h.remove()
    return logits, {l: (v[0][0].reshape(-1, v[0][0].shape[-1]).long(), v[0][1].reshape(-1, v[0][1].shape[-1]))
                    for l, v in seen.items()}


def _sorted_route(idx, w):
    o = idx.argsort(dim=-1)
    return idx.gather(-1, o), w.gather(-1, o)


@pytest.mark.parametrize("name", sorted(CASES))
def test_force_and_deactivate_every_family(name):
    lm = _family_lm(name)
    s = lm.spec
    k, E = s.top_k, s.n_experts
    ids = torch.tensor([lm.tokenizer(DATA[0].context + " " + DATA[1].context)["input_ids"]])
    refused = check_reroute(lm)
    ok = [l for l in s.moe_layers if l not in refused]
    if refused:
        for beta in ("in", "out"):
            with pytest.raises(RerouteUnavailable, match=s.family):
                with rl.boost_experts(lm, {next(iter(refused)): [0]}, beta):
                    pass
    if not ok:
        pytest.skip(f"reroute refused: {next(iter(refused.values()))}")
    ref, route = _run(lm, ids)
    # the experts each layer used least (so forcing them in must change routing), and the busiest ones
    rare, busy = {}, {}
    for l in ok:
        used = torch.bincount(route[l][0].reshape(-1), minlength=E)[:E]
        order = used.argsort(stable=True)
        rare[l], busy[l] = sorted(order[:min(2, k)].tolist()), sorted(order[-min(2, E - k):].tolist())
    for beta, sets in (("in", rare), ("out", busy), (-1e4, busy)):
        _, got = _run(lm, ids, rl.boost_experts(lm, sets, beta))
        for l in ok:
            chosen = got[l][0]
            if beta == "in":
                assert all(set(sets[l]) <= set(r.tolist()) for r in chosen), f"layer {l}: forced-in expert missing"
            else:
                assert not any(set(sets[l]) & set(r.tolist()) for r in chosen), f"layer {l} ({beta}): expert kept"
            if s.experts_io == "fused":
                assert all(len(set(r.tolist())) == k for r in chosen)
    # tokens that already comply: their routing at the first steered layer is unchanged, bit for bit
    l0 = ok[0]
    idx0, w0 = _sorted_route(*route[l0])
    used = torch.bincount(route[l0][0].reshape(-1), minlength=E)[:E]
    e = int(used.argmax())  # chosen by some tokens; forced in or out for all
    has = (route[l0][0] == e).any(-1)
    # Where the family chooses by the logits' order (softmax / sigmoid then top-k), a complying token's logits
    # are left alone, so its weights are bit-identical too. Where it does not (a correction bias, groups), the
    # logit edit can move a complying token's weight although its choice stays.
    logits = []
    with lm.hooks.read(f"blocks.{l0}.router.hook_logits", lambda x: logits.append(x.detach().clone())), torch.no_grad():
        lm.hf(ids)
    by_logit = torch.equal(logits[0].reshape(-1, E).topk(k, dim=-1).indices.sort(-1).values, idx0)
    for beta, keep in (("in", has), ("out", ~has)):
        _, got = _run(lm, ids, rl.boost_experts(lm, {l0: [e]}, beta))
        idx1, w1 = _sorted_route(*got[l0])
        assert torch.equal(idx1[keep], idx0[keep]), f"{beta}: complying tokens re-routed"
        if by_logit:
            assert torch.equal(w1[keep], w0[keep]), f"{beta}: complying tokens' weights changed"
        assert bool(((idx1 == e).any(-1)).all()) if beta == "in" else not bool((idx1 == e).any())
    with torch.no_grad():
        assert torch.equal(lm.hf(ids).logits, ref)  # undone on exit


def test_force_edit_rule():
    """Against a brute-force statement of the rule on random scores with ties: forced-in experts are in
    torch.topk's choice, forced-out ones are not, and complying rows are returned unchanged."""
    g = torch.Generator().manual_seed(0)
    E, k = 10, 3
    x = torch.randint(0, 6, (500, E), generator=g).double()  # many ties
    x[:50, 2] = float("-inf")
    pin = torch.zeros(E, dtype=torch.bool)
    pin[[1, 2]] = True
    pout = torch.zeros(E, dtype=torch.bool)
    pout[[0, 5, 7]] = True
    y = force_edit(pin, pout, k)(x.clone())
    top = y.topk(k, dim=-1).indices
    assert all({1, 2} <= set(r.tolist()) and not ({0, 5, 7} & set(r.tolist())) for r in top)
    others = ~(pin | pout)
    assert torch.equal(y[:, others], x[:, others])  # only forced experts move
    for i in range(len(x)):
        xo = x[i, ~pin].sort(descending=True).values
        comply_in = all(x[i, j] > xo[k - 2] for j in (1, 2))  # strictly above the (k−m+1)-th other
        if comply_in:
            assert torch.equal(y[i, pin], x[i, pin])
        xr = x[i, ~pout].sort(descending=True).values
        for j in (0, 5, 7):
            if x[i, j] < xr[k - 1]:
                assert y[i, j] == x[i, j]
    ymax = force_edit(pin, pout, k, "max")(x.clone())  # SteerMoE: max + ε / min − ε on every row
    rest = x.masked_fill(pout, float("-inf")).max(-1).values  # the forced-out ones were lowered first
    assert bool((ymax[:, 1] > rest).all()) and bool((ymax[50:, 0] < x[50:].min(-1).values).all())


def test_force_refusals(olmoe_steer):
    lm = olmoe_steer
    l, k = lm.spec.moe_layers[0], lm.spec.top_k
    with pytest.raises(UserError, match="at most"):
        with rl.boost_experts(lm, {l: list(range(k + 1))}, "in"):
            pass
    with pytest.raises(UserError, match="'in'"):
        with rl.boost_experts(lm, {l: [0]}, "sideways"):
            pass
    with pytest.raises(UserError, match="both"):
        with rl.force_experts(lm, activate={l: [1]}, deactivate={l: [1, 2]}):
            pass
    with rl.mask_experts(lm, {l: [3]}):
        with pytest.raises(UserError, match="masked"):
            with rl.force_experts(lm, activate={l: [3]}):
                pass


@pytest.fixture(scope="module")
def olmoe_steer(load_tiny):
    return load_tiny("olmoe")


def test_zero_beta_and_negative_beta_on_cli(tmp_path, capsys, monkeypatch):
    """``--betas -2,0,in``: negative numbers and in/out parse (argparse took ``-2,0`` for an option)."""
    from routerlens_interp.cli import ces as cli_ces

    assert cli_ces._betas("-2,0,in,out") == [-2.0, 0.0, "in", "out"]
    from routerlens_interp.cli.commands import build_parser

    args = build_parser().parse_args(["steer", "--data", "toy-conflict", "--experts", "x.json", "--betas", "-2,0,in"])
    assert args.betas == "-2,0,in"
