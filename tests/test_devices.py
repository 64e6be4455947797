"""Models spread over devices (``device_map``): the device rule (``routerlens_interp.hooks.devices``), every reader,
edit, mask, trainer and metric through accelerate's dispatch hooks, and a real CUDA + CPU placement.

What each test proves:
- the helper tests: the rule itself (input ids on the embedding's device, indices on the CPU when spread, no
  copy when a record is already where it accumulates);
- ``test_dispatched_model_*`` (CPU): a model loaded with a device map that offloads a layer to disk runs through
  accelerate's ``AlignDevicesHook``s (the mechanism ``device_map="auto"`` uses) and gives the same counts,
  traces, masked evaluation and knockout as the same model loaded plainly; training an offloaded layer is
  refused. On a CPU every tensor is on the one device, so these do not prove cross-device moves;
- ``test_cuda_and_cpu_placement`` (GPU only): layers really on two devices (router outputs, residuals and
  logits come back on different devices): count, trace, reroute mask + evaluate, knockout and one router-tuning
  step, compared with the same model on one device.
"""
import shutil
import warnings

import pytest
import torch

import routerlens_interp as rl
from routerlens_interp.hooks.devices import index_device, input_device, output_device, spread, to_acc

EX = [rl.QAExample(context="Alice Smith was born in Paris.", question="Where was Alice Smith born?", answers=["Paris"]),
      rl.QAExample(context="Bob Jones lives in Rome. He is a painter.", question="Where does Bob Jones live?",
                   answers=["Rome"]),
      rl.QAExample(context="Carol is a baker in Lima.", question="Where does Carol work?", answers=["Lima"])]


@pytest.fixture(autouse=True)
def _quiet():
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    hf_logging.enable_progress_bar()


# --- the rule -------------------------------------------------------------------------------------------
def test_device_rule_helpers(load_tiny):
    lm = load_tiny("olmoe")
    assert input_device(lm.hf) == lm.hf.model.embed_tokens.weight.device == lm.device
    assert output_device(lm.hf) == lm.hf.lm_head.weight.device
    assert not spread(lm.hf) and index_device(lm.hf) == output_device(lm.hf)
    acc = torch.zeros(3)
    x = torch.ones(3)
    assert to_acc(x, acc) is x  # same device: no copy

    class Fake(torch.nn.Module):
        hf_device_map = {"model.layers.0": 0, "model.layers.1": "cpu"}
    assert spread(Fake()) and index_device(Fake()) == torch.device("cpu")


def test_count_moves_every_record_to_its_accumulator(load_tiny, monkeypatch):
    """Each router record (logits, indices, weights) of every MoE layer goes through the one move before it is
    accumulated (a guard: on a CPU the move is a no-op, so only the call itself can be checked here)."""
    from routerlens_interp.analysis import counting
    lm = load_tiny("olmoe")
    calls = []
    monkeypatch.setattr(counting, "to_acc", lambda x, acc: calls.append((tuple(x.shape), acc.dtype)) or to_acc(x, acc))
    rl.count_experts(lm, EX, batch_size=len(EX))
    assert len(calls) == 3 * len(lm.spec.moe_layers)
    assert sorted({dt for _, dt in calls}, key=str) == [torch.float64, torch.int64]


# --- accelerate's dispatch hooks on a CPU (a layer offloaded to disk) ------------------------------------
@pytest.fixture(scope="module")
def dispatched(tiny_paths, tmp_path_factory):
    dm = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
          "model.layers.2": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    off = tmp_path_factory.mktemp("offload")
    lm = rl.load(tiny_paths["olmoe"], device_map=dm, offload_folder=str(off))
    plain = rl.load(tiny_paths["olmoe"])
    yield lm, plain
    shutil.rmtree(off, ignore_errors=True)


def test_dispatched_model_is_dispatched(dispatched):
    lm, _ = dispatched
    assert lm.hf.hf_device_map["model.layers.1"] == "disk"
    assert lm.hf.model.layers[1].mlp.experts.gate_up_proj.device.type == "meta"  # held by the offload hook
    assert hasattr(lm.hf.model.layers[1], "_hf_hook")


