"""The one training loop behind router tuning, CEFT and full fine-tuning.

Answer-only next-token cross-entropy (prompt tokens masked, EOS included), no load-balancing loss
(``output_router_logits=False``), AdamW over the method's trainable tensors only, cosine schedule with
linear warm-up, dev loss at fixed fractions of training with the best tensors kept, gradient
accumulation, resumable checkpoints. Checkpoints are safetensors + JSON (nothing in them is
unpickled) written atomically; SIGINT / SIGTERM end the unit in progress (an optimizer step with its
dev-eval point, a checkpoint write), write a checkpoint and raise
:class:`~routerlens_interp.errors.TrainingInterrupted`, so that ``resume=True`` continues bit-identically.
Runs unchanged under several processes: DDP through ``accelerate`` (a model copy per process), or FSDP
(``fsdp=True`` or ``accelerate launch --use_fsdp``: parameters, gradients and AdamW state sharded over
the processes, see :mod:`.fsdp`). Start it with
``accelerate launch --multi_gpu --num_processes N script.py`` on GPUs, or
``torchrun --nproc_per_node N script.py`` on CPUs (gloo backend).
"""
from __future__ import annotations

import functools
import inspect
import math
import os
import random
import signal
import statistics
import threading
import time
import warnings
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils import parametrize

from .. import safe_state
from ..errors import TrainingInterrupted, UserError
from .config import TrainConfig
from .data import (Item, answer_loss, answer_positions, collate, data_hash, global_batch, n_answer_tokens, shard,
                   steps_per_epoch)
from .fsdp import full, full_optimizer_state, load_optimizer_state, local, sharded
from .params import Trainable
from .precision import training_precision
from .seed import deterministic, seed_rngs

__all__ = ["TrainResult", "make_accelerator", "train", "dev_loss", "CheckpointWriteError"]

CKPT = "checkpoint"
STATE, OLD_STATE = "state.safetensors", "state.pt"  # OLD_STATE: the pickle format, refused
CKPT_KIND = "routerlens training checkpoint"
_RESTART = "start over without --resume (resume=False) or use a new out_dir"


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (e.g. the disk is full); the previous checkpoint is intact.

    Attributes: ``step`` (the step whose checkpoint failed), ``saved_step`` (the step of the checkpoint
    kept, ``None`` when there is none), ``path``, ``error`` (the ``OSError``); :func:`train` adds
    ``tensors`` (the best tensors so far, or ``None``), ``best_step`` and ``history`` so that the caller
    can still save an adapter."""

    def __init__(self, step: int, saved_step: int | None, path: Path, error: OSError):
        self.step, self.saved_step, self.path, self.error = step, saved_step, path, error
        self.tensors, self.best_step, self.history = None, None, []
        kept = (f"the checkpoint of step {saved_step} is kept" if saved_step is not None
                else "no earlier checkpoint exists")
        super().__init__(f"could not write the checkpoint of step {step} to {path} ({error}); {kept}")


class _Signals:
    """SIGINT and SIGTERM handlers for the duration of training; the previous handlers are put back on exit.

    The first signal is only recorded in ``signum``: the loop finishes the unit it is in and stops at the
    next boundary (a Ctrl-C during the dev loss must not drop that eval point). A second signal stops at
    once (``KeyboardInterrupt``); the run then keeps the last consistent checkpoint. Installed only in the
    main thread (Python allows handlers nowhere else)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self.previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second signal {signum}: stopping at once")
        self.signum = signum

    def __enter__(self) -> "_Signals":
        if self.enabled:
            for s in (signal.SIGINT, signal.SIGTERM):
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        best: key → CPU tensor: the trainable tensors at the step with the lowest dev loss (the last
            step when there is no dev set). Same keys and shapes as ``Trainable.params``.
        metrics: steps, best/final dev loss, seconds, tokens/s, trainable parameters, memory, ...
        history: one dict per evaluation ``{"step", "dev_loss"}``.
    """

    best: dict[str, torch.Tensor]
    metrics: dict
    history: list[dict] = field(default_factory=list)


def make_accelerator(lm, fsdp: bool = False):
    """An ``accelerate.Accelerator`` for ``lm``. With several processes and DDP the model is moved to this
    process's device; with FSDP (``fsdp=True``, or launched with ``accelerate launch --use_fsdp``) it stays
    where it is (load it on the CPU): :func:`train` moves only this process's shard to the device. A
    single process keeps the model where the user put it."""
    from accelerate import Accelerator

    # accelerate only picks the gloo/MULTI_CPU path with cpu=True; on a CUDA machine keep GPUs usable.
    acc = Accelerator(cpu=not torch.cuda.is_available(), device_placement=False)
    if "DEEPSPEED" in acc.distributed_type.name or "MEGATRON" in acc.distributed_type.name:
        raise NotImplementedError(f"routerlens training supports DDP and FSDP, not {acc.distributed_type.name}; "
                                  "launch without --use_deepspeed (add fsdp=True / --fsdp to shard the model)")
    if acc.num_processes > 1 and not uses_fsdp(acc, fsdp) and lm.device != acc.device:
        lm.hf.to(acc.device)
    return acc


def uses_fsdp(acc, fsdp: bool) -> bool:
    """FSDP applies with several processes when asked for by the config or by ``accelerate launch
    --use_fsdp --fsdp_version 2`` (read from the environment: on CPUs accelerate itself reports MULTI_CPU).

    accelerate's FSDP plugin settings are not used: :mod:`.fsdp` shards each decoder layer itself."""
    asked = fsdp or acc.distributed_type.name == "FSDP" or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    return acc.num_processes > 1 and asked


