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
    "ExpertCounts": ".analysis.counting", "count_experts": ".analysis.counting",
    "load_dataset": ".data", "em_f1": ".evaluation.metrics",
    "ExpertSet": ".analysis.selection", "select_experts": ".analysis.selection", "random_experts": ".analysis.selection",
    "grown_experts": ".analysis.selection",
    "evaluate": ".evaluation.scoring", "forgetting": ".evaluation.scoring",
    "ChoiceExample": ".data.benchmarks", "choice_accuracy": ".evaluation.choice", "judge_accuracy": ".evaluation.judge",
    "harness": ".evaluation.lmeval", "HarnessLM": ".evaluation.lmeval",
    "bleu": ".evaluation.text_metrics", "rouge_l": ".evaluation.text_metrics", "meteor": ".evaluation.text_metrics", "text_scores": ".evaluation.text_metrics",
    "attention_gain": ".analysis.gains", "answer_probability_gain": ".analysis.gains", "token_attention_diff": ".analysis.gains",
    "attention_knockout": ".analysis.knockout",
    "tune_router": ".train", "ceft": ".train", "full_finetune": ".train",
    "RouterAdapter": ".train", "ExpertAdapter": ".train", "load_adapter": ".train",
    "plot": ".plot", "widgets": ".board.widgets",
    "attribute_experts": ".ces", "expert_effects": ".ces", "routing_contrast": ".ces", "boost_experts": ".ces",
    "ExpertScores": ".ces", "force_experts": ".ces", "risk_difference": ".ces", "steermoe_sets": ".ces",
    "reap_scores": ".ces", "route_vector": ".ces", "steer_route_vector": ".ces", "RouteVector": ".ces",
    "run_pipeline": ".pipeline.run", "RunData": ".pipeline.run", "Sizes": ".pipeline.run", "paper_numbers": ".pipeline.paper",
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
