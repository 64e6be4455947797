"""Route vectors (rl.route_vector / rl.steer_route_vector) against plain PyTorch hooks on the router module and
the hand-written routing rule of the family (tests/routing_oracle.py), one unpadded example at a time."""
from __future__ import annotations

import pytest
import torch

import routerlens_interp as rl
from routerlens_interp.errors import UserError
from routerlens_interp.evaluation.generate import generate
from routerlens_interp.prompts import encode
from routing_oracle import route
from test_ces import DATA, olmoe  # noqa: F401  (the fixture)


def _router_logits(lm, ids):
    """{layer: logits [T, E]} from forward hooks on the router modules (not the hook layer)."""
    got, hs = {}, []
    for l in lm.spec.moe_layers:
        hs.append(lm.spec.router(lm.hf, l).register_forward_hook(
            lambda m, a, out, l=l: got.__setitem__(l, out[0].detach().double().clone())))
    try:
        with torch.no_grad():
            lm.hf(input_ids=ids)
    finally:
        for h in hs:
            h.remove()
    return got


def _means(lm, data):
    L = lm.spec.moe_layers
    last = {l: [] for l in L}
    rest = {l: [] for l in L}
    for ex in data:
        got = _router_logits(lm, encode(lm.tokenizer, ex).input_ids[None])
        for l in L:
            last[l].append(got[l][-1])
            rest[l].append(got[l][:-1])
    return {l: torch.stack([torch.stack(last[l]).mean(0), torch.cat(rest[l]).mean(0)]) for l in L}


def test_vector_is_the_mean_difference(olmoe):
    lm = olmoe
    toward, away = DATA[:2], DATA[2:]
    v = rl.route_vector(lm, toward, away, batch_size=2)  # left-padded batches: padding is not averaged
    mt, ma = _means(lm, toward), _means(lm, away)
    assert v.values.shape == (len(lm.spec.moe_layers), 2, lm.spec.n_experts) and (v.n_toward, v.n_away) == (2, len(DATA) - 2)
    for i, l in enumerate(lm.spec.moe_layers):
        torch.testing.assert_close(v.values[i].double(), mt[l] - ma[l], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(v.toward[i].double(), mt[l], rtol=1e-4, atol=1e-5)  # what replace steers to
    assert v.values.abs().max() > 1e-3  # the two sides route differently: the check above can fail


def _question_means(lm, data):
    out = {l: [] for l in lm.spec.moe_layers}
    for ex in data:
        e = encode(lm.tokenizer, ex)
        got = _router_logits(lm, e.input_ids[None])
        for l in out:
            out[l].append(got[l][e.question])
    return {l: torch.cat(v).mean(0) for l, v in out.items()}


def test_question_vector_is_the_mean_difference_over_question_tokens(olmoe):
    lm = olmoe
    v = rl.route_vector(lm, DATA[:2], DATA[2:], batch_size=2)
    qt, qa = _question_means(lm, DATA[:2]), _question_means(lm, DATA[2:])
    assert v.question.shape == (len(lm.spec.moe_layers), lm.spec.n_experts)
    for i, l in enumerate(lm.spec.moe_layers):
        torch.testing.assert_close(v.question[i].double(), qt[l] - qa[l], rtol=1e-4, atol=1e-5)
    assert v.question.abs().max() > 1e-3


def _steered_alone(lm, ex, vec, scale, mode="add", rest=None, question=0.0):
    """Last-position logits ``[V]`` of one unpadded prompt with ``scale·v`` added to each router's logits (or,
    ``replace``, its last row moved ``scale`` of the way to the toward mean) by a forward hook that re-routes with
    the family's hand-written rule (independent of the hook layer)."""
    hs = []
    for i, l in enumerate(lm.spec.moe_layers):
        def hook(m, a, out, i=i):
            logits = out[0]
            add = torch.empty_like(logits)
            add[:-1], add[-1] = vec.values[i, 1] * scale, vec.values[i, 0] * scale
            if mode == "replace":
                add[:-1], add[-1] = 0, scale * (vec.toward[i, 0] - logits[-1])
            if rest is not None:
                add[:-1] = vec.values[i, 1] * rest
            add[encode(lm.tokenizer, ex).question] += vec.question[i] * question
            edited = logits + add
            w, idx = route(lm.spec.routing, edited, m)
            return (edited, w, idx)
        hs.append(lm.spec.router(lm.hf, l).register_forward_hook(hook))
    try:
        with torch.no_grad():
            return lm.hf(input_ids=encode(lm.tokenizer, ex).input_ids[None]).logits[0, -1]
    finally:
        for h in hs:
            h.remove()


@pytest.mark.parametrize("scale,mode", [(1.0, "add"), (4.0, "add"), (1.0, "replace"), (0.5, "replace")])
def test_steering_matches_a_hand_written_router(olmoe, scale, mode):
    lm = olmoe
    vec = rl.route_vector(lm, DATA[:2], DATA[2:])
    enc = [encode(lm.tokenizer, ex) for ex in DATA]
    b = lm.batch(enc, side="left")
    assert len({e.prompt_len for e in enc}) > 1  # padding really happens
    with torch.no_grad():
        plain = lm.hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, -1]
        with rl.steer_route_vector(lm, vec, scale, mode=mode):
            got = lm.hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, -1]
    want = torch.stack([_steered_alone(lm, ex, vec, scale, mode) for ex in DATA])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (got - plain).abs().max() > 1e-2  # the steering changes the answer's logits


