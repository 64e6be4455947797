"""Training loop, router tuning, CEFT and FFT on tiny models (CPU, seconds each)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import routerlens_interp as rl
from routerlens_interp.examples import QAExample
from routerlens_interp.train import TrainConfig
from routerlens_interp.train.data import global_batch, shard
from routerlens_interp.train.params import expert_trainable

NAMES = ["Alice", "Bob", "Carol", "Dan", "Eve", "Finn", "Gus", "Hal"]
CITIES = ["Paris", "Rome", "Oslo", "Lima"]
DATA = [QAExample(f"{n} lives in {c}.", f"Where does {n} live?", [c]) for n in NAMES for c in CITIES]
TRAIN, DEV = DATA[:24], DATA[24:]
FAST = dict(batch_size=4, progress=False, eval_points=3)


def _sd(lm):
    return {k: v.detach().clone() for k, v in lm.hf.state_dict().items()}


def _changed(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


# --- data order ------------------------------------------------------------------------------
def test_batches_are_full_deterministic_and_shard_evenly():
    n, b = 10, 4
    steps = [global_batch(n, b, s, seed=1) for s in range(3)]  # one epoch: 3 batches, last topped up
    assert all(len(x) == b for x in steps)
    assert set(sum(steps, [])) == set(range(n))
    assert steps == [global_batch(n, b, s, seed=1) for s in range(3)]
    assert global_batch(n, b, 3, seed=1) != steps[0] or global_batch(n, b, 4, seed=1) != steps[1]  # new epoch order
    batch = list(range(8))
    parts = [shard(batch, 2, r, accum=2) for r in range(2)]
    # micro-batch a of rank r is block a*2+r: concatenated in that order they give the batch back
    assert [i for a in range(2) for r in range(2) for i in parts[r][a]] == batch
    with pytest.raises(ValueError, match="divisible"):
        shard(list(range(6)), 4, 0, accum=1)


def test_config_defaults_hash_and_unknown_option():
    cfg = TrainConfig()
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.max_tokens, cfg.warmup, cfg.seed) == (3, 5e-4, 8, 300, 0.1, 826)
    assert TrainConfig.make(lr=1e-3).config_hash() != cfg.config_hash()
    assert TrainConfig.make(checkpoint_every=7).config_hash() == cfg.config_hash()  # cadence is not a result
    with pytest.raises(TypeError, match="unknown training option"):
        TrainConfig.make(learning_rate=1)


# --- router tuning ---------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["olmoe", "deepseek_v3"])
def test_router_tuning_changes_routers_only(load_tiny, family):
    lm = load_tiny(family, fresh=True)
    before = _sd(lm)
    ad = rl.tune_router(lm, TRAIN, DEV, max_steps=3, lr=1e-2, **FAST)
    assert _changed(before, _sd(lm)) == set()  # the base model is untouched after training
    routers = {f"{lm.spec.router_path(l)}.weight" for l in lm.spec.moe_layers}
    assert set(ad.tensors) == routers
    assert ad.n_trainable == len(routers) * lm.spec.n_experts * lm.hf.config.hidden_size
    with ad.applied(lm):
        assert _changed(before, _sd(lm)) == routers  # correction bias (DeepSeek-V3) is a fixed buffer
    assert _changed(before, _sd(lm)) == set()
    m = ad.metrics
    assert m["steps"] == 3 and m["trainable_params"] == ad.n_trainable and m["best_dev_loss"] is not None


def test_training_and_attribution_run_deterministic_and_restore_the_callers_mode(load_tiny):
    """With more than one CPU thread the experts' gather backward adds rows in any order (4 router-tuning runs
    of the bundled model on 2 threads gave 4 adapters); training and attribution run torch's deterministic
    algorithms and hand the caller's mode back."""
    from routerlens_interp.train.seed import deterministic

    lm = load_tiny("olmoe", fresh=True)
    seen = []
    torch.use_deterministic_algorithms(False)  # a caller's mode (a script's seed_everything may have set it)
    rl.tune_router(lm, TRAIN, DEV, max_steps=2, lr=1e-2, **FAST,
                   callback=lambda info: seen.append(torch.are_deterministic_algorithms_enabled()))
    assert seen == [True, True] and not torch.are_deterministic_algorithms_enabled()
    h = lm.hf.register_forward_hook(lambda *a: seen.append(torch.are_deterministic_algorithms_enabled()))
    try:
        rl.attribute_experts(lm, TRAIN[:4], metric="answer", progress=False)
    finally:
        h.remove()
    assert seen[2:] == [True] and not torch.are_deterministic_algorithms_enabled()
    from routerlens_interp.cli import main  # its seed_everything turns the mode on; main hands the caller's back
    assert main(["evaluate", "--model", "toy", "--data", "toy-conflict", "--limit", "2", "--json"]) == 0
    assert not torch.are_deterministic_algorithms_enabled()
    # the op itself: x[idx] backward with repeated rows, 2 threads, identical every time inside the block
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2000, 64, requires_grad=True)
        idx, up = torch.randint(0, 2000, (16000,), generator=g), torch.randn(16000, 64, generator=g)

        def grad():
            x.grad = None
            (x[idx] * up).sum().backward()
            return x.grad.clone()
        with deterministic():
            first = grad()
            assert all(torch.equal(first, grad()) for _ in range(10))
        torch.use_deterministic_algorithms(True)  # a caller's strict mode comes back strict, not warn-only
        with deterministic():
            pass
        assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)


