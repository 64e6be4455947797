"""Adapters are checked before use: checksums and finite values of every tensor, the manifest schema,
the base fingerprint (or an explicit, loud ``trust_base``), and applying is all-or-nothing."""
from __future__ import annotations

import json
import struct
import warnings

import pytest
import torch

import routerlens_interp as rl
from routerlens_interp.cli.commands import main
from routerlens_interp.errors import IntegrityError
from routerlens_interp.train.adapters import Adapter, ExpertAdapter, RouterAdapter, fingerprint
from routerlens_interp.train.params import expert_tensor_names, router_param_names

ROWS = [{"context": "Bob lives in Rome.", "question": "Where does Bob live?", "answer": "Rome"},
        {"context": "Carol is a baker in Lima.", "question": "Where does Carol work?", "answer": "Lima"}]


def _manifest(lm, method, index, **extra):
    return {"method": method, "base_model": lm.name, "family": lm.spec.family,
            "base_fingerprint": fingerprint(lm, index), **extra}


def _router(lm, d):
    """A router adapter (base routers + noise) saved to ``d``; no training needed."""
    g = torch.Generator().manual_seed(0)
    params = dict(lm.hf.named_parameters())
    index = {n: None for n in router_param_names(lm)}
    tensors = {n: params[n].detach() + 0.1 * torch.randn(params[n].shape, generator=g) for n in index}
    RouterAdapter(tensors, index, _manifest(lm, "router", index)).save(d)
    return d


def _ceft(lm, d, experts=(1, 3)):
    g = torch.Generator().manual_seed(1)
    params = dict(lm.hf.named_parameters())
    layer = lm.spec.moe_layers[0]
    ids = torch.tensor(experts)
    index = {f"{lm.spec.experts_path(layer)}.{n}": ids for n in expert_tensor_names(lm, layer)}
    tensors = {n: params[n].detach()[ids] + 0.1 * torch.randn(params[n][ids].shape, generator=g) for n in index}
    ExpertAdapter(tensors, index, _manifest(lm, "ceft", index, experts={str(layer): list(experts)})).save(d)
    return d


def _edit_manifest(d, fn):
    m = json.loads((d / "adapter.json").read_text())
    fn(m)
    (d / "adapter.json").write_text(json.dumps(m))


