"""REAP's expert score (Cerebras, 2025): mean routing weight × expert output norm, no gradients.

REAP (Router-weighted Expert Activation Pruning) scores expert ``j`` by
``S_j = (1 / |X_j|) Σ_{x ∈ X_j} g_j(x) · ‖f_j(x)‖₂`` — over the tokens ``X_j`` routed to ``j``, the routing
weight the token gives it times the norm of the expert's output on that token. A high score is an expert
whose contribution to the residual stream is large when it is used (REAP prunes the lowest).

The output of each (token, chosen expert) is read without per-family knowledge of the experts' kernels:
the experts module of a ``fused`` family computes ``Σ_j w[t, j] · f_{idx[t, j]}(x_t)``, so calling it once
more on ``k`` copies of its inputs, copy ``j`` with one-hot weights on slot ``j``, gives every
``f_{idx[t, j]}(x_t)`` (``k`` times the experts' compute of a forward, no backward).
"""
from __future__ import annotations

import inspect
import time
from contextlib import ExitStack

import torch

from ..errors import UserError
from .scores import ExpertScores


def _outputs_norm(module, args, kwargs, params):
    """``(indices [T, k], weights [T, k], ‖f_{idx}(x)‖ [T, k])`` from one call of a fused experts module."""
    vals = dict(zip(params, args))
    vals.update(kwargs)
    h_name, i_name, w_name = params[0], params[1], params[2]
    hidden, idx, w = vals[h_name], vals[i_name], vals[w_name]
    H = hidden.shape[-1]
    hidden2 = hidden.reshape(-1, H)
    idx2, w2 = idx.reshape(hidden2.shape[0], -1), w.reshape(hidden2.shape[0], -1)
    T, k = idx2.shape
    eye = torch.eye(k, dtype=w2.dtype, device=w2.device)
    onehot = eye[:, None, :].expand(k, T, k).reshape(k * T, k)  # copy j: weight 1 on slot j
    rest = {n: v for n, v in vals.items() if n not in (h_name, i_name, w_name)}
    # module.forward, not module(...): hook-layer reads (counting, traces) must not see this extra call
    out = module.forward(hidden2.repeat(k, 1), idx2.repeat(k, 1), onehot, **rest)
    out = out[0] if isinstance(out, tuple) else out
    norms = out.reshape(k, T, H).float().norm(dim=-1).T  # [T, k]
    return idx2, w2, norms


@torch.no_grad()
def reap_scores(lm, data, span: str = "prompt", batch_size: int = 16) -> ExpertScores:
    """REAP's score of every (MoE layer, expert) over the open-book prompts of ``data``.

    Args:
        lm: a :class:`~routerlens_interp.model.MoEModel` of a ``fused`` experts family (masks and adapters
            in force apply; a zero-masked expert contributes output 0).
        data: QAExamples (their prompts as the model sees them).
        span: ``"prompt"`` (every prompt token) or ``"last"`` (the last prompt position).

    Returns :class:`ExpertScores` of kind ``"reap"``: ``scores [L, E]`` = mean over the tokens routed to the
    expert of (routing weight × ‖expert output‖), 0 for experts no token chose; ``meta["n_routed"]`` the
    token counts ``[L][E]``.
    """
    spec = lm.spec
    if spec.experts_io != "fused":
        raise UserError(f"{spec.family}: REAP reads each expert's output by calling its experts module with one-hot "
                        f"weights, which needs experts that take (hidden, indices, weights); this family's experts are "
                        f"{spec.experts_io!r}")
    if span not in ("prompt", "last"):
        raise UserError(f"unknown span {span!r}; use 'prompt' (every prompt token) or 'last' (last prompt position)")
    data = list(data)
    if not data:
        raise UserError("reap_scores got no examples")
    t0 = time.time()
    L, E = len(spec.moe_layers), spec.n_experts
    sums = torch.zeros(L, E, dtype=torch.float64)
    cnt = torch.zeros(L, E, dtype=torch.float64)
    state = {"inside": False}

    def hook(r, params):
        def fn(module, args, kwargs, output):
            if state["inside"]:
                return
            state["inside"] = True
            try:
                idx, w, norms = _outputs_norm(module, args, kwargs, params)
            finally:
                state["inside"] = False
            keep = state["mask"].to(idx.device)
            i, s = idx[keep].reshape(-1).long().cpu(), (w[keep].float() * norms[keep]).reshape(-1).double().cpu()
            sums[r].index_add_(0, i, s)
            cnt[r].index_add_(0, i, torch.ones_like(s))
        return fn

    encoded = [lm.encode(ex) for ex in data]
    was = lm.hf.training
    lm.hf.eval()
    try:
        with ExitStack() as st:
            for r, l in enumerate(spec.moe_layers):
                mod = spec.experts(lm.hf, l)
                params = [p for p in inspect.signature(mod.forward).parameters if p != "self"]
                h = mod.register_forward_hook(hook(r, params), with_kwargs=True)
                st.callback(h.remove)
            for s in range(0, len(encoded), batch_size):
                chunk = encoded[s:s + batch_size]
                b = lm.batch(chunk)
                mask = torch.zeros(b["input_ids"].shape, dtype=torch.bool)
                for i, e in enumerate(chunk):
                    mask[i, torch.arange(e.prompt_len) if span == "prompt" else torch.tensor([e.last_prompt])] = True
                state["mask"] = mask.reshape(-1)
                lm.hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    finally:
        lm.hf.train(was)
    scores = torch.where(cnt > 0, sums / cnt.clamp(min=1), torch.zeros_like(sums))
    return ExpertScores(scores, list(spec.moe_layers), "reap", "routing_weight_x_output_norm", len(data), spec.top_k,
                        meta={"span": span, "n_routed": cnt.long().tolist(), "seconds": round(time.time() - t0, 2)})
