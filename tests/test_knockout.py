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
