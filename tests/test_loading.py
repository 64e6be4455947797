"""Loading options (``--dtype``, ``--device-map``, ``--trust-remote-code``, ``--revision``) on the CLI and in
``rl.load``, reaching the model's *and* the tokenizer's ``from_pretrained``; weights read straight onto a
device; quantised loads refused with the reason unless opted in, and then described from the parameters."""
import json

import pytest
import torch

import routerlens_interp as rl
from routerlens_interp import model as model_mod
from routerlens_interp.cli.commands import build_parser, main
from routerlens_interp.errors import UserError
from routerlens_interp.arch.loading import loading_kwargs, parse_device_map

LOADING = ["evaluate", "count", "tune-router", "ceft", "finetune", "analyze", "knockout", "attribute", "contrast",
           "steer", "route-vector", "inspect"]
OPTIONS = ["--dtype", "--device-map", "--trust-remote-code", "--revision", "--device", "--allow-partial-quantization"]


@pytest.fixture(autouse=True)
def _quiet_loading():
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


def _sub(name):
    p = build_parser()
    action = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices[name]


@pytest.mark.parametrize("command", LOADING)
def test_every_loading_command_lists_the_loading_options(command):
    text = _sub(command).format_help()
    for opt in OPTIONS:
        assert opt in text, (command, opt)
    assert "auto,float32,bfloat16,float16" in text


@pytest.mark.parametrize("argv, flag", [
    (["--dtype", "int8"], "--dtype"),
    (["--dtype", "bf16"], "--dtype"),
    (["--device-map", "{not json"], "--device-map"),
    (["--device-map", "[1, 2]"], "--device-map"),
    (["--device-map", '{"model.layers.0": true}'], "--device-map"),
    (["--device-map", "everywhere"], "--device-map"),
])
def test_bad_loading_options_exit_2_before_loading(argv, flag, capsys, monkeypatch):
    from routerlens_interp.cli import commands as cli
    monkeypatch.setattr("routerlens_interp.cli.common.load_model", lambda *a, **k: pytest.fail("the command ran"))
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--data", "toy-open", *argv])
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if "error:" in l]
    assert e.value.code == 2 and len(lines) == 1 and f"argument {flag}" in lines[0] and "Traceback" not in err


def test_device_and_device_map_exclude_each_other(capsys):
    code = main(["evaluate", "--data", "toy-open", "--device", "cpu", "--device-map", "auto"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "exclude each other" in err[0]


def test_device_map_parsing():
    assert parse_device_map("auto") == "auto"
    m = parse_device_map('{"model.embed_tokens": 0, "model.layers.0": "cpu"}')
    assert m == {"model.embed_tokens": 0, "model.layers.0": "cpu"}


def test_loading_kwargs():
    kw, tok = loading_kwargs(device="cuda:1", dtype="bfloat16", trust_remote_code=True, revision="v2")
    assert kw == {"device_map": {"": "cuda:1"}, "dtype": torch.bfloat16, "trust_remote_code": True, "revision": "v2"}
    assert tok == {"trust_remote_code": True, "revision": "v2"}
    assert loading_kwargs(device="cpu") == ({}, {})
    assert loading_kwargs(dtype="auto")[0] == {"dtype": "auto"}
    assert loading_kwargs(hf_kwargs={"device_map": "auto"})[0] == {"device_map": "auto"}  # old spelling still works
    with pytest.raises(UserError, match="not both"):
        loading_kwargs(device="cuda", device_map="auto")
    with pytest.raises(UserError, match="not one of"):
        loading_kwargs(dtype="int4")


class _Spy:
    """Record the kwargs of the model's and the tokenizer's ``from_pretrained``, then load for real on the CPU."""

    def __init__(self, monkeypatch):
        import transformers

        self.model, self.tok = [], []
        real_model = transformers.AutoModelForCausalLM.from_pretrained.__func__
        real_tok = transformers.AutoTokenizer.from_pretrained.__func__

        def model_fp(cls, path, **kw):
            self.model.append(dict(kw))
            kw.pop("device_map", None)  # no GPU here: the placement is what is checked, not done
            return real_model(cls, path, **kw)

        def tok_fp(cls, path, **kw):
            self.tok.append(dict(kw))
            return real_tok(cls, path, **kw)

        monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(model_fp))
        monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(tok_fp))


def test_options_reach_model_and_tokenizer(monkeypatch, tiny_paths):
    """Fails on the old load: the tokenizer got no options, and the model no revision/trust_remote_code."""
    spy = _Spy(monkeypatch)
    lm = rl.load(tiny_paths["olmoe"], dtype="bfloat16", trust_remote_code=True, revision="main")
    assert spy.model[-1]["trust_remote_code"] is True and spy.model[-1]["revision"] == "main"
    assert spy.model[-1]["dtype"] is torch.bfloat16
    assert spy.tok[-1] == {"trust_remote_code": True, "revision": "main"}
    assert next(lm.hf.parameters()).dtype == torch.bfloat16


def test_cli_options_reach_model_and_tokenizer(monkeypatch, tiny_paths, capsys):
    spy = _Spy(monkeypatch)
    code = main(["inspect", "--model", tiny_paths["olmoe"], "--trust-remote-code", "--revision", "main",
                 "--dtype", "float16", "--json"])
    assert code == 0, capsys.readouterr().err
    assert spy.model[-1]["trust_remote_code"] is True and spy.model[-1]["revision"] == "main"
    assert spy.model[-1]["dtype"] is torch.float16
    assert spy.tok[-1] == {"trust_remote_code": True, "revision": "main"}


