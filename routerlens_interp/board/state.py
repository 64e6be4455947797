"""What the live-ablation panel holds: its one state object, its presets, and how a tuned model is applied.

:class:`PanelState` is everything the panel shows (the widget draws every control from it);
:func:`default_presets` gives the usual comparison sets from routing counts.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

NO_MASK = "none"
CUSTOM = "(custom)"
MODES = ("reroute", "zero")
COLORINGS = ("usage", "CE rank", "usage change", "attribution")


def default_presets(lm, data, tuned=None, n: int | None = None, seed: int = 0) -> dict:
    """The usual comparison sets for a panel, from routing counts on ``data`` (QAExamples).

    Returns ``{"CEs": top-n experts per layer under ``tuned`` (or the base model when ``tuned`` is
    None), "random": n random non-CE experts per layer, "base top": the base model's n most-used
    experts per layer}`` (ExpertSets). ``n`` defaults to ``max(top_k, n_experts // 8)`` as in the demo.
    """
    return _presets_and_counts(lm, data, tuned, n, seed)[0]


def _presets_and_counts(lm, data, tuned, n, seed):
    from ..analysis.counting import count_experts
    from ..analysis.selection import random_experts, select_experts

    spec = lm.spec
    n = n or max(spec.top_k, spec.n_experts // 8)
    base_counts = count_experts(lm, data)
    with _applied(lm, tuned) as model:
        tuned_counts = count_experts(model, data) if tuned is not None else base_counts
    ces = select_experts(tuned_counts, n=n)
    presets = {"CEs": ces, "random": random_experts(n, spec.moe_layers, spec.n_experts, exclude=ces, seed=seed),
               "base top": select_experts(base_counts, n=n)}
    return presets, tuned_counts, base_counts


@contextmanager
def _applied(lm, tuned):
    """Yield the model to run: ``lm``, ``lm`` with an adapter applied, or a tuned ``MoEModel``."""
    from ..model import MoEModel

    if tuned is None:
        yield lm
    elif isinstance(tuned, MoEModel):
        yield tuned
    elif hasattr(tuned, "applied"):
        with tuned.applied(lm):
            yield lm
    else:
        raise TypeError(f"tuned must be an adapter (with .applied(lm)) or an MoEModel, not {type(tuned).__name__}")


@dataclass
class PanelState:
    """Everything the panel shows; the widget draws every control from this and nothing else.

    Attributes:
        selection: ``{moe_layer: [expert ids]}`` selected for masking (empty lists for untouched layers).
        preset: the preset the selection came from, ``"(custom)"`` after edits.
        mode: ``"reroute"`` or ``"zero"``.
        coloring: what colours the board: ``"usage"``, ``"CE rank"``, ``"usage change"``, ``"attribution"``.
        seed: seed of the ``"random"`` preset (re-drawn when it changes).
        example: index into the panel's data set, or None for free text.
        result: the last :meth:`AblationPanel.update` (may hold an ``error``).
        last_valid: the last result without an error (shown greyed while the selection is invalid).
        batch: the last batch run: ``{"n", "done", "em", "em_reference", "running", "cancelled"}`` or None.
    """

    selection: dict[int, list[int]]
    preset: str = NO_MASK
    mode: str = "reroute"
    coloring: str = "usage"
    seed: int = 0
    example: int | None = None
    result: dict | None = None
    last_valid: dict | None = None
    batch: dict | None = None
    busy: bool = field(default=False, repr=False)