@functools.cache
def _takes_logits_to_keep(cls: type) -> bool:
    """Whether ``cls.forward`` accepts ``logits_to_keep`` (read once per model class, not per batch)."""
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def _forward_loss(model, hf, mb: dict) -> torch.Tensor:
    """Summed answer-token loss of one micro-batch; the LM head runs only at the answer positions when
    the model's forward takes ``logits_to_keep`` (transformers' causal LMs do), else on every position."""
    from ..hooks.devices import index_device

    keep = {}
    if _takes_logits_to_keep(type(hf)):
        # the positions index the last hidden states, wherever a device map put the final norm
        keep = {"logits_to_keep": answer_positions(mb["labels"]).to(index_device(hf))}
    out = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"], output_router_logits=False,
                use_cache=False, **keep)
    return answer_loss(out.logits, mb["labels"], keep.get("logits_to_keep"))


def _rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _eval_steps(cfg: TrainConfig, total: int) -> set[int]:
    """Step numbers (1-based, after that many updates) at which the dev loss is computed."""
    if cfg.eval_every:
        steps = set(range(cfg.eval_every, total + 1, cfg.eval_every))
    else:
        k = max(1, min(cfg.eval_points, total))
        steps = {max(1, round(total * i / k)) for i in range(1, k + 1)}
    return steps | {total}


@torch.no_grad()
def dev_loss(lm, items: list[Item], acc=None, batch_size: int = 8, lockstep: bool = False) -> float:
    """Mean answer-token cross-entropy over ``items`` (each process takes every P-th example, sums are
    all-reduced). ``nan`` for an empty dev set.

    ``lockstep``: every process runs the same number of forward passes (FSDP all-gathers weights inside
    forward, so a process that stopped early would leave the others waiting); the padding passes reuse
    the first example and are not counted."""
    rank, world = (acc.process_index, acc.num_processes) if acc is not None else (0, 1)
    was_training = lm.hf.training
    lm.hf.eval()
    mine = items[rank::world]
    total = torch.zeros(2, dtype=torch.float64, device=lm.device)
    n_batches = math.ceil(len(mine) / batch_size)
    if lockstep and items:
        n_batches = math.ceil(math.ceil(len(items) / world) / batch_size)  # process 0 has the most
    with parametrize.cached():
        for i in range(0, n_batches * batch_size, batch_size):
            chunk = mine[i:i + batch_size]
            mb = collate(chunk or items[:1], lm.tokenizer.pad_token_id, lm.device)
            s = _forward_loss(lm.hf, lm.hf, mb)
            if chunk:
                total[0] += s.double().to(total.device)
                total[1] += (mb["labels"][:, 1:] != -100).sum()
    if world > 1:
        total = acc.reduce(total, reduction="sum")
    lm.hf.train(was_training)
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


