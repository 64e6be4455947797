"""Loading options shared by :func:`routerlens_interp.load`, the CLI and ``routerlens inspect``.

- :func:`loading_kwargs`: ``device`` / ``dtype`` / ``device_map`` / ``trust_remote_code`` / ``revision`` →
  the keyword arguments of the model's and the tokenizer's ``from_pretrained``. A ``device`` without a
  device map becomes ``device_map={"": device}``: the weights are read straight onto that device, never
  loaded on the CPU first and moved (a model larger than host RAM would not fit there).
- :func:`quantization_request` / :func:`refuse_quantization` / :func:`describe_quantization`: transformers 5
  keeps each MoE layer's experts as fused 3-D parameters, and bitsandbytes replaces ``nn.Linear`` modules
  only, so a 4-bit load quantises attention and dense linears while the experts (most of the weights) stay
  in full precision. Such a load is refused with the reason unless the caller opts in; then
  ``lm.quantization`` says, from the loaded parameters, what was and was not quantised.
- :func:`build_on_meta`: the model of a config on the meta device (no weights), for ``inspect --config-only``.
"""
from __future__ import annotations

import json

import torch

from ..errors import UserError

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_MAP_NAMES = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_dtype(dtype):
    """``None`` / a ``torch.dtype`` / one of :data:`DTYPES`' names → what ``from_pretrained(dtype=...)`` takes."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}; give one of them (or a torch.dtype)")
    return DTYPES[name]


def parse_device_map(text: str):
    """``--device-map`` text: ``auto`` / ``balanced`` / ``balanced_low_0`` / ``sequential``, or a JSON object
    ``{"module.path": device, ...}`` (device: ``"cuda:0"``, ``"cpu"``, ``"disk"`` or a GPU index)."""
    if text in DEVICE_MAP_NAMES:
        return text
    try:
        m = json.loads(text)
    except json.JSONDecodeError:
        m = None
    if not isinstance(m, dict) or not m or not all(isinstance(k, str) and isinstance(v, (str, int))
                                                   and not isinstance(v, bool) for k, v in m.items()):
        raise ValueError(f"{text!r} is not a device map; give {', '.join(DEVICE_MAP_NAMES)} or a JSON object such "
                         'as \'{"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, ...}\'')
    return m


def loading_kwargs(device=None, dtype=None, device_map=None, trust_remote_code: bool = False,
                   revision: str | None = None, hf_kwargs: dict | None = None) -> tuple[dict, dict]:
    """→ ``(model_kwargs, tokenizer_kwargs)`` for ``from_pretrained``.

    ``device`` and ``device_map`` exclude each other; a non-CPU ``device`` becomes ``device_map={"": device}``
    (weights read onto the device directly). ``trust_remote_code`` and ``revision`` go to both."""
    kw = dict(hf_kwargs or {})
    if "device_map" in kw:  # a device map among the other from_pretrained kwargs
        device_map = kw.pop("device_map") if device_map is None else device_map
    if device is not None and device_map is not None:
        raise UserError(f"give a device ({device}) or a device map ({device_map}), not both: a device map already "
                        "says where every layer goes")
    dt = parse_dtype(dtype)
    if dt is not None:
        kw["dtype"] = dt
    if device_map is not None:
        kw["device_map"] = device_map
    elif device is not None and torch.device(device).type != "cpu":
        kw["device_map"] = {"": str(torch.device(device))}
    tok: dict = {}
    if trust_remote_code:
        kw["trust_remote_code"] = tok["trust_remote_code"] = True
    if revision is not None:
        kw["revision"] = tok["revision"] = revision
    return kw, tok


# ------------------------------------------------------------------------------------------ quantization
def _method(q) -> str:
    if q is None:
        return ""
    if isinstance(q, dict):
        m = q.get("quant_method") or ("bitsandbytes" if q.get("load_in_4bit") or q.get("load_in_8bit") else "")
        bits = "4-bit" if q.get("load_in_4bit") else "8-bit" if q.get("load_in_8bit") else ""
    else:
        m = getattr(q, "quant_method", "") or type(q).__name__
        m = getattr(m, "value", m)
        bits = "4-bit" if getattr(q, "load_in_4bit", False) else "8-bit" if getattr(q, "load_in_8bit", False) else ""
    return " ".join(p for p in (bits, str(m)) if p)


def quantization_request(kwargs: dict, config=None) -> tuple[str, str] | None:
    """``(method, where)`` when a load would quantise: a ``quantization_config`` (or ``load_in_4bit`` /
    ``load_in_8bit``) in the ``from_pretrained`` kwargs, or a ``quantization_config`` in the saved config
    (a pre-quantised checkpoint); None otherwise."""
    if kwargs.get("quantization_config") is not None:
        return _method(kwargs["quantization_config"]) or "quantization", "quantization_config passed to the load"
    for flag, bits in (("load_in_4bit", "4-bit"), ("load_in_8bit", "8-bit")):
        if kwargs.get(flag):
            return f"{bits} bitsandbytes", f"{flag}=True passed to the load"
    q = getattr(config, "quantization_config", None) if config is not None else None
    if q:
        return _method(q) or "quantization", "the checkpoint's config.json (a pre-quantised model)"
    return None


def refuse_quantization(name: str, method: str, where: str) -> UserError:
    """The one-line refusal of a quantised load (see the module docstring)."""
    if "bitsandbytes" in method:
        why = ("transformers 5 keeps each MoE layer's experts as fused 3-D parameters, which bitsandbytes does not "
               "quantise (it replaces nn.Linear modules only), so attention and dense linears would be quantised while "
               "the routed experts - most of the weights - stay in full precision (routers too)")
    else:
        why = ("routerlens has not checked which weights this method quantises in transformers 5 (the fused 3-D "
               "experts or only nn.Linear modules), nor masking, tracing and training on its quantised weights")
    return UserError(
        f"{name}: {method} quantization ({where}) is refused: {why}; load in bf16 over several GPUs instead "
        "(--dtype bfloat16 --device-map auto), or opt in with --allow-partial-quantization "
        "(rl.load(..., allow_partial_quantization=True)): lm.quantization then lists what was quantised")


def _is_quantised(p: torch.Tensor) -> bool:
    """A quantised weight: bitsandbytes' ``Params4bit`` / ``Int8Params`` (Parameter subclasses), or integer /
    8-bit float storage where a float weight belongs."""
    if type(p) not in (torch.nn.Parameter, torch.Tensor):
        return True
    return not p.dtype.is_floating_point or p.element_size() == 1


def describe_quantization(lm, method: str) -> dict:
    """What a quantised load really quantised, read off the loaded parameters, by part of the model.

    Returns ``{"method", "quantised": {part: n_params}, "not_quantised": {part: n_params}, "summary"}`` with
    parts ``experts`` (routed experts), ``routers``, ``attention``, ``other``; counts are stored elements."""
    spec, hf = lm.spec, lm.hf
    prefixes = {"experts": [spec.experts_path(l) + "." for l in spec.moe_layers],
                "routers": [spec.router_path(l) + "." for l in spec.moe_layers],
                "attention": [f"{spec.layers_path}.{l}.{spec.attn_attr}." for l in range(spec.n_layers)]}
    q: dict[str, int] = {}
    full: dict[str, int] = {}
    for n, p in hf.named_parameters():
        part = next((k for k, ps in prefixes.items() if any(n.startswith(x) for x in ps)), "other")
        d = q if _is_quantised(p) else full
        d[part] = d.get(part, 0) + p.numel()
    order = ("experts", "routers", "attention", "other")
    qs = ", ".join(f"{k} ({q[k]:,})" for k in order if k in q) or "nothing"
    fs = ", ".join(f"{k} ({full[k]:,})" for k in order if k in full) or "nothing"
    return {"method": method, "quantised": q, "not_quantised": full,
            "summary": f"{method}: quantised {qs}; NOT quantised {fs}"}


# -------------------------------------------------------------------------------------------- config only
def load_config(path: str, trust_remote_code: bool = False, revision: str | None = None):
    """``AutoConfig.from_pretrained`` with the loading options (reads config.json only: no weights)."""
    from transformers import AutoConfig

    kw = {"trust_remote_code": True} if trust_remote_code else {}
    if revision is not None:
        kw["revision"] = revision
    return AutoConfig.from_pretrained(path, **kw)


def build_on_meta(config, trust_remote_code: bool = False):
    """The causal LM of ``config`` with every parameter on the meta device (shapes only, no memory, no
    download); the image-text-to-text class for families that exist only inside a multimodal model."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    kw = {"trust_remote_code": True} if trust_remote_code else {}
    with torch.device("meta"):
        try:
            return AutoModelForCausalLM.from_config(config, **kw)
        except ValueError as err:
            if "Unrecognized configuration class" not in str(err):
                raise
            try:
                return AutoModelForImageTextToText.from_config(config, **kw)
            except ValueError:
                raise err from None
