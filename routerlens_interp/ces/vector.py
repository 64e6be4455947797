"""Route vectors: dense router-logit steering at the position that predicts the answer, without training.

Router tuning on the bundled model changes the routing of the last prompt token most: its tuned routers
applied at that one position give half of its conflict-EM gain, at every prompt token all of it, at the
context or question tokens alone almost none (``benchmarks/route_vector.py`` [1]). And what it adds there is
largely one dense vector per layer (cosine 0.63–0.74 of each example's change with their mean). A *route vector* estimates such a vector without any tuning, as activation steering does
(contrastive activation addition), in router-logit space: the mean router logits over prompts of the
behaviour to move *toward* (open-book questions the model can only answer from the context) minus the mean
over prompts to move *away* from (conflict questions it answers from memory), per MoE layer and position
group:

- group 0, ``last``: the last prompt token (it predicts the first answer token);
- group 1, ``rest``: every other prompt token.

Steering (``mode="add"``) adds ``scale · v[layer, group]`` to the router logits at those positions while the
prompt is read (the prefill); decoding steps are left alone unless ``at_decode`` (they then get the ``last``
vector). ``mode="replace"`` instead pulls the last prompt token's logits toward the ``toward`` side's mean
there, ``x + scale · (mean_toward − x)`` (1 = route that token as the average ``toward`` prompt does; the other
positions untouched): on the bundled model its EM is the same on held-out and test prompts, where the added
vector's best scale on held-out prompts was not the best on test (``benchmarks/route_vector.py`` [2]).

Two more knobs act on the other prompt tokens, as router tuning's change does there too: ``rest_scale`` (the
``rest`` vector, by default ``scale`` in ``add`` mode and 0 in ``replace``) and ``question_scale`` (a third vector,
the same mean difference over the question's tokens only, added there on top; 0 by default). The question's
positions come from the prompts' spans, so ``question_scale`` works inside ``rl.evaluate`` / ``generate``
(which announce each batch's spans), and is refused on a bare model call.
"""
from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..hooks.selfcheck import require_reroute
from ..prompts import encode
from ..train.adapters import tensor_sha256

GROUPS = ("last", "rest")
_FORMAT = "routerlens-route-vector"


def router_fingerprint(lm) -> str:
    """SHA-256 over the MoE layers' router parameters (:meth:`MoEModel.fingerprint` of
    :func:`~routerlens_interp.train.params.router_param_names`); "" where the routers hold none (no check)."""
    from ..train.params import router_param_names

    names = router_param_names(lm)
    return lm.fingerprint(names) if names else ""


def _group_index(B: int, S: int) -> torch.Tensor:
    """``[B·S]`` position group of each row of a left-padded ``[B, S]`` batch: 0 = the last column, 1 = the rest."""
    g = torch.ones(B, S, dtype=torch.long)
    g[:, -1] = 0
    return g.reshape(-1)