_CKPT_KEYS = {"version", "step", "total", "config_hash", "data_hash", "keys", "trainable", "optimizer", "scheduler",
              "rng", "best", "history", "tokens", "seconds"}


def _read_checkpoint(path: Path) -> dict:
    """The state written by :meth:`_Run.save_checkpoint` (safetensors + JSON; UserError if damaged)."""
    st = safe_state.load(path, CKPT_KIND, _RESTART)
    missing = sorted(_CKPT_KEYS - set(st)) if isinstance(st, dict) else sorted(_CKPT_KEYS)
    if missing:
        raise UserError(f"{path} lacks {missing}: not a complete training checkpoint; {_RESTART}")
    return st


def _state_bytes(opt) -> int:
    """Bytes of optimizer state held by this process (its shards under FSDP)."""
    return sum(local(t).numel() * t.element_size() for s in opt.state.values() for t in s.values()
               if torch.is_tensor(t))


def train(lm, trainable: Trainable, train_items: list[Item], dev_items: list[Item], config: TrainConfig,
          acc=None, out_dir=None, resume: bool = False, progress: bool = True, callback=None,
          hash_extra: dict | None = None, desc: str = "train") -> TrainResult:
    """Run the training loop over ``trainable.params`` (everything else must already be frozen).

    Args:
        train_items / dev_items: encoded examples (:func:`routerlens_interp.train.data.prepare`).
        config: :class:`TrainConfig`; ``batch_size`` is global (all processes and micro-batches).
        acc: the ``Accelerator`` from :func:`make_accelerator` (made here when ``None``).
        out_dir: checkpoints go to ``out_dir/checkpoint/state.safetensors`` every ``checkpoint_every``
            steps, at the end, on SIGINT / SIGTERM (then :class:`TrainingInterrupted` is raised), and
            (single process) when an exception stops the run. A failed write (full disk) raises
            :class:`CheckpointWriteError` and keeps the previous checkpoint.
        resume: continue from that checkpoint; it must come from the same config, data and tensors.
            A checkpoint in the old pickle format (``state.pt``) is refused, never unpickled.
        callback: called as ``callback(info)`` after every finished step with ``info = {"step", "loss",
            "lr", "dev_loss"}``; an exception it raises stops training (a checkpoint is written first).
        hash_extra: method, experts, ... folded into the config hash that guards resuming.
    """
    acc = acc or make_accelerator(lm, config.fsdp)
    rank, world, main = acc.process_index, acc.num_processes, acc.is_main_process
    fsdp = uses_fsdp(acc, config.fsdp)
    cfg = config
    n = len(train_items)
    if n == 0:
        raise ValueError("no training examples left (all dropped by max_tokens, or none given)")
    spe = steps_per_epoch(n, cfg.batch_size)
    total = cfg.max_steps or cfg.epochs * spe
    keys = list(trainable.params)
    originals = [trainable.params[k] for k in keys]  # the model's own tensors (restored after FSDP)
    chash = cfg.config_hash(**(hash_extra or {}))
    dhash = data_hash(train_items)
    ckpt_dir = Path(out_dir) / CKPT if out_dir is not None else None
    evals = _eval_steps(cfg, total)

    step, history, tokens, seconds = 0, [], 0, 0.0
    best = {"loss": float("inf"), "step": None, "tensors": None}
    state_file = ckpt_dir / STATE if ckpt_dir else None
    st = None
    if resume and state_file is not None and not state_file.exists() and (ckpt_dir / OLD_STATE).exists():
        raise UserError(f"{ckpt_dir / OLD_STATE} {safe_state.OLD_PICKLE}; {_RESTART}")
    if resume and state_file is not None and state_file.exists():
        st = _read_checkpoint(state_file)
        for what, mine, theirs in (("training config", chash, st["config_hash"]),
                                   ("training data", dhash, st["data_hash"]), ("trainable tensors", keys, st["keys"])):
            if mine != theirs:
                raise ValueError(f"cannot resume from {state_file}: it was written with different {what}; "
                                 f"use a new out_dir or resume=False to start over")
        with torch.no_grad():  # into the unsharded tensors: FSDP shards them from there
            for k, p in zip(keys, originals):
                p.copy_(st["trainable"][k].to(p.device))
        step, history, tokens, seconds, best = st["step"], st["history"], st["tokens"], st["seconds"], st["best"]
        if len(st["rng"]) == world:
            _set_rng_state(st["rng"][rank])
        else:
            warnings.warn(f"checkpoint was written by {len(st['rng'])} processes, resuming with {world}: data "
                          "order is exact, random streams (dropout) are not", stacklevel=2)
    else:
        if resume and main:
            warnings.warn(f"resume=True but no checkpoint in {ckpt_dir}; starting from step 0", stacklevel=2)
        elif state_file is not None and state_file.exists() and main:
            warnings.warn(f"{state_file} exists and resume=False: starting over (it will be overwritten)",
                          stacklevel=2)
        seed_rngs(cfg.seed)

    hf = lm.hf
    was_training = hf.training
    try:
        # On an exception the stack sees it: FSDP then skips its (collective) gather and only unshards.
        with ExitStack() as stack:
            stack.enter_context(deterministic())  # >1 CPU thread: the experts' backward adds rows in any order
            stack.enter_context(training_precision(  # bf16 autocast + fp32 masters, checkpointing (precision.py)
                hf, originals, cfg.precision, cfg.gradient_checkpointing,
                [st["trainable"][k] for k in keys] if st is not None else None, fsdp))
            if fsdp:  # the optimizer must see the sharded tensors that replace the originals
                shards, sync = stack.enter_context(sharded(lm, trainable, acc.device))
                params, model = [shards[k] for k in keys], hf
            else:
                params, sync = originals, (trainable.sync or (lambda: None))  # CEFT: rows into the base
                model = acc.prepare_model(hf)  # DDP wrapper when several processes; hf itself otherwise
                stack.callback(acc.unwrap_model, model, keep_fp32_wrapper=False)  # restore a patched forward
            opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                    weight_decay=cfg.weight_decay)
            opt.zero_grad(set_to_none=True)  # gradients left by earlier backward calls would join step 1
            from transformers import get_cosine_schedule_with_warmup

            sched = get_cosine_schedule_with_warmup(opt, math.ceil(cfg.warmup * total), total)
            if st is not None:
                load_optimizer_state(opt, st["optimizer"])
                sched.load_state_dict(st["scheduler"])
                sync()
            run = _Run(lm, model, acc, cfg, fsdp, keys, params, opt, sched, sync, train_items, dev_items, total,
                       evals, ckpt_dir, {"config_hash": chash, "data_hash": dhash}, callback,
                       step=step, history=history, tokens=tokens, seconds=seconds, best=best)
            with _Signals(enabled=ckpt_dir is not None) as run.signals:
                run.loop(progress and main, desc)
        # (left normally: FSDP has gathered the trained values into the original tensors, on every process)
    except CheckpointWriteError as e:  # hand the caller what it needs to save an adapter anyway
        e.tensors, e.best_step, e.history = run.best["tensors"], run.best["step"], list(run.history)
        if e.tensors is None and not fsdp:  # no dev set: the current tensors (FSDP did not gather them)
            e.tensors, e.best_step = {k: p.detach().cpu().clone() for k, p in zip(keys, originals)}, run.step
        raise
    finally:
        hf.train(was_training)
        for p in originals:
            p.grad = None
    step, history, tokens, seconds, best = run.step, run.history, run.tokens, run.seconds, run.best
    if best["tensors"] is None:  # no dev set: the last step is the result
        best = {"loss": best["loss"], "step": step, "tensors": {k: p.detach().cpu().clone() for k, p in
                                                                zip(keys, originals)}}
    with torch.no_grad():  # leave the best tensors in place, as the docs promise "best restored at the end"
        for k, p in zip(keys, originals):
            p.copy_(best["tensors"][k].to(p.device))
    dev_final = history[-1]["dev_loss"] if history else None
    measured = run.step_times[1:] or run.step_times  # the first step pays for allocation and warm-up
    metrics = {**run.metrics,
        "steps": step, "best_step": best["step"],
        "best_dev_loss": best["loss"] if math.isfinite(best["loss"]) else None, "final_dev_loss": dev_final,
        "train_loss": run.last_loss if run.step_times else None, "seconds": seconds, "tokens": tokens,
        "tokens_per_s": tokens / seconds if seconds else None,
        "step_seconds": statistics.median(measured) if measured else None,
        "step_seconds_min": min(measured) if measured else None,
        "trainable_params": sum(p.numel() for p in originals),
        "grad_bytes": sum(p.numel() * p.element_size() for p in originals),
        "optimizer_state_bytes": run.opt_bytes, "processes": world, "fsdp": fsdp,
        "n_train": n, "n_dev": len(dev_items), "config_hash": chash,
    }
    if torch.cuda.is_available() and lm.device.type == "cuda":
        metrics["peak_memory_bytes"] = torch.cuda.max_memory_allocated(lm.device)
    return TrainResult(best["tensors"], metrics, history)


