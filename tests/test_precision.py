"""Gradient checkpointing and bf16 (autocast + fp32 master weights) on tiny models."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.utils import parametrize

import routerlens_interp as rl
from routerlens_interp.train import TrainConfig
from routerlens_interp.train.data import answer_loss, collate, prepare
from routerlens_interp.train.params import expert_trainable, router_trainable
from routerlens_interp.train.precision import training_precision

NAMES = ["Alice", "Bob", "Carol", "Dan"]
CITIES = ["Paris", "Rome", "Oslo"]
DATA = [rl.QAExample(f"{n} lives in {c}.", f"Where does {n} live?", [c]) for n in NAMES for c in CITIES]
FAST = dict(batch_size=4, progress=False, eval_points=1, max_steps=2)


def _bf16(tiny_paths, family="qwen3_moe"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rl.load(tiny_paths[family], dtype=torch.bfloat16)


def _grads(lm, trainable, mb, **kw):
    """Gradients of the summed answer loss w.r.t. the trainable tensors (model in train mode)."""
    params = list(trainable.params.values())
    lm.hf.train()
    try:
        with training_precision(lm.hf, params, **kw), parametrize.cached():  # as the training loop runs it
            out = lm.hf(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"], use_cache=False)
            loss = answer_loss(out.logits, mb["labels"])
            return loss.detach(), torch.autograd.grad(loss, params)
    finally:
        lm.hf.eval()


def test_checkpointing_gives_the_same_gradients(load_tiny):
    """Per-layer recompute in backward (non-reentrant: routers and CE slices get gradients though the
    embeddings are frozen): the gradients of a plain backward, for RT and CEFT."""
    lm = load_tiny("olmoe")
    mb = collate(prepare(lm, DATA[:4], 300, "train")[0], lm.tokenizer.pad_token_id, lm.device)
    for setup in (lambda: router_trainable(lm), lambda: expert_trainable(lm, {0: [1, 5], 2: [3]})):
        with setup() as t:
            l0, g0 = _grads(lm, t, mb)
            l1, g1 = _grads(lm, t, mb, gradient_checkpointing=True)
            assert lm.hf.is_activation_checkpointing is False  # switched off again
        assert torch.equal(l0, l1) and all(g.abs().sum() > 0 for g in g0)
        for a, b in zip(g0, g1):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_bf16_autocast_keeps_fp32_masters_and_restores(load_tiny, tiny_paths):
    """On a bf16 model the trained tensors are float32 while training (master weights), bf16 again after;
    the loss under autocast is close to the float32 model's."""
    lm32 = load_tiny("qwen3_moe")
    lm = _bf16(tiny_paths)
    items = prepare(lm, DATA[:4], 300, "train")[0]
    mb = collate(items, lm.tokenizer.pad_token_id, lm.device)
    with router_trainable(lm) as t:
        p = next(iter(t.params.values()))
        with training_precision(lm.hf, list(t.params.values()), "bf16"):
            assert p.dtype == torch.float32 and lm.hf.get_input_embeddings().weight.dtype == torch.bfloat16
        assert p.dtype == torch.bfloat16
        lb, gb = _grads(lm, t, mb, precision="bf16")
        assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in gb)
    with router_trainable(lm32) as t:
        l32, _ = _grads(lm32, t, mb)
    assert abs(float(lb) - float(l32)) / float(l32) < 0.05
    with pytest.raises(ValueError, match="fp32' or 'bf16"):
        TrainConfig.make(precision="fp16")
    assert TrainConfig.make(precision="fp32").config_hash() == TrainConfig().config_hash()
    assert TrainConfig.make(precision="bf16").config_hash() != TrainConfig().config_hash()
    assert TrainConfig.make(gradient_checkpointing=True).config_hash() == TrainConfig().config_hash()


def test_bf16_model_traces_masks_counts_evaluates_and_trains(tiny_paths):
    """A model loaded in bf16: trace (SDPA attention rows), mask, count, evaluate, and two bf16 steps of each
    training method with checkpointing; the model comes back in bf16 with its frozen weights untouched."""
    lm = _bf16(tiny_paths)
    tr = lm.trace(DATA[:2], lens=True)
    assert torch.isfinite(tr.attention).all() and torch.isfinite(tr.lens).all()
    assert lm.hooks.rows_refused is None
    counts = rl.count_experts(lm, DATA[:3])
    with rl.mask_experts(lm, {0: [0, 1]}):
        masked = rl.count_experts(lm, DATA[:3])
    assert masked.counts[0, :2].sum() == 0 < counts.counts[0, :2].sum()
    ev = rl.evaluate(lm, DATA[:2], max_new_tokens=3)
    assert 0 <= ev["em"] <= 100
    before = {k: v.clone() for k, v in lm.hf.state_dict().items()}
    cfg = dict(FAST, precision="bf16", gradient_checkpointing=True)
    ads = [rl.tune_router(lm, DATA, DATA[:2], **cfg), rl.ceft(lm, DATA, DATA[:2], experts={0: [2], 1: [3]}, **cfg),
           rl.full_finetune(lm, DATA, DATA[:2], only=r"self_attn\.q_proj", **cfg)]
    for ad in ads:
        m = ad.metrics
        assert m["steps"] == 2 and m["best_dev_loss"] is not None and m["best_dev_loss"] == m["best_dev_loss"]
    after = lm.hf.state_dict()
    assert all(after[k].dtype == before[k].dtype and torch.equal(after[k], before[k]) for k in before)
    assert not lm.hf.is_activation_checkpointing
    moved = [k for k, v in ads[0].tensors.items() if v.dtype != torch.float32]
    assert not moved  # the adapters hold the float32 masters
