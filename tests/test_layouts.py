"""DBRX's flat ``[E·I, H]`` experts matrices and LongCat-Flash's zero-compute identity experts
(``arch/layouts.py``): a masked model's MoE block against a hand computation of the block written from the
family's code, and CEFT whose gradients and updates reach only the chosen experts' weights."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import families
import routerlens_interp as rl
import tiny
from routerlens_interp.examples import QAExample
from routerlens_interp.train.params import expert_trainable

CASES = families.cases()
DATA = [QAExample(f"{n} lives in {c}.", f"Where does {n} live?", [c]) for n in ("Al", "Bo", "Cy") for c in ("Paris", "Rome")]
TEXT = "Alice Smith was born in 1950 in Paris. Where was Bob Jones born? He lives in Rome."


def _lm(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rl.from_hf(families.build(CASES[name]), tiny.tokenizer(), name=name)


@pytest.fixture(scope="module")
def models():
    return {}


def _cached(models, name):
    if name not in models:
        models[name] = _lm(name)
    return models[name]


# ------------------------------------------------------------------------- hand computations of the blocks
def _dbrx_block(ffn, x, masked, mode):
    """DbrxFFN by hand: softmax over the router logits, top-k, L1 renormalisation (moe_normalize_expert_weights
    = 1), expert e = SiLU(x W1ₑᵀ) ⊙ (x V1ₑᵀ) W2ₑ with W·ₑ rows e·I..(e+1)·I of the flat matrices. x [T, H]."""
    E, k, H = masked.numel(), ffn.top_k, x.shape[-1]
    assert ffn.moe_normalize_expert_weights == 1.0
    logits = x @ ffn.router.layer.weight.T
    if mode == "reroute":
        logits = logits.masked_fill(masked, float("-inf"))
    w, idx = logits.softmax(-1).topk(k, dim=-1)
    w = w / w.abs().sum(-1, keepdim=True)
    if mode == "zero":
        w = w * ~masked[idx]
    mlp = ffn.experts.mlp
    W1, V1, W2 = (t.reshape(E, -1, H) for t in (mlp.w1, mlp.v1, mlp.w2))
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(k):
            e = int(idx[t, j])
            out[t] += w[t, j] * ((F.silu(x[t] @ W1[e].T) * (x[t] @ V1[e].T)) @ W2[e])
    return out, idx


def _longcat_block(moe, x, masked, mode):
    """LongcatFlashMoE by hand: fp32 logits, softmax over E + Z, choice on softmax + correction bias, weights the
    unbiased probabilities × routed_scaling_factor; experts e < E are SwiGLU MLPs, e ≥ E return x. x [T, H]."""
    r, ex = moe.router, moe.experts
    E = ex.down_proj.shape[0]
    logits = x.float() @ r.classifier.weight.float().T
    if mode == "reroute":
        logits = logits.masked_fill(masked, float("-inf"))
    p = logits.softmax(-1)
    choice = p + r.e_score_correction_bias
    if mode == "reroute":  # a masked expert is never chosen, whatever its bias
        choice = choice.masked_fill(masked, float("-inf"))
    idx = choice.topk(r.top_k, dim=-1).indices
    w = p.gather(1, idx) * r.routed_scaling_factor
    if mode == "zero":
        w = w * ~masked[idx]
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(r.top_k):
            e = int(idx[t, j])
            if e >= E:
                y = x[t]
            else:
                gate, up = (ex.gate_up_proj[e] @ x[t]).chunk(2)
                y = ex.down_proj[e] @ (F.silu(gate) * up)
            out[t] += w[t, j] * y
    return out, idx


HAND = {"dbrx": _dbrx_block, "longcat_flash": _longcat_block}


def _block_io(lm, layer, ids, ctx=None):
    """Plain PyTorch hooks: the MoE block's input and output ``[T, H]`` in one forward (under ``ctx``)."""
    got = {}
    block = lm.spec.moe_block(lm.hf, layer)
    h = block.register_forward_hook(lambda m, a, out: got.update(x=a[0].detach().reshape(-1, a[0].shape[-1]),
                                                                  y=out.detach().reshape(-1, out.shape[-1])))
    try:
        with torch.no_grad():
            if ctx is None:
                lm.hf(ids)
            else:
                with ctx:
                    lm.hf(ids)
    finally:
        h.remove()
    return got["x"], got["y"]


