"""Adapters: the tensors a training run changed, saved apart from the base model.

An adapter directory holds ``adapter.safetensors`` (only the changed tensors, or for CEFT only the
selected experts' slices) and ``adapter.json`` (method, base model name, fingerprint of the base
tensors it replaces, config hash, training config, dev metrics, selected experts, and the SHA-256 of
every stored tensor). It swaps its tensors into a model reversibly (:meth:`Adapter.applied`) or
permanently (:meth:`Adapter.merge`), all or nothing.

Loading trusts nothing in the directory: the manifest is checked against a schema (known method,
required keys and their types, a CEFT ``experts`` table that agrees with the stored slices), every
tensor against its checksum and for finite values; a failure raises
:class:`~routerlens_interp.errors.IntegrityError` naming the file and the tensor. A manifest without
``base_fingerprint`` is refused unless ``trust_base=True`` (then a warning says that nothing checks the
base model). Adapters written before checksums existed (manifest version 1) load with a warning when
they carry a base fingerprint; ``load_adapter(d).save(d)`` adds the checksums.

Safetensors keys: ``"<param name>"`` for a whole tensor; ``"<param name>::slices"`` ``[n, ...]`` and
``"<param name>::index"`` ``[n]`` (expert ids along dim 0) for expert slices (DBRX's flat ``[E·I, H]``
matrices: along dim 0 of their ``[E, I, H]`` view, slices ``[n, I, H]``).
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from .. import safe_state
from ..errors import IntegrityError, UserError

__all__ = ["Adapter", "RouterAdapter", "ExpertAdapter", "FullAdapter", "load_adapter", "fingerprint",
           "tensor_sha256", "check_manifest"]

WEIGHTS, MANIFEST = "adapter.safetensors", "adapter.json"
FORMAT, VERSION = "routerlens-adapter", 2
METHODS = ("router", "ceft", "fft")
_HEX64 = re.compile(r"[0-9a-f]{64}")
# key → (accepted types, required). base_fingerprint and sha256 have their own rules (see check_manifest).
_SCHEMA = {"format": (str, False), "version": (int, False), "method": (str, True), "base_model": (str, True),
           "family": ((str, type(None)), False), "base_fingerprint": (str, False), "config_hash": (str, False),
           "config": (dict, False), "metrics": (dict, False), "n_trainable": (int, False), "only": (str, False),
           "experts": (dict, False), "sha256": (dict, False)}


def tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 over a tensor's dtype, shape and raw bytes (hex)."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{list(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_manifest(m, where: str = MANIFEST) -> None:
    """Raise :class:`IntegrityError` unless ``m`` is a valid adapter manifest: a JSON object whose known
    keys have the right types, ``method`` in :data:`METHODS`, ``base_fingerprint`` and every ``sha256``
    value 64 hex digits, and for CEFT an ``experts`` table ``{"<layer>": [expert ids]}`` of integers.
    (Whether the tensors match is checked by :meth:`Adapter.load`.)"""
    if not isinstance(m, dict):
        raise IntegrityError(f"{where} must hold a JSON object, not {type(m).__name__}")
    for key, (types, required) in _SCHEMA.items():
        if key not in m:
            if required:
                raise IntegrityError(f"{where} lacks the required key {key!r}")
            continue
        v = m[key]
        if not isinstance(v, types) or (types is int and isinstance(v, bool)):
            raise IntegrityError(f"{where}: {key!r} has the wrong type ({type(v).__name__}: {v!r:.60})")
    if m.get("format", FORMAT) != FORMAT:
        raise IntegrityError(f"{where}: format {m['format']!r} is not {FORMAT!r}")
    if m["method"] not in METHODS:
        raise IntegrityError(f"{where}: unknown method {m['method']!r}; known methods: {', '.join(METHODS)}")
    if "base_fingerprint" in m and not _HEX64.fullmatch(m["base_fingerprint"]):
        raise IntegrityError(f"{where}: base_fingerprint {m['base_fingerprint']!r:.80} is not 64 hex digits")
    for k, v in (m.get("sha256") or {}).items():
        if not (isinstance(v, str) and _HEX64.fullmatch(v)):
            raise IntegrityError(f"{where}: the sha256 of tensor {k!r} is not 64 hex digits")
    if m["method"] == "ceft":
        if "experts" not in m:
            raise IntegrityError(f"{where}: a ceft adapter must list its experts ({{\"<layer>\": [ids]}})")
        for layer, ids in m["experts"].items():
            ok = (isinstance(layer, str) and layer.isdigit() and isinstance(ids, list)
                  and all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in ids))
            if not ok:
                raise IntegrityError(f"{where}: experts[{layer!r}] = {ids!r:.60} is not a list of integer expert "
                                     "ids under a layer number")


def _layer_of(name: str) -> int | None:
    m = re.search(r"\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def _rows(lm, name: str, p: torch.Tensor) -> torch.Tensor:
    """Parameter ``name`` with dim 0 = expert (the sliced entries' ids index it): DBRX's flat ``[E·I, H]``
    matrices as their ``[E, I, H]`` view (:mod:`routerlens_interp.arch.layouts`), any other tensor as it is."""
    from ..arch.layouts import expert_rows

    spec = getattr(lm, "spec", None)
    return p if spec is None else expert_rows(spec, lm.hf, name, p)


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
            t = _rows(lm, name, t)[ids.to(t.device)]
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

    def __init__(self, tensors: dict[str, torch.Tensor], index: dict[str, torch.Tensor | None], manifest: dict,
                 trust_base: bool = False):
        self.tensors = dict(tensors)
        self.index = {k: (None if v is None else torch.as_tensor(v, dtype=torch.long)) for k, v in index.items()}
        if set(self.tensors) != set(self.index):
            raise ValueError("adapter tensors and index name different parameters")
        self.manifest = dict(manifest)
        self.manifest.setdefault("method", self.method)
        self.manifest["n_trainable"] = self.n_trainable
        self.trust_base = trust_base

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
    def _flat(self) -> dict[str, torch.Tensor]:
        flat = {}
        for name, t in self.tensors.items():
            if self.index[name] is None:
                flat[name] = t.detach().cpu().contiguous()
            else:
                flat[f"{name}::slices"] = t.detach().cpu().contiguous()
                flat[f"{name}::index"] = self.index[name].cpu().contiguous()
        return safe_state.unshare(flat)  # one ids tensor shared by several names must be stored apart

    def save(self, directory) -> Path:
        """Write ``adapter.safetensors`` + ``adapter.json`` (with the SHA-256 of every tensor) into
        ``directory``; returns it. Each file is replaced atomically; a failed write (full disk) raises
        :class:`~routerlens_interp.errors.UserError` and leaves no temp file."""
        from safetensors.torch import save as st_save

        d = Path(directory)
        flat = self._flat()
        self.manifest.update(format=FORMAT, version=VERSION, sha256={k: tensor_sha256(v) for k, v in flat.items()})
        check_manifest(self.manifest, f"the manifest of {d}")
        try:
            d.mkdir(parents=True, exist_ok=True)
            safe_state.write_atomic(d / WEIGHTS, st_save(flat, metadata={"method": self.manifest["method"]}))
            text = json.dumps(self.manifest, indent=2, default=str) + "\n"
            safe_state.write_atomic(d / MANIFEST, text.encode())
        except OSError as e:
            raise UserError(f"could not write the adapter to {d} ({e}); free space there or choose another "
                            "output directory") from None
        return d

    save_pretrained = save

    @classmethod
    def load(cls, directory, lm=None, trust_base: bool = False) -> "Adapter":
        """Read an adapter directory (any method: the class is taken from the manifest).

        Checks the manifest schema, each tensor's SHA-256 and finiteness, and (CEFT) that ``experts``
        matches the stored slices: :class:`~routerlens_interp.errors.IntegrityError` naming the file and
        tensor otherwise. A manifest without ``base_fingerprint`` is refused unless ``trust_base=True``.
        With ``lm`` given, checks that it is the base model the adapter was made for (ValueError if not).
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        d = Path(directory)
        mpath, wpath = d / MANIFEST, d / WEIGHTS
        if not mpath.exists():
            raise FileNotFoundError(f"{d} is not an adapter directory (no {MANIFEST})")
        try:
            manifest = json.loads(mpath.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise IntegrityError(f"{mpath} is not valid JSON ({e}); re-save the adapter") from None
        check_manifest(manifest, str(mpath))
        if not wpath.exists():
            raise IntegrityError(f"{wpath} is missing (the manifest {mpath} has no weights next to it)")
        if safe_state.file_kind(wpath) != "safetensors":
            raise IntegrityError(f"{wpath} is not a safetensors file; re-save the adapter")
        try:
            flat = load_file(str(wpath))
        except SafetensorError as e:
            raise IntegrityError(f"{wpath} is damaged ({e}); re-save the adapter") from None
        _check_tensors(flat, manifest, wpath)
        tensors, index = {}, {}
        for key, t in flat.items():
            if key.endswith("::index"):
                continue
            if key.endswith("::slices"):
                name = key[: -len("::slices")]
                if f"{name}::index" not in flat:
                    raise IntegrityError(f"{wpath}: tensor {key!r} has no {name + '::index'!r} next to it")
                tensors[name], index[name] = t, flat[f"{name}::index"]
            else:
                tensors[key], index[key] = t, None
        _check_index(tensors, index, manifest, wpath)
        kind = _CLASSES[manifest["method"]]
        if cls is not Adapter and not issubclass(kind, cls):
            raise IntegrityError(f"{d} holds a {manifest['method']!r} adapter, not a {cls.__name__}")
        if manifest.get("n_trainable", None) not in (None, sum(t.numel() for t in tensors.values())):
            raise IntegrityError(f"{mpath}: n_trainable {manifest['n_trainable']} does not match the "
                                 f"{sum(t.numel() for t in tensors.values())} values stored in {wpath}")
        if "base_fingerprint" not in manifest:
            if not trust_base:
                raise IntegrityError(
                    f"{mpath} has no base_fingerprint, so nothing shows which base model {d} was made for; "
                    "re-save it from the training run, or pass trust_base=True (--trust-base) to apply it anyway")
            warnings.warn(f"TRUSTING THE BASE MODEL: {mpath} has no base_fingerprint; the adapter is applied "
                          "without checking that the model is the one it was trained on", stacklevel=2)
        adapter = kind(tensors, index, manifest, trust_base=trust_base)
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
            if self.trust_base:
                return
            raise IntegrityError(f"this {self.manifest['method']} adapter has no base_fingerprint, so nothing shows "
                                 "which base model it was made for; pass trust_base=True to apply it anyway")
        have = fingerprint(lm, self.index)
        if have != want:
            raise ValueError(
                f"this {self.manifest['method']} adapter was made for another base model: it was trained on "
                f"{self.base_model!r} (fingerprint {want[:12]}…), but the tensors it replaces in {lm.name!r} "
                f"differ (fingerprint {have[:12]}…)")

    def _targets(self, lm) -> dict[str, torch.nn.Parameter]:
        """``lm``'s parameters by name, after checking that every tensor of the adapter fits its target."""
        params = dict(lm.hf.named_parameters())
        for name, value in self.tensors.items():
            if name not in params:
                raise ValueError(f"model {lm.name!r} has no parameter {name!r}: the adapter was made for another "
                                 "base model (different architecture)")
            p, ids = params[name], self.index[name]
            rows = p if ids is None else _rows(lm, name, p)
            want = tuple(p.shape) if ids is None else (len(ids), *rows.shape[1:])
            if tuple(value.shape) != want or (ids is not None and len(ids) and not 0 <= int(ids.min())
                                              <= int(ids.max()) < rows.shape[0]):
                raise ValueError(f"the adapter's {name!r} {tuple(value.shape)} does not fit {lm.name!r}'s "
                                 f"parameter {tuple(p.shape)}: it was made for another base model")
        return params

    @staticmethod
    def _put(p: torch.Tensor, ids: torch.Tensor | None, value: torch.Tensor) -> None:
        """Write ``value`` into ``p`` (whole, or the rows ``ids`` along dim 0 of ``p``, a per-expert view)."""
        v = value.to(p.device, p.dtype)
        if ids is None:
            p.copy_(v)
        else:
            p.index_copy_(0, ids.to(p.device), v)

    def _swap(self, lm) -> dict[str, torch.Tensor]:
        """Write the adapter's values into ``lm`` in place; return the overwritten originals. All or nothing:
        if any write fails, the ones already made are undone before the error propagates."""
        params = self._targets(lm)
        saved = {}
        with torch.no_grad():
            try:
                for name, value in self.tensors.items():
                    p, ids = params[name], self.index[name]
                    p = p if ids is None else _rows(lm, name, p)
                    saved[name] = p.detach().clone() if ids is None else p.detach()[ids.to(p.device)].clone()
                    self._put(p, ids, value)
            except BaseException:
                self._restore(lm, saved)
                raise
        return saved

    def _restore(self, lm, saved: dict[str, torch.Tensor]) -> None:
        params = dict(lm.hf.named_parameters())
        with torch.no_grad():
            for name, orig in saved.items():
                ids = self.index[name]
                self._put(params[name] if ids is None else _rows(lm, name, params[name]), ids, orig)

    @contextmanager
    def applied(self, lm, check: bool = True):
        """Context manager: the model runs with the adapter's tensors inside, the original (bit-identical)
        tensors are back on exit, also after an exception, and also when applying fails part-way. Yields ``lm``."""
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
    """CEFT: the selected experts' rows ``[n, ...]`` of each fused expert tensor of their layers, or (experts
    kept as an ``nn.ModuleList``, remote code) the selected experts' own tensors, whole."""

    method = "ceft"

    @property
    def experts(self):
        """The :class:`~routerlens_interp.analysis.selection.ExpertSet` that was trained."""
        from ..analysis.selection import ExpertSet

        return ExpertSet(self.manifest.get("experts", {}))


class FullAdapter(Adapter):
    """Full fine-tuning: every parameter (or those matching ``full_finetune(only=...)``)."""

    method = "fft"


_CLASSES = {"router": RouterAdapter, "ceft": ExpertAdapter, "fft": FullAdapter}


def load_adapter(directory, lm=None, trust_base: bool = False) -> Adapter:
    """Load any adapter directory (checked: see :meth:`Adapter.load`); with ``lm`` given, check it is the
    right base model (ValueError). ``trust_base=True`` accepts a manifest without ``base_fingerprint``."""
    return Adapter.load(directory, lm, trust_base=trust_base)


def _check_tensors(flat: dict[str, torch.Tensor], manifest: dict, wpath: Path) -> None:
    """Checksums (when the manifest has them) and finite values of every stored tensor."""
    sums = manifest.get("sha256")
    if sums is None:
        if "base_fingerprint" in manifest:
            warnings.warn(f"{wpath} was written before adapters carried checksums: its tensors cannot be checked "
                          "for damage; re-save it with rl.load_adapter(DIR).save(DIR) to add them", stacklevel=3)
    else:
        extra, missing = sorted(set(flat) - set(sums)), sorted(set(sums) - set(flat))
        if extra or missing:
            what = "; ".join(w for w in (extra and f"unlisted {extra[:3]!r}", missing and f"missing {missing[:3]!r}")
                             if w)
            raise IntegrityError(f"{wpath} does not hold the tensors its manifest lists: {what}")
        for k, t in flat.items():
            if tensor_sha256(t) != sums[k]:
                raise IntegrityError(f"{wpath}: tensor {k!r} fails its SHA-256 check (the file was changed or "
                                     "damaged after it was written); nothing was loaded")
    for k, t in flat.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise IntegrityError(f"{wpath}: tensor {k!r} holds NaN or infinite values; nothing was loaded")


def _check_index(tensors: dict, index: dict, manifest: dict, wpath: Path) -> None:
    """Expert ids: 1-D integer rows matching the slices, no repeats; for CEFT the manifest's ``experts``
    table must be exactly the experts the slices hold, the same in every tensor of a layer."""
    held: dict[int, list[int]] = {}
    whole: dict[int, set[int]] = {}  # CEFT on experts kept as a ModuleList: whole tensors of experts.<e>.*
    for name, ids in index.items():
        if ids is None:
            if manifest["method"] == "ceft":
                m = re.search(r"\.(\d+)\.(?:[^.]+\.)*?[^.]*experts[^.]*\.(\d+)\.", name)
                if m is None:
                    raise IntegrityError(f"{wpath}: a ceft adapter holds expert slices or per-expert modules' "
                                         f"tensors only, but {name!r} is neither")
                whole.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
            continue
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dim() != 1 or len(ids) != len(tensors[name]):
            raise IntegrityError(f"{wpath}: {name + '::index'!r} must be 1-D integer expert ids, one per slice row")
        rows = ids.tolist()
        if len(set(rows)) != len(rows) or min(rows, default=0) < 0:
            raise IntegrityError(f"{wpath}: {name + '::index'!r} = {rows} repeats an expert or is negative")
        layer = _layer_of(name)
        if layer is None or held.setdefault(layer, sorted(rows)) != sorted(rows):
            raise IntegrityError(f"{wpath}: the tensors of layer {layer} hold different experts ({name!r}: {rows})")
    if set(whole) & set(held):
        raise IntegrityError(f"{wpath}: layers {sorted(set(whole) & set(held))} hold both expert slices and whole "
                             "per-expert tensors; the adapter is inconsistent, re-save it")
    held.update((l, sorted(e)) for l, e in whole.items())
    if manifest["method"] == "ceft":
        listed = {int(l): sorted(ids) for l, ids in manifest["experts"].items() if ids}
        if listed != dict(sorted(held.items())):
            raise IntegrityError(f"{wpath}: the manifest lists experts {listed} but the stored slices hold "
                                 f"{dict(sorted(held.items()))}; the adapter is inconsistent, re-save it")
