"""The CLI's data handling: every data argument read (and dev checked against test) before a model loads;
directories of split files; a single file whole without --split, its disjoint parts with one."""
import json
import sys
from pathlib import Path

import datasets
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402
from test_data_splits import PAPER, FakeHub  # noqa: E402

import routerlens_interp.cli.commands as cli  # noqa: E402
from routerlens_interp.data import load_dataset  # noqa: E402
from routerlens_interp.errors import UserError  # noqa: E402


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model is the sign that the data checks are over: record when, then stop the command."""
    hub = FakeHub()
    monkeypatch.setattr(datasets, "load_dataset", hub)
    calls = []

    def load_model(*a, **k):
        calls.append(len(hub.calls))
        raise UserError("model loading reached")
    monkeypatch.setattr("routerlens_interp.cli.common.load_model", load_model)
    return calls, hub


@pytest.mark.parametrize("cmd", ["tune-router", "ceft", "finetune"])
def test_a_bad_dev_split_fails_before_the_model_loads(tmp_path, capsys, no_model, cmd):
    calls, _ = no_model
    extra = ["--experts", tmp_path / "e.json"] if cmd == "ceft" else []
    code, out, err = run(capsys, cmd, "--data", "nq-swap", "--dev-split", "holdout", "--out", tmp_path / "o", *extra)
    assert code == 2 and "unknown split 'holdout'" in err and calls == []  # the old CLI loaded the model first
    assert len(err.strip().splitlines()) == 1


def test_a_missing_experts_file_fails_before_the_model_loads(tmp_path, capsys, no_model):
    calls, _ = no_model
    code, out, err = run(capsys, "ceft", "--data", "nq-swap", "--experts", tmp_path / "none.json", "--out",
                         tmp_path / "o")
    assert code == 2 and calls == [] and "none.json" in err


def test_confiqa_train_dev_and_test_are_read_before_the_model(tmp_path, capsys, no_model):
    calls, hub = no_model
    code, out, err = run(capsys, "tune-router", "--data", "confiqa", "--out", tmp_path / "o")
    assert code == 2 and "model loading reached" in err
    assert calls == [3] and [c[1]["data_files"].endswith("ConFiQA-MC.json") for c in hub.calls] == [True] * 3


def test_dev_sharing_a_test_example_is_refused_before_the_model(tmp_path, capsys, no_model):
    calls, _ = no_model
    code, out, err = run(capsys, "tune-router", "--data", PAPER, "--out", tmp_path / "o")
    assert code == 2 and calls == [] and len(err.strip().splitlines()) == 1
    assert "1 of 4 dev examples" in err and "--drop-dev-overlap" in err
    code, out, err = run(capsys, "tune-router", "--data", "nq-swap", "--dev-split", "test", "--out", tmp_path / "o")
    assert code == 2 and calls == [] and "test split of nq-swap" in err
    code, out, err = run(capsys, "tune-router", "--data", PAPER, "--drop-dev-overlap", "--out", tmp_path / "o")
    assert "model loading reached" in err and "note: dropped 1 of 4 dev examples" in err


def test_help_names_the_split_rules():
    for cmd in ("tune-router", "evaluate"):
        text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices[cmd].format_help().split())
        assert "ConFiQA-MC" in text and "80/10/10" in text and "5 % of the hub's train" in text
    text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["ceft"].format_help().split())
    assert "--drop-dev-overlap" in text and "alias validation" in text


# --- on a tiny saved model -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny.save("olmoe", tmp_path_factory.mktemp("m") / "model")


def test_evaluate_a_directory_split_and_a_file_whole_or_cut(model, tmp_path, capsys):
    code, out, err = run(capsys, "evaluate", "--model", model, "--data", PAPER, "--split", "test", "--json",
                         "--max-new-tokens", 1)
    assert code == 0, err
    res = json.loads(out)
    assert res["n"] == 4 and res["memory_rate"] is None  # no memory_answer in the paper's files: absent, not 0
    code, out, err = run(capsys, "evaluate", "--model", model, "--data", PAPER, "--split", "test",
                         "--max-new-tokens", 1)
    assert code == 0 and "memory-rate n/a" in out
    recs = [{"context": f"Person {i} lives in town {i}.", "question": f"Where does person {i} live?",
             "answer": f"town {i}"} for i in range(20)]
    f = tmp_path / "f.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    n = {}
    for split in (None, "test", "dev", "train"):
        code, out, err = run(capsys, "evaluate", "--model", model, "--data", f, "--json", "--max-new-tokens", 1,
                             *(["--split", split] if split else []))
        assert code == 0, err
        n[split] = json.loads(out)["n"]
    assert n == {None: 20, "test": 2, "dev": 2, "train": 16}  # the old CLI: 20 for every split


def test_training_on_one_file_holds_out_its_dev_and_test_parts(model, tmp_path, capsys, monkeypatch):
    recs = [{"context": f"Person {i} lives in town {i}.", "question": f"Where does person {i} live?",
             "answer": f"town {i}"} for i in range(20)]
    f = tmp_path / "f.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    seen = {}

    def fake_tune(lm, train, dev, **kw):
        seen["train"], seen["dev"] = [e.question for e in train], [e.question for e in dev]
        raise UserError("stop after the data")
    import routerlens_interp as rl
    monkeypatch.setattr(rl, "tune_router", fake_tune)
    code, out, err = run(capsys, "tune-router", "--model", model, "--data", f, "--out", tmp_path / "o")
    assert code == 2 and "stop after the data" in err
    assert seen["train"] == [e.question for e in load_dataset(f, split="train")]
    assert seen["dev"] == [e.question for e in load_dataset(f, split="dev")]  # the old CLI: the file's last 10 %
    assert "note:" in err and f"--data {f} --split test" in err


def test_a_template_that_trims_accepts_questions_ending_in_white_space(model, tmp_path, capsys):
    """Llama-3 style ``| trim``: 141 of RouterLens' 4,330 SQuAD dev questions end in white space; the old
    loader kept it, the trimmed render no longer held the prompt, and the whole data set was refused."""
    import shutil

    from transformers import AutoTokenizer

    d = tmp_path / "trim"
    shutil.copytree(model, d)
    tok = AutoTokenizer.from_pretrained(d)
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] | trim }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    tok.save_pretrained(d)
    recs = [{"context": "Paris is the capital of France.", "question": "What is the capital of France? ",
             "answer": "Paris"},
            {"context": " Rome is the capital of Italy. ", "question": "\tWhat is the capital of Italy?\n",
             "answer": "Rome"}]
    f = tmp_path / "ws.json"
    f.write_text(json.dumps(recs))
    code, out, err = run(capsys, "evaluate", "--model", d, "--data", f, "--json", "--max-new-tokens", 1)
    assert code == 0, err
    assert json.loads(out)["n"] == 2
