"""``routerlens attribute | contrast | risk | reap | steer | route-vector``: context-faithful experts without training, from a shell.

Registered by :func:`add_parsers` from ``cli.build_parser``. User errors are :class:`~.errors.UserError`
(one line, exit 2).
"""
from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

from .checks import add_overwrite, claim_out, finite_float
from ..errors import UserError


def _setup(args, default_split: str = "test"):
    import routerlens_interp as rl
    from .common import _load
    from ..data import default_split as split_for

    data = rl.load_dataset(args.data, split=split_for(args.data, args.split, default_split), limit=args.limit)
    return _load(args), data


def _emit(args, obj: dict, human: str) -> None:
    print(json.dumps(obj, default=float) if args.json else human)


def _top_lines(scores, n: int = 10) -> str:
    return "\n".join(f"  layer {l:>3} expert {e:>4}  {v:+.4f}" for l, e, v in scores.top(n))


def cmd_attribute(args) -> None:
    import routerlens_interp as rl

    claim_out(args, args.out, is_dir=False, example="scores.safetensors")
    if args.exact:
        claim_out(args, _exact_path(args), is_dir=False, flag="--exact's scores file")
    lm, data = _setup(args)
    with ExitStack() as st:
        if args.adapter:
            st.enter_context(rl.load_adapter(args.adapter).applied(lm))
        s = rl.attribute_experts(lm, data, metric=args.metric, tokens=args.tokens, batch_size=args.batch_size,
                                 progress=not args.json, verify=args.verify)
        exact = (rl.expert_effects(lm, data, mode=args.exact, metric=args.metric, tokens=args.tokens,
                                   batch_size=args.batch_size, progress=not args.json) if args.exact else None)
    s.meta.update(data=args.data, seed=args.seed)
    s.save(args.out)
    out = {"out": args.out, "metric": args.metric, "base": s.base, "n": s.n_examples, "seconds": s.meta["seconds"],
           "top": [{"layer": l, "expert": e, "score": v} for l, e, v in s.top(args.top)]}
    what = "drops when masked (top verified by exact masking)" if args.verify else "estimated drops when masked"
    human = (f"{args.metric} = {s.base:.4f} on {s.n_examples} examples; largest {what}:\n" + _top_lines(s, args.top))
    if args.verify:
        c = s.meta["cost"]
        out.update(verified=s.meta["verified"], cost=c)
        human += (f"\ncost: {c['forward']} forward + {c['backward']} backward passes over the data "
                  f"({c['ratio']:.3f} of exhaustive masking, {c['exhaustive']} forwards)")
    if exact is not None:
        from ..ces import spearman

        exact.save(_exact_path(args))
        a, e = s.scores.reshape(-1), exact.scores.reshape(-1)
        top = a.argsort(descending=True)[:50]
        out.update(spearman_all=spearman(a, e), spearman_top50=spearman(a[top], e[top]),
                   exact_seconds=exact.meta["seconds"])
        human += (f"\nSpearman(estimate, exact {args.exact} masking): all {out['spearman_all']:.3f}, "
                  f"top 50 {out['spearman_top50']:.3f}")
    _emit(args, out, human + f"\n→ {args.out} (select CEs with rl.select_experts(rl.ExpertScores.load(...), n=8))")


def _exact_path(args) -> Path:
    """Where ``attribute --exact`` writes the exact masking effects: next to ``--out``."""
    return Path(args.out).with_suffix(f".exact_{args.exact}.safetensors")


def cmd_contrast(args) -> None:
    import routerlens_interp as rl

    claim_out(args, args.out, is_dir=False, example="scores.safetensors")
    claim_out(args, args.experts_out, is_dir=False, flag="--experts-out", example="experts.json")
    lm, data = _setup(args)
    c = rl.routing_contrast(lm, data, batch_size=args.batch_size, progress=not args.json)
    s = c.last if args.span == "last" else c.context
    s.meta.update(data=args.data, seed=args.seed)
    s.save(args.out)
    ces = None
    if args.experts_out:
        ces = rl.select_experts(s, n=args.n)
        ces.meta.update(method=f"contrast_{args.span}")
        ces.save(args.experts_out)
    out = {"out": args.out, "span": args.span, "n": s.n_examples, "n_tokens": c.n_tokens,
           "top": [{"layer": l, "expert": e, "score": v} for l, e, v in s.top(args.top)],
           "experts": json.loads(ces.to_json())["experts"] if ces else None}
    _emit(args, out, f"selection rate open-book − closed-book ({args.span}), {s.n_examples} examples:\n"
          + _top_lines(s, args.top) + f"\n→ {args.out}" + (f", {args.experts_out}" if ces else ""))


