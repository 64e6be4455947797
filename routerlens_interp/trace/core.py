"""``trace``: batch examples, run a backend, and unpad its records into a :class:`Trace`."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..examples import QAExample
from ..prompts import Encoded
from .record import Routing, Trace

DEFAULT_SPANS = ("context", "answer_in_context", "question")


def encode_inputs(lm, examples, with_answer: bool = False) -> list[Encoded]:
    """QAExamples, plain strings or ready :class:`Encoded` → list of Encoded."""
    if isinstance(examples, (QAExample, str, Encoded)):
        examples = [examples]
    out = []
    for ex in examples:
        if isinstance(ex, Encoded):
            out.append(ex)
        elif isinstance(ex, QAExample):
            out.append(lm.encode(ex, with_answer=with_answer))
        elif isinstance(ex, str):
            ids = torch.tensor(lm.tokenizer(ex)["input_ids"], dtype=torch.long)
            empty = torch.zeros(0, dtype=torch.long)
            out.append(Encoded(ids, len(ids), empty, empty, empty, empty, empty, text=ex))
        else:
            raise TypeError(f"cannot trace a {type(ex).__name__}; pass QAExample, str or Encoded objects")
    return out


def span_masks(encoded: list[Encoded], spans: tuple[str, ...], T: int) -> torch.Tensor:
    """``[B, S, T]`` 0/1 masks of each span of each example."""
    m = torch.zeros(len(encoded), len(spans), T)
    for b, e in enumerate(encoded):
        for s, name in enumerate(spans):
            pos = e.span(name)
            if len(pos):
                m[b, s, pos] = 1.0
    return m


def trace(lm, examples, routing: bool = True, attention: bool = True, lens: bool = True,
          spans: tuple[str, ...] = DEFAULT_SPANS, query: list[int] | None = None,
          lens_targets: list[int] | None = None, with_answer: bool = False, batch_size: int = 8,
          backend: str = "nnsight", progress: bool = False) -> Trace:
    """Record routing decisions, attention to spans and logit lens for ``examples``.

    Args:
        examples: QAExamples, strings or Encoded (one or a list).
        routing: record router logits ``[T, E]`` and top-k weights/indices ``[T, k]`` per MoE layer.
        attention: record per layer and head the attention mass from ``query`` onto each of ``spans``.
        lens: record per layer the logit-lens probability of ``lens_targets`` at ``query``.
        query: per-example query positions; default the last prompt position.
        lens_targets: per-example target token ids; default the first gold-answer token.
        with_answer: append answer tokens + EOS (routing then covers the answer too).
        batch_size: examples per forward; padding does not change any number.
        backend: ``"nnsight"`` (default) or ``"transformer_lens"``.

    Returns a :class:`Trace`.
    """
    if backend == "nnsight":
        from .nnsight_backend import collect
    elif backend in ("transformer_lens", "tl"):
        from .tl_backend import collect
    else:
        raise ValueError(f"unknown backend {backend!r}; use 'nnsight' or 'transformer_lens'")
    spec = lm.spec
    from ..hooks.attn_rows import implementation

    impl = implementation(lm)
    if attention and impl not in ("eager", "sdpa"):
        raise ValueError(f"attention probabilities are computed for eager or sdpa attention, but this model runs "
                         f"{impl!r}; load it with rl.load(...) (sdpa by default) or attn_implementation='eager', "
                         f"or pass attention=False")
    encoded = encode_inputs(lm, examples, with_answer)
    N = len(encoded)
    q_all = torch.tensor(query if query is not None else [e.last_prompt for e in encoded], dtype=torch.long)
    if lens:
        if lens_targets is None:
            missing = [i for i, e in enumerate(encoded) if len(e.answer_ids) == 0]
            if missing:
                raise ValueError(f"examples {missing[:5]} have no gold answer to use as logit-lens target; pass "
                                 f"lens_targets=[token_id, ...] or lens=False")
            lens_targets = [int(e.answer_ids[0]) for e in encoded]
        tgt_all = torch.tensor(lens_targets, dtype=torch.long)
    if lens:
        from ..hooks import check_lens

        if check_lens(lm) is not None:
            raise ValueError(f"the logit lens is off for this {spec.family} model: {spec.lens}; pass lens=False")
    rec = Trace(encoded, list(range(spec.n_layers)), list(spec.moe_layers),
                {l: Routing() for l in spec.moe_layers} if routing else {}, tuple(spans), None, q_all,
                None, tgt_all if lens else None,
                attention_layers=list(spec.attention_layers) if attention else [])
    att, lns = [], []
    was_training = lm.hf.training
    lm.hf.eval()
    try:
        for start in tqdm(range(0, N, batch_size), desc="trace", disable=not progress, unit="batch"):
            chunk = encoded[start:start + batch_size]
            batch = lm.batch(chunk, side="right")
            T = batch["input_ids"].shape[1]
            sm = span_masks(chunk, spans, T).to(lm.device) if attention else None
            q = q_all[start:start + len(chunk)]
            out = collect(lm, batch, q, sm, routing, lens)
            lengths = batch["attention_mask"].sum(dim=1).tolist()
            for l in rec.routing:
                for key in ("logits", "weights", "indices"):
                    flat = out[key][l].detach().cpu()
                    per = flat.view(len(chunk), T, -1)
                    getattr(rec.routing[l], key).extend(per[b, :lengths[b]].clone() for b in range(len(chunk)))
            if attention:
                att.append(_stack_layers(out["attention"], rec.layers, (len(chunk), len(spans))))
            if lens:
                lns.append(lens_probs(lm, [out["resid"][i] for i in rec.layers], tgt_all[start:start + len(chunk)]))
    finally:
        lm.hf.train(was_training)
    rec.attention = torch.cat(att) if att else None
    rec.lens = torch.cat(lns) if lns else None
    return rec


def _stack_layers(per_layer: dict, layers: list[int], shape: tuple[int, int]) -> torch.Tensor:
    """``{layer: [B, H, S]}`` for the attention layers → ``[B, L, H, S]``, NaN where a layer has no attention."""
    B, S = shape
    heads = max((a.shape[1] for a in per_layer.values()), default=1)
    out = torch.full((B, len(layers), heads, S), float("nan"))
    for j, l in enumerate(layers):
        if l in per_layer:
            a = per_layer[l].detach().cpu()
            out[:, j, :a.shape[1]] = a
    return out


@torch.no_grad()
def lens_probs(lm, resid: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Logit lens at chosen positions only.

    Args:
        resid: per layer the lens state after the layer at the query positions: ``[B, D]``, or for families
            with several residual streams ``[B, S, D]`` / ``[B, S·D]`` / ``[B, n_l + 1, D]``
            (:mod:`routerlens_interp.hooks.streams`; block-residual families have more block states in
            later layers).
        targets: ``[B]`` token ids.

    Returns ``[B, L]`` probability of each target after each layer.
    """
    from ..hooks.devices import module_device
    from ..hooks import lens_logits

    # a device map leaves each layer's residual on its own device: join them where the lens starts
    spec = lm.spec
    first = next(m for m in (spec.final_mixer(lm.hf), spec.final_norm(lm.hf), spec.unembed(lm.hf)) if m is not None)
    dev = module_device(first, resid[0].device)
    states = [r.detach().to(dev) for r in resid]
    # all layers in one call where their states have one shape ([B, L, ...]), else one layer at a time
    groups = [torch.stack(states, dim=1)] if len({s.shape for s in states}) == 1 else [s[:, None] for s in states]
    out = []
    for h in groups:
        probs = lens_logits(lm, h).float().softmax(dim=-1)  # [B, L', V]
        t = targets.to(probs.device)[:, None, None].expand(-1, probs.shape[1], 1)
        out.append(probs.gather(-1, t).squeeze(-1).cpu())
    return torch.cat(out, dim=1)
