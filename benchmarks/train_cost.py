"""Cost of router tuning (RT) and CEFT against full fine-tuning (FFT) on one OLMoE-shaped model.

    python benchmarks/train_cost.py [--json] [--steps 8] [--device cpu|cuda]

Model: OLMoE config, hidden 256, 6 layers, 16 experts of intermediate 256, top-2, vocab 1024
(~21M parameters); CEFT trains N = 4 experts per layer. All three methods run the same batches
(same data, seed and batch size) through ``rl.tune_router`` / ``rl.ceft`` / ``rl.full_finetune``,
each in its own subprocess so that memory peaks do not mix.

Reported per method: trainable parameters, optimizer state bytes, median step time (fastest step
after a warm-up step, over ``--rounds`` alternating runs; the median is shown too), and memory:
  * CUDA: ``torch.cuda.max_memory_allocated`` during training (weights, grads, optimizer state and
    activations) - this is the ``*_mem_ratio``;
  * CPU: torch's allocations are invisible to tracemalloc, so the ratio uses the *training state*
    (bytes of all parameters + gradients + AdamW state, CEFT's slice parameters included), and the
    peak RSS growth during training (``VmHWM`` after resetting it, minus ``VmRSS`` before) is
    reported next to it (noisier: allocator caching, activations).
The last line is one JSON object with ``rt_step_ratio``, ``rt_mem_ratio``, ``ceft_step_ratio``,
``ceft_mem_ratio``, ``ceft_param_ratio`` (each RT or CEFT value divided by FFT's).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

N_EXPERTS, TOP_K, N_SELECTED = 16, 2, 4


def build_model(path: Path) -> None:
    """Save a randomly initialised OLMoE-shaped model and a byte-level BPE tokenizer into ``path``."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.OlmoeConfig(vocab_size=1024, hidden_size=256, intermediate_size=256, num_hidden_layers=6,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         num_experts=N_EXPERTS, num_experts_per_tok=TOP_K, norm_topk_prob=False,
                         pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=False)
    model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    model.save_pretrained(path)
    word_tokenizer(WORDS).save_pretrained(path)