# --- CEFT ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["olmoe", "qwen2_moe"])
def test_ceft_changes_exactly_the_selected_slices(load_tiny, family):
    lm = load_tiny(family, fresh=True)
    l0, l1 = lm.spec.moe_layers[0], lm.spec.moe_layers[-1]
    experts = rl.ExpertSet({l0: [1, 3], l1: [6]})
    before = _sd(lm)
    # weight decay on: it must not reach the unselected experts
    ad = rl.ceft(lm, TRAIN, DEV, experts=experts, max_steps=3, lr=1e-2, weight_decay=0.1, **FAST)
    assert _changed(before, _sd(lm)) == set()
    per_expert = sum(p[0].numel() for p in lm.spec.experts(lm.hf, l0).parameters(recurse=False))
    assert ad.n_trainable == 3 * per_expert == ad.metrics["trainable_params"]
    # AdamW keeps exp_avg + exp_avg_sq (float32) per trained scalar and a step counter per tensor
    assert ad.metrics["optimizer_state_bytes"] == 2 * 4 * ad.n_trainable + 4 * len(ad.tensors)
    assert ad.experts == experts
    with ad.applied(lm):
        after = _sd(lm)
    for key in _changed(before, after):
        assert ".experts." in key
    for layer in lm.spec.moe_layers:
        for name, _ in lm.spec.experts(lm.hf, layer).named_parameters(recurse=False):
            key = f"{lm.spec.experts_path(layer)}.{name}"
            for e in range(lm.spec.n_experts):
                same = torch.equal(before[key][e], after[key][e])
                assert same == (e not in experts.get(layer, [])), (key, e)