class _Run:
    """The state of one training run between steps, and the step loop itself (see :func:`train`)."""

    def __init__(self, lm, model, acc, cfg, fsdp, keys, params, opt, sched, sync, train_items, dev_items, total,
                 evals, ckpt_dir, hashes, callback, *, step, history, tokens, seconds, best):
        self.__dict__.update(locals())
        del self.__dict__["self"]
        self.step_times, self.last_loss, self.opt_bytes = [], float("nan"), 0
        self.metrics = {"initial_dev_loss": None}
        self.signals = _Signals(enabled=False)
        # "between" units, in the "forward" part of a step (nothing changed yet but the random streams,
        # so a checkpoint rolls back to unit_rng), or in the "update" (update, dev eval, checkpoint: a
        # checkpoint now would be inconsistent). A first signal always waits for "between".
        self.phase, self.unit_rng, self.saved_at = "between", None, self.step

    def dev(self) -> float:
        return dev_loss(self.lm, self.dev_items, self.acc, self.cfg.eval_batch_size, lockstep=self.fsdp)

    def stop_signal(self) -> int | None:
        """The signal that asks training to stop (agreed by all processes: they must stop at the same step)."""
        sig = self.signals.signum or 0
        if self.acc.num_processes > 1:
            t = torch.tensor([sig], dtype=torch.long, device=self.acc.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            sig = int(t)
        return sig or None

    def save_checkpoint(self) -> None:
        if self.ckpt_dir is None:
            return
        acc, world = self.acc, self.acc.num_processes
        rng = self.unit_rng if self.phase == "forward" else _rng_state()
        if world > 1:  # every process's random streams, so a resumed run continues each exactly
            rngs = [None] * world
            torch.distributed.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        # Whole tensors (collectives under FSDP: every process takes part, the main one writes).
        trainable = {k: full(p).detach().cpu() for k, p in zip(self.keys, self.params)}
        optimizer = full_optimizer_state(self.opt)
        state_file, error = self.ckpt_dir / STATE, None
        if acc.is_main_process:
            st = {"version": 1, "step": self.step, "total": self.total, **self.hashes, "keys": self.keys,
                  "trainable": trainable, "optimizer": optimizer, "scheduler": self.sched.state_dict(),
                  "rng": rngs, "best": self.best, "history": self.history, "tokens": self.tokens,
                  "seconds": self.seconds}
            try:  # atomic: a kill or a full disk mid-write leaves the previous checkpoint intact
                self.ckpt_dir.mkdir(parents=True, exist_ok=True)
                safe_state.save(state_file, st, CKPT_KIND)
            except OSError as e:
                error = e
        failed = error is not None
        if world > 1:  # every process learns of a failed write (else they would wait for the next step)
            flag = torch.tensor([int(failed)], dtype=torch.long, device=acc.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            failed = bool(flag)
        if failed:
            had = self.saved_at if state_file.exists() else None
            raise CheckpointWriteError(self.step, had, state_file,
                                       error or OSError("the main process could not write it"))
        acc.wait_for_everyone()
        self.saved_at = self.step

    def loop(self, progress: bool, desc: str) -> None:
        lm, model, acc, cfg, opt, params = self.lm, self.model, self.acc, self.cfg, self.opt, self.params
        rank, world = acc.process_index, acc.num_processes
        items, n, pad = self.train_items, len(self.train_items), lm.tokenizer.pad_token_id
        if torch.cuda.is_available() and lm.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(lm.device)
        if self.dev_items and self.step == 0:
            self.metrics["initial_dev_loss"] = self.dev()
        sig = self.stop_signal()
        if sig:  # nothing trained yet: there is nothing to save
            raise TrainingInterrupted(self.step, self.ckpt_dir.parent, sig)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total, initial=self.step, desc=desc, unit="step", dynamic_ncols=True)
        self.saved_at = self.step
        try:
            while self.step < self.total:
                self.phase, self.unit_rng = "forward", _rng_state()
                t0 = time.perf_counter()
                batch = global_batch(n, cfg.batch_size, self.step, cfg.seed)
                n_tok = n_answer_tokens([items[i] for i in batch])  # same on every process
                micro = shard(batch, world, rank, cfg.grad_accum)
                model.train()
                loss_sum = torch.zeros((), dtype=torch.float64, device=lm.device)
                step_tokens = torch.zeros((), dtype=torch.long, device=lm.device)
                for a, idxs in enumerate(micro):
                    mb = collate([items[i] for i in idxs], pad, lm.device)
                    # DDP: all-reduce the gradients only after the last micro-batch. (FSDP reduce-scatters
                    # after each one: keeping whole unsharded gradients would defeat the sharding.)
                    skip_sync = world > 1 and not self.fsdp and a < len(micro) - 1
                    with (acc.no_sync(model) if skip_sync else nullcontext()), parametrize.cached():
                        s = _forward_loss(model, lm.hf, mb)
                        # DDP and FSDP average gradients over processes; scaling by world / global token
                        # count makes the sum over processes and micro-batches the global-batch mean.
                        acc.backward(s * (world / n_tok))
                    loss_sum += s.detach().double().to(loss_sum.device)
                    step_tokens += mb["attention_mask"].sum()
                    del s
                if world > 1:
                    loss_sum = acc.reduce(loss_sum, reduction="sum")
                    step_tokens = acc.reduce(step_tokens, reduction="sum")
                self.phase = "update"  # from here to the end of the unit a checkpoint would be inconsistent
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                self.sync()  # CEFT: the (sharded, under FSDP) base must hold the new rows (.params, .fsdp)
                self.sched.step()
                opt.zero_grad(set_to_none=True)
                self.step += 1
                if not self.opt_bytes:
                    self.opt_bytes = _state_bytes(opt)
                self.last_loss = float(loss_sum) / n_tok
                dt = time.perf_counter() - t0
                self.step_times.append(dt)
                self.seconds += dt
                self.tokens += int(step_tokens)
                dl = None
                if self.step in self.evals and self.dev_items:
                    dl = self.dev()
                    self.history.append({"step": self.step, "dev_loss": dl})
                    if dl < self.best["loss"]:
                        self.best = {"loss": dl, "step": self.step,
                                     "tensors": {k: full(p).detach().cpu().clone() for k, p in
                                                 zip(self.keys, params)}}
                if bar is not None:
                    post = {"loss": f"{self.last_loss:.4f}", "tok/s": f"{self.tokens / max(self.seconds, 1e-9):.0f}"}
                    if self.history:
                        post["dev"] = f"{self.history[-1]['dev_loss']:.4f}"
                    bar.set_postfix(post, refresh=False)
                    bar.update(1)
                if self.step == self.total or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0):
                    self.save_checkpoint()
                self.phase = "between"
                if self.callback is not None:
                    self.callback({"step": self.step, "loss": self.last_loss, "lr": self.sched.get_last_lr()[0],
                                   "dev_loss": dl})
                if self.stop_signal():
                    break
            if self.saved_at != self.step:
                self.save_checkpoint()
            sig = self.stop_signal()  # (every process asks: a collective with several)
            if sig:
                raise TrainingInterrupted(self.step, self.ckpt_dir.parent, sig)
        except (TrainingInterrupted, CheckpointWriteError):
            raise
        except BaseException:
            # Single process: keep every finished step. (With several processes an exception on one would
            # leave the others waiting in a collective, so they rely on the periodic checkpoints.)
            if world == 1 and self.phase != "update" and self.step > self.saved_at:
                self.save_checkpoint()
            raise
        finally:
            if bar is not None:
                bar.close()
            opt.zero_grad(set_to_none=True)
        self.opt_bytes = self.opt_bytes or _state_bytes(opt)
