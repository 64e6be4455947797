"""Adapters: the tensors a training run changed, saved apart from the base model.

An adapter directory holds ``adapter.safetensors`` (only the changed tensors, or for CEFT only the
selected experts' slices) and ``adapter.json`` (method, base model name, fingerprint of the base
tensors it replaces, config hash, training config, dev metrics, selected experts). It swaps its
tensors into a model reversibly (:meth:`Adapter.applied`) or permanently (:meth:`Adapter.merge`).

Safetensors keys: ``"<param name>"`` for a whole tensor; ``"<param name>::slices"`` ``[n, ...]`` and
``"<param name>::index"`` ``[n]`` (expert ids along dim 0) for expert slices.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["Adapter", "RouterAdapter", "ExpertAdapter", "FullAdapter", "load_adapter", "fingerprint"]

WEIGHTS, MANIFEST = "adapter.safetensors", "adapter.json"


def fingerprint(lm, index: dict[str, torch.Tensor | None]) -> str:
    """SHA-256 over the base values an adapter replaces: for each name (sorted) the name, the expert ids
    (when sliced) and the float32 bytes of ``param`` or ``param[ids]``. Same scheme as
    ``MoEModel.fingerprint`` for whole tensors, but CEFT hashes only its slices, not whole layers."""
    params = dict(lm.hf.named_parameters())
    missing = sorted(set(index) - set(params))
    if missing:
        raise ValueError(f"model {lm.name!r} has no parameter(s) {missing[:3]}: the adapter was made for "
                         "another base model (different architecture)")
    h = hashlib.sha256()
    for name in sorted(index):
        t = params[name].detach()
        ids = index[name]
        h.update(name.encode())
        if ids is not None:
            ids = ids.to(torch.long)
            h.update(ids.cpu().numpy().tobytes())
            t = t[ids.to(t.device)]
        h.update(t.to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


class Adapter:
    """Replacement tensors for some parameters of a base model.

    Attributes:
        tensors: param name → replacement: the whole tensor (shape of the parameter), or for sliced
            entries ``[n, ...]`` rows for the experts in ``index[name]``.
        index: param name → ``[n]`` long expert ids along dim 0, or ``None`` for a whole tensor.
        manifest: the ``adapter.json`` content (method, base_model, base_fingerprint, config_hash,
            config, metrics, experts, n_trainable).
        n_trainable: number of trained scalars (= elements of ``tensors``).
        metrics: dev metrics and cost of the run that made it.
    """

    method = "adapter"

    def __init__(self, tensors: dict[str, torch.Tensor], index: dict[str, torch.Tensor | None], manifest: dict):
        self.tensors = dict(tensors)
        self.index = {k: (None if v is None else torch.as_tensor(v, dtype=torch.long)) for k, v in index.items()}
        if set(self.tensors) != set(self.index):
            raise ValueError("adapter tensors and index name different parameters")
        self.manifest = dict(manifest)
        self.manifest.setdefault("method", self.method)
        self.manifest["n_trainable"] = self.n_trainable

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(base={self.base_model!r}, tensors={len(self.tensors)}, "
                f"n_trainable={self.n_trainable})")

    @property
    def n_trainable(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics", {})

    @property
    def base_model(self) -> str:
        return self.manifest.get("base_model", "")

    # --- files ------------------------------------------------------------------------------------
    def save(self, directory) -> Path:
        """Write ``adapter.safetensors`` + ``adapter.json`` into ``directory``; returns it."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        flat = {}
        for name, t in self.tensors.items():
            if self.index[name] is None:
                flat[name] = t.detach().cpu().contiguous()
            else:
                flat[f"{name}::slices"] = t.detach().cpu().contiguous()
                flat[f"{name}::index"] = self.index[name].cpu().contiguous()
        save_file(flat, str(d / WEIGHTS), metadata={"method": self.manifest["method"]})
        (d / MANIFEST).write_text(json.dumps(self.manifest, indent=2, default=str) + "\n")
        return d

    save_pretrained = save

    @classmethod
    def load(cls, directory, lm=None) -> "Adapter":
        """Read an adapter directory (any method: the class is taken from the manifest).

        With ``lm`` given, checks that it is the base model the adapter was made for (ValueError if not).
        """
        from safetensors.torch import load_file

        d = Path(directory)
        if not (d / MANIFEST).exists():
            raise FileNotFoundError(f"{d} is not an adapter directory (no {MANIFEST})")
        manifest = json.loads((d / MANIFEST).read_text())
        flat = load_file(str(d / WEIGHTS))
        tensors, index = {}, {}
        for key, t in flat.items():
            if key.endswith("::index"):
                continue
            if key.endswith("::slices"):
                name = key[: -len("::slices")]
                tensors[name], index[name] = t, flat[f"{name}::index"]
            else:
                tensors[key], index[key] = t, None
        kind = _CLASSES.get(manifest.get("method"), Adapter)
        if cls is not Adapter and not issubclass(kind, cls):
            raise ValueError(f"{d} holds a {manifest.get('method')!r} adapter, not a {cls.__name__}")
        adapter = kind(tensors, index, manifest)
        if lm is not None:
            adapter.check(lm)
        return adapter

    # --- applying ----------------------------------------------------------------------------------
    def check(self, lm) -> None:
        """Raise ValueError unless ``lm``'s tensors that this adapter replaces are the ones it was made for."""
        fam, have_fam = self.manifest.get("family"), getattr(lm.spec, "family", None)
        if fam and have_fam and fam != have_fam:
            raise ValueError(f"this {self.manifest['method']} adapter was made for another base model: it was "
                             f"trained on {self.base_model!r}, a {fam} model, but {lm.name!r} is a {have_fam} model")
        want = self.manifest.get("base_fingerprint")
        if want is None:
            return
        have = fingerprint(lm, self.index)
        if have != want:
            raise ValueError(
                f"this {self.manifest['method']} adapter was made for another base model: it was trained on "
                f"{self.base_model!r} (fingerprint {want[:12]}…), but the tensors it replaces in {lm.name!r} "
                f"differ (fingerprint {have[:12]}…)")

    def _swap(self, lm) -> dict[str, torch.Tensor]:
        """Write the adapter's values into ``lm`` in place; return the overwritten originals."""
        params = dict(lm.hf.named_parameters())
        saved = {}
        with torch.no_grad():
            for name, value in self.tensors.items():
                p, ids = params[name], self.index[name]
                v = value.to(p.device, p.dtype)
                if ids is None:
                    saved[name] = p.detach().clone()
                    p.copy_(v)
                else:
                    ids = ids.to(p.device)
                    saved[name] = p.detach()[ids].clone()
                    p.index_copy_(0, ids, v)
        return saved

    def _restore(self, lm, saved: dict[str, torch.Tensor]) -> None:
        params = dict(lm.hf.named_parameters())
        with torch.no_grad():
            for name, orig in saved.items():
                p, ids = params[name], self.index[name]
                if ids is None:
                    p.copy_(orig)
                else:
                    p.index_copy_(0, ids.to(p.device), orig)

    @contextmanager
    def applied(self, lm, check: bool = True):
        """Context manager: the model runs with the adapter's tensors inside, the original (bit-identical)
        tensors are back on exit, also after an exception. Yields ``lm``."""
        if check:
            self.check(lm)
        saved = self._swap(lm)
        try:
            yield lm
        finally:
            self._restore(lm, saved)

    def merge(self, lm, check: bool = True):
        """Write the adapter's tensors into ``lm`` permanently; returns ``lm``."""
        if check:
            self.check(lm)
        self._swap(lm)
        return lm

    def save_pretrained_merged(self, lm, directory) -> Path:
        """Save ``lm`` with the adapter merged (``save_pretrained`` + tokenizer) without changing ``lm``."""
        d = Path(directory)
        with self.applied(lm):
            lm.hf.save_pretrained(d)
            if lm.tokenizer is not None:
                lm.tokenizer.save_pretrained(d)
        return d


class RouterAdapter(Adapter):
    """Router tuning: the router weight ``[E, H]`` (and bias) of every MoE layer."""

    method = "router"


class ExpertAdapter(Adapter):
    """CEFT: the selected experts' rows ``[n, ...]`` of each fused expert tensor of their layers."""

    method = "ceft"

    @property
    def experts(self):
        """The :class:`~routerlens_interp.selection.ExpertSet` that was trained."""
        from ..selection import ExpertSet

        return ExpertSet(self.manifest.get("experts", {}))


class FullAdapter(Adapter):
    """Full fine-tuning: every parameter (or those matching ``full_finetune(only=...)``)."""

    method = "fft"


_CLASSES = {"router": RouterAdapter, "ceft": ExpertAdapter, "fft": FullAdapter}


def load_adapter(directory, lm=None) -> Adapter:
    """Load any adapter directory; with ``lm`` given, check it is the right base model (ValueError)."""
    return Adapter.load(directory, lm)
