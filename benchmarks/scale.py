"""Costs at real layer shapes: OLMoE-1B-7B and Qwen3-30B-A3B, one decoder layer, real vocabulary, random weights.

    python benchmarks/scale.py [--json] [--device cpu|cuda] [--layers 1]

Per model shape (built from a config with ``num_hidden_layers`` = ``--layers``; every other size is the real
model's), each group in a fresh subprocess so that memory peaks do not mix:

- ``trace``: one example of T = 512 and T = 4096 tokens: a bare SDPA forward (next-token logits only), the
  full trace (routing + attention rows of the last prompt position on 3 spans + logit lens) on the SDPA
  model, and the same trace with eager attention (what ``rl.load`` forced before: ``[B, H, T, T]`` per
  layer); count tokens/s (``count_experts``, T = 512) and greedy decoding tokens/s (``generate`` as
  ``evaluate`` runs it, 512-token prompt, 16 new tokens).
- ``train`` (OLMoE shape): one process per method: router tuning, CEFT with 8 experts per layer, full
  fine-tuning; batch 4 of ~300-token QA examples (NQ-Swap size), 3 steps; step time = median of steps 2-3.
- ``ckpt`` (OLMoE shape, 4 layers: with one there is nothing to checkpoint): activation memory of one
  router-tuning step on one 1024-token example with and without gradient checkpointing.

Time on CPU is the process's CPU time (``time.process_time``; wall time is printed too): the cores are
shared, and a single wall-clock run of 45 s varied by ±20 % there. On CUDA: wall time.

Memory. CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU: tracemalloc does
not see torch's allocations, so the RSS high-water mark is used: ``/proc/self/clear_refs`` ← 5 resets
``VmHWM`` to the current RSS, and ``VmHWM`` after the measured call is the peak (large tensors are mmapped
and returned to the OS when freed, so the RSS follows torch's live tensors). Two quantities:
``*_act`` = peak minus the memory right before the call (activations and temporaries of a forward; for a
training run also its gradients and optimizer state), ``*_total`` = peak minus the process before the model
was built (weights included). Trace ratios use ``_act`` (weights are the same in both), training ratios use
``_total`` (what must fit on the device).

The last line is one JSON object: ``trace_time_ratio_4096``, ``trace_mem_ratio_4096`` (SDPA trace / bare
SDPA forward, OLMoE shape), ``eager_trace_mem_ratio_4096`` (eager trace / the same bare forward),
``rt_step_ratio``, ``rt_mem_ratio``, ``ceft_mem_ratio`` (vs FFT), ``ckpt_act_mem_ratio`` (with / without
checkpointing), plus ``details`` with every measured number. Targets (issue 15): trace ≤ 1.10 in time and
memory; RT step ≤ 0.65 × FFT, RT and CEFT memory ≤ 0.5 × FFT; checkpointing ≤ 0.5 × activation memory.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

SHAPES = {  # the real models' sizes (config.json of the hub checkpoints); only the layer count is cut
    "olmoe": dict(cls="OlmoeConfig", vocab_size=50304, hidden_size=2048, intermediate_size=1024,
                  num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
                  norm_topk_prob=False, max_position_embeddings=4096, full_layers=16),
    "qwen3": dict(cls="Qwen3MoeConfig", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                  moe_intermediate_size=768, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                  num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, max_position_embeddings=8192,
                  full_layers=48),
}
CKPT_LAYERS = 4
TARGETS = {"trace_time_ratio_4096": 1.10, "trace_mem_ratio_4096": 1.10, "rt_step_ratio": 0.65,
           "rt_mem_ratio": 0.5, "ceft_mem_ratio": 0.5, "ckpt_act_mem_ratio": 0.5}
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


# ------------------------------------------------------------------------------------------- memory
class Mem:
    """Peak memory of a call: CUDA allocator statistics, or the process's RSS high-water mark on CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.start = self.now()  # the process before the model is built

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"{key} not in /proc/self/status")

    def now(self) -> int:
        import torch

        return torch.cuda.memory_allocated() if self.cuda else self._status("VmRSS")

    def reset(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        self.before = self.now()

    def peak(self) -> dict:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            p = torch.cuda.max_memory_allocated()
        else:
            p = self._status("VmHWM")
        return {"act": p - self.before, "total": p - self.start}


def measure(mem: Mem, fn, device: str) -> dict:
    import torch

    mem.reset()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, **mem.peak()}


