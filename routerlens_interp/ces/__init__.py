"""Context-faithful experts without training: attribution, exact masking effects, routing contrast, steering."""
from .attribution import attribute_experts
from .contrast import RoutingContrast, routing_contrast
from .effects import expert_effects
from .force import force_experts
from .reap import reap_scores
from .risk import risk_difference, steermoe_sets
from .scores import ExpertScores, spearman
from .steering import best_beta, boost_experts, steer
from .vector import RouteVector, route_vector, steer_route_vector

__all__ = ["attribute_experts", "expert_effects", "routing_contrast", "RoutingContrast", "ExpertScores",
           "spearman", "boost_experts", "force_experts", "reap_scores", "risk_difference",
           "steermoe_sets", "steer", "best_beta", "RouteVector", "route_vector",
           "steer_route_vector"]
