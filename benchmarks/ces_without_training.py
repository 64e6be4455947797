"""Context-faithful experts without training, measured on the bundled model against Router Lens.

    python benchmarks/ces_without_training.py [--json] [--fast] [--seed 826] [--threads 1]

On toy-conflict (NQ-Swap-like), with N = 8 experts per layer (of 64, top-8):

1. Each training-free score vs the exact single-expert masking effect (zero mode) on the faithfulness metric
   (log p(context answer) − log p(memory answer), first answer token), over the first ``n_exact`` test
   examples: Spearman over all (layer, expert) and over the 50 the method ranks highest (target ≥ 0.9),
   recall of the exhaustive top-50 within the method's top-100 (target ≥ 0.9), and the cost in passes over
   the data (target ≤ 1/4 of exhaustive masking). Methods: first-order attribution; attribution with exact
   masking of its top ``verify`` candidates (``attribute_experts(verify=K)``); REAP (mean routing weight ×
   expert output norm); SteerMoE's risk difference (context vs closed-book, faithful vs unfaithful answer).
2. CE sets (top N per layer) from every method on the base model, and Router Lens CEs (count under the
   router-tuned model, the demo's recipe); Jaccard of each with Router Lens CEs. A control beside them: the
   base model's busiest experts on the answer token alone (``count_experts(span="answer")``, no training).
3. The paper's causal test in the router-tuned model: conflict EM with each set masked (reroute) vs
   ``draws`` random sets of 8 per layer drawn from the experts in none of the sets (mean, 95 % CI); the
   best training-free set's drop as a share of Router Lens CEs' (target ≥ 80 %), and open-book EM under each
   mask (what the set costs beyond the conflicts).
4. Steering the base model with each set (β sweep, negative β for the deactivation sets, and forcing the
   set into / out of every top-k), and SteerMoE's own recipe (global risk-difference ranking, ``n``
   experts forced in or out, ``n`` swept): conflict EM, memory rate and open-book EM per setting; the best
   training-free conflict EM overall and among settings with open-book EM within 5 points of the base
   model's (target ≥ 27, half of router tuning's gain).
5. Seconds per method.

``--pinned-check`` runs only a diagnosis of part 1: the 50 largest estimates against zero masking with every
later layer's top-k pinned to the unmasked choice (is the miss due to discrete re-routing, which a gradient
cannot see, or to the continuous non-linearity of removing a whole expert?).

All numbers are printed; ``--json`` prints one JSON object as the last line.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

FULL = dict(n_exact=16, n_select=400, n_eval=150, n_side=100, draws=10, betas=[0.0, 1.0, 2.0, 4.0, 8.0],
            neg_betas=[-2.0, -4.0, -8.0], verify=92, n_verify_select=32, steermoe_in=[2, 4, 8, 16, 32, 48],
            steermoe_out=[4, 16, 48, 128, 256], steermoe_both=[(8, 48), (16, 128)], train_limit=None, max_steps=None)
FAST = dict(n_exact=8, n_select=16, n_eval=16, n_side=16, draws=2, betas=[0.0, 2.0], neg_betas=[-4.0], verify=20,
            n_verify_select=8, steermoe_in=[8], steermoe_out=[16], steermoe_both=[(8, 16)], train_limit=32,
            max_steps=2)


def _ci95(xs):
    import numpy as np

    return float(1.96 * np.std(xs, ddof=1) / math.sqrt(len(xs))) if len(xs) > 1 else float("nan")


def rank_quality(score, exact, n_top: int = 50, n_recall: int = 100) -> dict:
    """Spearman over all and over the method's ``n_top``; recall of the exhaustive top-``n_top`` within the
    method's top-``n_recall``; overlap of the two top-``n_top`` sets."""
    from routerlens_interp.ces import spearman

    a, e = score.reshape(-1).double(), exact.reshape(-1).double()
    top = a.argsort(descending=True, stable=True)[:n_top]
    ex_top = set(e.argsort(descending=True, stable=True)[:n_top].tolist())
    return {"spearman_all": spearman(a, e), "spearman_top50": spearman(a[top], e[top]),
            "recall_top50_in_top100": len(ex_top & set(a.argsort(descending=True, stable=True)[:n_recall].tolist())) / n_top,
            "overlap_top50": len(ex_top & set(top.tolist())), "top50_exact_positive": int((e[top] > 0).sum())}


