"""Choosing experts from routing statistics: the context-faithful experts (CEs) and the controls.

An :class:`ExpertSet` maps a decoder-layer index to the sorted ids of the experts chosen in that
layer. :func:`select_experts` turns :class:`~routerlens_interp.analysis.counting.ExpertCounts` into one
(the paper's top-N by count, the tuned/base ratio, ESFT's two scores with their cumulative
threshold, and the full-softmax mass); :func:`random_experts` and :func:`grown_experts` build the controls a masking experiment
compares against.
"""
from __future__ import annotations

import json
import random
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch

from .counting import ExpertCounts
from ..errors import UserError
from ..interventions.ids import _expert_id, _layer_key  # noqa: F401  (ids are parsed where masks use them)

__all__ = ["ExpertSet", "select_experts", "expert_scores", "random_experts", "grown_experts", "METHODS"]

METHODS = ("count", "ratio", "gate", "token", "softmax_mass")
# ESFT's scores are shares of the layer's routing: top_p accumulates them as they are (DeepSeek ESFT,
# scripts/get_expert_scores.py + generate_expert_config.py). The others are normalised first.
_RAW_TOP_P = ("gate", "token")


class ExpertSet:
    """Decoder-layer index → sorted list of expert ids.

    Build from a mapping ``{layer: [expert, ...]}`` (keys may be strings, as in JSON). Layers whose
    list is empty are dropped, so two sets are equal exactly when they hold the same (layer, expert)
    pairs. ``meta`` (method, n, …) travels with the JSON file but is not part of equality.

    ``len(s)`` is the number of (layer, expert) pairs; iterating yields ``(layer, [experts])`` in
    layer order; ``|``, ``&``, ``-`` act on the pairs.
    """

    __slots__ = ("_experts", "meta")

    def __init__(self, experts: Mapping | None = None, meta: dict | None = None):
        if isinstance(experts, ExpertSet):
            meta = dict(experts.meta) if meta is None else meta
            experts = experts.to_dict()["experts"]
        table: dict[int, list[int]] = {}
        for layer, ids in (experts or {}).items():
            layer_i = _layer_key(layer)
            if isinstance(ids, (str, bytes, Mapping)) or not isinstance(ids, Iterable):
                raise ValueError(f"ExpertSet needs {{layer: [expert ids]}}; layer {layer!r} has {ids!r:.60} instead "
                                 "of a list of expert ids")
            ids_i = sorted({_expert_id(layer, e) for e in ids})
            if layer_i < 0 or any(e < 0 for e in ids_i):
                raise ValueError(f"negative layer or expert id in ExpertSet: {layer!r}: {ids!r}")
            if ids_i:
                table[layer_i] = sorted(set(table.get(layer_i, [])) | set(ids_i))
        self._experts = dict(sorted(table.items()))
        self.meta = dict(meta or {})

    # --- mapping-like access -------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        """Sorted decoder-layer indices that have at least one expert."""
        return list(self._experts)

    def __getitem__(self, layer: int) -> list[int]:
        return list(self._experts[int(layer)])

    def get(self, layer: int, default=None):
        return list(self._experts[int(layer)]) if int(layer) in self._experts else default

    def items(self) -> list[tuple[int, list[int]]]:
        return [(layer, list(ids)) for layer, ids in self._experts.items()]

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        return iter(self.items())

    def pairs(self) -> set[tuple[int, int]]:
        """All ``(layer, expert)`` pairs."""
        return {(layer, e) for layer, ids in self._experts.items() for e in ids}

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._experts.values())

    def __bool__(self) -> bool:
        return bool(self._experts)

    def __contains__(self, item) -> bool:
        """``layer in s`` (an int) or ``(layer, expert) in s`` (a pair)."""
        if isinstance(item, tuple) and len(item) == 2:
            return int(item[1]) in self._experts.get(int(item[0]), [])
        return int(item) in self._experts

    def __eq__(self, other) -> bool:
        if isinstance(other, ExpertSet):
            return self._experts == other._experts
        if isinstance(other, Mapping):
            try:
                return self._experts == ExpertSet(other)._experts
            except ValueError:
                return False
        return NotImplemented

    __hash__ = None  # mutable meta; not hashable

    def __repr__(self) -> str:
        body = ", ".join(f"{layer}: {ids}" for layer, ids in self._experts.items())
        return f"ExpertSet({{{body}}})"

    # --- set operations ------------------------------------------------------------------------
    @staticmethod
    def _from_pairs(pairs: Iterable[tuple[int, int]]) -> "ExpertSet":
        table: dict[int, list[int]] = {}
        for layer, e in pairs:
            table.setdefault(layer, []).append(e)
        return ExpertSet(table)

    def _check(self, other) -> "ExpertSet":
        if isinstance(other, ExpertSet):
            return other
        if isinstance(other, Mapping):
            return ExpertSet(other)
        raise TypeError(f"expected an ExpertSet, got {type(other).__name__}")

    def __or__(self, other) -> "ExpertSet":
        return self._from_pairs(self.pairs() | self._check(other).pairs())

    def __and__(self, other) -> "ExpertSet":
        return self._from_pairs(self.pairs() & self._check(other).pairs())

    def __sub__(self, other) -> "ExpertSet":
        return self._from_pairs(self.pairs() - self._check(other).pairs())

    def jaccard(self, other: "ExpertSet") -> float:
        """|A ∩ B| / |A ∪ B| over (layer, expert) pairs; 1.0 for two empty sets."""
        a, b = self.pairs(), self._check(other).pairs()
        union = a | b
        return len(a & b) / len(union) if union else 1.0

    def jaccard_per_layer(self, other: "ExpertSet") -> dict[int, float]:
        """``{layer: |A_l ∩ B_l| / |A_l ∪ B_l|}`` for every layer present in either set."""
        other = self._check(other)
        out = {}
        for layer in sorted(set(self.layers) | set(other.layers)):
            a, b = set(self.get(layer, [])), set(other.get(layer, []))
            out[layer] = len(a & b) / len(a | b)
        return out

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """``{"experts": {"<layer>": [ids]}, "meta": {...}}`` (JSON-ready; layer keys are strings)."""
        return {"experts": {str(layer): list(ids) for layer, ids in self._experts.items()},
                "meta": dict(self.meta)}

    def to_json(self, indent: int | None = None) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, data: str | bytes | Mapping) -> "ExpertSet":
        """Inverse of :meth:`to_json`; also accepts a plain ``{"<layer>": [ids]}`` mapping or its text."""
        if isinstance(data, (str, bytes)):
            data = json.loads(data)
        if not isinstance(data, Mapping):
            raise ValueError("ExpertSet JSON must be an object {layer: [expert ids]} or "
                             "{\"experts\": {...}, \"meta\": {...}}")
        if "experts" in data and isinstance(data["experts"], Mapping):
            return cls(data["experts"], meta=data.get("meta") or {})
        return cls(data)

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path``."""
        Path(path).write_text(self.to_json(indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ExpertSet":
        """Read a file written by :meth:`save` (or a plain ``{"<layer>": [ids]}`` JSON file)."""
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"no expert-set file at {p}")
        try:
            s = cls.from_json(p.read_text())
        except ValueError as e:  # json.JSONDecodeError too: name the file
            raise UserError(f"{p}: {e}") from None
        if not s:
            warnings.warn(f"{p} lists no experts: masking or training with it changes nothing", stacklevel=2)
        return s


# ------------------------------------------------------------------------------------------------
def _check_n(n, n_experts: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer (experts per layer); got {n!r}")
    if n > n_experts:
        raise ValueError(f"n={n} experts per layer requested but the model has only {n_experts} experts per layer")
    return n


def expert_scores(counts: ExpertCounts, method: str = "count", baseline: ExpertCounts | None = None) -> torch.Tensor:
    """``[n_moe_layers, n_experts]`` float64 score of every expert under ``method`` (see :func:`select_experts`)."""
    if counts.n_tokens <= 0:
        raise ValueError("these ExpertCounts were gathered over 0 tokens; nothing to select from")
    c = counts.counts.double()
    if method == "count":
        return c
    if method == "ratio":
        if baseline is None:
            raise ValueError("method='ratio' needs baseline= (the base model's ExpertCounts on the same data): "
                             "score = (count + 1) / (baseline count + 1)")
        if list(baseline.layers) != list(counts.layers) or tuple(baseline.counts.shape) != tuple(counts.counts.shape):
            raise ValueError(f"baseline does not match: layers {list(baseline.layers)} × {baseline.n_experts} experts "
                             f"vs {list(counts.layers)} × {counts.n_experts}")
        return (c + 1.0) / (baseline.counts.double() + 1.0)
    if method == "gate":  # ESFT: the top-k weights that reached the expert, per token
        return counts.weight_sums.double() / counts.n_tokens
    if method == "softmax_mass":
        return counts.prob_sums.double() / counts.n_tokens
    if method == "token":
        return c / (counts.n_tokens * counts.top_k)
    raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")


def _ranked(row: torch.Tensor) -> list[int]:
    """Expert ids by descending score, ties by lower id."""
    vals = row.tolist()
    return sorted(range(len(vals)), key=lambda e: (-vals[e], e))


def _top_p(row: torch.Tensor, top_p: float, normalise: bool = True) -> list[int]:
    """Smallest prefix of the ranking whose cumulative score reaches ``top_p`` (every expert when it never
    does); scores are first divided by their sum when ``normalise``."""
    total = float(row.sum())
    order = _ranked(row)
    if total <= 0:
        raise ValueError("cannot apply top_p to a layer whose scores sum to 0")
    scale = total if normalise else 1.0
    chosen, cum = [], 0.0
    for e in order:
        chosen.append(e)
        cum += float(row[e]) / scale
        if cum >= top_p - 1e-12:
            break
    return chosen


def select_experts(counts: ExpertCounts, n: int = 8, baseline: ExpertCounts | None = None,
                   method: str = "count", top_p: float | None = None) -> ExpertSet:
    """Pick experts per MoE layer from routing statistics.

    Scores (each ``[n_moe_layers, n_experts]``):

    - ``"count"``: ``counts.counts`` — the paper's rule (top-N by how often the expert is in a
      token's top-k).
    - ``"ratio"``: ``(counts + 1) / (baseline.counts + 1)`` — experts the tuning moved towards;
      ``baseline`` (same layers and experts) is required.
    - ``"gate"``: ESFT's average gate score, ``weight_sums / n_tokens``: the top-k routing weights
      the expert received (the weights that reached the experts), summed over tokens, per token.
    - ``"token"``: ESFT's token-selection ratio, ``counts / (n_tokens * top_k)``.
    - ``"softmax_mass"``: the router's full softmax probability of the expert, averaged over tokens
      (``prob_sums / n_tokens``; what ``"gate"`` meant before it followed ESFT).

    Without ``top_p``, the ``n`` best experts of each layer are taken (ties go to the lower id).
    With ``top_p`` in ``(0, 1]``, each layer keeps the smallest set of best experts whose scores add
    up to at least ``top_p`` (``n`` is then ignored). ``"gate"`` and ``"token"`` accumulate their raw
    scores as ESFT does (gate scores of a model without top-k renormalisation sum to less than 1 per
    layer, so more experts are kept; a layer that never reaches ``top_p`` keeps all); the other
    scores are first normalised to sum to 1 within the layer.

    Returns:
        ExpertSet ``{decoder layer: sorted expert ids}`` over ``counts.layers``, with ``meta``
        recording method, n and top_p.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    scores = expert_scores(counts, method, baseline)
    table: dict[int, list[int]] = {}
    if top_p is not None:
        if not 0.0 < float(top_p) <= 1.0:
            raise ValueError(f"top_p must be in (0, 1]; got {top_p}")
        for i, layer in enumerate(counts.layers):
            table[int(layer)] = _top_p(scores[i], float(top_p), normalise=method not in _RAW_TOP_P)
        meta = {"method": method, "top_p": float(top_p)}
    else:
        n = _check_n(n, counts.n_experts)
        for i, layer in enumerate(counts.layers):
            table[int(layer)] = _ranked(scores[i])[:n]
        meta = {"method": method, "n": n}
    return ExpertSet(table, meta=meta)