def test_offloaded_embedding_gets_ids_on_its_execution_device(tiny_paths, tmp_path, dispatched):
    """The embedding offloaded too: its weight is on the meta device, so input ids must not follow the first
    parameter's device (the old ``lm.device`` sent them to "meta" and counting failed)."""
    dm = {"model.embed_tokens": "disk", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
          "model.layers.2": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    lm = rl.load(tiny_paths["olmoe"], device_map=dm, offload_folder=str(tmp_path))
    assert next(lm.hf.parameters()).device.type == "meta" and lm.device == torch.device("cpu")
    assert torch.equal(rl.count_experts(lm, EX).counts, rl.count_experts(dispatched[1], EX).counts)


def test_dispatched_model_counts_and_traces_like_the_plain_one(dispatched):
    lm, plain = dispatched
    a, b = rl.count_experts(lm, EX), rl.count_experts(plain, EX)
    assert torch.equal(a.counts, b.counts) and torch.allclose(a.prob_sums, b.prob_sums)
    ta, tb = lm.trace(EX), plain.trace(EX)
    for l in plain.spec.moe_layers:
        assert all(torch.equal(x, y) for x, y in zip(ta.routing[l].indices, tb.routing[l].indices))
    assert torch.allclose(ta.lens, tb.lens, atol=1e-6)
    assert torch.allclose(ta.attention.nan_to_num(), tb.attention.nan_to_num(), atol=1e-6)


def test_dispatched_model_masks_evaluates_and_knocks_out_like_the_plain_one(dispatched):
    lm, plain = dispatched
    ces = {l: [0, 1] for l in plain.spec.moe_layers}
    out = []
    for m in (lm, plain):
        with rl.mask_experts(m, ces, mode="reroute"):
            c = rl.count_experts(m, EX)
            s = rl.evaluate(m, EX, max_new_tokens=4)
        out.append((c, s))
    (ca, sa), (cb, sb) = out
    assert int(ca.counts[:, :2].sum()) == 0 and torch.equal(ca.counts, cb.counts)
    assert sa["predictions"] == sb["predictions"]
    ka = rl.attention_knockout(lm, EX, layer_sets=[[0], [1, 2]], span="context", progress=False)
    kb = rl.attention_knockout(plain, EX, layer_sets=[[0], [1, 2]], span="context", progress=False)
    assert ka.table() == kb.table()


def test_training_an_offloaded_layer_is_refused(dispatched):
    from routerlens_interp.errors import UserError

    lm, _ = dispatched
    with pytest.raises(UserError, match="offloads to the CPU or disk"):
        rl.tune_router(lm, EX, EX, max_steps=1, progress=False)


# --- a real placement over CUDA and the CPU --------------------------------------------------------------
def _place(hf, device_map: dict):
    """Put each module of ``device_map`` on its device and move its inputs there when it runs (accelerate's
    ``AlignDevicesHook``, as ``dispatch_model`` does for GPU entries). ``dispatch_model`` itself treats "cpu"
    entries as offloaded weights executed on the GPU, so it cannot give a layer whose outputs stay on the CPU."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    for name, dev in device_map.items():
        mod = hf.get_submodule(name)
        mod.to(dev)
        add_hook_to_module(mod, AlignDevicesHook(execution_device=torch.device(dev), io_same_device=False))
    hf.hf_device_map = dict(device_map)
    return hf


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: places layers on cuda and cpu (none here)")
def test_cuda_and_cpu_placement(tiny_paths):
    dm = {"model.embed_tokens": "cuda", "model.rotary_emb": "cuda", "model.layers.0": "cuda", "model.layers.1": "cpu",
          "model.layers.2": "cuda", "model.norm": "cpu", "lm_head": "cuda"}
    plain = rl.load(tiny_paths["olmoe"])
    lm = rl.load(tiny_paths["olmoe"])
    _place(lm.hf, dm)
    assert {p.device.type for p in lm.hf.parameters()} == {"cuda", "cpu"} and lm.device.type == "cuda"
    seen = []
    with lm.hooks.read("blocks.1.router.hook_logits", lambda x: seen.append(x.device)):
        lm.hf(input_ids=torch.tensor([[5, 6, 7]], device="cuda"))
    assert seen[0].type == "cpu"  # the router output really lives on the other device

    # count (per-layer accumulation across devices)
    a, b = rl.count_experts(lm, EX), rl.count_experts(plain, EX)
    assert a.n_tokens == b.n_tokens and int(a.counts.sum()) == int(b.counts.sum())
    assert int((a.counts - b.counts).abs().sum()) <= 0.05 * int(b.counts.sum())  # cuda vs cpu float rounding
    # trace (residuals from two devices stacked for the lens)
    ta, tb = lm.trace(EX), plain.trace(EX)
    assert ta.lens.shape == tb.lens.shape and torch.allclose(ta.lens, tb.lens, atol=1e-3)
    assert torch.allclose(ta.attention.nan_to_num(), tb.attention.nan_to_num(), atol=1e-3)
    # reroute mask + evaluate (masks built on each layer's device)
    ces = {l: [0, 1] for l in plain.spec.moe_layers}
    with rl.mask_experts(lm, ces, mode="reroute"):
        c = rl.count_experts(lm, EX)
        s = rl.evaluate(lm, EX, max_new_tokens=4)
    assert int(c.counts[:, :2].sum()) == 0 and s["n"] == len(EX)
    with rl.mask_experts(lm, ces, mode="zero"):
        rl.evaluate(lm, EX, max_new_tokens=2)
    # knockout (causal mask built on each attention's device)
    k = rl.attention_knockout(lm, EX, layer_sets=[[0], [1], [0, 1, 2]], span="context", progress=False)
    kb = rl.attention_knockout(plain, EX, layer_sets=[[0], [1], [0, 1, 2]], span="context", progress=False)
    assert [r["layers"] for r in k.table()] == [r["layers"] for r in kb.table()]
    assert all(abs(r["prob"] - q["prob"]) < 1e-3 for r, q in zip(k.table(), kb.table()))
    # one router-tuning step (loss and labels on the unembedding's device, gradients on each layer's)
    before = {n: p.detach().cpu().clone() for n, p in lm.hf.named_parameters()}
    rt = rl.tune_router(lm, EX, EX, max_steps=1, progress=False)
    with rt.applied(lm):
        changed = {n for n, p in lm.hf.named_parameters() if not torch.equal(p.detach().cpu(), before[n])}
    assert changed and all(".gate." in n for n in changed), changed
    assert any("layers.1." in n for n in changed) and any("layers.0." in n for n in changed)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")
def test_device_cuda_reads_the_weights_onto_the_gpu(tiny_paths):
    lm = rl.load(tiny_paths["olmoe"], device="cuda")
    assert {p.device.type for p in lm.hf.parameters()} == {"cuda"} and lm.device.type == "cuda"
    plain = rl.load(tiny_paths["olmoe"])
    a, b = rl.count_experts(lm, EX), rl.count_experts(plain, EX)
    assert int((a.counts - b.counts).abs().sum()) <= 0.05 * int(b.counts.sum())
