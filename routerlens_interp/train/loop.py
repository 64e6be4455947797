"""The one training loop behind router tuning, CEFT and full fine-tuning.

Answer-only next-token cross-entropy (prompt tokens masked, EOS included), no load-balancing loss
(``output_router_logits=False``), AdamW over the method's trainable tensors only, cosine schedule with
linear warm-up, dev loss at fixed fractions of training with the best tensors kept, gradient
accumulation, resumable checkpoints. Runs unchanged under several processes (DDP through
``accelerate``): start it with ``accelerate launch --multi_gpu --num_processes N script.py`` on GPUs, or
``torchrun --nproc_per_node N script.py`` on CPUs (gloo backend).
"""
from __future__ import annotations

import math
import os
import random
import statistics
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils import parametrize

from .config import TrainConfig
from .data import Item, answer_loss, collate, data_hash, global_batch, n_answer_tokens, shard, steps_per_epoch
from .params import Trainable

__all__ = ["TrainResult", "make_accelerator", "train", "dev_loss"]

CKPT = "checkpoint"


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


def make_accelerator(lm):
    """An ``accelerate.Accelerator`` for ``lm``; moves the model to this process's device when several
    processes run (a single process keeps the model where the user put it)."""
    from accelerate import Accelerator

    # accelerate only picks the gloo/MULTI_CPU path with cpu=True; on a CUDA machine keep GPUs usable.
    acc = Accelerator(cpu=not torch.cuda.is_available(), device_placement=False)
    if acc.distributed_type.name == "FSDP" or "DEEPSPEED" in acc.distributed_type.name:
        raise NotImplementedError("routerlens training supports DDP (the model replicated on every device); "
                                  f"{acc.distributed_type.name} sharding is not supported yet")
    if acc.num_processes > 1 and lm.device != acc.device:
        lm.hf.to(acc.device)
    return acc


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


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _eval_steps(cfg: TrainConfig, total: int) -> set[int]:
    """Step numbers (1-based, after that many updates) at which the dev loss is computed."""
    if cfg.eval_every:
        steps = set(range(cfg.eval_every, total + 1, cfg.eval_every))
    else:
        k = max(1, min(cfg.eval_points, total))
        steps = {max(1, round(total * i / k)) for i in range(1, k + 1)}
    return steps | {total}


@torch.no_grad()
def dev_loss(lm, items: list[Item], acc=None, batch_size: int = 8) -> float:
    """Mean answer-token cross-entropy over ``items`` (each process takes every P-th example, sums are
    all-reduced). ``nan`` for an empty dev set."""
    rank, world = (acc.process_index, acc.num_processes) if acc is not None else (0, 1)
    was_training = lm.hf.training
    lm.hf.eval()
    mine = items[rank::world]
    total = torch.zeros(2, dtype=torch.float64, device=lm.device)
    with parametrize.cached():
        for i in range(0, len(mine), batch_size):
            mb = collate(mine[i:i + batch_size], lm.tokenizer.pad_token_id, lm.device)
            out = lm.hf(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"],
                        output_router_logits=False, use_cache=False)
            total[0] += answer_loss(out.logits, mb["labels"]).double()
            total[1] += (mb["labels"][:, 1:] != -100).sum()
    if world > 1:
        total = acc.reduce(total, reduction="sum")
    lm.hf.train(was_training)
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


def _state_bytes(opt) -> int:
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
               if torch.is_tensor(t))


