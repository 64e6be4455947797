"""nnsight backend: one ``NNsight.trace`` per batch, reductions done inside the trace.

Inside the trace only small tensors are kept: the query row of each layer's attention probabilities
reduced to span masses ``[B, H, S]``, the residual stream at the query position ``[B, D]``, and the
router outputs. Modules are touched in execution order (nnsight requires it).
"""
from __future__ import annotations

import torch

from ..arch import get_path


def collect(lm, batch: dict, query: torch.Tensor, span_masks: torch.Tensor | None, routing: bool,
            lens: bool) -> dict:
    """Run one batch.

    Args:
        batch: ``input_ids``/``attention_mask`` ``[B, T]`` (right padded).
        query: ``[B]`` query positions.
        span_masks: ``[B, S, T]`` float masks of the spans, or None for no attention.

    Returns ``{"logits": {l: [B*T, E]}, "weights": {l: [B*T, k]}, "indices": {l: [B*T, k]},
    "attention": {l: [B, H, S]}, "resid": {l: [B, D]}}``.
    """
    spec, nm = lm.spec, lm.nnsight
    B = batch["input_ids"].shape[0]
    rows = torch.arange(B, device=batch["input_ids"].device)
    q = query.to(batch["input_ids"].device)
    layers = get_path(nm, spec.layers_path)
    out = {"logits": {}, "weights": {}, "indices": {}, "attention": {}, "resid": {}}
    with torch.no_grad(), nm.trace(batch["input_ids"], attention_mask=batch["attention_mask"]):
        for i in range(spec.n_layers):
            layer = layers[i]
            if span_masks is not None:
                probs = get_path(layer, spec.attn_attr).output[1]
                sel = probs[rows, :, q]  # [B, H, T]
                out["attention"][i] = torch.einsum("bhk,bsk->bhs", sel.float(), span_masks).save()
            if routing and i in spec.moe_layers:
                block = get_path(layer, spec.moe_attr)
                out["logits"][i] = get_path(block, spec.router_attr).output[0].save()
                args = get_path(block, spec.experts_attr).inputs[0]
                out["indices"][i] = args[1].save()
                out["weights"][i] = args[2].save()
            if lens:
                out["resid"][i] = layer.output[rows, q].save()
    if routing:  # nnsight reads the router output before a reroute mask's forward hook edits it
        from ..interventions.masking import active_reroute_mask

        for i, logits in out["logits"].items():
            m = active_reroute_mask(spec.router(lm.hf, i))
            if m is not None:
                out["logits"][i] = logits.masked_fill(m.to(logits.device), float("-inf"))
    return out