# -------------------------------------------------------------------------------------------- model
def tokenizer():
    """A byte-level BPE tokenizer of 1,000 tokens (its ids are a subset of the real vocabulary)."""
    from train_cost import word_tokenizer  # benchmarks/ is on sys.path when a benchmark runs as a script

    return word_tokenizer(WORDS)


def build(shape: str, layers: int, device: str, dtype=None):
    """A random-weight MoEModel with the real layer shape of ``shape`` and ``layers`` decoder layers."""
    import torch
    import transformers as tf
    from transformers.initialization import no_init_weights

    import routerlens_interp as rl

    kw = dict(SHAPES[shape])
    cls, _ = getattr(tf, kw.pop("cls")), kw.pop("full_layers")
    cfg = cls(**kw, num_hidden_layers=layers, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
              bos_token_id=2)
    torch.manual_seed(0)
    with no_init_weights():  # transformers' init of 0.6-1.2 B parameters takes minutes on CPU
        hf = tf.AutoModelForCausalLM.from_config(cfg, dtype=dtype or torch.float32)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02 if "gate.weight" not in name else 1.0)
    hf = hf.to(device).eval()
    return rl.from_hf(hf, tokenizer(), name=f"{shape}-{layers}L")


def encoded(T: int, vocab: int = 1000, seed: int = 0):
    """One Encoded example of ``T`` tokens with context / question / answer spans."""
    import torch

    from routerlens_interp.prompts import Encoded

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (T,), generator=g)
    ctx, q, ans = torch.arange(8, T - 40), torch.arange(T - 30, T - 2), torch.arange(T // 2, T // 2 + 3)
    return Encoded(ids, T, ctx, q, ans, torch.zeros(0, dtype=torch.long), ids[ans[:1]].clone())


def qa(n: int, words: int, seed: int = 0):
    """``n`` QAExamples whose contexts have ``words`` words (about that many tokens with :func:`tokenizer`)."""
    import random

    import routerlens_interp as rl

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ans = rng.choice(WORDS)
        ctx = " ".join(rng.choice(WORDS) for _ in range(words // 2)) + f" the answer is {ans}. " + \
            " ".join(rng.choice(WORDS) for _ in range(words // 2))
        out.append(rl.QAExample(ctx, "what is the answer?", [ans]))
    return out


# ------------------------------------------------------------------------------------------ workers
def work_trace(shape: str, layers: int, device: str) -> dict:
    import torch

    import routerlens_interp as rl
    from routerlens_interp.hooks.attn_rows import use_implementation

    mem = Mem(device)
    lm = build(shape, layers, device)
    out = {"params": sum(p.numel() for p in lm.hf.parameters())}
    lm.trace([encoded(64)], batch_size=1)  # the one-off self-checks (lens, attention rows) off the clock
    with use_implementation(lm, "eager"):
        lm.trace([encoded(64)], batch_size=1)
    for T in (512, 4096):
        enc = [encoded(T)]
        ids = enc[0].input_ids[None].to(lm.device)

        def bare():
            with torch.no_grad():
                lm.hf(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1)

        def eager():
            with use_implementation(lm, "eager"):
                lm.trace(enc, batch_size=1)
        out[f"bare_{T}"] = measure(mem, bare, device)
        out[f"trace_{T}"] = measure(mem, lambda: lm.trace(enc, batch_size=1), device)
        out[f"eager_trace_{T}"] = measure(mem, eager, device)
        print(f"  {shape} T={T}: " + ", ".join(f"{k.rsplit('_', 1)[0]} {out[k]['cpu_s']:.1f} s {out[k]['act'] / 2**20:.0f} MiB"
                                              for k in (f"bare_{T}", f"trace_{T}", f"eager_trace_{T}")),
              file=sys.stderr, flush=True)
    enc = [encoded(512)]
    c = measure(mem, lambda: rl.count_experts(lm, enc, batch_size=1), device)
    out["count_tokens_per_s"] = 512 / c["s"]
    ids = enc[0].input_ids[None].to(lm.device)
    g = measure(mem, lambda: lm.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                                            min_new_tokens=16, do_sample=False, pad_token_id=0), device)
    out["evaluate_tokens_per_s"] = 16 / g["s"]
    out["evaluate_prompt_plus_16_s"] = g["s"]
    return out


def work_train(shape: str, layers: int, device: str, method: str, steps: int = 3) -> dict:
    import routerlens_interp as rl

    mem = Mem(device)
    lm = build(shape, layers, device)
    data = qa(12, 190)
    marks = []
    cfg = dict(batch_size=4, max_steps=steps, max_tokens=2048, progress=False, eval_points=1,
               callback=lambda info: marks.append((time.perf_counter(), time.process_time())))
    experts = {l: list(range(8)) for l in lm.spec.moe_layers}
    run = {"rt": lambda: rl.tune_router(lm, data, None, **cfg),
           "ceft": lambda: rl.ceft(lm, data, None, experts=experts, **cfg),
           "fft": lambda: rl.full_finetune(lm, data, None, **cfg)}[method]
    t0 = (time.perf_counter(), time.process_time())
    m = measure(mem, run, device)
    times = [b[0] - a[0] for a, b in zip([t0] + marks[:-1], marks)]
    cpu = [b[1] - a[1] for a, b in zip([t0] + marks[:-1], marks)]
    n_tok = sum(len(lm.encode(ex, with_answer=True).input_ids) for ex in data) / len(data)
    return {**m, "step_s": statistics.median(times[1:]), "step_cpu_s": statistics.median(cpu[1:]),
            "step_times": times, "step_cpu_times": cpu, "tokens_per_example": n_tok, "batch": 4}


def work_ckpt(shape: str, layers: int, device: str) -> dict:
    """Checkpointing keeps each layer's input and recomputes the rest in backward: with one layer there is
    nothing to save, so this group uses ``CKPT_LAYERS`` layers."""
    import routerlens_interp as rl

    mem = Mem(device)
    lm = build(shape, max(layers, CKPT_LAYERS), device)
    rl.tune_router(lm, qa(1, 20), None, batch_size=1, max_steps=1, progress=False)  # one-off allocations
    data = qa(1, 850)
    out = {"tokens": len(lm.encode(data[0], with_answer=True).input_ids), "layers": max(layers, CKPT_LAYERS)}
    for ck in (False, True):
        cfg = dict(batch_size=1, max_steps=1, max_tokens=4096, progress=False, eval_points=1, gradient_checkpointing=ck)
        out["ckpt" if ck else "plain"] = measure(mem, lambda: rl.tune_router(lm, data, None, **cfg), device)
    return out


# --------------------------------------------------------------------------------------------- main
def spawn(args: list[str], threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    p = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True, env=env)
    sys.stderr.write(p.stderr[-3000:] if p.returncode else "".join(
        l + "\n" for l in p.stderr.splitlines() if l.startswith("  ")))
    if p.returncode:
        raise RuntimeError(f"worker {args} failed (exit {p.returncode})")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--layers", type=int, default=1, help="decoder layers of the benchmark models (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads per worker")
    ap.add_argument("--seed", type=int, default=0, help="weights and data are seeded with 0; kept for the CLI rule")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        import torch

        if a.threads:
            torch.set_num_threads(a.threads)
        warnings.simplefilter("ignore")
        kind, shape, *rest = a.worker
        fn = {"trace": work_trace, "train": work_train, "ckpt": work_ckpt}[kind]
        print(json.dumps(fn(shape, a.layers, a.device, *rest)))
        return
    t0 = time.time()
    common = ["--layers", str(a.layers), "--device", a.device] + (["--threads", str(a.threads)] if a.threads else [])
    d = {"device": a.device, "layers": a.layers, "threads": a.threads}
    for shape in ("olmoe", "qwen3"):
        d[f"trace_{shape}"] = spawn(["trace", shape, *common], a.threads)
    for m in ("rt", "ceft", "fft"):
        d[f"train_{m}"] = spawn(["train", "olmoe", m, *common], a.threads)
    d["ckpt"] = spawn(["ckpt", "olmoe", *common], a.threads)
    d["seconds"] = time.time() - t0
    t, tr = d["trace_olmoe"], {k: d[f"train_{k}"] for k in ("rt", "ceft", "fft")}
    clk, step = ("s", "step_s") if a.device == "cuda" else ("cpu_s", "step_cpu_s")  # CPU: process time (shared cores)
    d["clock"] = "wall" if a.device == "cuda" else "process CPU time"
    res = {
        "trace_time_ratio_4096": t["trace_4096"][clk] / t["bare_4096"][clk],
        "trace_mem_ratio_4096": t["trace_4096"]["act"] / t["bare_4096"]["act"],
        "eager_trace_mem_ratio_4096": t["eager_trace_4096"]["act"] / t["bare_4096"]["act"],
        "rt_step_ratio": tr["rt"][step] / tr["fft"][step],
        "rt_mem_ratio": tr["rt"]["total"] / tr["fft"]["total"],
        "ceft_mem_ratio": tr["ceft"]["total"] / tr["fft"]["total"],
        "ckpt_act_mem_ratio": d["ckpt"]["ckpt"]["act"] / d["ckpt"]["plain"]["act"],
        "ceft_step_ratio": tr["ceft"][step] / tr["fft"][step],
    }
    for shape in ("olmoe", "qwen3"):
        s = d[f"trace_{shape}"]
        for T in (512, 4096):
            res[f"{shape}_trace_time_ratio_{T}"] = s[f"trace_{T}"][clk] / s[f"bare_{T}"][clk]
            res[f"{shape}_trace_mem_ratio_{T}"] = s[f"trace_{T}"]["act"] / s[f"bare_{T}"]["act"]
            res[f"{shape}_eager_trace_time_ratio_{T}"] = s[f"eager_trace_{T}"][clk] / s[f"bare_{T}"][clk]
            res[f"{shape}_eager_trace_mem_ratio_{T}"] = s[f"eager_trace_{T}"]["act"] / s[f"bare_{T}"]["act"]
    if not a.json:
        mib = 2**20
        for shape in ("olmoe", "qwen3"):
            s = d[f"trace_{shape}"]
            print(f"{shape} ({s['params'] / 1e6:.0f} M parameters, {a.layers} layer(s)):")
            for T in (512, 4096):
                for v in ("bare", "trace", "eager_trace"):
                    x = s[f"{v}_{T}"]
                    print(f"  T={T:<5} {v:<12} {x['s']:7.2f} s wall {x['cpu_s']:7.2f} s CPU  peak +{x['act'] / mib:8.0f} MiB")
            print(f"  count {s['count_tokens_per_s']:.0f} tokens/s, greedy decoding {s['evaluate_tokens_per_s']:.2f} "
                  f"tokens/s")
        for m, x in tr.items():
            print(f"{m:>4}: step {x['step_s']:.2f} s wall {x['step_cpu_s']:.2f} s CPU, peak {x['total'] / mib:.0f} MiB "
                  f"(model + training)")
        c = d["ckpt"]
        print(f"checkpointing at {c['tokens']} tokens, {c['layers']} layers: activations {c['plain']['act'] / mib:.0f} → "
              f"{c['ckpt']['act'] / mib:.0f} MiB")
        for k, v in TARGETS.items():
            print(f"{k:<24} {res[k]:.3f}  (target ≤ {v})")
        print(f"eager_trace_mem_ratio_4096 {res['eager_trace_mem_ratio_4096']:.3f}  ({d['seconds']:.0f} s in all)")
    print(json.dumps({**res, "details": d}))


if __name__ == "__main__":
    main()
