"""Attention rows without eager attention: checked against the eager model's own probabilities."""
from __future__ import annotations

import copy
import sys
import warnings
from contextlib import ExitStack

import pytest
import torch

import routerlens_interp as rl
from routerlens_interp.hooks import attn_rows
from routerlens_interp.model import TOY_DIR

EX = rl.QAExample("Alice lives in Paris. Bob lives in Rome.", "Where does Alice live?", ["Paris"])
HAS_TOY = (TOY_DIR / "config.json").exists()


def _load(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rl.load(path, **kw)


def _rows_vs_eager(sd, ea):
    """Rows [3, 9] / [0, 2] of a padded batch at every attention layer: the SDPA model's rows equal the
    probabilities the eager model returns with output_attentions (an independent computation: the whole
    eager forward), and its output is unchanged."""
    ids = sd.tokenizer(["Alice Smith was born in 1950 in Paris.", "Bob paints."], padding=True, return_tensors="pt")
    rows = torch.tensor([[3, 9], [0, 2]])
    got = {}
    with ExitStack() as st:
        for l in sd.spec.attention_layers:
            st.enter_context(sd.hooks.read(f"blocks.{l}.attn.hook_pattern", lambda p, l=l: got.__setitem__(l, p),
                                           rows=rows))
        out = sd.hf(**ids)
    assert sd.hooks.rows_refused is None
    ref = ea.hf(**ids, output_attentions=True)
    assert sd.spec.attention_layers
    for l in sd.spec.attention_layers:
        a = ref.attentions[l]
        torch.testing.assert_close(got[l], a.gather(2, rows[:, None, :, None].expand(-1, a.shape[1], -1, a.shape[-1])),
                                   rtol=1e-4, atol=1e-5)
    real = ids["attention_mask"].bool()  # padding rows: a window over padding alone masks every key
    torch.testing.assert_close(out.logits[real], ref.logits[real], rtol=1e-4, atol=1e-4)
    assert sd.hf.config._attn_implementation == "sdpa" and not attn_rows._REQUESTS and not attn_rows._SDPA


# MHA, GQA with head_dim, MLA; every family of the family suite goes through the runtime self-check
@torch.no_grad()
@pytest.mark.parametrize("name", ["olmoe", "qwen3_moe", "deepseek_v3"])
def test_rows_equal_eager_probabilities(name, tiny_paths):
    _rows_vs_eager(_load(tiny_paths[name]), _load(tiny_paths[name], attn_implementation="eager"))


@torch.no_grad()
def test_rows_equal_eager_with_a_sliding_window():
    """A 3-token sliding window: SDPA gets the window in its mask; the rows must keep it."""
    import tiny
    import transformers as tf

    cfg = tiny.configs()["mixtral"]
    cfg.sliding_window = 3
    torch.manual_seed(0)
    hf = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    ref = tf.AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation="eager").eval()
    ref.load_state_dict(hf.state_dict())
    tok = tiny.tokenizer()
    _rows_vs_eager(rl.from_hf(hf, tok), rl.from_hf(ref, tok))


