"""CAG/AAG/APG against a direct computation from output_attentions and final_norm/lm_head."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

import routerlens_interp as rl  # noqa: E402
from routerlens_interp.hooks.attn_rows import use_implementation  # noqa: E402

DATA = [
    rl.QAExample("Alice Smith was born in 1950 in Paris. She works as a baker.", "Where was Alice born?", ["Paris"]),
    rl.QAExample("Bob lives in Rome and paints.", "Where does Bob live?", ["Rome"]),
    rl.QAExample("Carol is a baker.", "Where was Carol born?", ["Lima"]),  # answer absent from context
]
MASK = {0: [0, 1, 2], 2: [5]}


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return rl.load(tiny.save("olmoe", tmp_path_factory.mktemp("olmoe")))


@torch.no_grad()
def _direct(lm):
    """Per example: [L] context mass, [L] answer mass, [L] lens prob — one example at a time."""
    ctx, ans, lens = [], [], []
    for ex in DATA:
        e = lm.encode(ex)
        with use_implementation(lm, "eager"):  # output_attentions needs eager; the traces run SDPA rows
            out = lm.hf(input_ids=e.input_ids[None], output_attentions=True, output_hidden_states=True)
        q = e.last_prompt
        rows = torch.stack([a[0, :, q, :].mean(0) for a in out.attentions])  # [L, T]
        ctx.append(rows[:, e.context].sum(-1))
        ans.append(rows[:, e.answer_in_context].sum(-1) if len(e.answer_in_context) else None)
        hs = out.hidden_states[1:]  # residual after each layer; the last one is already normed by HF
        p = []
        for l, h in enumerate(hs):
            h = h[0, q]
            h = h if l == len(hs) - 1 else lm.hf.model.norm(h)
            p.append(lm.hf.lm_head(h).softmax(-1)[e.answer_ids[0]])
        lens.append(torch.stack(p))
    return ctx, ans, lens


def test_gains_equal_direct_computation(lm):
    b_ctx, b_ans, b_lens = _direct(lm)
    with rl.mask_experts(lm, MASK):
        t_ctx, t_ans, t_lens = _direct(lm)
    g = rl.attention_gain(lm, MASK, DATA)
    p = rl.answer_probability_gain(lm, MASK, DATA)
    mb, mt = torch.stack(b_ctx).mean(0), torch.stack(t_ctx).mean(0)
    np.testing.assert_allclose(g.cag, ((mt - mb) / mb).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g.cag_abs, (mt - mb).numpy(), atol=1e-6)
    keep = [i for i, a in enumerate(b_ans) if a is not None]
    assert g.n_skipped_aag == 1 and g.aag_per_example.shape == (2, lm.spec.n_layers)
    ab, at = torch.stack([b_ans[i] for i in keep]).mean(0), torch.stack([t_ans[i] for i in keep]).mean(0)
    np.testing.assert_allclose(g.aag, ((at - ab) / ab).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(p.apg, (torch.stack(t_lens) - torch.stack(b_lens)).mean(0).numpy(), atol=1e-6)
    assert np.abs(g.cag).max() > 0  # the mask really changed something


def test_model_against_itself_has_zero_gain(lm):
    g = rl.attention_gain(lm, lm, DATA)
    p = rl.answer_probability_gain(lm, lm, DATA)
    assert np.all(g.cag == 0) and np.all(g.aag == 0) and np.all(p.apg == 0)


def test_token_attention_diff(lm):
    d = rl.token_attention_diff(lm, MASK, DATA[0], layer=1)
    assert len(d["tokens"]) == len(d["diff"]) == len(lm.encode(DATA[0]).input_ids)
    np.testing.assert_allclose(d["diff"], d["tuned"] - d["base"])
    assert d["base"].sum() == pytest.approx(1.0, abs=1e-5)
    assert d["answer_in_context"] and all(i in d["context"] for i in d["answer_in_context"])


def test_tuned_of_wrong_type_raises(lm):
    with pytest.raises(TypeError):
        rl.attention_gain(lm, 3.0, DATA)
