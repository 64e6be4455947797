"""Masking controls on the bundled model: what the Router Lens CEs' masking drop measures.

    python benchmarks/ces_masking_controls.py [--json] [--fast] [--seed 826] [--threads 1]

The Router Lens CEs (top-8 per layer by how often the router-tuned model picks them over prompt + answer
tokens of 400 conflict training examples, the paper's rule) are masked in the router-tuned model beside sets
counted the same way over one span of the tokens only, in the router-tuned model and in the base model (no
training): the prompt, or the answer (the gold answer appended, one token here), or the prompt and the answer
with its end token. Per set: conflict EM / F1 / memory rate on 150 test questions, open-book EM on 100
``toy-open`` and closed-book recall on 100 ``toy-memory`` test questions, all in the router-tuned model, and
the set's mean Jaccard overlap with the Router Lens CEs. Then the Router Lens CEs that the prompt-only count
of the tuned model misses, masked alone.

All numbers are printed; ``--json`` prints one JSON object as the last line.
"""
from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path

FULL = dict(n_select=400, n_eval=150, n_side=100, train_limit=None, max_steps=None)
FAST = dict(n_select=16, n_eval=8, n_side=8, train_limit=32, max_steps=2)
SPANS = ("prompt", "answer", "sequence")


def main(argv=None) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _toybench

    args = _toybench.parse(__doc__, argv)
    cfg, log, lm = _toybench.start(args, FULL, FAST)

    import numpy as np

    import routerlens_interp as rl

    ld = lambda name, split, n: rl.load_dataset(name, split=split, limit=n)
    train = ld("toy-conflict", "train", cfg["train_limit"])
    dev = ld("toy-conflict", "dev", 64 if args.fast else 200)
    test, open_test = ld("toy-conflict", "test", cfg["n_eval"]), ld("toy-open", "test", cfg["n_side"])
    memory_test = ld("toy-memory", "test", cfg["n_side"])
    select = train[:cfg["n_select"]]
    top = lambda counts: rl.select_experts(counts, n=8)
    sets = {f"base_{s}": top(rl.count_experts(lm, select, span=s)) for s in SPANS}
    rt = _toybench.router_tuned(lm, train, dev, args.seed, cfg["max_steps"])
    res: dict = {"config": cfg, "seed": args.seed, "sets": {}}
    with rt.applied(lm):
        sets = {"router_lens": top(rl.count_experts(lm, select)),
                **{f"tuned_{s}": top(rl.count_experts(lm, select, span=s)) for s in SPANS}, **sets}
        missed = rl.ExpertSet({l: sorted(set(sets["router_lens"][l]) - set(sets["tuned_prompt"][l]))
                               for l in sets["router_lens"].layers})
        sets["router_lens_not_in_tuned_prompt"] = missed

        def row(tag, s=None):
            with rl.mask_experts(lm, s) if s is not None else nullcontext():
                c, o, m = rl.evaluate(lm, test), rl.evaluate(lm, open_test), rl.evaluate(lm, memory_test)
            r = {"em": c["em"], "f1": c["f1"], "memory_rate": c["memory_rate"], "open_em": o["em"], "recall": m["em"],
                 "n_experts": sum(len(v) for _, v in s.items()) if s is not None else 0,
                 "jaccard_vs_router_lens": float(np.mean(list(s.jaccard_per_layer(sets["router_lens"]).values())))
                 if s is not None else None}
            log(f"    {tag:<32} {r['n_experts']:3d} experts  Jaccard vs RL "
                + (f"{r['jaccard_vs_router_lens']:.2f}" if s is not None else "  — ")
                + f"  conflict EM {c['em']:5.1f} F1 {c['f1']:5.1f} memory {c['memory_rate'] or 0:5.1f}  "
                  f"open-book EM {o['em']:5.1f}  recall {m['em']:5.1f}")
            return r
        log("router-tuned model, masked:")
        res["router_tuned"] = row("nothing")
        for k, s in sets.items():
            res["sets"][k] = {"experts": {str(l): v for l, v in s.items()}, **row(k, s)}
    if args.json:
        print(json.dumps(res, default=float))
    return res


if __name__ == "__main__":
    main()
