"""Reach a router's logits and its top-k from inside the family's own forward.

Routers decide the top-k inside their own forward, and every family does it differently (softmax or
sigmoid, correction bias, expert groups, logit bias, top-k before or after the normalisation). Instead of
re-implementing each rule, :class:`RoutingTap` is a ``TorchFunctionMode`` that is active only while the
module holding the routing decision runs. It sees two kinds of calls:

- ``F.linear`` whose weight is ``[E, H]``: the router's logits ``[T, E]``. Edits (a −inf for a masked
  expert, +β for steering) apply to them, then reads record them: the family's own code then routes on
  the edited logits.
- ``topk`` over a last axis of size ``E``: the choice scores. Edits apply there too, so an expert whose
  selection score does not come from its logit alone (a correction bias added to sigmoid scores) still
  cannot be chosen when masked.

The tap counts the logits it sees per call; the model's self-check uses that to refuse families whose
router does not compute its logits this way.
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
    """

    def __init__(self, n_experts: int, hidden: int, on_logits: Callable, on_choice: Callable | None):
        super().__init__()
        self.E, self.H = n_experts, hidden
        self.on_logits, self.on_choice = on_logits, on_choice
        self.hits = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            if w is not None and w.dim() == 2 and w.shape[0] == self.E and w.shape[1] == self.H:
                self.hits += 1
                return self.on_logits(func(*args, **kwargs))
        elif func in _TOPK and self.on_choice is not None and args and isinstance(args[0], torch.Tensor):
            x = args[0]
            dim = kwargs.get("dim", args[2] if len(args) > 2 else -1)
            if x.dim() and x.shape[-1] == self.E and dim in (-1, x.dim() - 1):
                return func(self.on_choice(x), *args[1:], **kwargs)
        return func(*args, **kwargs)