@pytest.mark.skipif(not HAS_TOY, reason="bundled toy weights not present")
def test_bundled_model_same_numbers_sdpa_and_eager():
    """Traces (attention to every span, lens, routing), CAG/AAG and knockout: SDPA load == eager load."""
    sd, ea = _load("toy"), _load("toy", attn_implementation="eager")
    assert (attn_rows.implementation(sd), attn_rows.implementation(ea)) == ("sdpa", "eager")
    data = rl.load_dataset("toy-open", split="test", limit=6)
    a, b = sd.trace(data, batch_size=4), ea.trace(data, batch_size=4)
    torch.testing.assert_close(a.attention, b.attention, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.lens, b.lens, rtol=1e-4, atol=1e-5)
    for l in a.routing:
        assert all(torch.equal(x, y) for x, y in zip(a.routing[l].indices, b.routing[l].indices))
    mask = {l: [0, 1] for l in sd.spec.moe_layers}
    ga, gb = rl.attention_gain(sd, mask, data), rl.attention_gain(ea, mask, data)
    for k in ("cag", "aag", "cag_abs", "aag_abs"):
        torch.testing.assert_close(torch.as_tensor(getattr(ga, k)), torch.as_tensor(getattr(gb, k)),
                                   rtol=1e-4, atol=1e-5, equal_nan=True)
    da, db = rl.token_attention_diff(sd, mask, data[0], layer=0), rl.token_attention_diff(ea, mask, data[0], layer=0)
    torch.testing.assert_close(torch.as_tensor(da["diff"]), torch.as_tensor(db["diff"]), rtol=1e-4, atol=1e-6)
    ka = rl.attention_knockout(sd, data[:3], layer_sets=[[0], [0, 1]], progress=False)
    kb = rl.attention_knockout(ea, data[:3], layer_sets=[[0], [0, 1]], progress=False)
    torch.testing.assert_close(torch.as_tensor(ka.prob), torch.as_tensor(kb.prob), rtol=1e-4, atol=1e-6)
    assert (ka.accuracy == kb.accuracy).all()


@torch.no_grad()
def test_trace_computes_only_the_query_rows(load_tiny, monkeypatch):
    """After the self-check, a trace calls the family's eager function on one query row per example."""
    lm = load_tiny("qwen3_moe")
    attn_rows.check_rows(lm)
    mod = sys.modules[type(lm.spec.attention(lm.hf, 0)).__module__]
    seen = []
    real = mod.eager_attention_forward

    def spy(module, query, *a, **kw):
        seen.append(query.shape[2])
        return real(module, query, *a, **kw)
    monkeypatch.setattr(mod, "eager_attention_forward", spy)
    lm.trace([EX, EX], lens=False, routing=False)
    assert seen and set(seen) == {1} and len(seen) == len(lm.spec.attention_layers)


@torch.no_grad()
def test_knockout_without_eager_blocks_the_keys(load_tiny, tiny_paths):
    """SDPA gets no mask for a pure causal batch: the knockout materialises one; the logits equal the eager
    model's knockout and the knocked-out row gives the keys exactly 0."""
    sd, ea = load_tiny("olmoe"), _load(tiny_paths["olmoe"], attn_implementation="eager")
    enc = sd.encode(EX)
    ids, q, keys = enc.input_ids[None], enc.last_prompt, enc.context[:3].tolist()
    pats, outs = [], []
    for lm in (sd, ea):
        with lm.hooks.read("blocks.1.attn.hook_pattern", pats.append, rows=torch.tensor([q])):
            with rl.knock_out_attention(lm, [1], q, keys, ids.shape[1]):
                outs.append(lm.hf(input_ids=ids).logits)
    assert float(pats[0][0, :, 0, keys].abs().max()) == 0.0
    torch.testing.assert_close(pats[0], pats[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(outs[0][0, q], sd.hf(input_ids=ids).logits[0, q])


def test_self_check_refuses_wrong_rows(tiny_paths, monkeypatch):
    """Rows that do not reproduce eager attention (here: the mask rows dropped, so padding and the causal
    mask are ignored) are refused with the reason, and the model still runs (no hook, config restored)."""
    lm = _load(tiny_paths["mixtral"])
    monkeypatch.setattr(attn_rows, "_row_mask", lambda mask, r, t_q, t_k, dtype, device: None)
    with pytest.raises(ValueError, match="cannot be computed without eager.*weight to keys"):
        lm.trace([EX], lens=False)
    assert lm.hf.config._attn_implementation == "sdpa" and not attn_rows._REQUESTS and not attn_rows._SDPA
    tr = lm.trace([EX], lens=False, attention=False)  # the rest still works
    assert len(tr.routing[0].indices) == 1
    impl = lm.hf.config._attn_implementation
    lm.hf.config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(ValueError, match="eager or sdpa"):
            lm.trace([EX], lens=False)
    finally:
        lm.hf.config._attn_implementation = impl
