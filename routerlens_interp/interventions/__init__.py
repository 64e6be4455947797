"""Interventions on a traced model: expert masking, attention knockout (context managers) and adapters."""
from ..hooks.selfcheck import RerouteUnavailable
from .knockout import knock_out_attention
from .masking import MODES, active_mask, mask_experts, normalize_mask

__all__ = ["mask_experts", "knock_out_attention", "normalize_mask", "active_mask", "RerouteUnavailable", "MODES"]
