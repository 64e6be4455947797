"""Why training-free steering falls short of router tuning on the bundled model: three diagnostics.

    python benchmarks/ces_steering_diagnostics.py [--json] [--fast] [--seed 826] [--threads 1]

``benchmarks/ces_without_training.py`` finds no training-free set whose steering reaches half of router
tuning's conflict-EM gain. This script asks why, on toy-conflict with N = 8 experts per layer (of 64, top-8):

1. **The first-order direction of router tuning.** ``route_gain[l, e] = Σ_t <∂m/∂y_t, f_e(x_t)>``: the
   derivative of the faithfulness metric (log p(context answer) − log p(memory answer), first answer token)
   with respect to routing expert ``e`` in at token ``t`` with a small weight, summed over every token (one
   forward + backward; each experts module is called once more on all ``E`` experts with zero weights that
   carry the gradient). It is what one gradient step on the routers would favour, with no step taken. Its
   top-N set: Jaccard with Router Lens CEs, and steering of the base model (boost β and force in, at
   n = 1, 2, 4, 8 per layer).
2. **Where the steering acts.** Forcing the Router Lens CEs in (and boosting them) only at the positions that
   produce the answer (the last prompt token and every generated token) instead of at every token.
3. **Experts of context reading.** The base model's busiest experts on open-book questions and the experts
   whose zero-masking most lowers log p(answer) there (attribution): Jaccard with Router Lens CEs, the EM drop
   when masked in the router-tuned model, and steering of the base model.

Router Lens CEs are computed here as in the demo and in ``ces_without_training.py`` (router tuning with the
demo's recipe, then the top-N experts by count under the tuned routers). All numbers are printed; ``--json``
prints one JSON object as the last line.
"""
from __future__ import annotations

import inspect
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path

FULL = dict(n_gain=100, n_select=400, n_eval=150, n_side=100, n_open_select=200, ns=[1, 2, 4, 8],
            betas=[1.0, 2.0, 4.0, "in"], train_limit=None, max_steps=None)
FAST = dict(n_gain=8, n_select=16, n_eval=8, n_side=8, n_open_select=8, ns=[2], betas=[2.0, "in"], train_limit=32,
            max_steps=2)


def route_gain(lm, data, batch_size: int = 16):
    """``[L, E]`` mean over examples of ``Σ_t ∂m/∂ε[t, e]``, ``ε`` a zero weight on expert ``e`` at token ``t``
    added to every token's routing (see the module docstring). Fused experts only (``(hidden, idx, w)``)."""
    import torch

    from routerlens_interp.ces.objective import batches, build_items, forward_metric
    from routerlens_interp.ces.scores import ExpertScores

    spec = lm.spec
    L, E = len(spec.moe_layers), spec.n_experts
    items = build_items(lm, data, "faithfulness", "first")
    acc = torch.zeros(L, E, dtype=torch.float64)
    state = {"inside": False}

    def hook(r, params, eps_list):
        def fn(module, args, kwargs, output):
            if state["inside"]:
                return None
            vals = dict(zip(params, args))
            vals.update(kwargs)
            h, i, w = params[:3]
            hid = vals[h].reshape(-1, vals[h].shape[-1])
            T = hid.shape[0]
            every = torch.arange(E, device=hid.device).expand(T, E).to(vals[i].dtype)
            eps = torch.zeros(T, E, dtype=vals[w].dtype, device=hid.device, requires_grad=True)
            rest = {n: v for n, v in vals.items() if n not in (h, i, w)}
            state["inside"] = True
            try:  # module.forward: the hook layer's readers must not see this extra call
                extra = module.forward(hid, every, eps, **rest)
            finally:
                state["inside"] = False
            extra = extra[0] if isinstance(extra, tuple) else extra
            eps_list.append((r, eps))
            # + Σ_e ε·f_e(x) is exactly 0 in value: the forward is unchanged, the gradient reaches ε
            return output + extra.reshape(output.shape)
        return fn

    was = lm.hf.training
    lm.hf.eval()
    try:
        for chunk, _ in batches(items, batch_size):
            eps_list: list = []
            with ExitStack() as st, torch.enable_grad():
                for r, l in enumerate(spec.moe_layers):
                    mod = spec.experts(lm.hf, l)
                    params = [p for p in inspect.signature(mod.forward).parameters if p != "self"]
                    st.callback(mod.register_forward_hook(hook(r, params, eps_list), with_kwargs=True).remove)
                m = forward_metric(lm, chunk)
                grads = torch.autograd.grad(m, [e for _, e in eps_list])
            real = lm.batch([it.encoded for it in chunk])["attention_mask"].reshape(-1).bool()  # not padding
            for (r, _), g in zip(eps_list, grads):
                acc[r] += g[real.to(g.device)].double().sum(0).cpu()
    finally:
        lm.hf.train(was)
    return ExpertScores(acc / len(items), list(spec.moe_layers), "route_gain", "faithfulness", len(items), spec.top_k)


def at_answer_positions(fn):
    """An edit of router scores ``[T, E]`` applied only to the row that predicts the next token: the last prompt
    token at prefill (one sequence per batch: the last row) and every decoding step (``T == 1``)."""
    def edit(x):
        if x.shape[0] == 1:
            return fn(x)
        y = x.clone()
        y[-1:] = fn(x[-1:])
        return y
    return edit


