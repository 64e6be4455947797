"""The three training methods: router tuning (RT), context-faithful expert fine-tuning (CEFT), FFT.

Each trains a copy-free, reversible set of tensors of ``lm`` with the shared loop and returns an
adapter; the base model is unchanged afterwards. All accept the :class:`TrainConfig` fields as keyword
arguments, plus ``out_dir`` (checkpoints in ``out_dir/checkpoint/``, the adapter in ``out_dir``),
``resume``, ``progress``, ``seed`` and ``callback``.
"""
from __future__ import annotations

import re
import warnings
from contextlib import nullcontext


from .adapters import ExpertAdapter, FullAdapter, RouterAdapter, fingerprint
from .config import TrainConfig
from .data import prepare
from ..errors import UserError
from .outdir import locked
from .loop import CheckpointWriteError, make_accelerator, train
from .params import (expert_param_index, expert_trainable, full_trainable, router_param_names,
                     router_trainable)

__all__ = ["tune_router", "ceft", "full_finetune"]


def _run(lm, train_data, dev_data, method, setup, index, adapter_cls, extra_manifest, *, config, out_dir, resume,
         progress, seed, callback, **cfg):
    config = TrainConfig.make(config, seed=seed, **cfg)
    params = dict(lm.hf.named_parameters())
    offloaded = [n for n in index if n in params and params[n].device.type == "meta"]
    if offloaded:  # accelerate keeps offloaded weights off the module between forwards: no optimizer can step them
        raise UserError(f"{len(offloaded)} tensor(s) to train (e.g. {offloaded[0]}) sit in layers the device map "
                        "offloads to the CPU or disk, which cannot be trained; give a device map that puts the "
                        "trained layers on GPUs (or load on one device)")
    acc = make_accelerator(lm)
    base_fp = fingerprint(lm, index)  # of the base tensors the adapter will replace, before training
    train_items, dropped = prepare(lm, train_data, config.max_tokens, "train")
    dev_items, dropped_dev = prepare(lm, dev_data, config.max_tokens, "dev")
    hash_extra = {"method": method, "base": base_fp, **extra_manifest}
    manifest = {"format": "routerlens-adapter", "version": 2, "method": method, "base_model": lm.name,
                "family": lm.spec.family, "base_fingerprint": base_fp,
                "config_hash": config.config_hash(**hash_extra), "config": config.to_dict(), **extra_manifest}
    # One run at a time per out_dir (the main process holds its lock; re-entrant under the CLI's own).
    lock = (locked(out_dir, True, note=lambda text: warnings.warn(text, stacklevel=4))
            if out_dir is not None and acc.is_main_process else nullcontext())
    with lock:
        try:
            with setup as trainable:
                idx = trainable.index
                res = train(lm, trainable, train_items, dev_items, config, acc=acc, out_dir=out_dir, resume=resume,
                            progress=progress, callback=callback, hash_extra=hash_extra, desc=method)
        except CheckpointWriteError as e:
            if not acc.is_main_process:  # the main process saves what it can and says so
                raise
            raise _save_anyway(e, adapter_cls, idx, manifest, out_dir) from e
        metrics = {**res.metrics, "dropped_train": dropped, "dropped_dev": dropped_dev, "history": res.history}
        manifest = {**manifest, "config_hash": res.metrics["config_hash"], "metrics": metrics}
        adapter = adapter_cls(res.best, idx, manifest)
        if out_dir is not None and acc.is_main_process:
            adapter.save(out_dir)
    acc.wait_for_everyone()
    return adapter


def _save_anyway(e: CheckpointWriteError, adapter_cls, idx, manifest: dict, out_dir) -> UserError:
    """After a failed checkpoint write: save the best tensors so far as an adapter when the disk takes it,
    and return the error that says what was kept."""
    if e.tensors is None:
        kept = "no adapter was saved (FSDP without a dev set keeps no gathered copy)"
    else:
        metrics = {"steps": e.step, "best_step": e.best_step, "history": e.history, "incomplete": True}
        try:
            adapter_cls(e.tensors, idx, {**manifest, "metrics": metrics}).save(out_dir)
            kept = f"the adapter of step {e.best_step} (best so far) was saved to {out_dir}"
        except (OSError, UserError) as e2:
            kept = f"the adapter could not be saved either ({e2})"
    return UserError(f"{e}; {kept}. Free disk space, then continue with --resume")


