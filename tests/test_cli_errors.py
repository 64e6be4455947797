"""User errors through `routerlens`: one line `routerlens <cmd>: error: ...` on stderr, exit 2, no traceback;
--debug shows the traceback; numbers refused at the command line; records checked before a run."""
import errno
import json
import shutil

import numpy as np
import pytest
import torch

import routerlens_interp as rl
from routerlens_interp.cli import commands as cli
from routerlens_interp.cli.commands import main
from routerlens_interp.errors import UserError
from routerlens_interp.model import TOY_DIR

GOOD = [{"context": "Alice Smith was born in Paris.", "question": "Where was Alice Smith born?", "answer": "Paris"},
        {"context": "Bob Jones lives in Rome.", "question": "Where does Bob Jones live?", "answer": "Rome"},
        {"context": "Carol is a baker in Lima.", "question": "Where does Carol work?", "answer": "Lima"}]


@pytest.fixture(autouse=True)
def _quiet_loading():
    """transformers' weight-loading bar writes to stderr; the one line checked here is the error."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def one_line_error(capsys, argv, *needles):
    """Run the CLI in-process; assert exit 2 and exactly one stderr line naming the command and ``needles``."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    # (warnings before the error are lines of their own: `routerlens <cmd>: warning: ...`)
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith(f"routerlens {argv[0]}: warning: ")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"routerlens {argv[0]}: error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def experts_json(tmp_path_factory):
    p = tmp_path_factory.mktemp("cli_err") / "experts.json"
    p.write_text(json.dumps({"experts": {"0": [1, 2]}}))
    return p


# --- numbers at the boundary (argparse: usage + one error line, exit 2) -------------------------------
@pytest.mark.parametrize("argv, flag", [
    (["count", "--data", "toy-open", "--out", "c.st", "--batch-size", "0"], "--batch-size"),
    (["count", "--data", "toy-open", "--out", "c.st", "--batch-size", "-2"], "--batch-size"),
    (["evaluate", "--data", "toy-open", "--threads", "-1"], "--threads"),
    (["evaluate", "--data", "toy-open", "--limit", "0"], "--limit"),
    (["evaluate", "--data", "toy-open", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["select", "--counts", "c.st", "--out", "e.json", "--n", "0"], "--n"),
    (["select", "--counts", "c.st", "--out", "e.json", "--top-p", "1.5"], "--top-p"),
    (["select", "--counts", "c.st", "--out", "e.json", "--top-p", "0"], "--top-p"),
    (["tune-router", "--data", "toy-open", "--out", "o", "--max-steps", "0"], "--max-steps"),
    (["tune-router", "--data", "toy-open", "--out", "o", "--lr", "0"], "--lr"),
    (["tune-router", "--data", "toy-open", "--out", "o", "--lr", "nan"], "--lr"),
    (["finetune", "--data", "toy-open", "--out", "o", "--epochs", "0"], "--epochs"),
    (["evaluate", "--data", "toy-open", "--seed", "-1"], "--seed"),
])
def test_numbers_refused_at_the_command_line(argv, flag, capsys, monkeypatch):
    monkeypatch.setattr("routerlens_interp.cli.common.load_model", lambda *a, **k: pytest.fail("the command ran"))
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {flag}" in err and "Traceback" not in err


# --- one line, exit 2, no traceback --------------------------------------------------------------------
def test_unknown_hub_model(capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    one_line_error(capsys, ["evaluate", "--model", "nobody-here/no-such-model", "--data", "toy-open"],
                   "'nobody-here/no-such-model'", "not a local directory and not a model on the hub (or no network")


def test_offline_hub_data(capsys, monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'rajpurkar/squad' on the Hub (OfflineModeIsEnabled)")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    one_line_error(capsys, ["evaluate", "--data", "squad", "--limit", "1"], "could not load 'squad' from the hub",
                   "local file path")


def test_damaged_model_weights(tmp_path, capsys):
    d = tmp_path / "model"
    shutil.copytree(TOY_DIR, d)
    w = d / "model.safetensors"
    w.write_bytes(b"\xff" * 8 + w.read_bytes()[8:])  # header length overwritten
    one_line_error(capsys, ["evaluate", "--model", d, "--data", "toy-open"], str(d), "damaged")


def test_model_directory_without_tokenizer(tmp_path, capsys):
    d = tmp_path / "model"
    d.mkdir()
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(TOY_DIR / f, d / f)
    one_line_error(capsys, ["evaluate", "--model", d, "--data", "toy-open", "--limit", "2"], str(d), "tokenizer")


def test_damaged_counts_file(tmp_path, capsys):
    bad = tmp_path / "counts.st"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    one_line_error(capsys, ["select", "--counts", bad, "--out", tmp_path / "e.json"], str(bad))


def test_out_is_a_directory_or_a_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("routerlens_interp.cli.common.load_model", lambda *a, **k: pytest.fail("refused only after loading the model"))
    one_line_error(capsys, ["count", "--data", "toy-open", "--out", tmp_path], str(tmp_path), "is a directory")
    f = tmp_path / "a_file"
    f.write_text("x")
    one_line_error(capsys, ["tune-router", "--data", "toy-open", "--out", f], str(f), "is a file")
    one_line_error(capsys, ["count", "--data", "toy-open", "--out", f / "c.st"], "parent", "is a file")


def test_missing_output_directories_are_made_before_the_work(tmp_path, capsys):
    counts = rl.ExpertCounts(torch.ones(1, 4, dtype=torch.long), [0], torch.ones(1, 4, dtype=torch.float64),
                             torch.ones(1, 4, dtype=torch.float64), 2, 2)
    counts.save(tmp_path / "c.st")
    out = tmp_path / "new" / "dir" / "experts.json"
    assert main(["select", "--counts", str(tmp_path / "c.st"), "--n", "1", "--out", str(out)]) == 0
    assert rl.ExpertSet.load(out) == {0: [0]}


def test_full_disk(tmp_path, capsys, monkeypatch):
    counts = rl.ExpertCounts(torch.ones(1, 4, dtype=torch.long), [0], torch.ones(1, 4, dtype=torch.float64),
                             torch.ones(1, 4, dtype=torch.float64), 2, 2)
    counts.save(tmp_path / "c.st")
    out = tmp_path / "e.json"

    def full(self, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(rl.ExpertSet, "save", full)
    one_line_error(capsys, ["select", "--counts", tmp_path / "c.st", "--n", "1", "--out", out],
                   "no space left", str(out))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(capsys):
    one_line_error(capsys, ["evaluate", "--device", "cuda", "--data", "toy-open"], "--device cuda",
                   "CUDA is not available", "--device cpu")


def test_analyze_layer_out_of_range(tmp_path, capsys, experts_json):
    one_line_error(capsys, ["analyze", "--data", jsonl(tmp_path / "d.jsonl", GOOD), "--mask", experts_json,
                            "--layer", "99", "--out", tmp_path / "ana", "--no-png"], "layer 99", "layers 0-5")


def test_encoding_and_json_errors_name_the_file(tmp_path, capsys):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(GOOD[0]).encode().replace(b"Paris", b"P\xe2ris") + b"\n")
    one_line_error(capsys, ["evaluate", "--data", latin], str(latin), "not UTF-8", "line 1")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"context": "a", "question": "b", "answer": "a"},]')
    one_line_error(capsys, ["evaluate", "--data", broken], str(broken), "not valid JSON")
    bad_mask = tmp_path / "experts.json"
    bad_mask.write_text("{'0': [1]}")
    one_line_error(capsys, ["evaluate", "--data", "toy-open", "--mask", bad_mask], str(bad_mask))


