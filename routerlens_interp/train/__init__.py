"""Training as interventions: router tuning, CEFT and full fine-tuning, saved as adapters.

``tune_router`` / ``ceft`` / ``full_finetune`` share one loop (:mod:`.loop`) and return adapters
(:mod:`.adapters`) that swap their tensors into a model reversibly.
"""
from .adapters import Adapter, ExpertAdapter, FullAdapter, RouterAdapter, load_adapter
from .config import TrainConfig
from .methods import ceft, full_finetune, tune_router

__all__ = ["tune_router", "ceft", "full_finetune", "Adapter", "RouterAdapter", "ExpertAdapter", "FullAdapter",
           "load_adapter", "TrainConfig"]
