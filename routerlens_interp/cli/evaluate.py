"""``routerlens evaluate`` beyond EM/F1: accuracy (MemoTrap, MMLU), BLEU/METEOR/ROUGE-L (Gigaword), AccLLM (--judge)."""
from __future__ import annotations

import json
from pathlib import Path

from .checks import non_negative_int

__all__ = ["add_evaluate_args", "evaluate_kwargs", "emit_evaluation"]


def add_evaluate_args(p) -> None:
    """The options of ``evaluate`` that depend on the data set's task."""
    p.add_argument("--shots", type=non_negative_int, default=0,
                   help="multiple choice (MemoTrap, MMLU): solved examples before each question (MMLU: 0 or 5)")
    p.add_argument("--fewshot", default=None,
                   help="data the --shots examples come from (MMLU: its 'dev' split; default for hub MMLU: fetched)")
    p.add_argument("--judge", default=None,
                   help="QA: also report AccLLM judged by this causal LM ('toy', a hub id or a directory)")
    p.add_argument("--judge-mode", default=None, choices=["likelihood", "generate"],
                   help="how the judge answers: compare p(yes) with p(no) (default) or generate and parse")


def evaluate_kwargs(args) -> dict:
    """Keyword arguments of ``rl.evaluate`` from the parsed options (the data set decides which apply)."""
    import routerlens_interp as rl

    kw = {}
    if getattr(args, "shots", 0):
        kw["shots"] = args.shots
    if getattr(args, "fewshot", None):
        kw["fewshot"] = rl.load_dataset(args.fewshot, split="dev")
    if getattr(args, "judge", None):
        from ..evaluation.judge import load_judge

        kw["judge"] = load_judge(args.judge, device=getattr(args, "device", None))
        kw["judge_mode"] = args.judge_mode
    return kw


def _write_predictions(path: str, data, s: dict) -> None:
    rows = []
    for i, (ex, p) in enumerate(zip(data, s["predictions"])):
        if hasattr(ex, "choices"):
            rows.append({"prompt": ex.prompt, "choices": ex.choices, "gold": ex.label, "prediction": p,
                         "logprobs": s["logprobs"][i]})
        else:
            row = {"question": ex.question, "gold": ex.answers, "prediction": p}
            if "verdicts" in s:
                row.update(judged=s["judged"][i], verdict=s["verdicts"][i])
            rows.append(row)
    Path(path).write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def emit_evaluation(args, data, s: dict) -> bool:
    """Print (and write ``--predictions``) for results other than plain EM/F1; False leaves those to the caller."""
    metric = s.get("metric", "em/f1")
    if metric == "em/f1":
        return False
    if args.predictions:
        _write_predictions(args.predictions, data, s)
    if metric == "accuracy":
        out = {k: s[k] for k in ("accuracy", "accuracy_norm", "n", "shots")}
        human = f"accuracy {s['accuracy']:.1f}  (length-normalised {s['accuracy_norm']:.1f}, {s['shots']}-shot, n={s['n']})"
    elif metric == "bleu/meteor/rouge_l":
        out = {k: s[k] for k in ("bleu", "meteor", "meteor_stages", "rouge_l", "n")}
        human = (f"BLEU {s['bleu']:.2f}  METEOR {s['meteor']:.2f} ({s['meteor_stages']})  ROUGE-L {s['rouge_l']:.2f}  "
                 f"(n={s['n']})")
    else:  # em/f1/acc_llm
        out = {k: s[k] for k in ("em", "f1", "n", "memory_rate", "acc_llm", "agreement_with_em", "n_unparsed",
                                 "table", "judge", "judge_mode")}
        mr = "n/a" if s["memory_rate"] is None else f"{s['memory_rate']:.1f}"
        human = (f"EM {s['em']:.1f}  F1 {s['f1']:.1f}  memory-rate {mr}  AccLLM {s['acc_llm']:.1f} "
                 f"(judge {s['judge']}, agrees with EM on {s['agreement_with_em']:.1f}%, "
                 f"{s['n_unparsed']} unparsed)  (n={s['n']})")
    if args.json:
        print(json.dumps(out, default=float))
    else:
        print(human)
    return True
