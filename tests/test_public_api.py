"""The public API survives the package layout: every ``rl.*`` name, the ``routerlens`` commands, the entry points."""
import importlib
import subprocess
import sys

import pytest

import routerlens_interp as rl

# The contract (DESIGN §4 and the docs' API pages): names may be added, never lost.
PUBLIC = """load MoEModel from_hf QAExample MoESpec NotMoEError inspect_model Trace trace mask_experts knock_out_attention
ExpertCounts count_experts load_dataset em_f1 ExpertSet select_experts random_experts grown_experts evaluate
forgetting ChoiceExample choice_accuracy judge_accuracy harness HarnessLM bleu rouge_l meteor text_scores
attention_gain answer_probability_gain token_attention_diff attention_knockout tune_router ceft full_finetune
RouterAdapter ExpertAdapter load_adapter plot widgets attribute_experts expert_effects routing_contrast
boost_experts ExpertScores force_experts risk_difference steermoe_sets reap_scores run_pipeline RunData Sizes paper_numbers
route_vector steer_route_vector RouteVector""".split()
COMMANDS = ["demo", "evaluate", "count", "select", "tune-router", "ceft", "finetune", "analyze", "knockout",
            "attribute", "contrast", "risk", "reap", "steer", "route-vector", "run", "inspect"]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_imports(name):
    assert name in rl.__all__
    obj = getattr(rl, name)
    assert obj is not None
    if name not in ("plot", "widgets"):  # modules; the rest are functions and classes of their module
        assert callable(obj), name


def test_no_public_name_lost():
    assert set(PUBLIC) <= set(rl.__all__), sorted(set(PUBLIC) - set(rl.__all__))


def test_every_command_is_registered():
    from routerlens_interp.cli.commands import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(COMMANDS) <= set(sub.choices), sorted(set(COMMANDS) - set(sub.choices))


def test_entry_points():
    """``routerlens = routerlens_interp.cli:main`` and ``python -m routerlens_interp.cli`` both run the command."""
    from routerlens_interp.cli import main

    assert callable(main)
    out = subprocess.run([sys.executable, "-m", "routerlens_interp.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "tune-router" in out.stdout
    assert importlib.import_module("routerlens_interp.pipeline.figures").main


def test_package_root_is_small():
    """The root holds the model handle, the data unit, the errors and the safe file format; the rest is in packages
    named for their job (load → prompts → trace → analysis → plot; interventions, train, cli beside them)."""
    from pathlib import Path

    root = Path(rl.__file__).parent
    modules = sorted(p.name for p in root.glob("*.py"))
    assert modules == ["__init__.py", "errors.py", "examples.py", "model.py", "safe_state.py"], modules
    for pkg in ("arch", "hooks", "data", "prompts", "trace", "interventions", "analysis", "evaluation", "ces", "train",
                "plot", "board", "pipeline", "cli", "toy"):
        assert (root / pkg / "__init__.py").exists(), pkg


def _package_imports():
    """``{package: {packages it imports}}`` over every relative import in the package (function-level ones too)."""
    import ast
    from pathlib import Path

    root = Path(rl.__file__).parent
    graph = {}
    for p in root.rglob("*.py"):
        parts = list(p.relative_to(root).with_suffix("").parts)
        is_init = parts[-1] == "__init__"
        mod = parts[:-1] if is_init else parts
        pkg = mod if is_init else mod[:-1]
        top = mod[0] if mod and (root / mod[0]).is_dir() else "<root>"
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg[:len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                target = base + (node.module.split(".") if node.module else [])
                t = target[0] if target and (root / target[0]).is_dir() else "<root>"
                if t != top:
                    graph.setdefault(top, set()).add(t)
    return graph


def test_no_import_cycle_between_packages():
    graph = _package_imports()
    seen, stack, cycles = set(), [], []

    def visit(n):
        if n in stack:
            cycles.append(stack[stack.index(n):] + [n])
            return
        if n in seen:
            return
        seen.add(n)
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            visit(m)
        stack.pop()

    for n in sorted(graph):
        visit(n)
    # the root modules (model, examples, errors, safe_state) are imported by everyone and import only arch/prompts
    cycles = [c for c in cycles if "<root>" not in c]
    assert not cycles, cycles
