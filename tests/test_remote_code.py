"""Remote-code MoE layouts (experts as an ``nn.ModuleList`` of per-expert MLPs), loaded with
``trust_remote_code=True`` from a local directory, checked stage by stage like the native families: against
hand-written MoE blocks computed from the gate's and the experts' own weights, never through the hook layer.

With ``ROUTERLENS_FAMILY_REPORT=path.json`` (``make families``, run after ``test_families.py``) the stage results
are added to that report as rows ``<family> (remote code)``, so the README's architectures table shows them."""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import remote_models  # noqa: E402
from remote_oracle import BlockIO, _down, _scores, minicpm_routing, moe_block, route_weights  # noqa: E402
import tiny  # noqa: E402

import routerlens_interp as rl  # noqa: E402
from routerlens_interp.hooks import check_lens, check_reroute  # noqa: E402

TEXTS = ["Alice Smith was born in 1950 in Paris.", "Where was Bob Jones born? He lives in Rome and paints."]
EX = rl.QAExample(context="Alice Smith was born in Paris.", question="Where was Alice born?", answers=["Paris"])


def _quiet_load(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rl.load(path, **kw)


LAYOUTS = ["minicpm_moe", "deepseek_v2_remote", "deepseek_v3_remote"]
_CACHE: dict[str, object] = {}
REPORT: dict[str, dict[str, str]] = {}
ROUTING: dict[str, str] = {}


def _record(lm, stage: str, status: str = "ok") -> None:
    row = f"{lm.spec.family} (remote code)"
    ROUTING[row] = lm.spec.routing
    REPORT.setdefault(row, {"load": f"ok (experts kept as a ModuleList; {lm.spec.implementation.split(':')[0]})",
                            "tl": "no adapter: TransformerLens bridges transformers' own classes only"})[stage] = status


@pytest.fixture(scope="module", autouse=True)
def _write_report():
    yield
    path = os.environ.get("ROUTERLENS_FAMILY_REPORT")
    if path and REPORT:  # merged into the family suite's report (written first, by test_families.py)
        report = json.load(open(path)) if os.path.exists(path) else {"results": {}, "cases": {}}
        report["results"].update(REPORT)
        report["cases"].update({r: {"routing": ROUTING[r], "multimodal": False, "unsupported": None} for r in REPORT})
        with open(path, "w") as f:
            json.dump(report, f, indent=1, sort_keys=True)


@pytest.fixture(scope="module", params=LAYOUTS)
def minicpm(request, tmp_path_factory):
    """Each remote-code layout in turn (named for the first: MiniCPM-MoE's w1/w2/w3 + linear gate; then
    DeepSeek-V2's remote MoEGate with the top-k inside the gate and shared experts; then DeepSeek-V3's, whose
    weights are gathered from unbiased sigmoid scores at experts chosen on biased ones)."""
    if request.param not in _CACHE:
        path = remote_models.save(request.param, tmp_path_factory.mktemp("rc") / request.param)
        _CACHE[request.param] = _quiet_load(path, trust_remote_code=True)
    return _CACHE[request.param]


def _ids(lm, text=TEXTS[0]):
    return torch.tensor([lm.tokenizer(text)["input_ids"]])


# ----------------------------------------------------------------------------------------------------- spec
def test_spec_and_implementation(minicpm):
    s = minicpm.spec
    if s.family == "minicpm":
        assert (s.n_experts, s.top_k, s.moe_layers, s.shared_experts_attr) == (8, 2, [0, 1, 2], None)
        assert s.logit_scale == ("divide", 4.0)  # hidden_size / dim_model_base
        assert s.routing_scope_attr == "mlp"  # a Linear gate: the block decides the top-k
        module = "modeling_minicpm_moe_test"
    else:
        assert s.family in ("deepseek_v2", "deepseek_v3")
        assert (s.n_experts, s.top_k, s.moe_layers, s.shared_experts_attr) == (16, 4, [1, 2], "shared_experts")
        assert s.routing_scope_attr == "mlp.gate"
        assert s.routing_params["routed_scaling_factor"] == (1.5 if s.family == "deepseek_v2" else 2.5)
        module = "modeling_deepseek_test"
    assert s.experts_kind == "module_list" and s.router_attr == "gate" and s.experts_attr == "experts"
    assert s.implementation.startswith("remote code: transformers_modules.") and module in s.implementation
    assert "remote code" in repr(minicpm) and "module_list" in repr(minicpm)
    _record(minicpm, "load", f"ok (experts kept as a ModuleList; {s.implementation.split(':')[0]})")


def test_native_families_say_native(tmp_path):
    """A trust_remote_code=True load of a checkpoint without remote code picks transformers' own class."""
    lm = _quiet_load(tiny.save("deepseek_v2", tmp_path / "ds2"), trust_remote_code=True)
    assert lm.spec.implementation == "transformers native" and lm.spec.experts_kind == "fused"
    assert "transformers native" in repr(lm)


# --------------------------------------------------------------------------------------------------- stages
def test_counts_equal_the_gates_topk(minicpm):
    counts = rl.count_experts(minicpm, TEXTS, batch_size=1, with_answer=False)
    s = minicpm.spec
    expected = torch.zeros(len(s.moe_layers), s.n_experts, dtype=torch.long)
    for t in TEXTS:
        with BlockIO(minicpm) as io, torch.no_grad():
            minicpm.hf(_ids(minicpm, t))
        for r, l in enumerate(minicpm.spec.moe_layers):
            idx, _ = minicpm_routing(minicpm.spec.moe_block(minicpm.hf, l), io.inp[l])
            expected[r] += torch.bincount(idx.reshape(-1), minlength=s.n_experts)
    assert torch.equal(counts.counts, expected)
    _record(minicpm, "count")


def test_trace_routing_is_the_gates_own(minicpm):
    tr = minicpm.trace([EX], lens=True)
    enc = minicpm.encode(EX)
    with BlockIO(minicpm) as io, torch.no_grad():
        minicpm.hf(enc.input_ids[None])
    for l in minicpm.spec.moe_layers:
        idx, w = minicpm_routing(minicpm.spec.moe_block(minicpm.hf, l), io.inp[l])
        got_i, got_w = tr.routing[l].indices[0], tr.routing[l].weights[0]
        n = got_i.shape[0]
        o1, o2 = got_i.sort(-1), idx[:n].sort(-1)  # DeepSeek's top-k is unsorted
        assert torch.equal(o1.values, o2.values)
        torch.testing.assert_close(got_w.float().gather(1, o1.indices), w[:n].gather(1, o2.indices), rtol=1e-6, atol=1e-7)
    _record(minicpm, "trace")


def test_taps_leave_the_model_bit_identical(minicpm):
    ids = _ids(minicpm)
    with torch.no_grad():
        ref = minicpm.hf(ids).logits
    seen = []
    with minicpm.hooks.read("blocks.1.router.hook_logits", seen.append), \
            minicpm.hooks.edit("blocks.1.experts.hook_route", lambda i, w: w * torch.ones_like(w)), \
            minicpm.hooks.edit("blocks.2.experts.hook_route", lambda i, w: w * torch.ones_like(w)), torch.no_grad():
        got = minicpm.hf(ids).logits
    assert seen and torch.equal(got, ref)
    assert check_reroute(minicpm) == {}


@pytest.mark.parametrize("train_mode", [False, True], ids=["eval-sorted-dispatch", "train-loop"])
def test_reroute_equals_hand_written_block(minicpm, train_mode):
    ids = _ids(minicpm, TEXTS[1])
    first, last = minicpm.spec.moe_layers[0], minicpm.spec.moe_layers[-1]
    mask = {first: [1, 6], last: [0, 3, 5]}
    with torch.no_grad():
        before = minicpm.hf(ids).logits
    minicpm.hf.train(train_mode)
    try:
        with rl.mask_experts(minicpm, mask) as clean, BlockIO(minicpm) as io, torch.no_grad():
            seen = {l: [] for l in mask}
            with minicpm.hooks.read(f"blocks.{first}.experts.hook_route", lambda i, w: seen[first].append(i)), \
                    minicpm.hooks.read(f"blocks.{last}.experts.hook_route", lambda i, w: seen[last].append(i)):
                minicpm.hf(ids)
    finally:
        minicpm.hf.eval()
    assert clean == mask
    for l, ex in mask.items():
        bad = torch.zeros(minicpm.spec.n_experts, dtype=torch.bool)
        bad[ex] = True
        idx = seen[l][0]
        assert not bad[idx].any() and all(len(set(r.tolist())) == minicpm.spec.top_k for r in idx)
        blk = minicpm.spec.moe_block(minicpm.hf, l)
        want_i, _ = minicpm_routing(blk, io.inp[l], bad)
        assert torch.equal(idx.sort(-1).values, want_i.sort(-1).values)
        torch.testing.assert_close(io.out[l], moe_block(blk, io.inp[l], bad), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(minicpm.hf(ids).logits, before)  # undone on exit
    _record(minicpm, "reroute", f"exact ({minicpm.spec.routing}, checked against the hand-written rule)")


@pytest.mark.parametrize("train_mode", [False, True], ids=["eval-sorted-dispatch", "train-loop"])
def test_zero_equals_dropped_expert(minicpm, train_mode):
    ids = _ids(minicpm, TEXTS[1])
    mask = {1: [0, 2, 7]}  # layer 1 is an MoE layer of both layouts
    minicpm.hf.train(train_mode)
    try:
        with torch.no_grad():
            plain = minicpm.hf(ids).logits
        with rl.mask_experts(minicpm, mask, mode="zero"), BlockIO(minicpm) as io, torch.no_grad():
            got = minicpm.hf(ids).logits
        blk = minicpm.spec.moe_block(minicpm.hf, 1)
        torch.testing.assert_close(io.out[1], moe_block(blk, io.inp[1], dropped=mask[1]), rtol=1e-5, atol=1e-6)
        # and the whole model against zeroed down projections of the masked experts
        saved = [(_down(blk.experts[e]).weight, _down(blk.experts[e]).weight.detach().clone()) for e in mask[1]]
        with torch.no_grad():
            for p, _ in saved:
                p.zero_()
            want = minicpm.hf(ids).logits
            for p, d in saved:
                p.copy_(d)
    finally:
        minicpm.hf.eval()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.equal(got, plain)
    _record(minicpm, "zero")


def test_lens_and_knockout(minicpm):
    assert check_lens(minicpm) is None  # MiniCPM's lm_head(h / (H / dim_model_base)) reproduced
    ids = _ids(minicpm)
    tr = minicpm.trace(TEXTS[0], routing=False, attention=False, lens=True, lens_targets=[5], query=[ids.shape[1] - 1])
    with torch.no_grad():
        p = minicpm.hf(ids).logits[0, -1].float().softmax(-1)[5]
    torch.testing.assert_close(tr.lens[0, -1], p, rtol=1e-4, atol=1e-6)
    enc = minicpm.encode(EX)
    keys = enc.span("answer_in_context").tolist()
    pats = []
    with minicpm.hooks.read("blocks.0.attn.hook_pattern", lambda p: pats.append(p[0, :, enc.last_prompt])):
        with rl.knock_out_attention(minicpm, [0], enc.last_prompt, keys, len(enc.input_ids)), torch.no_grad():
            minicpm.hf(enc.input_ids[None])
    assert float(pats[0][:, keys].abs().max()) == 0.0
    _record(minicpm, "lens", "ok" + (f" (logits {minicpm.spec.logit_scale[0]} {minicpm.spec.logit_scale[1]:g})"
                                     if minicpm.spec.logit_scale else ""))


def test_steering_boost_picks_the_expert(minicpm):
    ids = _ids(minicpm)
    seen = []
    beta = 50.0  # above any logit gap of these routers, small enough that no softmax score underflows to a tie
    with BlockIO(minicpm) as io, rl.boost_experts(minicpm, {1: [4]}, beta=beta), \
            minicpm.hooks.read("blocks.1.experts.hook_route", lambda i, w: seen.append((i, w))), torch.no_grad():
        minicpm.hf(ids)
    idx, w = seen[0]
    assert bool((idx == 4).any(-1).all())  # every token gets expert 4
    # the weights are the family's own, computed from the boosted logits
    blk = minicpm.spec.moe_block(minicpm.hf, 1)
    bias = torch.zeros(minicpm.spec.n_experts)
    bias[4] = beta
    want = route_weights(blk, _scores(blk, io.inp[1], bias=bias).gather(1, idx.long()))
    torch.testing.assert_close(w.float(), want, rtol=1e-5, atol=1e-6)


def test_attribution_is_the_gradient_of_each_experts_output_scale(minicpm):
    data = [EX, rl.QAExample(context="Bob Jones lives in Rome.", question="Where does Bob live?", answers=["Rome"])]
    sc = rl.attribute_experts(minicpm, data, metric="answer", batch_size=len(data))
    assert sc.scores.abs().sum() > 0
    # independent: d metric / d alpha_e with every expert e's output scaled by alpha_e (plain hooks, train-mode
    # blocks, whose dispatch is differentiable), all layers at once
    from routerlens_interp.ces.objective import build_items, forward_metric

    items = build_items(minicpm, data, "answer", "first")
    s = minicpm.spec
    E = s.n_experts
    alphas = {(l, e): torch.ones((), requires_grad=True) for l in s.moe_layers for e in range(E)}
    handles = [s.experts(minicpm.hf, l)[e].register_forward_hook(lambda m, a, o, k=(l, e): o * alphas[k])
               for l, e in alphas]
    blocks = [s.moe_block(minicpm.hf, l) for l in s.moe_layers]
    try:
        for b in blocks:
            b.train()
        m = forward_metric(minicpm, [it for ex in items for it in ex]) / len(items)
        grads = torch.autograd.grad(m, list(alphas.values()), allow_unused=True)
    finally:
        for h in handles:
            h.remove()
        for b in blocks:
            b.eval()
    want = torch.tensor([[0.0 if g is None else float(g) for g in grads[r * E:(r + 1) * E]]
                         for r in range(len(s.moe_layers))], dtype=torch.float64)
    torch.testing.assert_close(sc.scores.double(), want, rtol=1e-4, atol=1e-7)


def test_ceft_trains_only_the_chosen_experts(minicpm, tmp_path):
    from routerlens_interp.train.params import expert_trainable

    s = minicpm.spec
    table = {1: [2, 5]}
    before = {n: p.detach().clone() for n, p in minicpm.hf.named_parameters()}
    with expert_trainable(minicpm, table) as t:
        trainable = {n for n, p in minicpm.hf.named_parameters() if p.requires_grad}
        names = ("w1", "w2", "w3") if s.family == "minicpm" else ("gate_proj", "up_proj", "down_proj")
        assert trainable == set(t.params) == {f"model.layers.1.mlp.experts.{e}.{w}.weight" for e in (2, 5)
                                              for w in names}
        assert all(ix is None for ix in t.index.values())
    data = [EX] * 4
    ad = rl.ceft(minicpm, data, experts=table, max_steps=2, batch_size=2, lr=1e-2, progress=False,
                 out_dir=tmp_path / "ceft")
    after = dict(minicpm.hf.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in before.items())  # base restored
    changed = {n for n, v in ad.tensors.items() if not torch.equal(v, before[n])}
    assert changed and changed <= set(ad.tensors) == trainable
    # adapter round trip: save → load → apply equals the base with the trained tensors written in by hand
    loaded = rl.load_adapter(tmp_path / "ceft", minicpm)
    ids = _ids(minicpm)
    with loaded.applied(minicpm), torch.no_grad():
        got = minicpm.hf(ids).logits
        assert all(torch.equal(after[n], loaded.tensors[n]) for n in loaded.tensors)
    with torch.no_grad():
        for n, v in ad.tensors.items():
            after[n].copy_(v)
        want = minicpm.hf(ids).logits
        for n, v in before.items():
            after[n].copy_(v)
    assert torch.equal(got, want) and not torch.equal(got, minicpm.hf(ids).logits.detach())


@pytest.mark.parametrize("mode", ["reroute", "zero"])
def test_board_and_evaluate_under_a_mask(minicpm, mode):
    """The live-ablation panel and generation (EM/F1) run the remote-code model through the same masks."""
    from routerlens_interp.evaluation.generate import generate
    from routerlens_interp.board.widgets import AblationPanel

    mask = {1: [0, 3]}

    def n_hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in minicpm.hf.modules())

    hooks = n_hooks()
    panel = AblationPanel(minicpm, EX, presets={"A": mask}, mode=mode)
    r = panel.run_preset("A")
    assert n_hooks() == hooks and r["error"] is None and r["experts"] == mask
    enc = minicpm.encode(EX)
    with rl.mask_experts(minicpm, mask, mode), torch.no_grad():
        p = minicpm.hf(enc.input_ids[None]).logits[0, enc.last_prompt].float().softmax(-1)[int(enc.answer_ids[0])]
        answer = generate(minicpm, [EX], max_new_tokens=16)[0]
    assert r["p_answer"] == pytest.approx(float(p), rel=1e-5) and r["answer"] == answer
    with rl.mask_experts(minicpm, mask, mode):
        scores = rl.evaluate(minicpm, [EX], max_new_tokens=8)
    assert scores["n"] == 1 and 0.0 <= scores["em"] <= 1.0
    assert n_hooks() == hooks


def test_weights_the_family_does_not_apply_are_refused(minicpm):
    """A block whose output is not Σ w · expert(x) with the weights followed from its top-k (here: doubled by a
    plain hook) is refused on its first forward, and from then on, rather than read with wrong weights."""
    from routerlens_interp.model import from_hf

    lm2 = from_hf(minicpm.hf, minicpm.tokenizer)  # a fresh hook layer: nothing checked yet
    l = lm2.spec.moe_layers[0]
    h = lm2.spec.moe_block(lm2.hf, l).register_forward_hook(lambda m, a, o: o * 2)
    try:
        for _ in range(2):
            with pytest.raises(NotImplementedError, match="routing weights cannot be read"):
                rl.count_experts(lm2, TEXTS[:1], batch_size=1, with_answer=False)
    finally:
        h.remove()
    assert l in lm2.hooks.list_refused and not minicpm.hooks.list_refused


def test_router_tuning_round_trip(minicpm, tmp_path):
    """RT trains the [E, H] gates only; the saved adapter applied equals the gates written in by hand."""
    before = {n: p.detach().clone() for n, p in minicpm.hf.named_parameters()}
    ad = rl.tune_router(minicpm, [EX] * 4, max_steps=2, batch_size=2, lr=1e-2, progress=False, out_dir=tmp_path / "rt")
    assert set(ad.tensors) == {f"model.layers.{l}.mlp.gate.weight" for l in minicpm.spec.moe_layers}
    params = dict(minicpm.hf.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in before.items())
    loaded = rl.load_adapter(tmp_path / "rt", minicpm)
    ids = _ids(minicpm)
    with loaded.applied(minicpm), torch.no_grad():
        got = minicpm.hf(ids).logits
    with torch.no_grad():
        for n, v in ad.tensors.items():
            params[n].copy_(v)
        want = minicpm.hf(ids).logits
        for n, v in before.items():
            params[n].copy_(v)
    assert torch.equal(got, want) and any(not torch.equal(v, before[n]) for n, v in ad.tensors.items())


def test_ceft_refuses_an_inference_only_dispatch(minicpm, monkeypatch):
    """Remote code that runs its experts under no_grad even in training mode would train nothing: refused."""
    for l in minicpm.spec.moe_layers:  # on the instances: nnsight (used by earlier traces) binds forward there
        blk = minicpm.spec.moe_block(minicpm.hf, l)
        monkeypatch.setattr(blk, "forward", lambda h, f=blk.forward: torch.no_grad()(f)(h))
    before = {n: (p.detach().clone(), p.requires_grad) for n, p in minicpm.hf.named_parameters()}
    try:
        with pytest.raises(NotImplementedError, match="under torch.no_grad in training mode"):
            rl.ceft(minicpm, [EX] * 2, experts={minicpm.spec.moe_layers[0]: [0, 1, 2, 3]}, max_steps=1, batch_size=2,
                    progress=False)
    finally:
        minicpm.hf.eval()
    assert all(torch.equal(p, before[n][0]) and p.requires_grad == before[n][1] for n, p in minicpm.hf.named_parameters())