def test_ceft_gradients_and_parameters_exist_only_for_selected_slices(load_tiny):
    lm = load_tiny("olmoe", fresh=True)
    before = _sd(lm)
    n_before = sum(p.numel() for p in lm.hf.parameters())
    with expert_trainable(lm, {0: [2], 2: [0, 7]}) as t:
        trainable = [(n, p) for n, p in lm.hf.named_parameters() if p.requires_grad]
        assert {id(p) for _, p in trainable} == {id(p) for p in t.params.values()}
        assert all(n.endswith(".slices") for n, _ in trainable)
        assert [tuple(p.shape) for p in t.params.values()] == [(1, 32, 48), (1, 96, 32), (2, 32, 48), (2, 96, 32)]
        out = lm.hf(input_ids=torch.tensor([[5, 6, 7, 8, 9]]))  # default grouped_mm experts implementation
        out.logits.square().mean().backward()
        with_grad = [n for n, p in lm.hf.named_parameters() if p.grad is not None]
        assert with_grad == [n for n, _ in trainable]
        assert all(p.grad.abs().sum() > 0 for _, p in trainable)
    assert lm.hf.config._experts_implementation == "grouped_mm"
    assert sum(p.numel() for p in lm.hf.parameters()) == n_before  # parametrisations removed
    assert not any(p.requires_grad is False for p in lm.hf.parameters())  # flags restored
    assert _changed(before, _sd(lm)) == set()


def test_ceft_forward_reads_current_slices_with_or_without_the_batched_row_write(load_tiny):
    """The rows are written once per update by ``Trainable.sync`` (batched); a forward after any other
    change of the slices (a checkpoint loaded with ``copy_``) writes them itself; unselected rows untouched."""
    lm = load_tiny("olmoe", fresh=True)
    before = _sd(lm)
    ids = torch.tensor([[5, 6, 7, 8, 9]])

    def check_rows(t):
        sd = _sd(lm)
        for k, p in t.params.items():  # the base holds the slices in rows idx and nothing else changed
            mod, name = k.rsplit(".", 1)
            base, idx = sd[f"{mod}.parametrizations.{name}.original"], t.index[k]
            rest = [e for e in range(base.shape[0]) if e not in idx.tolist()]
            assert torch.equal(base[idx], p.detach()) and torch.equal(base[rest], before[k][rest])

    with expert_trainable(lm, {0: [2], 2: [0, 7]}) as t:
        logits = lm.hf(input_ids=ids).logits
        for scale in (1, 2, 3):
            with torch.no_grad():
                for p in t.params.values():
                    p.copy_(torch.randn_like(p) * scale)
            if scale == 2:
                t.sync()
                check_rows(t)  # written before any forward
            got = lm.hf(input_ids=ids).logits
            check_rows(t)
            assert not torch.allclose(got, logits)
            logits = got
    assert _changed(before, _sd(lm)) == set()


def test_ceft_rejects_bad_experts(load_tiny):
    lm = load_tiny("deepseek_v3")
    with pytest.raises(ValueError, match="dense layer"):
        rl.ceft(lm, TRAIN, experts={0: [1]}, max_steps=1, **FAST)  # layer 0 is dense in DeepSeek
    with pytest.raises(ValueError, match="out of range"):
        rl.ceft(lm, TRAIN, experts={1: [8]}, max_steps=1, **FAST)


# --- FFT and learning --------------------------------------------------------------------------
def test_loss_decreases_on_a_learnable_task(load_tiny):
    lm = load_tiny("olmoe", fresh=True)
    before = _sd(lm)
    task = dict(max_steps=12, lr=1e-2, batch_size=8, eval_points=4, progress=False)
    ft = rl.full_finetune(lm, DATA, DATA[:8], **task)
    assert ft.metrics["best_dev_loss"] < 0.7 * ft.metrics["initial_dev_loss"]
    assert ft.n_trainable == sum(p.numel() for p in lm.hf.parameters())
    ce = rl.ceft(lm, DATA, DATA[:8], experts={l: [0, 1, 2, 3] for l in lm.spec.moe_layers}, **task)
    assert ce.metrics["best_dev_loss"] < 0.95 * ce.metrics["initial_dev_loss"]
    rt = rl.tune_router(lm, DATA, DATA[:8], **{**task, "lr": 5e-2})  # routers alone move a random model little
    assert rt.metrics["best_dev_loss"] < rt.metrics["initial_dev_loss"]
    assert _changed(before, _sd(lm)) == set()
    assert rt.n_trainable < ce.n_trainable < ft.n_trainable


