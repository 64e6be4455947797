"""Expert usage statistics: how often each routed expert is picked, per MoE layer."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch

from ..hooks.devices import to_acc
from ..errors import UserError


@dataclass
class ExpertCounts:
    """Routing statistics over a set of tokens.

    Attributes:
        counts: ``[n_moe_layers, n_experts]`` int64, number of tokens whose top-k contains the expert.
        layers: decoder-layer index of each row (ordered as ``spec.moe_layers``).
        weight_sums: ``[n_moe_layers, n_experts]`` float64, sum of the top-k routing weights the
            expert received (the weights that reached the experts, as the hook layer's route read
            gives them; 0 where not selected): ESFT's gate score numerator.
        prob_sums: ``[n_moe_layers, n_experts]`` float64, sum over tokens of the router's full
            softmax probability for the expert (the ``"softmax_mass"`` selection score).
        n_tokens: number of tokens counted (per layer).
        top_k: experts per token.
    """

    counts: torch.Tensor
    layers: list[int]
    weight_sums: torch.Tensor
    prob_sums: torch.Tensor
    n_tokens: int
    top_k: int

    @property
    def n_experts(self) -> int:
        return int(self.counts.shape[1])

    def row(self, layer: int) -> torch.Tensor:
        """Counts ``[n_experts]`` of decoder layer ``layer``."""
        if layer not in self.layers:
            raise KeyError(f"layer {layer} is not an MoE layer here; MoE layers: {self.layers}")
        return self.counts[self.layers.index(layer)]

    def frequencies(self) -> torch.Tensor:
        """``[n_moe_layers, n_experts]`` share of tokens routed to each expert (rows sum to top_k)."""
        return self.counts.double() / max(self.n_tokens, 1)

    def __add__(self, other: "ExpertCounts") -> "ExpertCounts":
        if other.layers != self.layers or other.counts.shape != self.counts.shape:
            raise ValueError("cannot add ExpertCounts of different models (layers or experts differ)")
        return ExpertCounts(self.counts + other.counts, list(self.layers), self.weight_sums + other.weight_sums,
                            self.prob_sums + other.prob_sums, self.n_tokens + other.n_tokens, self.top_k)

    def save(self, path: str | Path) -> None:
        """Write to a safetensors file (e.g. ``counts.safetensors``; the extension is only a name): every
        tensor field as a tensor, the other fields as JSON. Nothing in it can run code when loaded."""
        from .. import safe_state

        safe_state.save(path, {f.name: getattr(self, f.name) for f in fields(self)}, _KIND)

    @classmethod
    def load(cls, path: str | Path) -> "ExpertCounts":
        """Read a file written by :meth:`save`. An old pickle counts file is refused (never unpickled)."""
        from .. import safe_state

        d = safe_state.load(path, _KIND, "recount with `routerlens count`")
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(d)) if isinstance(d, dict) else sorted(names)
        if missing:
            raise UserError(f"{path} lacks the field(s) {missing} (written by an older routerlens); "
                            "recount with `routerlens count`")
        return cls(**{k: d[k] for k in names})


_KIND = "routerlens expert counts"


class _Recorder:
    """Forward hooks that accumulate routing statistics on the model's device for selected tokens."""

    def __init__(self, lm):
        self.lm, self.spec = lm, lm.spec
        L, E = len(self.spec.moe_layers), self.spec.n_experts
        dev = lm.device
        self.counts = torch.zeros(L, E, dtype=torch.long, device=dev)
        self.wsum = torch.zeros(L, E, dtype=torch.float64, device=dev)
        self.psum = torch.zeros(L, E, dtype=torch.float64, device=dev)
        self.token_mask: torch.Tensor | None = None  # [B*T] bool, set per batch
        self.handles = []

    def __enter__(self):
        from contextlib import ExitStack

        self.stack = ExitStack()
        hooks = self.lm.hooks
        for r, layer in enumerate(self.spec.moe_layers):
            self.stack.enter_context(hooks.read(f"blocks.{layer}.router.hook_logits", self._logits_read(r)))
            self.stack.enter_context(hooks.read(f"blocks.{layer}.experts.hook_route", self._route_read(r)))
        return self

    def __exit__(self, *exc):
        self.stack.close()

    # With a device map a layer's router outputs live on that layer's device: each record is moved to the
    # accumulators' device before it is selected and added (routerlens_interp.hooks.devices).
    def _logits_read(self, r):
        def read(logits):
            logits = to_acc(logits, self.psum)
            probs = logits.reshape(-1, logits.shape[-1]).float().softmax(dim=-1)[self.token_mask]
            self.psum[r] += probs.nan_to_num().sum(dim=0).double()
        return read

    def _route_read(self, r):
        def read(idx, w):
            k = idx.shape[-1]
            idx, w = to_acc(idx, self.counts), to_acc(w, self.counts)
            idx, w = idx.reshape(-1, k)[self.token_mask], w.reshape(-1, k)[self.token_mask]
            E = self.spec.n_experts
            self.counts[r] += torch.bincount(idx.reshape(-1).long(), minlength=E)[:E]
            self.wsum[r] += torch.bincount(idx.reshape(-1).long(), weights=w.reshape(-1).double(), minlength=E)[:E]
        return read


SPANS = ("all", "prompt", "context", "question", "answer", "sequence")


@torch.no_grad()
def count_experts(lm, examples, span: str = "all", with_answer: bool = True, batch_size: int = 8,
                  progress: bool = False) -> ExpertCounts:
    """Count top-k selections of every routed expert over the tokens of ``examples``.

    Args:
        lm: a :class:`~routerlens_interp.model.MoEModel` (masks and adapters in force are respected).
        examples: QAExamples or strings.
        span: which tokens count: ``"all"`` (prompt + answer, without the end-of-turn token / EOS, as the
            paper's ``exp_act_count.py`` counts), ``"prompt"``, ``"context"``, ``"question"``, ``"answer"``,
            or ``"sequence"`` (prompt + answer + the end token(s)).
        with_answer: append the gold answer (+ its end token, which ``"all"`` leaves out) to QAExamples.

    Returns :class:`ExpertCounts` with ``counts [len(moe_layers), n_experts]``.
    """
    from tqdm.auto import tqdm

    from ..prompts import truncation_report
    from ..trace import encode_inputs

    if span not in SPANS:
        raise ValueError(f"unknown span {span!r}; use all, prompt, context, question, answer or sequence")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    with truncation_report("count"):
        encoded = encode_inputs(lm, examples, with_answer=with_answer)
    n_tokens = 0
    was_training = lm.hf.training
    lm.hf.eval()
    try:
        with _Recorder(lm) as rec:
            for s in tqdm(range(0, len(encoded), batch_size), desc="count", disable=not progress, unit="batch"):
                chunk = encoded[s:s + batch_size]
                batch = lm.batch(chunk)
                T = batch["input_ids"].shape[1]
                sel = torch.zeros(len(chunk), T, dtype=torch.bool)
                for b, e in enumerate(chunk):
                    sel[b, e.span(span)] = True
                rec.token_mask = sel.view(-1).to(lm.device)
                n_tokens += int(sel.sum())
                lm.hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        lm.hf.train(was_training)
    return ExpertCounts(rec.counts.cpu(), list(lm.spec.moe_layers), rec.wsum.cpu(), rec.psum.cpu(), n_tokens,
                        lm.spec.top_k)
