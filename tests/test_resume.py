"""Resume is exact whatever stops the run: SIGINT / SIGTERM in a step, in a dev eval, in a checkpoint
write, a full disk at a checkpoint, and SIGTERM of the real `routerlens tune-router` process.

Each interrupted + resumed run must give the uninterrupted run's tensors bit for bit and its whole
dev-loss history (no eval point lost or repeated).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import routerlens_interp as rl
from routerlens_interp import safe_state
from routerlens_interp.cli.commands import main
from routerlens_interp.errors import TrainingInterrupted, UserError
from routerlens_interp.train import loop
from test_train import DEV, TRAIN

CFG = dict(max_steps=6, lr=1e-2, batch_size=4, eval_every=2, checkpoint_every=4, progress=False)


@pytest.fixture(scope="module")
def ref(load_tiny, tmp_path_factory):
    """The uninterrupted run."""
    r = rl.tune_router(load_tiny("olmoe"), TRAIN, DEV, out_dir=tmp_path_factory.mktemp("ref"), **CFG)
    assert [h["step"] for h in r.metrics["history"]] == [2, 4, 6]
    return r


def _assert_same(got, ref):
    assert set(got.tensors) == set(ref.tensors)
    for k in ref.tensors:
        assert torch.equal(got.tensors[k], ref.tensors[k]), k
    assert got.metrics["history"] == ref.metrics["history"]
    assert got.metrics["best_step"] == ref.metrics["best_step"] and got.metrics["steps"] == 6


def _signal_on_call(monkeypatch, owner, name: str, nth: int, sig: int) -> None:
    """Make the ``nth`` call of ``owner.name`` send ``sig`` to this process before it does its work."""
    orig, calls = getattr(owner, name), []

    def wrapped(*a, **k):
        calls.append(1)
        if len(calls) == nth:
            os.kill(os.getpid(), sig)
        return orig(*a, **k)

    monkeypatch.setattr(owner, name, wrapped)


def _checkpoint(out):
    return safe_state.load(Path(out) / "checkpoint/state.safetensors", loop.CKPT_KIND, "")


# (patched function, which call, signal, step the run stops at, eval points in the checkpoint)
PHASES = {
    # _forward_loss calls: 1 initial dev, 2 step 1, 3 step 2, 4 dev at 2, 5 step 3 -> step 3 is finished
    "step": (loop, "_forward_loss", 5, signal.SIGINT, 3, 1),
    # dev_loss calls: 1 initial, 2 at step 2 -> the eval point of step 2 is finished and kept
    "dev eval": (loop, "dev_loss", 2, signal.SIGINT, 2, 1),
    # safe_state.save calls: 1 the periodic checkpoint of step 4 -> written, then the run stops
    "checkpoint write": (safe_state, "save", 1, signal.SIGTERM, 4, 2),
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_signal_in_each_phase_then_resume_equals_uninterrupted(ref, load_tiny, tmp_path, monkeypatch, phase):
    owner, name, nth, sig, stop_step, n_evals = PHASES[phase]
    lm = load_tiny("olmoe")
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with monkeypatch.context() as m:
        _signal_on_call(m, owner, name, nth, sig)
        with pytest.raises(TrainingInterrupted) as err:
            rl.tune_router(lm, TRAIN, DEV, out_dir=tmp_path, **CFG)
    e = err.value
    assert (e.step, e.signum, e.exit_code, e.out_dir) == (stop_step, sig, 128 + sig, tmp_path)
    assert {s: signal.getsignal(s) for s in before} == before  # handlers put back
    st = _checkpoint(tmp_path)
    assert st["step"] == stop_step and len(st["history"]) == n_evals
    done = []
    got = rl.tune_router(lm, TRAIN, DEV, out_dir=tmp_path, resume=True, callback=lambda i: done.append(i["step"]),
                         **CFG)
    assert done == list(range(stop_step + 1, 7))
    _assert_same(got, ref)


def test_second_signal_stops_at_once_and_rolls_back_the_unfinished_step(ref, load_tiny, tmp_path, monkeypatch):
    """Two Ctrl-C in the forward pass of step 3: no waiting; the checkpoint holds step 2 (with the random
    state from before step 3), and resuming from it still equals the uninterrupted run."""
    lm = load_tiny("olmoe")
    orig, calls = loop._forward_loss, []

    def twice(*a, **k):
        calls.append(1)
        if len(calls) == 5:  # step 3 (see PHASES)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return orig(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(loop, "_forward_loss", twice)
        with pytest.raises(KeyboardInterrupt):
            rl.tune_router(lm, TRAIN, DEV, out_dir=tmp_path, **CFG)
    assert len(calls) == 5 and _checkpoint(tmp_path)["step"] == 2
    _assert_same(rl.tune_router(lm, TRAIN, DEV, out_dir=tmp_path, resume=True, **CFG), ref)


def test_full_disk_at_a_checkpoint_keeps_the_previous_one_and_saves_the_adapter(ref, load_tiny, tmp_path,
                                                                                  monkeypatch):
    lm = load_tiny("olmoe")
    cfg = {**CFG, "checkpoint_every": 2}  # checkpoints at steps 2, 4, 6: the one of step 4 fails
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(fd)

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", fsync)
        with pytest.raises(UserError) as err:
            rl.tune_router(lm, TRAIN, DEV, out_dir=tmp_path, **cfg)
    msg = str(err.value)
    assert "could not write the checkpoint of step 4" in msg and "No space left on device" in msg
    assert "the checkpoint of step 2 is kept" in msg and re.search(r"adapter of step [24] .* was saved", msg)
    assert not list(tmp_path.rglob("*.tmp"))
    assert _checkpoint(tmp_path)["step"] == 2
    partial = rl.load_adapter(tmp_path, lm)
    assert partial.metrics["incomplete"] and partial.metrics["steps"] == 4
    assert len(partial.metrics["history"]) == 2
    _assert_same(rl.tune_router(lm, TRAIN, DEV, out_dir=tmp_path, resume=True, **cfg), ref)


def _cli(*args):
    return [sys.executable, "-m", "routerlens_interp.cli.commands", "tune-router", "--model", "toy", *map(str, args)]


def test_sigterm_of_the_cli_then_resume_is_bit_identical(tmp_path, capsys):
    """`kill` of a running `routerlens tune-router`: exit 143, one line saying how to continue; `--resume`
    (the CLI's main in this process: a second process would double the time spent importing) finishes
    with the tensors of an uninterrupted run (computed here, one thread as the CLI)."""
    lm = rl.load("toy")
    rows = rl.load_dataset("toy-conflict", split="train", limit=40, lm=lm)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"context": e.context, "question": e.question, "answers": e.answers}) + "\n"
                            for e in rows))
    steps = 8  # few: two CLI processes (imports + the toy model) dominate the time
    args = ["--data", data, "--limit", 40, "--max-steps", steps, "--batch-size", 4, "--threads", 1, "--out",
            tmp_path / "run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(_cli(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = bytearray()
    reader = threading.Thread(target=lambda: [err.extend(c) for c in iter(lambda: proc.stderr.read1(4096), b"")])
    reader.start()
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill once the progress bar shows a finished step
        if any(int(n) >= 1 for n in re.findall(rb"\| *(\d+)/%d " % steps, bytes(err))):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    proc.wait(timeout=120)
    reader.join()
    text = err.decode(errors="replace")
    assert proc.returncode == 143, text[-2000:]
    last = text.replace("\r", "\n").strip().splitlines()[-1]
    m = re.fullmatch(r"interrupted at step (\d+); continue with --resume", last)
    assert m and 1 <= int(m.group(1)) < steps, last
    assert "Traceback" not in text
    threads = torch.get_num_threads()
    try:
        assert main(_cli(*args, "--resume")[3:]) == 0, capsys.readouterr().err[-2000:]
        got = rl.load_adapter(tmp_path / "run", lm)
        # the CLI trains on a single file's train part and chooses the checkpoint on its dev part
        train, dev = rl.load_dataset(data, split="train", limit=40), rl.load_dataset(data, split="dev")
        torch.set_num_threads(1)
        want = rl.tune_router(lm, train, dev, max_steps=steps, batch_size=4, progress=False)
    finally:
        torch.set_num_threads(threads)
    for k in want.tensors:
        assert torch.equal(got.tensors[k], want.tensors[k]), k
    assert got.metrics["history"] == want.metrics["history"] and got.metrics["steps"] == steps