def test_finetune_only_trains_the_matching_parameters(load_tiny, tmp_path):
    lm = load_tiny("olmoe")
    before = _sd(lm)
    ad = rl.full_finetune(lm, TRAIN, DEV, only="self_attn", max_steps=3, lr=1e-2, out_dir=tmp_path, **FAST)
    attn = {n for n, _ in lm.hf.named_parameters() if "self_attn" in n}
    assert set(ad.tensors) == attn and ad.n_trainable == sum(before[n].numel() for n in attn)
    assert ad.manifest["only"] == "self_attn"
    assert _changed(before, _sd(lm)) == set()
    with ad.applied(lm):
        assert _changed(before, _sd(lm)) == attn  # trained and applied: attention moved, nothing else did
    loaded = rl.load_adapter(tmp_path, lm)
    assert set(loaded.tensors) == attn
    assert all(torch.equal(loaded.tensors[n], ad.tensors[n]) for n in attn)
    with pytest.raises(ValueError, match="matches no parameter.*names look like"):
        rl.full_finetune(lm, TRAIN, only="no_such_module", max_steps=1, **FAST)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        rl.full_finetune(lm, TRAIN, only="(", max_steps=1, **FAST)


def test_best_checkpoint_by_dev_loss_is_kept(load_tiny):
    lm = load_tiny("olmoe")
    # a huge learning rate makes the dev loss go up after the first steps: the best must be an early step
    ad = rl.tune_router(lm, TRAIN, DEV, max_steps=6, lr=3.0, warmup=0.0, max_grad_norm=None, batch_size=4,
                        eval_every=1, progress=False)
    hist = ad.metrics["history"]
    best = min(hist, key=lambda h: h["dev_loss"])
    assert ad.metrics["best_step"] == best["step"] and ad.metrics["best_dev_loss"] == best["dev_loss"]
    with ad.applied(lm):  # the adapter holds the best step's tensors: its dev loss is the best one
        from routerlens_interp.train.data import prepare
        from routerlens_interp.train.loop import dev_loss

        items, _ = prepare(lm, DEV, 300)
        assert dev_loss(lm, items) == pytest.approx(best["dev_loss"], abs=1e-6)


def test_overlong_examples_are_dropped_with_a_count(load_tiny):
    lm = load_tiny("olmoe")
    long = QAExample("word " * 200, "Where?", ["Paris"])
    with pytest.warns(UserWarning, match="dropped 1 of 5 train examples"):
        ad = rl.tune_router(lm, TRAIN[:4] + [long], max_steps=1, **FAST)
    assert ad.metrics["dropped_train"] == 1 and ad.metrics["n_train"] == 4
    with pytest.raises(ValueError, match="no training examples"), pytest.warns(UserWarning, match="dropped 1 of 1"):
        rl.tune_router(lm, [long], max_steps=1, **FAST)


def test_gradient_accumulation_matches_one_big_batch(load_tiny):
    lm = load_tiny("olmoe")
    a = rl.tune_router(lm, TRAIN, max_steps=3, lr=1e-2, batch_size=4, progress=False)
    b = rl.tune_router(lm, TRAIN, max_steps=3, lr=1e-2, batch_size=4, grad_accum=2, progress=False)
    for k in a.tensors:
        torch.testing.assert_close(a.tensors[k], b.tensors[k], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["olmoe", "granitemoe"])  # granitemoe scales its logits after the head
