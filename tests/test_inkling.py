"""Inkling (``inkling_text``): one router linear ``[E+S, H]`` scores the routed and the shared experts together.

The weights are the sigmoids of the ``k`` chosen routed experts *and* of the ``S`` shared ones, normalised over
all of them (× ``route_scale`` × ``global_scale``); the shared experts' share scales their outputs. Masking a
routed expert means what it means everywhere in the toolkit: its logit is −inf before the family's
normalisation, so it is never chosen and the rest, shared experts included, are renormalised by the family's
rule. The block is checked here against a hand computation of exactly that, written from the family's code.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import families
import routerlens_interp as rl

TEXT = "Where was Bob Jones born? He lives in Rome and paints."


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = families.save(families.cases()["inkling_text"], tmp_path_factory.mktemp("inkling"))
        return rl.load(path)


def _ids(lm):
    return torch.tensor([lm.tokenizer(TEXT)["input_ids"]])


def hand_block(block, x: torch.Tensor, masked: torch.Tensor, shared_fixed: torch.Tensor | None = None,
               beta: torch.Tensor | None = None):
    """The Inkling MoE block on ``x [T, H]`` with routed experts ``masked`` (bool ``[E]``) at −inf logits.

    → ``(out [T, H], indices [T, k], gammas [T, S])``. ``shared_fixed [T, S]`` replaces the shared experts'
    weights (to show that keeping them would be a different, wrong answer). ``beta [E]``: steering, added to
    the routed logits and, for the choice only, to the choice scores (``boost_experts``' documented meaning).
    """
    gate, ex, sh = block.gate, block.experts, block.shared_experts
    E, k = ex.gate_up_proj.shape[0], gate.top_k
    beta = torch.zeros(E) if beta is None else beta
    logits = x.float() @ gate.weight.float().T                                     # [T, E+S]
    routed = (logits[:, :E] + beta).masked_fill(masked, float("-inf"))
    s = routed.sigmoid()
    choice = (s + gate.e_score_correction_bias.float()).masked_fill(masked, float("-inf"))
    idx = (choice + beta).topk(k, dim=-1).indices                                  # [T, k]
    chosen, shared = s.gather(1, idx), logits[:, E:].sigmoid()                     # [T, k], [T, S]
    denom = chosen.sum(-1, keepdim=True) + shared.sum(-1, keepdim=True)
    scale = gate.route_scale * gate.global_scale.float()
    w, gam = chosen / denom * scale, shared / denom * scale
    if shared_fixed is not None:
        gam = shared_fixed
    out = torch.zeros_like(x, dtype=torch.float32)
    for t in range(x.shape[0]):
        for j in range(k):
            e = int(idx[t, j])
            g, u = (ex.gate_up_proj[e].float() @ x[t].float()).chunk(2)
            out[t] += w[t, j] * (ex.down_proj[e].float() @ (F.silu(g) * u))
        for j in range(sh.gate_proj.shape[0]):
            h = F.silu(sh.gate_proj[j].float() @ x[t].float()) * (sh.up_proj[j].float() @ x[t].float())
            out[t] += gam[t, j] * (sh.down_proj[j].float() @ h)
    return out, idx, gam


class Blocks:
    """Plain PyTorch hooks on each MoE block: its input ``[T, H]`` and output ``[T, H]``."""

    def __init__(self, lm):
        self.lm, self.seen, self.handles = lm, {}, []

    def __enter__(self):
        for l in self.lm.spec.moe_layers:
            def hook(mod, args, out, l=l):
                self.seen[l] = (args[0].reshape(-1, args[0].shape[-1]).detach(), out.reshape(-1, out.shape[-1]).detach())
            self.handles.append(self.lm.spec.moe_block(self.lm.hf, l).register_forward_hook(hook))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def test_spec_sees_the_joint_router(lm):
    s = lm.spec
    assert (s.family, s.n_experts, s.top_k, s.router_shared_rows, s.moe_layers) == ("inkling_text", 8, 2, 2, [1, 2])
    assert s.router(lm.hf, 1).weight.shape == (8 + 2, s.hidden_size)


def test_unmasked_block_is_the_hand_computation(lm):
    """The oracle itself reproduces the family's block (so the masked comparison below means something)."""
    with Blocks(lm) as b, torch.no_grad():
        lm.hf(_ids(lm))
    for l in lm.spec.moe_layers:
        x, y = b.seen[l]
        torch.testing.assert_close(hand_block(lm.spec.moe_block(lm.hf, l), x, torch.zeros(8, dtype=torch.bool))[0],
                                   y.float(), rtol=1e-5, atol=1e-6)


def test_masked_block_is_the_hand_computation_with_minus_inf(lm):
    """A masked routed expert: −inf logit before the family's normalisation; shared experts renormalised."""
    ids = _ids(lm)
    with Blocks(lm) as b, torch.no_grad():
        lm.hf(ids)
    busiest = {}
    for l in lm.spec.moe_layers:
        _, idx, _ = hand_block(lm.spec.moe_block(lm.hf, l), b.seen[l][0], torch.zeros(8, dtype=torch.bool))
        busiest[l] = int(torch.bincount(idx.flatten(), minlength=8).argmax())
    with rl.mask_experts(lm, {l: [e] for l, e in busiest.items()}), Blocks(lm) as m, torch.no_grad():
        lm.hf(ids)
    for l, e in busiest.items():
        block = lm.spec.moe_block(lm.hf, l)
        x, y = m.seen[l]
        bad = torch.zeros(8, dtype=torch.bool)
        bad[e] = True
        want, idx, gam = hand_block(block, x, bad)
        assert not (idx == e).any()
        torch.testing.assert_close(y.float(), want, rtol=1e-5, atol=1e-6)
        # The check can tell: at the same tolerance it rejects the unmasked block, and a mask that kept the
        # shared experts' weights (renormalising over the routed experts only).
        plain, _, gam0 = hand_block(block, x, torch.zeros(8, dtype=torch.bool))
        kept, _, _ = hand_block(block, x, bad, shared_fixed=gam0)
        assert (gam - gam0).abs().max() > 1e-3
        for wrong in (plain, kept):
            assert not torch.allclose(y.float(), wrong, rtol=1e-5, atol=1e-6)


def test_router_logits_read_are_the_routed_part(lm):
    """``router.hook_logits`` gives ``[T, E]``: the routed experts' logits, not the shared experts'."""
    got = []
    with Blocks(lm) as b, lm.hooks.read("blocks.1.router.hook_logits", got.append), torch.no_grad():
        lm.hf(_ids(lm))
    W = lm.spec.router(lm.hf, 1).weight
    torch.testing.assert_close(got[0], b.seen[1][0].float() @ W[:8].float().T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("expert", [8, 9])
def test_shared_experts_are_not_maskable(lm, expert):
    with pytest.raises(ValueError, match=r"ids 0\.\.7.*shared expert"):
        with rl.mask_experts(lm, {1: [expert]}):
            pass


def test_steered_block_is_the_hand_computation(lm):
    """``boost_experts``: +β on a routed expert's logit and rank; the family's weights (shared sink) follow."""
    ids = _ids(lm)
    with Blocks(lm) as b, torch.no_grad():
        lm.hf(ids)
    x = b.seen[1][0]
    block = lm.spec.moe_block(lm.hf, 1)
    none = torch.zeros(8, dtype=torch.bool)
    _, idx0, _ = hand_block(block, x, none)
    e = int(torch.bincount(idx0.flatten(), minlength=8).argmin())  # the least used expert
    beta = torch.zeros(8)
    beta[e] = 3.0
    with rl.boost_experts(lm, {1: [e]}, 3.0), Blocks(lm) as m, torch.no_grad():
        lm.hf(ids)
    want, idx, _ = hand_block(block, m.seen[1][0], none, beta=beta)
    assert int((idx == e).sum()) > int((idx0 == e).sum())  # the boost changes the routing
    torch.testing.assert_close(m.seen[1][1].float(), want, rtol=1e-5, atol=1e-6)


def test_ceft_trains_only_the_chosen_routed_experts(lm):
    from routerlens_interp.examples import QAExample

    data = [QAExample(f"{n} lives in {c}.", f"Where does {n} live?", [c]) for n in ("Alice", "Bob") for c in ("Paris", "Rome")]
    before = {k: v.detach().clone() for k, v in lm.hf.state_dict().items()}
    ad = rl.ceft(lm, data, experts={1: [3], 2: [5]}, max_steps=2, lr=1e-2, batch_size=2, progress=False, eval_points=1)
    assert all(torch.equal(v, lm.hf.state_dict()[k]) for k, v in before.items())  # the base is left as it was
    with ad.applied(lm):
        after = lm.hf.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed and all(".experts." in k for k in changed)  # neither the router nor the shared experts
        for l, e in ((1, 3), (2, 5)):
            for name in ("gate_up_proj", "down_proj"):
                key = f"{lm.spec.experts_path(l)}.{name}"
                assert [not torch.equal(before[key][i], after[key][i]) for i in range(8)] == [i == e for i in range(8)]
