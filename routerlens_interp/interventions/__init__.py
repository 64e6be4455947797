"""Interventions on a traced model: expert masking (context manager) and adapters."""
from .masking import MODES, active_mask, active_reroute_mask, mask_experts, normalize_mask

__all__ = ["mask_experts", "normalize_mask", "active_mask", "active_reroute_mask", "MODES"]
