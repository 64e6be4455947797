"""Outputs of the `routerlens` commands: one run at a time per output (a lock that names the holder's PID,
taken over from a dead holder with a note), an earlier result kept unless --overwrite / --resume, and
warnings as one line `routerlens <cmd>: warning: ...` each."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tiny
import routerlens_interp as rl
from routerlens_interp.cli import ces as cli_ces
from routerlens_interp.train import outdir
from routerlens_interp.cli.commands import main
from routerlens_interp.analysis.counting import ExpertCounts
from routerlens_interp.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
       "OMP_NUM_THREADS": "1"}
ROWS = [
    {"context": "Alice Smith was born in 1950 in Paris.", "question": "Where was Alice born?", "answer": "Paris"},
    {"context": "Bob lives in Rome and paints.", "question": "Where does Bob live?", "answer": "Rome"},
    {"context": "Carol is a baker in Lima.", "question": "Where does Carol work?", "answer": "Lima"},
]


@pytest.fixture(autouse=True)
def _quiet_loading():
    """transformers' weight-loading bar writes to stderr; the lines checked here are ours."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny saved model, a 3-row JSONL file, an experts.json and a counts file."""
    d = tmp_path_factory.mktemp("outputs")
    model = tiny.save("olmoe", d / "model")
    data = d / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (d / "experts.json").write_text(json.dumps({"experts": {"0": [1, 2]}}))
    g = torch.Generator().manual_seed(0)
    ExpertCounts(torch.randint(0, 50, (2, 4), generator=g), [1, 3], torch.rand(2, 4, dtype=torch.float64, generator=g),
                 torch.rand(2, 4, dtype=torch.float64, generator=g), 77, 2).save(d / "counts.safetensors")
    return {"model": model, "data": str(data), "experts": str(d / "experts.json"), "counts": str(d / "counts.safetensors")}


def run(capsys, argv):
    code = main([str(a) for a in argv])
    got = capsys.readouterr()
    return code, got.out, [l for l in got.err.replace("\r", "\n").splitlines() if l.strip()]


def refused(capsys, argv, *needles) -> str:
    """Exit 2 and exactly one stderr line `routerlens <cmd>: error: ...` holding ``needles``."""
    code, _, err = run(capsys, argv)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"routerlens {argv[0]}: error: "), err[0]
    for n in needles:
        assert n in err[0], (n, err[0])
    return err[0]


# command → (argv before --out / the output flag, output is a directory, the flag); {m} {d} {e} {c}: setup
COMMANDS = {
    "tune-router": (["--model", "{m}", "--data", "{d}", "--max-steps", "1", "--batch-size", "2"], True, "--out"),
    "ceft": (["--model", "{m}", "--data", "{d}", "--experts", "{e}", "--max-steps", "1", "--batch-size", "2"], True,
             "--out"),
    "finetune": (["--model", "{m}", "--data", "{d}", "--max-steps", "1", "--batch-size", "2", "--only", "self_attn"],
                 True, "--out"),
    "analyze": (["--model", "{m}", "--data", "{d}", "--mask", "{e}", "--no-png"], True, "--out"),
    "demo": (["--fast", "--no-png"], True, "--out"),
    "count": (["--model", "{m}", "--data", "{d}"], False, "--out"),
    "select": (["--counts", "{c}", "--n", "1"], False, "--out"),
    "evaluate": (["--model", "{m}", "--data", "{d}", "--max-new-tokens", "2"], False, "--predictions"),
    "attribute": (["--model", "{m}", "--data", "{d}", "--metric", "answer"], False, "--out"),
    "contrast": (["--model", "{m}", "--data", "{d}"], False, "--out"),
}


def argv_for(cmd: str, setup, out) -> list:
    args, _, flag = COMMANDS[cmd]
    sub = {"{m}": setup["model"], "{d}": setup["data"], "{e}": setup["experts"], "{c}": setup["counts"]}
    return [cmd, *(sub.get(a, a) for a in args), flag, out]


def out_for(cmd: str, tmp_path) -> Path:
    return tmp_path / ("out" if COMMANDS[cmd][1] else "out.file")


def _no_work(monkeypatch):
    """Any step past the preconditions (data, model, counts, the demo) fails the test."""
    def work(*a, **k):
        raise AssertionError("the command started its work")

    from routerlens_interp.cli import commands as cli
    from routerlens_interp.pipeline import demo
    monkeypatch.setattr(cli, "_model_and_data", work)
    monkeypatch.setattr(cli_ces, "_setup", work)
    monkeypatch.setattr(demo, "run_demo", work)
    monkeypatch.setattr(ExpertCounts, "load", work)