def test_loss_from_answer_positions_only_equals_the_full_loss(load_tiny, family):
    """The loop runs the LM head only where the loss reads it; the loss and router gradients equal a
    hand-computed cross-entropy over the full logits."""
    from routerlens_interp.train.data import collate, prepare
    from routerlens_interp.train.loop import _forward_loss
    from routerlens_interp.train.params import router_trainable

    lm = load_tiny(family)
    items, _ = prepare(lm, TRAIN[:3] + [QAExample("Gus lives in Rome, not in Paris or Oslo.", "Where?", ["Rome"])],
                       300)
    mb = collate(items, lm.tokenizer.pad_token_id, lm.device)
    seen = []
    hook = lm.spec.unembed(lm.hf).register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
    with router_trainable(lm) as t:
        got = _forward_loss(lm.hf, lm.hf, mb)
        got.backward()
        g_got = [p.grad.clone() for p in t.params.values()]
        for p in t.params.values():
            p.grad = None
        logits = lm.hf(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits.float()
        logp = logits.log_softmax(-1)
        want = sum(-logp[b, t - 1, mb["labels"][b, t]] for b in range(len(items))
                   for t in range(mb["labels"].shape[1]) if mb["labels"][b, t] != -100)
        want.backward()
        g_want = [p.grad for p in t.params.values()]
        for p in t.params.values():
            p.grad = None
    hook.remove()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    T = mb["input_ids"].shape[1]
    answer_len = max(len(it.input_ids) - it.prompt_len for it in items)
    assert answer_len <= seen[0] < T // 2 and seen[1] == T  # the head saw the answer span, not the prompt


def test_gradients_left_on_the_model_do_not_enter_the_first_step(load_tiny):
    lm = load_tiny("olmoe")
    kw = dict(max_steps=2, lr=1e-2, batch_size=4, progress=False)
    clean = rl.tune_router(lm, TRAIN, **kw)
    for layer in lm.spec.moe_layers:  # e.g. from a user's own backward call before training
        w = lm.spec.router(lm.hf, layer).weight
        w.grad = torch.full_like(w, 5.0)
    again = rl.tune_router(lm, TRAIN, **kw)
    assert all(torch.equal(clean.tensors[k], again.tensors[k]) for k in clean.tensors)


# --- resume ------------------------------------------------------------------------------------
class Kill(Exception):
    pass


def _checkpoint_step(out_dir) -> int:
    from routerlens_interp import safe_state
    from routerlens_interp.train.loop import CKPT_KIND

    return safe_state.load(Path(out_dir) / "checkpoint/state.safetensors", CKPT_KIND, "")["step"]


@pytest.mark.parametrize("method", ["router", "ceft"])
def test_resume_after_kill_equals_uninterrupted_run(load_tiny, tmp_path, method):
    lm = load_tiny("olmoe")
    run = (rl.tune_router if method == "router" else
           lambda *a, **k: rl.ceft(*a, experts={0: [1], 2: [3, 4]}, **k))
    cfg = dict(max_steps=6, lr=1e-2, batch_size=4, eval_every=2, checkpoint_every=2, progress=False)
    ref = run(lm, TRAIN, DEV, out_dir=tmp_path / "ref", **cfg)

    def kill_at(k, backup=None):
        def cb(info):
            if backup and info["step"] == k - 1:  # copy of the last periodic checkpoint before the "kill"
                shutil.copytree(tmp_path / "run" / "checkpoint", backup, dirs_exist_ok=True)
            if info["step"] == k:
                raise Kill
        return cb

    # 1) interrupted between steps: the checkpoint written on the way out keeps step 3
    with pytest.raises(Kill):
        run(lm, TRAIN, DEV, out_dir=tmp_path / "run", callback=kill_at(3), **cfg)
    assert _checkpoint_step(tmp_path / "run") == 3
    done = []
    got = run(lm, TRAIN, DEV, out_dir=tmp_path / "run", resume=True, callback=lambda i: done.append(i["step"]), **cfg)
    assert done == [4, 5, 6]  # nothing repeated, nothing lost
    # 2) hard kill after step 5: only the periodic checkpoint of step 4 survives
    shutil.rmtree(tmp_path / "run")
    with pytest.raises(Kill):
        run(lm, TRAIN, DEV, out_dir=tmp_path / "run", callback=kill_at(5, tmp_path / "bak"), **cfg)
    shutil.rmtree(tmp_path / "run/checkpoint")
    shutil.copytree(tmp_path / "bak", tmp_path / "run/checkpoint")
    got2 = run(lm, TRAIN, DEV, out_dir=tmp_path / "run", resume=True, **cfg)
    for g in (got, got2):
        assert set(g.tensors) == set(ref.tensors)
        for k in ref.tensors:
            assert torch.equal(g.tensors[k], ref.tensors[k]), k
        assert g.metrics["history"] == ref.metrics["history"]
        assert g.metrics["best_step"] == ref.metrics["best_step"]
    assert rl.load_adapter(tmp_path / "run").metrics["steps"] == 6
    # resuming a finished run returns its result without training; another config refuses to resume
    again = run(lm, TRAIN, DEV, out_dir=tmp_path / "run", resume=True, **cfg)
    assert all(torch.equal(again.tensors[k], ref.tensors[k]) for k in ref.tensors)
    with pytest.raises(ValueError, match="different training config"):
        run(lm, TRAIN, DEV, out_dir=tmp_path / "run", resume=True, **{**cfg, "lr": 2e-2})


# --- several processes ---------------------------------------------------------------------------
WORKER = """
import sys, warnings
warnings.simplefilter("ignore")
import torch
import routerlens_interp as rl
sys.path.insert(0, {tests!r})
from test_train import TRAIN
lm = rl.load({model!r})
kw = dict(max_steps=4, lr=1e-2, batch_size=4, progress=False)
rl.tune_router(lm, TRAIN, out_dir={out!r} + "/rt", **kw)
rl.ceft(lm, TRAIN, experts={{0: [1, 2], 2: [5]}}, out_dir={out!r} + "/ceft", **kw)
"""


def _gloo_ok() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_gloo_available()


@pytest.mark.skipif(not _gloo_ok(), reason="torch.distributed with gloo is unavailable")
def test_two_gloo_processes_equal_one_process_with_doubled_batch(load_tiny, tiny_paths, tmp_path):
    """2 processes × 2 examples per step (DDP, gloo, launched by torchrun as ``accelerate`` documents for
    CPUs) give the same routers as 1 process × 4 examples."""
    script = tmp_path / "worker.py"
    out = tmp_path / "ddp"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent), model=tiny_paths["olmoe"], out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lm = load_tiny("olmoe")
    kw = dict(max_steps=4, lr=1e-2, batch_size=4, progress=False)
    for name, one in (("rt", rl.tune_router(lm, TRAIN, **kw)),
                      ("ceft", rl.ceft(lm, TRAIN, experts={0: [1, 2], 2: [5]}, **kw))):
        ddp = rl.load_adapter(out / name)
        assert ddp.metrics["processes"] == 2 and one.metrics["processes"] == 1
        assert set(ddp.tensors) == set(one.tensors)
        for k in one.tensors:
            torch.testing.assert_close(ddp.tensors[k], one.tensors[k], atol=1e-5, rtol=1e-4)
            assert not torch.equal(one.tensors[k], _base(lm, k, one.index[k]))  # it did train
        assert ddp.metrics["train_loss"] == pytest.approx(one.metrics["train_loss"], rel=1e-5)


