"""Adapters: save/load round trips, applied/merge, wrong base model, restoring after exceptions."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

import routerlens_interp as rl
import tiny
from routerlens_interp.train import FullAdapter, load_adapter
from test_train import DEV, TRAIN

CFG = dict(max_steps=3, lr=1e-2, batch_size=4, eval_points=2, progress=False)
IDS = torch.tensor([[36, 264, 71, 70, 223, 259, 277, 298, 12, 40, 41, 42]])


def _logits(lm):
    with torch.no_grad():
        return lm.hf(input_ids=IDS).logits


def _sd(lm):
    return {k: v.detach().clone() for k, v in lm.hf.state_dict().items()}


@pytest.fixture(scope="module")
def trained(load_tiny, tmp_path_factory):
    """family → (adapter dir, in-memory adapter, logits of the trained model) for RT and CEFT."""
    out = {}
    for family in ("olmoe", "deepseek_v3"):
        lm = load_tiny(family)
        l0 = lm.spec.moe_layers[0]
        for method, fn in (("router", rl.tune_router),
                           ("ceft", lambda *a, **k: rl.ceft(*a, experts={l0: [0, 5]}, **k))):
            d = tmp_path_factory.mktemp(f"{family}_{method}")
            logits = []
            ad = fn(lm, TRAIN, DEV, out_dir=d, **CFG)
            with ad.applied(lm):
                logits = _logits(lm)
            out[family, method] = (d, ad, logits)
    return out


@pytest.mark.parametrize("family", ["olmoe", "deepseek_v3"])
@pytest.mark.parametrize("method", ["router", "ceft"])
def test_round_trip_reproduces_logits_exactly(trained, load_tiny, family, method):
    lm = load_tiny(family)
    d, ad, logits = trained[family, method]
    base = _logits(lm)
    loaded = load_adapter(d, lm)
    assert type(loaded) is type(ad) and loaded.n_trainable == ad.n_trainable
    with loaded.applied(lm) as same:
        assert same is lm
        assert torch.equal(_logits(lm), logits)
    assert not torch.equal(base, logits)
    assert torch.equal(_logits(lm), base)  # undone on exit


def test_files_hold_only_changed_tensors_and_a_manifest(trained, load_tiny):
    lm = load_tiny("olmoe")
    d, ad, _ = trained["olmoe", "ceft"]
    flat = load_file(str(d / "adapter.safetensors"))
    assert set(flat) == {f"model.layers.0.mlp.experts.{n}::{k}" for n in ("gate_up_proj", "down_proj")
                         for k in ("slices", "index")}
    assert flat["model.layers.0.mlp.experts.gate_up_proj::slices"].shape == (2, 96, 32)
    assert flat["model.layers.0.mlp.experts.down_proj::index"].tolist() == [0, 5]
    man = json.loads((d / "adapter.json").read_text())
    assert man["method"] == "ceft" and man["base_model"] == lm.name and man["family"] == "olmoe"
    assert man["experts"] == {"0": [0, 5]} and man["n_trainable"] == 2 * (96 * 32 + 32 * 48)
    assert man["config"]["lr"] == 1e-2 and len(man["config_hash"]) == 16 and len(man["base_fingerprint"]) == 64
    assert man["metrics"]["steps"] == 3 and "best_dev_loss" in man["metrics"]
    assert load_adapter(d).experts == rl.ExpertSet({0: [0, 5]})
    rt_dir = trained["olmoe", "router"][0]
    assert set(load_file(str(rt_dir / "adapter.safetensors"))) == {
        f"model.layers.{l}.mlp.gate.weight" for l in lm.spec.moe_layers}
    with pytest.raises(ValueError, match="not a RouterAdapter"):
        rl.RouterAdapter.load(d)
    assert isinstance(rl.ExpertAdapter.load(d), rl.ExpertAdapter)


def test_merge_and_save_pretrained_merged(trained, load_tiny, tmp_path):
    d, ad, logits = trained["olmoe", "ceft"]
    lm = load_tiny("olmoe", fresh=True)
    before = _sd(lm)
    ad.save_pretrained_merged(lm, tmp_path / "merged")
    assert all(torch.equal(before[k], v) for k, v in _sd(lm).items())  # lm itself unchanged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = rl.load(tmp_path / "merged")
    assert torch.equal(_logits(merged), logits)
    load_adapter(d).merge(lm)
    assert torch.equal(_logits(lm), logits)
    with pytest.raises(ValueError, match="another base model"):  # merged already: no longer its base
        ad.merge(lm)


def test_wrong_base_model_raises(trained, tiny_paths, tmp_path):
    d, ad, _ = trained["olmoe", "router"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = rl.load(tiny.save("olmoe", tmp_path / "other_olmoe", seed=1))  # same shapes, other weights
        other_family = rl.load(tiny_paths["mixtral"])
    before = _sd(other)
    for call in (lambda: load_adapter(d, other), lambda: ad.applied(other).__enter__(), lambda: ad.merge(other)):
        with pytest.raises(ValueError, match="made for another base model") as err:
            call()
        assert ad.base_model in str(err.value) and other.name in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in _sd(other).items())
    with pytest.raises(ValueError, match="another base model"):
        load_adapter(trained["olmoe", "ceft"][0], other_family)


def test_applied_restores_originals_after_an_exception(trained, load_tiny):
    lm = load_tiny("deepseek_v3")
    before = _sd(lm)
    for method in ("router", "ceft"):
        _, ad, _ = trained["deepseek_v3", method]
        with pytest.raises(RuntimeError, match="boom"):
            with ad.applied(lm):
                assert not all(torch.equal(before[k], v) for k, v in _sd(lm).items())
                raise RuntimeError("boom")
        assert all(torch.equal(before[k], v) for k, v in _sd(lm).items())


def test_full_adapter_round_trip(load_tiny, tmp_path):
    lm = load_tiny("qwen2_moe")
    base = _logits(lm)
    ft = rl.full_finetune(lm, TRAIN, DEV, out_dir=tmp_path, **CFG)
    assert isinstance(ft, FullAdapter) and ft.n_trainable == sum(p.numel() for p in lm.hf.parameters())
    assert torch.equal(_logits(lm), base)
    with ft.applied(lm):
        tuned = _logits(lm)
    with load_adapter(tmp_path, lm).applied(lm):
        assert torch.equal(_logits(lm), tuned)
    assert not torch.equal(tuned, base) and torch.equal(_logits(lm), base)