def random_experts(n_experts_per_layer: int, layers: Iterable[int], n_experts: int,
                   exclude: ExpertSet | Mapping | None = None, seed: int = 0) -> ExpertSet:
    """The random control: ``n_experts_per_layer`` experts per layer, drawn uniformly without
    replacement from the ``n_experts`` ids not in ``exclude`` (e.g. the CEs). Deterministic in ``seed``
    (``random.Random(seed)``, layers drawn in sorted order)."""
    n = _check_n(n_experts_per_layer, n_experts)
    excl = ExpertSet(exclude) if exclude is not None and not isinstance(exclude, ExpertSet) else exclude
    rng = random.Random(seed)
    table = {}
    for layer in sorted({int(layer) for layer in layers}):
        banned = set(excl.get(layer, [])) if excl is not None else set()
        pool = [e for e in range(n_experts) if e not in banned]
        if n > len(pool):
            raise ValueError(f"layer {layer}: cannot draw {n} experts from the {len(pool)} not excluded "
                             f"(of {n_experts})")
        table[layer] = rng.sample(pool, n)
    return ExpertSet(table, meta={"method": "random", "n": n, "seed": seed})


def grown_experts(tuned: ExpertCounts, base: ExpertCounts, n: int) -> ExpertSet:
    """The "usage grew most" control: per layer, the ``n`` experts whose share of tokens rose most
    from ``base`` to ``tuned`` (``tuned.counts / tuned.n_tokens − base.counts / base.n_tokens``; on
    the same data this ranks exactly as the count increase). Ties go to the lower id."""
    if list(tuned.layers) != list(base.layers) or tuple(tuned.counts.shape) != tuple(base.counts.shape):
        raise ValueError(f"tuned and base counts do not match: layers {list(tuned.layers)} × {tuned.n_experts} "
                         f"vs {list(base.layers)} × {base.n_experts}")
    if tuned.n_tokens <= 0 or base.n_tokens <= 0:
        raise ValueError("ExpertCounts over 0 tokens; nothing to compare")
    n = _check_n(n, tuned.n_experts)
    if tuned.n_tokens == base.n_tokens:
        growth = tuned.counts.double() - base.counts.double()
    else:
        growth = tuned.counts.double() / tuned.n_tokens - base.counts.double() / base.n_tokens
    table = {int(layer): _ranked(growth[i])[:n] for i, layer in enumerate(tuned.layers)}
    return ExpertSet(table, meta={"method": "grown", "n": n})
