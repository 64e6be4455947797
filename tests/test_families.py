"""Every MoE family in transformers: loaded from a saved tiny checkpoint, then checked stage by stage against
independent computations (``family_oracle.py``). Each family either passes a stage or is refused with the
reason; set ``ROUTERLENS_FAMILY_REPORT=path.json`` to write the results (``make families`` turns them into
the architectures table in docs/architectures.md)."""
from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

import family_oracle as oracle
import families
import routerlens_interp as rl
from routerlens_interp.arch import NotMoEError, get_path
from routerlens_interp.hooks import RerouteUnavailable, check_lens, check_reroute

CASES = families.cases()
NAMES = sorted(CASES)
TEXTS = ["Alice Smith was born in 1950 in Paris.", "Where was Bob Jones born? He lives in Rome and paints.",
         "Question: When was Bob Jones born? Answer: 1972"]
REPORT: dict[str, dict[str, str]] = {}
_LOADED: dict[str, object] = {}


def _record(family: str, stage: str, status: str) -> None:
    REPORT.setdefault(family, {})[stage] = status


@pytest.fixture(scope="module", autouse=True)
def _write_report():
    yield
    path = os.environ.get("ROUTERLENS_FAMILY_REPORT")
    if path:
        cases = {n: {"routing": c.routing, "multimodal": c.multimodal, "unsupported": c.unsupported}
                 for n, c in CASES.items()}
        with open(path, "w") as f:
            json.dump({"results": REPORT, "cases": cases}, f, indent=1, sort_keys=True)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


