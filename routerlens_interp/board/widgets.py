"""Live expert ablation: pick experts to mask (an expert board or presets) and watch one answer change.

The logic is plain Python (:class:`AblationPanel`), so it is tested without a browser; ``.widget()``
renders it with ipywidgets (:mod:`routerlens_interp.board.view`)::

    panel = rl.widgets.AblationPanel.from_data(lm, test, tuned=rt, count_data=train[:32])
    panel.widget()                         # in Jupyter: the layers × experts board, presets, live output
    panel.run_preset("CEs")                # the same without a browser
    panel.result["answer"], panel.result["p_answer"], panel.result["apg"]

Everything the panel shows is one :class:`PanelState` (``panel.state``); every control is drawn from it,
and every change made in code (``toggle``, ``set_experts``, ``apply_preset``, ``clear`` …) recomputes
and redraws when a widget is shown, so the page can never disagree with the state.

Every :meth:`AblationPanel.update` runs the model (with ``tuned`` applied, if given) under
``rl.mask_experts(lm, selection, mode)`` and compares with the same model unmasked (the reference):
the greedy answer, the probability of the first gold-answer token at the last prompt position, the
logit-lens probability of that token after every layer (its difference from the reference is the
per-layer APG, DESIGN.md §1), and how many prompt tokens each masked expert receives without the mask.
Hooks never outlive an update.
"""
from __future__ import annotations

import threading
from contextlib import nullcontext
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..interventions import mask_experts, normalize_mask
from ..evaluation.metrics import em_f1
from .state import (COLORINGS, CUSTOM, MODES, NO_MASK, PanelState, _applied,  # noqa: F401
                          _presets_and_counts, default_presets)


def describe_change(a: dict, b: dict) -> str:
    """What changed from result ``a`` to result ``b`` of :meth:`AblationPanel.update`, as text."""
    from .view import describe_change

    return describe_change(a, b)

__all__ = ["AblationPanel", "PanelState", "default_presets", "describe_change"]