def tune_router(lm, train, dev=None, *, config: TrainConfig | dict | None = None, out_dir=None, resume: bool = False,
                progress: bool = True, seed: int | None = None, callback=None, **cfg) -> RouterAdapter:
    """Router tuning: train only the router of every MoE layer (weight ``[E, H]``, and bias where present).

    Experts, attention, embeddings, shared experts and their gates stay frozen; DeepSeek-V3's
    ``e_score_correction_bias`` buffer stays fixed (it is set by a load-balancing rule, gets no gradient).

    Args:
        lm: :class:`~routerlens_interp.model.MoEModel`.
        train / dev: QAExamples (dev may be None: then the last step is kept).
        config / **cfg: :class:`TrainConfig` or its fields (``epochs``, ``lr``, ``batch_size``, ...).
        out_dir: where checkpoints and the adapter are written. resume: continue from its checkpoint.
        progress: tqdm bar with loss and tokens/s. seed: overrides ``config.seed``.
        callback: ``callback(info)`` after every step (see :func:`routerlens_interp.train.loop.train`).

    Returns a :class:`RouterAdapter`; ``.metrics`` has best/final dev loss, steps, seconds, trainable params.
    """
    names = router_param_names(lm)
    return _run(lm, train, dev, "router", router_trainable(lm), {n: None for n in names}, RouterAdapter, {},
                config=config, out_dir=out_dir, resume=resume, progress=progress, seed=seed, callback=callback,
                **cfg)


def ceft(lm, train, dev=None, *, experts, config: TrainConfig | dict | None = None, out_dir=None,
         resume: bool = False, progress: bool = True, seed: int | None = None, callback=None,
         **cfg) -> ExpertAdapter:
    """Context-faithful expert fine-tuning: train only the selected experts, starting from the base model.

    For each selected (layer, expert) the rows of every fused expert tensor are trained:
    ``gate_up_proj[e] [2I, H]``, ``down_proj[e] [H, I]`` (and ``*_bias[e]``). Gradients and AdamW state
    exist only for those rows; all other experts stay bit-identical (see :mod:`.params`). Works with
    transformers' default ``grouped_mm`` experts implementation.

    Args:
        experts: :class:`~routerlens_interp.analysis.selection.ExpertSet` or ``{layer: [expert ids]}``.
        others: as :func:`tune_router`.

    Returns an :class:`ExpertAdapter` holding ``[n_selected, ...]`` slices per tensor.
    """
    table = {int(layer): sorted({int(e) for e in ids}) for layer, ids in experts.items() if len(ids)}
    for layer, ids in sorted(table.items()):
        for e in ids:
            lm.spec.check_expert(layer, e)
    index = expert_param_index(lm, table)
    extra = {"experts": {str(layer): ids for layer, ids in table.items()}}
    return _run(lm, train, dev, "ceft", expert_trainable(lm, table), index, ExpertAdapter, extra,
                config=config, out_dir=out_dir, resume=resume, progress=progress, seed=seed, callback=callback,
                **cfg)


def full_finetune(lm, train, dev=None, *, only: str | None = None, config: TrainConfig | dict | None = None,
                  out_dir=None, resume: bool = False, progress: bool = True, seed: int | None = None, callback=None,
                  **cfg) -> FullAdapter:
    """Full fine-tuning (the FFT baseline): every parameter trained with the same loop and recipe.

    ``only``: a regular expression (``re.search``) over parameter names to train just those, e.g.
    ``"self_attn"`` (attention only) or ``r"\\.experts\\."`` (every expert): an ablation that shows
    where a skill lives (on the bundled model attention alone matches FFT and all experts do not).

    Returns a :class:`~routerlens_interp.train.adapters.FullAdapter` holding the trained parameters.
    """
    names = [n for n, _ in lm.hf.named_parameters()]
    extra = {}
    if only is not None:
        try:
            pattern = re.compile(only)
        except re.error as e:
            raise ValueError(f"only={only!r} is not a valid regular expression ({e})") from None
        every = names
        names = [n for n in every if pattern.search(n)]
        if not names:
            example = next((n for n in every if ".0." in n), every[0])
            raise ValueError(f"only={only!r} matches no parameter of {lm.name}; names look like {example!r} "
                             f"(e.g. 'self_attn' for attention, 'experts' for the experts)")
        extra = {"only": only}
    return _run(lm, train, dev, "fft", full_trainable(lm, names), {n: None for n in names}, FullAdapter, extra,
                config=config, out_dir=out_dir, resume=resume, progress=progress, seed=seed, callback=callback,
                **cfg)
