"""The whole method on any model and data set (``routerlens run``; ``routerlens demo`` runs it on the bundled model).

base evaluation → router tuning → expert counting → CE selection → masking CEs vs random non-CE experts
(``draws`` draws, 95 % CI) vs the experts whose usage grew most vs the base model's busiest experts → CEFT (on the
CEs, from the base model) vs FFT → CAG/AAG/APG (router-tuned vs base) → attention knockout. Every score row is
the test set's EM/F1/memory rate plus one column per *side set* (e.g. open-book EM and closed-book recall on the
bundled model's world), so one function serves the demo and real data sets alike.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .paper import paper_numbers


@dataclass
class Sizes:
    """How much of each split a run uses (``None``: all of it).

    Attributes: n_test (examples scored per row), n_side (per side set), n_count (training examples counted for
    CE selection; the paper counts 2,000 NQ-Swap examples), n_analysis (examples traced for CAG/AAG/APG and
    knockout), draws (random-mask draws), train_limit (training examples), max_steps (optimizer steps, smoke runs).
    """

    n_test: int | None = None
    n_side: int | None = None
    n_count: int | None = 2000
    n_analysis: int | None = 120
    draws: int = 10
    train_limit: int | None = None
    max_steps: int | None = None


@dataclass
class RunData:
    """The data of one run: ``train``/``dev``/``test`` lists of QAExamples and named side sets ``{column: examples}``
    (each scored by EM next to every row, e.g. ``{"open_em": toy-open test, "recall": toy-memory test}``);
    ``forgetting``: multiple-choice examples (MMLU) on which the base model and each trained model are scored
    (:func:`rl.forgetting <routerlens_interp.evaluation.scoring.forgetting>`, ``forgetting_shots``-shot), none by default."""

    train: list
    dev: list
    test: list
    side: dict = field(default_factory=dict)
    name: str = ""
    forgetting: list = field(default_factory=list)  # ChoiceExamples (MMLU): accuracy lost by each training
    forgetting_shots: int = 0


def _ci95(xs: list[float]) -> float:
    """Half-width of a normal 95 % confidence interval of the mean."""
    return float(1.96 * np.std(xs, ddof=1) / math.sqrt(len(xs))) if len(xs) > 1 else float("nan")


def run_pipeline(lm, data: RunData, out: Path, recipes: dict, *, seed: int = 826, sizes: Sizes | None = None,
                 n_ces: int | None = None, png: bool | str = "auto", log=print, model_name: str = "",
                 extra: dict | None = None) -> dict:
    """Run the method on ``lm``; write ``out/report.json`` and figures; return the report dict.

    Args:
        recipes: ``{"router" | "ceft" | "fft": TrainConfig fields}`` for the three trainings.
        n_ces: CEs per layer (default ``max(top_k, n_experts // 8)``: 8 of 64 at top-8, the paper's N).
        png: ``"auto"`` (PNGs where kaleido finds a browser), ``True`` (required) or ``False`` (HTML only).
        extra: merged into the report (e.g. the recipe's name).
    """
    import routerlens_interp as rl
    from .. import plot
    from .report import write_analysis

    sizes = sizes or Sizes()
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cut = lambda xs, n: list(xs) if n is None else list(xs)[:n]
    train, dev, test = cut(data.train, sizes.train_limit), list(data.dev), cut(data.test, sizes.n_test)
    side = {k: cut(v, sizes.n_side) for k, v in data.side.items()}
    cols = list(side)

    def recipe(method: str) -> dict:
        r = dict(recipes[method], seed=seed, progress=True)
        if sizes.max_steps is not None:
            r["max_steps"] = sizes.max_steps
        return r

    def scores(tag: str) -> dict:
        c = rl.evaluate(lm, test)
        row = {"em": c["em"], "f1": c["f1"], "memory_rate": c["memory_rate"]}
        row.update({k: rl.evaluate(lm, v)["em"] for k, v in side.items()})
        mr = "  n/a" if row["memory_rate"] is None else f"{row['memory_rate']:5.1f}"
        log(f"  {tag:<28} EM {row['em']:5.1f}  F1 {row['f1']:5.1f}  memory {mr}"
            + "".join(f"  | {k} {row[k]:5.1f}" for k in cols))
        return row

    log(f"routerlens run: {lm!r} on {data.name or 'data'} ({len(train)} train / {len(dev)} dev / {len(test)} test)")
    base = scores("base")
    log("router tuning ...")
    rt = rl.tune_router(lm, train, dev, out_dir=out / "router_tuned", **recipe("router"))
    rt.save(out / "router_tuned")
    count_data = cut(train, sizes.n_count)
    base_counts = rl.count_experts(lm, count_data)
    n = n_ces or max(lm.spec.top_k, lm.spec.n_experts // 8)
    with rt.applied(lm):
        tuned = scores("router-tuned")
        tuned_counts = rl.count_experts(lm, count_data)
        ces = rl.select_experts(tuned_counts, n=n)
        grown = rl.grown_experts(tuned_counts, base_counts, n=n)
        ces.save(out / "experts.json")
        with rl.mask_experts(lm, ces):
            masked_ce = scores("router-tuned − CEs")
        draws = []
        for d in range(sizes.draws):
            rnd = rl.random_experts(n, lm.spec.moe_layers, lm.spec.n_experts, exclude=ces, seed=seed + d)
            with rl.mask_experts(lm, rnd):
                draws.append(scores(f"router-tuned − random #{d + 1}"))
        with rl.mask_experts(lm, grown):
            masked_grown = scores("router-tuned − grown most")
        # The base model's busiest experts: separates "context-faithful" from "merely busy".
        busiest = rl.select_experts(base_counts, n=n)
        with rl.mask_experts(lm, busiest):
            masked_busiest = scores("router-tuned − base's busiest")
    masked_random = {k: (float(np.mean([r[k] for r in draws])) if all(r[k] is not None for r in draws) else None)
                     for k in draws[0]}
    masked_random.update({f"{k}_ci95": _ci95([r[k] for r in draws]) for k in ("em", "f1", *cols)})

    ce_train, weightless = ceft_experts(lm, ces)
    if weightless:
        log(f"CEFT leaves out {weightless} CEs that are zero-compute identity experts (no weights to train)")
    log(f"CEFT (the {n} CEs per layer) ...")
    ce = rl.ceft(lm, train, dev, experts=ce_train, out_dir=out / "ceft", **recipe("ceft"))
    with ce.applied(lm):
        ce_s = scores("CEFT")
    log("full fine-tuning ...")
    ft = rl.full_finetune(lm, train, dev, out_dir=out / "fft", **recipe("fft"))
    with ft.applied(lm):
        ft_s = scores("FFT")
    forgot = None
    if data.forgetting:
        log(f"forgetting: multiple-choice accuracy on {len(data.forgetting)} examples, {data.forgetting_shots}-shot ...")
        forgot = rl.forgetting(lm, {"router_tuned": rt, "ceft": ce, "fft": ft}, data=data.forgetting,
                               shots=data.forgetting_shots)

    log("CAG / AAG / APG (router-tuned vs base) ...")
    ana_data = cut(test, sizes.n_analysis)
    ana = write_analysis(lm, rt, ana_data, out / "analysis", png=png)
    log("attention knockout (is the attention to the answer used, and at which layer?) ...")
    ko = rl.attention_knockout(lm, ana_data, tuned=rt)
    ko_side = None
    if "open_em" in side:  # the bundled world: where does the base model read the answer open-book?
        ko_side = rl.attention_knockout(lm, cut(side["open_em"], sizes.n_analysis))
    rows = {"router-tuned": tuned, "− random experts": masked_random, "− grown most": masked_grown,
            "− base's busiest": masked_busiest, "− CEs": masked_ce, "base": base}
    ko_rows = {f"router-tuned, {data.name or 'test'}": ko}
    if ko_side is not None:
        ko_rows = {"base, open-book": ko_side, **ko_rows}
    figs = {"masking": plot.masking_bars(rows, title=f"Masking on {data.name or 'test'} (router-tuned model)"),
            "expert_counts": plot.expert_heatmap(tuned_counts, ces, title="Expert usage after router tuning (CEs outlined)"),
            "expert_diff": plot.expert_diff_heatmap(tuned_counts, base_counts, ces),
            "knockout": plot.knockout_bars(ko_rows, title="Attention knockout: where the answer is read")}
    pick = lambda r: {k: r.get(k) for k in ("em", "f1", "memory_rate", *cols)}
    trained = lambda s, ad: {**pick(s), "trainable_params": ad.n_trainable}
    report = {
        "base": pick(base), "router_tuned": pick(tuned), "masked_ce": pick(masked_ce),
        "masked_random": {**masked_random, "draws": len(draws)}, "masked_grown": pick(masked_grown),
        "masked_base_busiest": pick(masked_busiest), "base_busiest": {str(k): v for k, v in busiest.items()},
        "ceft": trained(ce_s, ce), "fft": trained(ft_s, ft), "side_columns": cols,
        "cag": ana["cag"], "aag": ana["aag"], "apg": ana["apg"], "n_analysis": len(ana_data),
        "knockout": {"span": ko.span, "n": ko.n, "none": ko.base_accuracy,
                     "layer_sets": [list(ls) for ls in ko.layer_sets], "labels": ko.labels,
                     "accuracy": ko.accuracy.tolist()},
        "experts": {str(k): v for k, v in ces.items()}, "n_ce_per_layer": n, "n_counted": len(count_data),
        "recipes": recipes, "seed": seed, "model": model_name or lm.name, "data": data.name,
        "n_train": len(train), "n_dev": len(dev), "n_test": len(test),
        **(extra or {}),
    }
    if ko_side is not None:
        report["knockout"].update(base_open_none=ko_side.base_accuracy, base_open_accuracy=ko_side.accuracy.tolist())
    if forgot is not None:
        report["forgetting"] = forgot
    if "recall" in side:
        report["base_recall"] = base["recall"]
    report["paper"] = paper_numbers(report["model"], data.name)
    report["seconds"] = round(time.time() - t0, 1)
    # the report first: figures can only add files, never lose the numbers
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    plot.save_figures(figs, out, png=png)
    log(summary(report))
    return report


def _f(x, width: int) -> str:
    return f"{'n/a':>{width}}" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{width}.1f}"


def summary(r: dict) -> str:
    """The report as a readable table (with the paper's numbers beside ours where the paper has them)."""
    cols = r.get("side_columns", ["open_em", "recall"])
    heads = {"open_em": "open EM", "recall": "recall"}
    lines = [f"{'':<26}{'EM':>7}{'F1':>7}{'memory%':>9}" + "".join(f"{heads.get(c, c):>9}" for c in cols)]
    for key, name in (("base", "base"), ("router_tuned", "router-tuned"), ("masked_ce", "  − CEs"),
                      ("masked_random", "  − random (mean)"), ("masked_grown", "  − grown most"),
                      ("masked_base_busiest", "  − base's busiest"), ("ceft", "CEFT"), ("fft", "FFT")):
        x = r[key]
        lines.append(f"{name:<26}{_f(x['em'], 7)}{_f(x['f1'], 7)}{_f(x.get('memory_rate'), 9)}"
                     + "".join(_f(x.get(c), 9) for c in cols))
    lines.append(f"random-mask EM 95% CI ±{r['masked_random'].get('em_ci95', float('nan')):.1f} "
                 f"over {r['masked_random']['draws']} draws")
    lines.append(f"trainable parameters: CEFT {r['ceft']['trainable_params']:,} vs FFT {r['fft']['trainable_params']:,}")
    if r.get("forgetting"):
        fg = r["forgetting"]
        lines.append(f"multiple-choice accuracy ({fg['n']} examples, {fg['shots']}-shot; drop = forgotten): base "
                     f"{fg['base']:.1f}" + "".join(f" | {name} {a['accuracy']:.1f} ({-a['drop']:+.1f})"
                                                   for name, a in fg["adapters"].items()))
    up = lambda xs: float(np.nanmean(np.asarray(xs, dtype=float)[len(xs) // 2:]))
    lines.append(f"mean CAG upper half {up(r['cag']):+.3f}  mean AAG upper half {up(r['aag']):+.3f}  "
                 f"APG last layer {r['apg'][-1]:+.3f}")
    ko = r.get("knockout")
    if ko:
        cells = [f"none {ko['none']:.1f}"] + [f"{'' if lab == 'all' else 'L'}{lab} {a:.1f}"
                                              for lab, a in zip(ko["labels"], ko["accuracy"])]
        lines.append("first answer token correct, router-tuned, last position blocked from the answer at: "
                     + " | ".join(cells))
    paper = r.get("paper")
    if paper:
        lines.append(f"the paper ({paper['model']} on {paper['data']}, EM/F1): "
                     + "  ".join(f"{k} {v}" for k, v in paper["numbers"].items()))
    lines.append(f"finished in {r['seconds']:.0f} s")
    return "\n".join(lines)


def ceft_experts(lm, ces):
    """The CEs CEFT can train → ``(ExpertSet, number left out)``: all of them, except zero-compute identity
    experts (LongCat-Flash ids ``≥ n_experts − identity_experts``), which return their input times the routing
    weight and hold no weights. The masking tests still use every CE; only the fine-tuning skips them."""
    from ..analysis.selection import ExpertSet
    from ..arch.layouts import n_weighted

    first = n_weighted(lm.spec)
    keep = ExpertSet({l: [e for e in ids if e < first] for l, ids in ces})
    return keep, len(ces) - len(keep)
