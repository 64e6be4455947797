"""Overhead of tracing and masking: traced / bare forward on an OLMoE-shaped model of ~20M parameters.

    python benchmarks/trace_overhead.py [--json] [--repeats 15] [--device cpu]

Batch 8 × 128 tokens, random weights and tokens (no hub, no tokenizer). Repeated runs in one process,
the variants interleaved so that drifting machine load hits all alike; each ratio is the median over
rounds of (variant time / bare-forward time of the same round):

- ``routing``: ``lm.trace(routing=True, attention=False, lens=False)`` / bare forward
- ``routing_attention``: + attention mass of the last prompt position on 3 spans, every layer
- ``full``: + logit lens of the first answer token at the last prompt position, every layer
- ``mask``: forward under ``mask_experts(..., "reroute")`` (2 experts per layer) / bare forward

The bare forward is ``lm.hf(input_ids, attention_mask)`` with the same eager attention the tracer
needs. Targets: routing, routing_attention ≤ 1.10; full ≤ 1.15; mask ≤ 1.05. The last line printed
is one JSON object with keys ``routing``, ``routing_attention``, ``full``, ``mask`` (plus details).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import types
import warnings

import torch

TARGETS = {"routing": 1.10, "routing_attention": 1.10, "full": 1.15, "mask": 1.05}


def build(device: str = "cpu", seed: int = 0):
    """An OLMoE-shaped MoEModel (~20M parameters) from a config, eager attention, eval mode."""
    import transformers as tf

    import routerlens_interp as rl

    torch.manual_seed(seed)
    cfg = tf.OlmoeConfig(vocab_size=4096, hidden_size=256, intermediate_size=320, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, num_experts=16, num_experts_per_tok=4,
                         max_position_embeddings=256, norm_topk_prob=False, tie_word_embeddings=False,
                         pad_token_id=0, eos_token_id=1, bos_token_id=2)
    hf = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").to(device).eval()
    tok = types.SimpleNamespace(pad_token_id=0, eos_token_id=1)
    return rl.from_hf(hf, tok, name="olmoe-20m")


def batch_examples(n: int = 8, T: int = 128, vocab: int = 4096, seed: int = 0):
    """``n`` Encoded examples of ``T`` tokens with context/answer/question spans."""
    from routerlens_interp.prompts import Encoded

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (T,), generator=g)
        ctx, ans, q = torch.arange(12, 90), torch.arange(50, 53), torch.arange(95, 120)
        out.append(Encoded(ids, T, ctx, q, ans, torch.zeros(0, dtype=torch.long), ids[ans[:1]].clone()))
    return out


def run(repeats: int = 15, device: str = "cpu", warmup: int = 3, clock: str = "wall") -> dict:
    from routerlens_interp import mask_experts
    lm = build(device)
    enc = batch_examples()
    batch = lm.batch(enc)
    ids, am = batch["input_ids"], batch["attention_mask"]
    mask = {l: [0, 1] for l in lm.spec.moe_layers}
    sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)

    def bare():
        with torch.no_grad():
            lm.hf(input_ids=ids, attention_mask=am)

    def masked():
        with torch.no_grad(), mask_experts(lm, mask, mode="reroute"):
            lm.hf(input_ids=ids, attention_mask=am)

    variants = {
        "bare": bare,
        "routing": lambda: lm.trace(enc, attention=False, lens=False, batch_size=8),
        "routing_attention": lambda: lm.trace(enc, attention=True, lens=False, batch_size=8),
        "full": lambda: lm.trace(enc, attention=True, lens=True, batch_size=8),
        "mask": masked,
    }
    now = time.process_time if clock == "cpu" else time.perf_counter
    times = {k: [] for k in variants}
    for r in range(warmup + repeats):
        for name, fn in variants.items():
            sync()
            t0 = now()
            fn()
            sync()
            if r >= warmup:
                times[name].append(now() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    # paired: each variant against the bare forward of the same round, then the median over rounds
    ratios = {k: statistics.median(t / b for t, b in zip(times[k], times["bare"])) for k in TARGETS}
    n_params = sum(p.numel() for p in lm.hf.parameters())
    return {**{k: round(v, 4) for k, v in ratios.items()},
            "median_s": {k: round(v, 5) for k, v in med.items()},
            "targets": TARGETS, "met": {k: ratios[k] <= t for k, t in TARGETS.items()},
            "params_m": round(n_params / 1e6, 2), "batch": list(ids.shape), "repeats": repeats,
            "device": str(ids.device), "threads": torch.get_num_threads(), "clock": clock,
            "load_avg": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall clock, or this process's CPU time (steadier on a shared machine, 1 thread)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args.repeats, args.device, clock=args.clock)
    if not args.json:
        print(f"OLMoE-shaped model, {res['params_m']}M parameters, batch {res['batch']}, {res['device']}, "
              f"{res['threads']} threads, {res['clock']} clock, {res['repeats']} interleaved repeats (medians)")
        print(f"  bare forward           {res['median_s']['bare'] * 1e3:8.1f} ms")
        labels = {"routing": "(a) routing", "routing_attention": "(b) + attention spans",
                  "full": "(c) + logit lens", "mask": "reroute mask"}
        for k, label in labels.items():
            ok = "ok" if res["met"][k] else "MISSED"
            print(f"  {label:<22} {res['median_s'][k] * 1e3:8.1f} ms   ratio {res[k]:.3f}  "
                  f"(target ≤ {TARGETS[k]:.2f}: {ok})")
        if res["clock"] == "wall" and res["device"] == "cpu" and res["load_avg"] > res["cpus"]:
            print(f"  note: load average {res['load_avg']} on {res['cpus']} CPUs; wall-clock ratios are noisy "
                  f"here, try --threads 1 --clock cpu")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