def _load(name: str, root):
    if name not in _LOADED:
        case = CASES[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = families.save(case, root / name)
            try:
                _LOADED[name] = rl.load(path)
            except NotMoEError as err:
                _LOADED[name] = err
    lm = _LOADED[name]
    if isinstance(lm, Exception):
        pytest.skip(f"refused at load: {lm}")
    return lm


def _ids(lm, text=TEXTS[0]):
    return torch.tensor([lm.tokenizer(text)["input_ids"]])


class ExpertsInputs:
    """Plain PyTorch hooks (not the hook layer) recording the expert ids and weights each token gets."""

    def __init__(self, lm):
        self.lm, self.seen, self.handles = lm, {l: [] for l in lm.spec.moe_layers}, []

    def __enter__(self):
        s = self.lm.spec
        for l in s.moe_layers:
            if s.experts_io == "dense_scores":
                def hook(mod, args, out, l=l):
                    w, i = out[0].topk(s.top_k, dim=-1)
                    self.seen[l].append((i.detach().clone(), w.detach().clone()))
                self.handles.append(s.router(self.lm.hf, l).register_forward_hook(hook))
            else:
                def pre(mod, args, kwargs, l=l):
                    vals = list(args[1:3]) + [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
                    self.seen[l].append((vals[0].detach().clone(), vals[1].detach().clone()))
                self.handles.append(s.experts(self.lm.hf, l).register_forward_pre_hook(pre, with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


class RouterInputs:
    """Plain forward pre-hooks capturing the hidden states each routing module receives."""

    def __init__(self, lm):
        self.lm, self.seen, self.handles = lm, {l: [] for l in lm.spec.moe_layers}, []

    def __enter__(self):
        for l in self.lm.spec.moe_layers:
            scope = self.lm.spec.routing_scope(self.lm.hf, l)
            self.handles.append(scope.register_forward_pre_hook(
                lambda m, a, kw, l=l: self.seen[l].append((a[0] if a else next(iter(kw.values()))).detach().clone()),
                with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


# ----------------------------------------------------------------------------------------------- stages
@pytest.mark.parametrize("name", NAMES)
def test_load_and_spec(name, root):
    case = CASES[name]
    if case.unsupported:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = families.save(case, root / f"{name}_refused")
        with pytest.raises(NotMoEError) as err:
            rl.load(path)
        assert case.family.split("_")[0] in str(err.value).lower() and "cannot be supported" in str(err.value)
        _record(name, "load", f"refused: {err.value}")
        return
    lm = _load(name, root)
    s = lm.spec
    expected_layers = [l for l in range(s.n_layers) if l not in case.dense_layers]
    assert s.family == (case.model_type or case.family)
    assert (s.n_experts, s.top_k) == (case.n_experts, case.top_k)
    assert s.moe_layers == expected_layers
    assert s.router_shared_rows == case.router_shared_rows
    for l in s.moe_layers:
        w, _ = oracle.router_linear(s.routing_scope(lm.hf, l), s.n_experts, s.hidden_size, case.router_shared_rows)
        assert w.shape == (s.n_experts + case.router_shared_rows, s.hidden_size)
    _record(name, "load", "ok" + (f" ({'; '.join(s.notes)})" if s.notes else ""))


@pytest.mark.parametrize("name", NAMES)
def test_counts_equal_expert_inputs(name, root):
    lm = _load(name, root)
    counts = rl.count_experts(lm, TEXTS, batch_size=1, with_answer=False)  # some families (DSA) are not padding-invariant
    E = lm.spec.n_experts
    expected = torch.zeros(len(lm.spec.moe_layers), E, dtype=torch.long)
    with ExpertsInputs(lm) as rec, torch.no_grad():
        for t in TEXTS:
            lm.hf(_ids(lm, t))
    for r, l in enumerate(lm.spec.moe_layers):
        for idx, _ in rec.seen[l]:
            expected[r] += torch.bincount(idx.reshape(-1).long(), minlength=E)[:E]
    assert torch.equal(counts.counts, expected)
    _record(name, "count", "ok")


def _busiest(lm, ids, m):
    with ExpertsInputs(lm) as rec, torch.no_grad():
        lm.hf(ids)
    E = lm.spec.n_experts
    return {l: torch.bincount(rec.seen[l][0][0].reshape(-1).long(), minlength=E)[:E].topk(m).indices.tolist()
            for l in lm.spec.moe_layers}


@pytest.mark.parametrize("name", NAMES)
def test_reroute_exact_or_refused(name, root):
    lm = _load(name, root)
    s, case = lm.spec, CASES[name]
    refused = check_reroute(lm)
    ids = _ids(lm)
    mask = _busiest(lm, ids, max(1, min(s.top_k, s.n_experts - s.top_k)))
    ok_layers = [l for l in s.moe_layers if l not in refused]
    if refused:
        l = next(iter(refused))
        with pytest.raises(RerouteUnavailable, match=s.family):
            with rl.mask_experts(lm, {l: mask[l]}):
                pass
    if not ok_layers:
        _record(name, "reroute", f"refused: {next(iter(refused.values()))}")
        return
    mask = {l: mask[l] for l in ok_layers}
    with ExpertsInputs(lm) as plain, RouterInputs(lm) as hin, torch.no_grad():
        ref = lm.hf(ids).logits
    with rl.mask_experts(lm, mask), ExpertsInputs(lm) as masked, RouterInputs(lm) as hin_m, torch.no_grad():
        lm.hf(ids)
    with torch.no_grad():
        torch.testing.assert_close(lm.hf(ids).logits, ref, rtol=0, atol=0)  # undone on exit
    checked = []
    for l in ok_layers:
        bad = torch.zeros(s.n_experts, dtype=torch.bool)
        bad[mask[l]] = True
        idx, w = masked.seen[l][0]
        idx2 = idx.reshape(-1, idx.shape[-1]).long()
        assert not bad[idx2].any(), f"layer {l}: a masked expert was chosen"
        assert all(len(set(r.tolist())) == s.top_k for r in idx2), f"layer {l}: fewer than k experts"
        scope = s.routing_scope(lm.hf, l)
        W, b = oracle.router_linear(scope, s.n_experts, s.hidden_size, case.router_shared_rows)
        consts = {"bias": oracle.correction_bias(scope, s.n_experts),
                  "scale": getattr(scope, "routed_scaling_factor", None) or getattr(lm.hf.config, "routed_scaling_factor", None)
                  or oracle.route_scale(scope),
                  "shared": case.router_shared_rows,
                  "groups": (getattr(scope, "num_group", None) or getattr(scope, "n_group", None),
                             getattr(scope, "topk_group", None))}
        if consts["groups"][0] in (None, 1):
            consts["groups"] = None

        def logits_of(h):
            return torch.nn.functional.linear(h.reshape(-1, s.hidden_size).float(), W.float(),
                                              None if b is None else b.float())
        i0, w0 = plain.seen[l][0]
        i0, w0 = i0.reshape(-1, i0.shape[-1]), w0.reshape(-1, w0.shape[-1])
        match = [v for v, i, w in oracle.variants(case.routing, logits_of(hin.seen[l][0]), None, s.top_k, consts)
                 if oracle.same_routing(i, w, i0, w0)]
        if not match:
            continue  # no hand-written rule reproduces this router unmasked: only the properties above
        lm_logits = logits_of(hin_m.seen[l][0])
        w_m = w.reshape(-1, w.shape[-1])
        ok = [v for v, i, ww in oracle.variants(case.routing, lm_logits, bad, s.top_k, consts)
              if v in match and oracle.same_routing(i, ww, idx2, w_m)]
        assert ok, f"layer {l}: reroute differs from the {case.routing} rule {match[0]} on masked logits"
        checked.append(l)
    note = f"exact ({case.routing}" + (", checked against the hand-written rule" if checked else "") + ")"
    if refused:
        note += f"; layers {sorted(refused)} refused: {next(iter(refused.values()))}"
    _record(name, "reroute", note)


def _n_weighted(experts) -> int:
    """Experts with weights in an experts module: the rows of its down projection (LongCat-Flash: E of E+Z)."""
    down = getattr(experts, "down_proj", None)
    return down.shape[0] if isinstance(down, torch.Tensor) and down.dim() == 3 else 10 ** 9


def _minus_identity(ids):
    """Forward hook on an experts module: its output minus ``w[t, j] · x_t`` for every slot routed to one of the
    zero-compute identity experts ``ids`` (what those experts add, read off the module's own inputs)."""
    def hook(module, args, out):
        x, idx, w = args[:3]
        x2 = x.reshape(-1, x.shape[-1])
        hit = torch.isin(idx.reshape(x2.shape[0], -1), torch.tensor(ids, device=idx.device))
        share = (w.reshape(x2.shape[0], -1) * hit).sum(-1, keepdim=True)
        return out - (share * x2).to(out.dtype).reshape(out.shape)
    return hook


@pytest.mark.parametrize("name", NAMES)
def test_zero_equals_zeroed_expert_outputs(name, root):
    lm = _load(name, root)
    s = lm.spec
    ids = _ids(lm)
    mask = _busiest(lm, ids, 2)
    if s.identity_experts:  # LongCat-Flash: also its busiest zero-compute identity expert
        first = s.n_experts - s.identity_experts
        extra = _busiest(lm, ids, s.n_experts)
        mask = {l: sorted(set(ex) | {next(e for e in extra[l] if e >= first)}) for l, ex in mask.items()}
    with rl.mask_experts(lm, mask, mode="zero"), torch.no_grad():
        got = lm.hf(ids).logits
    saved, handles = [], []
    with torch.no_grad():
        for l, ex in mask.items():
            experts = s.experts(lm.hf, l)
            for pname, p in experts.named_parameters():
                # DBRX keeps the down projection as a flat [E·I, H] matrix mlp.w2: expert e is view(E, I, H)[e]
                rows = p.data.view(s.n_experts, -1, p.shape[-1]) if pname.endswith("mlp.w2") and p.dim() == 2 else p.data
                weighted = [e for e in ex if e < rows.shape[0]]
                if ("down" in pname or pname.endswith("mlp.w2")) and rows.shape[0] in (s.n_experts, _n_weighted(experts)):
                    saved.append((p, p.data.clone()))
                    rows[weighted] = 0
            identity = [e for e in ex if e >= _n_weighted(experts)]
            if identity:  # LongCat-Flash: a zero-compute expert adds w · x (nn.Identity): take that off by hand
                handles.append(experts.register_forward_hook(_minus_identity(identity)))
        try:
            want = lm.hf(ids).logits
        finally:
            for p, d in saved:
                p.data.copy_(d)
            for h in handles:
                h.remove()
    assert saved, "no down projection found in the experts module"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    _record(name, "zero", "ok")


@pytest.mark.parametrize("name", NAMES)
def test_lens_last_layer_is_model_logits(name, root):
    lm = _load(name, root)
    reason = check_lens(lm)
    if reason is not None:
        _record(name, "lens", f"off: {reason}")
        with pytest.raises(ValueError, match="lens"):
            lm.trace(TEXTS[0], routing=False, attention=False, lens=True, lens_targets=[5])
        return
    ids = _ids(lm)
    tr = lm.trace(TEXTS[0], routing=False, attention=False, lens=True, lens_targets=[5],
                  query=[ids.shape[1] - 1])
    with torch.no_grad():
        p = lm.hf(ids).logits[0, -1].float().softmax(-1)[5]
    torch.testing.assert_close(tr.lens[0, -1], p, rtol=1e-4, atol=1e-6)
    _record(name, "lens", "ok" + (f" (logits {lm.spec.logit_scale[0]} {lm.spec.logit_scale[1]:g})"
                                   if lm.spec.logit_scale else ""))


@pytest.mark.parametrize("name", NAMES)
def test_trace_and_knockout(name, root):
    lm = _load(name, root)
    s = lm.spec
    ex = rl.QAExample(context="Alice Smith was born in Paris.", question="Where was Alice born?", answers=["Paris"])
    tr = lm.trace([ex, ex], lens=check_lens(lm) is None)
    assert tr.attention_layers == s.attention_layers
    for l in s.moe_layers:
        assert len(tr.routing[l].indices) == 2
    if s.attention_layers:
        att = tr.attention_to("context")
        assert torch.isfinite(att[:, s.attention_layers]).all()  # 0 is legitimate in a short sliding window
        absent = [l for l in range(s.n_layers) if l not in s.attention_layers]
        assert torch.isnan(att[:, absent]).all()
        enc = lm.encode(ex)
        keys = enc.span("answer_in_context").tolist()
        first = s.attention_layers[0]
        pats = []
        try:
            with lm.hooks.read(f"blocks.{first}.attn.hook_pattern", lambda p: pats.append(p[0, :, enc.last_prompt])):
                with rl.knock_out_attention(lm, [first], enc.last_prompt, keys, len(enc.input_ids)), torch.no_grad():
                    lm.hf(enc.input_ids[None])
            assert float(pats[0][:, keys].abs().max()) == 0.0
        except RuntimeError as err:  # a mask format knockout cannot edit: refused with the reason
            assert "cannot edit" in str(err)
            _record(name, "knockout", f"refused: {err}")
    note = "ok" if len(s.attention_layers) == s.n_layers else \
        f"ok; attention on layers {s.attention_layers}, absent on {sorted(set(range(s.n_layers)) - set(s.attention_layers))} ({', '.join(sorted(set(s.mixers.values())))})"
    _record(name, "trace", note)


@pytest.mark.parametrize("name", NAMES)
def test_transformer_lens_agrees(name, root):
    """Where TransformerLens 4.3 bridges the family: its attention and residual stream give the same trace as
    nnsight, and its router hook carries what the router module returns."""
    from routerlens_interp.trace.tl_backend import TLUnsupportedError, router_logits

    lm = _load(name, root)
    ids = _ids(lm)
    try:
        tl = router_logits(lm, ids)
    except (TLUnsupportedError, Exception) as err:  # noqa: BLE001 - any bridge failure is "not supported"
        _record(name, "tl", f"no adapter: {str(err).splitlines()[0][:120]}")
        pytest.skip(f"TransformerLens: {err}")
    ex = rl.QAExample(context="Alice Smith was born in Paris.", question="Where was Alice born?", answers=["Paris"])
    lens = check_lens(lm) is None
    a = lm.trace([ex], lens=lens)
    try:
        b = lm.trace([ex], lens=lens, backend="transformer_lens")
    except TLUnsupportedError as err:
        _record(name, "tl", f"partial: {str(err)[:120]}")
        pytest.skip(str(err))
    torch.testing.assert_close(a.attention, b.attention, rtol=1e-4, atol=1e-5, equal_nan=True)
    if lens:
        torch.testing.assert_close(a.lens, b.lens, rtol=1e-4, atol=1e-6)
    outs = {}
    def keep(l):
        def hook(module, args, out):  # returns None: a forward hook's return value would replace the output
            outs.setdefault(l, out[0] if isinstance(out, tuple) else out)
        return hook
    handles = [lm.spec.router(lm.hf, l).register_forward_hook(keep(l)) for l in tl]
    try:
        with torch.no_grad():
            lm.hf(ids)
    finally:
        for h in handles:
            h.remove()
    for l, x in tl.items():
        torch.testing.assert_close(x.float(), outs[l].reshape(-1, outs[l].shape[-1]).float(), rtol=1e-4, atol=1e-5)
    _record(name, "tl", "ok")