def _overwrite_bytes(path, key):
    """Overwrite the data of tensor ``key`` with float32 NaNs, header intact (as a bad disk or a careless
    edit would)."""
    raw = bytearray(path.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    start, end = json.loads(raw[8:8 + n])[key]["data_offsets"]
    raw[8 + n + start:8 + n + end] = struct.pack("<f", float("nan")) * ((end - start) // 4)
    path.write_bytes(bytes(raw))


def _params(lm):
    return {k: v.detach().clone() for k, v in lm.hf.named_parameters()}


@pytest.fixture
def olmoe(load_tiny):
    return load_tiny("olmoe")


def test_round_trip_and_checksums_in_the_manifest(olmoe, tmp_path):
    d = _router(olmoe, tmp_path / "rt")
    m = json.loads((d / "adapter.json").read_text())
    assert m["version"] == 2 and set(m["sha256"]) == set(router_param_names(olmoe))
    with rl.load_adapter(d, olmoe).applied(olmoe):
        pass


def test_overwritten_tensor_bytes_are_refused_naming_file_and_tensor(olmoe, tmp_path):
    for make in (_router, _ceft):
        d = make(olmoe, tmp_path / make.__name__)
        key = sorted(json.loads((d / "adapter.json").read_text())["sha256"])[0]
        if key.endswith("::index"):
            key = key.replace("::index", "::slices")
        _overwrite_bytes(d / "adapter.safetensors", key)
        with pytest.raises(IntegrityError, match="SHA-256") as err:
            rl.load_adapter(d)
        assert str(d / "adapter.safetensors") in str(err.value) and key in str(err.value)
        # without checksums (an adapter from before them) the NaNs are still caught, with a warning to re-save
        _edit_manifest(d, lambda m: m.pop("sha256"))
        with pytest.warns(UserWarning, match="before adapters carried checksums"):
            with pytest.raises(IntegrityError, match=f"{key!r} holds NaN or infinite values"):
                rl.load_adapter(d)


def test_old_adapter_without_checksums_loads_with_a_warning_and_resaves_with_them(olmoe, tmp_path):
    d = _ceft(olmoe, tmp_path / "ce")
    _edit_manifest(d, lambda m: (m.pop("sha256"), m.update(version=1)))
    with pytest.warns(UserWarning, match=r"re-save it with rl.load_adapter\(DIR\).save\(DIR\)"):
        ad = rl.load_adapter(d, olmoe)
    ad.save(d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rl.load_adapter(d, olmoe).manifest["version"] == 2


BAD_MANIFESTS = {
    "bogus method": (lambda m: m.update(method="bogus"), "unknown method 'bogus'; known methods: router, ceft, fft"),
    "empty": (lambda m: m.clear(), "lacks the required key 'method'"),
    "wrong type": (lambda m: m.update(base_model=3), "'base_model' has the wrong type"),
    "bad fingerprint": (lambda m: m.update(base_fingerprint="abc"), "not 64 hex digits"),
    "not an object": (lambda m: None, "must hold a JSON object"),
    "other experts": (lambda m: m.update(experts={"0": [1, 2]}), r"lists experts \{0: \[1, 2\]\} but the stored "
                                                                 r"slices hold \{0: \[1, 3\]\}"),
    "float expert": (lambda m: m.update(experts={"0": [1, 3.5]}), "is not a list of integer expert ids"),
    "no experts": (lambda m: m.pop("experts"), "a ceft adapter must list its experts"),
    "n_trainable": (lambda m: m.update(n_trainable=5), "n_trainable 5 does not match"),
    "tensor not listed": (lambda m: m["sha256"].pop(next(iter(m["sha256"]))), "does not hold the tensors its "
                                                                              "manifest lists: unlisted"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_manifest_schema(olmoe, tmp_path, case):
    edit, message = BAD_MANIFESTS[case]
    d = _ceft(olmoe, tmp_path / "ce")
    if case == "not an object":
        (d / "adapter.json").write_text("[1, 2]")
    else:
        _edit_manifest(d, edit)
    with pytest.raises(IntegrityError, match=message) as err:
        rl.load_adapter(d)
    assert "adapter" in str(err.value)


def test_missing_base_fingerprint_needs_trust_base(olmoe, tmp_path, capsys):
    d = _router(olmoe, tmp_path / "rt")
    _edit_manifest(d, lambda m: m.pop("base_fingerprint"))
    with pytest.raises(IntegrityError, match=r"no base_fingerprint.*trust_base=True \(--trust-base\)"):
        rl.load_adapter(d)
    with pytest.warns(UserWarning, match="TRUSTING THE BASE MODEL"):
        ad = rl.load_adapter(d, olmoe, trust_base=True)
    with ad.applied(olmoe):
        pass
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    args = ["count", "--model", olmoe.name, "--data", str(data), "--adapter", str(d), "--out", str(tmp_path / "c")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()  # (the model's loading bar comes first)
    assert err[-1].startswith("routerlens count: error: ") and "--trust-base" in err[-1] and "Traceback" not in err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args + ["--trust-base"]) == 0
    assert "WARNING: --trust-base" in capsys.readouterr().err


@pytest.mark.parametrize("make", [_router, _ceft])
@pytest.mark.parametrize("how", ["applied", "merge"])
def test_applying_is_all_or_nothing(olmoe, tmp_path, monkeypatch, make, how):
    ad = rl.load_adapter(make(olmoe, tmp_path / "ad"), olmoe)
    assert len(ad.tensors) >= 2
    before = _params(olmoe)
    real, calls = Adapter._put, []

    def put(p, ids, value):  # the second tensor fails, after the first was written
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("write failed")
        return real(p, ids, value)

    monkeypatch.setattr(Adapter, "_put", staticmethod(put))
    with pytest.raises(RuntimeError, match="write failed"):
        if how == "applied":
            with ad.applied(olmoe):
                pass
        else:
            ad.merge(olmoe)
    assert len(calls) > 2  # the first write was made and then undone
    after = _params(olmoe)
    assert all(torch.equal(before[k], after[k]) for k in before)
    monkeypatch.undo()
    with ad.applied(olmoe):  # and it still applies and undoes normally
        assert not all(torch.equal(before[k], v) for k, v in _params(olmoe).items())
    assert all(torch.equal(before[k], v) for k, v in _params(olmoe).items())


def test_adapter_for_other_shapes_is_refused_before_anything_changes(olmoe, load_tiny, tmp_path):
    other = load_tiny("qwen2_moe")
    d = _router(olmoe, tmp_path / "rt")
    before = _params(other)
    with pytest.raises(ValueError, match="another base model"):
        with rl.load_adapter(d).applied(other, check=False):
            pass
    assert all(torch.equal(before[k], v) for k, v in _params(other).items())