@dataclass
class RouteVector:
    """Dense router-logit directions.

    Attributes:
        layers: the MoE decoder layers, in order (``[L]``).
        values: ``[L, 2, E]`` float32: per layer, the ``last`` and ``rest`` vectors (mean router logits over
            ``toward`` minus over ``away``).
        n_toward, n_away: examples averaged on each side.
        toward: ``[L, 2, E]`` float32, the ``toward`` side's mean router logits alone (what ``mode="replace"``
            steers to); None for a vector built by hand.
        question: ``[L, E]`` float32, toward minus away over the question's tokens (``question_scale``); None
            for a vector built by hand.
    """

    layers: list[int]
    values: torch.Tensor
    n_toward: int
    n_away: int
    model: str = ""  # router_fingerprint of the model it was computed on: identifies the base model
    toward: torch.Tensor | None = None
    question: torch.Tensor | None = None

    def save(self, path) -> None:
        """Write a ``.safetensors`` file (:mod:`~routerlens_interp.safe_state`; atomic; a SHA-256 of the values in
        its header, checked by :meth:`load`; nothing in it can run code when loaded)."""
        from .. import safe_state

        v = self.values.float().contiguous()
        d = {"values": v, "layers": list(self.layers), "n_toward": int(self.n_toward), "n_away": int(self.n_away),
             "model": self.model, "sha256": tensor_sha256(v)}
        for k in ("toward", "question"):
            if getattr(self, k) is not None:
                t = getattr(self, k).float().contiguous()
                d.update({k: t, f"{k}_sha256": tensor_sha256(t)})
        safe_state.save(path, d, _FORMAT)

    @classmethod
    def load(cls, path, lm=None) -> "RouteVector":
        """Read a file written by :meth:`save`; a damaged file, another kind of file, or (with ``lm``) a vector
        computed on other routers is refused with the reason."""
        from pathlib import Path

        from .. import safe_state

        p = Path(path)
        if not p.is_file():
            raise UserError(f"no route-vector file at {p}; write one with `routerlens route-vector --vector-out FILE`")
        d = safe_state.load(p, _FORMAT, "write a route vector with `routerlens route-vector --vector-out FILE`")
        v = d.get("values") if isinstance(d, dict) else None
        if not isinstance(v, torch.Tensor) or v.dim() != 3 or v.shape[0] != len(d.get("layers") or []) \
                or tensor_sha256(v) != d.get("sha256"):
            raise UserError(f"{p}: its values do not match their checksum or layers (a damaged file); compute the route "
                            "vector again")
        extra = {}
        for k, shape in (("toward", v.shape), ("question", (v.shape[0], v.shape[2]))):
            t = d.get(k)
            if t is not None and (not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape)
                                  or tensor_sha256(t) != d.get(f"{k}_sha256")):
                raise UserError(f"{p}: its {k} means do not match their checksum or shape (a damaged file); compute "
                                "the route vector again")
            extra[k] = t
        vec = cls([int(x) for x in d["layers"]], v, int(d["n_toward"]), int(d["n_away"]), d.get("model") or "", **extra)
        if lm is not None and vec.model and vec.model != router_fingerprint(lm):
            raise UserError(f"{p} was computed on other routers than this model's (another base model, or an adapter "
                            "applied); compute the route vector on this model")
        return vec

    def norms(self) -> dict[str, list[float]]:
        """``{"last": [L], "rest": [L]}`` Euclidean norms per layer."""
        return {g: [round(float(v), 3) for v in self.values[:, i].norm(dim=-1)] for i, g in enumerate(GROUPS)}


def _padded_side(mask: torch.Tensor | None) -> None:
    if mask is not None and mask.dim() == 2 and mask.shape[1] > 1 and not bool(mask[:, -1].all()):
        raise UserError("route vectors need left-padded prompts (the last column is every row's last prompt token, "
                        "as rl.evaluate and generate batch them); pad on the left or pass one prompt at a time")


@contextmanager
def _batch_shape(lm) -> Iterator[dict]:
    """Yields a dict holding the ``(B, S)`` of the model call in progress (from its ``input_ids`` or
    ``inputs_embeds``), so that router rows ``[B·S, E]`` can be told apart by position."""
    box: dict = {}

    def pre(module, args, kwargs):
        x = kwargs.get("input_ids", args[0] if args else None)
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None:
            raise UserError("route vectors need the model to be called with input_ids or inputs_embeds")
        box["shape"] = (int(x.shape[0]), int(x.shape[1]))
        _padded_side(kwargs.get("attention_mask"))

    h = lm.hf.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield box
    finally:
        h.remove()


def _question_mask(box: dict) -> torch.Tensor:
    """``[B·S]`` 0/1 float: the question's tokens of the batch in progress, as ``rl.evaluate`` announced them."""
    got = box.get("question")
    if got is None or got[0] != box["shape"]:
        raise UserError("question_scale needs to know where each question is: run the model through rl.evaluate (or "
                        "evaluation.generate.generate) inside the with block (they announce each batch's spans), or leave "
                        "question_scale at 0")
    return got[1].float()


def _groups(box: dict, rows: int) -> torch.Tensor | None:
    """``[B·S]`` group index per router row (0 = last column, 1 = the rest) at a prefill; None at a decoding
    step (``S == 1``). Refuses rows that are not ``B·S`` (a family that routes a subset of tokens)."""
    if "shape" not in box:
        raise UserError("route vectors apply inside a model call; run the model inside the with block")
    B, S = box["shape"]
    if rows != B * S:
        raise UserError(f"the router saw {rows} rows for a batch of {B}×{S} tokens; route vectors need one router "
                        "row per token")
    return None if S == 1 else _group_index(B, S)


