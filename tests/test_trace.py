"""Tracing (nnsight and TransformerLens backends) against the model's own outputs."""
from __future__ import annotations

import pytest
import torch

import routerlens_interp as rl
from routerlens_interp.hooks.attn_rows import use_implementation
from routerlens_interp.trace.tl_backend import TLUnsupportedError

EXAMPLES = [
    rl.QAExample("Alice Smith was born in Paris. She is a baker in Paris.", "Where was Alice Smith born?", ["Paris"]),
    rl.QAExample("Bob lives in Rome.", "Where does Bob live?", ["Rome"]),
    rl.QAExample("Bob Jones is a painter born in 1972.", "When was Bob Jones born?", ["1972"]),
]


def _alone(lm, ex, with_answer=False):
    """The model's own outputs for one example, no padding."""
    enc = lm.encode(ex, with_answer=with_answer)
    with torch.no_grad(), use_implementation(lm, "eager"):  # output_attentions needs eager; traces run SDPA rows
        out = lm.hf(enc.input_ids[None], output_router_logits=True, output_attentions=True)
    return enc, out


def _expert_inputs(lm, ids):
    seen, hs = {}, []
    for l in lm.spec.moe_layers:
        def hook(mod, args, kwargs, l=l):
            seen[l] = args[1] if len(args) > 1 else kwargs["top_k_index"]
        hs.append(lm.spec.experts(lm.hf, l).register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            lm.hf(ids)
    finally:
        for h in hs:
            h.remove()
    return seen


@pytest.fixture(scope="module")
def traces(lm):
    """nnsight trace of EXAMPLES in one padded batch."""
    return lm.trace(EXAMPLES, batch_size=3)


def test_trace_shapes(lm, traces):
    tr, s = traces, lm.spec
    N, L = len(EXAMPLES), s.n_layers
    assert len(tr) == N and tr.layers == list(range(L)) and tr.moe_layers == s.moe_layers
    assert tr.attention.shape == (N, L, lm.hf.config.num_attention_heads, 3)
    assert tr.lens.shape == (N, L)
    assert set(tr.routing) == set(s.moe_layers)
    for l in s.moe_layers:
        for i, e in enumerate(tr.encoded):
            T = len(e.input_ids)
            assert tr.routing[l].logits[i].shape == (T, 8)
            assert tr.routing[l].indices[i].shape == tr.routing[l].weights[i].shape == (T, 2)
        assert tr[f"blocks.{l}.mlp.hook_expert_indices"] is tr.routing[l].indices
        assert tr[f"blocks.{l}.mlp.gate.hook_out"] is tr.routing[l].logits
    assert tr.attention_to("context").shape == (N, L)
    with pytest.raises(KeyError):
        tr.attention_to("nope")
    with pytest.raises(KeyError):
        tr["blocks.0.nope"]
    assert torch.equal(tr.query, torch.tensor([e.last_prompt for e in tr.encoded]))


def test_lens_last_layer_is_model_distribution(lm, traces):
    for i, ex in enumerate(EXAMPLES):
        enc, out = _alone(lm, ex)
        p = out.logits[0, enc.last_prompt].float().softmax(-1)
        target = int(enc.answer_ids[0])
        assert traces.lens_targets[i] == target
        torch.testing.assert_close(traces.lens[i, -1], p[target], rtol=1e-4, atol=1e-6)
    assert ((traces.lens >= 0) & (traces.lens <= 1)).all()


def test_routing_and_attention_match_hf_outputs(lm, traces):
    for i, ex in enumerate(EXAMPLES):
        enc, out = _alone(lm, ex)
        seen = _expert_inputs(lm, enc.input_ids[None])
        for r, l in enumerate(lm.spec.moe_layers):
            torch.testing.assert_close(traces.routing[l].logits[i], out.router_logits[r], rtol=1e-5, atol=1e-5)
            assert torch.equal(traces.routing[l].indices[i].sort(-1).values, seen[l].sort(-1).values)
        q = enc.last_prompt
        for l in range(lm.spec.n_layers):
            probs = out.attentions[l][0, :, q]  # [H, T]
            for s, name in enumerate(traces.spans):
                pos = enc.span(name)
                ref = probs[:, pos].sum(-1) if len(pos) else torch.zeros(probs.shape[0])
                torch.testing.assert_close(traces.attention[i, l, :, s], ref.float(), rtol=1e-4, atol=1e-6)
    assert (traces.attention_to("answer_in_context") <= traces.attention_to("context") + 1e-6).all()


def _assert_same(a, b, atol=1e-5):
    assert set(a.routing) == set(b.routing)
    for l in a.routing:
        for key in ("logits", "weights"):
            for x, y in zip(getattr(a.routing[l], key), getattr(b.routing[l], key), strict=True):
                torch.testing.assert_close(x, y, rtol=1e-4, atol=atol)
        for x, y in zip(a.routing[l].indices, b.routing[l].indices, strict=True):
            assert torch.equal(x.sort(-1).values, y.sort(-1).values)
    torch.testing.assert_close(a.attention, b.attention, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a.lens, b.lens, rtol=1e-4, atol=1e-6)


def test_padding_gives_same_numbers(lm, traces):
    one = lm.trace(EXAMPLES, batch_size=1)
    assert len({len(e.input_ids) for e in one.encoded}) == 3  # really padded in `traces`
    _assert_same(traces, one)


def test_trace_options(lm):
    ex = EXAMPLES[1]
    enc = lm.encode(ex, with_answer=True)
    tr = lm.trace([ex], with_answer=True, query=[enc.prompt_len + 1], lens_targets=[5], attention=False)
    assert tr.attention is None and len(tr.routing[lm.spec.moe_layers[0]].logits[0]) == len(enc.input_ids)
    with torch.no_grad():
        p = lm.hf(enc.input_ids[None]).logits[0, enc.prompt_len + 1].softmax(-1)[5]
    torch.testing.assert_close(tr.lens[0, -1], p, rtol=1e-4, atol=1e-7)
    texts = lm.trace(["Alice was born in Paris.", "Rome"], lens=False)
    assert texts.lens is None and len(texts) == 2
    with pytest.raises(ValueError, match="lens_targets"):
        lm.trace(["Alice was born in Paris."])
    with pytest.raises(ValueError, match="backend"):
        lm.trace([ex], backend="nope")
    with pytest.raises(TypeError):
        lm.trace([3.5])
    assert not lm.hf.training


# -- TransformerLens backend ------------------------------------------------------------------------
def _our_hooks(lm) -> int:
    """Forward (pre-)hooks on the model, leaving out transformers' own output-capturing hooks (it installs
    them, for good, the first time attentions or router logits are requested)."""
    return sum(1 for m in lm.hf.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())
               if "output_capturing" not in getattr(h, "__qualname__", ""))