def _mask(lm, name, layer, ids):
    """The busiest expert of ``layer`` with weights and, for LongCat-Flash, its busiest identity expert."""
    s = lm.spec
    x, _ = _block_io(lm, layer, ids)
    with torch.no_grad():
        _, idx = HAND[name](s.moe_block(lm.hf, layer), x, torch.zeros(s.n_experts, dtype=torch.bool), "none")
    used = torch.bincount(idx.reshape(-1), minlength=s.n_experts)
    Ew = s.n_experts - s.identity_experts
    out = [int(used[:Ew].argmax())]
    if s.identity_experts:
        out.append(Ew + int(used[Ew:].argmax()))
        assert used[out[-1]] > 0, "no token routed to an identity expert: the test would not exercise them"
    return sorted(out)


@pytest.mark.parametrize("mode", ["reroute", "zero"])
@pytest.mark.parametrize("name", ["dbrx", "longcat_flash"])
def test_masked_block_equals_hand_computation(models, name, mode):
    lm = _cached(models, name)
    s = lm.spec
    assert (s.experts_layout, s.identity_experts) == {"dbrx": ("flat", 0), "longcat_flash": ("stacked", 2)}[name]
    ids = torch.tensor([lm.tokenizer(TEXT)["input_ids"]])
    for layer in s.moe_layers:
        block = s.moe_block(lm.hf, layer)
        none = torch.zeros(s.n_experts, dtype=torch.bool)
        x, y = _block_io(lm, layer, ids)
        with torch.no_grad():
            ref, _ = HAND[name](block, x, none, mode)
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)  # the hand computation is the family's block
        ex = _mask(lm, name, layer, ids)
        bad = none.clone()
        bad[ex] = True
        xm, ym = _block_io(lm, layer, ids, rl.mask_experts(lm, {layer: ex}, mode=mode))
        with torch.no_grad():
            want, idx = HAND[name](block, xm, bad, mode)
        if mode == "reroute":
            assert not bad[idx].any()
        assert not torch.allclose(want, ref), "masking these experts changes nothing: the test cannot fail"
        torch.testing.assert_close(ym, want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ CEFT
def _per_expert(t, E):
    return t.reshape(E, -1, t.shape[-1]) if t.dim() == 2 else t


@pytest.mark.parametrize("name", ["dbrx", "longcat_flash"])
def test_ceft_gradient_reaches_only_the_chosen_experts(name):
    lm = _lm(name)
    s = lm.spec
    layer, chosen = s.moe_layers[0], [1, 3]
    ids = torch.tensor([lm.tokenizer(TEXT)["input_ids"]])
    Ew = s.n_experts - s.identity_experts
    experts = s.experts(lm.hf, layer)
    names = {"dbrx": ["mlp.v1", "mlp.w1", "mlp.w2"], "longcat_flash": ["down_proj", "gate_up_proj"]}[name]
    full = {n: experts.get_parameter(n) for n in names}
    # reference: plain autograd on the whole tensors, the chosen experts' rows of their gradients
    for p in lm.hf.parameters():
        p.requires_grad_(False)
    for p in full.values():
        p.requires_grad_(True)
    lm.hf(input_ids=ids).logits.square().mean().backward()
    ref = {n: _per_expert(p.grad, Ew)[chosen].clone() for n, p in full.items()}
    for p in full.values():
        p.grad = None
    before = {k: v.detach().clone() for k, v in lm.hf.state_dict().items()}

    with expert_trainable(lm, {layer: chosen}) as t:
        keys = [f"{s.experts_path(layer)}.{n}" for n in names]
        assert sorted(t.params) == keys
        trainable = [n for n, p in lm.hf.named_parameters() if p.requires_grad]
        assert len(trainable) == len(keys) and all(n.endswith(".slices") for n in trainable)
        lm.hf(input_ids=ids).logits.square().mean().backward()
        assert sorted(n for n, p in lm.hf.named_parameters() if p.grad is not None) == sorted(trainable)
        for n, k in zip(names, keys):
            assert t.params[k].shape == ref[n].shape
            torch.testing.assert_close(t.params[k].grad, ref[n], rtol=1e-4, atol=1e-7)
            assert bool((t.params[k].grad.flatten(1).abs().sum(1) > 0).all())  # each chosen expert gets one
        torch.optim.SGD(list(t.params.values()), lr=1.0).step()
        t.sync()
        now = lm.hf.state_dict()
        for n, k in zip(names, keys):
            mod, _, local = k.rpartition(".")
            got = _per_expert(now[f"{mod}.parametrizations.{local}.original"], Ew)
            old = _per_expert(before[k], Ew)
            for e in range(old.shape[0]):
                assert torch.equal(got[e], old[e]) == (e not in chosen), (k, e)
    after = lm.hf.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # everything put back


def test_ceft_adapter_round_trip_on_flat_matrices(tmp_path):
    """DBRX: the adapter's slices ``[n, I, H]`` go back into rows e·I..(e+1)·I of each flat matrix, only there."""
    lm = _lm("dbrx")
    s = lm.spec
    before = {k: v.detach().clone() for k, v in lm.hf.state_dict().items()}
    busy = rl.count_experts(lm, DATA).counts  # experts the training tokens reach, so that their rows move
    experts = {0: busy[0].topk(1).indices.tolist(), 2: busy[2].topk(2).indices.tolist()}
    ad = rl.ceft(lm, DATA, experts=experts, max_steps=2, lr=1e-2, batch_size=2, progress=False)
    assert all(tuple(v.shape[1:]) == (16, 32) for v in ad.tensors.values())
    ad.save(tmp_path / "ad")
    ad = rl.load_adapter(tmp_path / "ad", lm)
    with ad.applied(lm):
        now = {k: v.detach().clone() for k, v in lm.hf.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in lm.hf.state_dict().items())
    for k in before:
        if k not in ad.tensors:
            assert torch.equal(before[k], now[k]), k
            continue
        layer = int(k.split(".")[2])
        old, new = _per_expert(before[k], s.n_experts), _per_expert(now[k], s.n_experts)
        for e in range(s.n_experts):
            assert torch.equal(old[e], new[e]) == (e not in ad.experts.get(layer, [])), (k, e)


def test_ceft_refuses_identity_experts():
    lm = _lm("longcat_flash")
    with pytest.raises(ValueError, match="identity experts"):
        with expert_trainable(lm, {0: [2, 8]}):
            pass
    with pytest.raises(ValueError, match="identity experts"):
        rl.ceft(lm, DATA, experts={1: [9]}, max_steps=1, batch_size=2, progress=False)


def test_run_pipeline_ceft_leaves_out_identity_experts(models):
    """`routerlens run` picks CEs by count, and identity experts can be among the busiest: CEFT then trains the
    weighted CEs only (rl.ceft itself refuses identity experts), the masking tests keep all of them."""
    from routerlens_interp.pipeline.run import ceft_experts

    lm = _cached(models, "longcat_flash")
    first = lm.spec.n_experts - lm.spec.identity_experts
    assert lm.spec.identity_experts > 0
    l0 = lm.spec.moe_layers[0]
    ces = rl.ExpertSet({l0: [0, 3, first]})
    keep, left = ceft_experts(lm, ces)
    assert left == 1 and keep == rl.ExpertSet({l0: [0, 3]})
    with pytest.raises(ValueError, match="identity experts"):
        rl.ceft(lm, DATA, DATA, experts=ces, out_dir=None, max_steps=1)
    dbrx = _cached(models, "dbrx")
    assert ceft_experts(dbrx, rl.ExpertSet({dbrx.spec.moe_layers[0]: [1, 2]})) == (
        rl.ExpertSet({dbrx.spec.moe_layers[0]: [1, 2]}), 0)
