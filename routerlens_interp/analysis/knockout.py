"""Does the model *use* its attention to the answer? Knock it out, layer by layer, and re-score.

For each example, the last prompt position (the one that predicts the first answer token) is stopped
from attending to a span (default: the gold answer's tokens inside the context) at a set of layers, and
the first gold-answer token is scored: probability and whether it is the argmax. Comparing layer sets
shows where the answer is read, which attention gains alone (CAG/AAG) cannot: a layer can gain attention
the model does not use.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .gains import tuned_view
from ..interventions.knockout import knock_out_attention


@dataclass
class Knockout:
    """First-answer-token scores with and without knockout (``K`` layer sets, ``N`` scored examples).

    Attributes:
        layer_sets: the ``K`` sets of decoder layers knocked out together; labels: ``[K]`` names for
            them ("0", "1,2", ..., "all" for the set of every decoder layer).
        accuracy, prob: ``[K]`` % of examples whose first gold token is the argmax / its mean probability,
            under each knockout; base_accuracy, base_prob: the same without knockout.
        span: the blocked span; n: examples scored; n_skipped: examples without that span (left out).
    """

    layer_sets: list[tuple[int, ...]]
    labels: list[str]
    accuracy: np.ndarray
    prob: np.ndarray
    base_accuracy: float
    base_prob: float
    span: str
    n: int
    n_skipped: int

    def table(self) -> list[dict]:
        """One row per layer set (for CSV or printing)."""
        return [{"layers": ",".join(map(str, ls)), "accuracy": float(a), "prob": float(p),
                 "accuracy_change": float(a - self.base_accuracy)}
                for ls, a, p in zip(self.layer_sets, self.accuracy, self.prob)]


@torch.no_grad()
def attention_knockout(lm, data, layer_sets=None, span: str = "answer_in_context", tuned=None,
                       mask_mode: str = "reroute", progress: bool = True) -> Knockout:
    """Score ``data`` (QAExamples) with the last prompt position blocked from ``span`` at each layer set.

    Args:
        layer_sets: list of lists of decoder layers; default each layer alone, then all layers.
        span: ``answer_in_context`` (default), ``context`` or ``question``.
        tuned: knock out in a tuned view instead of the base model (adapter, MoEModel or expert set to
            mask, as in :func:`attention_gain`).

    One unpadded forward per example and layer set: ``N × (K + 1)`` forwards.
    """
    n_layers = len(lm.spec.layers(lm.hf))
    sets = [tuple(s) for s in layer_sets] if layer_sets is not None else \
        [(l,) for l in range(n_layers)] + [tuple(range(n_layers))]
    if not sets or any(not s for s in sets):
        raise ValueError("layer_sets must be non-empty lists of decoder layers")
    with tuned_view(lm, tuned, mask_mode) as model:
        hits, probs, skipped = [], [], 0
        for ex in tqdm(data, desc="knockout", disable=not progress):
            enc = model.encode(ex)
            keys = enc.span(span).tolist()
            if not keys or not len(enc.answer_ids):
                skipped += 1
                continue
            ids = enc.input_ids[None].to(model.device)
            target, q = int(enc.answer_ids[0]), enc.last_prompt
            row_h, row_p = [], []
            for ls in [None, *sets]:
                if ls is None:
                    logits = model.hf(input_ids=ids).logits[0, q]
                else:
                    with knock_out_attention(model, list(ls), q, keys, ids.shape[1]):
                        logits = model.hf(input_ids=ids).logits[0, q]
                row_h.append(float(int(logits.argmax()) == target))
                row_p.append(float(torch.softmax(logits.float(), -1)[target]))
            hits.append(row_h)
            probs.append(row_p)
    if not hits:
        raise ValueError(f"no example has a non-empty {span!r} span; nothing to score")
    h, p = 100 * np.asarray(hits), np.asarray(probs)
    every = set(range(n_layers))
    labels = ["all" if set(s) == every and n_layers > 1 else ",".join(map(str, s)) for s in sets]
    return Knockout(sets, labels, h[:, 1:].mean(0), p[:, 1:].mean(0), float(h[:, 0].mean()),
                    float(p[:, 0].mean()), span, len(hits), skipped)