@contextlib.contextmanager
def holder(path, is_dir: bool):
    """Another process that holds the output lock of ``path`` until the block ends; yields it."""
    code = ("import sys; from routerlens_interp.train.outdir import locked\n"
            f"with locked({str(path)!r}, {is_dir}, what='routerlens holder'):\n"
            "    print('locked', flush=True); sys.stdin.read()\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=ENV, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        yield p
    finally:
        if p.poll() is None:
            p.stdin.close()
            p.wait(timeout=60)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# --- item 1: one run at a time per output -----------------------------------------------------------
@pytest.mark.parametrize("cmd", list(COMMANDS))
def test_a_second_run_on_a_held_output_refuses_at_once_naming_the_holder(cmd, setup, tmp_path, capsys, monkeypatch):
    out = out_for(cmd, tmp_path)
    _no_work(monkeypatch)
    with holder(out, COMMANDS[cmd][1]) as p:
        line = refused(capsys, argv_for(cmd, setup, out), f"{out} is being written by another run (PID {p.pid}, "
                                                          "routerlens holder)")
        assert "wait for it to finish" in line
        lock = outdir.lock_file_for(out, COMMANDS[cmd][1])
        assert lock.read_text().split()[0] == str(p.pid)  # the holder's lock is left alone
    assert not lock.exists()  # the holder removed it when done


def test_two_real_tune_router_runs_on_one_out(setup, tmp_path, capsys):
    """The issue's case: `routerlens tune-router --out same` twice at once. The second refuses while the
    first trains; the first finishes and its adapter is whole and its own."""
    out = tmp_path / "same"
    argv = argv_for("tune-router", setup, out)
    argv[argv.index("--max-steps") + 1] = "40"
    first = subprocess.Popen([sys.executable, "-m", "routerlens_interp.cli.commands", *map(str, argv), "--threads", "1"],
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = out / outdir.LOCK_NAME
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None:
        if lock.exists() and lock.read_text().split()[:1] == [str(first.pid)]:
            break
        time.sleep(0.02)
    assert first.poll() is None, first.communicate()
    refused(capsys, argv, f"is being written by another run (PID {first.pid}, routerlens tune-router)")
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    ad = rl.load_adapter(out)
    assert ad.metrics["steps"] == 40 and ad.manifest["method"] == "router"
    assert not lock.exists()


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_note(setup, tmp_path, capsys):
    """SIGKILL leaves the lock file (with the dead PID) but the kernel dropped the flock: the next run takes
    it, says so in one note line, and writes its output."""
    out = tmp_path / "e.json"
    with holder(out, False) as p:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    lock = outdir.lock_file_for(out, False)
    assert lock.read_text().split()[0] == str(p.pid)
    code, _, err = run(capsys, argv_for("select", setup, out))
    assert code == 0 and len(err) == 1, err
    assert re.fullmatch(rf"routerlens select: note: {re.escape(str(out))}: taking over the lock left by PID {p.pid} "
                        r"\(routerlens holder\), no longer running; check that its output is complete", err[0]), err
    assert out.exists() and not lock.exists()


def test_a_stale_lock_file_in_an_output_directory(tmp_path, capsys, monkeypatch):
    out, pid = tmp_path / "demo", _dead_pid()
    out.mkdir()
    (out / outdir.LOCK_NAME).write_text(f"{pid}\nrouterlens demo\n")
    from routerlens_interp.pipeline import demo
    monkeypatch.setattr(demo, "run_demo", lambda out, **k: (out / "report.json").write_text("{}") and {})
    code, _, err = run(capsys, ["demo", "--out", out])
    assert code == 0 and len(err) == 1 and f"taking over the lock left by PID {pid}" in err[0], err
    assert err[0].startswith("routerlens demo: note: ")
    assert sorted(f.name for f in out.iterdir()) == ["report.json"]


def test_the_python_api_takes_the_lock_too(load_tiny, tmp_path):
    from test_train import DEV, TRAIN

    with holder(tmp_path, True) as p, pytest.raises(outdir.OutputInUse, match=f"PID {p.pid}"):
        rl.tune_router(load_tiny("olmoe"), TRAIN, DEV, out_dir=tmp_path, max_steps=1, progress=False)
    assert not (tmp_path / "checkpoint").exists()


def test_the_other_processes_of_a_multi_process_launch_leave_the_lock_to_the_first(tmp_path, monkeypatch):
    """Under torchrun / accelerate every process runs the command: only the first (RANK 0) takes the lock,
    the others still refuse an earlier result."""
    from argparse import Namespace

    from routerlens_interp.cli.checks import claim_out, outputs_held

    args = Namespace(command="tune-router", overwrite=False, resume=False)
    monkeypatch.setenv("RANK", "1")
    with holder(tmp_path / "run", True), outputs_held():
        claim_out(args, tmp_path / "run", is_dir=True, resumable=True)  # the first process holds it: fine
    (tmp_path / "run").mkdir()  # (the holder removed the directory it had made for its lock)
    (tmp_path / "run" / "adapter.json").write_text("{}")
    with pytest.raises(UserError, match="already holds an adapter"):
        claim_out(args, tmp_path / "run", is_dir=True, resumable=True)
    monkeypatch.setenv("RANK", "0")
    with holder(tmp_path / "run", True) as p, outputs_held(), pytest.raises(outdir.OutputInUse, match=str(p.pid)):
        claim_out(args, tmp_path / "run", is_dir=True, resumable=True)


def test_locks_are_reentrant_in_one_process_and_removed_after(tmp_path):
    out = tmp_path / "a" / "b"
    with outdir.locked(out, True):
        with outdir.locked(out, True):
            assert (out / outdir.LOCK_NAME).exists()
        assert (out / outdir.LOCK_NAME).exists()  # still held by the outer block
    assert not (tmp_path / "a").exists()  # made for the lock, left empty: removed


def test_a_run_that_fails_early_leaves_no_directory_behind(tmp_path, capsys):
    refused(capsys, ["tune-router", "--data", tmp_path / "missing.jsonl", "--out", tmp_path / "new"], "missing.jsonl")
    assert not (tmp_path / "new").exists()


# --- item 2: an earlier result is kept unless --overwrite / --resume -----------------------------------
def snapshot(paths) -> dict:
    """Every file under ``paths`` → (bytes, mtime_ns)."""
    files = {}
    for p in map(Path, paths):
        for f in ([p] if p.is_file() else sorted(p.rglob("*"))):
            if f.is_file():
                files[str(f)] = (f.read_bytes(), f.stat().st_mtime_ns)
    return files


def outputs_of(cmd, out) -> list[Path]:
    return [out, out.with_name("experts_out.json")] if cmd == "contrast" else [out]


@pytest.mark.parametrize("cmd", list(COMMANDS))
def test_a_finished_output_is_refused_kept_byte_identical_and_overwritten_on_request(cmd, setup, tmp_path, capsys,
                                                                                      monkeypatch):
    out = out_for(cmd, tmp_path)
    argv = argv_for(cmd, setup, out)
    if cmd == "contrast":
        argv += ["--experts-out", out.with_name("experts_out.json")]
    if cmd == "demo":  # the real demo takes minutes: it writes its report through this
        from routerlens_interp.pipeline import demo
        monkeypatch.setattr(demo, "run_demo", lambda out, seed, **k: (out / "report.json").write_text(str(seed)) and {})
    code, _, err = run(capsys, argv)
    assert code == 0, err
    paths = outputs_of(cmd, out)
    for f in snapshot(paths):
        os.utime(f, ns=(0, 0))  # a rewrite, even of the same bytes, shows in the mtime
    before = snapshot(paths)
    assert before and all(Path(f).exists() for f in before)
    fix = "--resume to continue that training, --overwrite to start over" if cmd in ("tune-router", "ceft",
                                                                                      "finetune") else "--overwrite"
    what = "already holds" if COMMANDS[cmd][1] else "already exists"
    refused(capsys, argv, f"{out} {what}", fix)
    assert snapshot(paths) == before
    code, _, err = run(capsys, [*argv, "--overwrite", "--seed", "7"])
    assert code == 0, err
    after = snapshot(paths)
    # (a directory's shared files, e.g. plotly.min.js of the figures, are kept when present)
    main = [out / {"analyze": "apg.csv", "demo": "report.json"}.get(cmd, "adapter.safetensors")] if COMMANDS[cmd][1] \
        else paths
    assert set(before) <= set(after) and all(after[str(f)][1] != 0 for f in main), "not rewritten"


def test_training_resume_still_continues_and_an_unfinished_run_is_named(setup, tmp_path, capsys):
    out = tmp_path / "rt"
    argv = argv_for("tune-router", setup, out)
    argv[argv.index("--max-steps") + 1] = "2"
    assert run(capsys, argv)[0] == 0
    first = rl.load_adapter(out)
    code, _, err = run(capsys, [*argv, "--resume"])  # a finished run: --resume re-saves the same tensors
    assert code == 0, err
    again = rl.load_adapter(out)
    assert all(torch.equal(first.tensors[k], again.tensors[k]) for k in first.tensors)
    for name in ("adapter.json", "adapter.safetensors"):  # as after a kill: only the checkpoint is left
        (out / name).unlink()
    refused(capsys, argv, "the checkpoint of an unfinished training run (checkpoint/)", "--resume to continue")
    refused(capsys, [*argv, "--resume", "--overwrite"], "not both")
    assert run(capsys, [*argv, "--resume"])[0] == 0
    resumed = rl.load_adapter(out)
    assert all(torch.equal(first.tensors[k], resumed.tensors[k]) for k in first.tensors)


def test_any_file_in_an_output_directory_counts(setup, tmp_path, capsys, monkeypatch):
    _no_work(monkeypatch)
    (tmp_path / "notes.txt").write_text("mine")
    refused(capsys, argv_for("analyze", setup, tmp_path), f"{tmp_path} already holds 1 file (notes.txt)",
            "--overwrite to replace it")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    (tmp_path / "report.json").write_text("{}")
    refused(capsys, ["demo", "--out", tmp_path], "a demo report (report.json)")
    assert not (tmp_path / outdir.LOCK_NAME).exists()


def test_every_writing_command_documents_overwrite():
    from routerlens_interp.cli.commands import build_parser

    sub = next(a for a in build_parser()._actions if a.choices and "demo" in a.choices).choices
    for cmd in COMMANDS:
        text = " ".join(sub[cmd].format_help().split())
        assert "--overwrite" in text and "any file" in text, cmd
    assert "--overwrite" not in sub["knockout"].format_help()  # writes nothing


# --- item 3: warnings are one line each ---------------------------------------------------------------
def _warning_lines(stderr: str) -> list[str]:
    return [l for l in stderr.replace("\r", "\n").splitlines() if "warn" in l.lower()]


def test_cli_warnings_are_one_line_each_and_known_harmless_ones_hidden(setup, tmp_path):
    """A real `routerlens evaluate` (transformers is imported after the CLI set up its warnings): the
    toolkit's warning (an empty mask) is one line; transformers' warnings on a tokenizer limit (the
    toolkit truncates itself) and on sampling flags (it decodes greedily) are not shown; identical
    warnings are shown once."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(setup["model"], model)
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**cfg, "model_max_length": 64}))
    gen = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**gen, "temperature": 0.7, "top_p": 0.5}))
    long = {"context": "Alice Smith was born in 1950 in Paris. " * 12, "question": "Where was Alice born?",
            "answer": "Paris"}
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps(long) + "\n" + json.dumps(long) + "\n")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"experts": {}}))
    argv = [sys.executable, "-m", "routerlens_interp.cli.commands", "evaluate", "--model", str(model), "--data", str(data),
            "--mask", str(empty), "--max-new-tokens", "2", "--batch-size", "1"]
    r = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = _warning_lines(r.stderr)
    assert f"routerlens evaluate: warning: {empty} lists no experts: masking or training with it changes nothing" \
        in lines, r.stderr
    assert all(l.startswith("routerlens evaluate: warning: ") for l in lines), lines
    assert len(lines) == len(set(lines)), lines
    assert "Warning:" not in r.stderr and ".py:" not in r.stderr, r.stderr  # no Python warning format or source
    assert "Token indices" not in r.stderr and "generation flags" not in r.stderr, r.stderr



def test_debug_keeps_pythons_own_warnings(setup, tmp_path, capsys, recwarn):
    """--debug: warnings go to Python's machinery (here pytest's recorder; in a shell its full format)."""
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"experts": {}}))
    argv = ["evaluate", "--model", setup["model"], "--data", setup["data"], "--mask", empty, "--max-new-tokens", 1]
    code, _, err = run(capsys, [*argv, "--debug"])
    assert code == 0 and not [l for l in err if "warning:" in l], err
    assert any("lists no experts" in str(w.message) for w in recwarn)
    recwarn.clear()
    code, _, err = run(capsys, argv)  # and without it, the one line (not Python's machinery)
    assert code == 0 and f"routerlens evaluate: warning: {empty} lists no experts: masking or training with it " \
        "changes nothing" in err and not any("lists no experts" in str(w.message) for w in recwarn), err


def test_library_log_warnings_become_one_line_even_when_imported_later():
    """transformers / datasets / huggingface_hub add their own stderr handler when first imported, which
    the CLI does in the middle of a command: that handler is replaced too, and put back afterwards."""
    code = ("import logging, warnings\n"
            "from routerlens_interp.cli.messages import one_line_warnings\n"
            "with one_line_warnings('x'):\n"
            "    from transformers.utils import logging as hf\n"
            "    hf.get_logger('transformers.foo').warning('first line\\nsecond line')\n"
            "    hf.get_logger('transformers.foo').warning('first line\\nsecond line')\n"
            "    logging.getLogger('somewhere').warning('from a plain logger')\n"
            "    warnings.warn('a toolkit warning')\n"
            "hf.get_logger('transformers.foo').warning('after the block')\n")
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["routerlens x: warning: first line; second line",
                                     "routerlens x: warning: from a plain logger",
                                     "routerlens x: warning: a toolkit warning",
                                     "[transformers] after the block"], r.stderr
