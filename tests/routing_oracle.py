"""Hand-written routing rules of the supported families on (possibly masked) logits: a test oracle only.

transformers decides the top-k *inside* the router module, so masking an expert cannot be done by
editing logits after the router ran. Instead a forward hook on the router takes its logits, sets the
masked experts to −inf and re-runs the family's own routing function from here. With no mask each
function reproduces the router's output exactly (tested per family), so a mask changes nothing else.

Every function takes ``logits [T, E]`` (float), the router module (for its constants), and a bool
``masked [E]`` (True = may not be chosen), and returns ``(weights [T, k], indices [T, k])``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NEG_INF = float("-inf")


def _apply_mask(x: torch.Tensor, masked: torch.Tensor | None) -> torch.Tensor:
    return x if masked is None else x.masked_fill(masked.to(x.device), NEG_INF)


def softmax_topk(logits, router: nn.Module, masked=None, k: int | None = None):
    """OLMoE, Qwen2/3-MoE, Mixtral: softmax over experts → top-k, renormalised if ``norm_topk_prob``."""
    k = k or router.top_k
    probs = F.softmax(_apply_mask(logits, masked), dim=-1, dtype=torch.float)
    top_v, top_i = torch.topk(probs, k, dim=-1)
    # Mixtral's router always renormalises; the others follow their config flag.
    if getattr(router, "norm_topk_prob", True):
        top_v = top_v / top_v.sum(dim=-1, keepdim=True)
    return top_v.to(logits.dtype), top_i


def topk_softmax(logits, router: nn.Module, masked=None, k: int | None = None):
    """GraniteMoE: top-k on logits, softmax over the k chosen."""
    k = k or router.top_k
    top_l, top_i = _apply_mask(logits.float(), masked).topk(k, dim=-1)
    return torch.softmax(top_l, dim=-1).to(logits.dtype), top_i


def _group_mask(scores: torch.Tensor, n_group: int, topk_group: int, group_score) -> torch.Tensor:
    T, E = scores.shape
    g = group_score(scores.view(T, n_group, E // n_group))
    idx = torch.topk(g, k=topk_group, dim=-1, sorted=False)[1]
    mask = torch.zeros_like(g).scatter_(1, idx, 1)
    return mask.unsqueeze(-1).expand(T, n_group, E // n_group).reshape(T, E).bool()


def deepseek_v2(logits, router: nn.Module, masked=None, k: int | None = None):
    """DeepSeek-V2: softmax; greedy or group-limited greedy top-k; × routed_scaling_factor."""
    k = k or router.top_k
    scores = _apply_mask(logits.float(), masked).softmax(dim=-1, dtype=torch.float32)
    if router.topk_method == "group_limited_greedy":
        keep = _group_mask(scores, router.num_group, router.topk_group, lambda s: s.max(dim=-1).values)
        scores = scores.masked_fill(~keep, 0.0)
    if masked is not None:
        # Masked experts score 0 after softmax; −1 keeps them out even when zeros tie.
        scores = scores.masked_fill(masked.to(scores.device), -1.0)
    top_v, top_i = torch.topk(scores, k=k, dim=-1, sorted=False)
    return top_v * router.routed_scaling_factor, top_i


def deepseek_v3(logits, router: nn.Module, masked=None, k: int | None = None):
    """DeepSeek-V3: sigmoid scores + correction bias, group-limited top-k, optional renorm, scaling.

    Under a mask, a group's score (sum of its two best choice scores) counts only unmasked experts (a
    group with none left scores −inf), and unmasked experts outside the chosen groups stay eligible as
    a fallback behind the chosen groups, so k unmasked experts are always picked. Without a mask this
    is transformers' ``DeepseekV3TopkRouter`` exactly.
    """
    k = k or router.top_k
    scores = logits.float().sigmoid()
    choice = _apply_mask(scores + router.e_score_correction_bias, masked)
    if masked is None:
        group_score = lambda s: s.topk(2, dim=-1)[0].sum(dim=-1)
    else:
        def group_score(s):
            top = s.topk(min(2, s.shape[-1]), dim=-1)[0]
            return torch.where(torch.isinf(top[..., 0]), NEG_INF, top.nan_to_num(neginf=0.0).sum(dim=-1))
    keep = _group_mask(choice, router.num_group, router.topk_group, group_score)
    if masked is None:
        choice = choice.masked_fill(~keep, NEG_INF)
    else:  # −inf stays −inf (masked); unchosen groups rank behind every chosen expert
        choice = torch.where(keep, choice, choice - 1e6)
    top_i = torch.topk(choice, k=k, dim=-1, sorted=False)[1]
    top_v = scores.gather(1, top_i)
    if router.norm_topk_prob:
        top_v = top_v / (top_v.sum(dim=-1, keepdim=True) + 1e-20)
    return top_v * router.routed_scaling_factor, top_i


def sparsemixer(logits, router: nn.Module, masked=None, k: int | None = None):
    """PhiMoE: transformers' own ``sparsemixer`` on the masked logits."""
    from transformers.models.phimoe.modeling_phimoe import sparsemixer as _sparsemixer

    w, i = _sparsemixer(_apply_mask(logits, masked), jitter_eps=router.router_jitter_noise,
                        training=router.training, top_k=k or router.top_k)
    return w, i


ROUTING_FUNCTIONS = {
    "softmax_topk": softmax_topk,
    "topk_softmax": topk_softmax,
    "deepseek_v2": deepseek_v2,
    "deepseek_v3": deepseek_v3,
    "sparsemixer": sparsemixer,
}


def route(name: str, logits: torch.Tensor, router: nn.Module, masked: torch.Tensor | None = None):
    """Run routing function ``name`` → ``(weights [T, k], indices [T, k])``."""
    try:
        fn = ROUTING_FUNCTIONS[name]
    except KeyError:
        raise NotImplementedError(
            f"no re-implementation of routing function {name!r}, so `reroute` masking is not available "
            f"for this model; use mode='zero' (keeps the routing, removes the expert's output). "
            f"Known routing functions: {sorted(ROUTING_FUNCTIONS)}") from None
    return fn(logits, router, masked)