@torch.no_grad()
def route_vector(lm, toward, away, batch_size: int = 16, progress: bool = False) -> RouteVector:
    """Mean router logits at the ``last`` / ``rest`` prompt positions over ``toward`` minus over ``away``.

    Args:
        toward: QAExamples whose routing to move toward (e.g. open-book questions about facts the model does
            not know: ``toy-open``); away: those to move away from (e.g. knowledge conflicts the model answers
            from memory: ``toy-conflict``). No labels are read: only the prompts.
        batch_size: prompts per forward pass (left padded; padding positions are not averaged).

    Returns a :class:`RouteVector` with ``values [L, 2, E]``.
    """
    toward, away = list(toward), list(away)
    if not toward or not away:
        raise UserError("route_vector needs examples on both sides (toward= and away=)")
    spec = lm.spec
    layers = list(spec.moe_layers)
    require_reroute(lm, layers, "route-vector steering", "it edits the routing as mode='reroute' masking does")
    was = lm.hf.training
    lm.hf.eval()
    try:
        means = [_group_means(lm, data, batch_size, progress, layers) for data in (toward, away)]
    finally:
        lm.hf.train(was)
    diff = (means[0] - means[1]).float()
    return RouteVector(layers, diff[:, :2].contiguous(), len(toward), len(away), router_fingerprint(lm),
                       means[0][:, :2].float().contiguous(), diff[:, 2].contiguous())


def _group_means(lm, data, batch_size, progress, layers) -> torch.Tensor:
    """``[L, 3, E]`` float64 mean router logits over the non-padding prompt positions of ``data``: the last
    position, the others, and the question's tokens (which are also among the others)."""
    E = lm.spec.n_experts
    acc = torch.zeros(len(layers), 3, E, dtype=torch.float64)
    cnt = torch.zeros(3, dtype=torch.float64)
    cur: dict = {}
    with ExitStack() as st:
        for i, l in enumerate(layers):
            def read(x, i=i):
                keep, q, rows = cur["keep"], cur["question"], x.reshape(-1, E)
                # select on the model's device: only the prompt rows travel to the CPU
                acc[i, :2].index_add_(0, cur["group"][keep], rows[keep.to(x.device)].double().cpu())
                acc[i, 2] += rows[q.to(x.device)].double().sum(0).cpu()
            st.enter_context(lm.hooks.read(f"blocks.{l}.router.hook_logits", read))
        window = getattr(lm, "window", None)
        for s in tqdm(range(0, len(data), batch_size), desc="route vector", disable=not progress, unit="batch"):
            enc = [encode(lm.tokenizer, ex, max_length=window) for ex in data[s:s + batch_size]]
            batch = lm.batch(enc, side="left")
            g = _group_index(*batch["input_ids"].shape)
            keep = batch["attention_mask"].bool().cpu().reshape(-1)
            q = _question_rows(enc, *batch["input_ids"].shape)
            cur["group"], cur["keep"], cur["question"] = g, keep, q
            cnt[:2].index_add_(0, g[keep], torch.ones(int(keep.sum()), dtype=torch.float64))
            cnt[2] += int(q.sum())
            lm.hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    if cnt[1] == 0:
        raise UserError("every prompt is one token long; route vectors need the last token and the rest")
    return acc / cnt.clamp(min=1)[None, :, None]  # no question tokens (bare strings): a zero question vector


def _question_rows(enc, B: int, S: int) -> torch.Tensor:
    """``[B·S]`` bool: the question's tokens of each left-padded prompt."""
    q = torch.zeros(B, S, dtype=torch.bool)
    for i, e in enumerate(enc):
        q[i, S - e.prompt_len + e.question] = True
    return q.reshape(-1)


