"""`routerlens run` (the whole method on any model and data set), the paper's recipe and numbers."""
import json

import pytest

from routerlens_interp.model import TOY_DIR
from routerlens_interp.pipeline.paper import PAPER_NUMBERS, paper_key, paper_numbers, paper_recipe
from routerlens_interp.train import TrainConfig

needs_toy = pytest.mark.skipif(not (TOY_DIR / "config.json").exists(), reason="bundled toy weights not present")


@pytest.mark.parametrize("model, data, key", [
    ("allenai/OLMoE-1B-7B-0924-Instruct", "nq-swap", ("OLMoE-1B-7B", "nq-swap")),
    ("/models/OLMoE-1B-7B-0924", "RouterLens/data/nq-swap/", ("OLMoE-1B-7B", "nq-swap")),
    ("deepseek-ai/DeepSeek-V2-Lite-Chat", "squad", ("DeepSeek-V2-Lite", "squad")),
    ("openbmb/MiniCPM-MoE-8x2B", "confiqa", ("MiniCPM-MoE-8x2B", "confiqa")),
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", "confiqa-mc", ("Mixtral-8x7B", "confiqa")),
    ("toy", "toy-conflict", None), ("allenai/OLMoE-1B-7B-0924-Instruct", "hotpotqa", None),
    ("Qwen/Qwen3-30B-A3B", "squad", None), ("allenai/OLMoE-1B-7B-0924", "confiqa-qa", None),  # the paper used MC
])
def test_paper_key(model, data, key):
    assert paper_key(model, data) == key
    assert (paper_numbers(model, data) is None) == (key is None)


def test_paper_numbers_are_design_table():
    # DESIGN §1: 4 models × 3 data sets, base → RT EM/F1; OLMoE NQ-Swap masking and CEFT vs FFT
    assert len(PAPER_NUMBERS) == 12
    olmoe = paper_numbers("allenai/OLMoE-1B-7B-0924-Instruct", "nq-swap")["numbers"]
    assert olmoe == {"base": "28.1/40.5", "router_tuned": "76.4/77.8", "masked_other_em": "33.2",
                     "masked_ce_em": "18.5", "ceft_em": "90.5", "fft_em": "88.3"}


def test_paper_recipe():
    cfg = TrainConfig.paper()
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.warmup, cfg.max_tokens, cfg.seed) == (5e-4, 3, 8, 0.1, 300, 826)
    assert TrainConfig.paper(lr=1e-3).lr == 1e-3
    assert paper_recipe()["lr"] == 5e-4


@needs_toy
def test_tune_router_recipe_flag(tmp_path):
    from routerlens_interp.cli.commands import main

    for recipe, lr, bs in (("toy", 1e-2, 16), ("paper", 5e-4, 8)):
        out = tmp_path / recipe
        assert main(["tune-router", "--data", "toy-conflict", "--limit", "16", "--max-steps", "1", "--recipe", recipe,
                     "--out", str(out), "--threads", "1"]) == 0
        cfg = json.loads((out / "adapter.json").read_text())["config"]
        assert (cfg["lr"], cfg["batch_size"]) == (lr, bs)
    out = tmp_path / "override"
    assert main(["tune-router", "--data", "toy-conflict", "--limit", "16", "--max-steps", "1", "--recipe", "toy",
                 "--lr", "0.003", "--out", str(out), "--threads", "1"]) == 0
    assert json.loads((out / "adapter.json").read_text())["config"]["lr"] == 0.003


@needs_toy
def test_run_on_the_bundled_model(tmp_path, capsys):
    from routerlens_interp.cli.commands import main

    out = tmp_path / "run"
    assert main(["run", "--max-steps", "2", "--train-limit", "16", "--n-dev", "8", "--n-test", "8", "--n-count", "8",
                 "--n-analysis", "4", "--draws", "2", "--no-png", "--out", str(out), "--threads", "1", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # --json: stdout holds only the report; the table went to stderr
    assert "router-tuned" in captured.err
    assert report == json.loads((out / "report.json").read_text())
    assert report["recipe"] == "toy" and report["data"] == "toy-conflict" and report["paper"] is None
    assert report["side_columns"] == ["open_em", "recall"] and report["n_test"] == 8 and report["n_counted"] == 8
    assert len(report["experts"]) == len(report["cag"]) and report["masked_random"]["draws"] == 2
    assert (out / "router_tuned" / "adapter.json").exists() and (out / "experts.json").exists()
    assert (out / "masking.html").exists() and (out / "analysis" / "apg.csv").exists()


@needs_toy
def test_run_measures_forgetting(tmp_path, capsys):
    """--forgetting-data: MMLU accuracy of the base model and of each trained model, equal to rl.forgetting on the
    saved adapters (an independent run of the same scoring)."""
    from pathlib import Path

    import routerlens_interp as rl
    from routerlens_interp.cli.commands import main

    mmlu = Path(__file__).parent / "fixtures" / "mmlu_test.jsonl"
    out = tmp_path / "run"
    assert main(["run", "--max-steps", "2", "--train-limit", "16", "--n-dev", "8", "--n-test", "4", "--n-count", "4",
                 "--n-analysis", "2", "--draws", "2", "--no-png", "--out", str(out), "--threads", "1",
                 "--forgetting-data", str(mmlu)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    fg = report["forgetting"]
    assert fg["n"] == 3 and fg["shots"] == 0 and set(fg["adapters"]) == {"router_tuned", "ceft", "fft"}
    assert "multiple-choice accuracy (3 examples, 0-shot" in printed
    lm = rl.load("toy")
    again = rl.forgetting(lm, {"router_tuned": rl.load_adapter(out / "router_tuned"),
                               "ceft": rl.load_adapter(out / "ceft"), "fft": rl.load_adapter(out / "fft")},
                          data=rl.load_dataset(mmlu))
    assert again["base"] == pytest.approx(fg["base"])
    for name, a in again["adapters"].items():
        assert a["accuracy"] == pytest.approx(fg["adapters"][name]["accuracy"]), name


def test_run_forgetting_data_must_be_multiple_choice(tmp_path, capsys):
    from routerlens_interp.cli.commands import main

    assert main(["run", "--data", "toy-conflict", "--forgetting-data", "toy-open", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "multiple-choice" in err[0] and "--forgetting-data toy-open" in err[0]


def test_run_needs_data_for_other_models(tmp_path, capsys):
    from routerlens_interp.cli.commands import main

    assert main(["run", "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data is needed" in err[0]
