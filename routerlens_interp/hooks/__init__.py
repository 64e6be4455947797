"""The one hook layer: named read/edit points of a model (``lm.hooks``) and the self-checks that guard them."""
from .experts_list import ExpertsListUnavailable
from .layer import EDITABLE, HookLayer
from .selfcheck import RerouteUnavailable, check_lens, check_reroute, lens_logits
from .tap import RoutingTap

__all__ = ["HookLayer", "RoutingTap", "EDITABLE", "RerouteUnavailable", "ExpertsListUnavailable", "check_reroute", "check_lens", "lens_logits"]
