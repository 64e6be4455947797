"""No load path unpickles a file: counts, training checkpoints, toy pretraining checkpoints, adapters.

Each test hands a crafted pickle (whose unpickling would create a marker file) to one load path and
checks that nothing ran and the error names the file and the fix.
"""
from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import routerlens_interp as rl
from routerlens_interp import safe_state
from routerlens_interp.cli.commands import main
from routerlens_interp.analysis.counting import ExpertCounts
from routerlens_interp.errors import UserError
from test_train import DEV, TRAIN


class _Evil:
    """Unpickling this creates the file ``marker`` (a stand-in for any code an attacker would run)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil(tmp_path):
    """``(write(path), marker)``: ``write`` puts a crafted torch pickle at ``path``."""
    marker = tmp_path / "code_ran"

    def write(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"counts": _Evil(marker), "step": _Evil(marker)}, str(path))
        return Path(path)

    return write, marker


def test_the_crafted_file_would_run_code(evil, tmp_path):
    """The fixture is a real attack: an unpickling load runs it (so the tests below can fail)."""
    write, marker = evil
    torch.load(write(tmp_path / "x.pt"), weights_only=False)
    assert marker.exists()


def _counts():
    g = torch.Generator().manual_seed(0)
    return ExpertCounts(torch.randint(0, 50, (2, 4), generator=g), [1, 3], torch.rand(2, 4, dtype=torch.float64,
                        generator=g), torch.rand(2, 4, dtype=torch.float64, generator=g), 77, 2)


def test_counts_round_trip_and_new_fields_travel(tmp_path):
    c = _counts()
    c.save(tmp_path / "counts.pt")  # the extension is only a name
    d = ExpertCounts.load(tmp_path / "counts.pt")
    for f in dataclasses.fields(ExpertCounts):
        a, b = getattr(c, f.name), getattr(d, f.name)
        assert (torch.equal(a, b) and a.dtype == b.dtype) if torch.is_tensor(a) else a == b, f.name

    @dataclasses.dataclass
    class More(ExpertCounts):  # a field added later needs no code in save/load
        topk_sums: torch.Tensor | None = None

    m = More(**{f.name: getattr(c, f.name) for f in dataclasses.fields(c)}, topk_sums=torch.arange(8.).view(2, 4))
    m.save(tmp_path / "more.safetensors")
    assert torch.equal(More.load(tmp_path / "more.safetensors").topk_sums, m.topk_sums)
    with pytest.raises(UserError, match=r"lacks the field\(s\) \['topk_sums'\]"):
        More.load(tmp_path / "counts.pt")


def test_counts_pickle_is_refused_by_the_api_and_the_cli(evil, tmp_path, capsys):
    write, marker = evil
    for name in ("counts.pt", "counts.safetensors"):
        f = write(tmp_path / name)
        with pytest.raises(UserError, match="old pickle format, which is not loaded for safety; recount with "
                                            "`routerlens count`") as err:
            ExpertCounts.load(f)
        assert str(f) in str(err.value)
        for flag in ("--counts", "--baseline"):
            good = tmp_path / "good.safetensors"
            _counts().save(good)
            args = ["select", "--counts", f, "--n", "2", "--out", tmp_path / "e.json"]
            if flag == "--baseline":
                args = ["select", "--counts", good, "--baseline", f, "--n", "2", "--out", tmp_path / "e.json"]
            assert main([str(a) for a in args]) == 2
            err = capsys.readouterr().err.strip()
            assert "\n" not in err and "old pickle format" in err and str(f) in err
    assert not marker.exists()
    (tmp_path / "junk").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(UserError, match="junk.*damaged"):
        ExpertCounts.load(tmp_path / "junk")


def test_state_round_trip_is_exact(tmp_path):
    """Optimizer state (int keys, tuples, 0-d tensors), RNG states and floats (inf, nan) come back as they were."""
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], lr=1e-3, betas=(0.8, 0.9))
    p.grad = torch.randn(3, 2)
    opt.step()
    random.random(), np.random.rand(), torch.rand(1)
    tree = {"opt": opt.state_dict(), "py": random.getstate(), "np": np.random.get_state(),
            "torch": torch.get_rng_state(), "best": {"loss": float("inf"), "nan": float("nan"), "step": None}}
    safe_state.save(tmp_path / "s.safetensors", tree, "test")
    back = safe_state.load(tmp_path / "s.safetensors", "test", "")
    assert back["py"] == tree["py"] and back["opt"]["param_groups"] == tree["opt"]["param_groups"]
    assert back["np"][0] == "MT19937" and back["np"][1].dtype == np.uint32
    assert np.array_equal(back["np"][1], tree["np"][1])
    assert back["np"][2:] == tree["np"][2:] and torch.equal(back["torch"], tree["torch"])
    assert set(back["opt"]["state"]) == {0}
    for k, v in tree["opt"]["state"][0].items():
        assert torch.equal(back["opt"]["state"][0][k], v)
    assert back["best"]["loss"] == float("inf") and back["best"]["nan"] != back["best"]["nan"]
    with pytest.raises(UserError, match="holds a 'test' file, not a other file"):
        safe_state.load(tmp_path / "s.safetensors", "other", "")
    assert not list(tmp_path.glob("*.tmp"))


def test_training_checkpoint_pickle_is_refused(load_tiny, evil, tmp_path):
    write, marker = evil
    lm = load_tiny("olmoe")
    cfg = dict(max_steps=2, lr=1e-2, batch_size=4, eval_every=2, progress=False)
    old = write(tmp_path / "run/checkpoint/state.pt")  # the old name
    with pytest.raises(UserError, match=r"state\.pt was written in the old pickle format, which is not loaded for "
                                        r"safety; start over without --resume"):
        rl.tune_router(lm, TRAIN, DEV, out_dir=tmp_path / "run", resume=True, **cfg)
    shutil.move(old, tmp_path / "run/checkpoint/state.safetensors")  # the new name, pickle inside
    with pytest.raises(UserError, match="old pickle format"):
        rl.tune_router(lm, TRAIN, DEV, out_dir=tmp_path / "run", resume=True, **cfg)
    assert not marker.exists()


def test_toy_pretrain_checkpoint_pickle_is_refused(evil, tmp_path, monkeypatch):
    from routerlens_interp.toy import pretrain

    write, marker = evil
    monkeypatch.setattr(pretrain, "toy_metrics", lambda *a, **k: {})
    write(tmp_path / "a/checkpoint.pt")
    with pytest.raises(UserError, match=r"checkpoint\.pt was written in the old pickle format"):
        pretrain.main(["--out", str(tmp_path / "a")])
    # a pickle under the new name, reached after the tokenizer and model are built (bundled tokenizer: fast)
    toy = Path(pretrain.__file__).parent / "weights"
    (tmp_path / "b").mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(toy / f, tmp_path / "b" / f)
    write(tmp_path / "b/checkpoint.safetensors")
    with pytest.raises(UserError, match="old pickle format"):
        pretrain.main(["--out", str(tmp_path / "b"), "--hidden", "16", "--layers", "1", "--heads", "2",
                       "--experts", "4", "--intermediate", "8"])
    assert not marker.exists()


def test_adapter_pickle_is_refused(load_tiny, evil, tmp_path):
    from routerlens_interp.errors import IntegrityError

    write, marker = evil
    lm = load_tiny("olmoe")
    ad = rl.tune_router(lm, TRAIN, DEV, out_dir=tmp_path, max_steps=1, batch_size=4, progress=False)
    assert rl.load_adapter(tmp_path, lm).n_trainable == ad.n_trainable
    write(tmp_path / "adapter.safetensors")
    with pytest.raises(IntegrityError, match="adapter.safetensors is not a safetensors file"):
        rl.load_adapter(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("bad, shown", [({"experts": {"2": [1, 1.5]}}, "1.5 (float)"),
                                        ({"2": [True]}, "True (bool)"), ({"2": ["3"]}, "'3' (str)"),
                                        ({"2": [2.0]}, "2.0 (float)")])
def test_expert_ids_must_be_integers(tmp_path, bad, shown):
    """``int()`` would make 1.5 and true expert 1 and 2.0 expert 2: refused, naming file, layer and value."""
    f = tmp_path / "experts.json"
    f.write_text(json.dumps(bad))
    with pytest.raises(UserError) as err:
        rl.ExpertSet.load(f)
    assert str(f) in str(err.value) and "layer '2'" in str(err.value) and shown in str(err.value)
    with pytest.raises(ValueError, match="is not an integer"):  # also a plain dict handed to mask_experts
        from routerlens_interp.interventions.masking import normalize_mask

        normalize_mask(None, bad.get("experts", bad))
    assert rl.ExpertSet({"2": [np.int64(3), torch.tensor(1)], 4: [0]}) == {2: [1, 3], 4: [0]}


def test_an_empty_expert_file_warns(tmp_path):
    for text in ("{}", '{"experts": {"3": []}, "meta": {}}'):
        (tmp_path / "e.json").write_text(text)
        with pytest.warns(UserWarning, match="lists no experts"):
            assert not rl.ExpertSet.load(tmp_path / "e.json")
