"""Tracers: routing decisions, attention to context/answer spans, and logit-lens probabilities."""
from .core import DEFAULT_SPANS, encode_inputs, lens_probs, trace
from .record import Routing, Trace

__all__ = ["trace", "Trace", "Routing", "DEFAULT_SPANS", "encode_inputs", "lens_probs"]
