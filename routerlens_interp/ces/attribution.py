"""Expert attribution: a first-order estimate of what masking each expert does to a metric, in one
forward and one backward pass per batch."""
from __future__ import annotations

import time
from contextlib import ExitStack

import torch
from tqdm.auto import tqdm

from ..train.seed import deterministic
from .objective import batches, build_items, forward_metric
from .scores import ExpertScores


def attribute_experts(lm, data, metric: str = "faithfulness", tokens: str = "first", batch_size: int = 16,
                      progress: bool = False, verify: int = 0) -> ExpertScores:
    """Estimate, for every (MoE layer, expert), the drop of ``metric`` when the expert is masked (zero mode).

    Gradient with respect to the routing weights, not the experts' outputs: every token ``t`` sends its
    hidden state to ``k`` experts with weights ``w[t, j]``; ``mask_experts(..., mode="zero")`` sets the
    weights of the masked expert to 0 and changes nothing else. A multiplier ``s[t, j] = 1`` on each
    weight (``w · s`` at ``blocks.L.experts.hook_route``) gives, by the chain rule,
    ``∂m/∂s[t, j] = w[t, j] · ∂m/∂w[t, j]``, so the first-order change under zero-masking expert ``e`` is
    ``−Σ_{t, j: idx[t, j] = e} ∂m/∂s[t, j]``. This is exact in what it perturbs (the same edit as the
    causal test, on every family, with the family's own weights — softmax, sigmoid, scaling factor —
    already applied) and needs no per-family knowledge of how an expert's output is combined. Gradients
    w.r.t. the experts' *outputs* would need a hook inside the fused experts module, which families
    implement differently. The multiplier keeps the graph through later routers (their weights depend on
    the edited residual stream); only the discrete top-k re-choice is invisible to a gradient, which is
    why the estimate is of ``zero`` masking, not ``reroute``.

    Args:
        lm: a :class:`~routerlens_interp.model.MoEModel`; masks and adapters in force apply.
        data: QAExamples; conflict data with ``memory_answer`` for ``"faithfulness"``.
        metric: ``"faithfulness"`` = log p(context answer) − log p(memory answer), or ``"answer"`` =
            log p(gold answer); mean over examples.
        tokens: ``"first"`` answer token (at the last prompt position) or ``"all"`` answer tokens.
        batch_size: examples per forward + backward. Memory is that of one batch, whatever ``len(data)``:
            only the ``[L, E]`` sums are kept between batches.
        verify: ``K > 0``: then zero-mask each of the ``K`` highest-estimated experts alone and replace their
            estimates by the exact drop (:func:`~.verify.verify_top`; ``K`` + 1 more forward passes).

    Returns:
        :class:`ExpertScores` of kind ``"attribution"``: ``scores [L, E]`` = estimated base − masked
        (positive: the metric relies on the expert), ``base`` = the metric without masking.
    """
    t0 = time.time()
    spec = lm.spec
    items = build_items(lm, data, metric, tokens)
    L, E = len(spec.moe_layers), spec.n_experts
    acc = torch.zeros(L, E, dtype=torch.float64)
    base = 0.0
    was = lm.hf.training
    lm.hf.eval()
    # Remote-code experts kept as a ModuleList (MiniCPM-MoE, DeepSeek-V2 remote) dispatch under torch.no_grad in
    # eval mode (their moe_infer): their MoE blocks run their training-mode path, the same routing and sum of
    # w · expert(x), differentiable (those blocks hold no dropout).
    blocks = [spec.moe_block(lm.hf, l) for l in spec.moe_layers] if spec.experts_kind == "module_list" else []
    for b in blocks:
        b.train()
    try:
        for chunk, _ in tqdm(list(batches(items, batch_size)), desc="attribute", disable=not progress, unit="batch"):
            mults: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (row, indices, multiplier)

            def edit(r):
                def fn(idx, w):
                    s = torch.ones_like(w, dtype=w.dtype, requires_grad=True)
                    mults.append((r, idx.detach(), s))
                    return w * s
                return fn

            with ExitStack() as st, torch.enable_grad(), deterministic():  # >1 thread: the backward's row order
                for r, l in enumerate(spec.moe_layers):
                    st.enter_context(lm.hooks.edit(f"blocks.{l}.experts.hook_route", edit(r)))
                m = forward_metric(lm, chunk)
                grads = torch.autograd.grad(m, [s for _, _, s in mults], allow_unused=True) if mults else []
            base += float(m.detach())
            if mults and all(g is None for g in grads):
                raise NotImplementedError(f"{spec.family}: no gradient reached the routing weights of any MoE layer (the "
                                   "family's experts run without autograd); attribution is not available here, use "
                                   "effects (rl.expert_effects) instead")
            for (r, idx, _), g in zip(mults, grads):
                if g is None:
                    continue
                acc[r] += torch.zeros(E, dtype=torch.float64, device=g.device).index_add_(
                    0, idx.reshape(-1).long(), g.reshape(-1).double()).cpu()
    finally:
        lm.hf.train(was)
        for b in blocks:
            b.train(was)
    n = len(items)
    out = ExpertScores(acc / n, list(spec.moe_layers), "attribution", metric, n, spec.top_k, base / n,
                       meta={"tokens": tokens, "seconds": round(time.time() - t0, 2)})
    if verify:
        from .verify import verify_top

        out = verify_top(lm, data, out, verify, metric, tokens, batch_size, progress)
    return out