class AblationPanel:
    """State and computation of the live-ablation panel for one example.

    Args:
        lm: a :class:`~routerlens_interp.model.MoEModel`.
        example: the :class:`~routerlens_interp.examples.QAExample` to probe, or an index into ``data``.
        presets: name → expert set (``{layer: [experts]}``/``ExpertSet``); ``"none"`` (no mask) is
            always added first.
        tuned: optional adapter (``.applied(lm)``) or tuned ``MoEModel``: the panel then ablates the
            tuned model, and the reference is the tuned model without a mask.
        mode: masking mode, ``"reroute"`` or ``"zero"`` (see :func:`~routerlens_interp.mask_experts`).
        max_new_tokens: length limit of the greedy answer.
        data: QAExamples for the example picker and batch mode (optional).
        counts, base_counts: :class:`~routerlens_interp.analysis.counting.ExpertCounts` of the panel's model and
            of the base model on some data: colour the board by Router Lens CE rank / usage change.
        attribution: any object with ``scores`` ``[n_moe_layers, n_experts]`` and ``layers`` (e.g. the
            result of ``rl.attribute_experts``): colours the board by attribution.
        random_preset: ``(n, exclude)`` to re-draw the ``"random"`` preset when the seed changes.
    """

    def __init__(self, lm, example=None, presets: Mapping[str, Mapping] | None = None, tuned=None,
                 mode: str = "reroute", max_new_tokens: int = 16, data=None, counts=None, base_counts=None,
                 attribution=None, random_preset: tuple[int, Any] | None = None):
        self.lm, self.tuned, self.max_new_tokens = lm, tuned, max_new_tokens
        self.data = list(data) if data is not None else []
        self.layers = list(lm.spec.moe_layers)
        self.presets: dict[str, dict[int, list[int]]] = {NO_MASK: {}}
        for name, experts in (presets or {}).items():
            self.presets[str(name)] = self._as_selection(experts)
        self.counts, self.base_counts = counts, base_counts
        self.attribution = self._check_attribution(attribution) if attribution is not None else None
        self._random = random_preset
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
        self.state = PanelState(selection={l: [] for l in self.layers}, mode=mode)
        self.view = None  # the ipywidgets view, once widget() was called
        self.controls: dict[Any, Any] = {}
        self._lock = threading.Lock()  # one model user at a time (batch runs in a thread)
        self._cancel = threading.Event()
        self._batch_ref: dict[tuple[int, int], list[str]] = {}
        if example is None:
            if not self.data:
                raise ValueError("give an example, or data to pick one from")
            example = 0
        self._set_example(example)

    @classmethod
    def from_data(cls, lm, data, tuned=None, example=0, count_data=None, n: int | None = None, seed: int = 0,
                  attribution=None, **kw) -> "AblationPanel":
        """A panel with the usual presets (CEs, random non-CEs, base's busiest) and board colourings,
        from routing counts on ``count_data`` (default ``data``); ``data`` feeds the example picker."""
        presets, counts, base = _presets_and_counts(lm, list(count_data or data), tuned, n, seed)
        k = len(presets["CEs"].get(lm.spec.moe_layers[0], []))
        panel = cls(lm, example, presets=presets, tuned=tuned, data=data, counts=counts,
                    base_counts=base if tuned is not None else None, attribution=attribution,
                    random_preset=(k, presets["CEs"]), **kw)
        panel.state.seed = seed
        return panel

    # ------------------------------------------------------------------------------- state
    @staticmethod
    def _as_selection(experts) -> dict[int, list[int]]:
        return {int(l): sorted(int(e) for e in ids) for l, ids in dict(experts).items()}

    def _check_attribution(self, a):
        if not (hasattr(a, "scores") and hasattr(a, "layers")):
            raise TypeError(f"attribution needs .scores [n_moe_layers, n_experts] and .layers, not {type(a).__name__}")
        s = np.asarray(a.scores.detach().cpu() if hasattr(a.scores, "detach") else a.scores, dtype=float)
        rows = [int(l) for l in a.layers]
        if s.shape != (len(rows), self.lm.spec.n_experts) or sorted(rows) != sorted(self.layers):
            raise ValueError(f"attribution scores {s.shape} over layers {rows} do not fit this model "
                             f"({len(self.layers)} MoE layers {self.layers} × {self.lm.spec.n_experts} experts)")
        return s[[rows.index(l) for l in self.layers]]

    # read-through names kept from the first panel (scripts and tests use them)
    selection = property(lambda self: self.state.selection)
    preset = property(lambda self: self.state.preset)
    result = property(lambda self: self.state.result)

    @property
    def mode(self) -> str:
        return self.state.mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"unknown mode {value!r}; use one of {MODES}")
        self.state.mode = value
        self._changed()

    @property
    def experts(self) -> dict[int, list[int]]:
        """The current selection without empty layers (what is masked)."""
        return {l: list(ids) for l, ids in self.state.selection.items() if ids}

    def _changed(self) -> None:
        """A control or a script changed the state: with a widget shown, recompute and redraw now."""
        if self.view is not None:
            self.update()

    def set_experts(self, layer: int, experts) -> None:
        """Select exactly ``experts`` for masking in MoE ``layer`` (replaces that layer's selection)."""
        self._set(layer, experts)
        self._changed()

    def _set(self, layer, experts) -> None:
        layer = int(layer)
        if layer not in self.state.selection:
            raise KeyError(f"layer {layer} is not an MoE layer; MoE layers: {self.layers}")
        self.state.selection[layer] = sorted({int(e) for e in experts})
        self.state.preset = CUSTOM

    def toggle(self, layer: int, expert: int) -> None:
        """Add ``expert`` to ``layer``'s selection, or remove it when already selected."""
        self.toggle_many([(layer, expert)])

    def toggle_many(self, cells) -> None:
        """Mask every ``(layer, expert)`` in ``cells``, or unmask them all when all are masked already
        (what a box/lasso selection or a click on a row header does)."""
        cells = [(int(l), int(e)) for l, e in cells]
        if not cells:
            return
        masked = all(e in self.state.selection.get(l, []) for l, e in cells)
        for l in sorted({l for l, _ in cells}):
            cur = set(self.state.selection.get(l, []))
            ids = {e for ll, e in cells if ll == l}
            self._set(l, cur - ids if masked else cur | ids)
        self._changed()

    def toggle_layer(self, layer: int) -> None:
        """Select every expert of ``layer``, or none when all are selected."""
        self.toggle_many([(layer, e) for e in range(self.lm.spec.n_experts)])

    def clear(self) -> None:
        """Select nothing (no mask)."""
        self.apply_preset(NO_MASK)

    def apply_preset(self, name: str) -> None:
        """Replace the whole selection by preset ``name``."""
        self._apply_preset(name)
        self._changed()

    def _apply_preset(self, name: str) -> None:
        if name not in self.presets:
            raise KeyError(f"unknown preset {name!r}; presets: {list(self.presets)}")
        chosen = self.presets[name]
        sel = {l: list(chosen.get(l, [])) for l in self.layers}
        for l in sorted(set(chosen) - set(self.layers)):  # kept so update() reports them, not dropped silently
            sel[l] = list(chosen[l])
        self.state.selection, self.state.preset = sel, name

    def set_seed(self, seed: int) -> None:
        """Re-draw the ``"random"`` preset (random non-CE experts) with ``seed``."""
        from ..analysis.selection import random_experts

        if self._random is None:
            raise ValueError("this panel has no random preset to re-draw (build it with AblationPanel.from_data)")
        n, exclude = self._random
        self.state.seed = int(seed)
        self.presets["random"] = self._as_selection(random_experts(n, self.layers, self.lm.spec.n_experts,
                                                                   exclude=exclude, seed=int(seed)))
        if self.state.preset == "random":
            self._apply_preset("random")
        self._changed()

    def set_coloring(self, name: str) -> None:
        """Colour the board by ``name`` (one of :meth:`colorings`)."""
        if name not in self.colorings():
            raise ValueError(f"cannot colour by {name!r} here; available: {list(self.colorings())}")
        self.state.coloring = name
        if self.view is not None:
            self.view.render()

    def set_attribution(self, attribution) -> None:
        """Colour the board by ``attribution`` (``.scores [n_moe_layers, n_experts]``, ``.layers``)."""
        self.attribution = self._check_attribution(attribution)
        self.state.coloring = "attribution"
        if self.view is not None:
            self.view.render()

    def set_example(self, example) -> None:
        """Probe ``example``: a QAExample (free text) or an index into the panel's data."""
        self._set_example(example)
        self._changed()

    def _set_example(self, example) -> None:
        if isinstance(example, (int, np.integer)):
            if not 0 <= int(example) < len(self.data):
                raise IndexError(f"example {example} is not in the data ({len(self.data)} examples)")
            index, example = int(example), self.data[int(example)]
        else:
            index = next((i for i, e in enumerate(self.data) if e is example), None)
        enc = self.lm.encode(example)
        if len(enc.answer_ids) == 0:
            raise ValueError("the example has no gold answer tokens to measure; give it an answer")
        self.example, self._enc, self._target = example, enc, int(enc.answer_ids[0])
        self.state.example, self._reference = index, None
        self.state.result = self.state.last_valid = None

    # ------------------------------------------------------------------------------- compute
    @torch.no_grad()
    def _probe(self, model, routing: bool = False) -> dict:
        """One forward for p(answer) and the top token, one traced forward for the logit lens."""
        enc = self._enc
        # the model's own logits: GraniteMoE & co. already apply their logit scaling in forward
        probs = model.hf(input_ids=enc.input_ids[None].to(model.device)).logits[0, enc.last_prompt].float().softmax(-1)
        top = int(probs.argmax())
        tr = model.trace([enc], routing=routing, attention=False, lens=True, lens_targets=[self._target])
        out = {"p_answer": float(probs[self._target]), "top_token": model.tokenizer.decode([top]),
               "p_top": float(probs[top]), "lens": tr.lens[0].double().numpy()}
        if routing:  # prompt tokens per (MoE layer, expert) [n_moe_layers, n_experts]
            n, E = enc.last_prompt + 1, self.lm.spec.n_experts
            out["usage"] = np.stack([np.bincount(tr.routing[l].indices[0][:n].reshape(-1).numpy(), minlength=E)[:E]
                                     for l in self.layers])
            out["n_tokens"] = n
        return out

    def _answer(self, model) -> dict:
        """The greedy answer (many forwards: shown after the probe's numbers)."""
        from ..evaluation.generate import generate

        answer = generate(model, [self.example], max_new_tokens=self.max_new_tokens)[0]
        em, f1 = em_f1(answer, self.example.answers)
        return {"answer": answer, "em": em, "f1": f1, "pending": False}

    def _measure(self, model, routing: bool = False) -> dict:
        return {**self._probe(model, routing), **self._answer(model)}

    def reference(self) -> dict:
        """The unmasked measurement (cached per example): what APG is measured against; also
        ``usage`` ``[n_moe_layers, n_experts]``, the prompt tokens each expert receives."""
        if self._reference is None:
            with self._lock, _applied(self.lm, self.tuned) as model:
                self._reference = self._measure(model, routing=True)
        return self._reference

    def update(self) -> dict:
        """Recompute under the current selection (and redraw the widget, when shown).

        Returns a dict: ``experts`` (masked, per layer), ``preset``, ``mode``, ``error`` (None, or the
        message when the selection cannot be masked — then only the reference fields are filled and
        the masked ones are None/NaN, never 0), ``answer`` (greedy), ``em``/``f1`` against the gold
        answers, ``answer_token`` (first gold token), ``p_answer`` (its probability at the last prompt
        position), ``top_token``/``p_top`` (the most likely next token), ``layers``, ``lens`` ``[L]``
        (logit-lens probability of the answer token after each decoder layer), ``reference`` (the same
        fields without a mask), ``apg`` ``[L]`` = ``lens − reference lens`` (zero without a mask), and
        ``received`` ``{layer: {expert: prompt tokens routed to it without the mask}}``.
        """
        ref = self.reference()
        st = self.state
        usage = ref["usage"]
        rows = {l: i for i, l in enumerate(self.layers)}
        out = {"experts": self.experts, "preset": st.preset, "mode": st.mode, "error": None, "pending": False,
               "answer_token": self.lm.tokenizer.decode([self._target]), "gold": list(self.example.answers),
               "layers": list(range(self.lm.spec.n_layers)), "reference": dict(ref),
               "received": {l: {e: int(usage[rows[l], e]) for e in ids if 0 <= e < usage.shape[1]}
                            for l, ids in self.experts.items() if l in rows},
               "n_tokens": ref["n_tokens"]}
        try:
            normalize_mask(self.lm.spec, self.experts, st.mode)
            with self._lock, _applied(self.lm, self.tuned) as model:
                with mask_experts(model, self.experts, st.mode) if self.experts else nullcontext():
                    m = self._probe(model)
                    if self.view is not None:  # numbers first: the answer takes a decode of many tokens
                        part = {**out, **m, "answer": None, "em": None, "f1": None, "pending": True,
                                "apg": m["lens"] - ref["lens"]}
                        st.result = part
                        self.view.render()
                    m.update(self._answer(model))
        except (ValueError, KeyError, IndexError) as e:
            out["error"] = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
            nan = np.full(len(ref["lens"]), np.nan)
            out.update({"answer": None, "em": None, "f1": None, "p_answer": None, "top_token": None, "p_top": None,
                        "lens": nan, "apg": nan})
        else:
            out.update(m)
            out["apg"] = m["lens"] - ref["lens"]
            st.last_valid = out
        st.result = out
        if self.view is not None:
            self.view.render()
        return out

    def run_preset(self, name: str) -> dict:
        """``apply_preset(name)`` then ``update()`` (one computation)."""
        self._apply_preset(name)
        return self.update()

    def colorings(self) -> dict[str, tuple[np.ndarray, str]]:
        """What the board can be coloured by here: name → (``[n_moe_layers, n_experts]`` values, label).

        ``usage``: prompt tokens of the current example each expert receives (the panel's model, no
        mask); ``CE rank``: Router Lens rank by routing count on the counted data (1 = most used, the
        CEs); ``usage change``: routing share tuned − base; ``attribution``: the given scores.
        """
        out = {"usage": (np.asarray(self.reference()["usage"], dtype=float), "prompt tokens")}
        if self.counts is not None:
            c = self.counts.counts.double().numpy()
            out["CE rank"] = ((-c).argsort(1, kind="stable").argsort(1, kind="stable") + 1.0, "CE rank")
        if self.counts is not None and self.base_counts is not None:
            out["usage change"] = ((self.counts.frequencies() - self.base_counts.frequencies()).numpy(),
                                   "share tuned − base")
        if self.attribution is not None:
            out["attribution"] = (self.attribution, "attribution")
        return out

    # ------------------------------------------------------------------------------- batch
    def cancel(self) -> None:
        """Stop a running batch after its current chunk."""
        self._cancel.set()

    def run_batch(self, n: int | None = None, chunk: int = 8, on_progress: Callable[[int, int], None] | None = None
                  ) -> dict:
        """EM on the first ``n`` examples of the panel's data under the current mask, and without it.

        Runs in chunks of ``chunk`` examples; :meth:`cancel` stops it between chunks (the EM is then over
        the examples done). Returns ``state.batch``: ``{"n", "done", "em", "em_reference", "running",
        "cancelled", "error", "predictions"}`` (EM ×100 over the examples done; the masked answers).
        """
        from ..evaluation.generate import generate

        data = self.data[:n] if n else self.data
        if not data:
            raise ValueError("batch mode needs data: build the panel with data=... (or from_data)")
        self._cancel.clear()
        st = self.state
        st.batch = b = {"n": len(data), "done": 0, "em": None, "em_reference": None, "running": True,
                        "cancelled": False, "error": None, "mask": self.experts, "mode": st.mode, "preset": st.preset,
                        "predictions": []}
        hits, ref_hits = 0.0, 0.0
        try:
            normalize_mask(self.lm.spec, self.experts, st.mode)
            for s in range(0, len(data), chunk):
                if self._cancel.is_set():
                    b["cancelled"] = True
                    break
                part = data[s:s + chunk]
                with self._lock, _applied(self.lm, self.tuned) as model:
                    key = (s, len(part))  # the unmasked answers do not depend on the mask: computed once
                    ref = self._batch_ref.get(key) or self._batch_ref.setdefault(
                        key, generate(model, part, max_new_tokens=self.max_new_tokens))
                    with mask_experts(model, self.experts, st.mode) if self.experts else nullcontext():
                        got = generate(model, part, max_new_tokens=self.max_new_tokens)
                hits += sum(em_f1(p, e.answers)[0] for p, e in zip(got, part))
                ref_hits += sum(em_f1(p, e.answers)[0] for p, e in zip(ref, part))
                b["done"] += len(part)
                b["em"], b["em_reference"] = 100 * hits / b["done"], 100 * ref_hits / b["done"]
                b["predictions"] += got
                if on_progress is not None:
                    on_progress(b["done"], b["n"])
        except (ValueError, KeyError, IndexError) as e:
            b["error"] = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        finally:
            b["running"] = False
        return b

    # ------------------------------------------------------------------------------- display
    def summary(self, r: dict | None = None) -> str:
        """One readable line about a result (default the last)."""
        from .view import summary

        return summary(r or self.state.result)

    def figure(self, r: dict | None = None):
        """Plotly APG figure (bars) with the masked and unmasked logit-lens probabilities (lines).

        For a result with an error it draws the last valid result greyed (or only the no-mask line
        when there is none): an invalid selection never reads as a probability of 0."""
        from .view import apg_figure

        return apg_figure(r or self.state.result or self.update(), self.state.last_valid)

    def widget(self):
        """The ipywidgets UI (:class:`routerlens_interp.board.view.PanelView`): the layers × experts board
        (click toggles an expert, box/lasso selects many, a row header a whole layer), presets, mode,
        colouring, example picker / free text, the answer and APG, batch EM. Returns the top ``VBox``;
        its controls are in ``panel.controls``."""
        from .view import PanelView

        self.view = PanelView(self)
        if self.state.result is None:
            self.update()
        else:
            self.view.render()
        return self.view.root
