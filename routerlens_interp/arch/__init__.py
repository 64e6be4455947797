"""Architecture families: where routers, experts, attention and the unembedding live."""
from .inspect import KNOWN_FAMILIES, INSPECTED_FAMILIES, ROUTING_RULES, SUPPORTED, UNSUPPORTED, NotMoEError, inspect_model
from .spec import MoESpec, get_path

__all__ = ["MoESpec", "get_path", "inspect_model", "NotMoEError", "KNOWN_FAMILIES", "INSPECTED_FAMILIES",
           "SUPPORTED"]
