"""Training as interventions: router tuning, CEFT and full fine-tuning, saved as adapters.

``tune_router`` / ``ceft`` / ``full_finetune`` share one loop (:mod:`.loop`) and return adapters
(:mod:`.adapters`) that swap their tensors into a model reversibly; the base model is left unchanged.

    rt = rl.tune_router(lm, train, dev, out_dir="runs/rt")          # RouterAdapter
    ce = rl.ceft(lm, train, dev, experts=ces, out_dir="runs/ceft")  # ExpertAdapter
    with rl.load_adapter("runs/rt", lm).applied(lm):
        ...

Several processes (DDP) run the same script: ``accelerate launch --multi_gpu --num_processes N
script.py``, on GPUs and on CPUs (gloo), or ``torchrun --nproc_per_node N script.py`` (``accelerate
launch --cpu`` starts a single process). ``fsdp=True`` or ``accelerate launch --use_fsdp --fsdp_version 2``
shards the model instead (:mod:`.fsdp`). ``batch_size`` is global, so the result does not depend on the
number of processes.
"""
from .adapters import Adapter, ExpertAdapter, FullAdapter, RouterAdapter, load_adapter
from .config import TrainConfig
from .methods import ceft, full_finetune, tune_router

__all__ = ["tune_router", "ceft", "full_finetune", "Adapter", "RouterAdapter", "ExpertAdapter", "FullAdapter",
           "load_adapter", "TrainConfig"]