FSDP_WORKER = """
import json, sys, warnings
warnings.simplefilter("ignore")
import torch
import routerlens_interp as rl
sys.path.insert(0, {tests!r})
from test_train import TRAIN, DEV
lm = rl.load({model!r})
before = {{k: v.clone() for k, v in lm.hf.state_dict().items()}}
classes = {{n: type(m) for n, m in lm.hf.named_modules()}}
kw = dict(max_steps=4, lr=1e-2, batch_size=4, progress=False, eval_every=2)  # FSDP: from accelerate launch
experts = {{0: [1, 2], 2: [5]}}
rl.tune_router(lm, TRAIN, DEV, out_dir={out!r} + "/rt", **kw)
rl.ceft(lm, TRAIN, DEV, experts=experts, out_dir={out!r} + "/ceft", **kw)
rl.full_finetune(lm, TRAIN, DEV, out_dir={out!r} + "/fft", **kw)
class Kill(Exception):
    pass
def kill(info):
    if info["step"] == 2:
        raise Kill
try:
    rl.ceft(lm, TRAIN, DEV, experts=experts, out_dir={out!r} + "/resumed", callback=kill, checkpoint_every=2, **kw)
except Kill:
    pass
rl.ceft(lm, TRAIN, DEV, experts=experts, out_dir={out!r} + "/resumed", resume=True, checkpoint_every=2, **kw)
after = lm.hf.state_dict()
report = {{"unchanged": all(torch.equal(before[k], after[k]) for k in before) and set(before) == set(after),
          "plain": all(type(v) is torch.Tensor for v in after.values()),
          "classes": {{n: type(m) for n, m in lm.hf.named_modules()}} == classes}}
if torch.distributed.get_rank() == 0:
    json.dump(report, open({out!r} + "/report.json", "w"))
torch.distributed.barrier()
torch.distributed.destroy_process_group()
"""


