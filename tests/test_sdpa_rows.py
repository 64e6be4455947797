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


def _rows_vs_eager(sd, ea, atol=1e-5):
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
                                   rtol=10 * atol, atol=atol)
    real = ids["attention_mask"].bool()  # padding rows: a window over padding alone masks every key
    torch.testing.assert_close(out.logits[real], ref.logits[real], rtol=10 * atol, atol=10 * atol)
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


def _gemma4(seed: int, dtype=torch.float32, impl="sdpa"):
    """Gemma 4 with Gemma4TextConfig's defaults but for the sizes: its default ``layer_types`` (5 sliding : 1
    full, the last layer forced full: sliding, sliding, full here), full-attention layers with global_head_dim
    512, attention scaling 1 on RMS-normed q/k, per-layer inputs (only their table cut to the tiny vocabulary)."""
    import tiny
    import transformers as tf
    from family_table_a import BASE

    cfg = tf.Gemma4TextConfig(**BASE, head_dim=8, intermediate_size=32, enable_moe_block=True, num_experts=8,
                              top_k_experts=2, moe_intermediate_size=16, vocab_size_per_layer_input=320)
    assert cfg.layer_types == ["sliding_attention", "sliding_attention", "full_attention"]
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = tf.Gemma4ForCausalLM._from_config(cfg, attn_implementation=impl, experts_implementation="eager")  # grouped_mm: no float64
        hf = hf.to(dtype).eval()
    return rl.from_hf(hf, tiny.tokenizer())


@torch.no_grad()
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_gemma4_default_layer_types_rows_equal_eager(seed):
    """Gemma 4's full-attention layer (2) has logits up to ~90 (512-dim unit-RMS heads, no 1/sqrt(d)): the
    float32 rounding by which an eager forward drifts from an SDPA one before layer 2 moves its probabilities
    by > 1e-5. The self-check compares the rows with eager attention on the layer's own input, so it passes;
    in float64 (no drift to speak of) the rows equal the whole eager forward's probabilities at every layer, to
    the float32 rounding of the softmax Gemma 4's eager attention computes in float32 whatever the dtype."""
    lm = _gemma4(seed)
    assert attn_rows.check_rows(lm) is None
    sd, ea = _gemma4(seed, torch.float64), _gemma4(seed, torch.float64, "eager")
    _rows_vs_eager(sd, ea, atol=1e-6)


def test_gemma4_self_check_still_refuses_wrong_rows(monkeypatch):
    """The rows computed without the layer's own scaling (1 in Gemma 4: eager's default 1/sqrt(d) instead)
    are refused: the reference on the same input does not hide a wrong computation."""
    lm = _gemma4(1)
    real = attn_rows.rows_probs
    monkeypatch.setattr(attn_rows, "rows_probs", lambda mod, q, k, v, m, kw, rows: real(
        mod, q, k, v, m, {x: y for x, y in kw.items() if x != "scaling"}, rows))
    reason = attn_rows.check_rows(lm)
    assert reason is not None and "rows differ from eager probabilities" in reason


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
