"""``routerlens inspect``: the spec and self-checks of a loaded model, and from config.json alone (meta device,
no weights) for every family of the family table, checked against the table's own expert counts."""
import json
import time

import pytest

from families import cases
from routerlens_interp.cli.commands import main
from routerlens_interp.cli.inspect import ranges

CASES = cases()


@pytest.fixture(autouse=True)
def _quiet_loading():
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


def _inspect(capsys, *argv):
    code = main(["inspect", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_ranges():
    assert ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert ranges([]) == "none" and ranges([3]) == "3"


@pytest.fixture(scope="module")
def config_dirs(tmp_path_factory):
    """Family → a directory holding only the family's tiny config.json (no weights, no tokenizer)."""
    root = tmp_path_factory.mktemp("configs")
    out = {}
    for name, case in CASES.items():
        case.config().save_pretrained(root / name)
        assert not any(p.suffix == ".safetensors" for p in (root / name).iterdir())
        out[name] = root / name
    return out


@pytest.mark.parametrize("family", sorted(CASES))
def test_config_only_on_every_family(family, config_dirs, capsys):
    case = CASES[family]
    t0 = time.perf_counter()
    code, out, err = _inspect(capsys, "--model", config_dirs[family], "--config-only", "--json")
    assert time.perf_counter() - t0 < 20  # meta device: no weights are built
    if case.unsupported:
        lines = [l for l in err.splitlines() if "error:" in l]
        assert code == 2 and len(lines) == 1 and f"({case.model_type or family})" in lines[0], err
        assert "cannot be supported" in lines[0]
        return
    assert code == 0, err
    rec = json.loads(out)
    assert rec["family"] == (case.model_type or family)
    assert rec["n_experts"] == case.n_experts and rec["top_k"] == case.top_k
    assert rec["dense_layers"] == sorted(case.dense_layers)
    assert rec["moe_layers"] == [l for l in range(rec["n_layers"]) if l not in case.dense_layers]
    assert set(rec["checks"]) == {"reroute", "lens", "attention_rows", "attention_probe"}
    assert rec["checks"]["reroute"] == "not run (config only)"
    assert rec["hook_points"]["blocks.L.router.hook_logits"] == ranges(rec["moe_layers"])
    assert rec["parameters"] > 0 and "dtype" not in rec  # nothing was loaded
    assert rec["implementation"] == "native transformers"


def test_config_only_counts_parameters_like_a_real_model(config_dirs, capsys, tiny_paths):
    """The meta-device count equals the parameters of the same config built for real."""
    import tiny

    code, out, _ = _inspect(capsys, "--model", tiny_paths["mixtral"], "--config-only", "--json")
    assert code == 0
    assert json.loads(out)["parameters"] == sum(p.numel() for p in tiny.build("mixtral").parameters())


def test_config_only_human_screen(config_dirs, capsys):
    code, out, _ = _inspect(capsys, "--model", config_dirs["qwen2_moe"], "--config-only")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) <= 24
    text = "\n".join(lines)
    for needle in ("qwen2_moe", "MoE layers 1-2", "dense 0", "8 routed per MoE layer, top-2", "shared shared_expert",
                   "softmax_topk", "router.hook_logits, router.hook_choice, router.hook_select, experts.hook_route} for L in [1-2]", "reroute: not run (config only)"):
        assert needle in text, needle


def test_loaded_model_runs_the_self_checks(tiny_paths, capsys):
    code, out, err = _inspect(capsys, "--model", tiny_paths["deepseek_v2"], "--json")
    assert code == 0, err
    rec = json.loads(out)
    assert rec["family"] == "deepseek_v2" and rec["dense_layers"] == [0] and rec["n_experts"] == 8
    assert rec["checks"]["reroute"] == "pass" and rec["checks"]["lens"] == "pass"
    assert rec["checks"]["attention_rows"].startswith("pass") and rec["lens"] == "available"
    assert rec["dtype"] == "torch.float32" and rec["devices"] == ["cpu"]


def test_toy_by_name_config_only(capsys):
    code, out, _ = _inspect(capsys, "--config-only", "--json")
    rec = json.loads(out)
    assert code == 0 and rec["model"] == "toy" and rec["n_experts"] == 64 and rec["top_k"] == 8


@pytest.mark.parametrize("config_only", [True, False])
def test_dense_model_is_one_line(tmp_path, capsys, config_only):
    import tiny
    import transformers as tf

    cfg = tf.LlamaConfig(**tiny.COMMON)
    if config_only:
        cfg.save_pretrained(tmp_path)
    else:
        tf.LlamaForCausalLM(cfg).save_pretrained(tmp_path)
        tiny.tokenizer().save_pretrained(tmp_path)
    code, out, err = _inspect(capsys, "--model", tmp_path, *(["--config-only"] if config_only else []))
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and not out, err
    assert lines[0].startswith("routerlens inspect: error: ") and "is not an MoE model" in lines[0]
    assert "Supported: " in lines[0] and "OLMoE" in lines[0]


def test_missing_config_is_one_line(tmp_path, capsys):
    code, _, err = _inspect(capsys, "--model", tmp_path, "--config-only")
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and "without a config.json" in lines[0]
