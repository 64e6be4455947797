"""Attention knockout: checked against the model's own attention weights, on every family."""
from __future__ import annotations

import pytest
import torch

import routerlens_interp as rl
from routerlens_interp.hooks.attn_rows import use_implementation
from routerlens_interp.examples import QAExample
from routerlens_interp.model import TOY_DIR

EX = QAExample("Alice lives in Paris. Bob lives in Rome.", "Where does Alice live?", ["Paris"])


def _forward(lm, ids):
    with use_implementation(lm, "eager"):  # output_attentions needs eager (SDPA knockout: test_sdpa_rows.py)
        return lm.hf(input_ids=ids, output_attentions=True)


def _hooks(lm) -> int:
    return sum(len(lm.spec.attention(lm.hf, l)._forward_pre_hooks) for l in range(len(lm.spec.layers(lm.hf))))


@torch.no_grad()
def test_knockout_zeroes_exactly_the_blocked_attention(lm):
    enc = lm.encode(EX)
    ids = enc.input_ids[None].to(lm.device)
    T, q = ids.shape[1], enc.last_prompt
    keys = enc.context[:3].tolist()
    base = _forward(lm, ids)
    with rl.knock_out_attention(lm, [], q, keys, T):  # no layer: our causal mask is never used
        assert torch.equal(_forward(lm, ids).logits, base.logits)
    n_layers = len(base.attentions)
    layer = n_layers - 1
    with rl.knock_out_attention(lm, [layer], q, [], T):  # our mask, nothing blocked: the model's own causal mask
        torch.testing.assert_close(_forward(lm, ids).logits, base.logits, rtol=1e-5, atol=1e-5)
    with rl.knock_out_attention(lm, [layer], q, keys, T):
        ko = _forward(lm, ids)
    a, b = ko.attentions[layer][0], base.attentions[layer][0]  # [H, T, T]
    assert float(a[:, q, keys].abs().max()) == 0.0
    # the rest of the query row renormalises: base weights over the unblocked keys, rescaled to sum to 1
    keep = [k for k in range(q + 1) if k not in keys]
    expect = b[:, q, keep] / b[:, q, keep].sum(-1, keepdim=True)
    torch.testing.assert_close(a[:, q, keep], expect, rtol=1e-4, atol=1e-6)
    for l in range(n_layers):  # other query positions never change; earlier layers not at all
        torch.testing.assert_close(ko.attentions[l][0, :, :q], base.attentions[l][0, :, :q], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ko.logits[0, q], base.logits[0, q])
    torch.testing.assert_close(ko.logits[0, :q], base.logits[0, :q], rtol=1e-5, atol=1e-5)
    assert _hooks(lm) == 0


def test_knockout_rejects_bad_input_and_removes_hooks(load_tiny):
    lm = load_tiny("olmoe")
    T = 6
    with pytest.raises(ValueError, match="out of range"):
        with rl.knock_out_attention(lm, [99], 5, [1], T):
            pass
    with pytest.raises(ValueError, match="key <= query"):
        with rl.knock_out_attention(lm, [0], 3, [4], T):
            pass
    with pytest.raises(ValueError, match="every position"):
        with rl.knock_out_attention(lm, [0], 2, [0, 1, 2], T):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with rl.knock_out_attention(lm, [0], 5, [1], T):
            raise RuntimeError("boom")
    assert _hooks(lm) == 0
    impl = lm.hf.config._attn_implementation
    try:
        lm.hf.config._attn_implementation = "flash_attention_2"
        with pytest.raises(ValueError, match="eager or sdpa"):
            with rl.knock_out_attention(lm, [0], 5, [1], T):
                pass
    finally:
        lm.hf.config._attn_implementation = impl


def test_attention_knockout_scores_and_skips(load_tiny):
    lm = load_tiny("olmoe")
    absent = QAExample("Bob lives in Rome.", "Where does Alice live?", ["Paris"])
    k = rl.attention_knockout(lm, [EX, absent, EX], layer_sets=[[0], [0, 1]], progress=False)
    assert (k.n, k.n_skipped, k.layer_sets) == (2, 1, [(0,), (0, 1)])
    assert len(lm.spec.layers(lm.hf)) == 3 and k.labels == ["0", "0,1"]  # "all" only for every decoder layer
    assert rl.attention_knockout(lm, [EX], progress=False).labels == ["0", "1", "2", "all"]
    assert k.accuracy.shape == k.prob.shape == (2,) and 0 <= k.base_prob <= 1
    rows = k.table()
    assert [r["layers"] for r in rows] == ["0", "0,1"]
    with pytest.raises(ValueError, match="nothing to score"):
        rl.attention_knockout(lm, [absent], progress=False)


@pytest.mark.skipif(not (TOY_DIR / "config.json").exists(), reason="bundled toy weights not present")
def test_bundled_model_reads_the_answer_at_layer_0():
    """The finding the README reports: open-book answers come through layer 0's attention, not the top layers."""
    lm = rl.load("toy")
    data = rl.load_dataset("toy-open", split="test", limit=40)
    k = rl.attention_knockout(lm, data, layer_sets=[[0], [4], [5]], progress=False)
    assert k.base_accuracy >= 70
    drop = {ls[0]: k.base_accuracy - a for ls, a in zip(k.layer_sets, k.accuracy)}
    assert drop[0] >= 30 and drop[4] <= 5 and drop[5] <= 5


