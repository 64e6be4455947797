"""nnsight backend: one ``NNsight.trace`` per batch, reductions done inside the trace.

The residual stream is read through nnsight at ``blocks.L.hook_resid_post`` (``<layer>.output``); no
edit of the hook layer touches a module's output, so nnsight sees what the model used. Attention is read
from the hook layer's ``blocks.L.attn.hook_pattern`` at the query rows only (eager models: picked from the
module's probabilities; SDPA models: only those rows are computed). Routing is read from the hook layer's
router and experts points, where masks act, so a trace
under a mask records the routing the model really ran. Inside the trace only small tensors are kept: the
query row of each attention reduced to span masses ``[B, H, S]`` and the residual at the query ``[B, D]``
(``[B, S, D]`` / ``[B, S·D]`` with several residual streams: the layer's output as it is). Block-residual
families (``spec.final_mix[0] == "blocks"``, Inkling2) are read with forward hooks instead
(:func:`routerlens_interp.hooks.streams.read_lens_states`): their lens state needs the block states each layer
receives, and a looped layer's last pass.
"""
from __future__ import annotations

import inspect
from contextlib import ExitStack

import torch

from ..arch import get_path


def routing_reads(lm, stack: ExitStack, out: dict) -> None:
    """Register hook-layer reads of router logits and experts' inputs for every MoE layer into ``out``."""
    hooks = lm.hooks
    for i in lm.spec.moe_layers:
        stack.enter_context(hooks.read(f"blocks.{i}.router.hook_logits",
                                       lambda x, i=i: out["logits"].__setitem__(i, x.detach().reshape(-1, x.shape[-1]))))

        def route(idx, w, i=i):
            out["indices"][i] = idx.detach().reshape(-1, idx.shape[-1])
            out["weights"][i] = w.detach().reshape(-1, w.shape[-1])
        stack.enter_context(hooks.read(f"blocks.{i}.experts.hook_route", route))


def attention_reads(lm, stack: ExitStack, out: dict, query: torch.Tensor, span_masks: torch.Tensor) -> None:
    """Register hook-layer reads of the query rows of every attention layer, reduced to span masses
    ``[B, H, S]`` into ``out["attention"]`` (an SDPA model computes only those rows)."""
    for i in lm.spec.attention_layers:
        def mass(p, i=i):  # p: [B, H, 1, T]
            out["attention"][i] = torch.einsum("bhk,bsk->bhs", p[:, :, 0].float(), span_masks.to(p.device))
        stack.enter_context(lm.hooks.read(f"blocks.{i}.attn.hook_pattern", mass, rows=query))


def collect(lm, batch: dict, query: torch.Tensor, span_masks: torch.Tensor | None, routing: bool,
            lens: bool) -> dict:
    """Run one batch.

    Args:
        batch: ``input_ids``/``attention_mask`` ``[B, T]`` (right padded).
        query: ``[B]`` query positions.
        span_masks: ``[B, S, T]`` float masks of the spans, or None for no attention.

    Returns ``{"logits": {l: [B*T, E]}, "weights": {l: [B*T, k]}, "indices": {l: [B*T, k]},
    "attention": {l: [B, H, S]} (attention layers only), "resid": {l: lens state at the query}}``, the lens
    state ``[B, D]``, or ``[B, S, D]`` / ``[B, S·D]`` / ``[B, n_l + 1, D]`` (:mod:`routerlens_interp.hooks.streams`).
    """
    spec, nm = lm.spec, lm.nnsight
    B = batch["input_ids"].shape[0]
    rows = torch.arange(B, device=batch["input_ids"].device)
    q = query.to(batch["input_ids"].device)
    layers = get_path(nm, spec.layers_path)
    out = {"logits": {}, "weights": {}, "indices": {}, "attention": {}, "resid": {}}
    with ExitStack() as stack:
        if routing:
            routing_reads(lm, stack, out)
        if span_masks is not None:
            attention_reads(lm, stack, out, q, span_masks)
        hooked = lens and spec.final_mix is not None and spec.final_mix[0] == "blocks"
        if hooked:
            from ..hooks.streams import read_lens_states

            def keep_state(i, state):  # every call overwrites: a looped layer keeps its last pass
                out["resid"][i] = state[rows.to(state.device), q.to(state.device)].detach()
            stack.enter_context(read_lens_states(lm, range(spec.n_layers), keep_state))
        # nothing reads the logits: only the last position's (a [B, T, V] tensor is GBs at real vocabularies)
        keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(type(lm.hf).forward).parameters else {}
        with torch.no_grad(), nm.trace(batch["input_ids"], attention_mask=batch["attention_mask"], **keep):
            for i in range(spec.n_layers):
                layer = layers[i]
                if lens and not hooked:
                    h = layer.output
                    h = h[0] if isinstance(h, tuple) else h  # some layers also return indexer state
                    # indices on the layer's own device (a device map puts layers on several devices)
                    out["resid"][i] = h[rows.to(h.device), q.to(h.device)].save()
    return out
