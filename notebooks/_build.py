"""Write the tutorial notebooks (outputs empty) from the cell sources below.

    .venv/bin/python notebooks/_build.py          # rewrite notebooks/*.ipynb
    .venv/bin/python notebooks/_build.py --check  # fail if a notebook differs (hand edits, saved outputs)
    .venv/bin/pytest --nbmake notebooks           # run them top to bottom (make test does this)

Edit the cells here, not in the .ipynb files, so that the notebooks in git never hold outputs.
Each notebook runs on the bundled toy model in well under 3 minutes on 2 CPU cores; set the
environment variable ``ROUTERLENS_MODEL`` to an HF id or a local directory to run one on another model.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

SETUP = '''\
import os, time, warnings
import numpy as np
import plotly.io as pio
import routerlens_interp as rl

warnings.filterwarnings("ignore", category=UserWarning)  # e.g. "context truncated" on small windows
pio.renderers.default = "plotly_mimetype"  # offline; renders in JupyterLab, Notebook 7 and VS Code
MODEL = os.environ.get("ROUTERLENS_MODEL", "toy")  # the bundled model; or an HF id / local directory
T0 = time.time()
lm = rl.load(MODEL)
lm'''

# Few optimizer steps (the paper trains 3 epochs): enough to move the bundled model, seconds on 2 CPU cores.
TRAIN = '''\
TRAIN = dict(max_steps=100, batch_size=8, lr=5e-3, eval_points=2, seed=826, progress=False)  # 2/3 of an epoch
train = rl.load_dataset("toy-conflict", split="train")
dev = rl.load_dataset("toy-conflict", split="dev", limit=16)
test = rl.load_dataset("toy-conflict", split="test", limit=64)'''

NB: dict[str, list[tuple[str, str]]] = {}

NB["01_quickstart"] = [
    ("md", "# Quickstart: routing and logit lens of one question\n\n"
           "This notebook loads the bundled toy MoE model, traces one context-dependent question through it, "
           "and shows which experts each token is routed to (routing heatmap) and how the probability of the "
           "answer builds up over the layers (logit lens)."),
    ("code", SETUP),
    ("md", "The model handle knows the architecture: which layers are MoE layers, how many experts, top-k."),
    ("code", '''\
s = lm.spec
print(f"family {s.family}: {s.n_layers} layers, MoE layers {list(s.moe_layers)}, {s.n_experts} experts, top-{s.top_k}")
data = rl.load_dataset("toy-conflict", split="test", limit=8)
ex = data[0]
print("context :", ex.context)
print("question:", ex.question)
print("gold (from the context):", ex.answers[0], "| memorised answer:", ex.memory_answer)'''),
    ("md", "Greedy answer of the base model, and EM on a few examples whose context contradicts what the model "
           "memorised (toy-conflict, like NQ-Swap)."),
    ("code", '''\
scores = rl.evaluate(lm, data)
pred = scores["predictions"][0]
print(f"answer: {pred!r}  (gold {ex.answers[0]!r}, memorised {ex.memory_answer!r})")
print(f"EM {scores['em']:.1f} on {scores['n']} examples; answered from memory {scores['memory_rate'] or 0:.1f} %")'''),
    ("md", "## Trace\n`lm.trace` records, in one forward pass, the routing of every token in every MoE layer, "
           "the attention of the last prompt position onto the context, and the logit lens."),
    ("code", '''\
tr = lm.trace(ex)
tokens = tr.tokens(0, lm.tokenizer)
idx = np.stack([tr.routing[l].indices[0].numpy() for l in tr.moe_layers])   # [layers, T, k]
w = np.stack([tr.routing[l].weights[0].float().numpy() for l in tr.moe_layers])
print(f"{len(tokens)} prompt tokens; routing indices {idx.shape}")
rl.plot.routing_heatmap(tokens, idx, tr.moe_layers, weights=w, n_experts=lm.spec.n_experts).show()'''),
    ("code", '''\
ctx = tr.attention_to("context")[0]
print("attention mass of the last prompt position on the context, per layer:", np.round(ctx.numpy(), 3))'''),
    ("md", "## Logit lens\nProbability of the first token of the context's answer, and of the memorised answer, "
           "read out after every layer (`softmax(unembed(final_norm(h_l)))` at the last prompt position)."),
    ("code", '''\
mem = rl.QAExample(context=ex.context, question=ex.question, answers=[ex.memory_answer])
mem_tok = int(lm.encode(mem).answer_ids[0])
gold_tok = int(tr.lens_targets[0])
tr_mem = lm.trace(ex, routing=False, attention=False, lens_targets=[mem_tok])
lens = {"context answer " + repr(lm.tokenizer.decode([gold_tok]).strip()): tr.lens[0].numpy(),
        "memorised answer " + repr(lm.tokenizer.decode([mem_tok]).strip()): tr_mem.lens[0].numpy()}
rl.plot.logit_lens(tr.layers, lens, title="Logit lens at the last prompt position").show()'''),
    ("md", "## What this run found"),
    ("code", '''\
p_gold, p_mem = tr.lens[0].numpy(), tr_mem.lens[0].numpy()
top1 = {l: int(np.bincount(idx[i, :, 0], minlength=lm.spec.n_experts).argmax()) for i, l in enumerate(tr.moe_layers)}
source = "the context" if rl.em_f1(pred, ex.answers)[0] else ("memory" if rl.em_f1(pred, [ex.memory_answer])[0] else "neither")
print(f"The base model answered {pred!r}, i.e. from {source}; EM {scores['em']:.1f} over {scores['n']} conflict examples.")
print(f"Final-layer p(context answer) = {p_gold[-1]:.3f} vs p(memorised answer) = {p_mem[-1]:.3f}; "
      f"p(context answer) peaks after layer {int(p_gold.argmax())} at {p_gold.max():.3f}.")
print("Most frequent top-1 expert per MoE layer for this prompt:", top1)
print(f"Notebook ran in {time.time() - T0:.0f} s.")'''),
]

NB["02_router_lens"] = [
    ("md", "# Router Lens: tune the router, find the context-faithful experts\n\n"
           "This notebook tunes only the routers of the bundled model on context-dependent QA (a few steps), "
           "counts which experts the tuned router picks, selects the context-faithful experts (CEs), draws them "
           "on a heatmap, and measures how much the selected sets overlap across data sets."),
    ("code", SETUP),
    ("code", TRAIN),
    ("md", "## 1. Router tuning\nOnly `mlp.gate` of every MoE layer is trained (cross-entropy on answer tokens, "
           "no load-balancing loss); everything else is frozen. The result is a small adapter."),
    ("code", '''\
base = rl.evaluate(lm, test)
t = time.time()
rt = rl.tune_router(lm, train, dev, **TRAIN)
with rt.applied(lm):
    tuned = rl.evaluate(lm, test)
print(f"trained {rt.n_trainable:,} router parameters of {sum(p.numel() for p in lm.hf.parameters()):,} "
      f"in {time.time() - t:.0f} s; dev loss {rt.metrics['initial_dev_loss']:.3f} -> {rt.metrics['best_dev_loss']:.3f}")
print(f"EM on conflicting contexts: base {base['em']:.1f} -> router-tuned {tuned['em']:.1f} "
      f"(answers from memory {base['memory_rate'] or 0:.1f} % -> {tuned['memory_rate'] or 0:.1f} %)")'''),
    ("md", "## 2. Count and select\nFor every (layer, expert): how many tokens (prompt + answer) have it in their "
           "top-k under the tuned router. The top-N per layer are the CEs; the `ratio` score (tuned / base counts) "
           "isolates the experts the tuning moved towards."),
    ("code", '''\
count_data = train[:32]
base_counts = rl.count_experts(lm, count_data)
with rt.applied(lm):
    tuned_counts = rl.count_experts(lm, count_data)
N = max(lm.spec.top_k, lm.spec.n_experts // 8)
ces = rl.select_experts(tuned_counts, n=N)
moved = rl.select_experts(tuned_counts, n=N, baseline=base_counts, method="ratio")
print("CEs (count):", ces)
print("moved most (ratio):", moved)
rl.plot.expert_heatmap(tuned_counts, ces, title="Expert usage after router tuning (CEs outlined)").show()'''),
    ("code", "rl.plot.expert_diff_heatmap(tuned_counts, base_counts, ces).show()"),
    ("md", "## 3. Overlap across data sets\nThe same selection on other data: open-book QA whose context agrees "
           "with memory (toy-open) and closed-book questions (toy-memory, no context). Context-faithful experts "
           "should recur on open-book data and differ from the experts used without a context."),
    ("code", '''\
sets = {"CEs conflict": ces}
with rt.applied(lm):
    for name in ("toy-open", "toy-memory"):
        d = rl.load_dataset(name, split="test", limit=32)
        sets[f"top {name.split('-')[1]}"] = rl.select_experts(rl.count_experts(lm, d), n=N)
sets["base top conflict"] = rl.select_experts(base_counts, n=N)
sets["random"] = rl.random_experts(N, lm.spec.moe_layers, lm.spec.n_experts, seed=0)
rl.plot.overlap_matrix(sets).show()'''),
    ("md", "## What this run found"),
    ("code", '''\
share = lambda c, s: float(sum(c.row(l)[e] for l, ids in s.items() for e in ids) / (c.n_tokens * c.top_k * len(c.layers)))
print(f"Router tuning ({rt.n_trainable:,} parameters, {TRAIN['max_steps']} steps) moved EM on conflicting contexts "
      f"from {base['em']:.1f} to {tuned['em']:.1f}.")
print(f"The {N} CEs per layer carry {100 * share(tuned_counts, ces):.1f} % of the routing slots after tuning "
      f"vs {100 * share(base_counts, ces):.1f} % before.")
print(f"CE overlap (Jaccard) conflict vs open-book {ces.jaccard(sets['top open']):.2f}, "
      f"vs closed-book {ces.jaccard(sets['top memory']):.2f}, vs base top {ces.jaccard(sets['base top conflict']):.2f}, "
      f"vs random {ces.jaccard(sets['random']):.2f}.")
print(f"Notebook ran in {time.time() - T0:.0f} s.")'''),
]

NB["03_live_ablation"] = [
    ("md", "# Live expert ablation\n\n"
           "This notebook opens an interactive panel (`rl.widgets.AblationPanel`) around an *expert board*: one "
           "row per MoE layer, one cell per expert. Click cells to mask experts, drag a box (or lasso) over many, "
           "click a row header for a whole layer, or pick a preset (the context-faithful experts, random non-CE "
           "experts, the base model's busiest experts), and watch the router-tuned model's answer, the probability "
           "of the gold answer and the per-layer answer probability gain (APG, logit lens, vs no mask) change."),
    ("code", SETUP),
    ("code", TRAIN),
    ("md", "Tune the routers (few steps). `AblationPanel.from_data` counts routing on the training questions once: "
           "that gives the presets (CEs under the tuned router, random non-CE experts, the base model's top "
           "experts) and the board's colourings (usage, Router Lens CE rank, usage change tuned − base)."),
    ("code", '''\
rt = rl.tune_router(lm, train, dev, **TRAIN)
panel = rl.widgets.AblationPanel.from_data(lm, test, tuned=rt, count_data=train[:32])
for name, s in panel.presets.items():
    print(f"{name:9s}", s)
with rt.applied(lm):
    preds = rl.evaluate(lm, test)["predictions"]
# probe an example the tuned model answers from its context, if there is one
i = next((j for j, (p, e) in enumerate(zip(preds, test)) if rl.em_f1(p, e.answers)[0]), 0)
panel.set_example(i)
example = test[i]
print(f"example {i}: {example.question}  gold {example.answers[0]!r}, memorised {example.memory_answer!r}")'''),
    ("md", "## The panel\nThe board is coloured by what `colour by` says; masked cells carry a cross. `mode` switches "
           "between re-routing (masked experts' logits set to −inf, top-k re-picked) and zeroing (routing kept, "
           "masked experts' outputs dropped). Below the board: the answer with and without the mask, p(answer), how "
           "many prompt tokens the masked experts receive without the mask, and the per-layer APG. Masking every "
           "expert of a layer under re-routing is impossible: the panel says so and keeps the last valid result, "
           "greyed. `batch EM` scores the mask on N test questions (with a progress bar and cancel)."),
    ("code", '''\
panel.widget()'''),
    ("md", "## The same without clicking\nEvery control only calls the panel's methods (`apply_preset`, `toggle`, "
           "`set_experts`, `set_coloring`, `update`), and the panel above redraws from the same state, so a script "
           "can drive it:"),
    ("code", '''\
results = {name: panel.run_preset(name) for name in ["none", "CEs", "random", "base top"]}
for name, r in results.items():
    print(panel.summary(r))
print()
print(rl.widgets.describe_change(results["none"], results["CEs"]))
print(rl.widgets.describe_change(results["none"], results["random"]))
ce_received = sum(t for d in results["CEs"]["received"].values() for t in d.values())
print(f"The masked CEs receive {ce_received} expert slots of the {results['CEs']['n_tokens']} prompt tokens without the mask.")
panel.figure(results["CEs"]).show()'''),
    ("code", '''\
panel.set_experts(lm.spec.moe_layers[0], range(lm.spec.n_experts))  # every expert of a layer
print(panel.summary())
batch = {}
for name in ["CEs", "random"]:
    panel.apply_preset(name)
    batch[name] = panel.run_batch(16)
    print(f"{name:7s} EM {batch[name]['em']:5.1f} masked vs {batch[name]['em_reference']:5.1f} without the mask "
          f"on {batch[name]['done']} test questions")
panel.clear()'''),
    ("md", "## What this run found"),
    ("code", '''\
ce, rnd, none = results["CEs"], results["random"], results["none"]
print(f"On {example.question!r} the router-tuned model answers {none['answer']!r} (gold {example.answers[0]!r}).")
print(f"Masking the CEs: answer {ce['answer']!r}, p(gold token) {none['p_answer']:.3f} -> {ce['p_answer']:.3f}, "
      f"APG at the last layer {ce['apg'][-1]:+.3f}.")
print(f"Masking as many random experts: answer {rnd['answer']!r}, p(gold token) -> {rnd['p_answer']:.3f}, "
      f"APG at the last layer {rnd['apg'][-1]:+.3f}.")
print(f"On 16 test questions: EM {batch['CEs']['em_reference']:.1f} without a mask, {batch['CEs']['em']:.1f} with the "
      f"CEs masked, {batch['random']['em']:.1f} with random experts masked.")
print(f"Notebook ran in {time.time() - T0:.0f} s.")'''),
]

NB["04_ceft_vs_fft"] = [
    ("md", "# CEFT vs full fine-tuning\n\n"
           "This notebook fine-tunes only the context-faithful experts (CEFT, starting from the base model) and, "
           "as the baseline, all weights (FFT) with the same recipe, then compares trainable parameters, training "
           "memory (gradients + optimizer state), EM on conflicting contexts, and closed-book recall of the "
           "model's memorised facts (how much each method forgets)."),
    ("code", SETUP),
    ("code", TRAIN + '''
memory = rl.load_dataset("toy-memory", split="test", limit=24)  # closed-book recall''' ),
    ("md", "CEs come from router tuning (as in `02_router_lens`)."),
    ("code", '''\
rt = rl.tune_router(lm, train, dev, **TRAIN)
with rt.applied(lm):
    counts = rl.count_experts(lm, train[:32])
ces = rl.select_experts(counts, n=max(lm.spec.top_k, lm.spec.n_experts // 8))
print("CEs:", ces)'''),
    ("code", '''\
def scores(adapter=None):
    from contextlib import nullcontext
    with adapter.applied(lm) if adapter is not None else nullcontext():
        c, m = rl.evaluate(lm, test), rl.evaluate(lm, memory)
    return {"em": c["em"], "f1": c["f1"], "recall": m["em"]}

def record(name, adapter, seconds):
    info[name] = {"params": adapter.n_trainable, "seconds": seconds,
                  "memory_mb": (adapter.metrics["grad_bytes"] + adapter.metrics["optimizer_state_bytes"]) / 2**20}
    rows[name] = scores(adapter)

rows, info = {"base": scores(), "router-tuned": scores(rt)}, {}'''),
    ("md", "**CEFT**: only the CEs' weights are trained (all three projections of each selected expert; the other "
           "experts stay bit-identical), starting from the base model, not the router-tuned one."),
    ("code", '''\
t = time.time()
ce = rl.ceft(lm, train, dev, experts=ces, **TRAIN)
record("CEFT", ce, time.time() - t)'''),
    ("md", "**FFT**: every weight, same recipe."),
    ("code", '''\
t = time.time()
ft = rl.full_finetune(lm, train, dev, **TRAIN)
record("FFT", ft, time.time() - t)'''),
    ("code", '''\
for name, r in rows.items():
    extra = info.get(name)
    extra = f"  params {extra['params']:>10,}  grad+optimizer {extra['memory_mb']:7.2f} MiB  {extra['seconds']:5.0f} s" if extra else ""
    print(f"{name:12s} EM {r['em']:5.1f}  F1 {r['f1']:5.1f}  recall {r['recall']:5.1f}{extra}")'''),
    ("code", '''\
rl.plot.masking_bars(rows, title="CEFT vs FFT: EM/F1 on conflicting contexts, closed-book recall").show()'''),
    ("md", "## What this run found"),
    ("code", '''\
c, f = info["CEFT"], info["FFT"]
print(f"CEFT trained {c['params']:,} parameters vs FFT {f['params']:,} ({f['params'] / c['params']:.1f}x fewer), "
      f"with {f['memory_mb'] / c['memory_mb']:.1f}x less gradient + optimizer memory ({c['memory_mb']:.2f} vs {f['memory_mb']:.2f} MiB).")
print(f"EM on conflicting contexts: base {rows['base']['em']:.1f}, router-tuned {rows['router-tuned']['em']:.1f}, "
      f"CEFT {rows['CEFT']['em']:.1f}, FFT {rows['FFT']['em']:.1f}.")
print(f"Closed-book recall: base {rows['base']['recall']:.1f}, CEFT {rows['CEFT']['recall']:.1f}, FFT {rows['FFT']['recall']:.1f} "
      f"(forgetting: CEFT {rows['base']['recall'] - rows['CEFT']['recall']:+.1f}, FFT {rows['base']['recall'] - rows['FFT']['recall']:+.1f} points).")
print(f"Notebook ran in {time.time() - T0:.0f} s.")'''),
]

NB["05_mechanisms"] = [
    ("md", "# Mechanisms: attention and answer probability after router tuning\n\n"
           "This notebook compares the router-tuned model with its base on the same prompts: the context and "
           "answer attention gains (CAG, AAG) of the last prompt position per layer, the answer probability gain "
           "(APG) per layer by logit lens, the per-token attention difference at one layer, and — over several "
           "conditions (router-tuned, router-tuned with experts masked, base with experts masked) — how the "
           "attention gain tracks the EM gain (Pearson r)."),
    ("code", SETUP),
    ("code", TRAIN),
    ("code", '''\
rt = rl.tune_router(lm, train, dev, **TRAIN)
presets = rl.widgets.default_presets(lm, train[:32], tuned=rt)  # CEs, random, base top
ces = presets["CEs"]'''),
    ("md", "## CAG and AAG per layer"),
    ("code", '''\
g = rl.attention_gain(lm, rt, test)
rl.plot.attention_gain(g).show()'''),
    ("md", "## APG per layer (logit lens)"),
    ("code", '''\
p = rl.answer_probability_gain(lm, rt, test)
rl.plot.answer_probability_gain(p).show()'''),
    ("md", "## Per-token attention difference\nAt the layer with the largest context attention gain, for an "
           "example whose answer occurs in its context (answer framed)."),
    ("code", '''\
layer = int(g.layers[int(np.nanargmax(g.cag))]) if np.isfinite(g.cag).any() else g.layers[-1]
ex = next((e for e in test if any(a in e.context for a in e.answers)), test[0])
td = rl.token_attention_diff(lm, rt, ex, layer)
answer_tokens = [(i, i + 1) for i in td["answer_in_context"]]
rl.plot.token_attention_diff(td["tokens"], td["diff"], highlight=answer_tokens,
                             title=f"Attention from the last prompt token, tuned − base (layer {layer})").show()'''),
    ("md", "## Is the attention to the answer used? Knockout\nAn attention gain says where attention moved, not "
           "whether the model needs it. Here the last prompt position is blocked from the answer's tokens in the "
           "context, one layer at a time (then all layers), and the first answer token is re-scored."),
    ("code", '''\
for name, tuned in (("base", None), ("router-tuned", rt)):
    k = rl.attention_knockout(lm, test, tuned=tuned, progress=False)
    print(f"{name}: first answer token correct in {k.base_accuracy:.1f} % without knockout (n={k.n})")
    for row in k.table():
        print(f"  blocked at layers {row['layers']:<12} {row['accuracy']:5.1f} %  ({row['accuracy_change']:+.1f})")'''),
    ("md", "## Attention gain vs EM gain over conditions\nFor each condition: EM gain over the base model, and the "
           "context attention gain (relative, averaged over the upper half of the layers, where the paper finds it)."),
    ("code", '''\
from contextlib import ExitStack

upper = slice(lm.spec.n_layers // 2, None)
base_ctx = lm.trace(test, routing=False, lens=False).attention_to("context").double().mean(0).numpy()
base_em = rl.evaluate(lm, test)["em"]
conditions = {"RT": (rt, None), "RT − CEs": (rt, ces), "RT − random": (rt, presets["random"]),
              "RT − base top": (rt, presets["base top"]), "base − CEs": (None, ces),
              "base − random": (None, presets["random"])}
points = []
for name, (adapter, mask) in conditions.items():
    with ExitStack() as stack:
        if adapter is not None:
            stack.enter_context(adapter.applied(lm))
        if mask is not None:
            stack.enter_context(rl.mask_experts(lm, mask))
        em = rl.evaluate(lm, test)["em"]
        ctx = lm.trace(test, routing=False, lens=False).attention_to("context").double().mean(0).numpy()
    gain = float(np.mean((ctx[upper] - base_ctx[upper]) / base_ctx[upper]))
    points.append({"label": name, "attention_gain": gain, "em_gain": em - base_em})
    print(f"{name:14s} EM {em:5.1f} (gain {em - base_em:+6.1f})  CAG upper half {gain:+.3f}")
xs, ys = np.array([q["attention_gain"] for q in points]), np.array([q["em_gain"] for q in points])
r = float(np.corrcoef(xs, ys)[0, 1]) if xs.std() > 0 and ys.std() > 0 else float("nan")
rl.plot.scatter_gain_vs_em(points).show()'''),
    ("md", "## What this run found"),
    ("code", '''\
L = lm.spec.n_layers
print(f"CAG: mean {np.nanmean(g.cag[:L // 2]):+.3f} in the lower half of the layers, {np.nanmean(g.cag[L // 2:]):+.3f} "
      f"in the upper half; largest at layer {layer} ({np.nanmax(g.cag):+.3f}). AAG largest {np.nanmax(g.aag):+.3f} "
      f"at layer {int(g.layers[int(np.nanargmax(g.aag))]) if np.isfinite(g.aag).any() else 'n/a'}.")
print(f"APG: {p.apg[0]:+.3f} after layer 0, {p.apg[-1]:+.3f} after the last layer "
      f"(p(answer) {p.base[-1]:.3f} -> {p.tuned[-1]:.3f}).")
best = max(points, key=lambda q: q["em_gain"])
print(f"Attention gain vs EM gain over {len(points)} conditions: Pearson r = "
      f"{'undefined (no variation)' if np.isnan(r) else f'{r:.3f}'} (paper: ≈ 0.95); the largest EM gain, "
      f"{best['em_gain']:+.1f}, came with {best['label']} (CAG upper half {best['attention_gain']:+.3f}).")
print(f"Notebook ran in {time.time() - T0:.0f} s.")'''),
]


NB["06_ces_without_training"] = [
    ("md", "# Context-faithful experts without training\n\n"
           "Router Lens finds the context-faithful experts (CEs) by tuning the routers first. This notebook finds "
           "candidates with no training, and checks them against the causal test:\n\n"
           "1. **attribution**: one forward + backward pass estimates, for every (layer, expert), how much masking "
           "it would lower *faithfulness* = log p(context answer) − log p(memory answer);\n"
           "2. **exact where it matters**: mask the top candidates one at a time and re-rank them by the exact "
           "drop (`verify=K`), at a fraction of the cost of masking every expert;\n"
           "3. **routing contrast**, SteerMoE's **risk difference** of activation rates between paired inputs "
           "(with vs without the context, faithful vs unfaithful answer), and **REAP** (mean routing weight × "
           "expert output norm): no gradients at all;\n"
           "4. **steering**: add β to chosen experts' router logits (`rl.boost_experts`, β < 0 deactivates), or "
           "force them into / out of every token's top-k (`rl.force_experts`, SteerMoE-style): the training-free "
           "counterparts of router tuning; and route vectors (`rl.route_vector`), a dense router-logit offset read "
           "from prompts alone.\n\n"
           "Small samples here; `benchmarks/ces_without_training.py` runs the full measurement (README)."),
    ("code", SETUP),
    ("code", TRAIN + '''
from routerlens_interp.ces import best_beta, risk_difference, spearman, steer, steermoe_sets
from routerlens_interp.ces.plots import estimate_vs_exact, steering_curve
small = test[:16]
N = max(lm.spec.top_k, lm.spec.n_experts // 8)'''),
    ("md", "## 1. Attribution\nGradient of the metric with respect to a multiplier on each routing weight: "
           "−(that gradient) summed over the tokens routed to an expert is the first-order change when the expert "
           "is zero-masked. Scores are the estimated *drop* (positive: faithfulness relies on the expert)."),
    ("code", '''\
att = rl.attribute_experts(lm, small)
print(f"faithfulness {att.base:.3f} on {att.n_examples} conflict examples; attribution in {att.meta['seconds']:.1f} s")
att.plot(title="Attribution: estimated drop of faithfulness when masked").show()'''),
    ("md", "## 2. Exact where it matters\n`verify=16` zero-masks each of the 16 largest estimates alone and "
           "replaces their estimates by the exact drop (16 + 1 more forward passes; all L × E experts would take "
           "one pass each: the benchmark does that). 16 other experts are measured too, for the scatter."),
    ("code", '''\
ver = rl.attribute_experts(lm, small, verify=16)
c = ver.meta["cost"]
print(f"cost: {c['forward']} forward + {c['backward']} backward passes = {c['ratio']:.3f} of exhaustive masking "
      f"({c['exhaustive']} forwards)")
g = np.random.default_rng(0)
top = [tuple(p) for p in ver.meta["verified"]]
rest = [(l, e) for l in lm.spec.moe_layers for e in range(lm.spec.n_experts) if (l, e) not in top]
others = rl.expert_effects(lm, small, experts=[rest[i] for i in g.choice(len(rest), 16, replace=False)], mode="zero")
exact = rl.ExpertScores(others.scores.clone(), others.layers, "effect_zero", others.metric, others.n_examples,
                        others.top_k, others.base, others.measured.clone())
for l, e in top:  # the verified experts' exact drops
    exact.scores[exact.layers.index(l), e] = ver.row(l)[e]
    exact.measured[exact.layers.index(l), e] = True
pairs = top + [(l, e) for l in exact.layers for e in range(lm.spec.n_experts)
               if others.measured[exact.layers.index(l), e]]
m = exact.measured.reshape(-1)
a, e = att.scores.reshape(-1)[m], exact.scores.reshape(-1)[m]
ids = [exact.layers.index(l) * lm.spec.n_experts + e_ for l, e_ in top]
print(f"{len(pairs)} experts measured: Spearman(estimate, exact) {spearman(a, e):.2f}; among the 16 verified "
      f"{spearman(att.scores.reshape(-1)[ids], ver.scores.reshape(-1)[ids]):.2f}")
estimate_vs_exact(att, exact, top=16).show()'''),
    ("md", "## 3. Routing contrast, risk difference, REAP, and Router Lens for comparison\nRouter Lens needs the "
           "router-tuning run; the contrast and the risk difference need two forward passes per question, REAP one "
           "(plus k times the experts' compute)."),
    ("code", '''\
t = time.time(); con = rl.routing_contrast(lm, train[:64]); t_con = time.time() - t
t = time.time(); att_sel = rl.attribute_experts(lm, train[:64]); t_att = time.time() - t
t = time.time(); rd = risk_difference(lm, train[:64], pairing="context"); t_rd = time.time() - t
t = time.time(); reap = rl.reap_scores(lm, train[:32]); t_reap = time.time() - t
t = time.time(); rt = rl.tune_router(lm, train, dev, **TRAIN)
with rt.applied(lm):
    rl_counts = rl.count_experts(lm, train[:64])
t_rt = time.time() - t
sets = {"attribution": rl.select_experts(att_sel, n=N), "contrast": rl.select_experts(con.last, n=N),
        "risk difference": rl.select_experts(rd, n=N), "REAP": rl.select_experts(reap, n=N),
        "Router Lens": rl.select_experts(rl_counts, n=N)}
print(f"seconds: attribution {t_att:.1f}, contrast {t_con:.1f}, risk difference {t_rd:.1f}, REAP {t_reap:.1f}, "
      f"router tuning + counting {t_rt:.1f}")
for a_ in ("attribution", "contrast", "risk difference", "REAP"):
    print(f"Jaccard per layer, {a_} vs Router Lens: "
          + " ".join(f"{v:.2f}" for v in sets[a_].jaccard_per_layer(sets["Router Lens"]).values()))
rl.plot.overlap_matrix(sets).show()
con.last.plot(sets["contrast"], title="Selection rate at the last prompt position, open − closed book").show()'''),
    ("md", "## 4. The causal test\nMask each set in the router-tuned model (reroute) and compare with random "
           "sets of experts that are in none of the sets."),
    ("code", '''\
base = rl.evaluate(lm, test)
with rt.applied(lm):
    tuned = rl.evaluate(lm, test)
    drops = {}
    for name, s in sets.items():
        with rl.mask_experts(lm, s):
            drops[name] = tuned["em"] - rl.evaluate(lm, test)["em"]
    union = rl.ExpertSet()
    for s in sets.values():
        union = union | s
    rnd = []
    for d in range(3):
        with rl.mask_experts(lm, rl.random_experts(N, lm.spec.moe_layers, lm.spec.n_experts, exclude=union, seed=d)):
            rnd.append(tuned["em"] - rl.evaluate(lm, test)["em"])
print(f"conflict EM: base {base['em']:.1f}, router-tuned {tuned['em']:.1f}")
print("EM drop when masked: " + ", ".join(f"{k} {v:+.1f}" for k, v in drops.items())
      + f", random (3 draws) {np.mean(rnd):+.1f}")'''),
    ("md", "## 5. Steering the base model\nAdd β to the chosen experts' router logits; the family's own routing "
           "does the rest. β = 0 is the unchanged model, β < 0 deactivates, `\"in\"` forces the set into every "
           "token's top-k (just above the k-th largest score). Then SteerMoE's own recipe: the experts with the most "
           "negative risk difference (more active without the context) forced out of every top-k."),
    ("code", '''\
sweeps = {name: steer(lm, s, [-4.0, 0.0, 1.0, 4.0, "in"], test[:32]) for name, s in sets.items()}
for name, rows in sweeps.items():
    b = best_beta(rows)
    print(f"{name:15s} conflict EM by β: " + "  ".join(f"{r['beta']}: {r['em']:.1f}" for r in rows)
          + f"  (best β {b['beta']}, memory {b['memory_rate'] or 0:.1f} %)")
for n_out in (16, 48):
    _, off = steermoe_sets(rd, n_deactivate=n_out)
    with rl.force_experts(lm, deactivate=off):
        r = rl.evaluate(lm, test[:32])
    print(f"SteerMoE: {n_out} experts forced out: conflict EM {r['em']:.1f}, memory {r['memory_rate'] or 0:.1f} %")
steering_curve(sweeps["Router Lens"], title="Steering the base model with the Router Lens CEs",
               reference=tuned["em"]).show()'''),
    ("md", "## 6. Route vectors: a dense router-logit offset, no training\nRouter tuning's change acts mostly at "
           "the last prompt token, and is there largely one vector per layer. `rl.route_vector` estimates such a "
           "vector from prompts alone: the mean router logits of open-book questions the model can only answer "
           "from the context (`toy-open`) minus those of conflicts it answers from memory, at the last prompt token "
           "and at the other prompt tokens. `rl.steer_route_vector` adds `scale · v` while the prompt is read; "
           "with `mode=\"replace\"` it instead routes the last prompt token as the average open-book prompt does "
           "(its logits pulled `scale` of the way to their mean there); `rest_scale` and `question_scale` also "
           "steer the other prompt tokens and the question's."),
    ("code", '''\
open_test = rl.load_dataset("toy-open", split="test", limit=32)
t = time.time(); vec = rl.route_vector(lm, rl.load_dataset("toy-open", split="train", limit=400), train[:400])
print(f"route vector from {vec.n_toward} + {vec.n_away} prompts in {time.time() - t:.1f} s; norms at the last token "
      + " ".join(f"{v:.1f}" for v in vec.norms()["last"]))
rv = []
for scale in (0.0, 2.0, 4.0, 8.0, 12.0):
    with rl.steer_route_vector(lm, vec, scale):
        c, o = rl.evaluate(lm, test[:32]), rl.evaluate(lm, open_test)
    rv.append({"scale": scale, "em": c["em"], "memory_rate": c["memory_rate"], "open_em": o["em"]})
    print(f"scale {scale:4}: conflict EM {c['em']:5.1f}, memory {c['memory_rate'] or 0:5.1f} %, open-book EM {o['em']:5.1f}")
steering_curve(rv, title="Steering the base model with a route vector", reference=tuned["em"], x="scale",
               x_title="scale of the route vector added to the router logits").show()
with rl.steer_route_vector(lm, vec, 1.0, mode="replace"):
    c, o = rl.evaluate(lm, test[:32]), rl.evaluate(lm, open_test)
print(f"replace (the last prompt token routed as the mean open-book prompt): conflict EM {c['em']:.1f}, "
      f"open-book EM {o['em']:.1f}")
# and the other prompt tokens too, as router tuning acts there: the rest vector × 8, the question's × 2 on top
with rl.steer_route_vector(lm, vec, 1.0, mode="replace", rest_scale=8.0, question_scale=2.0):
    c, o = rl.evaluate(lm, test[:32]), rl.evaluate(lm, open_test)
print(f"replace + rest × 8 + question × 2: conflict EM {c['em']:.1f}, open-book EM {o['em']:.1f}")'''),
    ("md", "## What this run found"),
    ("code", '''\
best = {k: best_beta(v) for k, v in sweeps.items()}
print(f"Attribution vs exact zero-masking on {len(pairs)} experts: Spearman {spearman(a, e):.2f}.")
print("EM drop when masked in the router-tuned model: " + ", ".join(f"{k} {v:+.1f}" for k, v in drops.items())
      + f" vs random {np.mean(rnd):+.1f}.")
print("Steering the base model, best conflict EM: " + ", ".join(f"{k} {v['em']:.1f} (β {v['beta']})"
      for k, v in best.items()) + f"; route vector {max(r['em'] for r in rv):.1f}; router tuning reaches "
      f"{tuned['em']:.1f} (base {base['em']:.1f}).")
print(f"Notebook ran in {time.time() - T0:.0f} s.")'''),
]


def notebooks() -> dict[str, str]:
    """File name → notebook JSON text, as written by :func:`build`."""
    out = {}
    for name, cells in NB.items():
        nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells],
                          metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                                    "language_info": {"name": "python"},
                                    # per-cell limit for nbmake/nbclient: seconds when idle, far more on a busy host
                                    "execution": {"timeout": 900}})
        for i, c in enumerate(nb.cells):  # stable ids keep diffs small
            c["id"] = f"{name[:2]}-{i:02d}"
        nbformat.validate(nb)
        out[f"{name}.ipynb"] = nbformat.writes(nb)
    return out


def build() -> list[Path]:
    paths = []
    for fname, text in notebooks().items():
        (HERE / fname).write_text(text)
        paths.append(HERE / fname)
    return paths


def stale() -> list[str]:
    """Notebooks on disk that differ from the cells here (edited by hand, or saved with outputs)."""
    return [f for f, text in notebooks().items() if not (HERE / f).exists() or (HERE / f).read_text() != text]


if __name__ == "__main__":
    import sys

    if "--check" in sys.argv:
        bad = stale()
        print("stale or holding outputs: " + ", ".join(bad) if bad else "notebooks up to date, no outputs")
        sys.exit(1 if bad else 0)
    for p in build():
        print(p)