def test_debug_shows_the_traceback_before_or_after_the_command(tmp_path, capsys):
    missing = tmp_path / "nope.st"
    one_line_error(capsys, ["select", "--counts", missing, "--out", tmp_path / "e.json"], str(missing))
    for argv in (["--debug", "select", "--counts", missing, "--out", tmp_path / "e.json"],
                 ["select", "--counts", missing, "--out", tmp_path / "e.json", "--debug"]):
        with pytest.raises(FileNotFoundError):
            main([str(a) for a in argv])


def test_a_bug_is_not_dressed_as_a_user_error(tmp_path, monkeypatch):
    counts = rl.ExpertCounts(torch.ones(1, 4, dtype=torch.long), [0], torch.ones(1, 4, dtype=torch.float64),
                             torch.ones(1, 4, dtype=torch.float64), 2, 2)
    counts.save(tmp_path / "c.st")

    def bug(*a, **k):
        raise RuntimeError("internal invariant broken")
    monkeypatch.setattr(rl, "select_experts", bug)
    with pytest.raises(RuntimeError, match="internal invariant"):
        main(["select", "--counts", str(tmp_path / "c.st"), "--out", str(tmp_path / "e.json")])


# --- records are checked before the run, and named -------------------------------------------------
@pytest.mark.parametrize("cmd, bad, needle", [
    ("evaluate", {"context": "Dan is 40.", "question": "How old is Dan?", "answer": 40}, "not a string"),
    ("evaluate", {"context": "Dan is 40.", "question": "How old is Dan?"}, "answer or answers"),
    ("evaluate", {"context": "Dan is 40.", "question": "How old is Dan?", "answer": ["40", ["forty"]]}, "not a string"),
    ("evaluate", {"context": "Dan is 40.", "question": "   ", "answer": "40"}, "question is empty"),
    ("evaluate", {"context": "Dan is 40. " * 10, "question": "How old is Dan? " * 400, "answer": "40"},
     "shorten the question"),
    # counting and training append the answer: there, it must fit too
    ("count", {"context": "Dan is 40.", "question": "How old is Dan?", "answer": "forty " * 400}, "shorten the answer"),
])
def test_bad_last_record_refused_before_the_run(tmp_path, capsys, monkeypatch, cmd, bad, needle):
    data = jsonl(tmp_path / "d.jsonl", GOOD + [bad])
    for fn in ("evaluate", "count_experts"):
        monkeypatch.setattr(rl, fn, lambda *a, **k: pytest.fail("the run started"))
    argv = [cmd, "--data", data] + (["--out", tmp_path / "c.st"] if cmd == "count" else [])
    one_line_error(capsys, argv, "d.jsonl", "record 3", needle)


