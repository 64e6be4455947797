"""``routerlens run``: the whole method on any model and data set (``routerlens demo`` is it on the bundled model)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .checks import add_overwrite, add_png_flags, claim_out, positive_int

TOY_MODELS = ("toy", "toy-v1")


def _is_toy(model: str) -> bool:
    """The bundled model, or a directory written by ``toy.pretrain`` (its config marks the synthetic world)."""
    if model in TOY_MODELS:
        return True
    cfg = Path(model).expanduser() / "config.json"
    try:
        return cfg.is_file() and "routerlens_toy" in cfg.read_text()
    except OSError:
        return False


def run_data(args):
    """train / dev / test of ``--data`` (dev checked to share no example with test; for the bundled world's conflict
    data also its open-book and closed-book side sets), loaded before the model so a wrong name fails in a second."""
    import sys

    import routerlens_interp as rl
    from ..data import train_dev_data
    from ..pipeline.run import RunData

    name = str(args.data)
    d = train_dev_data(name, split="train", dev_split="dev", drop_dev_overlap=args.drop_dev_overlap)
    for note in d.notes:
        print(f"routerlens run: note: {note}", file=sys.stderr)
    dev = d.dev if args.n_dev is None else d.dev[:args.n_dev]
    data = RunData(train=d.train, dev=dev, test=rl.load_dataset(name, split="test"), name=name)
    key = name.lower()
    if key.startswith(("toy-conflict", "toy2-conflict")):
        pre = key.split("-")[0]
        data.side = {"open_em": rl.load_dataset(f"{pre}-open", split="test"),
                     "recall": rl.load_dataset(f"{pre}-memory", split="test")}
    if args.forgetting_data:
        data.forgetting = forgetting_data(args.forgetting_data, args.forgetting_limit)
        data.forgetting_shots = args.forgetting_shots
    if not data.test:
        from ..errors import UserError

        raise UserError(f"--data {name}: its test split is empty; the method scores every step on it (give a data "
                        "set with a test part)")
    return data


def forgetting_data(name: str, limit: int | None) -> list:
    """The multiple-choice examples of ``--forgetting-data`` (MMLU's test split, or a local MMLU-format file)."""
    import routerlens_interp as rl
    from ..errors import UserError
    from ..evaluation.scoring import task_of

    rows = rl.load_dataset(name, split="test", limit=limit)
    if not rows or task_of(rows) != "choice":
        raise UserError(f"--forgetting-data {name}: forgetting is measured on multiple-choice data (MMLU: "
                        f"--forgetting-data mmlu, or a local MMLU-format .jsonl); this gave "
                        f"{type(rows[0]).__name__ + 's' if rows else 'no examples'}")
    return rows


def cmd_run(args) -> None:
    from .common import seed_everything
    from .checks import png_mode
    from .checks import load_model, load_options
    from ..pipeline.demo import toy_recipes
    from ..pipeline.paper import PAPER_N_CES, paper_recipe
    from ..pipeline.run import Sizes, run_pipeline
    from ..prompts import check_examples

    png = png_mode(args)
    claim_out(args, args.out, is_dir=True)
    toy = _is_toy(args.model)
    if args.data is None:
        if not toy:
            from ..errors import UserError

            raise UserError("--data is needed for a model other than the bundled one; give a data set name (e.g. "
                            "nq-swap, squad, confiqa) or a directory holding train.json / dev.json / test.json")
        args.data = "toy-conflict"
    recipe = args.recipe or ("toy" if toy else "paper")
    recipes = toy_recipes() if recipe == "toy" else {m: paper_recipe() for m in ("router", "ceft", "fft")}
    for r in recipes.values():
        r.update({k: v for k, v in (("lr", args.lr), ("epochs", args.epochs), ("batch_size", args.batch_size))
                  if v is not None})
    data = run_data(args)
    seed_everything(args.seed)
    lm = load_model(args.model, **load_options(args))
    for part in (data.train, data.dev, data.test):
        check_examples(lm, part, with_answer=True)
    sizes = Sizes(n_test=args.n_test, n_side=args.n_test, n_count=args.n_count, n_analysis=args.n_analysis,
                  draws=args.draws, train_limit=args.train_limit, max_steps=args.max_steps)
    log = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if args.json else print
    n_ces = args.n_ces or (PAPER_N_CES if recipe == "paper" and lm.spec.n_experts >= 2 * PAPER_N_CES else None)
    report = run_pipeline(lm, data, Path(args.out), recipes, seed=args.seed, sizes=sizes, n_ces=n_ces, png=png,
                          log=log, model_name=str(args.model), extra={"recipe": recipe})
    if args.json:
        print(json.dumps(report, default=float))


def add_parser(sub, common) -> None:
    """Register ``routerlens run`` (``common``: the shared --model/--device/--seed/--json/--threads options)."""
    r = sub.add_parser("run", help="the whole method on any model and data set: base → router tuning → CEs → CEs vs "
                                   "random masked → CEFT vs FFT → CAG/AAG/APG and knockout, with report and figures")
    common(r, data=False)
    r.add_argument("--data", default=None, help="a data set name (squad, nq-swap, confiqa, nq, hotpotqa, toy-conflict "
                                                "...) or a directory with train.json / dev.json / test.json; its "
                                                "train, dev and test splits are used (default with the bundled model: "
                                                "toy-conflict)")
    r.add_argument("--recipe", choices=("paper", "toy"), default=None,
                   help="paper: lr 5e-4, 3 epochs, cosine 10%% warm-up, batch 8, examples over 300 tokens dropped, "
                        "best by dev loss, 8 CEs per layer (default for any model but the bundled one); toy: the "
                        "bundled model's recipe (its default)")
    r.add_argument("--drop-dev-overlap", action="store_true",
                   help="drop dev examples that equal a test example (reported) instead of refusing")
    r.add_argument("--n-ces", type=positive_int, default=None, help="CEs per layer (default: 8 with --recipe paper, "
                                                                    "else max(top-k, experts/8))")
    r.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate (all three trainings)")
    r.add_argument("--epochs", type=positive_int, default=None, help="override the recipe's epochs")
    r.add_argument("--batch-size", type=positive_int, default=None, help="override the recipe's batch size")
    r.add_argument("--max-steps", type=positive_int, default=None, help="stop each training after N steps (smoke runs)")
    r.add_argument("--train-limit", type=positive_int, default=None, help="use the first N training examples")
    r.add_argument("--n-dev", type=positive_int, default=None, help="use the first N dev examples (default: all)")
    r.add_argument("--n-test", type=positive_int, default=None, help="score the first N test examples (default: all)")
    r.add_argument("--n-count", type=positive_int, default=2000,
                   help="training examples counted for CE selection (default 2000, as the paper)")
    r.add_argument("--n-analysis", type=positive_int, default=120, help="examples traced for CAG/AAG/APG and knockout")
    r.add_argument("--draws", type=positive_int, default=10, help="random-mask draws (default 10)")
    r.add_argument("--forgetting-data", default=None,
                   help="also score multiple-choice accuracy before and after each training (mmlu, or a local "
                        "MMLU-format file): how much router tuning, CEFT and FFT forget")
    r.add_argument("--forgetting-limit", type=positive_int, default=1000, help="examples of --forgetting-data (default 1000)")
    r.add_argument("--forgetting-shots", type=int, choices=(0, 5), default=0, help="MMLU shots (0 or 5; default 0)")
    add_png_flags(r)
    r.add_argument("--out", required=True, help="output directory (report.json, adapters, experts.json, figures); new "
                                                "or empty unless --overwrite")
    add_overwrite(r)
    r.set_defaults(func=cmd_run)
