"""Context-faithful experts without training, measured on the bundled model against Router Lens.

    python benchmarks/ces_without_training.py [--json] [--fast] [--seed 826]

On toy-conflict (NQ-Swap-like), with N = 8 experts per layer (of 64, top-8):

1. Attribution vs the exact single-expert masking effect (zero mode) on the faithfulness metric
   (log p(context answer) − log p(memory answer), first answer token), over the first ``n_exact`` test
   examples: Spearman over all (layer, expert) and over the 50 largest estimates (goal ≥ 0.7).
2. Three CE sets: attribution-CEs and contrast-CEs (routing contrast at the last prompt position) on the
   base model, Router Lens CEs (count under the router-tuned model, the demo's recipe); Jaccard per layer.
3. The paper's causal test in the router-tuned model: conflict EM with each set masked (reroute) vs
   ``draws`` random sets of 8 per layer drawn from the experts in none of the three sets (mean, 95 % CI).
4. Steering the base model with each set: conflict EM vs β; memory rate, open-book EM and closed-book
   recall at the best β; against router tuning's conflict-EM gain on the same test examples.
5. Seconds per method (attribution, contrast, exact effects, router tuning + counting).

``--pinned-check`` runs only a diagnosis of part 1: the 50 largest estimates against zero masking with every
later layer's top-k pinned to the unmasked choice (is the miss due to discrete re-routing, which a gradient
cannot see, or to the continuous non-linearity of removing a whole expert?).

All numbers are printed; ``--json`` prints one JSON object as the last line. One thread.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

FULL = dict(n_exact=16, n_select=400, n_eval=150, n_side=100, draws=10, betas=[0.0, 1.0, 2.0, 4.0, 8.0],
            train_limit=None, max_steps=None)
FAST = dict(n_exact=8, n_select=16, n_eval=16, n_side=16, draws=2, betas=[0.0, 2.0], train_limit=32, max_steps=2)


def _ci95(xs):
    import numpy as np

    return float(1.96 * np.std(xs, ddof=1) / math.sqrt(len(xs))) if len(xs) > 1 else float("nan")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--fast", action="store_true", help="tiny sizes: a smoke run of the script")
    ap.add_argument("--seed", type=int, default=826)
    ap.add_argument("--only-exact", action="store_true", help="stop after part 1")
    ap.add_argument("--pinned-check", action="store_true",
                    help="only the diagnosis: the top-50 estimates against masking with later routing pinned")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    import routerlens_interp as rl
    from routerlens_interp.ces import best_beta, spearman, steer
    from routerlens_interp.cli.commands import seed_everything
    from routerlens_interp.pipeline.demo import RECIPES

    torch.set_num_threads(1)
    seed_everything(args.seed)
    cfg = FAST if args.fast else FULL
    log = lambda *a: print(*a, file=sys.stderr if args.json else sys.stdout, flush=True)
    lm = rl.load("toy")
    ld = lambda name, split, n: rl.load_dataset(name, split=split, limit=n)
    train = ld("toy-conflict", "train", cfg["train_limit"])
    dev = ld("toy-conflict", "dev", 64 if args.fast else 200)
    test = ld("toy-conflict", "test", cfg["n_eval"])
    open_test, memory = ld("toy-open", "test", cfg["n_side"]), ld("toy-memory", "test", cfg["n_side"])
    select_data = train[:cfg["n_select"]]
    exact_data = test[:cfg["n_exact"]]
    N = 8
    res: dict = {"config": cfg, "seed": args.seed, "n_per_layer": N}
    if args.pinned_check:
        res["pinned"] = frozen_routing_check(lm, exact_data, 10 if args.fast else 50)
        p = res["pinned"]
        log(f"[1b] top-{p['n_top']} estimates, n={len(exact_data)}: Spearman vs exact zero masking "
            f"{p['spearman_exact']:.3f} (mean |error| {p['mean_abs_err_exact']:.4f}); vs zero masking with later "
            f"layers' top-k pinned {p['spearman_pinned']:.3f} (mean |error| {p['mean_abs_err_pinned']:.4f})")
        return _finish(args, res)

    # 1. attribution vs exact ----------------------------------------------------------------------
    att = rl.attribute_experts(lm, exact_data)
    ex = rl.expert_effects(lm, exact_data, mode="zero")
    a, e = att.scores.reshape(-1), ex.scores.reshape(-1)
    top = a.argsort(descending=True)[:50]
    res["spearman_all"] = spearman(a, e)
    res["spearman_top50"] = spearman(a[top], e[top])
    res["pearson_all"] = float(np.corrcoef(a.numpy(), e.numpy())[0, 1])
    res["top50_exact_positive"] = int((e[top] > 0).sum())
    res["exact_top50_recovered_by_attribution_top50"] = len(set(top.tolist()) & set(e.argsort(descending=True)[:50].tolist()))
    res["base_faithfulness"] = ex.base
    res["seconds_attribution_exact_set"] = att.meta["seconds"]
    res["seconds_exact_effects"] = ex.meta["seconds"]
    log(f"[1] n={len(exact_data)}: Spearman(attribution, exact zero-mode effect) all {res['spearman_all']:.3f}  "
        f"top-50 {res['spearman_top50']:.3f} (goal ≥ 0.7)  Pearson all {res['pearson_all']:.3f}; "
        f"{res['top50_exact_positive']}/50 top estimates really lower faithfulness; overlap of top-50 sets "
        f"{res['exact_top50_recovered_by_attribution_top50']}/50; attribution {att.meta['seconds']:.1f} s vs exact "
        f"{ex.meta['seconds']:.1f} s")
    if args.only_exact:
        return _finish(args, res)

    # 2. three CE sets ------------------------------------------------------------------------------
    t = time.time()
    att_sel = rl.attribute_experts(lm, select_data)
    res["seconds_attribution"] = round(time.time() - t, 2)
    t = time.time()
    con = rl.routing_contrast(lm, select_data)
    res["seconds_contrast"] = round(time.time() - t, 2)
    t = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        recipe = dict(RECIPES["router"], seed=args.seed, progress=False, eval_points=4)
        if cfg["max_steps"]:
            recipe["max_steps"] = cfg["max_steps"]
        rt = rl.tune_router(lm, train, dev, out_dir=Path(tmp) / "rt", **recipe)
    res["seconds_router_tuning"] = round(time.time() - t, 2)
    t = time.time()
    with rt.applied(lm):
        tuned_counts = rl.count_experts(lm, select_data)
    res["seconds_router_lens_count"] = round(time.time() - t, 2)
    sets = {"attribution": rl.select_experts(att_sel, n=N), "contrast": rl.select_experts(con.last, n=N),
            "router_lens": rl.select_experts(tuned_counts, n=N)}
    res["sets"] = {k: {str(l): ids for l, ids in v.items()} for k, v in sets.items()}
    res["jaccard"] = {}
    for x, y in (("attribution", "router_lens"), ("contrast", "router_lens"), ("attribution", "contrast")):
        per = sets[x].jaccard_per_layer(sets[y])
        res["jaccard"][f"{x}~{y}"] = {"per_layer": {str(k): v for k, v in per.items()}, "mean": float(np.mean(list(per.values())))}
        log(f"[2] Jaccard {x} vs {y}: " + "  ".join(f"L{k} {v:.2f}" for k, v in per.items())
            + f"  mean {res['jaccard'][f'{x}~{y}']['mean']:.2f}")
    log(f"[5] seconds: attribution {res['seconds_attribution']:.1f}  contrast {res['seconds_contrast']:.1f}  "
        f"router tuning {res['seconds_router_tuning']:.1f} + counting {res['seconds_router_lens_count']:.1f}  "
        f"(exact effects on {len(exact_data)} examples {res['seconds_exact_effects']:.1f})")

    # 3. causal test in the router-tuned model -----------------------------------------------------
    def em(tag, **kw):
        r = rl.evaluate(lm, test)
        log(f"    {tag:<34} conflict EM {r['em']:5.1f}  memory {r['memory_rate'] or 0:5.1f}")
        return r

    base = em("base")
    with rt.applied(lm):
        tuned = em("router-tuned")
        masked = {}
        for k, s in sets.items():
            with rl.mask_experts(lm, s):
                masked[k] = em(f"router-tuned − {k} CEs")
        union = sets["attribution"] | sets["contrast"] | sets["router_lens"]
        draws = []
        for d in range(cfg["draws"]):
            rnd = rl.random_experts(N, lm.spec.moe_layers, lm.spec.n_experts, exclude=union, seed=args.seed + d)
            with rl.mask_experts(lm, rnd):
                draws.append(em(f"router-tuned − random #{d + 1}")["em"])
    res["base_em"], res["router_tuned_em"] = base["em"], tuned["em"]
    res["base_memory_rate"], res["router_tuned_memory_rate"] = base["memory_rate"], tuned["memory_rate"]
    res["rt_em_gain"] = tuned["em"] - base["em"]
    res["masking"] = {k: {"em": v["em"], "drop": tuned["em"] - v["em"], "memory_rate": v["memory_rate"]}
                      for k, v in masked.items()}
    res["masking"]["random"] = {"em": float(np.mean(draws)), "drop": tuned["em"] - float(np.mean(draws)),
                                "ci95": _ci95(draws), "draws": draws}
    log(f"[3] router-tuned conflict EM {tuned['em']:.1f} (base {base['em']:.1f}); drop when masked: "
        + "  ".join(f"{k} {v['drop']:+.1f}" for k, v in res["masking"].items())
        + f" (random: ±{res['masking']['random']['ci95']:.1f} CI over {len(draws)} draws)")

    # 4. steering the base model -------------------------------------------------------------------
    res["steering"] = {}
    for k, s in sets.items():
        t = time.time()
        rows = steer(lm, s, cfg["betas"], test)
        best = best_beta(rows)
        with rl.boost_experts(lm, s, best["beta"]):
            best["open_em"] = rl.evaluate(lm, open_test)["em"]
            best["recall"] = rl.evaluate(lm, memory)["em"]
        res["steering"][k] = {"sweep": [{kk: r[kk] for kk in ("beta", "em", "memory_rate")} for r in rows],
                              "best": best, "seconds": round(time.time() - t, 2)}
        log(f"[4] steer {k:<12} EM by β: " + "  ".join(f"{r['beta']:g}:{r['em']:.1f}" for r in rows)
            + f" | best β {best['beta']:g}: EM {best['em']:.1f} ({best['em'] - base['em']:+.1f} vs base; router tuning "
              f"{res['rt_em_gain']:+.1f})  memory {best['memory_rate'] or 0:.1f}  open-book {best['open_em']:.1f}  "
              f"recall {best['recall']:.1f}")
    res["base_open_em"] = rl.evaluate(lm, open_test)["em"]
    res["base_recall"] = rl.evaluate(lm, memory)["em"]
    with rt.applied(lm):
        res["router_tuned_open_em"] = rl.evaluate(lm, open_test)["em"]
        res["router_tuned_recall"] = rl.evaluate(lm, memory)["em"]
    log(f"    base open-book {res['base_open_em']:.1f} recall {res['base_recall']:.1f}; router-tuned open-book "
        f"{res['router_tuned_open_em']:.1f} recall {res['router_tuned_recall']:.1f}")
    return _finish(args, res)


def frozen_routing_check(lm, data, n_top: int = 50) -> dict:
    """Why the estimate misses among its top experts: zero-mask each of the ``n_top`` largest estimates again
    with every later layer's top-k *pinned* to the unmasked run's choice (a selection-only +1e4 on the experts
    each token chose, through ``router.hook_select``; the weights still follow the changed logits). A gradient
    sees this version of masking (continuous changes only), not the discrete re-routing of later layers."""
    from contextlib import ExitStack

    import torch

    import routerlens_interp as rl
    from routerlens_interp.ces import spearman
    from routerlens_interp.ces.objective import build_items, mean_metric

    spec, E = lm.spec, lm.spec.n_experts
    att = rl.attribute_experts(lm, data)
    items = build_items(lm, data)
    B = len(items)  # one batch, so every recorded [T, k] routing lines up with the pinned pass
    idx = {}
    with ExitStack() as st:
        for l in spec.moe_layers:
            st.enter_context(lm.hooks.read(f"blocks.{l}.experts.hook_route",
                                           lambda i, w, l=l: idx.__setitem__(l, i.detach().clone())))
        base = mean_metric(lm, items, batch_size=B)

    def pin(l):
        hot = torch.zeros(idx[l].shape[0], E).scatter_(1, idx[l].long(), 1e4)
        return lambda x: x + hot.to(x)

    top = att.top(n_top)
    exact, frozen = [], []
    for l, e, _ in top:
        with rl.mask_experts(lm, {l: [e]}, mode="zero"):
            exact.append(base - mean_metric(lm, items, batch_size=B))
            with ExitStack() as st:
                for l2 in spec.moe_layers:
                    if l2 > l:
                        st.enter_context(lm.hooks.edit(f"blocks.{l2}.router.hook_select", pin(l2)))
                frozen.append(base - mean_metric(lm, items, batch_size=B))
    est = torch.tensor([v for _, _, v in top])
    exact, frozen = torch.tensor(exact), torch.tensor(frozen)
    return {"n_top": n_top, "spearman_exact": spearman(est, exact), "spearman_pinned": spearman(est, frozen),
            "mean_abs_err_exact": float((est - exact).abs().mean()), "mean_abs_err_pinned": float((est - frozen).abs().mean())}


def _finish(args, res):
    if args.json:
        print(json.dumps(res, default=float))
    return res


if __name__ == "__main__":
    main()
