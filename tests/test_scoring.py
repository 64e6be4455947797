"""rl.evaluate picks the metric from the data set; rl.forgetting; `routerlens evaluate` on every kind of data."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

import routerlens_interp as rl  # noqa: E402
from routerlens_interp.cli.commands import main  # noqa: E402
from routerlens_interp.errors import UserError  # noqa: E402

FIX = Path(__file__).parent / "fixtures"
QA = [rl.QAExample("Alice Smith was born in 1950 in Paris.", "Where was Alice born?", ["Paris"]),
      rl.QAExample("Bob lives in Rome and paints.", "Where does Bob live?", ["Rome"]),
      rl.QAExample("Carol is a baker in Lima.", "Where does Carol work?", ["Lima"]),
      rl.QAExample("Dan was born in 1972 in Oslo.", "When was Dan born?", ["1972"])]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny.save("olmoe", tmp_path_factory.mktemp("olmoe_scoring"))


@pytest.fixture(scope="module")
def lm(model_dir):
    return rl.load(model_dir)


def test_gigaword_is_scored_with_bleu_meteor_rouge(lm, monkeypatch):
    import routerlens_interp.evaluation.generate as ev

    data = rl.load_dataset(FIX / "gigaword.jsonl")
    preds = ["nec in computer sales tie-up", "sri lanka shuts schools", "french ship targeted"]
    monkeypatch.setattr(ev, "generate", lambda *a, **k: list(preds))
    s = rl.evaluate(lm, data)
    refs = [ex.answers for ex in data]
    assert s["metric"] == "bleu/meteor/rouge_l" and s["predictions"] == preds and s["n"] == 3
    assert s["bleu"] == pytest.approx(rl.bleu(preds, refs)) and s["rouge_l"] == pytest.approx(rl.rouge_l(preds, refs))
    m, stages = rl.meteor(preds, refs)
    assert s["meteor"] == pytest.approx(m) and s["meteor_stages"] == stages
    assert "em" not in s
    with pytest.raises(UserError, match="judges answers to questions"):
        rl.evaluate(lm, data, judge=lambda p: "yes")


def test_counterfact_is_scored_as_qa_with_memory_rate(lm, monkeypatch):
    import routerlens_interp.evaluation.generate as ev

    data = rl.load_dataset(FIX / "counterfact.json")
    monkeypatch.setattr(ev, "generate", lambda *a, **k: ["English", "Christianity", "guitar"])
    s = rl.evaluate(lm, data)
    assert s["metric"] == "em/f1" and s["em"] == pytest.approx(100 / 3)
    assert s["memory_rate"] == pytest.approx(200 / 3)  # answered from memory on cases 1 and 2


def test_forgetting_compares_each_adapter_with_the_base(lm):
    mmlu = rl.load_dataset(FIX / "mmlu_test.jsonl") + rl.load_dataset(FIX / "memotrap.csv")
    cfg = dict(max_steps=2, lr=5e-2, batch_size=4, eval_points=1, progress=False, seed=0)
    ft = rl.full_finetune(lm, QA, QA[:2], **cfg)
    rt = rl.tune_router(lm, QA, QA[:2], **cfg)
    base = rl.choice_accuracy(lm, mmlu)
    with ft.applied(lm):
        after = rl.choice_accuracy(lm, mmlu)
    f = rl.forgetting(lm, {"fft": ft, "rt": rt}, mmlu)
    assert after["logprobs"] != base["logprobs"]  # the adapter is really in force while scoring
    assert f["base"] == pytest.approx(base["accuracy"]) and f["n"] == 6 and f["shots"] == 0
    assert f["adapters"]["fft"] == pytest.approx({"accuracy": after["accuracy"], "drop": base["accuracy"] - after["accuracy"]})
    assert set(f["adapters"]) == {"fft", "rt"}
    assert rl.choice_accuracy(lm, mmlu)["logprobs"] == base["logprobs"]  # base restored
    with pytest.raises(UserError, match="multiple-choice"):
        rl.forgetting(lm, [ft], QA)
    with pytest.raises(UserError, match="no .applied"):
        rl.forgetting(lm, {"x": object()}, mmlu)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_evaluate_picks_the_metric(model_dir, capsys, tmp_path):
    code, out, _ = run(capsys, "evaluate", "--model", model_dir, "--data", FIX / "memotrap.csv", "--json")
    assert code == 0 and set(json.loads(out)) == {"accuracy", "accuracy_norm", "n", "shots"}
    code, out, _ = run(capsys, "evaluate", "--model", model_dir, "--data", FIX / "mmlu_test.jsonl", "--shots", 5,
                       "--fewshot", FIX / "mmlu_dev.jsonl", "--json", "--predictions", tmp_path / "p.jsonl")
    obj = json.loads(out)
    assert code == 0 and obj["shots"] == 5 and obj["n"] == 3
    rows = [json.loads(l) for l in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and len(rows[0]["logprobs"]) == 4
    code, out, _ = run(capsys, "evaluate", "--model", model_dir, "--data", FIX / "gigaword.jsonl", "--json",
                       "--max-new-tokens", 4)
    assert code == 0 and {"bleu", "meteor", "meteor_stages", "rouge_l"} <= set(json.loads(out))
    code, out, _ = run(capsys, "evaluate", "--model", model_dir, "--data", FIX / "gigaword.jsonl", "--max-new-tokens", 2)
    assert code == 0 and out.startswith("BLEU ") and "METEOR" in out


def test_cli_judge_and_errors(model_dir, capsys, tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(ex.to_dict()) + "\n" for ex in QA))
    code, out, _ = run(capsys, "evaluate", "--model", model_dir, "--data", data, "--judge", "toy", "--json",
                       "--max-new-tokens", 3)
    obj = json.loads(out)
    assert code == 0 and obj["judge_mode"] == "likelihood" and 0 <= obj["acc_llm"] <= 100 and obj["n"] == 4
    assert sum(obj["table"].values()) == 4
    code, _, err = run(capsys, "evaluate", "--model", model_dir, "--data", data, "--shots", 5)
    assert code == 2 and "shots/fewshot apply to multiple choice" in err


def test_summaries_do_not_trigger_the_answer_in_context_warning(lm):
    import warnings

    from routerlens_interp.prompts import check_examples

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        check_examples(lm, rl.load_dataset(FIX / "gigaword.jsonl")[:1], with_answer=False)
    assert not [x for x in w if "without any of their gold answers" in str(x.message)]
    with pytest.warns(UserWarning, match="without any of their gold answers"):
        check_examples(lm, [rl.QAExample("Bob lives in Rome.", "Where?", ["Oslo"])], with_answer=False)