def steer_at_answer(lm, experts, beta, conflict, open_book):
    """Conflict and open-book EM with ``experts`` boosted by ``beta`` (or forced in: ``"in"``) at the answer
    positions only; batch size 1, so the last row of a prefill is the last prompt token."""
    import torch

    import routerlens_interp as rl
    from routerlens_interp.ces.force import force_edit
    from routerlens_interp.hooks.tap import logit_bias

    spec = lm.spec
    with ExitStack() as st:
        for l, ids in experts:
            if beta == "in":
                pin = torch.zeros(spec.n_experts, dtype=torch.bool)
                pin[ids] = True
                fn = force_edit(pin, torch.zeros_like(pin), spec.top_k)
            else:
                b = torch.zeros(spec.n_experts)
                b[ids] = float(beta)
                fn = logit_bias(b)
            for h in ("router.hook_logits", "router.hook_select"):
                st.enter_context(lm.hooks.edit(f"blocks.{l}.{h}", at_answer_positions(fn)))
        c, o = rl.evaluate(lm, conflict, batch_size=1), rl.evaluate(lm, open_book, batch_size=1)
    return {"beta": beta, "em": c["em"], "memory_rate": c["memory_rate"], "open_em": o["em"]}


def main(argv=None) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _toybench

    args = _toybench.parse(__doc__, argv)
    cfg, log, lm = _toybench.start(args, FULL, FAST)

    import numpy as np

    import routerlens_interp as rl
    from routerlens_interp.ces import steer

    N = 8
    ld = lambda name, split, n: rl.load_dataset(name, split=split, limit=n)
    train = ld("toy-conflict", "train", cfg["train_limit"])
    dev = ld("toy-conflict", "dev", 64 if args.fast else 200)
    test = ld("toy-conflict", "test", cfg["n_eval"])
    open_train, open_test = ld("toy-open", "train", cfg["n_open_select"]), ld("toy-open", "test", cfg["n_side"])
    res: dict = {"config": cfg, "seed": args.seed, "n_per_layer": N}
    jac = lambda a, b: float(np.mean(list(a.jaccard_per_layer(b).values())))
    row = lambda r: f"{r['beta']}:{r['em']:.1f}/{r['open_em']:.0f}"

    rt = _toybench.router_tuned(lm, train, dev, args.seed, cfg["max_steps"])
    with rt.applied(lm):
        ces = rl.select_experts(rl.count_experts(lm, train[:cfg["n_select"]]), n=N)
        res["router_tuned_em"] = rl.evaluate(lm, test)["em"]
        with rl.mask_experts(lm, ces):
            res["router_tuned_minus_ces_em"] = rl.evaluate(lm, test)["em"]
    res["base"] = {"em": rl.evaluate(lm, test)["em"], "open_em": rl.evaluate(lm, open_test)["em"]}
    log(f"    base conflict EM {res['base']['em']:.1f} open-book {res['base']['open_em']:.1f}; router-tuned "
        f"{res['router_tuned_em']:.1f}, with its CEs masked {res['router_tuned_minus_ces_em']:.1f}")

    # 1. the first-order direction of router tuning --------------------------------------------------
    t = time.time()
    gain = route_gain(lm, train[:cfg["n_gain"]])
    res["route_gain"] = {"seconds": round(time.time() - t, 2), "jaccard_vs_router_lens": jac(rl.select_experts(gain, n=N), ces),
                         "steering": {}}
    for n in cfg["ns"]:
        rows = steer(lm, rl.select_experts(gain, n=n), cfg["betas"], test, open_test)
        res["route_gain"]["steering"][n] = [{k: r[k] for k in ("beta", "em", "memory_rate", "open_em")} for r in rows]
        log(f"[1] route-gain top-{n}/layer, steer by β (conflict EM/open-book EM): " + "  ".join(map(row, rows)))
    log(f"[1] route-gain top-{N} Jaccard vs Router Lens CEs {res['route_gain']['jaccard_vs_router_lens']:.3f} "
        f"(chance ≈ 0.07); {res['route_gain']['seconds']} s")

    # 2. where the steering acts -----------------------------------------------------------------------
    everywhere = steer(lm, ces, cfg["betas"], test, open_test)
    answer = [steer_at_answer(lm, ces, b, test, open_test) for b in cfg["betas"]]
    res["positions"] = {"everywhere": [{k: r[k] for k in ("beta", "em", "memory_rate", "open_em")} for r in everywhere],
                        "answer_positions": answer}
    log("[2] Router Lens CEs steered at every token:       " + "  ".join(map(row, everywhere)))
    log("[2] Router Lens CEs steered at answer positions:  " + "  ".join(map(row, answer)))

    # 3. experts of context reading -----------------------------------------------------------------------
    sets = {"busiest_open_book": rl.select_experts(rl.count_experts(lm, open_train), n=N),
            "attribution_open_book": rl.select_experts(rl.attribute_experts(lm, open_train, metric="answer"), n=N)}
    res["reading"] = {}
    with rt.applied(lm):
        masked = {}
        for k, s in sets.items():
            with rl.mask_experts(lm, s):
                masked[k] = rl.evaluate(lm, test)["em"]
    for k, s in sets.items():
        rows = steer(lm, s, [2.0, "in"], test, open_test)
        res["reading"][k] = {"jaccard_vs_router_lens": jac(s, ces), "router_tuned_masked_em": masked[k],
                             "drop": res["router_tuned_em"] - masked[k],
                             "steering": [{k2: r[k2] for k2 in ("beta", "em", "memory_rate", "open_em")} for r in rows]}
        log(f"[3] {k:<22} Jaccard vs CEs {res['reading'][k]['jaccard_vs_router_lens']:.3f}; masked in the router-tuned "
            f"model EM {masked[k]:.1f} (drop {res['reading'][k]['drop']:.1f}, CEs' drop "
            f"{res['router_tuned_em'] - res['router_tuned_minus_ces_em']:.1f}); steer " + "  ".join(map(row, rows)))
    if args.json:
        print(json.dumps(res, default=float))
    return res


if __name__ == "__main__":
    main()
