"""State files that cannot run code when loaded: tensors in safetensors, everything else as JSON.

One ``.safetensors`` file holds a nested structure (dicts, lists, tuples, numbers, strings, ``None``,
tensors, NumPy arrays): its tensors as safetensors entries, the rest as JSON in the header's metadata
(key ``"routerlens"``), where each tensor is replaced by ``{"$t": "<entry name>"}``. Neither format
can express code, so loading a crafted file can at worst fail. Python's ``pickle`` (``torch.load``
with ``weights_only=False``) is never used: a pickle runs whatever its author put in it.

Writes are atomic (temp file in the same directory, ``fsync``, ``os.replace``): a crash or a full disk
leaves the previous file intact and no temp file behind.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

from .errors import UserError

__all__ = ["encode", "decode", "save", "load", "write_atomic", "file_kind", "unshare", "OLD_PICKLE"]

META_KEY = "routerlens"
OLD_PICKLE = "was written in the old pickle format, which is not loaded for safety"
_NP_KINDS = "biuf"  # NumPy arrays allowed in a state: bool, int, uint, float


def encode(tree) -> tuple[object, dict[str, torch.Tensor]]:
    """``(json_ready, tensors)``: ``tree`` with every tensor replaced by a reference into ``tensors``.

    Dicts with keys other than strings, and tuples, are tagged so that :func:`decode` gives them back
    as they were (an optimizer's ``state`` is keyed by ints; AdamW's ``betas`` is a tuple)."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(x, path):
        if isinstance(x, torch.Tensor):
            name = f"{len(tensors)}:{'/'.join(path)}"
            tensors[name] = x.detach().cpu()
            return {"$t": name}
        if isinstance(x, np.ndarray):
            if x.dtype.kind not in _NP_KINDS:
                raise TypeError(f"cannot store a NumPy array of dtype {x.dtype} at {'/'.join(path)}")
            return {"$nd": x.tolist(), "dtype": x.dtype.str}
        if isinstance(x, np.generic):
            return enc(x.item(), path)
        if isinstance(x, tuple):
            return {"$tuple": [enc(v, path + [str(i)]) for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [enc(v, path + [str(i)]) for i, v in enumerate(x)]
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in x):
                return {k: enc(v, path + [k]) for k, v in x.items()}
            return {"$items": [[enc(k, path), enc(v, path + [str(k)])] for k, v in x.items()]}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot store a {type(x).__name__} at {'/'.join(path) or 'the top'} in a state file")

    return enc(tree, []), tensors


def decode(obj, tensors: dict[str, torch.Tensor]):
    """Inverse of :func:`encode`."""
    if isinstance(obj, list):
        return [decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "$t" in obj:
        return tensors[obj["$t"]]
    if "$nd" in obj:
        dt = np.dtype(str(obj["dtype"]))
        if dt.kind not in _NP_KINDS:
            raise ValueError(f"unsupported array dtype {dt}")
        return np.array(obj["$nd"], dtype=dt)
    if "$tuple" in obj:
        return tuple(decode(v, tensors) for v in obj["$tuple"])
    if "$items" in obj:
        return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in obj["$items"]}
    return {k: decode(v, tensors) for k, v in obj.items()}


def _hashable(k):
    return tuple(k) if isinstance(k, list) else k


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file + ``os.replace``. On any error (``OSError`` for a
    full disk) the temp file is removed, ``path`` keeps its previous content, and the error propagates."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, each with storage of its own (safetensors refuses shared storage, e.g. tied
    embeddings); only the tensors that need it are copied."""
    seen, out = set(), {}
    for k, t in tensors.items():
        t = t.contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.device.type) if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[k] = t
    return out


def save(path: str | Path, tree, kind: str) -> None:
    """Write ``tree`` (see :func:`encode`) to the safetensors file ``path`` atomically; ``kind`` names what
    the file is and is checked by :func:`load`."""
    from safetensors.torch import save as st_save

    obj, tensors = encode(tree)
    meta = {META_KEY: json.dumps({"kind": kind, "state": obj}, allow_nan=True)}
    # Bytes first, then a plain Python write: safetensors' own file writer does not report a full disk.
    write_atomic(path, st_save(unshare(tensors), metadata=meta))


def file_kind(path: str | Path) -> str:
    """``"safetensors"``, ``"pickle"`` (a ``torch.save`` / pickle file) or ``"other"``, from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 100_000_000:
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "pickle"
    return "other"


def load(path: str | Path, kind: str, fix: str):
    """Read a file written by :func:`save` with the same ``kind``. Raises :class:`UserError` naming the
    file and ``fix`` (what to do instead) for an old pickle file, another file or a damaged one."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}")
    what = path.name
    k = file_kind(path)
    if k == "pickle":
        raise UserError(f"{path} {OLD_PICKLE}; {fix}")
    if k != "safetensors":
        raise UserError(f"{path} is not a {kind} file (not safetensors); {fix}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        head = json.loads(meta[META_KEY])
        if head.get("kind") != kind:
            raise UserError(f"{path} holds a {head.get('kind')!r} file, not a {kind} file; {fix}")
        return decode(head["state"], tensors)
    except UserError:
        raise
    except (SafetensorError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{what} at {path} is damaged or not a {kind} file ({type(e).__name__}: {e}); {fix}") from None
