"""Attention probabilities without eager attention: only the query rows a trace needs.

Eager attention materialises ``[B, H, T, T]`` probabilities in every layer (8 GB per example and layer at
T = 8k, 32 heads, fp32). A trace needs the rows of a few query positions. While ``blocks.L.attn.hook_pattern``
has a reader on an SDPA model, the function registered here stands in for transformers' "sdpa" attention
function: it computes the layer's output with transformers' own SDPA function (the output is what SDPA
gives, bit for bit), and for the modules with a reader then calls the *family's own* ``eager_attention_forward`` (the module-level function in
the family's modeling file, with its GQA, sinks, soft-capping and scaling) on the selected query rows only,
with the mask rows SDPA got (the model's own: sliding windows, padding, sparse-attention index masks) turned
into the additive mask eager would get. Outside a trace transformers' own function is registered again.

:func:`check_rows` (first use per model) compares the rows with eager probabilities of a probe batch and the
output with a plain SDPA forward; when either differs, reading the pattern is refused with the reason. The eager
reference gets, at each attention module, the input that module got in the SDPA forward: the rows are checked
against eager attention on the same input, not against the float rounding by which an eager and an SDPA forward
drift apart before the layer (a sharp softmax amplifies it past the tolerance: Gemma 4's full-attention layers,
scaling 1 on RMS-normed 512-dim heads, logits up to ~90).
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable

import torch

_REQUESTS: dict[int, list[Callable]] = {}  # id(attention module) → callbacks of the readers of its rows
_SDPA: list[Callable] = []  # transformers' own "sdpa" function while ours stands in for it


def _install() -> None:
    """Register :func:`_rows_attention` as the "sdpa" attention function (it calls transformers' own). Under
    the same name, not a new one: modeling files branch on ``_attn_implementation in ("eager", "sdpa")``."""
    from transformers.modeling_utils import AttentionInterface

    if not _SDPA:
        _SDPA.append(AttentionInterface._global_mapping["sdpa"])
        AttentionInterface.register("sdpa", _rows_attention)


def _uninstall() -> None:
    from transformers.modeling_utils import AttentionInterface

    if _SDPA and not _REQUESTS:
        AttentionInterface.register("sdpa", _SDPA.pop())


def _rows_attention(module, query, key, value, attention_mask, **kwargs):
    out = _SDPA[0](module, query, key, value, attention_mask, **kwargs)
    for cb in list(_REQUESTS.get(id(module), ())):
        cb(module, query, key, value, attention_mask, kwargs)
    return out


def attention_modules(lm) -> dict:
    """``{layer: attention module}`` of the layers with softmax attention (``"layer.i"`` keys for the
    sublayers of a layer with several, LongCat-Flash)."""
    out = {}
    for l in lm.spec.attention_layers:
        mods = lm.spec.attention_modules(lm.hf, l)
        out.update({l: mods[0]} if len(mods) == 1 else {f"{l}.{i}": m for i, m in enumerate(mods)})
    return out


def _configs(lm) -> list:
    mods = []
    for l in lm.spec.attention_layers:
        try:
            mods += lm.spec.attention_modules(lm.hf, l)
        except AttributeError:  # a layer without the attention attribute (probed and dropped later)
            pass
    cfgs = {id(c): c for c in (getattr(m, "config", None) for m in mods) if c is not None}
    return list(cfgs.values()) or [lm.hf.config]


def implementation(lm) -> str:
    """The attention implementation the model's attention layers run (``"sdpa"``, ``"eager"``, ...)."""
    return getattr(_configs(lm)[0], "_attn_implementation", None) or "eager"


@contextmanager
def use_implementation(lm, impl: str):
    """Run the attention layers (and their masks) with ``impl`` while the block runs; restored on exit."""
    cfgs = _configs(lm)
    saved = [(c, c._attn_implementation) for c in cfgs]
    try:
        for c in cfgs:
            c._attn_implementation = impl
        yield
    finally:
        for c, v in reversed(saved):
            c._attn_implementation = v


class RowsRequest:
    """Handle: ``callback(module, query, key, value, mask, kwargs)`` runs after each SDPA call of ``module``.
    transformers' "sdpa" entry is ours only while any request is held (:func:`_install`)."""

    def __init__(self, module, callback: Callable):
        _install()
        self.module, self.callback = module, callback
        _REQUESTS.setdefault(id(module), []).append(callback)

    def remove(self) -> None:
        if self.callback is None:
            return
        lst = _REQUESTS.get(id(self.module), [])
        if self.callback in lst:
            lst.remove(self.callback)
        if not lst:
            _REQUESTS.pop(id(self.module), None)
        self.callback = None
        _uninstall()


def eager_function(module) -> Callable:
    """The family's own ``eager_attention_forward`` (module-level in its modeling file)."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        raise ValueError(f"{type(module).__name__}'s modeling file ({type(module).__module__}) has no "
                         f"eager_attention_forward to compute attention rows with; load the model with "
                         f"attn_implementation='eager'")
    return fn


def _row_mask(mask, r: torch.Tensor, t_q: int, t_k: int, dtype, device) -> torch.Tensor:
    """The additive ``[B, 1|H, R, T_k]`` mask eager attention would get for query rows ``r`` ``[B, R]``."""
    lo = torch.finfo(dtype).min
    B, R = r.shape
    if mask is None:  # SDPA's is_causal: plain causal (lower-right aligned, as eager masks are)
        allowed = torch.arange(t_k, device=device)[None, None, :] <= (r + (t_k - t_q))[:, :, None]
        return torch.where(allowed[:, None], torch.zeros((), dtype=dtype, device=device), lo)
    m = mask.expand(B, mask.shape[1], t_q, mask.shape[-1])
    m = m.gather(2, r[:, None, :, None].to(m.device).expand(B, m.shape[1], R, m.shape[-1]))
    if m.dtype == torch.bool:
        return torch.where(m, torch.zeros((), dtype=dtype, device=m.device), lo)
    return m


def rows_probs(module, query, key, value, attention_mask, kwargs: dict,
               rows: torch.Tensor | None) -> torch.Tensor:
    """Attention probabilities of the chosen query rows, by the family's eager function.

    Args:
        query: ``[B, H, T_q, d]``; key/value ``[B, H_kv, T_k, d]`` as the attention function got them.
        rows: ``[B]`` or ``[B, R]`` query positions, or None for every row.

    Returns ``[B, H, R, T_k]`` (``R = T_q`` for None).
    """
    B, H, t_q, d = query.shape
    if rows is None:
        r = torch.arange(t_q, device=query.device).expand(B, t_q)
        q = query
    else:
        r = rows.to(query.device).long().reshape(B, -1)
        q = query.gather(2, r[:, None, :, None].expand(B, H, r.shape[1], d))
    mask = _row_mask(attention_mask, r, t_q, key.shape[-2], query.dtype, query.device)
    kw = {**kwargs, "dropout": 0.0}
    _, w = eager_function(module)(module, q, key, value, mask, **kw)
    return w


def gather_rows(probs: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """``[B, H, T, T]`` full probabilities → ``[B, H, R, T]`` at ``rows`` (``[B]`` or ``[B, R]``; None: all)."""
    if rows is None:
        return probs
    B, H, _, t_k = probs.shape
    r = rows.to(probs.device).long().reshape(B, -1)
    return probs.gather(2, r[:, None, :, None].expand(B, H, r.shape[1], t_k))


def _probe(lm):
    g = torch.Generator().manual_seed(0)
    vocab = int(getattr(lm.hf.config, "vocab_size", None) or lm.hf.get_input_embeddings().num_embeddings)
    ids = torch.randint(min(3, vocab - 1), vocab, (2, 16), generator=g).to(lm.device)
    am = torch.ones_like(ids)
    am[1, -5:] = 0  # right padding: the padding part of the mask is exercised too
    return ids, am


@torch.no_grad()
def check_rows(lm) -> str | None:
    """Once per model: the rows equal eager probabilities on a probe batch (every layer, every row) and the
    output equals a plain SDPA forward. Returns and keeps (``lm.hooks.rows_refused``) None or the reason."""
    hooks = lm.hooks
    if hooks.rows_checked:
        return hooks.rows_refused
    mods = attention_modules(lm)
    ids, am = _probe(lm)
    was = lm.hf.training
    lm.hf.eval()
    reason = None
    try:
        plain = lm.hf(input_ids=ids, attention_mask=am).logits
        got: dict[int, torch.Tensor] = {}
        inputs: dict[int, list] = {l: [] for l in mods}  # layer → the module's input of each call, SDPA forward
        handles = [m.register_forward_pre_hook(
            lambda mod, a, kw, l=l: inputs[l].append(_hidden_input(a, kw)), with_kwargs=True) for l, m in mods.items()]
        reqs = [RowsRequest(m, lambda mod, q, k, v, msk, kw, l=l: got.__setitem__(
            l, rows_probs(mod, q, k, v, msk, kw, None))) for l, m in mods.items()]
        try:
            ours = lm.hf(input_ids=ids, attention_mask=am).logits
        finally:
            for h in handles + reqs:
                h.remove()
        ref: dict[int, torch.Tensor] = {}
        handles = [h for l, m in mods.items() for h in (
            m.register_forward_pre_hook(_same_input(inputs[l]), with_kwargs=True),
            m.register_forward_hook(
                lambda mod, a, out, l=l: ref.__setitem__(l, out[1] if isinstance(out, tuple) and len(out) > 1 else None)))]
        try:
            with use_implementation(lm, "eager"):
                lm.hf(input_ids=ids, attention_mask=am)
        finally:
            for h in handles:
                h.remove()
        reason = _compare(mods, ref, got, plain, ours, am.bool())
    except Exception as err:  # any failure of the rows path: no rows rather than wrong ones
        reason = f"computing attention rows failed on a probe batch ({type(err).__name__}: {err})"
    finally:
        lm.hf.train(was)
    hooks.rows_refused, hooks.rows_checked = reason, True
    return reason


def _hidden_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """An attention module's input hidden states (``hidden_states=`` or the first positional tensor), a copy."""
    x = kwargs.get("hidden_states", args[0] if args else None)
    return x.detach().clone() if isinstance(x, torch.Tensor) else None


def _same_input(seen: list) -> Callable:
    """Forward pre-hook: the n-th call of the module gets the n-th input it got in the SDPA forward (``seen``);
    a module whose input was not found keeps its own (the reference then includes the forwards' drift)."""
    calls = iter(list(seen))

    def pre(module, args, kwargs):
        x = next(calls, None)
        if x is None:
            return None
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": x}
        if args and isinstance(args[0], torch.Tensor) and args[0].shape == x.shape:
            return (x, *args[1:]), kwargs
        return None
    return pre


def _compare(mods, ref, got, plain, ours, real: torch.Tensor) -> str | None:
    """``real`` ``[B, T]``: the query rows of real tokens (padding rows are garbage in either implementation:
    a sliding window over padding alone masks every key)."""
    if not torch.equal(plain, ours):
        return "computing the rows changed the model's output"
    tol = 1e-5 if plain.dtype == torch.float32 else 2e-2
    for l, m in mods.items():
        if l not in got:
            return f"layer {l}: {type(m).__name__} did not call the attention interface"
        e, g = ref.get(l), got[l]
        if not isinstance(e, torch.Tensor) or e.shape != g.shape:
            return (f"layer {l}: rows of shape {tuple(g.shape)} vs eager probabilities "
                    f"{tuple(getattr(e, 'shape', ()))}")
        e, g = e.float()[:, :, :real.shape[1]], g.float()[:, :, :real.shape[1]]
        keep = real.to(e.device)[:, None, :, None].expand_as(e)
        e, g = e[keep], g[keep]
        if bool((g[e == 0] != 0).any()):
            return f"layer {l}: the rows give weight to keys eager attention masks (sliding window or padding)"
        if not torch.allclose(g, e, rtol=0, atol=tol):
            return f"layer {l}: rows differ from eager probabilities by {(g - e).abs().max().item():.3g}"
    return None