def train(lm, trainable: Trainable, train_items: list[Item], dev_items: list[Item], config: TrainConfig,
          acc=None, out_dir=None, resume: bool = False, progress: bool = True, callback=None,
          hash_extra: dict | None = None, desc: str = "train") -> TrainResult:
    """Run the training loop over ``trainable.params`` (everything else must already be frozen).

    Args:
        train_items / dev_items: encoded examples (:func:`routerlens_interp.train.data.prepare`).
        config: :class:`TrainConfig`; ``batch_size`` is global (all processes and micro-batches).
        acc: the ``Accelerator`` from :func:`make_accelerator` (made here when ``None``).
        out_dir: checkpoints go to ``out_dir/checkpoint/state.pt`` every ``checkpoint_every`` steps, at
            the end, and (single process) when the run is interrupted between steps.
        resume: continue from that checkpoint; it must come from the same config, data and tensors.
        callback: called as ``callback(info)`` after every finished step with ``info = {"step", "loss",
            "lr", "dev_loss"}``; an exception it raises stops training (a checkpoint is written first).
        hash_extra: method, experts, ... folded into the config hash that guards resuming.
    """
    acc = acc or make_accelerator(lm)
    rank, world, main = acc.process_index, acc.num_processes, acc.is_main_process
    cfg = config
    n = len(train_items)
    if n == 0:
        raise ValueError("no training examples left (all dropped by max_tokens, or none given)")
    spe = steps_per_epoch(n, cfg.batch_size)
    total = cfg.max_steps or cfg.epochs * spe
    keys = list(trainable.params)
    params = [trainable.params[k] for k in keys]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    from transformers import get_cosine_schedule_with_warmup

    sched = get_cosine_schedule_with_warmup(opt, math.ceil(cfg.warmup * total), total)
    chash = cfg.config_hash(**(hash_extra or {}))
    dhash = data_hash(train_items)
    ckpt_dir = Path(out_dir) / CKPT if out_dir is not None else None
    evals = _eval_steps(cfg, total)

    step, history, tokens, seconds = 0, [], 0, 0.0
    best = {"loss": float("inf"), "step": None, "tensors": None}
    state_file = ckpt_dir / "state.pt" if ckpt_dir else None
    if resume and state_file is not None and state_file.exists():
        st = torch.load(state_file, map_location="cpu", weights_only=False)  # our own file
        for what, mine, theirs in (("training config", chash, st["config_hash"]),
                                   ("training data", dhash, st["data_hash"]), ("trainable tensors", keys, st["keys"])):
            if mine != theirs:
                raise ValueError(f"cannot resume from {state_file}: it was written with different {what}; "
                                 f"use a new out_dir or resume=False to start over")
        with torch.no_grad():
            for k, p in zip(keys, params):
                p.copy_(st["trainable"][k].to(p.device))
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
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
        _seed_all(cfg.seed)

    def save_checkpoint():
        if ckpt_dir is None:
            return
        rng = _rng_state()
        if world > 1:  # every process's random streams, so a resumed DDP run continues each exactly
            rngs = [None] * world
            torch.distributed.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if main:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            st = {"version": 1, "step": step, "total": total, "config_hash": chash, "data_hash": dhash,
                  "keys": keys, "trainable": {k: p.detach().cpu() for k, p in zip(keys, params)},
                  "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rngs, "best": best,
                  "history": history, "tokens": tokens, "seconds": seconds}
            tmp = state_file.with_suffix(".tmp")
            torch.save(st, tmp)
            os.replace(tmp, state_file)  # atomic: a kill mid-write leaves the previous checkpoint intact
        acc.wait_for_everyone()

    hf = lm.hf
    model = acc.prepare_model(hf)  # DDP wrapper when several processes; hf itself otherwise
    was_training = hf.training
    pad = lm.tokenizer.pad_token_id
    if torch.cuda.is_available() and lm.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(lm.device)
    metrics = {"initial_dev_loss": None}
    if dev_items and step == 0:
        metrics["initial_dev_loss"] = dev_loss(lm, dev_items, acc, cfg.eval_batch_size)
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc=desc, unit="step", dynamic_ncols=True)
    step_times, last_loss, opt_bytes, saved_at, in_update = [], float("nan"), 0, step, False
    try:
        while step < total:
            t0 = time.perf_counter()
            batch = global_batch(n, cfg.batch_size, step, cfg.seed)
            n_tok = n_answer_tokens([train_items[i] for i in batch])  # same on every process
            micro = shard(batch, world, rank, cfg.grad_accum)
            model.train()
            loss_sum = torch.zeros((), dtype=torch.float64, device=lm.device)
            step_tokens = torch.zeros((), dtype=torch.long, device=lm.device)
            for a, idxs in enumerate(micro):
                mb = collate([train_items[i] for i in idxs], pad, lm.device)
                sync = a == len(micro) - 1
                with (acc.no_sync(model) if world > 1 and not sync else nullcontext()), parametrize.cached():
                    out = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"],
                                output_router_logits=False, use_cache=False)
                    s = answer_loss(out.logits, mb["labels"])
                    # DDP averages gradients over processes; scaling by world / global token count makes
                    # the sum over processes and micro-batches the mean over the whole global batch.
                    acc.backward(s * (world / n_tok))
                loss_sum += s.detach().double()
                step_tokens += mb["attention_mask"].sum()
                del out, s
            if world > 1:
                loss_sum = acc.reduce(loss_sum, reduction="sum")
                step_tokens = acc.reduce(step_tokens, reduction="sum")
            in_update = True  # an interrupt inside the update would leave tensors half-written: no save then
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            in_update = False
            if not opt_bytes:
                opt_bytes = _state_bytes(opt)
            last_loss = float(loss_sum) / n_tok
            dt = time.perf_counter() - t0
            step_times.append(dt)
            seconds += dt
            tokens += int(step_tokens)
            dl = None
            if step in evals and dev_items:
                dl = dev_loss(lm, dev_items, acc, cfg.eval_batch_size)
                history.append({"step": step, "dev_loss": dl})
                if dl < best["loss"]:
                    best = {"loss": dl, "step": step, "tensors": {k: p.detach().cpu().clone() for k, p in
                                                                  zip(keys, params)}}
            if bar is not None:
                post = {"loss": f"{last_loss:.4f}", "tok/s": f"{tokens / max(seconds, 1e-9):.0f}"}
                if history:
                    post["dev"] = f"{history[-1]['dev_loss']:.4f}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
            if step == total or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                save_checkpoint()
                saved_at = step
            if callback is not None:
                callback({"step": step, "loss": last_loss, "lr": sched.get_last_lr()[0], "dev_loss": dl})
        if saved_at != step:
            save_checkpoint()
    except BaseException:
        # Single process: keep every finished step. (With several processes an exception on one would
        # leave the others waiting in a collective, so they rely on the periodic checkpoints.)
        if world == 1 and not in_update and step > saved_at:
            save_checkpoint()
        raise
    finally:
        if bar is not None:
            bar.close()
        acc.unwrap_model(model, keep_fp32_wrapper=False)  # restore hf.forward if accelerate patched it
        hf.train(was_training)
        opt.zero_grad(set_to_none=True)
    if best["tensors"] is None:  # no dev set: the last step is the result
        best = {"loss": best["loss"], "step": step, "tensors": {k: p.detach().cpu().clone() for k, p in
                                                                zip(keys, params)}}
    with torch.no_grad():  # leave the best tensors in place, as the docs promise "best restored at the end"
        for k, p in zip(keys, params):
            p.copy_(best["tensors"][k].to(p.device))
    dev_final = history[-1]["dev_loss"] if history else None
    measured = step_times[1:] or step_times  # the first step pays for allocation and warm-up
    metrics.update({
        "steps": step, "best_step": best["step"],
        "best_dev_loss": best["loss"] if math.isfinite(best["loss"]) else None, "final_dev_loss": dev_final,
        "train_loss": last_loss if step_times else None, "seconds": seconds, "tokens": tokens,
        "tokens_per_s": tokens / seconds if seconds else None,
        "step_seconds": statistics.median(measured) if measured else None,
        "step_seconds_min": min(measured) if measured else None,
        "trainable_params": sum(p.numel() for p in params),
        "grad_bytes": sum(p.numel() * p.element_size() for p in params),
        "optimizer_state_bytes": opt_bytes or _state_bytes(opt), "processes": world,
        "n_train": n, "n_dev": len(dev_items), "config_hash": chash,
    })
    if torch.cuda.is_available() and lm.device.type == "cuda":
        metrics["peak_memory_bytes"] = torch.cuda.max_memory_allocated(lm.device)
    return TrainResult(best["tensors"], metrics, history)
