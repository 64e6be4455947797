"""Live expert ablation: pick experts to mask per layer (or a preset) and watch one answer change.

The logic is plain Python (:class:`AblationPanel`), so it is tested without a browser; ``.widget()``
only wires ipywidgets controls to it::

    panel = rl.widgets.AblationPanel(lm, example, presets={"CEs": ces, "random": rnd}, tuned=rt)
    panel.widget()                         # in Jupyter: per-layer expert pickers, preset menu, live output
    panel.apply_preset("CEs"); r = panel.update()   # the same without a browser
    r["answer"], r["p_answer"], r["apg"]

Every :meth:`AblationPanel.update` runs the model (with ``tuned`` applied, if given) under
``rl.mask_experts(lm, selection, mode)`` and compares with the same model unmasked (the reference):
the greedy answer, the probability of the first gold-answer token at the last prompt position, and
the logit-lens probability of that token after every layer, whose difference from the reference is
the per-layer APG (DESIGN.md §1). Hooks never outlive an update.
"""
from __future__ import annotations

import html
from contextlib import contextmanager, nullcontext
from typing import Any, Mapping

import numpy as np
import torch

from .interventions import mask_experts, normalize_mask
from .metrics import em_f1

__all__ = ["AblationPanel", "default_presets", "describe_change"]

NO_MASK = "none"
CUSTOM = "(custom)"


