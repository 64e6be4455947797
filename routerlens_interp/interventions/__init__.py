"""Interventions on a traced model: expert masking (context manager) and adapters."""
from .masking import MODES, mask_experts, normalize_mask

__all__ = ["mask_experts", "normalize_mask", "MODES"]