@pytest.mark.skipif(not _gloo_ok(), reason="torch.distributed with gloo is unavailable")
def test_fsdp_two_gloo_processes_equal_one_process_with_doubled_batch(load_tiny, tiny_paths, tmp_path):
    """FSDP (torch ``fully_shard``, parameters, gradients and AdamW state sharded over 2 gloo processes ×
    2 examples per step, started by ``accelerate launch --use_fsdp``) gives the same tensors as 1 process ×
    4 examples, for RT, CEFT (whose trained rows must reach the sharded base for backward) and FFT; a
    killed and resumed FSDP run equals an uninterrupted one; the model is left unsharded and unchanged."""
    script = tmp_path / "worker.py"
    out = tmp_path / "fsdp"
    script.write_text(FSDP_WORKER.format(tests=str(Path(__file__).parent), model=tiny_paths["olmoe"], out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", "2", "--num_processes",
           "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "report.json").read_text()) == {"unchanged": True, "plain": True, "classes": True}
    lm = load_tiny("olmoe")
    kw = dict(max_steps=4, lr=1e-2, batch_size=4, progress=False, eval_every=2)
    experts = {0: [1, 2], 2: [5]}
    for name, one in (("rt", rl.tune_router(lm, TRAIN, DEV, **kw)),
                      ("ceft", rl.ceft(lm, TRAIN, DEV, experts=experts, **kw)),
                      ("fft", rl.full_finetune(lm, TRAIN, DEV, **kw))):
        runs = [rl.load_adapter(out / name)] + ([rl.load_adapter(out / "resumed")] if name == "ceft" else [])
        for got in runs:
            assert got.metrics["processes"] == 2 and got.metrics["fsdp"] and not one.metrics["fsdp"]
            assert set(got.tensors) == set(one.tensors)
            for k in one.tensors:
                torch.testing.assert_close(got.tensors[k], one.tensors[k], atol=1e-5, rtol=1e-4)
            assert got.metrics["best_step"] == one.metrics["best_step"]
            for h, h1 in zip(got.metrics["history"], one.metrics["history"], strict=True):
                assert h["dev_loss"] == pytest.approx(h1["dev_loss"], rel=1e-5)
        assert sum(not torch.equal(one.tensors[k], _base(lm, k, one.index[k])) for k in one.tensors) > 0
    # each process held half of the AdamW state (2 tensors of the trained size, float32; step counters)
    rt = rl.load_adapter(out / "rt")
    assert rt.metrics["optimizer_state_bytes"] == 2 * 4 * rt.n_trainable // 2 + 4 * len(rt.tensors)


def _base(lm, name, index):
    t = dict(lm.hf.named_parameters())[name].detach()
    return t if index is None else t[index]