def word_tokenizer(words):
    """A byte-level BPE tokenizer of at most 1,000 tokens trained on ``words`` (the benchmarks' vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<pad>", "<eos>", "<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([" ".join(words)] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")


WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu paris rome oslo lima baker painter "
         "born lives works city river").split()


def examples(n: int = 64):
    """``n`` synthetic open-book QA examples of ~100 tokens (fixed seed: identical for every method)."""
    from routerlens_interp.examples import QAExample

    rng = random.Random(0)
    out = []
    for i in range(n):
        ans = rng.choice(WORDS)
        ctx = " ".join(rng.choice(WORDS) for _ in range(45)) + f". The answer is {ans}."
        out.append(QAExample(ctx, f"What is item {i}?", [ans]))
    return out


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def worker(method: str, model_dir: str, steps: int, device: str) -> dict:
    """Train ``method`` for ``steps`` steps in this process; return its cost figures."""
    import torch

    import routerlens_interp as rl

    warnings.simplefilter("ignore")
    lm = rl.load(model_dir, device=device)
    data = examples()
    kw = dict(max_steps=steps, batch_size=8, lr=5e-4, progress=False, checkpoint_every=0)
    fns = {"rt": rl.tune_router, "fft": rl.full_finetune,
           "ceft": lambda *a, **k: rl.ceft(*a, experts={l: list(range(N_SELECTED)) for l in lm.spec.moe_layers},
                                           **k)}
    param_bytes = sum(p.numel() * p.element_size() for p in lm.hf.parameters())
    expert_params = sum(p.numel() for l in lm.spec.moe_layers
                        for p in lm.spec.experts(lm.hf, l).parameters(recurse=False))
    try:  # reset the RSS high-water mark so VmHWM measures the training run only
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    rss0 = _rss("VmRSS:")
    ad = fns[method](lm, data, None, **kw)
    m = ad.metrics
    extra = m["grad_bytes"] if method == "ceft" else 0  # CEFT's slices are parameters on top of the base
    out = {"method": method, "device": device, "total_params": sum(p.numel() for p in lm.hf.parameters()),
           "expert_params": expert_params, "trainable_params": m["trainable_params"],
           "optimizer_state_bytes": m["optimizer_state_bytes"], "grad_bytes": m["grad_bytes"],
           "training_state_bytes": param_bytes + extra + m["grad_bytes"] + m["optimizer_state_bytes"],
           "step_seconds": m["step_seconds_min"], "step_seconds_median": m["step_seconds"],
           "tokens_per_s": m["tokens_per_s"],
           "rss_peak_delta_bytes": max(_rss("VmHWM:") - rss0, 0)}
    if device.startswith("cuda"):
        out["peak_memory_bytes"] = m.get("peak_memory_bytes")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print only the JSON result line")
    ap.add_argument("--steps", type=int, default=15, help="optimizer steps per method (first is warm-up); 5 gave GPU ratios off by 0.3")
    ap.add_argument("--rounds", type=int, default=3, help="runs per method; the fastest step counts")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.steps, args.device)))
        return 0
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    t0 = time.time()
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build_model(Path(tmp))
        # Rounds alternate the methods and each keeps its fastest step: on a shared machine the minimum is
        # the figure least disturbed by other load; memory figures are the same every round (RSS: min).
        for _ in range(args.rounds):
            for method in ("fft", "rt", "ceft"):
                cmd = [sys.executable, __file__, "--worker", method, "--model", tmp, "--steps", str(args.steps),
                       "--device", device]
                p = subprocess.run(cmd, capture_output=True, text=True,
                                   env={**os.environ, "PYTHONWARNINGS": "ignore"})
                if p.returncode:
                    sys.stderr.write(p.stderr[-4000:])
                    return p.returncode
                r = json.loads(p.stdout.strip().splitlines()[-1])
                if method in res:
                    for k in ("step_seconds", "step_seconds_median", "rss_peak_delta_bytes"):
                        r[k] = min(r[k], res[method][k])
                res[method] = r
    f = res["fft"]
    mem_key = "peak_memory_bytes" if device.startswith("cuda") else "training_state_bytes"
    say(f"OLMoE-shaped model: {f['total_params'] / 1e6:.1f}M parameters ({f['expert_params'] / 1e6:.1f}M in "
        f"experts), {N_EXPERTS} experts, top-{TOP_K}, CEFT N={N_SELECTED}/layer; batch 8, {args.steps} steps × {args.rounds} rounds, "
        f"{device}; memory column = {mem_key}")
    say(f"{'method':6} {'trainable':>12} {'optim state MB':>15} {'step s':>8} {'median':>8} {'memory MB':>10} {'RSS peak+ MB':>13}")
    for m in ("fft", "rt", "ceft"):
        r = res[m]
        say(f"{m:6} {r['trainable_params']:>12,} {r['optimizer_state_bytes'] / 2**20:>15.2f} "
            f"{r['step_seconds']:>8.3f} {r['step_seconds_median']:>8.3f} {r[mem_key] / 2**20:>10.1f} {r['rss_peak_delta_bytes'] / 2**20:>13.1f}")
    ratio = lambda m, k: res[m][k] / f[k]
    share = N_SELECTED / N_EXPERTS * f["expert_params"]
    out = {"rt_step_ratio": ratio("rt", "step_seconds"), "rt_mem_ratio": ratio("rt", mem_key),
           "ceft_step_ratio": ratio("ceft", "step_seconds"), "ceft_mem_ratio": ratio("ceft", mem_key),
           "ceft_param_ratio": ratio("ceft", "trainable_params"),
           "ceft_params_equal_selected_share": res["ceft"]["trainable_params"] == share,
           "rt_rss_ratio": ratio("rt", "rss_peak_delta_bytes") if f["rss_peak_delta_bytes"] else None,
           "ceft_rss_ratio": ratio("ceft", "rss_peak_delta_bytes") if f["rss_peak_delta_bytes"] else None,
           "mem_measure": mem_key, "device": device, "seconds": round(time.time() - t0, 1)}
    say(f"targets: RT step ≤ 0.6, mem ≤ 0.6; CEFT step ≤ 1.0, mem ≤ 0.7; CEFT params = {N_SELECTED}/{N_EXPERTS} "
        f"of expert params ({share:,.0f})")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
