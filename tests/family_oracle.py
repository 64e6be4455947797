"""Independent references for the family suite: hand-written routing rules and reads that bypass the hook layer.

The toolkit reroutes by letting each family's own router code run on masked logits. These oracles are
written from DESIGN §7's routing rules instead, with the router's constants read off the module; a rule's
variant (renormalised or not, scaled or not) is chosen by reproducing the router's unmasked decisions, and
the masked decisions must then match the same variant.
"""
from __future__ import annotations

import itertools

import torch

NEG = float("-inf")


def router_linear(router_scope: torch.nn.Module, E: int, H: int, shared: int = 0):
    """``(weight [E+shared, H], bias [E+shared] | None)`` of the router's logits linear inside ``router_scope``
    (``shared``: rows after the routed ones that score shared experts, Inkling)."""
    R = E + shared
    for name, p in router_scope.named_parameters():
        if p.dim() == 2 and p.shape == (R, H) and "expert" not in name:
            prefix = name.rsplit(".", 1)[0] + "." if "." in name else ""
            bias = dict(router_scope.named_parameters()).get(prefix + "bias")
            return p, (bias if bias is not None and bias.shape == (R,) else None)
    raise LookupError(f"no [E={E}{f'+{shared}' if shared else ''}, H={H}] router weight in {type(router_scope).__name__}")


def route_scale(router_scope: torch.nn.Module) -> float | None:
    """``route_scale`` (× a learnt ``global_scale`` where there is one: Inkling) of routers that scale so."""
    scale = getattr(router_scope, "route_scale", None)
    if scale is None:
        return None
    g = getattr(router_scope, "global_scale", None)
    return float(scale) * (float(g.detach().float().reshape(-1)[0]) if isinstance(g, torch.Tensor) else 1.0)


def correction_bias(router_scope: torch.nn.Module, E: int) -> torch.Tensor | None:
    for name, t in itertools.chain(router_scope.named_parameters(), router_scope.named_buffers()):
        if ("correction" in name or "expert_bias" in name or name.endswith("score_bias")) and t.numel() == E:
            return t.detach().reshape(E).float()
    return None


def _renorm(w, on):
    return w / (w.sum(-1, keepdim=True) + 1e-20) if on else w


def _group_keep(choice, n_group, topk_group, score):
    T, E = choice.shape
    g = score(choice.view(T, n_group, E // n_group))
    idx = g.topk(topk_group, dim=-1).indices
    keep = torch.zeros_like(g, dtype=torch.bool).scatter_(1, idx, True)
    return keep.unsqueeze(-1).expand(T, n_group, E // n_group).reshape(T, E)


def variants(rule: str, logits: torch.Tensor, masked: torch.Tensor | None, k: int, consts: dict):
    """Yield ``(variant, indices [T, k], weights [T, k])`` of routing rule ``rule`` on ``logits [T, E]``.

    ``consts["shared"] = S`` (Inkling): ``logits`` is ``[T, E+S]``, its last ``S`` columns scoring the shared
    experts, which are never chosen or masked; ``sigmoid_topk`` then also yields the variant whose weights
    are normalised over the chosen *and* the shared experts' sigmoids (the shared experts as a sink).
    """
    x = logits.float()
    S = int(consts.get("shared") or 0)
    sink = None
    if S:
        x, sink = x[:, :-S], x[:, -S:].sigmoid().sum(-1, keepdim=True)
    if masked is not None:
        x = x.masked_fill(masked, NEG)
    bias = consts.get("bias")
    scales = sorted({1.0, float(consts.get("scale") or 1.0)})
    groups = consts.get("groups")

    def pick(choice):
        if masked is not None:
            choice = choice.masked_fill(masked, NEG)
        return choice.topk(k, dim=-1).indices

    if rule in ("softmax_topk", "softmax_bias", "softmax_group"):
        p = x.softmax(-1)
        choice = p + bias if (bias is not None and rule == "softmax_bias") else p
        if groups and rule == "softmax_group":
            keep = _group_keep(choice, *groups, lambda s: s.max(-1).values)
            choice = choice.masked_fill(~keep, 0.0 if masked is None else -1.0)
        idx = pick(choice)
        for rn, sc in itertools.product((False, True), scales):
            yield (rule, rn, sc), idx, _renorm(p.gather(1, idx), rn) * sc
    elif rule in ("sigmoid_topk", "sigmoid_group"):
        s = x.sigmoid()
        choice = s + bias if bias is not None else s
        if groups and rule == "sigmoid_group":
            keep = _group_keep(choice, *groups, lambda t: t.topk(2, -1).values.sum(-1))
            choice = choice.masked_fill(~keep, NEG)
        idx = pick(choice)
        for rn, sc in itertools.product((False, True), scales):
            yield (rule, rn, sc), idx, _renorm(s.gather(1, idx), rn) * sc
        if sink is not None:
            for sc in scales:
                w = s.gather(1, idx)
                yield (rule, "shared sink", sc), idx, w / (w.sum(-1, keepdim=True) + sink) * sc
    elif rule == "topk_softmax":
        v, idx = x.topk(k, dim=-1)
        yield (rule,), idx, v.softmax(-1)
    elif rule == "topk_sigmoid":
        v, idx = x.topk(k, dim=-1)
        yield (rule,), idx, v.sigmoid()


def same_routing(idx_a, w_a, idx_b, w_b, rtol=1e-5) -> bool:
    """Same expert sets per token, same weight per expert (order within a token ignored)."""
    if idx_a.shape != idx_b.shape:
        return False
    sa, oa = idx_a.long().sort(-1)
    sb, ob = idx_b.long().sort(-1)
    if not torch.equal(sa, sb):
        return False
    return torch.allclose(w_a.float().gather(1, oa), w_b.float().gather(1, ob), rtol=rtol, atol=1e-6)