def cmd_risk(args) -> None:
    from ..ces import risk_difference, steermoe_sets

    lm, data = _setup(args)
    rd = risk_difference(lm, data, pairing=args.pairing, span=args.span, batch_size=args.batch_size)
    rd.meta.update(data=args.data, seed=args.seed)
    rd.save(args.out)
    act, dea = steermoe_sets(rd, args.n_activate if args.activate_out else 0,
                             args.n_deactivate if args.deactivate_out else 0)
    for path, es in ((args.activate_out, act), (args.deactivate_out, dea)):
        if path:
            es.save(path)
    out = {"out": args.out, "pairing": args.pairing, "span": args.span, "n": rd.n_examples,
           "n_tokens": [rd.meta["n1"], rd.meta["n2"]],
           "top": [{"layer": l, "expert": e, "score": v} for l, e, v in rd.top(args.top)],
           "activate": json.loads(act.to_json())["experts"] if args.activate_out else None,
           "deactivate": json.loads(dea.to_json())["experts"] if args.deactivate_out else None}
    files = ", ".join(p for p in (args.out, args.activate_out, args.deactivate_out) if p)
    _emit(args, out, f"activation rate difference ({args.pairing}, {args.span} tokens), {rd.n_examples} examples:\n"
          + _top_lines(rd, args.top) + f"\n→ {files}")


def cmd_reap(args) -> None:
    import routerlens_interp as rl

    lm, data = _setup(args)
    s = rl.reap_scores(lm, data, span=args.span, batch_size=args.batch_size)
    s.meta.update(data=args.data, seed=args.seed)
    s.save(args.out)
    ces = None
    if args.experts_out:
        ces = rl.select_experts(s, n=args.n)
        ces.meta.update(method="reap")
        ces.save(args.experts_out)
    out = {"out": args.out, "n": s.n_examples, "top": [{"layer": l, "expert": e, "score": v} for l, e, v in s.top(args.top)],
           "experts": json.loads(ces.to_json())["experts"] if ces else None}
    _emit(args, out, f"REAP (mean routing weight × expert output norm), {s.n_examples} examples:\n"
          + _top_lines(s, args.top) + f"\n→ {args.out}" + (f", {args.experts_out}" if ces else ""))


def _betas(text: str) -> list:
    """``"-2,0,2,in,out"`` → ``[-2.0, 0.0, 2.0, "in", "out"]`` (in/out: force into / out of the top-k)."""
    vals: list = []
    for x in (x.strip() for x in text.split(",")):
        if x in ("in", "out"):
            vals.append(x)
        elif x:
            try:
                vals.append(float(x))
            except ValueError:
                raise UserError(f"--betas {text!r}: give numbers, 'in' or 'out' separated by commas, e.g. "
                                f"-4,0,2,in") from None
    if not vals or any(isinstance(v, float) and (v != v or abs(v) == float("inf")) for v in vals):
        raise UserError(f"--betas {text!r}: give finite numbers (or in/out) separated by commas, e.g. -4,0,2,in")
    return vals


def _sweep_table(rows: list[dict], key: str) -> list[str]:
    """Lines of a steering sweep: ``key`` (beta or scale), conflict EM, memory rate, open-book EM, recall."""
    fmt = lambda v: "  n/a" if v is None else f"{v:5.1f}"  # noqa: E731
    return [f"{key:>8} {'EM':>6} {'memory%':>8} {'open EM':>8} {'recall':>7}"] + [
        f"{r[key]!s:>8} {fmt(r['em'])} {fmt(r['memory_rate']):>8} {fmt(r['open_em']):>8} {fmt(r['recall']):>7}"
        for r in rows]


def cmd_steer(args) -> None:
    import routerlens_interp as rl
    from ..ces import best_beta, steer

    betas = _betas(args.betas)
    if not Path(args.experts).exists():
        raise UserError(f"no experts file at {args.experts}; write one with `routerlens select` or `routerlens contrast "
                        f"--experts-out`")
    experts = rl.ExpertSet.load(args.experts)
    if args.deactivate and not Path(args.deactivate).exists():
        raise UserError(f"no experts file at {args.deactivate}; write one with `routerlens risk --deactivate-out FILE`")
    off = rl.ExpertSet.load(args.deactivate) if args.deactivate else None
    lm, data = _setup(args)
    from ..data import default_split as split_for

    side = lambda name: rl.load_dataset(name, split=split_for(name, args.split, "test"), limit=args.limit) \
        if name else None
    open_book, memory = side(args.open_data), side(args.memory_data)
    with ExitStack() as st:
        if off is not None:  # SteerMoE's combination: these stay out of every top-k during the whole sweep
            st.enter_context(rl.force_experts(lm, deactivate=off))
        rows = steer(lm, experts, betas, data, open_book, memory, batch_size=args.batch_size, progress=False)
    best = best_beta(rows)
    lines = _sweep_table(rows, "beta")
    lines.append(f"best beta {best['beta']}: conflict EM {best['em']:.1f}")
    _emit(args, {"rows": rows, "best": best, "experts": args.experts}, "\n".join(lines))


