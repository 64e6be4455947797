"""Tracers: routing decisions, attention to context/answer spans, and logit-lens probabilities."""
import sys
import types

from .core import DEFAULT_SPANS, encode_inputs, lens_probs, trace
from .record import Routing, Trace

__all__ = ["trace", "Trace", "Routing", "DEFAULT_SPANS", "encode_inputs", "lens_probs"]


class _CallableModule(types.ModuleType):
    """Importing this subpackage binds ``routerlens_interp.trace`` to it (Python sets the parent's
    attribute after the import), which would shadow the public function ``rl.trace``: calling the
    module calls the function, so ``rl.trace(lm, examples)`` works whatever was imported first."""

    def __call__(self, *args, **kwargs):
        return trace(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
