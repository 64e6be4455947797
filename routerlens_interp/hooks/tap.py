"""Reach a router's logits and its top-k from inside the family's own forward.

Routers decide the top-k inside their own forward, and every family does it differently (softmax or
sigmoid, correction bias, expert groups, logit bias, top-k before or after the normalisation). Instead of
re-implementing each rule, :class:`RoutingTap` is a ``TorchFunctionMode`` that is active only while the
module holding the routing decision runs. It sees two kinds of calls:

- ``F.linear`` whose weight is ``[E, H]``: the router's logits ``[T, E]``. Edits (a −inf for a masked
  expert, +β for steering) apply to them, then reads record them: the family's own code then routes on
  the edited logits. A router that scores its ``S`` shared experts in the same linear (Inkling: weight
  ``[E+S, H]``, logits ``[T, E+S]``) has only its routed part ``[..., :E]`` edited and read; the shared
  experts' logits go back to the family's code as computed, which then normalises both by its own rule.
- ``topk`` over a last axis of size ``E``: the choice scores. Edits apply there too, so an expert whose
  selection score does not come from its logit alone (a correction bias added to sigmoid scores) still
  cannot be chosen when masked.
- The same ``topk`` calls also take *selection-only* edits (``on_select``): the indices come from the
  edited scores, the values from the unedited ones. Steering uses it: +β decides which experts a token
  gets wherever the family ranks experts, while the weights stay the family's own (Mixtral-style code
  uses the top-k values as weights; adding β to them would change the weights, not only the choice).
  A top-k over experts viewed in groups (``[..., G, E/G]``, group-limited routing scoring its groups)
  gets the selection edit in its values too, since those only rank the groups.

The tap counts the logits it sees per call; the model's self-check uses that to refuse families whose
router does not compute its logits this way.

Experts kept as an ``nn.ModuleList`` (remote code: MiniCPM-MoE, DeepSeek-V2 with ``trust_remote_code``) are
never called with ``(indices, weights)``; an ``observe(func, args, result)`` callback sees what the family's
code got back from each call in the routing scope (the top-k result after the edits above), so the hook layer
can follow the top-k values to the weights the family computes from them (:mod:`.experts_list`).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_TOPK = (torch.topk, torch.Tensor.topk)


class RoutingTap(TorchFunctionMode):
    """Edit and read a router's logits ``[T, E]`` and its top-k inputs ``[..., E]`` during one forward.

    Args:
        n_experts / hidden: ``E`` and ``H``, which identify the router's linear (weight ``[E, H]``).
        on_logits: ``logits [T, E] → logits`` (edits, then reads).
        on_choice: ``scores [..., E] → scores`` applied to every top-k input over the expert axis.
        on_select: ``scores [..., E] → scores`` used only to pick the top-k indices (after ``on_choice``);
            the values returned are gathered from the ``on_choice`` scores. Returning its input unchanged
            (the same object) leaves the top-k call as it was.
        observe: ``(func, args, result) → None``, called with what each call in the scope returned to the
            family's code (None: nothing observed).
        shared_rows: ``S``, rows of the router's linear after the ``E`` routed ones that score shared experts
            (``spec.router_shared_rows``); its logits ``[T, E+S]`` then reach ``on_logits`` as ``[T, E]``.
    """

    def __init__(self, n_experts: int, hidden: int, on_logits: Callable, on_choice: Callable | None,
                 on_select: Callable | None = None, observe: Callable | None = None, shared_rows: int = 0):
        super().__init__()
        self.E, self.H, self.S = n_experts, hidden, shared_rows
        self.on_logits, self.on_choice, self.on_select = on_logits, on_choice, on_select
        self.observe = observe
        self.hits = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = self._call(func, args, kwargs or {})
        if self.observe is not None:
            self.observe(func, args, out)
        return out

    def _call(self, func, args, kwargs):
        if func is F.linear:
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            if w is not None and w.dim() == 2 and w.shape[0] == self.E + self.S and w.shape[1] == self.H:
                self.hits += 1
                out = func(*args, **kwargs)
                if not self.S:
                    return self.on_logits(out)
                routed = out[..., :self.E]
                edited = self.on_logits(routed)
                # the shared experts' logits are not the toolkit's to edit: they go back bit for bit
                return out if edited is routed else torch.cat([edited, out[..., self.E:]], dim=-1)
        elif func in _TOPK and (self.on_choice or self.on_select) and args and isinstance(args[0], torch.Tensor):
            x = args[0]
            dim = kwargs.get("dim", args[2] if len(args) > 2 else -1)
            if x.dim() and x.shape[-1] == self.E and dim in (-1, x.dim() - 1):
                scores = self.on_choice(x) if self.on_choice is not None else x
                pick = self.on_select(scores) if self.on_select is not None else scores
                if pick is scores:
                    return func(scores, *args[1:], **kwargs)
                idx = func(pick, *args[1:], **kwargs).indices
                return torch.return_types.topk((scores.gather(-1, idx), idx))
            if (self.on_select is not None and x.dim() >= 3 and x.shape[-2] * x.shape[-1] == self.E
                    and x.shape[-2] > 1 and dim in (-1, x.dim() - 1)):
                # Group-limited routing ranks experts inside groups ([..., G, E/G]) to score the groups; the
                # values only rank groups, so the selection edit goes into them too: a boosted expert's group
                # is raised as the expert is.
                flat = x.reshape(*x.shape[:-2], self.E)
                pick = self.on_select(flat)
                if pick is not flat:
                    return func(pick.reshape(x.shape), *args[1:], **kwargs)
        return func(*args, **kwargs)


def logit_bias(bias: torch.Tensor) -> Callable:
    """An edit adding ``bias [E]`` to router scores ``[..., E]`` (β on the steered experts, 0 elsewhere).

    ``x + 0.0 == x`` for every finite ``x`` (and ``-0.0`` becomes ``+0.0``, which no routing rule tells
    apart), so a zero bias leaves the model bit-identical.
    """
    def edit(x: torch.Tensor) -> torch.Tensor:
        return x + bias.to(device=x.device, dtype=x.dtype)
    return edit
