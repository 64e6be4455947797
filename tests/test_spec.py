"""Spec of every family, dense models rejected, and the re-implemented routing functions."""
from __future__ import annotations

import pytest
import torch

import routerlens_interp as rl
from routerlens_interp.arch import NotMoEError, inspect_model
from routing_oracle import route  # the hand-written routing rules (a test oracle)

# Independent expectations, read off tests/tiny.py's configs by hand.
EXPECTED = {
    #  family        moe_layers  routing          shared            moe_attr            router
    "olmoe": ([0, 1, 2], "softmax_topk", None, "mlp", "gate"),
    "mixtral": ([0, 1, 2], "softmax_topk", None, "mlp", "gate"),
    "qwen2_moe": ([0, 2], "softmax_topk", "shared_expert", "mlp", "gate"),  # mlp_only_layers=[1]
    "qwen3_moe": ([0, 1, 2], "softmax_topk", None, "mlp", "gate"),
    "deepseek_v2": ([1, 2], "deepseek_v2", "shared_experts", "mlp", "gate"),  # first_k_dense_replace=1
    "deepseek_v3": ([1, 2], "deepseek_v3", "shared_experts", "mlp", "gate"),
    "phimoe": ([0, 1, 2], "sparsemixer", None, "mlp", "router"),
    "granitemoe": ([0, 1, 2], "topk_softmax", None, "block_sparse_moe", "router"),
}


def test_spec(lm, family):
    s = lm.spec
    moe_layers, routing, shared, moe_attr, router_attr = EXPECTED[family]
    assert s.family == family
    assert s.n_layers == 3
    assert s.moe_layers == moe_layers
    assert (s.n_experts, s.top_k) == (8, 2)
    assert s.routing == routing
    assert s.shared_experts_attr == shared
    assert (s.moe_attr, s.router_attr, s.experts_attr) == (moe_attr, router_attr, "experts")
    layers = lm.hf.model.layers
    for i in range(3):
        block = getattr(layers[i], moe_attr)
        if i in moe_layers:
            assert s.router(lm.hf, i) is getattr(block, router_attr)
            assert s.experts(lm.hf, i) is block.experts
            assert s.experts(lm.hf, i).gate_up_proj.shape[0] == 8
            if shared:
                assert isinstance(getattr(block, shared), torch.nn.Module)
        else:
            assert not hasattr(block, "experts")  # really a dense layer
            with pytest.raises(ValueError, match="dense"):
                s.router(lm.hf, i)
    assert s.attention(lm.hf, 0) is layers[0].self_attn
    assert s.final_norm(lm.hf) is lm.hf.model.norm
    assert s.unembed(lm.hf) is lm.hf.lm_head
    assert s.to_dict()["moe_layers"] == moe_layers
    assert f"family={family}" in repr(lm)


def test_dense_model_raises():
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(NotMoEError) as err:
        inspect_model(model)
    msg = str(err.value)
    for name in ("OLMoE", "Mixtral", "Qwen2-MoE", "Qwen3-MoE", "DeepSeek-V2", "DeepSeek-V3", "PhiMoE", "GraniteMoE"):
        assert name in msg
    assert issubclass(NotMoEError, ValueError)
    with pytest.raises(NotMoEError):
        rl.from_hf(model, None)


def _router_calls(lm, ids):
    """Run the model; → {layer: (router input, router output tuple)} captured by our own hooks."""
    got, handles = {}, []
    for l in lm.spec.moe_layers:
        def hook(mod, args, out, l=l):
            got[l] = (args[0].detach().clone(), tuple(o.detach().clone() for o in out))
        handles.append(lm.spec.router(lm.hf, l).register_forward_hook(hook))
    try:
        with torch.no_grad():
            lm.hf(ids)
    finally:
        for h in handles:
            h.remove()
    return got


def _as_sorted(weights, indices):
    order = indices.argsort(dim=-1)
    return weights.gather(-1, order), indices.gather(-1, order)


def test_route_reproduces_router(lm):
    """With no mask, arch.route gives the router's own (weights, indices) exactly (as sets per token)."""
    torch.manual_seed(1)
    ids = torch.randint(3, 300, (3, 17))
    for l, (x, out) in _router_calls(lm, ids).items():
        router = lm.spec.router(lm.hf, l)
        w, i = route(lm.spec.routing, out[0], router)
        assert i.shape == out[2].shape == (51, 2)
        ws, is_ = _as_sorted(w, i)
        rw, ri = _as_sorted(out[1], out[2])
        assert torch.equal(is_, ri)
        torch.testing.assert_close(ws.float(), rw.float(), rtol=1e-6, atol=1e-7)
        # the logits are the router's linear map of its input (independent of the library)
        torch.testing.assert_close(out[0].float(), x.reshape(-1, x.shape[-1]).float() @ router.weight.float().T,
                                   rtol=1e-5, atol=1e-5)


def test_route_deepseek_v2_greedy(load_tiny):
    lm = load_tiny("deepseek_v2", fresh=True)
    for l in lm.spec.moe_layers:
        lm.spec.router(lm.hf, l).topk_method = "greedy"
    torch.manual_seed(3)
    for l, (_, out) in _router_calls(lm, torch.randint(3, 300, (2, 11))).items():
        w, i = route("deepseek_v2", out[0], lm.spec.router(lm.hf, l))
        ws, is_ = _as_sorted(w, i)
        rw, ri = _as_sorted(out[1], out[2])
        assert torch.equal(is_, ri)
        torch.testing.assert_close(ws, rw)


def test_route_never_picks_masked(lm):
    """Under any allowed mask (up to E - k experts), k distinct unmasked experts are chosen."""
    torch.manual_seed(2)
    ids = torch.randint(3, 300, (2, 13))
    calls = _router_calls(lm, ids)
    g = torch.Generator().manual_seed(0)
    for l, (_, out) in calls.items():
        router = lm.spec.router(lm.hf, l)
        for n_masked in range(1, 7):
            for _ in range(4):
                masked = torch.zeros(8, dtype=torch.bool)
                masked[torch.randperm(8, generator=g)[:n_masked]] = True
                w, i = route(lm.spec.routing, out[0], router, masked)
                assert not masked[i].any(), (lm.spec.routing, masked, i)
                assert (i.sort(-1).values.diff(dim=-1) != 0).all()  # distinct
                assert torch.isfinite(w).all()


def test_route_unknown_name():
    with pytest.raises(NotImplementedError, match="zero"):
        route("nope", torch.zeros(2, 8), None)
