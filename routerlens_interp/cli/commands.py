"""The ``routerlens`` command: every step of Router Lens / CEFT from a shell.

Every command takes ``--seed`` and ``--json`` (one JSON object on stdout; progress bars go to stderr).
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from pathlib import Path

from .checks import (add_debug, add_load_options, add_png_flags, check_out_dir, check_out_file, describe_error,
                         load_model, load_options, non_negative_int, png_mode, positive_float, positive_int,
                         probability, seed_int, user_errors)
from .checks import add_overwrite, claim_out, outputs_held  # outputs: the lock, --overwrite
from .common import _common, _load, seed_everything  # noqa: F401  (shared by every subcommand module)


def _data(args, default_split: str):
    import routerlens_interp as rl

    from routerlens_interp.data import default_split as split_for

    # a single file without --split is used whole; anything with splits gets the command's default
    return rl.load_dataset(args.data, split=split_for(args.data, args.split, default_split), limit=args.limit)


def _model_and_data(args, default_split: str, with_answer: bool = False):
    """``--data`` first (a wrong name or file fails in a second, not after loading a large model), then
    the model, then every record encoded once (``with_answer``: as counting and training feed them),
    so a bad record is named now, not after an hour of work."""
    from routerlens_interp.prompts import check_examples

    data = _data(args, default_split)
    lm = _load(args)
    check_examples(lm, data, with_answer=with_answer)
    return lm, data


def _adapter(args):
    """Load ``--adapter``; ``--trust-base`` accepts one without a base fingerprint, loudly."""
    import routerlens_interp as rl

    if getattr(args, "trust_base", False):
        print(f"routerlens {args.command}: WARNING: --trust-base: {args.adapter} is applied even if nothing shows "
              "it was made for this base model", file=sys.stderr)
    return rl.load_adapter(args.adapter, trust_base=getattr(args, "trust_base", False))


def _interventions(stack: ExitStack, lm, args) -> None:
    """Enter ``--adapter`` and ``--mask`` for the rest of the command."""
    import routerlens_interp as rl

    if getattr(args, "adapter", None):
        stack.enter_context(_adapter(args).applied(lm))
    if getattr(args, "mask", None):
        stack.enter_context(rl.mask_experts(lm, rl.ExpertSet.load(args.mask), mode=args.mask_mode))


def _emit(args, obj: dict, human: str) -> None:
    if args.json:
        print(json.dumps(obj, default=float))
    else:
        print(human)


def cmd_evaluate(args) -> None:
    import routerlens_interp as rl

    claim_out(args, args.predictions, is_dir=False, flag="--predictions", example="predictions.jsonl")
    from .evaluate import emit_evaluation, evaluate_kwargs  # accuracy / BLEU-METEOR-ROUGE-L / AccLLM by data set

    lm, data = _model_and_data(args, "test")
    with ExitStack() as stack:
        _interventions(stack, lm, args)
        s = rl.evaluate(lm, data, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=True,
                        stop=args.stop, **evaluate_kwargs(args))
    if emit_evaluation(args, data, s):
        return
    if args.predictions:
        Path(args.predictions).write_text("\n".join(json.dumps({"question": e.question, "gold": e.answers,
                                                                  "prediction": p}) for e, p in
                                                      zip(data, s["predictions"])) + "\n")
    out = {k: s[k] for k in ("em", "f1", "n", "memory_rate")}
    mr = "n/a" if s["memory_rate"] is None else f"{s['memory_rate']:.1f}"
    _emit(args, out, f"EM {s['em']:.1f}  F1 {s['f1']:.1f}  memory-rate {mr}  (n={s['n']})")


def cmd_count(args) -> None:
    import routerlens_interp as rl

    claim_out(args, args.out, is_dir=False, example="counts.safetensors")
    lm, data = _model_and_data(args, "train", with_answer=True)
    with ExitStack() as stack:
        _interventions(stack, lm, args)
        c = rl.count_experts(lm, data, span=args.span, batch_size=args.batch_size, progress=True)
    c.save(args.out)
    _emit(args, {"out": args.out, "layers": c.layers, "n_tokens": c.n_tokens, "counts": c.counts.tolist()},
          f"counted {c.n_tokens} tokens over {len(c.layers)} MoE layers → {args.out}")


def cmd_select(args) -> None:
    import routerlens_interp as rl

    claim_out(args, args.out, is_dir=False, example="experts.json")
    counts = rl.ExpertCounts.load(args.counts)
    base = rl.ExpertCounts.load(args.baseline) if args.baseline else None
    method = args.method or ("ratio" if base is not None else "count")
    s = rl.select_experts(counts, n=args.n, baseline=base, method=method, top_p=args.top_p)
    s.save(args.out)
    _emit(args, {"out": args.out, "experts": json.loads(s.to_json())},
          "\n".join(f"layer {l:>3}: {ids}" for l, ids in s.items()) + f"\n→ {args.out}")


def recipe_config(recipe: str | None, method: str) -> dict:
    """TrainConfig fields of a named recipe: ``paper`` (the paper's public recipe, = TrainConfig's defaults) or
    ``toy`` (the bundled model's, as the demo trains); explicit flags override them."""
    if recipe == "paper":
        from ..pipeline.paper import paper_recipe

        return paper_recipe()
    if recipe == "toy":
        from ..pipeline.demo import toy_recipes

        return toy_recipes()[method]
    return {}


def _train(args, method: str) -> None:
    import routerlens_interp as rl
    from routerlens_interp.data import train_dev_data
    from routerlens_interp.prompts import check_examples

    claim_out(args, args.out, is_dir=True, resumable=True)
    # Every data argument is read before the model loads (a bad one fails in seconds, not after loading
    # a large model), and the dev set is checked to share no example with the test split.
    d = train_dev_data(args.data, split=args.split, dev=args.dev, dev_split=args.dev_split, limit=args.limit,
                       drop_dev_overlap=args.drop_dev_overlap)
    for note in d.notes:
        print(f"routerlens {args.command}: note: {note}", file=sys.stderr)
    train, dev = d.train, d.dev
    experts = rl.ExpertSet.load(args.experts) if method == "ceft" else None  # also before the model
    lm = _load(args)
    check_examples(lm, train, with_answer=True)
    check_examples(lm, dev, with_answer=True)
    cfg = dict(out_dir=args.out, resume=args.resume, progress=True, seed=args.seed, epochs=args.epochs, lr=args.lr,
               batch_size=args.batch_size, max_steps=args.max_steps, fsdp=args.fsdp or None,
               gradient_checkpointing=args.gradient_checkpointing or None, precision=args.precision)
    cfg = {**recipe_config(args.recipe, method), **{k: v for k, v in cfg.items() if v is not None}}
    if method == "router":
        ad = rl.tune_router(lm, train, dev, **cfg)
    elif method == "ceft":
        ad = rl.ceft(lm, train, dev, experts=experts, **cfg)
    else:
        ad = rl.full_finetune(lm, train, dev, only=args.only, **cfg)
    ad.save(args.out)
    m = dict(getattr(ad, "metrics", {}) or {})
    _emit(args, {"out": args.out, **m}, f"{method}: adapter → {args.out}  " +
          "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()))


def cmd_analyze(args) -> None:
    import routerlens_interp as rl
    from routerlens_interp.pipeline.report import write_analysis

    png = png_mode(args)
    claim_out(args, args.out, is_dir=True)
    lm, data = _model_and_data(args, "test")
    tuned = _adapter(args) if args.adapter else rl.ExpertSet.load(args.mask)
    res = write_analysis(lm, tuned, data, Path(args.out), layer=args.layer, png=png)
    skipped = (f"; AAG over {res['n'] - res['n_skipped_aag']} of {res['n']} examples ({res['n_skipped_aag']} "
               "skipped: answer not in their context)") if res["n_skipped_aag"] else ""
    _emit(args, res, f"CAG/AAG/APG tables and figures → {args.out}{skipped}")


def cmd_knockout(args) -> None:
    import routerlens_interp as rl

    lm, data = _model_and_data(args, "test")
    tuned = _adapter(args) if args.adapter else rl.ExpertSet.load(args.mask) if args.mask else None
    try:
        sets = [[int(x) for x in part.split(",")] for part in args.layers.split(";")] if args.layers else None
    except ValueError:
        raise ValueError(f"--layers {args.layers!r}: give layer sets like '0;1;0,1,2' (';' between sets)") from None
    k = rl.attention_knockout(lm, data, layer_sets=sets, span=args.span, tuned=tuned)
    rows = k.table()
    res = {"span": k.span, "n": k.n, "n_skipped": k.n_skipped, "base_accuracy": k.base_accuracy,
           "base_prob": k.base_prob, "rows": rows}
    lines = [f"first answer token correct without knockout: {k.base_accuracy:.1f} % (n={k.n}, "
             f"skipped {k.n_skipped} without {k.span})"]
    lines += [f"  last position blocked from {k.span} at layers {r['layers']:<14} {r['accuracy']:5.1f} % "
              f"({r['accuracy_change']:+.1f})  p={r['prob']:.3f}" for r in rows]
    _emit(args, res, "\n".join(lines))


def cmd_demo(args) -> None:
    from routerlens_interp.pipeline.demo import run_demo

    png = png_mode(args)
    claim_out(args, args.out, is_dir=True)
    seed_everything(args.seed)
    report = run_demo(Path(args.out), seed=args.seed, fast=args.fast, png=png, model=args.model,
                      log=(lambda *a, **k: print(*a, file=sys.stderr, **k)) if args.json else print)
    if args.json:
        print(json.dumps(report, default=float))


TRUST_BASE_HELP = ("apply an adapter whose manifest has no base_fingerprint (nothing then checks that it was "
                   "made for --model; prints a warning)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="routerlens", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="the whole pipeline on the bundled model")
    d.add_argument("--out", default="demo_out", help="output directory (report.json, figures); new or empty "
                                                     "unless --overwrite")
    add_overwrite(d)
    d.add_argument("--fast", action="store_true", help="few training steps and small samples (a smoke run)")
    add_png_flags(d)
    d.add_argument("--model", default="toy", help="the bundled model (default), or a directory written by "
                                                  "`python -m routerlens_interp.toy.pretrain` (same synthetic world)")
    # Measured on 2 shared cores: one thread ran the bundled model 20-80x faster than two.
    _common(d, data=False, model=False, threads_default=1)
    d.set_defaults(func=cmd_demo)

    from .evaluate import add_evaluate_args

    e = sub.add_parser("evaluate", help="the data set's metric: EM/F1/memory-rate (QA), accuracy (MemoTrap, MMLU), "
                                        "BLEU/METEOR/ROUGE-L (Gigaword); --judge adds AccLLM")
    _common(e)
    e.add_argument("--adapter", help="adapter directory to apply")
    e.add_argument("--trust-base", action="store_true", help=TRUST_BASE_HELP)
    e.add_argument("--mask", help="experts.json to mask")
    e.add_argument("--mask-mode", default="reroute", choices=["reroute", "zero"])
    e.add_argument("--max-new-tokens", type=positive_int, default=32)
    e.add_argument("--stop", choices=["eos", "newline"], default="eos",
                   help="eos (default, the paper's): greedy until EOS or the chat template's end-of-turn token, "
                        "white space stripped; newline: also stop at the first newline, keep the text before it")
    e.add_argument("--batch-size", type=positive_int, default=16)
    e.add_argument("--predictions", help="write predictions as JSONL here (a new file unless --overwrite)")
    add_overwrite(e)
    add_evaluate_args(e)
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("count", help="count expert selections per MoE layer")
    _common(c)
    c.add_argument("--adapter", help="adapter directory to apply (e.g. the router-tuned one)")
    c.add_argument("--trust-base", action="store_true", help=TRUST_BASE_HELP)
    c.add_argument("--mask", help="experts.json to mask")
    c.add_argument("--mask-mode", default="reroute", choices=["reroute", "zero"])
    c.add_argument("--span", default="all", choices=["all", "prompt", "context", "question", "answer", "sequence"],
                   help="tokens to count: all (default, the paper's: prompt + answer, without the end-of-turn "
                        "token / EOS), prompt, context, question, answer, or sequence (all + the end token)")
    c.add_argument("--batch-size", type=positive_int, default=8)
    c.add_argument("--out", required=True, help="counts file to write (e.g. counts.safetensors); a new file unless "
                                                "--overwrite")
    add_overwrite(c)
    c.set_defaults(func=cmd_count)

    s = sub.add_parser("select", help="pick context-faithful experts from counts")
    _common(s, data=False, model=False)
    s.add_argument("--counts", required=True)
    s.add_argument("--baseline", help="counts of the base model (enables --method ratio)")
    s.add_argument("--n", type=positive_int, default=8, help="experts per layer (default 8)")
    s.add_argument("--method", choices=["count", "ratio", "gate", "token", "softmax_mass"], default=None,
                   help="count (paper), ratio (tuned/base), gate or token (ESFT), softmax_mass (mean full-softmax "
                        "probability); default count, ratio with --baseline")
    s.add_argument("--top-p", type=probability, default=None,
                   help="cumulative score threshold in (0, 1] instead of --n (gate/token: ESFT's raw scores)")
    s.add_argument("--out", required=True, help="experts.json to write (a new file unless --overwrite)")
    add_overwrite(s)
    s.set_defaults(func=cmd_select)

    for name, method, helptext in (("tune-router", "router", "train only the routers (Router Lens)"),
                                   ("ceft", "ceft", "fine-tune only the selected experts"),
                                   ("finetune", "fft", "full fine-tuning (baseline)")):
        t = sub.add_parser(name, help=helptext)
        _common(t)
        if method == "ceft":
            t.add_argument("--experts", required=True, help="experts.json from `routerlens select`")
        if method == "fft":
            t.add_argument("--only", default=None, metavar="REGEX",
                           help="train only parameters whose name matches (e.g. self_attn): where does a skill live?")
        t.add_argument("--dev", help="dev data for choosing the checkpoint (default: the --dev-split of --data; for "
                                     "one file, its dev part: 10 %% chosen by a fixed hash). It is checked to share "
                                     "no example (context + question) with the test split of --data")
        t.add_argument("--dev-split", default=None,
                       help="split of the dev data: dev (alias validation; the default), train, test or all; a "
                            "--dev file without --dev-split is used whole")
        t.add_argument("--drop-dev-overlap", action="store_true",
                       help="drop dev examples that equal a test example (reported) instead of refusing: "
                            "RouterLens' own data/nq-swap has one")
        t.add_argument("--recipe", choices=("paper", "toy"), default=None,
                       help="paper: lr 5e-4, 3 epochs, cosine with 10%% warm-up, batch 8, examples over 300 tokens "
                            "dropped, best checkpoint by dev loss (also the default); toy: the bundled model's recipe "
                            "(as the demo); --epochs/--lr/... override it")
        t.add_argument("--epochs", type=positive_int, default=None)
        t.add_argument("--lr", type=positive_float, default=None)
        t.add_argument("--batch-size", type=positive_int, default=None)
        t.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many optimizer steps")
        t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
        add_overwrite(t)
        t.add_argument("--fsdp", action="store_true",
                       help="with several processes (torchrun / accelerate launch), shard parameters, gradients "
                            "and optimizer state over them (FSDP) instead of one model copy each (DDP)")
        t.add_argument("--gradient-checkpointing", action="store_true",
                       help="recompute each layer's activations in backward (less memory, ~1 more forward of time)")
        t.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                       help="bf16: forward under bf16 autocast, trained tensors kept as fp32 master weights "
                            "(default: fp32)")
        t.add_argument("--out", required=True, help="output directory (checkpoints + adapter); new or empty unless "
                                                    "--resume or --overwrite")
        t.set_defaults(func=lambda a, m=method: _train(a, m))

    a = sub.add_parser("analyze", help="CAG/AAG/APG tables + figures of a tuned model vs its base")
    _common(a)
    g = a.add_mutually_exclusive_group(required=True)
    g.add_argument("--adapter", help="adapter directory (the tuned model)")
    a.add_argument("--trust-base", action="store_true", help=TRUST_BASE_HELP)
    g.add_argument("--mask", help="experts.json: analyse what masking them does")
    a.add_argument("--layer", type=non_negative_int, default=None, help="layer for the per-token attention figure")
    add_png_flags(a)
    a.add_argument("--out", required=True, help="output directory (CSV tables, figures); new or empty unless "
                                                "--overwrite")
    add_overwrite(a)
    a.set_defaults(func=cmd_analyze)

    k = sub.add_parser("knockout", help="is the attention to the answer used? block it layer by layer and re-score")
    _common(k)
    g = k.add_mutually_exclusive_group()
    g.add_argument("--adapter", help="knock out in the model with this adapter applied (e.g. router-tuned)")
    k.add_argument("--trust-base", action="store_true", help=TRUST_BASE_HELP)
    g.add_argument("--mask", help="knock out in the model with these experts masked (experts.json)")
    k.add_argument("--span", default="answer_in_context", choices=["answer_in_context", "context", "question"])
    k.add_argument("--layers", default=None, help="layer sets, e.g. '0;1;2,3' (default: each layer, then all)")
    k.set_defaults(func=cmd_knockout)
    from .ces import add_parsers as add_ces_parsers  # attribute, contrast, steer
    add_ces_parsers(sub, _common)
    from .run import add_parser as add_run_parser  # the whole method on any model
    add_run_parser(sub, _common)
    from .inspect import add_parser as add_inspect_parser  # inspect
    add_inspect_parser(sub, _common)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command. Its outputs are locked until it ends (``outputs_held``); its warnings are one line
    each (``one_line_warnings``; ``--debug``: Python's full warnings)."""
    from .messages import one_line_warnings
    from ..errors import TrainingInterrupted

    parser = build_parser()
    add_debug(parser)
    args = parser.parse_args(argv)
    try:
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        with ExitStack() as stack:
            if not args.debug:
                stack.enter_context(one_line_warnings(args.command))
            stack.enter_context(outputs_held())
            from ..prompts import truncation_report

            stack.enter_context(truncation_report())  # one line with the count of truncated contexts
            from ..train.seed import deterministic

            # the command's seed_everything turns deterministic algorithms on; a caller in the same process
            # (a notebook, a test) gets its own mode back afterwards
            stack.enter_context(deterministic())
            args.func(args)
    except TrainingInterrupted as e:  # a checkpoint was written: say how to continue (exit 130 / 143)
        print(f"interrupted at step {e.step}; continue with --resume", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"routerlens {args.command}: interrupted", file=sys.stderr)
        return 130
    except user_errors() as e:
        if args.debug:
            raise
        print(f"routerlens {args.command}: error: {describe_error(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