@pytest.mark.parametrize("mode", ["add", "replace"])
def test_rest_and_question_scales_match_a_hand_written_router(olmoe, mode):
    """Inside rl.generate (which announces the question's positions), against per-example hooks."""
    lm = olmoe
    vec = rl.route_vector(lm, DATA[:2], DATA[2:])
    got = []
    h = lm.hf.register_forward_hook(lambda m, a, out: got.append(out.logits[:, -1].detach().clone()))
    try:
        with rl.steer_route_vector(lm, vec, 1.0, mode=mode, rest_scale=3.0, question_scale=2.0):
            generate(lm, DATA, max_new_tokens=1, batch_size=len(DATA))
    finally:
        h.remove()
    want = torch.stack([_steered_alone(lm, ex, vec, 1.0, mode, rest=3.0, question=2.0) for ex in DATA])
    no_q = torch.stack([_steered_alone(lm, ex, vec, 1.0, mode, rest=3.0) for ex in DATA])
    torch.testing.assert_close(got[0], want, rtol=1e-4, atol=1e-4)
    assert (want - no_q).abs().max() > 1e-2  # the question part changes the answer's logits
    ids = encode(lm.tokenizer, DATA[0]).input_ids[None]
    with pytest.raises(UserError, match="where each question is"), torch.no_grad(), \
            rl.steer_route_vector(lm, vec, 1.0, question_scale=2.0):
        lm.hf(input_ids=ids)
    with pytest.raises(UserError, match="question_scale must be finite"), \
            rl.steer_route_vector(lm, vec, 1.0, question_scale=float("inf")):
        pass


def test_scale_zero_is_bit_identical_and_undone(olmoe):
    lm = olmoe
    vec = rl.route_vector(lm, DATA[:2], DATA[2:])
    ids = encode(lm.tokenizer, DATA[0]).input_ids[None]
    with torch.no_grad():
        base = lm.hf(input_ids=ids).logits
        with rl.steer_route_vector(lm, vec, 0.0):
            zero = lm.hf(input_ids=ids).logits
        with rl.steer_route_vector(lm, vec, 0.0, mode="replace", at_decode=True):
            assert torch.equal(base, lm.hf(input_ids=ids).logits)
        with rl.steer_route_vector(lm, vec, 2.0):
            lm.hf(input_ids=ids)
        after = lm.hf(input_ids=ids).logits
    assert torch.equal(base, zero) and torch.equal(base, after)


def test_generation_and_bad_input(olmoe):
    lm = olmoe
    vec = rl.route_vector(lm, DATA[:2], DATA[2:])
    with rl.steer_route_vector(lm, vec, 2.0, at_decode=True):
        assert rl.evaluate(lm, DATA, max_new_tokens=3)["n"] == len(DATA)
    enc = [encode(lm.tokenizer, ex) for ex in DATA]
    b = lm.batch(enc, side="right")
    with pytest.raises(UserError, match="left-padded"), rl.steer_route_vector(lm, vec, 1.0), torch.no_grad():
        lm.hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    short = rl.RouteVector(vec.layers[:1], vec.values[:1], 2, 2)
    with pytest.raises(UserError, match="compute it on this model"), rl.steer_route_vector(lm, short, 1.0):
        pass
    bad = rl.RouteVector(vec.layers, vec.values, 2, 2)  # by hand: no toward means
    with pytest.raises(UserError, match="finite"), rl.steer_route_vector(lm, vec, float("nan")):
        pass
    with pytest.raises(UserError, match="'add' or 'replace'"), rl.steer_route_vector(lm, vec, 1.0, mode="set"):
        pass
    with pytest.raises(UserError, match="does not hold"), rl.steer_route_vector(lm, bad, 1.0, mode="replace"):
        pass
    with rl.steer_route_vector(lm, vec, 1.0, mode="replace", at_decode=True):
        assert rl.evaluate(lm, DATA, max_new_tokens=3)["n"] == len(DATA)
    with pytest.raises(UserError, match="both sides"):
        rl.route_vector(lm, [], DATA)


