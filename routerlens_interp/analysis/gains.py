"""Mechanistic comparison of a tuned model with its base: CAG, AAG, APG and per-token attention.

Definitions (DESIGN.md §1), at the last prompt position q of each example:
    A_l(S) = Σ_{k∈S} attn_l[q, k], averaged over heads, then over examples;
    CAG_l = (A_l^tuned(C) − A_l^base(C)) / A_l^base(C), C = context tokens;
    AAG_l = the same with S = gold-answer tokens inside the context;
    APG_l = p_l^tuned − p_l^base, p_l = softmax(unembed(final_norm(h_l)))[first answer token]
    (``final_norm(mix(h_l))`` for families with several residual streams: ``Trace.lens``).
``tuned`` may be an adapter (anything with ``.applied(lm)``), a second ``MoEModel``, or an expert set
``{layer: [experts]}`` to mask (so the same call measures what an ablation does).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from ..interventions import mask_experts


@contextmanager
def tuned_view(lm, tuned, mask_mode: str = "reroute"):
    """Yield the model to trace as "tuned": ``tuned`` itself, ``lm`` with an adapter, or ``lm`` masked."""
    from ..model import MoEModel

    if isinstance(tuned, MoEModel):
        yield tuned
    elif hasattr(tuned, "applied"):
        with tuned.applied(lm):
            yield lm
    elif hasattr(tuned, "items"):
        with mask_experts(lm, tuned, mode=mask_mode):
            yield lm
    elif tuned is None:
        with nullcontext():
            yield lm
    else:
        raise TypeError(f"tuned must be an adapter, an MoEModel or an expert set, not {type(tuned).__name__}")


@dataclass
class AttentionGain:
    """Per-layer attention gains (``L`` = decoder layers, ``N`` examples, ``M`` with answer in context).

    Attributes:
        cag, aag: ``[L]`` relative gains; cag_abs, aag_abs: ``[L]`` absolute differences.
        cag_per_example: ``[N, L]``; aag_per_example: ``[M, L]`` relative gains per example.
        base_context, tuned_context, base_answer, tuned_answer: ``[L]`` mean attention masses.
        n_skipped_aag: examples whose answer does not occur in their context (left out of AAG).
    """

    layers: list[int]
    cag: np.ndarray
    aag: np.ndarray
    cag_abs: np.ndarray
    aag_abs: np.ndarray
    cag_per_example: np.ndarray
    aag_per_example: np.ndarray
    base_context: np.ndarray
    tuned_context: np.ndarray
    base_answer: np.ndarray
    tuned_answer: np.ndarray
    n: int
    n_skipped_aag: int

    def table(self) -> list[dict]:
        """One row per layer (for CSV)."""
        return [{"layer": l, "cag": float(self.cag[i]), "aag": float(self.aag[i]), "cag_abs": float(self.cag_abs[i]),
                 "aag_abs": float(self.aag_abs[i]), "base_context": float(self.base_context[i]),
                 "tuned_context": float(self.tuned_context[i]), "base_answer": float(self.base_answer[i]),
                 "tuned_answer": float(self.tuned_answer[i])} for i, l in enumerate(self.layers)]


@dataclass
class ProbabilityGain:
    """Per-layer answer probability gain by logit lens.

    Attributes:
        apg: ``[L]`` mean over examples of ``p_tuned − p_base``; per_example: ``[N, L]``;
        base, tuned: ``[L]`` mean probabilities of the first gold-answer token.
    """

    layers: list[int]
    apg: np.ndarray
    per_example: np.ndarray
    base: np.ndarray
    tuned: np.ndarray

    def table(self) -> list[dict]:
        return [{"layer": l, "apg": float(self.apg[i]), "base": float(self.base[i]), "tuned": float(self.tuned[i])}
                for i, l in enumerate(self.layers)]


def _traces(lm, tuned, data, batch_size, attention, lens, mask_mode):
    base = lm.trace(data, routing=False, attention=attention, lens=lens, batch_size=batch_size)
    with tuned_view(lm, tuned, mask_mode) as model:
        tr = model.trace(data, routing=False, attention=attention, lens=lens, batch_size=batch_size)
    return base, tr


def _gain(base: torch.Tensor, tuned: torch.Tensor):
    """``[N, L]`` masses → (relative of means [L], absolute [L], per-example relative [N, L])."""
    b, t = base.double().numpy(), tuned.double().numpy()
    if len(b) == 0:  # no example: NaN gains (the caller says why), not NumPy's "mean of empty slice"
        nan = np.full(b.shape[1:], np.nan)
        return nan, nan.copy(), np.zeros_like(b)
    mb, mt = b.mean(axis=0), t.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(mb > 0, (mt - mb) / mb, np.nan)
        per = np.where(b > 0, (t - b) / b, np.nan)
    return rel, mt - mb, per


def attention_gain(lm, tuned, data, batch_size: int = 8, mask_mode: str = "reroute") -> AttentionGain:
    """CAG and AAG per decoder layer of ``tuned`` vs ``lm`` on ``data`` (QAExamples)."""
    base, tr = _traces(lm, tuned, data, batch_size, attention=True, lens=False, mask_mode=mask_mode)
    has_ans = torch.tensor([len(e.answer_in_context) > 0 for e in base.encoded])
    cb, ct = base.attention_to("context"), tr.attention_to("context")
    ab, at = base.attention_to("answer_in_context")[has_ans], tr.attention_to("answer_in_context")[has_ans]
    cag, cag_abs, cag_per = _gain(cb, ct)
    aag, aag_abs, aag_per = _gain(ab, at)
    if not bool(has_ans.any()):
        warnings.warn(f"none of the {len(data)} examples has its gold answer inside its context: AAG is NaN "
                      "(use context-QA data whose answers occur in the context)", stacklevel=2)
    mean = lambda x: x.double().mean(dim=0).numpy() if len(x) else np.full(len(base.layers), np.nan)
    return AttentionGain(base.layers, cag, aag, cag_abs, aag_abs, cag_per, aag_per, mean(cb), mean(ct), mean(ab),
                         mean(at), len(data), int((~has_ans).sum()))


def answer_probability_gain(lm, tuned, data, batch_size: int = 8, mask_mode: str = "reroute") -> ProbabilityGain:
    """APG per decoder layer: logit-lens probability of the first gold-answer token, tuned − base."""
    base, tr = _traces(lm, tuned, data, batch_size, attention=False, lens=True, mask_mode=mask_mode)
    b, t = base.lens.double().numpy(), tr.lens.double().numpy()
    return ProbabilityGain(base.layers, (t - b).mean(axis=0), t - b, b.mean(axis=0), t.mean(axis=0))


@torch.no_grad()
def token_attention_diff(lm, tuned, example, layer: int, mask_mode: str = "reroute") -> dict:
    """Attention from the last prompt position at ``layer``, tuned − base, for every prompt token.

    Returns ``{"tokens": list[str] (T), "diff": np.ndarray [T], "base": [T], "tuned": [T],
    "answer_in_context": list[int], "context": list[int]}`` (head-averaged probabilities).
    """
    enc = lm.encode(example)
    ids = enc.input_ids[None].to(lm.device)

    def row(model):  # the hook layer's pattern: an SDPA model computes only this row
        got = []
        with model.hooks.read(f"blocks.{layer}.attn.hook_pattern", got.append, rows=torch.tensor([enc.last_prompt])):
            model.hf(input_ids=ids)
        return got[0][0, :, 0, :].float().mean(dim=0).cpu().numpy()  # [1, H, 1, T] → [T]

    b = row(lm)
    with tuned_view(lm, tuned, mask_mode) as model:
        t = row(model)
    return {"tokens": lm.tokenizer.convert_ids_to_tokens(enc.input_ids.tolist()), "diff": t - b, "base": b,
            "tuned": t, "answer_in_context": enc.answer_in_context.tolist(), "context": enc.context.tolist()}