@contextmanager
def steer_route_vector(lm, vector: RouteVector, scale: float = 1.0, at_decode: bool = False,
                       mode: str = "add", rest_scale: float | None = None,
                       question_scale: float = 0.0) -> Iterator[RouteVector]:
    """Add ``scale · vector.values[layer, group]`` to the router logits while the ``with`` block runs
    (``mode="add"``), or pull the last prompt token's logits ``x [E]`` toward the ``toward`` mean ``t``:
    ``x + scale · (t − x)`` (``mode="replace"``; 1 = exactly ``t``; the other positions untouched).

    At a prefill (a left-padded ``[B, S]`` prompt batch, ``S > 1``) the last column gets the ``last`` vector and
    the other columns the ``rest`` vector; at a decoding step (``S == 1``) nothing, or the ``last`` vector
    (``replace``: the same pull) with ``at_decode``. The family's own code turns the edited logits into weights and choices (as router tuning's
    changed logits would be), it is refused where reroute is (:class:`RerouteUnavailable`), and
    ``scale = 0`` is bit-identical to no intervention. For generation (``rl.evaluate``, ``generate``), not for
    teacher-forced sequences with their answers appended (their last column is not the last prompt token).

    ``rest_scale`` scales the ``rest`` vector on its own (default: ``scale`` with ``add``, 0 with ``replace``);
    ``question_scale`` adds that multiple of ``vector.question`` at the question's tokens, whose positions
    ``rl.evaluate`` / ``generate`` announce for each batch (a model call outside them is refused while it is
    not 0).
    """
    scale = float(scale)
    rest_scale = (scale if mode == "add" else 0.0) if rest_scale is None else float(rest_scale)
    question_scale = float(question_scale)
    for name, x in (("scale", scale), ("rest_scale", rest_scale), ("question_scale", question_scale)):
        if not math.isfinite(x):
            raise UserError(f"{name} must be finite (got {x})")
    if mode not in ("add", "replace"):
        raise UserError(f"mode must be 'add' or 'replace' (got {mode!r})")
    if mode == "replace" and vector.toward is None:
        raise UserError("mode='replace' needs the toward side's mean router logits, which this route vector does not "
                        "hold (built by hand or saved before they were kept); compute it with rl.route_vector")
    if question_scale and vector.question is None:
        raise UserError("question_scale needs the question tokens' vector, which this route vector does not hold (built "
                        "by hand or saved before it was kept); compute it with rl.route_vector")
    spec = lm.spec
    if vector.values.shape[1:] != (2, spec.n_experts) or list(vector.layers) != list(spec.moe_layers):
        raise UserError(f"this route vector has shape {tuple(vector.values.shape)} over layers {vector.layers}; the "
                        f"model has {len(spec.moe_layers)} MoE layers of {spec.n_experts} experts: compute it on this model")
    require_reroute(lm, vector.layers, "route-vector steering", "it edits the routing as mode='reroute' masking does")
    with ExitStack() as st:
        box = st.enter_context(_batch_shape(lm))
        if question_scale:
            from ..evaluation.generate import observe_batches

            def spans(enc, batch):
                box["question"] = (tuple(batch["input_ids"].shape), _question_rows(enc, *batch["input_ids"].shape))
            st.enter_context(observe_batches(lm, spans))
        for i, l in enumerate(vector.layers):
            # [2, E]: the last row's offset (none in replace mode, which pulls instead) and the rest's
            v = torch.stack([vector.values[i, 0] * (scale if mode == "add" else 0.0), vector.values[i, 1] * rest_scale])
            t = vector.toward[i, 0] if mode == "replace" else None  # [E]
            qv = vector.question[i] * question_scale if question_scale else None  # [E]

            def edit(x, v=v, t=t, qv=qv):
                g = _groups(box, x.shape[0])
                if g is None:  # a decoding step
                    if not at_decode:
                        return x
                    return x + scale * (t.to(x.device, x.dtype) - x) if t is not None else x + v[0].to(x.device, x.dtype)
                y = x + v.to(x.device, x.dtype)[g.to(x.device)]
                if qv is not None:
                    y = y + _question_mask(box).to(x.device)[:, None] * qv.to(x.device, x.dtype)
                if t is not None:  # replace: the last prompt token pulled toward the toward mean
                    y = torch.where((g == 0).to(x.device)[:, None], x + scale * (t.to(x.device, x.dtype) - x), y)
                return y
            # the logits only: the family's own code then weighs and ranks on them. (boost_experts also adds β
            # to every top-k's input, which for a set is a rank boost; a dense vector added to softmax
            # probabilities would instead pick nearly the same experts for every token.)
            st.enter_context(lm.hooks.edit(f"blocks.{l}.router.hook_logits", edit))
        yield vector