def test_save_load_round_trip_and_refusals(olmoe, tmp_path):
    lm = olmoe
    vec = rl.route_vector(lm, DATA[:2], DATA[2:])
    path = tmp_path / "v.safetensors"
    vec.save(path)
    back = rl.RouteVector.load(path, lm)
    assert torch.equal(back.values, vec.values) and back.layers == vec.layers and back.model == vec.model
    assert torch.equal(back.toward, vec.toward) and torch.equal(back.question, vec.question)
    rl.RouteVector(vec.layers, vec.values, 2, 2, vec.model).save(tmp_path / "n.safetensors")  # without toward means
    assert rl.RouteVector.load(tmp_path / "n.safetensors", lm).toward is None
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # flip bits inside the values
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="checksum"):
        rl.RouteVector.load(bad)
    other = rl.RouteVector(vec.layers, vec.values, 2, 1, "0" * 64)
    other.save(tmp_path / "o.safetensors")
    with pytest.raises(UserError, match="other routers"):
        rl.RouteVector.load(tmp_path / "o.safetensors", lm)
    with pytest.raises(UserError, match="no route-vector file"):
        rl.RouteVector.load(tmp_path / "none.safetensors")


def test_cli_route_vector_writes_what_the_api_computes(tmp_path, capsys):
    import json

    from routerlens_interp.cli import main

    out = tmp_path / "v.safetensors"
    common = ["--model", "toy", "--data", "toy-conflict", "--limit", "4", "--json"]
    assert main(["route-vector", *common, "--vector-limit", "6", "--scales", "0,4", "--open-data", "toy-open",
                 "--vector-out", str(out)]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    lm = rl.load("toy")
    want = rl.route_vector(lm, rl.load_dataset("toy-open", split="train", limit=6),
                           rl.load_dataset("toy-conflict", split="train", limit=6))
    torch.testing.assert_close(rl.RouteVector.load(out, lm).values, want.values)
    data = rl.load_dataset("toy-conflict", split="test", limit=4)
    with rl.steer_route_vector(lm, want, 4.0):
        em = rl.evaluate(lm, data)["em"]
    with rl.steer_route_vector(lm, want, 1.0, mode="replace"):
        em_replace = rl.evaluate(lm, data)["em"]
    assert [r["scale"] for r in got["rows"]] == [0.0, 4.0] and got["rows"][1]["em"] == pytest.approx(em)
    assert got["rows"][0]["em"] == pytest.approx(rl.evaluate(lm, data)["em"])
    # reuse the saved vector; bad input is one line, exit 2
    assert main(["route-vector", *common, "--vector", str(out), "--scales", "4"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"][0]["em"] == pytest.approx(em)
    assert main(["route-vector", *common, "--vector", str(out), "--mode", "replace"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["mode"] == "replace" and [r["scale"] for r in got["rows"]] == [0.0, 0.5, 1.0]
    assert got["rows"][2]["em"] == pytest.approx(em_replace)
    assert main(["route-vector", *common, "--vector", str(out), "--mode", "replace", "--scales", "1",
                 "--rest-scale", "8", "--question-scale", "2"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with rl.steer_route_vector(lm, want, 1.0, mode="replace", rest_scale=8.0, question_scale=2.0):
        assert got["rows"][0]["em"] == pytest.approx(rl.evaluate(lm, data)["em"])
    assert (got["rest_scale"], got["question_scale"]) == (8.0, 2.0)
    with pytest.raises(SystemExit) as e:  # argparse: one usage line, exit 2
        main(["route-vector", *common, "--question-scale", "inf"])
    assert e.value.code == 2 and "finite" in capsys.readouterr().err
    assert main(["route-vector", *common, "--scales", "2,x"]) == 2
    assert main(["route-vector", *common, "--vector", str(tmp_path / "missing.safetensors")]) == 2
    assert main(["route-vector", *common, "--vector-out", str(out)]) == 2  # exists: --overwrite


def test_benchmark_position_groups():
    """benchmarks/route_vector.py's position groups partition the prompt as their names say."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "route_vector.py"
    spec = importlib.util.spec_from_file_location("route_vector_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    lm = rl.load("toy")
    e = encode(lm.tokenizer, rl.load_dataset("toy-conflict", split="test", limit=1)[0])
    P = e.prompt_len
    m = {g: set(torch.nonzero(bench.group_mask(e, g)).flatten().tolist()) for g in bench.GROUPS}
    ctx, q = set(e.context.tolist()), set(e.question.tolist())
    assert m["last"] == {P - 1} and m["context"] == ctx and m["question"] == q and ctx and q
    assert m["answer_in_context"] == set(e.answer_in_context.tolist()) and m["answer_in_context"] <= ctx
    assert m["template"] == set(range(P)) - ctx - q - {P - 1} and m["template"]
    assert m["last+question"] == q | {P - 1} and m["prompt_not_last"] == set(range(P - 1)) and m["prompt"] == set(range(P))
