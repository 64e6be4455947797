"""Expert counting and masking, checked against independent computations on every family."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import routerlens_interp as rl

TEXTS = ["Alice Smith was born in 1950 in Paris.", "Where was Bob Jones born? He lives in Rome and paints.",
         "Context: a baker", "Question: When was Bob Jones born? Answer: 1972"]
SOFTMAX = {"olmoe": False, "mixtral": True, "qwen2_moe": True, "qwen3_moe": True}  # family → renormalise top-k
HAND_ROUTED = {**SOFTMAX, "granitemoe": "topk_softmax"}  # families with a hand-written router below


def _hook_count(lm) -> int:
    """Forward (pre-)hooks, leaving out transformers' own output-capturing hooks (installed for good the
    first time attentions or router logits are requested)."""
    return sum(1 for m in lm.hf.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())
               if "output_capturing" not in getattr(h, "__qualname__", ""))


class ExpertInputs:
    """Our own record of the (indices, weights) that reach each experts module."""

    def __init__(self, lm):
        self.lm, self.seen, self.handles = lm, {l: [] for l in lm.spec.moe_layers}, []

    def __enter__(self):
        for l in self.lm.spec.moe_layers:
            def hook(mod, args, kwargs, l=l):
                idx = args[1] if len(args) > 1 else kwargs["top_k_index"]
                w = args[2] if len(args) > 2 else kwargs["top_k_weights"]
                self.seen[l].append((idx.detach().clone(), w.detach().clone()))
            self.handles.append(self.lm.spec.experts(self.lm.hf, l).register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _ids(lm, text):
    return torch.tensor([lm.tokenizer(text)["input_ids"]])


def _mask_for(lm):
    """A non-trivial mask: in every MoE layer, the two experts used most on TEXTS[0]."""
    with ExpertInputs(lm) as rec, torch.no_grad():
        lm.hf(_ids(lm, TEXTS[0]))
    return {l: torch.bincount(rec.seen[l][0][0].flatten(), minlength=8).topk(2).indices.tolist()
            for l in lm.spec.moe_layers}


# -- counting -------------------------------------------------------------------------------------
def test_counts_equal_expert_inputs(lm, family):
    counts = rl.count_experts(lm, TEXTS, batch_size=3)  # padded batches
    assert counts.counts.shape == (len(lm.spec.moe_layers), 8)
    assert counts.layers == lm.spec.moe_layers
    expected = torch.zeros(len(lm.spec.moe_layers), 8, dtype=torch.long)
    n_tokens = 0
    ref_logits = {l: [] for l in lm.spec.moe_layers}
    for text in TEXTS:  # one at a time, no padding
        ids = _ids(lm, text)
        n_tokens += ids.shape[1]
        with ExpertInputs(lm) as rec, torch.no_grad():
            out = lm.hf(ids, output_router_logits=True)
        for r, l in enumerate(lm.spec.moe_layers):
            idx = rec.seen[l][0][0]
            assert idx.shape == (ids.shape[1], 2)
            expected[r] += torch.bincount(idx.flatten(), minlength=8)
            ref_logits[l].append(out.router_logits[r])
    assert torch.equal(counts.counts, expected)
    assert counts.n_tokens == n_tokens
    assert (counts.counts.sum(dim=1) == 2 * n_tokens).all()
    if family in SOFTMAX or family == "granitemoe":  # plain top-k of the router logits
        for r, l in enumerate(lm.spec.moe_layers):
            top = torch.cat(ref_logits[l]).float().softmax(-1).topk(2, dim=-1).indices
            assert torch.equal(counts.counts[r], torch.bincount(top.flatten(), minlength=8))


def test_counts_span_and_save(lm, tmp_path):
    ex = rl.QAExample("Alice Smith was born in Paris.", "Where was Alice Smith born?", ["Paris"])
    enc = lm.encode(ex, with_answer=True)
    c = rl.count_experts(lm, [ex], span="context")
    with ExpertInputs(lm) as rec, torch.no_grad():
        lm.hf(enc.input_ids[None])
    for r, l in enumerate(lm.spec.moe_layers):
        idx = rec.seen[l][0][0][enc.context]
        assert torch.equal(c.counts[r], torch.bincount(idx.flatten(), minlength=8))
    assert c.n_tokens == len(enc.context)
    c.save(tmp_path / "c.pt")
    c2 = rl.ExpertCounts.load(tmp_path / "c.pt")
    assert torch.equal(c2.counts, c.counts) and c2.layers == c.layers
    assert torch.equal(c.row(lm.spec.moe_layers[-1]), c.counts[-1])
    with pytest.raises(ValueError):
        rl.count_experts(lm, [ex], span="nope")


def test_counts_under_mask(lm):
    mask = _mask_for(lm)
    with rl.mask_experts(lm, mask):
        c = rl.count_experts(lm, TEXTS)
    for r, l in enumerate(lm.spec.moe_layers):
        assert c.counts[r, mask[l]].sum() == 0
        assert c.counts[r].sum() == 2 * c.n_tokens


# -- reroute against a hand-written MoE block -------------------------------------------------------
def _hand_block(block, x, masked, renorm):
    """−inf mask → softmax → top-2 → (renorm) → SwiGLU experts from the fused weights (+ Qwen2's shared
    expert). ``renorm="topk_softmax"`` (GraniteMoE): top-2 of the masked logits, softmax over those two."""
    flat = x.reshape(-1, x.shape[-1]).float()
    router = block.gate if hasattr(block, "gate") else block.router
    logits = flat @ router.weight.float().T
    logits[:, masked] = float("-inf")
    if renorm == "topk_softmax":
        top, idx = logits.topk(2, dim=-1)
        w = top.softmax(dim=-1)
    else:
        w, idx = logits.softmax(dim=-1).topk(2, dim=-1)
    if renorm is True:
        w = w / w.sum(dim=-1, keepdim=True)
    ex = block.experts
    gate, up = torch.einsum("tkoh,th->tko", ex.gate_up_proj[idx].float(), flat).chunk(2, dim=-1)
    y = torch.einsum("tkhi,tki->tkh", ex.down_proj[idx].float(), F.silu(gate) * up)
    out = (w[..., None] * y).sum(dim=1)
    if hasattr(block, "shared_expert"):
        out = out + torch.sigmoid(block.shared_expert_gate(flat)) * block.shared_expert(flat)
    return out.view_as(x).to(x.dtype)


def test_reroute_equals_hand_written_router(lm, family):
    if family not in HAND_ROUTED:
        pytest.skip("hand-written router only for the softmax top-k families and GraniteMoE")
    mask = _mask_for(lm)
    ids = _ids(lm, TEXTS[1])
    handles = []
    for l in lm.spec.moe_layers:
        block = lm.spec.moe_block(lm.hf, l)
        handles.append(block.register_forward_hook(
            lambda mod, args, out, l=l: _hand_block(mod, args[0], mask[l], HAND_ROUTED[family])))
    try:
        with torch.no_grad():
            hand = lm.hf(ids).logits
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        plain = lm.hf(ids).logits
        with rl.mask_experts(lm, mask, mode="reroute") as clean:
            masked = lm.hf(ids).logits
    assert clean == {l: sorted(v) for l, v in mask.items()}
    assert not torch.allclose(plain, masked, atol=1e-4)  # the mask matters
    torch.testing.assert_close(masked, hand, rtol=1e-4, atol=1e-5)


def test_reroute_keeps_k_unmasked_experts(lm):
    mask = _mask_for(lm)
    with rl.mask_experts(lm, mask), ExpertInputs(lm) as rec, torch.no_grad():
        lm.hf(_ids(lm, TEXTS[1]))
    for l in lm.spec.moe_layers:
        idx, w = rec.seen[l][0]
        assert idx.shape[1] == 2 and not torch.isin(idx, torch.tensor(mask[l])).any()
        assert (w > 0).all()


# -- zero against zeroed down_proj slices -------------------------------------------------------------
def test_zero_equals_zeroed_down_proj(lm):
    mask = {l: [e] for l, e in zip(lm.spec.moe_layers, [3, 5, 6])}
    ids = _ids(lm, TEXTS[1])
    with torch.no_grad():
        plain = lm.hf(ids).logits
        with rl.mask_experts(lm, mask, mode="zero"), ExpertInputs(lm) as rec:
            zeroed = lm.hf(ids).logits
        saved = {l: lm.spec.experts(lm.hf, l).down_proj.detach().clone() for l in mask}
        try:
            for l, es in mask.items():
                lm.spec.experts(lm.hf, l).down_proj[es] = 0.0
            ref = lm.hf(ids).logits
        finally:
            for l, w in saved.items():
                lm.spec.experts(lm.hf, l).down_proj.copy_(w)
    assert not torch.allclose(plain, zeroed, atol=1e-5)
    torch.testing.assert_close(zeroed, ref, rtol=1e-5, atol=1e-6)
    for l, es in mask.items():  # routing kept: masked experts still picked, with weight 0
        idx, w = rec.seen[l][0]
        assert (w[idx == es[0]] == 0).all()


# -- where masks act -------------------------------------------------------------------------------
def test_mask_in_generate(lm):
    mask = _mask_for(lm)
    ids = _ids(lm, TEXTS[2])
    with rl.mask_experts(lm, mask), ExpertInputs(lm) as rec, torch.no_grad():
        gen = lm.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                             pad_token_id=lm.tokenizer.pad_token_id)
        seq = ids
        for _ in range(4):  # greedy by hand, full forward each step (no cache)
            nxt = lm.hf(seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(gen[:, :seq.shape[1]], seq[:, :gen.shape[1]])
    for l in lm.spec.moe_layers:
        assert len(rec.seen[l]) >= 4  # prefill + decode steps all went through the mask
        for idx, _ in rec.seen[l]:
            assert not torch.isin(idx, torch.tensor(mask[l])).any()


def test_mask_in_nnsight_trace(lm):
    mask = _mask_for(lm)
    ids = _ids(lm, TEXTS[1])
    with torch.no_grad():
        with rl.mask_experts(lm, mask):
            ref = lm.hf(ids).logits
            with lm.nnsight.trace(ids):
                out = lm.nnsight.lm_head.output.save()
        with lm.nnsight.trace(ids):
            unmasked = lm.nnsight.lm_head.output.save()
    torch.testing.assert_close(out, ref)
    assert not torch.allclose(unmasked, ref, atol=1e-4)
    with rl.mask_experts(lm, mask):
        tr = lm.trace(TEXTS[1], lens=False, attention=False)
    for l in lm.spec.moe_layers:
        assert not torch.isin(tr.routing[l].indices[0], torch.tensor(mask[l])).any()
        logits = tr.routing[l].logits[0]
        assert torch.isneginf(logits[:, mask[l]]).all() and torch.isfinite(logits[:, [e for e in range(8)
                                                                                         if e not in mask[l]]]).all()


@pytest.mark.parametrize("mode", ["reroute", "zero"])
def test_mask_in_training(family, load_tiny, mode):
    lm = load_tiny(family, fresh=True)
    mask = {l: [1, 4] for l in lm.spec.moe_layers}
    lm.hf.train()
    ids = torch.cat([_ids(lm, TEXTS[0]), _ids(lm, TEXTS[0])])
    with rl.mask_experts(lm, mask, mode=mode):
        loss = lm.hf(ids, labels=ids).loss
        loss.backward()
    assert torch.isfinite(loss)
    for l in lm.spec.moe_layers:
        g = lm.spec.experts(lm.hf, l).gate_up_proj.grad
        assert g is not None
        assert g[[1, 4]].abs().sum() == 0  # masked experts get nothing
        assert g.abs().sum() > 0
        # PhiMoE's sparsemixer (tiny jitter threshold) gives its router no gradient even unmasked
        if mode == "reroute" and family != "phimoe":
            assert lm.spec.router(lm.hf, l).weight.grad.abs().sum() > 0
    for name, p in lm.hf.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_hooks_removed(lm):
    n = _hook_count(lm)
    mask = _mask_for(lm)
    # reroute: the routing tap (enter + leave) and the guard on the experts' inputs; zero: one edit
    per_layer = {"reroute": 3, "zero": 1}
    for mode in ("reroute", "zero"):
        with rl.mask_experts(lm, mask, mode=mode):
            assert _hook_count(lm) == n + per_layer[mode] * len(mask)
            with rl.mask_experts(lm, {l: ids[:1] for l, ids in mask.items()}, mode=mode):  # nested: shares hooks
                assert _hook_count(lm) == n + per_layer[mode] * len(mask)
        assert _hook_count(lm) == n
        with pytest.raises(RuntimeError, match="boom"):
            with rl.mask_experts(lm, mask, mode=mode):
                raise RuntimeError("boom")
        assert _hook_count(lm) == n
    assert not any(k.startswith("_routerlens") for m in lm.hf.modules() for k in m.__dict__)
    assert lm.hooks.masks == {} and lm.hooks._points == {} and lm.hooks._routers == {}
    ids = _ids(lm, TEXTS[0])
    with torch.no_grad():
        before = lm.hf(ids).logits
        with rl.mask_experts(lm, mask):
            pass
        torch.testing.assert_close(lm.hf(ids).logits, before, rtol=0, atol=0)


def test_bad_ids_raise(lm, family):
    s = lm.spec
    l = s.moe_layers[0]
    n = _hook_count(lm)
    bad = [{l: [8]}, {l: [-1]}, {99: [0]}, {l: list(range(8))}, {l: list(range(7))}]
    dense = [i for i in range(s.n_layers) if i not in s.moe_layers]
    bad += [{i: [0]} for i in dense]
    for m in bad:
        with pytest.raises(ValueError):
            with rl.mask_experts(lm, m, mode="reroute"):
                pass
    with pytest.raises(ValueError):
        with rl.mask_experts(lm, {l: [0]}, mode="nope"):
            pass
    with rl.mask_experts(lm, {l: list(range(8))}, mode="zero"):  # allowed: zero keeps routing
        pass
    with rl.mask_experts(lm, {l: list(range(6))}, mode="reroute"):  # 8 − k = 6 is the most allowed
        pass
    assert _hook_count(lm) == n
    es = rl.ExpertSet({str(l): [1, 1, 2]})  # an ExpertSet (JSON-style keys) works as a mask
    with rl.mask_experts(lm, es) as clean:
        assert clean == {l: [1, 2]}
    if family in ("qwen2_moe", "deepseek_v2", "deepseek_v3"):
        assert dense


def test_nested_masks_checked_together(lm):
    """Two masks, each legal, whose union leaves fewer than top_k experts: refused when the second is entered."""
    E, k = lm.spec.n_experts, lm.spec.top_k
    layer = lm.spec.moe_layers[0]
    first, second = list(range(E - k)), list(range(1, E - k + 1))
    with rl.mask_experts(lm, {layer: first}):
        with pytest.raises(ValueError, match="together with the masks already in force"):
            with rl.mask_experts(lm, {layer: second}):
                pass
        assert rl.interventions.active_mask(lm, layer).sum() == E - k  # the outer mask is still in force
    assert lm.hooks.masks == {}
