"""Run-time checks that the hook layer reproduces the model, and refusals with the reason when it does not.

- :func:`check_reroute`: on a probe batch, the routing tap must leave the model's output bit-identical, see
  exactly one router linear ``[E, H]`` per routing call, and under a mask of the busiest experts the
  family's own routing must pick ``k`` distinct, unmasked experts for every token. Layers that fail are
  refused for ``reroute`` (``spec.reroute_refused``); ``zero`` still works there.
- :func:`check_lens`: ``lens_logits`` of the last layer's lens state (its residual streams, :mod:`.streams`)
  must equal the model's own logits; otherwise the logit lens is switched off with the reason (``spec.lens``).
"""
from __future__ import annotations

from contextlib import ExitStack

import torch

from ..arch.final_step import MIXERS

class RerouteUnavailable(NotImplementedError):
    """``reroute`` cannot be done exactly on this model or layer; ``mode="zero"`` still works."""


def _probe_ids(lm, n: int = 2, t: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    vocab = int(getattr(lm.hf.config, "vocab_size", None) or lm.hf.get_input_embeddings().num_embeddings)
    return torch.randint(min(3, vocab - 1), vocab, (n, t), generator=g).to(lm.device)


def _forward(lm, ids):
    return lm.hf(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def lens_logits(lm, h: torch.Tensor) -> torch.Tensor:
    """The model's own step from a layer's lens state to logits: ``[..., D] → [..., V]``, or for families with
    several residual streams ``[..., S, D]`` / ``[..., S·D]`` / ``[..., n+1, D]`` (see :mod:`.streams`): the
    family's stream mixing, final norm, unembedding, and the family's logit scaling or soft-capping."""
    spec = lm.spec
    if spec.lens is not None:
        raise ValueError(f"the logit lens is off for this {spec.family} model: {spec.lens}")
    from .devices import module_device
    from .streams import mix_streams

    h = mix_streams(lm, h)
    norm, unembed = spec.final_norm(lm.hf), spec.unembed(lm.hf)
    if norm is not None:  # each module's input on its own device (device maps)
        h = norm(h.to(module_device(norm, h.device)))
    w = getattr(unembed, "weight", None)
    # in the unembedding's dtype, as the families do whose lm_head (HY-V4) or final norm (Inkling2) runs in fp32
    dtype = w.dtype if isinstance(w, torch.Tensor) and w.is_floating_point() else h.dtype
    logits = unembed(h.to(module_device(unembed, h.device), dtype))
    if spec.logit_scale is not None:
        op, v = spec.logit_scale
        if spec.logit_scale_fp32:
            logits = logits.float()
        logits = logits / v if op == "divide" else logits * v if op == "multiply" else torch.tanh(logits / v) * v
    return logits


def _close(got: torch.Tensor, ref: torch.Tensor) -> bool:
    return torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * (1 + ref.abs().max().item()))


@torch.no_grad()
def check_lens(lm) -> str | None:
    """Set and return ``lm.spec.lens``: None when the last layer's lens equals the model's logits (the
    family's stream mixing, when it has one, included)."""
    spec = lm.spec
    if lm.hooks.lens_checked:  # once per model: trace calls this on every call
        return spec.lens
    if spec.lens is not None:
        return spec.lens
    ids = _probe_ids(lm)
    last = spec.n_layers - 1
    seen = []
    was = lm.hf.training
    lm.hf.eval()
    try:
        from .streams import read_lens_states

        with read_lens_states(lm, [last], lambda l, state: seen.append(state)):
            ref = _forward(lm, ids).float()
        got = lens_logits(lm, seen[-1]).float()
        if (spec.logit_scale is not None and got.shape == ref.shape and not _close(got, ref)
                and lens_logits(lm, seen[-1]).dtype != torch.float32):
            # some families cast lm_head's output to float32 before their soft-cap / scaling (Inkling2), others
            # scale in the model's dtype (Gemma): in bf16 the two differ, so take the one that reproduces the model
            spec.logit_scale_fp32 = True
            got32 = lens_logits(lm, seen[-1]).float()
            if _close(got32, ref):
                got = got32
                spec.notes.append("the lens applies the logit scaling in float32, as the family's code does")
            else:
                spec.logit_scale_fp32 = False
    except Exception as err:  # an unusual final block: no lens rather than a wrong one
        spec.lens = f"cannot reproduce the model's logits from its last residual stream ({type(err).__name__}: {err})"
        lm.hooks.lens_checked = True
        return spec.lens
    finally:
        lm.hf.train(was)
    if got.shape != ref.shape:
        spec.lens = (f"the residual stream after the last layer has shape {tuple(seen[-1].shape)} (several streams "
                     f"mixed before the final norm, by no module this toolkit knows: {', '.join(MIXERS)}), so "
                     f"final norm + unembedding cannot read it")
    elif not _close(got, ref):
        diff = (got - ref).abs().max().item()
        step = f"{spec.final_mix[1]} ({spec.final_mix[0]} mix) + " if spec.final_mix else ""
        spec.lens = (f"{step}final norm + unembedding of the last residual stream does not reproduce the model's "
                     f"logits (max difference {diff:.3g}): the family does more between its last layer and its logits")
    lm.hooks.lens_checked = True  # only after a completed probe
    return spec.lens


@torch.no_grad()
def check_reroute(lm) -> dict[int, str]:
    """Probe every MoE layer once per model; → ``{layer: reason}`` of layers refused for ``reroute``."""
    hooks, spec = lm.hooks, lm.spec
    if hooks.reroute_checked:
        return spec.reroute_refused
    ids = _probe_ids(lm)
    was = lm.hf.training
    lm.hf.eval()
    refused: dict[int, str] = {}
    try:
        ref = _forward(lm, ids)
        routes: dict[int, list] = {l: [] for l in spec.moe_layers}
        before = {l: hooks.taps_seen.get(l, 0) for l in spec.moe_layers}
        with ExitStack() as st:
            for l in spec.moe_layers:
                st.enter_context(hooks.read(f"blocks.{l}.router.hook_logits", lambda x: None))
                st.enter_context(hooks.read(f"blocks.{l}.experts.hook_route",
                                            lambda i, w, l=l: routes[l].append(i.detach().clone())))
            tapped = _forward(lm, ids)
        if not torch.equal(ref, tapped):
            reason = "reading the router logits changed the model's output"
            return _refuse_all(lm, reason)
        for l in spec.moe_layers:
            hits = hooks.taps_seen.get(l, 0) - before[l]
            calls = len(routes[l])
            if hits != calls or calls == 0:
                scope = type(spec.routing_scope(lm.hf, l)).__name__
                refused[l] = (f"{scope} computed {hits} router linear(s) of shape [{spec.n_experts}, {spec.hidden_size}] "
                              f"in {calls} routing call(s): the logits cannot be masked before its routing")
        # Mask the busiest experts of each layer and check that the family's routing avoids them.
        E, k = spec.n_experts, spec.top_k
        m = max(1, min(k, E - k))
        masks = {}
        for l in spec.moe_layers:
            if l in refused or not routes[l]:
                continue
            used = torch.bincount(torch.cat([r.reshape(-1) for r in routes[l]]).long().cpu(), minlength=E)[:E]
            masks[l] = used.topk(m).indices.sort().values
        chosen: dict[int, list] = {l: [] for l in masks}
        with ExitStack() as st:
            for l, ids_ in masks.items():
                bad = torch.zeros(E, dtype=torch.bool)
                bad[ids_] = True
                for name, fn in masking_edits(bad):
                    st.enter_context(hooks.edit(f"blocks.{l}.router.{name}", fn))
                st.enter_context(hooks.read(f"blocks.{l}.experts.hook_route",
                                            lambda i, w, l=l: chosen[l].append((i.detach().clone(), w.detach()))))
            _forward(lm, ids)
        for l, ids_ in masks.items():
            bad = set(ids_.tolist())
            for idx, w in chosen[l]:
                flat = idx.reshape(-1, idx.shape[-1]).long().cpu()
                hit = sorted(bad & set(flat.unique().tolist()))
                if hit:
                    refused[l] = (f"with experts {sorted(bad)} masked, the family's routing still chose {hit}: its "
                                  f"selection does not go through the router logits or a top-k over the experts")
                    break
                if spec.experts_io in ("fused", "module_list") and any(len(set(r.tolist())) != k for r in flat):
                    refused[l] = f"with experts {sorted(bad)} masked, some tokens no longer get {k} distinct experts"
                    break
    finally:
        lm.hf.train(was)
    for l, why in refused.items():
        spec.reroute_refused.setdefault(l, why)
    hooks.reroute_checked = True
    return spec.reroute_refused


def require_reroute(lm, layers, what: str, fix: str) -> None:
    """Raise :class:`RerouteUnavailable` naming the family, layers and reason when the model's self-check
    refused routing edits on any of ``layers``; ``what`` names the intervention, ``fix`` the way out."""
    refused = check_reroute(lm)
    bad = {l: refused[l] for l in layers if l in refused}
    if bad:
        why = next(iter(bad.values()))
        raise RerouteUnavailable(f"{lm.spec.family}: {what} is not available on layer(s) {sorted(bad)} ({why}); {fix}")


def _refuse_all(lm, reason):
    for l in lm.spec.moe_layers:
        lm.spec.reroute_refused.setdefault(l, reason)
    lm.hooks.reroute_checked = True
    return lm.spec.reroute_refused


def masking_edits(masked: torch.Tensor):
    """The two router edits of a ``reroute`` mask (bool ``[E]``, True = masked): ``(point, fn)`` pairs.

    The logits get −inf (the family's softmax/sigmoid then gives the expert nothing and renormalises over
    the rest), and every top-k over the experts gets −inf too (so a score that does not come from the logit
    alone, such as a correction bias, cannot select it).
    """
    def logits(x):
        return x.masked_fill(masked.to(x.device), float("-inf"))
    return [("hook_logits", logits), ("hook_choice", logits)]
