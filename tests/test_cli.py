"""The `routerlens` command on a tiny saved model and a local JSONL data file."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

from routerlens_interp.cli.commands import main  # noqa: E402

ROWS = [
    {"context": "Alice Smith was born in 1950 in Paris.", "question": "Where was Alice born?", "answer": "Paris",
     "memory_answer": "Rome"},
    {"context": "Bob lives in Rome and paints.", "question": "Where does Bob live?", "answer": ["Rome"]},
    {"context": "Carol is a baker in Lima.", "question": "Where does Carol work?", "answer": "Lima"},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model = tiny.save("olmoe", d / "model")
    data = d / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return d, model, str(data)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_evaluate_json_is_one_object(setup, capsys):
    d, model, data = setup
    code, out, _ = run(capsys, "evaluate", "--model", model, "--data", data, "--json", "--max-new-tokens", 4)
    assert code == 0
    obj = json.loads(out)
    assert obj["n"] == 3 and set(obj) == {"em", "f1", "n", "memory_rate"}


def test_count_select_mask_analyze(setup, capsys):
    d, model, data = setup
    assert run(capsys, "count", "--model", model, "--data", data, "--out", d / "c.pt", "--json")[0] == 0
    code, out, _ = run(capsys, "select", "--counts", d / "c.pt", "--n", 2, "--out", d / "e.json", "--json")
    assert code == 0
    experts = json.loads(out)["experts"]
    assert all(len(v) == 2 for v in (experts.get("experts", experts)).values())
    code, out, _ = run(capsys, "evaluate", "--model", model, "--data", data, "--mask", d / "e.json", "--json",
                       "--max-new-tokens", 4)
    assert code == 0 and json.loads(out)["n"] == 3
    code, out, _ = run(capsys, "analyze", "--model", model, "--data", data, "--mask", d / "e.json", "--out",
                       d / "ana", "--no-png", "--json")
    assert code == 0
    res = json.loads(out)
    assert len(res["cag"]) == 3 and (d / "ana" / "attention_gain.csv").exists() and (d / "ana" / "apg.csv").exists()
    assert any(f.endswith(".html") for f in res["files"])


def test_bad_input_is_a_clear_error(setup, capsys):
    d, model, data = setup
    code, _, err = run(capsys, "evaluate", "--model", model, "--data", "no-such-dataset")
    assert code == 2 and "no-such-dataset" in err
    bad = d / "bad.json"
    bad.write_text(json.dumps({"experts": {"0": [99]}}))
    code, _, err = run(capsys, "evaluate", "--model", model, "--data", data, "--mask", bad)
    assert code == 2 and "out of range" in err


def test_every_command_has_help():
    for cmd in ("demo", "evaluate", "count", "select", "tune-router", "ceft", "finetune", "analyze", "knockout"):
        r = subprocess.run([sys.executable, "-m", "routerlens_interp.cli.commands", cmd, "--help"], capture_output=True,
                           text=True)
        assert r.returncode == 0 and "--seed" in r.stdout, cmd


def test_finetune_only(setup, capsys):
    d, model, data = setup
    code, out, err = run(capsys, "finetune", "--model", model, "--data", data, "--out", d / "attn", "--max-steps", 1,
                         "--batch-size", 2, "--only", "self_attn", "--json")
    assert code == 0, err
    manifest = json.loads((d / "attn" / "adapter.json").read_text())
    assert manifest["only"] == "self_attn"
    code, out, err = run(capsys, "finetune", "--model", model, "--data", data, "--out", d / "none", "--max-steps", 1,
                         "--only", "nothing_named_so")
    assert code == 2 and "matches no parameter" in err


def test_knockout_command(setup, capsys):
    d, model, data = setup
    code, out, err = run(capsys, "knockout", "--model", model, "--data", data, "--layers", "0;0,1", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert [r["layers"] for r in res["rows"]] == ["0", "0,1"] and res["n"] + res["n_skipped"] == 3
    code, out, err = run(capsys, "knockout", "--model", model, "--data", data, "--layers", "zero")
    assert code == 2 and "layer sets like" in err


def test_train_commands_write_adapters_that_evaluate_and_resume(setup, capsys):
    d, model, data = setup
    for cmd, extra in (("tune-router", []), ("finetune", ["--fsdp"])):
        code, out, err = run(capsys, cmd, "--model", model, "--data", data, "--out", d / cmd, "--max-steps", 2,
                             "--batch-size", 2, "--json", *extra)
        assert code == 0, err
        assert (d / cmd / "adapter.json").exists()
        manifest = json.loads((d / cmd / "adapter.json").read_text())
        # --fsdp reaches the config; one process has nothing to shard over, so it trains as before
        assert manifest["config"]["fsdp"] == bool(extra) and manifest["metrics"]["fsdp"] is False
        code, out, _ = run(capsys, "evaluate", "--model", model, "--data", data, "--adapter", d / cmd, "--json",
                           "--max-new-tokens", 3)
        assert code == 0 and json.loads(out)["n"] == 3
    run(capsys, "count", "--model", model, "--data", data, "--out", d / "c2.pt")
    run(capsys, "select", "--counts", d / "c2.pt", "--n", 1, "--out", d / "e2.json")
    code, out, err = run(capsys, "ceft", "--model", model, "--data", data, "--experts", d / "e2.json", "--out",
                         d / "ceft", "--max-steps", 2, "--batch-size", 2, "--json")
    assert code == 0, err
    assert json.loads(out)["out"] == str(d / "ceft")
    code, out, err = run(capsys, "tune-router", "--model", model, "--data", data, "--out", d / "tune-router",
                         "--max-steps", 2, "--batch-size", 2, "--resume", "--json")
    assert code == 0, err