def _scales(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        vals = []
    if not vals or any(v != v or abs(v) == float("inf") for v in vals):
        raise UserError(f"--scales {text!r}: give finite numbers separated by commas, e.g. 0,2,4,8")
    return vals


def cmd_route_vector(args) -> None:
    import routerlens_interp as rl
    from ..ces import route_vector, steer_route_vector
    from ..data import default_split as split_for

    scales = _scales(args.scales or ("0,0.5,1" if args.mode == "replace" else "0,2,4,8,12"))
    if args.vector_out:
        claim_out(args, args.vector_out, is_dir=False, example="vector.safetensors", flag="--vector-out")
    lm, data = _setup(args)
    side = lambda name, split, limit=args.limit: rl.load_dataset(
        name, split=split_for(name, split, "test"), limit=limit) if name else None
    if args.vector:
        vec = rl.RouteVector.load(args.vector, lm)
    else:
        vec = route_vector(lm, side(args.toward, args.vector_split, args.vector_limit),
                           side(args.away, args.vector_split, args.vector_limit), batch_size=args.batch_size,
                           progress=not args.json)
        if args.vector_out:
            vec.save(args.vector_out)
    open_book, memory = side(args.open_data, args.split), side(args.memory_data, args.split)
    rows = []
    for sc in scales:
        with steer_route_vector(lm, vec, sc, mode=args.mode, rest_scale=args.rest_scale,
                                question_scale=args.question_scale):
            c = rl.evaluate(lm, data, batch_size=args.batch_size)
            o = rl.evaluate(lm, open_book, batch_size=args.batch_size) if open_book else None
            m = rl.evaluate(lm, memory, batch_size=args.batch_size) if memory else None
        rows.append({"scale": sc, "em": c["em"], "f1": c["f1"], "memory_rate": c["memory_rate"],
                     "open_em": o["em"] if o else None, "recall": m["em"] if m else None})
    rest = "" if args.rest_scale is None else f", rest × {args.rest_scale:g}"
    lines = [f"route vector ({args.mode}{rest}, question × {args.question_scale:g}): {vec.n_toward} toward − {vec.n_away} away prompts; norms (last token) "
             + " ".join(f"{x:.1f}" for x in vec.norms()["last"])] + _sweep_table(rows, "scale")
    if args.vector_out:
        lines.append(f"vector written to {args.vector_out}")
    _emit(args, {"mode": args.mode, "rest_scale": args.rest_scale, "question_scale": args.question_scale, "rows": rows, "norms": vec.norms(), "n_toward": vec.n_toward, "n_away": vec.n_away,
                 "vector_out": args.vector_out}, "\n".join(lines))


def add_parsers(sub, common) -> None:
    """Add ``attribute``, ``contrast``, ``risk``, ``reap``, ``steer`` and ``route-vector`` to the ``routerlens``
    subparsers; ``common(p)`` adds the shared --model/--data/--seed/--json options."""
    a = sub.add_parser("attribute", help="estimate each expert's masking effect on a metric (one backward pass)")
    common(a)
    a.add_argument("--metric", default="faithfulness", choices=["faithfulness", "answer"],
                   help="faithfulness = log p(context answer) − log p(memory answer) (conflict data); answer = log p(gold)")
    a.add_argument("--tokens", default="first", choices=["first", "all"], help="first answer token or the whole answer")
    a.add_argument("--adapter", help="adapter directory to apply")
    a.add_argument("--exact", choices=["zero", "reroute"], default=None,
                   help="also mask every expert one at a time (L×E passes) and report the Spearman correlation")
    a.add_argument("--verify", type=int, default=0, metavar="K",
                   help="then mask each of the K highest-estimated experts alone (K+1 forward passes) and re-rank them "
                        "by the exact drop")
    a.add_argument("--batch-size", type=int, default=16)
    a.add_argument("--top", type=int, default=10, help="experts to print")
    a.add_argument("--out", required=True, help="scores file (.safetensors); a new file unless --overwrite (with "
                                                "--exact also OUT.exact_MODE.safetensors)")
    add_overwrite(a)
    a.set_defaults(func=cmd_attribute)

    c = sub.add_parser("contrast", help="per expert, top-k selection rate open-book minus closed-book")
    common(c)
    c.add_argument("--span", default="last", choices=["last", "context"],
                   help="last prompt position (default) or the context tokens")
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--top", type=int, default=10)
    c.add_argument("--n", type=int, default=8, help="experts per layer for --experts-out")
    c.add_argument("--experts-out", help="also write the top --n experts per layer as experts.json")
    c.add_argument("--out", required=True, help="scores file (.safetensors); new files unless --overwrite")
    add_overwrite(c)
    c.set_defaults(func=cmd_contrast)

    r = sub.add_parser("risk", help="SteerMoE's risk difference: per expert, activation rate with the context (or "
                                    "the faithful answer) minus without (the memory answer)")
    common(r)
    r.add_argument("--pairing", default="context", choices=["context", "faithful"],
                   help="context = open-book vs closed-book prompt; faithful = context answer vs memory answer")
    r.add_argument("--span", default="answer", choices=["answer", "last"], help="answer tokens or last prompt position")
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--top", type=int, default=10)
    r.add_argument("--n-activate", type=int, default=8, help="experts for --activate-out (global ranking, ≤ k per layer)")
    r.add_argument("--n-deactivate", type=int, default=48, help="experts for --deactivate-out (global ranking)")
    r.add_argument("--activate-out", help="write the experts to activate (largest positive difference) as experts.json")
    r.add_argument("--deactivate-out", help="write the experts to deactivate (most negative difference) as experts.json")
    r.add_argument("--out", required=True, help="scores file (.safetensors)")
    r.set_defaults(func=cmd_risk)

    p = sub.add_parser("reap", help="REAP's expert score: mean routing weight × expert output norm (no gradients)")
    common(p)
    p.add_argument("--span", default="prompt", choices=["prompt", "last"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--n", type=int, default=8, help="experts per layer for --experts-out")
    p.add_argument("--experts-out", help="also write the top --n experts per layer as experts.json")
    p.add_argument("--out", required=True, help="scores file (.safetensors)")
    p.set_defaults(func=cmd_reap)

    s = sub.add_parser("steer", help="add β to chosen experts' router logits: conflict EM, memory rate, open-book EM, recall")
    common(s)
    s.add_argument("--experts", required=True, help="experts.json (routerlens select / contrast --experts-out)")
    s.add_argument("--betas", default="0,1,2,4,8",
                   help="comma-separated β values; negative ones deactivate; 'in' / 'out' force the experts into / "
                        "out of every token's top-k (SteerMoE-style), e.g. -4,0,2,in (default 0,1,2,4,8)")
    # "-4,0,2" is a value, not an option (argparse only knows plain negative numbers)
    if hasattr(s, "_negative_number_matcher"):
        import re

        s._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-[\d.]+(,[-\w.]+)+$")
        s._has_negative_number_optionals = []
    s.add_argument("--open-data", default=None, help="open-book data for open-book EM (e.g. toy-open)")
    s.add_argument("--memory-data", default=None, help="closed-book data for recall (e.g. toy-memory)")
    s.add_argument("--deactivate", default=None,
                   help="experts.json forced out of every top-k during the whole sweep (routerlens risk --deactivate-out)")
    s.add_argument("--batch-size", type=int, default=16)
    s.set_defaults(func=cmd_steer)

    v = sub.add_parser("route-vector", help="training-free dense router-logit steering: mean router logits of --toward "
                                            "prompts minus --away prompts, added × scale (or the last token pulled toward "
                                            "--toward's mean, --mode replace); EM per scale")
    common(v)
    v.add_argument("--toward", default="toy-open", help="prompts whose routing to move toward (default toy-open: "
                                                        "answered from the context)")
    v.add_argument("--away", default="toy-conflict", help="prompts whose routing to move away from (default "
                                                          "toy-conflict: answered from memory)")
    v.add_argument("--vector-split", default="train", help="split of --toward / --away (default train)")
    v.add_argument("--vector-limit", type=int, default=None, help="prompts per side (default all)")
    v.add_argument("--vector", default=None, help="use a saved vector (--vector-out) instead of computing one")
    v.add_argument("--vector-out", default=None, help="write the vector (.safetensors); a new file unless --overwrite")
    v.add_argument("--mode", choices=("add", "replace"), default="add",
                   help="add: scale × (toward − away) at every prompt token; replace: pull the last prompt token's "
                        "router logits toward the toward prompts' mean, x + scale·(mean − x) (default add)")
    v.add_argument("--scales", default=None, help="comma-separated scales (0 = the unsteered model; default "
                                                  "0,2,4,8,12 for add, 0,0.5,1 for replace)")
    v.add_argument("--rest-scale", type=finite_float, default=None,
                   help="scale of the vector at the other prompt tokens (default: the scale with add, 0 with replace)")
    v.add_argument("--question-scale", type=finite_float, default=0.0,
                   help="also add this multiple of the question tokens' vector at the question's tokens (default 0)")
    v.add_argument("--open-data", default=None, help="open-book data for open-book EM (e.g. toy-open)")
    v.add_argument("--memory-data", default=None, help="closed-book data for recall (e.g. toy-memory)")
    v.add_argument("--batch-size", type=int, default=16)
    add_overwrite(v)
    v.set_defaults(func=cmd_route_vector)