def test_device_reads_weights_onto_it_without_a_cpu_copy(monkeypatch, tiny_paths):
    """``device="cuda"`` → ``device_map={"": "cuda"}`` and no ``.to(device)`` afterwards (the old load built the
    model on the CPU and moved it: a model larger than host RAM could not load)."""
    spy = _Spy(monkeypatch)
    moved = []
    real_to = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(a) or real_to(self, *a, **k))
    try:
        rl.load(tiny_paths["olmoe"], device="cuda")
    except (AssertionError, RuntimeError) as err:  # CPU-only torch: only a .to("cuda") would get here
        pytest.fail(f"the model was moved after loading: {err}")
    assert spy.model[-1]["device_map"] == {"": "cuda"}
    assert not [a for a in moved if a and "cuda" in str(a[0])]


def test_real_bf16_load_through_the_cli(tiny_paths, capsys):
    """A tiny saved model loaded with ``--dtype bfloat16`` runs every self-check in bf16."""
    code = main(["inspect", "--model", tiny_paths["olmoe"], "--dtype", "bfloat16", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    rec = json.loads(out)
    assert rec["dtype"] == "torch.bfloat16" and rec["devices"] == ["cpu"]
    assert rec["checks"]["reroute"] == "pass" and rec["checks"]["lens"] == "pass"


# --- quantization --------------------------------------------------------------------------------------
BNB4 = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}


def test_quantization_config_is_refused_with_the_reason(tiny_paths):
    """Old load: handed to transformers, which quantises attention only (or fails without bitsandbytes)."""
    with pytest.raises(UserError) as e:
        rl.load(tiny_paths["olmoe"], quantization_config=BNB4)
    msg = str(e.value)
    assert "\n" not in msg
    for needle in ("4-bit bitsandbytes", "fused 3-D", "nn.Linear", "experts", "--dtype bfloat16 --device-map auto",
                   "--allow-partial-quantization"):
        assert needle in msg, needle


def test_other_quantization_methods_are_refused_without_the_bitsandbytes_reason(tiny_paths):
    with pytest.raises(UserError) as e:
        rl.load(tiny_paths["olmoe"], quantization_config={"quant_method": "fp8"})
    assert "fp8 quantization" in str(e.value) and "has not checked" in str(e.value)


def test_load_in_4bit_flag_is_refused(tiny_paths):
    with pytest.raises(UserError, match="load_in_4bit=True"):
        rl.load(tiny_paths["olmoe"], load_in_4bit=True)


@pytest.fixture
def prequantised(tiny_paths, tmp_path):
    """A copy of the tiny model whose config.json says it was saved quantised (as a hub NF4 checkpoint does)."""
    import shutil

    d = tmp_path / "nf4"
    shutil.copytree(tiny_paths["olmoe"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"] = BNB4
    (d / "config.json").write_text(json.dumps(cfg))
    return str(d)


def test_prequantised_checkpoint_is_refused_on_the_cli(prequantised, capsys):
    code = main(["inspect", "--model", prequantised])
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert code == 2 and len(err) == 1
    assert "the checkpoint's config.json" in err[0] and "fused 3-D" in err[0]


class Params4bit(torch.nn.Parameter):
    """Stands in for bitsandbytes' 4-bit parameter class (not installed here)."""


def test_opt_in_states_what_was_quantised(prequantised, tiny_paths, monkeypatch):
    """With the opt-in, ``lm.quantization`` and the repr say from the loaded parameters that attention was
    quantised and the experts were not; counts checked against the modules' own parameter counts."""
    real = model_mod._from_pretrained

    def fake_bnb(path, kw):  # what bitsandbytes does: nn.Linear modules only (here: attention's projections)
        hf = real(tiny_paths["olmoe"], kw)  # the same weights, without the quantization_config
        for m in hf.modules():
            if type(m) is torch.nn.Linear and m is not hf.lm_head:
                m.weight = Params4bit(m.weight.data, requires_grad=False)
        return hf

    monkeypatch.setattr(model_mod, "_from_pretrained", fake_bnb)
    lm = rl.load(prequantised, allow_partial_quantization=True)
    q = lm.quantization
    spec = lm.spec
    attn = [m for l in range(spec.n_layers) for m in spec.attention(lm.hf, l).modules()]
    lin = sum(m.weight.numel() for m in attn if type(m) is torch.nn.Linear)
    norms = sum(p.numel() for m in attn if type(m) is not torch.nn.Linear for p in m.parameters(recurse=False))
    experts = sum(p.numel() for l in spec.moe_layers for p in spec.experts(lm.hf, l).parameters())
    assert q["quantised"] == {"attention": lin}
    assert q["not_quantised"]["attention"] == norms  # OLMoE's q/k norms are no nn.Linear
    assert q["not_quantised"]["experts"] == experts and q["not_quantised"]["routers"] > 0
    assert "NOT quantised experts" in q["summary"] and "NOT quantised experts" in repr(lm)
    assert q["summary"] in lm.spec.notes