def _tl_trace(lm, *args, **kwargs):
    try:
        return lm.trace(*args, backend="transformer_lens", **kwargs)
    except TLUnsupportedError as err:
        pytest.skip(f"TransformerLens bridge cannot boot {lm.spec.family}: {err}")


def test_tl_backend_equals_nnsight(lm, traces):
    types = {n: type(m) for n, m in lm.hf.named_modules()}
    hooks = _our_hooks(lm)
    tl = _tl_trace(lm, EXAMPLES, batch_size=3)
    _assert_same(traces, tl)
    assert lm._tl_bridge is not None
    # the bridge is installed only while it runs: the transformers model is left as it was
    assert {n: type(m) for n, m in lm.hf.named_modules()} == types
    assert _our_hooks(lm) == hooks
    _assert_same(traces, lm.trace(EXAMPLES, batch_size=3), atol=0)  # nnsight still works afterwards


def test_tl_backend_under_mask(lm):
    mask = {l: [0, 3] for l in lm.spec.moe_layers}
    with rl.mask_experts(lm, mask):
        nn_tr = lm.trace(EXAMPLES[:2], batch_size=2)
        tl_tr = _tl_trace(lm, EXAMPLES[:2], batch_size=2)
    _assert_same(nn_tr, tl_tr)
    for l in lm.spec.moe_layers:
        for idx in tl_tr.routing[l].indices:
            assert not torch.isin(idx, torch.tensor(mask[l])).any()


def test_zero_mask_seen_by_trace(lm):
    """Under `zero` both backends record the weights that reach the experts (0 for masked experts)."""
    mask = {l: [2] for l in lm.spec.moe_layers}
    def check(t):
        for l in lm.spec.moe_layers:
            idx, w = t.routing[l].indices[0], t.routing[l].weights[0]
            assert (idx == 2).any() and (w[idx == 2] == 0).all() and (w[idx != 2] != 0).all()

    with rl.mask_experts(lm, mask, mode="zero"):
        tr = lm.trace(EXAMPLES[:1])
    check(tr)
    with rl.mask_experts(lm, mask, mode="zero"):
        tl = _tl_trace(lm, EXAMPLES[:1])
    check(tl)
    _assert_same(tr, tl)


def test_attention_needs_eager_or_sdpa(tiny_paths):
    import transformers as tf

    path = tiny_paths["olmoe"]
    hf = tf.AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
    lm = rl.from_hf(hf, tf.AutoTokenizer.from_pretrained(path))
    assert lm.trace(EXAMPLES[:1]).attention.shape[:2] == (1, 3)  # SDPA: rows computed (tests/test_sdpa_rows.py)
    hf.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="eager or sdpa"):
        lm.trace(EXAMPLES[:1])
    hf.config._attn_implementation = "sdpa"
    tr = lm.trace(EXAMPLES[:1], attention=False)  # routing and lens need no attention probabilities
    assert tr.attention is None and tr.lens.shape == (1, 3)


def test_tl_rebuilds_after_module_swap(load_tiny):
    lm = load_tiny("olmoe", fresh=True)
    _tl_trace(lm, EXAMPLES[:1])
    first = lm._tl_bridge
    old = lm.hf.lm_head
    new = torch.nn.Linear(old.in_features, old.out_features, bias=False)
    with torch.no_grad():
        new.weight.copy_(old.weight * 2)
    lm.hf.lm_head = new
    tl = _tl_trace(lm, EXAMPLES[:1])
    assert lm._tl_bridge is not first and lm.hf.lm_head is new
    _assert_same(lm.trace(EXAMPLES[:1]), tl)


def test_rl_trace_is_the_function_after_the_subpackage_is_imported(lm):
    """Importing routerlens_interp.trace rebinds the package attribute to the subpackage; rl.trace(...)
    must still run the tracer and give the same numbers as the function itself."""
    import routerlens_interp as rl
    import routerlens_interp.trace as sub
    from routerlens_interp.trace.core import trace as fn

    assert rl.trace is sub
    a, b = rl.trace(lm, EXAMPLES[:2]), fn(lm, EXAMPLES[:2])
    assert isinstance(a, rl.Trace)
    torch.testing.assert_close(a.lens, b.lens, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(a.attention, b.attention, rtol=0, atol=0, equal_nan=True)