def default_presets(lm, data, tuned=None, n: int | None = None, seed: int = 0) -> dict:
    """The usual comparison sets for a panel, from routing counts on ``data`` (QAExamples).

    Returns ``{"CEs": top-n experts per layer under ``tuned`` (or the base model when ``tuned`` is
    None), "random": n random non-CE experts per layer, "base top": the base model's n most-used
    experts per layer}`` (ExpertSets). ``n`` defaults to ``max(top_k, n_experts // 8)`` as in the demo.
    """
    from .counting import count_experts
    from .selection import random_experts, select_experts

    spec = lm.spec
    n = n or max(spec.top_k, spec.n_experts // 8)
    base_counts = count_experts(lm, data)
    with _applied(lm, tuned) as model:
        tuned_counts = count_experts(model, data) if tuned is not None else base_counts
    ces = select_experts(tuned_counts, n=n)
    return {"CEs": ces,
            "random": random_experts(n, spec.moe_layers, spec.n_experts, exclude=ces, seed=seed),
            "base top": select_experts(base_counts, n=n)}


@contextmanager
def _applied(lm, tuned):
    """Yield the model to run: ``lm``, ``lm`` with an adapter applied, or a tuned ``MoEModel``."""
    from .model import MoEModel

    if tuned is None:
        yield lm
    elif isinstance(tuned, MoEModel):
        yield tuned
    elif hasattr(tuned, "applied"):
        with tuned.applied(lm):
            yield lm
    else:
        raise TypeError(f"tuned must be an adapter (with .applied(lm)) or an MoEModel, not {type(tuned).__name__}")


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class AblationPanel:
    """State and computation of the live-ablation panel for one example.

    Args:
        lm: a :class:`~routerlens_interp.model.MoEModel`.
        example: the :class:`~routerlens_interp.examples.QAExample` to probe.
        presets: name → expert set (``{layer: [experts]}``/``ExpertSet``); ``"none"`` (no mask) is
            always added first.
        tuned: optional adapter (``.applied(lm)``) or tuned ``MoEModel``: the panel then ablates the
            tuned model, and the reference is the tuned model without a mask.
        mode: masking mode, ``"reroute"`` or ``"zero"`` (see :func:`~routerlens_interp.mask_experts`).
        max_new_tokens: length limit of the greedy answer.

    Attributes:
        selection: ``{moe_layer: [expert ids]}`` currently selected for masking.
        preset: name of the preset the selection came from (``"(custom)"`` after manual edits).
        result: the dict of the last :meth:`update` (None before the first).
    """

    def __init__(self, lm, example, presets: Mapping[str, Mapping] | None = None, tuned=None,
                 mode: str = "reroute", max_new_tokens: int = 16):
        self.lm = lm
        self.example = example
        self.tuned = tuned
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.layers = list(lm.spec.moe_layers)
        self.presets: dict[str, dict[int, list[int]]] = {NO_MASK: {}}
        for name, experts in (presets or {}).items():
            self.presets[str(name)] = {int(l): sorted(int(e) for e in ids) for l, ids in dict(experts).items()}
        self.selection: dict[int, list[int]] = {l: [] for l in self.layers}
        self.preset = NO_MASK
        self.result: dict | None = None
        self._reference: dict | None = None
        self._enc = lm.encode(example)
        if len(self._enc.answer_ids) == 0:
            raise ValueError("the example has no gold answer tokens to measure")
        self._target = int(self._enc.answer_ids[0])
        self._ui: dict[str, Any] | None = None
        self.controls: dict[Any, Any] = {}

    # ------------------------------------------------------------------------------- state
    @property
    def experts(self) -> dict[int, list[int]]:
        """The current selection without empty layers (what is masked)."""
        return {l: list(ids) for l, ids in self.selection.items() if ids}

    def set_experts(self, layer: int, experts) -> None:
        """Select exactly ``experts`` for masking in MoE ``layer`` (replaces that layer's selection)."""
        layer = int(layer)
        if layer not in self.selection:
            raise KeyError(f"layer {layer} is not an MoE layer; MoE layers: {self.layers}")
        self.selection[layer] = sorted({int(e) for e in experts})
        self.preset = CUSTOM

    def toggle(self, layer: int, expert: int) -> None:
        """Add ``expert`` to ``layer``'s selection, or remove it when already selected."""
        cur = set(self.selection[int(layer)])
        cur ^= {int(expert)}
        self.set_experts(layer, cur)

    def clear(self) -> None:
        """Select nothing (no mask)."""
        self.apply_preset(NO_MASK)

    def apply_preset(self, name: str) -> None:
        """Replace the whole selection by preset ``name``."""
        if name not in self.presets:
            raise KeyError(f"unknown preset {name!r}; presets: {list(self.presets)}")
        chosen = self.presets[name]
        self.selection = {l: list(chosen.get(l, [])) for l in self.layers}
        extra = sorted(set(chosen) - set(self.layers))
        for l in extra:  # keep invalid layers so update() reports them instead of silently dropping
            self.selection[l] = list(chosen[l])
        self.preset = name

    # ------------------------------------------------------------------------------- compute
    @torch.no_grad()
    def _measure(self, model) -> dict:
        from .evaluation import generate

        ids = self._enc.input_ids[None].to(model.device)
        # the model's own logits: GraniteMoE & co. already apply their logit scaling in forward
        probs = model.hf(input_ids=ids).logits[0, self._enc.last_prompt].float().softmax(-1)
        top = int(probs.argmax())
        answer = generate(model, [self.example], max_new_tokens=self.max_new_tokens)[0]
        lens = model.trace([self._enc], routing=False, attention=False, lens=True,
                           lens_targets=[self._target]).lens[0].double().numpy()
        em, f1 = em_f1(answer, self.example.answers)
        tok = model.tokenizer
        return {"answer": answer, "em": em, "f1": f1, "p_answer": float(probs[self._target]),
                "top_token": tok.decode([top]), "p_top": float(probs[top]), "lens": lens}

    def reference(self) -> dict:
        """The unmasked measurement (cached): what APG is measured against."""
        if self._reference is None:
            with _applied(self.lm, self.tuned) as model:
                self._reference = self._measure(model)
        return self._reference

    def update(self) -> dict:
        """Recompute under the current selection.

        Returns a dict: ``experts`` (masked, per layer), ``preset``, ``mode``, ``error`` (None, or the
        message when the selection cannot be masked — then only the reference fields are filled),
        ``answer`` (greedy), ``em``/``f1`` against the gold answers, ``answer_token`` (first gold
        token), ``p_answer`` (its probability at the last prompt position), ``top_token``/``p_top``
        (the most likely next token), ``layers``, ``lens`` ``[L]`` (logit-lens probability of the
        answer token after each decoder layer), ``reference`` (the same fields without a mask) and
        ``apg`` ``[L]`` = ``lens − reference lens`` (zero without a mask).
        """
        ref = self.reference()
        out = {"experts": self.experts, "preset": self.preset, "mode": self.mode, "error": None,
               "answer_token": self.lm.tokenizer.decode([self._target]), "gold": list(self.example.answers),
               "layers": list(range(self.lm.spec.n_layers)),
               "reference": {k: v for k, v in ref.items()}}
        try:
            normalize_mask(self.lm.spec, self.experts, self.mode)
            with _applied(self.lm, self.tuned) as model:
                with mask_experts(model, self.experts, self.mode) if self.experts else nullcontext():
                    m = self._measure(model)
        except (ValueError, KeyError, IndexError) as e:
            out["error"] = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
            nan = np.full(len(ref["lens"]), np.nan)
            out.update({"answer": None, "em": None, "f1": None, "p_answer": None, "top_token": None, "p_top": None,
                        "lens": nan, "apg": nan})
        else:
            out.update(m)
            out["apg"] = m["lens"] - ref["lens"]
        self.result = out
        if self._ui is not None:
            self._render(out)
        return out

    def run_preset(self, name: str) -> dict:
        """``apply_preset(name)`` then ``update()``."""
        self.apply_preset(name)
        return self.update()

    # ------------------------------------------------------------------------------- display
    def summary(self, r: dict | None = None) -> str:
        """One readable line about a result (default the last)."""
        r = r or self.result
        if r is None:
            return "not computed yet; call update()"
        n = sum(len(v) for v in r["experts"].values())
        head = f"[{r['preset']}] {n} expert(s) masked ({r['mode']})"
        if r["error"]:
            return f"{head}: error: {r['error']}"
        ok = "correct" if r["em"] else "wrong"
        return (f"{head}: answer {r['answer']!r} ({ok}; gold {r['gold'][0]!r}), p({r['answer_token'].strip()!r}) = "
                f"{r['p_answer']:.3f} (no mask {r['reference']['p_answer']:.3f}), APG last layer {r['apg'][-1]:+.3f}")

    def figure(self, r: dict | None = None):
        """Plotly APG figure (bars) with the masked and unmasked logit-lens probabilities (lines)."""
        from . import plot
        from .analysis import ProbabilityGain

        r = r or self.result or self.update()
        apg = np.nan_to_num(np.asarray(r["apg"], dtype=float))
        lens = np.nan_to_num(np.asarray(r["lens"], dtype=float))
        pg = ProbabilityGain(r["layers"], apg, None, np.asarray(r["reference"]["lens"]), lens)  # one example: no error bars
        fig = plot.answer_probability_gain(pg, title=f"APG of the mask vs no mask — p({r['answer_token'].strip()!r})")
        fig.data[0].name = "APG (masked − no mask)"
        fig.data[1].name, fig.data[2].name = "p(answer), no mask", "p(answer), masked"
        return fig

    def _html(self, r: dict) -> str:
        esc = html.escape
        ref = r["reference"]
        rows = [f"<b>Question:</b> {esc(self.example.question)} &nbsp; <b>gold:</b> {esc(r['gold'][0])}"]
        if r["error"]:
            rows.append(f"<span style='color:#c00'><b>Cannot mask this selection:</b> {esc(r['error'])}</span>")
        else:
            mark = "✔" if r["em"] else "✘"
            rows.append(f"<b>Answer:</b> {esc(repr(r['answer']))} {mark} &nbsp; (no mask: {esc(repr(ref['answer']))})")
            rows.append(f"<b>p({esc(r['answer_token'].strip())!r}):</b> {r['p_answer']:.4f} "
                        f"(no mask {ref['p_answer']:.4f}) &nbsp; <b>top next token:</b> "
                        f"{esc(repr(r['top_token']))} ({r['p_top']:.3f})")
        masked = ", ".join(f"L{l}: {ids}" for l, ids in r["experts"].items()) or "nothing"
        rows.append(f"<b>Masked</b> ({esc(r['mode'])}, preset {esc(r['preset'])}): {esc(masked)}")
        return "<br>".join(rows)

    def _render(self, r: dict) -> None:
        ui = self._ui
        ui["status"].value = self._html(r)
        fig = self.figure(r)
        if ui["fig"] is not None:
            with ui["fig"].batch_update():
                for old, new in zip(ui["fig"].data, fig.data):
                    old.y = new.y
                ui["fig"].layout.title = fig.layout.title
                ui["fig"].layout.yaxis.range = fig.layout.yaxis.range
                ui["fig"].layout.yaxis2.range = fig.layout.yaxis2.range
        else:
            ui["last_fig"] = fig
            if _in_kernel():  # outside Jupyter (scripts, tests) there is nothing to draw on
                ui["plot"].clear_output(wait=True)
                with ui["plot"]:
                    fig.show()

    def widget(self):
        """Build the ipywidgets UI: a preset menu, a mode menu, one expert multi-select per MoE layer,
        and an output area (answer, probability, APG figure) refreshed on every change.

        Returns the top ``ipywidgets.VBox``; its controls are in ``panel.controls`` (``"preset"``,
        ``"mode"``, and one per layer keyed by the layer index) for scripting.
        """
        import ipywidgets as w

        n = self.lm.spec.n_experts
        preset = w.Dropdown(options=list(self.presets) + [CUSTOM], value=self.preset, description="preset")
        mode = w.Dropdown(options=["reroute", "zero"], value=self.mode, description="mode")
        pickers = {}
        for l in self.layers:
            pickers[l] = w.SelectMultiple(options=[(f"E{e}", e) for e in range(n)],
                                          value=tuple(self.selection.get(l, [])), rows=min(n, 8),
                                          description=f"L{l}", layout=w.Layout(width="110px"),
                                          style={"description_width": "28px"})
        status = w.HTML()
        try:
            import plotly.graph_objects as go

            fig = go.FigureWidget(self.figure(self.result or self.update()))
            plot_area = fig
        except ImportError:  # FigureWidget needs anywidget; fall back to a static figure in an Output
            fig, plot_area = None, w.Output()
        self._ui = {"status": status, "fig": fig, "plot": plot_area, "preset": preset, "mode": mode,
                    "pickers": pickers, "busy": False, "last_fig": None}
        self.controls = {"preset": preset, "mode": mode, **pickers}

        def sync_pickers():
            self._ui["busy"] = True
            try:
                for l, p in pickers.items():
                    p.value = tuple(self.selection.get(l, []))
                preset.value = self.preset if self.preset in self.presets else CUSTOM
            finally:
                self._ui["busy"] = False

        def on_preset(change):
            if self._ui["busy"] or change["new"] == CUSTOM:
                return
            self.apply_preset(change["new"])
            sync_pickers()
            self.update()

        def on_pick(layer):
            def cb(change):
                if self._ui["busy"]:
                    return
                self.set_experts(layer, change["new"])
                self._ui["busy"] = True
                preset.value = CUSTOM
                self._ui["busy"] = False
                self.update()
            return cb

        def on_mode(change):
            self.mode = change["new"]
            self.update()

        preset.observe(on_preset, names="value")
        mode.observe(on_mode, names="value")
        for l, p in pickers.items():
            p.observe(on_pick(l), names="value")
        self._render(self.result or self.update())
        title = w.HTML(f"<b>Live expert ablation</b> — select experts to mask (ctrl/shift-click for several); "
                       f"{'tuned model' if self.tuned is not None else 'base model'}, {len(self.layers)} MoE layers "
                       f"× {n} experts, top-{self.lm.spec.top_k}")
        return w.VBox([title, w.HBox([preset, mode]), w.HBox(list(pickers.values())), status, plot_area])


def describe_change(a: dict, b: dict) -> str:
    """What changed from result ``a`` to result ``b`` of :meth:`AblationPanel.update`, as text."""
    name = lambda r: f"[{r['preset']}]"
    if a.get("error") or b.get("error"):
        return f"{name(a)} → {name(b)}: " + "; ".join(f"{name(r)} error: {r['error']}" for r in (a, b) if r.get("error"))
    parts = [f"{name(a)} → {name(b)}:",
             f"answer {a['answer']!r} → {b['answer']!r}" + (" (unchanged)" if a["answer"] == b["answer"] else ""),
             f"p(answer) {a['p_answer']:.3f} → {b['p_answer']:.3f} ({b['p_answer'] - a['p_answer']:+.3f})"]
    d = np.asarray(b["lens"]) - np.asarray(a["lens"])
    i = int(np.nanargmax(np.abs(d))) if np.isfinite(d).any() else 0
    parts.append(f"largest logit-lens change at layer {b['layers'][i]} ({d[i]:+.3f})")
    return " ".join(parts[:1]) + " " + "; ".join(parts[1:])
