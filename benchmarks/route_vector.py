"""Route vectors on the bundled model: where router tuning acts, and training-free steering that does the same.

    python benchmarks/route_vector.py [--json] [--fast] [--seed 826] [--threads 1] [--no-transplant]

1. **Where router tuning acts** (needs a router-tuned model: the demo's recipe). The tuned routers' change
   ``ΔW·h`` (``ΔW = W_tuned − W_base``) is added to the base model's router logits only at one group of prompt
   positions (the last prompt token, the context, the question, the template's other tokens ...), every
   other position routed by the base routers: conflict EM / memory rate / open-book EM per group. Also how far
   the change at the last prompt token is one vector: the cosine of each example's ``ΔW·h_last`` with their
   mean, and that mean added as a constant.
2. **Route vectors** (no router tuning anywhere): :func:`routerlens_interp.route_vector` of ``toy-open``
   (questions about people the model does not know: answered from the context) minus ``toy-conflict``
   (answered from memory), on their train splits; steering the base model by ``scale · v`` swept over
   ``scales``. The vector uses the train splits less their last 200 prompts; the scale is chosen on those 200
   plus the dev split (the highest conflict EM whose open-book EM stays within 5 points of the base model's;
   400 prompts per side, since the curve is flat within the noise of 200) and reported on the test splits.
   The same for ``mode="replace"`` (the last prompt token's logits pulled ``scale`` of the way to the toward
   prompts' mean there), and each chosen setting also on the whole conflict test split (350; the first 150
   are the benchmark's test set).
3. **The other prompt tokens too**, as router tuning acts there with the last one: replace at scale 1 plus the
   ``rest`` vector × ``rest_scale`` at every other prompt token and the question tokens' vector ×
   ``question_scale`` at the question's tokens, over the grid ``rests × questions``, chosen and reported as in 2.

All numbers are printed; ``--json`` prints one JSON object as the last line.
"""
from __future__ import annotations

import json
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

FULL = dict(n_eval=150, n_side=100, n_dev=200, n_hold=200, toward=None, away=None, n_mean=200,
            scales=[1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0], pulls=[0.5, 1.0, 1.5], n_whole=None,
            rests=[4.0, 8.0, 12.0], questions=[0.0, 2.0, 4.0],
            train_limit=None, max_steps=None)
FAST = dict(n_eval=8, n_side=8, n_dev=8, n_hold=4, toward=16, away=16, n_mean=8, scales=[2.0], pulls=[1.0],
            n_whole=12, rests=[4.0], questions=[2.0], train_limit=32, max_steps=2)
GROUPS = ("last", "context", "question", "template", "answer_in_context", "last+question", "prompt_not_last", "prompt")


def group_mask(e, name: str):
    """``[prompt_len]`` bool: the positions of group ``name`` in the encoded prompt ``e``
    (``template``: every prompt token outside the context and the question, the last one excluded)."""
    import torch

    m = torch.zeros(e.prompt_len, dtype=torch.bool)
    if name in ("prompt", "prompt_not_last", "template"):
        m[:] = True
    if name == "template":
        m[e.context] = False
        m[e.question] = False
    if name in ("context", "question", "answer_in_context"):
        m[getattr(e, name)] = True
    if name in ("last", "last+question", "prompt"):
        m[-1] = True
    if name == "last+question":
        m[e.question] = True
    if name in ("prompt_not_last", "template"):
        m[-1] = False
    return m


@contextmanager
def transplant(lm, dW: dict, rows: dict, where=None):
    """Add ``ΔW_l · h`` to layer ``l``'s router logits at the prefill rows ``rows["mask"]`` (``[B·S]`` bool) —
    or, with ``where="const"``, ``rows["const"][l]`` at every last row (``rows["last"]``) — never at decoding
    steps. With ``rows["record"]``, each layer's ``ΔW_l · h`` at the last rows is appended there."""
    import torch

    spec = lm.spec
    with ExitStack() as st:
        for l in spec.moe_layers:
            box = {}
            h = spec.router(lm.hf, l).register_forward_pre_hook(lambda m, a, box=box: box.__setitem__("h", a[0]))
            st.callback(h.remove)

            def fn(x, box=box, l=l):
                m = rows["mask"]
                if x.shape[0] != m.numel():  # a decoding step
                    return x
                if where == "const":
                    return x + (rows["last"].reshape(-1, 1).float() * rows["const"][l]).to(x.dtype)
                d = box["h"].reshape(-1, box["h"].shape[-1]).float() @ dW[l].T
                if "record" in rows:
                    rows["record"][l].append(d[rows["last"]].clone())
                return x + (d * m.reshape(-1, 1).float()).to(x.dtype)
            st.enter_context(lm.hooks.edit(f"blocks.{l}.router.hook_logits", fn))
        yield


