"""Training configuration shared by router tuning, CEFT and full fine-tuning."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

__all__ = ["TrainConfig", "PAPER_RECIPE"]

#: The paper's public recipe (OLMoE-1B-7B-Instruct), the same for RT, CEFT and FFT: lr 5e-4, 3 epochs, cosine with
#: 10 % warm-up, batch 8, examples over 300 tokens dropped, dev loss at 10 points (best kept), seed 826.
PAPER_RECIPE = dict(epochs=3, lr=5e-4, batch_size=8, warmup=0.1, max_tokens=300, seed=826, eval_points=10)

# Fields that change how a run is executed or reported but not what it computes: left out of the hash,
# so a run may be resumed with a different checkpoint cadence or progress setting.
_NOT_HASHED = {"checkpoint_every", "eval_batch_size", "fsdp", "gradient_checkpointing"}


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (defaults: the paper's public recipe for OLMoE).

    Attributes:
        epochs: passes over the training set (3).
        lr: peak AdamW learning rate (5e-4).
        batch_size: examples per optimizer step, *global*: summed over processes and accumulation
            micro-batches (8). Each process runs ``batch_size / (processes * grad_accum)`` examples per
            micro-batch, so a run computes the same update whatever the number of processes.
        grad_accum: micro-batches accumulated per optimizer step on each process (1).
        max_tokens: examples whose prompt + answer + EOS exceed this many tokens are dropped (300).
        warmup: fraction of the steps spent in linear warm-up before the cosine decay (0.1).
        weight_decay: AdamW decoupled weight decay (0.0, as the HF Trainer default the paper used).
            It applies only to trainable tensors: for CEFT only the selected experts' slices exist
            as parameters, so the other experts are never decayed.
        betas, eps: AdamW constants (torch defaults).
        max_grad_norm: gradient clipping over the trainable tensors (1.0, the HF Trainer default);
            ``None`` disables it.
        seed: seeds data order, dropout and any routing noise (826).
        eval_points: dev loss is computed at this many evenly spaced fractions of training (10), the
            last one at the final step; ignored when ``eval_every`` is set.
        eval_every: evaluate every this many optimizer steps instead (and at the final step).
        eval_batch_size: dev micro-batch size per process (8).
        checkpoint_every: write ``out_dir/checkpoint`` every this many steps (50; 0 = only at the end).
        max_steps: stop after this many optimizer steps (overrides ``epochs``; for smoke runs).
        fsdp: with several processes, shard parameters, gradients and AdamW state over them (torch
            FSDP2, one shard group per decoder layer) instead of keeping a model copy per process
            (DDP). Also on when launched with ``accelerate launch --use_fsdp``. Ignored by a single
            process. Same updates as DDP up to float rounding, so a run may resume with the other.
        gradient_checkpointing: recompute each decoder layer's activations in backward instead of keeping
            them (less activation memory, about one more forward of time); same gradients up to float
            rounding, so a run may resume with it switched.
        precision: ``"fp32"`` (default) or ``"bf16"``: the forward under bf16 autocast, the trained tensors
            kept as float32 master weights (upcast for the run when the model was loaded in bf16; see
            :mod:`routerlens_interp.train.precision`).
    """

    epochs: int = 3
    lr: float = 5e-4
    batch_size: int = 8
    grad_accum: int = 1
    max_tokens: int = 300
    warmup: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    seed: int = 826
    eval_points: int = 10
    eval_every: int | None = None
    eval_batch_size: int = 8
    checkpoint_every: int = 50
    max_steps: int | None = None
    fsdp: bool = False
    gradient_checkpointing: bool = False
    precision: str = "fp32"

    @classmethod
    def make(cls, config: "TrainConfig | dict | None" = None, **overrides) -> "TrainConfig":
        """A config from another config or dict plus keyword overrides (``None`` values are ignored).

        Unknown keys raise ``TypeError`` naming the valid ones.
        """
        base = asdict(config) if isinstance(config, TrainConfig) else dict(config or {})
        base.update({k: v for k, v in overrides.items() if v is not None})
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(base) - valid)
        if unknown:
            raise TypeError(f"unknown training option(s) {unknown}; valid options: {sorted(valid)}")
        if "betas" in base:
            base["betas"] = tuple(base["betas"])
        cfg = cls(**base)
        cfg.check()
        return cfg

    @classmethod
    def paper(cls, **overrides) -> "TrainConfig":
        """The paper's public recipe (OLMoE-1B-7B-Instruct): lr 5e-4, 3 epochs, cosine schedule with 10 % warm-up,
        batch 8, examples over 300 tokens dropped (counted, warned), best checkpoint by dev loss, seed 826."""
        return cls.make(PAPER_RECIPE, **overrides)

    def check(self) -> None:
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be ≥ 1")
        if self.epochs < 1 and not self.max_steps:
            raise ValueError("epochs must be ≥ 1 (or set max_steps)")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', not {self.precision!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1); got {self.warmup}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(d["betas"])
        return d

    def config_hash(self, **extra) -> str:
        """16 hex digits of SHA-256 over the fields that change the result (plus ``extra``, e.g. method)."""
        d = {k: v for k, v in self.to_dict().items() if k not in _NOT_HASHED}
        if d.get("precision") == "fp32":  # the default leaves hashes of runs from before the option unchanged
            del d["precision"]
        d.update(extra)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
