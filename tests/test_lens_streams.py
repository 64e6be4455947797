"""The logit lens of families with several residual streams (hyper-connections, block attention residuals):
every layer's lens against computations that do not go through the toolkit's lens code.

- By hand (DeepSeek-V4): the streams a plain forward hook records after an intermediate layer, through the
  model's own ``hc_head``, ``norm`` and ``lm_head``.
- By truncation (all seven families): the lens of layer ``l`` is, by definition, the logits of the same model
  cut after layer ``l`` (its ``layers`` list shortened): the family's own forward then mixes the streams of
  layer ``l`` and unembeds them.
- Refusal: a multi-stream model whose mixer the toolkit does not know keeps the lens off, with the reason.
"""
from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

import families
import routerlens_interp as rl
from routerlens_interp.hooks import check_lens

CASES = families.cases()
STREAM_FAMILIES = ["deepseek_v4", "hy_v4", "hy_v4_vl", "glm5_next", "qwen4_exp_text", "inkling2_text",
                   "inkling2_loop_text"]
TEXT = "Alice Smith was born in 1950 in Paris."


# the stream-mixing parameters: in the layers (attn_hc / ffn_hc, Qwen4-Exp's *_hyper_connection, Inkling2's
# attention_input / mlp_input) and before the final norm (hc_head, hyper_connection_mixer, final_input)
_MIXING = re.compile(r"(^|\.)(attn_hc|ffn_hc|hc_head|\w*hyper_connection\w*|final_input|attention_input|mlp_input)\.")


def _load(name, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = rl.load(families.save(CASES[name], tmp_path / name))
    # Tiny checkpoints start their mixers at a plain mean (zero biases and queries) and their streams nearly
    # equal, and their lm_head (std 0.02) gives every token about 1/V: move the mixing weights and spread the
    # logits, so that a lens that skipped or replaced the family's mixing could not pass.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pname, p in lm.hf.named_parameters():
            if _MIXING.search(pname):
                p.add_(torch.randn(p.shape, generator=g))
        head = lm.hf.lm_head.weight
        head.copy_(torch.randn(head.shape, generator=g) * 0.3)
    return lm


def _base(lm):
    return lm.hf.get_submodule(lm.spec.layers_path.rsplit(".", 1)[0])


def _ids(lm):
    return torch.tensor([lm.tokenizer(TEXT)["input_ids"]])


def _target(lm, ids) -> int:
    """The model's top token at the last position (its lens probabilities are not all near 1/V)."""
    return int(lm.hf(ids).logits[0, -1].argmax())


def _lens(lm, ids, target):
    tr = lm.trace(TEXT, routing=False, attention=False, lens=True, lens_targets=[target], query=[ids.shape[1] - 1])
    return tr.lens[0]  # [L]


@torch.no_grad()
def test_intermediate_lens_is_hc_head_by_hand(tmp_path):
    lm = _load("deepseek_v4", tmp_path)
    assert check_lens(lm) is None and lm.spec.final_mix == ("streams", "model.hc_head")
    ids, l = _ids(lm), 1
    target = _target(lm, ids)
    seen = []
    handle = lm.hf.model.layers[l].register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    try:
        lm.hf(ids)
    finally:
        handle.remove()
    streams = seen[-1][:, -1:]  # [1, 1, S, D] at the last position
    assert streams.shape[-2] == lm.hf.config.hc_mult > 1
    want = lm.hf.lm_head(lm.hf.model.norm(lm.hf.model.hc_head(streams)))[0, -1].float().softmax(-1)[target]
    got = _lens(lm, ids, target)[l]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-9)
    # the comparison can fail: a plain mean of the streams gives another probability here
    mean = lm.hf.lm_head(lm.hf.model.norm(streams.mean(dim=2)))[0, -1].float().softmax(-1)[target]
    assert abs(float(mean - want)) > 1e-3 * float(want)


@pytest.mark.parametrize("name", STREAM_FAMILIES)
@torch.no_grad()
def test_every_layer_lens_is_the_model_cut_after_it(name, tmp_path):
    lm = _load(name, tmp_path)
    assert check_lens(lm) is None, lm.spec.lens
    assert lm.spec.final_mix is not None
    ids = _ids(lm)
    target = _target(lm, ids)
    got = _lens(lm, ids, target)
    base = _base(lm)
    layers = base.layers
    for l in range(lm.spec.n_layers):
        base.layers = nn.ModuleList(list(layers)[:l + 1])
        try:
            want = lm.hf(ids, use_cache=False).logits[0, -1].float().softmax(-1)[target]
        finally:
            base.layers = layers
        torch.testing.assert_close(got[l], want, rtol=1e-4, atol=1e-9, msg=lambda m: f"{name} layer {l}: {m}")
    # the layers really differ: the lens is not one layer's value repeated
    assert float(got.max() - got.min()) > 1e-3 * float(got.max())


@torch.no_grad()
def test_unknown_stream_mixer_keeps_the_lens_off(tmp_path):
    lm = _load("deepseek_v4", tmp_path)
    lm.spec.final_mix = None  # as for a family whose mixing module the toolkit does not know
    reason = check_lens(lm)
    assert reason is not None and "several streams" in reason and "hc_head" in reason
    with pytest.raises(ValueError, match="lens is off"):
        lm.trace(TEXT, routing=False, attention=False, lens=True, lens_targets=[5])


def test_transformer_lens_backend_refuses_the_block_residual_lens(tmp_path):
    """TransformerLens's hook_resid_post carries a layer's output, not the block states it received."""
    from routerlens_interp.trace.tl_backend import TLUnsupportedError, collect

    lm = _load("inkling2_text", tmp_path)
    ids = _ids(lm)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with pytest.raises(TLUnsupportedError, match="block states"):
        collect(lm, batch, torch.tensor([ids.shape[1] - 1]), None, routing=False, lens=True)


@pytest.mark.parametrize("name, fp32", [("inkling2_text", True), ("gemma4_text", False)])
def test_bf16_lens_scales_the_logits_where_the_family_does(name, fp32, tmp_path):
    """In bf16, Inkling2 casts lm_head's output to float32 before its soft-cap; Gemma 4 soft-caps in bf16. The
    self-check finds which one reproduces the model, and the lens of the last layer then equals the logits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = rl.load(families.save(CASES[name], tmp_path / name), dtype=torch.bfloat16)
    with torch.no_grad():  # logits of a few units: the soft-cap's rounding in bf16 shows
        head = lm.hf.lm_head.weight
        head.copy_((torch.randn(head.shape, generator=torch.Generator().manual_seed(0)) * 0.3).to(head.dtype))
    assert lm.spec.logit_scale is not None and lm.spec.logit_scale[0] == "softcap"
    assert check_lens(lm) is None, lm.spec.lens
    assert lm.spec.logit_scale_fp32 is fp32
    ids = _ids(lm)
    target = _target(lm, ids)
    with torch.no_grad():
        ref = lm.hf(ids).logits[0, -1].float().log_softmax(-1)[target].exp()
    assert float(_lens(lm, ids, target)[-1]) == pytest.approx(float(ref), rel=1e-3, abs=1e-4)