def main(argv=None) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _toybench

    def extra(ap):
        ap.add_argument("--only-exact", action="store_true", help="stop after part 1")
        ap.add_argument("--pinned-check", action="store_true",
                        help="only the diagnosis: the top-50 estimates against masking with later routing pinned")
    args = _toybench.parse(__doc__, argv, extra)
    cfg, log, lm = _toybench.start(args, FULL, FAST)

    import numpy as np
    import torch

    import routerlens_interp as rl
    from routerlens_interp.ces import best_beta, risk_difference, spearman, steer, steermoe_sets
    from routerlens_interp.ces.verify import cost, verify_top

    spec = lm.spec
    L, E = len(spec.moe_layers), spec.n_experts
    ld = lambda name, split, n: rl.load_dataset(name, split=split, limit=n)
    train = ld("toy-conflict", "train", cfg["train_limit"])
    dev = ld("toy-conflict", "dev", 64 if args.fast else 200)
    test = ld("toy-conflict", "test", cfg["n_eval"])
    open_test, memory = ld("toy-open", "test", cfg["n_side"]), ld("toy-memory", "test", cfg["n_side"])
    select_data = train[:cfg["n_select"]]
    exact_data = test[:cfg["n_exact"]]
    N, K = 8, cfg["verify"]
    res: dict = {"config": cfg, "seed": args.seed, "n_per_layer": N, "threads": args.threads}
    if args.pinned_check:
        res["pinned"] = frozen_routing_check(lm, exact_data, 10 if args.fast else 50)
        p = res["pinned"]
        log(f"[1b] top-{p['n_top']} estimates, n={len(exact_data)}: Spearman vs exact zero masking "
            f"{p['spearman_exact']:.3f} (mean |error| {p['mean_abs_err_exact']:.4f}); vs zero masking with later "
            f"layers' top-k pinned {p['spearman_pinned']:.3f} (mean |error| {p['mean_abs_err_pinned']:.4f})")
        return _finish(args, res)

    # 1. every score vs exact ----------------------------------------------------------------------
    ex = rl.expert_effects(lm, exact_data, mode="zero")
    att = rl.attribute_experts(lm, exact_data)
    ver = rl.attribute_experts(lm, exact_data, verify=K)
    vmask = torch.zeros(L, E, dtype=torch.bool)
    for l, e in ver.meta["verified"]:
        vmask[spec.moe_layers.index(l), e] = True
    res["verify_max_abs_diff_vs_exhaustive"] = float((ver.scores[vmask] - ex.scores[vmask]).abs().max())
    methods = {"attribution": (att, cost(L, E, 0)), f"attribution+verify{K}": (ver, ver.meta["cost"])}
    reap = rl.reap_scores(lm, exact_data)
    methods["reap"] = (reap, {"forward": 1, "backward": 0, "forward_equiv": 1, "note": f"+{spec.top_k}× expert compute"})
    for pairing in ("context", "faithful"):
        rd = risk_difference(lm, exact_data, pairing=pairing)
        methods[f"risk_diff_{pairing}"] = (rd, {"forward": 2, "backward": 0, "forward_equiv": 2})
    res["exact_base_faithfulness"] = ex.base
    res["seconds_exact_effects"] = ex.meta["seconds"]
    res["exhaustive_forward_passes"] = L * E + 1
    res["ranking"] = {}
    for name, (sc, c) in methods.items():
        q = rank_quality(sc.scores, ex.scores)
        q.update(cost=c, cost_ratio=c["forward_equiv"] / (L * E + 1), seconds=sc.meta.get("seconds"))
        res["ranking"][name] = q
        log(f"[1] {name:<22} Spearman all {q['spearman_all']:+.3f}  top-50 {q['spearman_top50']:+.3f} (target ≥ 0.9)  "
            f"recall@100 of exact top-50 {q['recall_top50_in_top100']:.2f} (≥ 0.9)  cost {c['forward']}F+{c['backward']}B "
            f"= {q['cost_ratio']:.3f} of exhaustive {L * E + 1}F (≤ 0.25)  {q['seconds']} s")
    log(f"    n={len(exact_data)}, exhaustive masking {ex.meta['seconds']:.1f} s; verified scores vs exhaustive: max "
        f"|diff| {res['verify_max_abs_diff_vs_exhaustive']:.2e}")
    if args.only_exact:
        return _finish(args, res)

    # 2. CE sets ------------------------------------------------------------------------------------
    secs = {}
    t = time.time()
    att_sel = rl.attribute_experts(lm, select_data)
    secs["attribution"] = round(time.time() - t, 2)
    t = time.time()
    ver_sel = verify_top(lm, select_data[:cfg["n_verify_select"]], att_sel, K)
    secs["attribution_verified"] = round(secs["attribution"] + time.time() - t, 2)
    t = time.time()
    con = rl.routing_contrast(lm, select_data)
    secs["contrast"] = round(time.time() - t, 2)
    t = time.time()
    reap_sel = rl.reap_scores(lm, select_data)
    secs["reap"] = round(time.time() - t, 2)
    rd_sel = {}
    for pairing in ("context", "faithful"):
        t = time.time()
        rd_sel[pairing] = risk_difference(lm, select_data, pairing=pairing)
        secs[f"risk_diff_{pairing}"] = round(time.time() - t, 2)
    t = time.time()
    rt = _toybench.router_tuned(lm, train, dev, args.seed, cfg["max_steps"])
    secs["router_tuning"] = round(time.time() - t, 2)
    t = time.time()
    with rt.applied(lm):
        tuned_counts = rl.count_experts(lm, select_data)
    secs["router_lens_count"] = round(time.time() - t, 2)
    t = time.time()
    answer_counts = rl.count_experts(lm, select_data, span="answer")  # the base model: no training
    secs["answer_busiest"] = round(time.time() - t, 2)
    res["seconds"] = secs
    neg = lambda s: rl.ExpertScores(-s.scores, s.layers, s.kind, s.metric, s.n_examples, s.top_k)
    sets = {"attribution": rl.select_experts(att_sel, n=N), "attribution_verified": rl.select_experts(ver_sel, n=N),
            "contrast": rl.select_experts(con.last, n=N), "reap": rl.select_experts(reap_sel, n=N),
            "rd_context": rl.select_experts(rd_sel["context"], n=N),
            "rd_faithful": rl.select_experts(rd_sel["faithful"], n=N),
            "answer_busiest": rl.select_experts(answer_counts, n=N), "router_lens": rl.select_experts(tuned_counts, n=N)}
    # the other end of the risk difference: experts more active without the context / for the memory answer
    deact = {"rd_context_neg": rl.select_experts(neg(rd_sel["context"]), n=N),
             "rd_faithful_neg": rl.select_experts(neg(rd_sel["faithful"]), n=N)}
    res["sets"] = {k: {str(l): ids for l, ids in v.items()} for k, v in {**sets, **deact}.items()}
    res["jaccard_vs_router_lens"] = {}
    for x in sets:
        if x == "router_lens":
            continue
        per = sets[x].jaccard_per_layer(sets["router_lens"])
        res["jaccard_vs_router_lens"][x] = float(np.mean(list(per.values())))
    log("[2] Jaccard vs Router Lens CEs (mean over layers; chance ≈ 0.07): "
        + "  ".join(f"{k} {v:.2f}" for k, v in res["jaccard_vs_router_lens"].items()))
    log("[5] seconds: " + "  ".join(f"{k} {v:.1f}" for k, v in secs.items()))

    # 3. causal test in the router-tuned model -----------------------------------------------------
    def em(tag, data=test, with_open=False):
        r = rl.evaluate(lm, data)
        if with_open:
            r["open_em"] = rl.evaluate(lm, open_test)["em"]
        log(f"    {tag:<40} EM {r['em']:5.1f}  memory {r['memory_rate'] or 0:5.1f}"
            + (f"  open-book EM {r['open_em']:5.1f}" if with_open else ""))
        return r

    base = em("base")
    with rt.applied(lm):
        tuned = em("router-tuned", with_open=True)
        masked = {}
        for k, s in sets.items():
            with rl.mask_experts(lm, s):
                masked[k] = em(f"router-tuned − {k} CEs", with_open=True)
        union = rl.ExpertSet()
        for s in sets.values():
            union = union | s
        draws = []
        for d in range(cfg["draws"]):
            rnd = rl.random_experts(N, spec.moe_layers, E, exclude=union, seed=args.seed + d)
            with rl.mask_experts(lm, rnd):
                draws.append(em(f"router-tuned − random #{d + 1}")["em"])
    res["base_em"], res["router_tuned_em"] = base["em"], tuned["em"]
    res["base_memory_rate"], res["router_tuned_memory_rate"] = base["memory_rate"], tuned["memory_rate"]
    res["rt_em_gain"] = tuned["em"] - base["em"]
    res["masking"] = {k: {"em": v["em"], "drop": tuned["em"] - v["em"], "memory_rate": v["memory_rate"],
                          "open_em": v["open_em"]} for k, v in masked.items()}
    res["masking"]["random"] = {"em": float(np.mean(draws)), "drop": tuned["em"] - float(np.mean(draws)),
                                "ci95": _ci95(draws), "draws": draws}
    rl_drop = res["masking"]["router_lens"]["drop"]
    free = {k: v["drop"] for k, v in res["masking"].items() if k not in ("router_lens", "random")}
    best_free = max(free, key=free.get)
    res["best_training_free_masking"] = {"set": best_free, "drop": free[best_free],
                                         "share_of_router_lens": free[best_free] / rl_drop if rl_drop else float("nan")}
    log(f"[3] router-tuned conflict EM {tuned['em']:.1f} (base {base['em']:.1f}); drop when masked: "
        + "  ".join(f"{k} {v['drop']:+.1f}" for k, v in res["masking"].items())
        + f" (random: ±{res['masking']['random']['ci95']:.1f} CI over {len(draws)} draws); best training-free "
          f"{best_free}: {100 * res['best_training_free_masking']['share_of_router_lens']:.0f} % of Router Lens CEs' "
          f"drop (target ≥ 80 %); open-book EM under that mask {res['masking'][best_free]['open_em']:.1f}, under the "
          f"Router Lens CEs {res['masking']['router_lens']['open_em']:.1f} (router-tuned {tuned['open_em']:.1f})")

    # 4. steering the base model -------------------------------------------------------------------
    res["base_open_em"] = rl.evaluate(lm, open_test)["em"]
    res["base_recall"] = rl.evaluate(lm, memory)["em"]
    with rt.applied(lm):
        res["router_tuned_open_em"] = rl.evaluate(lm, open_test)["em"]
        res["router_tuned_recall"] = rl.evaluate(lm, memory)["em"]
    log(f"    base open-book {res['base_open_em']:.1f} recall {res['base_recall']:.1f}; router-tuned open-book "
        f"{res['router_tuned_open_em']:.1f} recall {res['router_tuned_recall']:.1f}")
    res["steering"] = {}
    plans = [(k, s, cfg["betas"] + ["in"]) for k, s in sets.items()]
    plans += [(k, s, cfg["neg_betas"] + ["out"]) for k, s in deact.items()]
    for k, s, betas in plans:
        t = time.time()
        rows = steer(lm, s, betas, test, open_test)
        res["steering"][k] = _steer_summary(rows, res["base_open_em"], t)
        log(f"[4] steer {k:<20} EM by β: " + "  ".join(f"{r['beta']}:{r['em']:.1f}/{r['open_em']:.0f}" for r in rows)
            + " (conflict EM/open-book EM)")
    # SteerMoE's recipe: global |risk difference| ranking, n experts forced in (≤ k per layer) or out
    for pairing, rd in rd_sel.items():
        rows = []
        t = time.time()
        grid = [(n, 0) for n in cfg["steermoe_in"]] + [(0, n) for n in cfg["steermoe_out"]] + list(cfg["steermoe_both"])
        for n_in, n_out in grid:
            act, dea = steermoe_sets(rd, n_in, n_out)
            with rl.force_experts(lm, act, dea):
                c, o = rl.evaluate(lm, test), rl.evaluate(lm, open_test)
            rows.append({"beta": "+".join(([f"in{n_in}"] if n_in else []) + ([f"out{n_out}"] if n_out else [])),
                         "em": c["em"], "memory_rate": c["memory_rate"], "open_em": o["em"]})
        res["steering"][f"steermoe_{pairing}"] = _steer_summary(rows, res["base_open_em"], t)
        log(f"[4] SteerMoE {pairing:<9} EM by n: " + "  ".join(f"{r['beta']}:{r['em']:.1f}/{r['open_em']:.0f}"
                                                               for r in rows))
    free = {k: v for k, v in res["steering"].items() if k != "router_lens"}
    b_all = max(free, key=lambda k: free[k]["best"]["em"])
    ok = {k: v for k, v in free.items() if v["best_open_ok"] is not None}
    b_ok = max(ok, key=lambda k: ok[k]["best_open_ok"]["em"]) if ok else None
    res["best_training_free_steering"] = {
        "any": {"method": b_all, **free[b_all]["best"]},
        "open_within_5": {"method": b_ok, **ok[b_ok]["best_open_ok"]} if b_ok else None}
    rlb = res["steering"]["router_lens"]["best"]
    log(f"[4] best training-free steering: {b_all} β={free[b_all]['best']['beta']} conflict EM "
        f"{free[b_all]['best']['em']:.1f} (open-book {free[b_all]['best']['open_em']:.1f}); with open-book within 5 of "
        f"base {res['base_open_em']:.1f}: "
        + (f"{b_ok} β={ok[b_ok]['best_open_ok']['beta']} EM {ok[b_ok]['best_open_ok']['em']:.1f}" if b_ok else "none")
        + f" (target ≥ 27); Router Lens CEs β={rlb['beta']} EM {rlb['em']:.1f}; router tuning {tuned['em']:.1f}")
    return _finish(args, res)


def _steer_summary(rows, base_open, t0) -> dict:
    """The sweep, its best conflict EM, and its best with open-book EM within 5 points of the base model's."""
    from routerlens_interp.ces import best_beta

    sweep = [{k: r.get(k) for k in ("beta", "em", "memory_rate", "open_em")} for r in rows]
    ok = [r for r in sweep if r["open_em"] is not None and r["open_em"] >= base_open - 5]
    return {"sweep": sweep, "best": best_beta(sweep), "best_open_ok": best_beta(ok) if ok else None,
            "seconds": round(time.time() - t0, 2)}


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