def evaluate_rows(lm, data, rows, name):
    """``rl.evaluate``'s greedy EM, with ``rows`` set before each batch: ``mask``, the ``[B·S]`` rows of group
    ``name``, and ``last``, the last column's rows."""
    import torch

    from routerlens_interp.evaluation.generate import evaluate

    def on_batch(enc, batch):
        B, S = batch["input_ids"].shape
        mask = torch.zeros(B, S, dtype=torch.bool)
        for i, e in enumerate(enc):
            mask[i, S - e.prompt_len:] = group_mask(e, name)
        last = torch.zeros(B, S, dtype=torch.bool)
        last[:, -1] = True
        rows["mask"], rows["last"] = mask.reshape(-1), last.reshape(-1)
    return evaluate(lm, data, on_batch=on_batch)


def main(argv=None) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _toybench

    args = _toybench.parse(__doc__, argv, lambda ap: ap.add_argument(
        "--no-transplant", action="store_true", help="skip part 1 (no router tuning)"))
    cfg, log, lm = _toybench.start(args, FULL, FAST)

    import torch

    import routerlens_interp as rl

    spec = lm.spec
    ld = lambda name, split, n: rl.load_dataset(name, split=split, limit=n)
    test, open_test = ld("toy-conflict", "test", cfg["n_eval"]), ld("toy-open", "test", cfg["n_side"])
    dev, open_dev = ld("toy-conflict", "dev", cfg["n_dev"]), ld("toy-open", "dev", cfg["n_dev"])
    res: dict = {"config": cfg, "seed": args.seed}
    fmt = lambda c, o: f"conflict EM {c['em']:5.1f} memory {c['memory_rate'] or 0:5.1f} open-book EM {o['em']:5.1f}"
    three = lambda c, o: {"em": c["em"], "memory_rate": c["memory_rate"], "open_em": o["em"]}
    base_c, base_o = rl.evaluate(lm, test), rl.evaluate(lm, open_test)
    res["base"] = three(base_c, base_o)
    log(f"    base model: {fmt(base_c, base_o)}")

    # 1. where router tuning acts ---------------------------------------------------------------------
    if not args.no_transplant:
        train = ld("toy-conflict", "train", cfg["train_limit"])
        rt = _toybench.router_tuned(lm, train, dev, args.seed, cfg["max_steps"])
        with rt.applied(lm):
            tuned = {l: spec.router(lm.hf, l).weight.detach().float().clone() for l in spec.moe_layers}
            res["router_tuned"] = three(rl.evaluate(lm, test), rl.evaluate(lm, open_test))
        dW = {l: tuned[l] - spec.router(lm.hf, l).weight.detach().float() for l in spec.moe_layers}
        log(f"[1] router-tuned: conflict EM {res['router_tuned']['em']:.1f}; its change ΔW·h applied to the base model "
            "only at the positions of:")
        rows: dict = {}
        res["transplant"] = {}
        for g in GROUPS:
            with transplant(lm, dW, rows):
                c, o = evaluate_rows(lm, test, rows, g), evaluate_rows(lm, open_test, rows, g)
            res["transplant"][g] = three(c, o)
            log(f"[1]   {g:<18} {fmt(c, o)}")
        rows = {"record": {l: [] for l in spec.moe_layers}}
        with transplant(lm, dW, rows):
            evaluate_rows(lm, train[:cfg["n_mean"]], rows, "last")
        const = {l: torch.cat(v).mean(0) for l, v in rows["record"].items()}
        cos = {l: float(torch.nn.functional.cosine_similarity(torch.cat(v), const[l][None], dim=1).mean())
               for l, v in rows["record"].items()}
        rows = {"const": const}
        with transplant(lm, dW, rows, where="const"):
            c, o = evaluate_rows(lm, test, rows, "last"), evaluate_rows(lm, open_test, rows, "last")
        res["last_as_constant"] = {"cosine_with_mean": cos, **three(c, o)}
        log(f"[1]   ΔW·h at the last token: cosine with its mean over {cfg['n_mean']} train prompts per layer "
            + " ".join(f"{v:.2f}" for v in cos.values()) + f"; the mean as a constant there: {fmt(c, o)}")

    # 2. route vectors ------------------------------------------------------------------------------------
    # the vector from the train splits less their last n_hold prompts; the scale chosen on those held-out
    # prompts plus the dev split (n_hold + n_dev per side: the curve is flat, 200 alone picks by noise)
    ct, ot = ld("toy-conflict", "train", cfg["away"]), ld("toy-open", "train", cfg["toward"])
    h = cfg["n_hold"]
    sel_c, sel_o = ct[-h:] + dev, ot[-h:] + open_dev
    t = time.time()
    vec = rl.route_vector(lm, ot[:-h], ct[:-h])
    res["route_vector"] = {"seconds": round(time.time() - t, 2), "n_toward": vec.n_toward, "n_away": vec.n_away,
                           "n_select": [len(sel_c), len(sel_o)], "norms": vec.norms(), "sweep": []}
    base_sel_open = rl.evaluate(lm, sel_o)["em"]
    log(f"[2] route vector toy-open − toy-conflict ({vec.n_toward} − {vec.n_away} train prompts, "
        f"{res['route_vector']['seconds']} s); norms last {vec.norms()['last']} rest {vec.norms()['rest']}")
    whole = ld("toy-conflict", "test", cfg["n_whole"])
    grid = [dict(scale=1.0, rest_scale=r, question_scale=q) for r in cfg["rests"] for q in cfg["questions"]]
    for mode, settings in (("add", [dict(scale=s) for s in cfg["scales"]]),
                           ("replace", [dict(scale=s) for s in cfg["pulls"]]), ("replace+", grid)):
        sweep = res["route_vector"]["sweep"] if mode == "add" else res["route_vector"].setdefault(mode, [])
        for kw in settings:
            s, tag = kw["scale"], " ".join(f"{k.split('_')[0]} {v:4}" for k, v in kw.items())
            with rl.steer_route_vector(lm, vec, mode=mode.rstrip("+"), **kw):
                c, o = rl.evaluate(lm, test), rl.evaluate(lm, open_test)
                d, od = rl.evaluate(lm, sel_c), rl.evaluate(lm, sel_o)
                dv = rl.evaluate(lm, dev)
            sweep.append({**kw, **three(c, o), "select_em": d["em"], "select_open_em": od["em"], "dev_em": dv["em"]})
            part = 3 if mode == "replace+" else 2
            log(f"[{part}]   {mode:<8} {tag}: test {fmt(c, o)}   selection conflict EM {d['em']:5.1f} open-book EM "
                f"{od['em']:5.1f} (dev alone {dv['em']:5.1f})")
        ok = [r for r in sweep if r["select_open_em"] >= base_sel_open - 5] or sweep
        best = dict(max(ok, key=lambda r: (r["select_em"], -r["scale"])))
        kw = {k: best[k] for k in ("scale", "rest_scale", "question_scale") if k in best}
        with rl.steer_route_vector(lm, vec, mode=mode.rstrip("+"), **kw):
            best["whole_test_em"] = rl.evaluate(lm, whole)["em"]
        res["route_vector"][{"add": "chosen", "replace": "chosen_replace", "replace+": "chosen_replace_plus"}[mode]] = best
        meets = best["em"] >= 27 and abs(best["open_em"] - res["base"]["open_em"]) <= 5
        log(f"[{part}] {mode}: chosen on the {len(sel_c)} + {len(sel_o)} selection prompts (open-book within 5 of the "
            f"base's {base_sel_open:.1f}): {kw} → test conflict EM {best['em']:.1f}, open-book EM "
            f"{best['open_em']:.1f} (base {res['base']['open_em']:.1f}); on all {len(whole)} conflict test prompts "
            f"{best['whole_test_em']:.1f}; target ≥ 27 with open-book within 5: {'met' if meets else 'missed'}")
    if args.json:
        print(json.dumps(res, default=float))
    return res


if __name__ == "__main__":
    main()
