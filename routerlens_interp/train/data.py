"""Training data: encode examples with their answers, drop over-long ones, order and split batches.

The order of examples is a pure function of ``(seed, epoch)`` and a global step is a fixed slice of
that order, so a resumed run sees exactly the batches it would have seen, and a run with P processes
sees the same global batches as one process (each process takes its share of every batch).
"""
from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Item", "prepare", "data_hash", "global_batch", "shard", "collate", "answer_positions", "answer_loss"]


@dataclass
class Item:
    """One training example: ``input_ids [T]`` (prompt + answer + the end-of-turn token: the template's, or
    EOS without one; see :mod:`routerlens_interp.prompts.target`) and ``prompt_len``."""

    input_ids: torch.Tensor
    prompt_len: int


def prepare(lm, examples, max_tokens: int | None, name: str = "train") -> tuple[list[Item], int]:
    """Encode ``examples`` (QAExample or already-encoded objects with ``input_ids``/``prompt_len``).

    Returns ``(items, n_dropped)``: examples whose full length (prompt + answer + end token, never
    truncated) exceeds ``max_tokens`` (or the model's window) are dropped (the paper's recipe) with one
    warning giving the count, rather than truncated.
    """
    from ..prompts import encode

    # Longer than the model's window is dropped too (never truncated: that could cut the answer).
    window = getattr(lm, "window", None)
    limit = min(x for x in (max_tokens, window, float("inf")) if x)
    items, dropped = [], 0
    for ex in examples or []:
        enc = ex if hasattr(ex, "input_ids") else encode(lm.tokenizer, ex, with_answer=True, max_length=None)
        ids = torch.as_tensor(enc.input_ids, dtype=torch.long).reshape(-1)
        if len(ids) > limit:
            dropped += 1
            continue
        if enc.prompt_len >= len(ids):
            raise ValueError(f"a {name} example has no answer tokens; encode it with with_answer=True")
        items.append(Item(ids, int(enc.prompt_len)))
    if dropped:
        warnings.warn(f"dropped {dropped} of {dropped + len(items)} {name} examples longer than "
                      f"max_tokens={max_tokens} (or the model window of {window})", stacklevel=3)
    return items, dropped


def data_hash(items: list[Item]) -> str:
    """SHA-256 (16 hex digits) over token ids and prompt lengths: resume refuses other data."""
    h = hashlib.sha256()
    for it in items:
        h.update(str(it.prompt_len).encode())
        h.update(it.input_ids.numpy().astype("int64").tobytes())
    return h.hexdigest()[:16]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def global_batch(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Example indices of global optimizer step ``step`` (0-based), ``batch_size`` long.

    Epoch ``e`` uses the permutation seeded by ``(seed, e)``; its last batch is topped up from the
    start of the same permutation (as ``DistributedSampler`` pads), so every batch is full and
    splits evenly over processes.
    """
    spe = steps_per_epoch(n, batch_size)
    epoch, pos = divmod(step, spe)
    g = torch.Generator().manual_seed(int(seed) * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    idx = perm[pos * batch_size:(pos + 1) * batch_size]
    while len(idx) < batch_size:
        idx += perm[:batch_size - len(idx)]
    return idx


def shard(batch: list[int], n_procs: int, rank: int, accum: int) -> list[list[int]]:
    """Split a global batch into this process's ``accum`` micro-batches.

    Micro-batch ``a`` of process ``p`` is block ``a * n_procs + p`` of the batch, so concatenating the
    blocks over processes and accumulation steps gives the batch back in order.
    """
    n_blocks = n_procs * accum
    if len(batch) % n_blocks:
        raise ValueError(f"batch_size={len(batch)} must be divisible by processes × grad_accum = "
                         f"{n_procs} × {accum}")
    m = len(batch) // n_blocks
    return [batch[(a * n_procs + rank) * m:(a * n_procs + rank + 1) * m] for a in range(accum)]


def collate(items: list[Item], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-pad → ``input_ids``, ``attention_mask``, ``labels`` (all ``[B, T]``).

    ``labels[b, t]`` is the token id at answer / end-token positions ``t ≥ prompt_len`` and ``-100``
    elsewhere (prompt and padding), so only the answer and its end-of-turn token enter the loss.
    """
    T = max(len(it.input_ids) for it in items)
    ids = torch.full((len(items), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), T), dtype=torch.long)
    labels = torch.full((len(items), T), -100, dtype=torch.long)
    for b, it in enumerate(items):
        n = len(it.input_ids)
        ids[b, :n] = it.input_ids
        mask[b, :n] = 1
        labels[b, it.prompt_len:n] = it.input_ids[it.prompt_len:]
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def n_answer_tokens(items: list[Item]) -> int:
    """Tokens that enter the loss (answer + end token) over ``items``."""
    return sum(len(it.input_ids) - it.prompt_len for it in items)


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """``[P]`` sorted positions t whose logits predict an answer token (``labels[b, t + 1] != -100`` for
    some row b): the only positions the loss reads. Passed to the model as ``logits_to_keep``, the LM
    head and the float32 log-softmax skip the prompt (most of the sequence; ~3 % of the logits remain
    on 100-token prompts), which matters with real vocabularies (50k × every position)."""
    return (labels[:, 1:] != -100).any(0).nonzero().flatten()


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Summed next-token cross-entropy: ``logits [B, T, V]`` at t predict ``labels [B, T]`` at t + 1.

    With ``positions [P]`` (:func:`answer_positions`), ``logits [B, P, V]`` hold only those positions.
    Returns a scalar *sum* over answer tokens (float32); callers divide by the global token count so
    that micro-batches and processes add up to the mean over the whole batch.
    """
    if positions is None:
        logits, target = logits[:, :-1], labels[:, 1:]
    else:
        target = labels[:, positions.to(labels.device) + 1]
    target = target.to(logits.device)  # with a device map the logits come out on the unembedding's device
    logits = logits.float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                           reduction="sum")
