"""routerlens_interp: Router Lens and CEFT for Mixture-of-Experts language models.

Public names are imported lazily, so ``import routerlens_interp`` is fast and the toy-model
generator runs on machines without the tracing stack.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load": ".model", "MoEModel": ".model", "from_hf": ".model",
    "QAExample": ".examples",
    "MoESpec": ".arch", "NotMoEError": ".arch", "inspect_model": ".arch",
    "Trace": ".trace", "trace": ".trace",
    "mask_experts": ".interventions", "knock_out_attention": ".interventions",
    "ExpertCounts": ".counting", "count_experts": ".counting",
    "load_dataset": ".data", "em_f1": ".metrics",
    "ExpertSet": ".selection", "select_experts": ".selection", "random_experts": ".selection",
    "grown_experts": ".selection",
    "evaluate": ".evaluation",
    "attention_gain": ".analysis", "answer_probability_gain": ".analysis", "token_attention_diff": ".analysis",
    "attention_knockout": ".attention_knockout",
    "tune_router": ".train", "ceft": ".train", "full_finetune": ".train",
    "RouterAdapter": ".train", "ExpertAdapter": ".train", "load_adapter": ".train",
    "plot": ".plot", "widgets": ".widgets",
    "attribute_experts": ".ces", "expert_effects": ".ces", "routing_contrast": ".ces", "boost_experts": ".ces",
    "ExpertScores": ".ces", "force_experts": ".ces", "risk_difference": ".ces", "steermoe_sets": ".ces",
    "reap_scores": ".ces",
    "run_pipeline": ".pipeline", "RunData": ".pipeline", "Sizes": ".pipeline", "paper_numbers": ".paper",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'routerlens_interp' has no attribute {name!r}")
    module = importlib.import_module(mod, __name__)
    value = module if name in ("plot", "widgets") else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
