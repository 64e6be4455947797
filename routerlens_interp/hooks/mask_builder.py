"""``attn.hook_mask`` on attention modules that build their attention mask inside their own forward.

GLM-5-Next's MLA+DSA layers get only the ``[B, T]`` boolean padding mask (their indexer needs it), score key
pools with the indexer, and turn its top-k into the mask the attention function gets with
``build_attention_mask_from_topk`` (``[B, 1, T, T]``: boolean for SDPA, additive for eager). An edit of
the ``[B, T]`` kwarg would reach the indexer and every query; the point is put on what that method returns
instead, by shadowing it on the instance while the point has clients (removed with the last one).

Each forward of the module checks that the method ran, so a modeling file that stops building its mask there
fails loudly instead of leaving the mask unedited.
"""
from __future__ import annotations

from typing import Callable

import torch

BUILDERS = ("build_attention_mask_from_topk",)


def builder(module: torch.nn.Module) -> str | None:
    """The name of ``module``'s own mask builder, or None (it takes its mask as the ``attention_mask`` kwarg)."""
    return next((n for n in BUILDERS if callable(getattr(type(module), n, None))), None)


class BuilderHook:
    """Handle: ``run(mask) → mask`` on every mask ``module.<method>`` returns; ``remove()`` restores the class's
    method. ``name``: the hook point, for the error raised when a forward of the module never built its mask."""

    def __init__(self, module: torch.nn.Module, method: str, run: Callable, name: str):
        self.module, self.method, self.name = module, method, name
        self.calls = 0
        own = getattr(module, method)  # the bound class method

        def built(*args, **kwargs):
            self.calls += 1
            return run(own(*args, **kwargs))

        object.__setattr__(module, method, built)  # an instance attribute (not a parameter or submodule)
        self.handles = [module.register_forward_pre_hook(self._start),
                        module.register_forward_hook(self._check)]

    def _start(self, module, args) -> None:
        self.calls = 0

    def _check(self, module, args, output) -> None:
        if self.calls == 0:
            raise RuntimeError(f"{self.name} cannot edit {type(module).__name__}'s attention mask: its forward did not "
                               f"build the mask with {self.method} (the modeling code changed?)")

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self.module.__dict__.pop(self.method, None)
