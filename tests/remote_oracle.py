"""Independent references for the remote-code layouts (``test_remote_code.py``): each layout's routing rule
written out from the gate's own weights, a hand-written MoE block, and plain PyTorch hooks (not the hook layer)
that record what each MoE block received and returned."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class BlockIO:
    """Plain PyTorch hooks (not the hook layer): each MoE block's input ``[T, H]`` and output ``[T, H]``."""

    def __init__(self, lm):
        self.lm, self.inp, self.out, self.handles = lm, {}, {}, []

    def __enter__(self):
        for l in self.lm.spec.moe_layers:
            blk = self.lm.spec.moe_block(self.lm.hf, l)
            self.handles.append(blk.register_forward_hook(self._hook(l)))
        return self

    def _hook(self, l):
        def hook(module, args, out):  # returns None: a forward hook's return value would replace the output
            self.inp.setdefault(l, args[0].reshape(-1, args[0].shape[-1]).detach().clone())
            self.out.setdefault(l, out.reshape(-1, out.shape[-1]).detach().clone())
        return hook

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _scores(block, x, masked=None, bias=None):
    """The gate's scores ``[T, E]``: softmax (sigmoid for DeepSeek-V3's gate) over the logits ``x Wᵀ`` (+ ``bias
    [E]``; masked experts −inf). The gate is a Linear (MiniCPM) or holds ``weight [E, H]`` itself (MoEGate)."""
    logits = x.float() @ block.gate.weight.float().T
    if bias is not None:
        logits = logits + bias
    if masked is not None:
        logits = logits.masked_fill(masked, float("-inf"))
    return logits.sigmoid() if getattr(block.gate, "scoring_func", "softmax") == "sigmoid" else logits.softmax(-1)


def route_weights(block, v):
    """The layout's weights from its scores ``v [T, k]`` at the chosen experts."""
    g = block.gate
    method = getattr(g, "topk_method", None)
    if method is None:  # MiniCPM: renormalised
        return v / v.sum(-1, keepdim=True)
    renorm = g.top_k > 1 and g.norm_topk_prob
    if method == "noaux_tc":  # DeepSeek-V3: renormalised, then scaled
        return (v / (v.sum(-1, keepdim=True) + 1e-20) if renorm else v) * g.routed_scaling_factor
    return v / (v.sum(-1, keepdim=True) + 1e-20) if renorm else v * g.routed_scaling_factor  # DeepSeek-V2


def minicpm_routing(block, x, masked=None):
    """Each layout's rule written out → ``(indices [T, k], weights [T, k])``.

    MiniCPM-MoE: softmax → top-k → renormalised. DeepSeek-V2 (remote): softmax → group-limited greedy top-k
    (groups scored by their best expert, ``topk_group`` kept) → × ``routed_scaling_factor`` (no renorm here).
    DeepSeek-V3 (remote): sigmoid; choice = score + correction bias; groups scored by the sum of their two best
    choices; top-k of the choices in the kept groups; weights = scores there, renormalised, × the factor.
    Masked experts get −inf logits and −inf at the final top-k.
    """
    p = _scores(block, x, masked)
    g = block.gate
    if not hasattr(g, "topk_method"):
        v, i = p.topk(block.num_experts_per_tok, dim=-1)
        return i, route_weights(block, v)
    T, E = p.shape
    choice = p
    if g.topk_method in ("group_limited_greedy", "noaux_tc"):
        if g.topk_method == "noaux_tc":
            choice = p + g.e_score_correction_bias.detach().float()
            gs = choice.view(T, g.n_group, -1).topk(2, dim=-1).values.sum(-1)
        else:
            gs = p.view(T, g.n_group, -1).max(-1).values
        keep = torch.zeros(T, g.n_group, dtype=torch.bool).scatter_(1, gs.topk(g.topk_group, dim=-1).indices, True)
        fill = float("-inf") if g.topk_method == "noaux_tc" else 0.0
        choice = choice.masked_fill(~keep.repeat_interleave(E // g.n_group, dim=1), fill)
    if masked is not None:
        choice = choice.masked_fill(masked, float("-inf"))
    i = choice.topk(g.top_k, dim=-1).indices
    return i, route_weights(block, p.gather(1, i))


def _mlp(ex, x):
    """One expert's SwiGLU MLP from its own linears (w1/w3/w2 or gate/up/down_proj)."""
    if hasattr(ex, "w1"):
        return ex.w2(F.silu(ex.w1(x)) * ex.w3(x))
    return ex.down_proj(F.silu(ex.gate_proj(x)) * ex.up_proj(x))


def _down(ex):
    return ex.w2 if hasattr(ex, "w2") else ex.down_proj


def moe_block(block, x, masked=None, dropped=()):
    """A hand-written MoE block: ``Σ_j w[t, j] · expert_{i[t, j]}(x_t)`` (+ shared experts), experts in
    ``dropped`` contributing 0."""
    idx, w = minicpm_routing(block, x, masked)
    y = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            e = int(idx[t, j])
            if e not in dropped:
                y[t] += w[t, j] * _mlp(block.experts[e], x[t])
    if getattr(block, "shared_experts", None) is not None:
        y = y + _mlp(block.shared_experts, x)
    return y