def test_count_batch_size_zero_in_python():
    with pytest.raises(UserError, match="batch_size"):
        rl.count_experts(object(), ["a"], batch_size=0)


def test_long_answer_says_shorten_the_answer_and_long_question_the_question():
    tok = rl.load("toy").tokenizer
    from routerlens_interp.prompts import encode

    long_answer = rl.QAExample("Dan is 40.", "How old is Dan?", ["forty " * 60])
    with pytest.raises(UserError, match="shorten the answer"):
        encode(tok, long_answer, with_answer=True, max_length=64)
    long_question = rl.QAExample("Dan is 40.", "How old is Dan? " * 30, ["40"])
    with pytest.raises(UserError, match="shorten the question"):
        encode(tok, long_question, with_answer=True, max_length=64)


# --- analyze: examples whose answer is not in their context ----------------------------------------
def test_analyze_counts_skipped_examples_and_refuses_when_none_left(tmp_path, capsys, experts_json):
    absent = {"context": "Dan is a painter.", "question": "Where does Dan live?", "answer": "Oslo"}
    data = jsonl(tmp_path / "mixed.jsonl", [GOOD[0], absent])
    code = main(["analyze", "--data", data, "--mask", str(experts_json), "--out", str(tmp_path / "a"), "--no-png",
                 "--json"])
    out = capsys.readouterr().out
    assert code == 0
    res = json.loads(out)
    assert (res["n"], res["n_aag"], res["n_skipped_aag"]) == (2, 1, 1)
    code = main(["analyze", "--data", data, "--mask", str(experts_json), "--out", str(tmp_path / "a"), "--no-png",
                 "--overwrite"])  # (the same --out again: without --overwrite it is refused, see test_outputs.py)
    assert code == 0 and "AAG over 1 of 2 examples (1 skipped" in capsys.readouterr().out
    only_absent = jsonl(tmp_path / "absent.jsonl", [absent, {**absent, "answer": "Bergen"}])
    one_line_error(capsys, ["analyze", "--data", only_absent, "--mask", experts_json, "--out", tmp_path / "b",
                            "--no-png"], "none of the 2 examples has its gold answer inside its context")


def test_contexts_without_their_answer_are_counted_and_the_first_named(tmp_path):
    from routerlens_interp.prompts import check_examples

    absent = {"context": "Dan is a painter.", "question": "Where does Dan live?", "answer": "Oslo"}
    closed = {"context": "", "question": "Where does Dan live?", "answer": "Oslo"}  # closed-book: nothing to find
    data = rl.load_dataset(jsonl(tmp_path / "d.jsonl", [GOOD[0], closed, absent, GOOD[1], absent]))
    with pytest.warns(UserWarning, match=r"2 of 5 examples have a context without .* \(first: d.jsonl, record 2\)"):
        check_examples(rl.load("toy"), data)


def test_attention_gain_says_why_aag_is_nan():
    absent = rl.QAExample("Dan is a painter.", "Where does Dan live?", ["Oslo"])
    with pytest.warns(UserWarning, match="none of the 1 examples has its gold answer inside its context"):
        import warnings

        warnings.simplefilter("error", RuntimeWarning)  # not NumPy's "mean of empty slice"
        g = rl.attention_gain(rl.load("toy"), {0: [1, 2]}, [absent])
    assert np.isnan(g.aag).all() and np.isfinite(g.cag).all() and g.n_skipped_aag == 1


def test_bad_data_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("routerlens_interp.cli.common.load_model", lambda *a, **k: pytest.fail("the model was loaded first"))
    one_line_error(capsys, ["evaluate", "--data", "no-such-data-set"], "unknown data set 'no-such-data-set'")
    one_line_error(capsys, ["count", "--data", tmp_path / "missing.jsonl", "--out", tmp_path / "c.st"],
                   "no such data file")


def test_directory_that_is_not_a_model(tmp_path, capsys):
    one_line_error(capsys, ["evaluate", "--model", tmp_path, "--data", "toy-open"], str(tmp_path),
                   "not a model directory", "save_pretrained")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "olmoe"}))  # no weights
    one_line_error(capsys, ["evaluate", "--model", tmp_path, "--data", "toy-open"], "not a model directory",
                   "model.safetensors")