# ---- GLM-5-Next: MLA+DSA layers build their mask from the indexer's top-k inside their forward -----------------
@pytest.fixture(scope="module")
def glm5_next(tmp_path_factory):
    """The family suite's tiny GLM-5-Next (KDA layers 0 and 2, MLA+DSA layer 1), loaded with SDPA and eager."""
    import warnings

    import families

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = families.save(families.cases()["glm5_next"], tmp_path_factory.mktemp("glm5_next"))
        return {impl: rl.load(path, attn_implementation=impl) for impl in ("sdpa", "eager")}


def _glm5_forward(lm, ids, layer, block=None):
    """Logits ``[T, V]`` and the layer's eager probabilities ``[H, T, T]``; ``block=(q, keys)``: the mask the
    layer's eager attention function receives is edited by hand (an independent knockout: the function's
    argument, not the module's mask builder the hook layer edits)."""
    from transformers.models.glm5_next import modeling_glm5_next as mod

    real, probs = mod.eager_attention_forward, []

    def eager(module, query, key, value, attention_mask, **kw):
        if block is not None and module.layer_idx == layer:
            attention_mask = attention_mask.clone()
            attention_mask[..., block[0], block[1]] = torch.finfo(attention_mask.dtype).min
        out = real(module, query, key, value, attention_mask, **kw)
        if module.layer_idx == layer:
            probs.append(out[1][0])
        return out
    mod.eager_attention_forward = eager
    try:
        with torch.no_grad():
            logits = lm.hf(input_ids=ids).logits[0]
    finally:
        mod.eager_attention_forward = real
    return logits, probs[0]


def _assert_clean(lm, layer):
    """No hook and no shadowed mask builder left on the layer's attention module."""
    attn = lm.spec.attention(lm.hf, layer)
    assert "build_attention_mask_from_topk" not in attn.__dict__
    assert not attn._forward_hooks and not attn._forward_pre_hooks


def _glm5_case(lm):
    enc = lm.encode(EX)
    ids = enc.input_ids[None]
    layer = lm.spec.attention_layers[0]
    return ids, layer, enc.last_prompt


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_glm5_next_knockout_equals_the_mask_edited_by_hand(glm5_next, impl):
    """The query row sees only the indexer's top-k keys; blocking half of them gives the logits of the eager
    model whose attention function got the hand-edited mask, 0 on the blocked keys and the base weights of
    the rest renormalised. The indexer (and its top-k) is untouched, so nothing else moves."""
    ea, lm = glm5_next["eager"], glm5_next[impl]
    ids, layer, q = _glm5_case(ea)
    T = ids.shape[1]
    base_logits, base = _glm5_forward(ea, ids, layer)
    seen = torch.nonzero(base[:, q].amax(0) > 0).flatten().tolist()  # the keys the indexer selected for q
    assert 2 <= len(seen) < q + 1  # sparse: fewer keys than the causal mask allows
    keys = seen[::2]
    ref_logits, ref = _glm5_forward(ea, ids, layer, block=(q, keys))
    pats = []
    with lm.hooks.read(f"blocks.{layer}.attn.hook_pattern", lambda p: pats.append(p[0]), rows=torch.tensor([q])):
        with rl.knock_out_attention(lm, [layer], q, keys, T), torch.no_grad():
            logits = lm.hf(input_ids=ids).logits[0]
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    row = pats[0][:, 0]  # [H, T]
    assert float(row[:, keys].abs().max()) == 0.0
    keep = [k for k in seen if k not in keys]
    torch.testing.assert_close(row[:, keep], base[:, q, keep] / base[:, q, keep].sum(-1, keepdim=True),
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(row, ref[:, q], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(logits[q], base_logits[q])
    torch.testing.assert_close(logits[:q], base_logits[:q], rtol=1e-5, atol=1e-5)
    _assert_clean(lm, layer)


def test_glm5_next_knockout_of_every_selected_key_is_refused(glm5_next):
    """Blocking all the keys the indexer selected for the query leaves its row empty: refused with the keys."""
    lm = glm5_next["sdpa"]
    ids, layer, q = _glm5_case(lm)
    _, base = _glm5_forward(glm5_next["eager"], ids, layer)
    seen = torch.nonzero(base[:, q].amax(0) > 0).flatten().tolist()
    with pytest.raises(ValueError, match=f"leaves query {q} no key to attend"):
        with rl.knock_out_attention(lm, [layer], q, seen, ids.shape[1]), torch.no_grad():
            lm.hf(input_ids=ids)
    _assert_clean(lm, layer)


def test_mask_builder_that_is_not_called_is_an_error():
    """A module whose forward no longer builds its mask with the method the hook shadows: an error, not an
    unedited mask."""
    from routerlens_interp.hooks.mask_builder import BuilderHook, builder

    class Attn(torch.nn.Module):
        def build_attention_mask_from_topk(self, x):
            return x

        def forward(self, x):
            return x + 1

    m = Attn()
    assert builder(m) == "build_attention_mask_from_topk" and builder(torch.nn.Linear(2, 2)) is None
    h = BuilderHook(m, builder(m), lambda mask: mask * 0, "blocks.0.attn.hook_mask")
    assert float(m.build_attention_mask_from_topk(torch.ones(1))) == 0.0
    with pytest.raises(RuntimeError, match="cannot edit Attn's attention mask"):
        m(torch.ones(1))
    h.remove()
    assert float(m.build_attention_mask_from_topk(torch.ones(1))) == 1.0 and not m._forward_hooks
