"""Load an MoE causal LM into a :class:`MoEModel` handle: HF model, tokenizer, spec, nnsight view."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from .arch import MoESpec, inspect_model
from .examples import QAExample
from .prompts import Encoded, encode, pad_batch

TOY_DIR = Path(__file__).parent / "toy" / "weights"


class MoEModel:
    """A loaded MoE model.

    Attributes:
        hf: the ``transformers`` causal LM (SDPA attention by default; traces compute the attention rows
            they need, see :mod:`routerlens_interp.hooks.attn_rows`).
        tokenizer: its fast tokenizer (pad token set).
        spec: the :class:`~routerlens_interp.arch.MoESpec` of its layout.
        name: the name or path it was loaded from.
    """

    def __init__(self, hf, tokenizer, spec: MoESpec | None = None, name: str = ""):
        self.hf = hf
        self.tokenizer = tokenizer
        self.spec = spec or inspect_model(hf)
        self.name = name or getattr(hf.config, "_name_or_path", "") or type(hf).__name__
        if tokenizer is not None and tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._nnsight = None
        self._hooks = None
        self.quantization: dict | None = None  # set by load() for an opted-in quantised load

    @property
    def hooks(self):
        """The model's :class:`~routerlens_interp.hooks.HookLayer`: every read and edit of its internals."""
        if self._hooks is None:
            from .hooks import HookLayer

            self._hooks = HookLayer(self)
        return self._hooks

    def __repr__(self) -> str:
        s = self.spec
        q = f", quantization={self.quantization['summary']!r}" if self.quantization else ""
        return (f"MoEModel({self.name!r}, family={s.family}, layers={s.n_layers}, moe_layers={len(s.moe_layers)}, "
                f"experts={s.n_experts}, top_k={s.top_k}, routing={s.routing}, experts_kind={s.experts_kind}, "
                f"implementation={s.implementation!r}{q})")

    @property
    def device(self) -> torch.device:
        """Where input ids go: the input embedding's device (with a device map, layers may sit elsewhere;
        every reader moves what it records to where it accumulates, see :mod:`routerlens_interp.hooks.devices`)."""
        from .hooks.devices import input_device

        return input_device(self.hf)

    @property
    def window(self) -> int | None:
        """The model's context window in tokens (``max_position_embeddings``)."""
        return getattr(self.hf.config, "max_position_embeddings", None)

    @property
    def nnsight(self):
        """An ``nnsight.NNsight`` view of :attr:`hf` (created once)."""
        if self._nnsight is None:
            from nnsight import NNsight

            self._nnsight = NNsight(self.hf)
        return self._nnsight

    def encode(self, example: QAExample, with_answer: bool = False, max_length: int | None = None) -> Encoded:
        """Tokenize an example with spans; see :func:`routerlens_interp.prompts.encode`."""
        return encode(self.tokenizer, example, with_answer=with_answer, max_length=max_length or self.window)

    def batch(self, encoded: list[Encoded], side: str = "right") -> dict[str, torch.Tensor]:
        """Pad encodings → ``input_ids``/``attention_mask`` ``[B, T]`` on the model's device, plus ``offsets``."""
        b = pad_batch(encoded, self.tokenizer.pad_token_id, side)
        return {k: v.to(self.device) for k, v in b.items()}

    def trace(self, examples, **kwargs):
        """Record routing, attention to spans and logit lens; see :func:`routerlens_interp.trace.trace`."""
        from .trace import trace

        return trace(self, examples, **kwargs)

    def fingerprint(self, names: list[str] | None = None) -> str:
        """SHA-256 over the named parameters (all when ``names`` is None): identifies a base model."""
        h = hashlib.sha256()
        params = dict(self.hf.named_parameters())
        for n in sorted(names or params):
            t = params[n].detach().to("cpu", torch.float32).contiguous()
            h.update(n.encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()


def load(name_or_path: str = "toy", device: str | torch.device | None = None, dtype=None, *,
         device_map=None, trust_remote_code: bool = False, revision: str | None = None,
         allow_partial_quantization: bool = False, **hf_kwargs) -> MoEModel:
    """Load an MoE model.

    Args:
        name_or_path: ``"toy"`` (the bundled model; ``"toy-v1"`` names the same world-v1 model and stays
            loadable under that name if a world-v2 model becomes the default), a hub id (``"allenai/OLMoE-1B-7B-0924-Instruct"``)
            or a local directory written by ``save_pretrained``.
        device: where to put it (``"cuda"``, ``"cpu"``, ...); default CPU. The weights are read straight onto
            that device (``device_map={"": device}``), never loaded on the CPU first.
        dtype: parameter dtype: a ``torch.dtype`` or ``"auto"`` / ``"float32"`` / ``"bfloat16"`` / ``"float16"``;
            default as transformers loads it.
        device_map: spread the layers over devices (``"auto"``, or ``{"model.layers.0": 0, ...}``); excludes
            ``device``. Every reader and edit of the toolkit moves what it records to where it accumulates.
        trust_remote_code / revision: passed to the model's *and* the tokenizer's ``from_pretrained``.
        allow_partial_quantization: load although a ``quantization_config`` is given or saved (refused by
            default: bitsandbytes quantises ``nn.Linear`` modules only, not transformers 5's fused experts);
            ``lm.quantization`` then says what was really quantised.
        hf_kwargs: passed to ``from_pretrained``; ``attn_implementation`` defaults to transformers' choice
            (``"sdpa"`` where the family supports it, else ``"eager"``); ``"eager"`` keeps the full
            ``[B, H, T, T]`` probabilities (memory grows with T²).

    Raises :class:`~routerlens_interp.arch.NotMoEError` for a dense model or an unreadable layout,
    :class:`~routerlens_interp.errors.UserError` for a refused quantised load or conflicting options.
    """
    from transformers import AutoTokenizer

    from .arch.loading import describe_quantization, load_config, loading_kwargs, quantization_request, refuse_quantization

    if name_or_path == "toy-v1":
        name_or_path = "toy"
    path = resolve_path(name_or_path)
    kw, tok_kw = loading_kwargs(device, dtype, device_map, trust_remote_code, revision, hf_kwargs)
    quant = quantization_request(kw, load_config(path, trust_remote_code, revision))
    if quant is not None and not allow_partial_quantization:
        raise refuse_quantization(str(name_or_path), *quant)
    hf = _from_pretrained(path, kw)
    hf.config.output_router_logits = False  # True breaks padded generate (aux loss shapes)
    hf.eval()
    tok = AutoTokenizer.from_pretrained(path, **tok_kw)
    lm = MoEModel(hf, tok, name="toy" if name_or_path == "toy" else str(name_or_path))
    if quant is not None:
        lm.quantization = describe_quantization(lm, quant[0])
        lm.spec.notes.append(lm.quantization["summary"])  # inspect and the spec say it too
    probe_attention(lm)
    return lm


def resolve_path(name_or_path: str) -> str:
    """``"toy"`` / ``"toy-v1"`` → the bundled model's directory; anything else unchanged (a hub id or a path)."""
    if name_or_path not in ("toy", "toy-v1"):
        return str(name_or_path)
    if not (TOY_DIR / "config.json").exists():
        raise FileNotFoundError(f"the bundled toy model is missing from {TOY_DIR}; reinstall the package or "
                                f"train it with `python -m routerlens_interp.toy.pretrain --out {TOY_DIR}`")
    return str(TOY_DIR)


def _from_pretrained(path: str, kw: dict):
    """A causal LM; for MoE families that exist only inside a multimodal model, the image-text-to-text
    class (its language model is what the spec points at; text-only inputs never reach the other towers)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    try:
        return AutoModelForCausalLM.from_pretrained(path, **kw)
    except ValueError as err:
        if "Unrecognized configuration class" not in str(err):
            raise
        try:
            return AutoModelForImageTextToText.from_pretrained(path, **kw)
        except ValueError:
            raise err from None


@torch.no_grad()
def probe_attention(lm) -> None:
    """Find the layers whose attention module returns softmax probabilities ``[B, H, T, T]`` (rows sum to 1)
    on a probe batch; the others (linear attention, Mamba, convolutions, compressed keys) are recorded in
    ``spec.mixers`` and traced as absent. The probe runs with eager attention whatever the model runs."""
    from .hooks.attn_rows import implementation, use_implementation

    spec, hf = lm.spec, lm.hf
    if implementation(lm) != "eager":
        with use_implementation(lm, "eager"):
            return probe_attention(lm)
    ids = torch.arange(3, 11, device=lm.device)[None] % int(hf.get_input_embeddings().num_embeddings)
    seen: dict[int, str] = {}
    handles = []
    for l in spec.attention_layers:
        def hook(module, args, output, l=l):
            p = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            T = ids.shape[1]
            # rows sum to 1, or less where attention sinks take a share (bf16 rounds each probability)
            tol = 1e-3 if not isinstance(p, torch.Tensor) or p.dtype == torch.float32 else 2e-2
            if not (isinstance(p, torch.Tensor) and p.dim() == 4 and p.shape[-2:] == (T, T) and bool((p >= 0).all())
                    and bool((p.float().sum(-1) <= 1 + tol).all()) and bool((p.float().sum(-1) > 0).all())):
                shape = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
                seen[l] = f"{type(module).__name__} (no [B, H, T, T] softmax probabilities: {shape})"
        try:
            handles += [m.register_forward_hook(hook) for m in spec.attention_modules(hf, l)]
        except AttributeError:
            seen[l] = f"{type(spec.layers(hf)[l]).__name__} without a {spec.attn_attr} module"
    was = hf.training
    hf.eval()
    try:
        hf(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for h in handles:
            h.remove()
        hf.train(was)
    if seen:
        spec.mixers.update(seen)
        spec.attention_layers = [l for l in spec.attention_layers if l not in seen]


def from_hf(hf, tokenizer, name: str = "") -> MoEModel:
    """Wrap an already-loaded transformers model (eager or SDPA attention) into a :class:`MoEModel`."""
    lm = MoEModel(hf, tokenizer, name=name)
    probe_attention(lm)
    return lm
