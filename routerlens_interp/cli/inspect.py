"""``routerlens inspect --model M [--config-only]``: is this model supported, and how.

One screen (or one JSON object with ``--json``): family, MoE layers, experts, top-k, routing rule, experts
kind, attention and logit-lens availability, the hook points, and which self-checks pass. ``--config-only``
reads config.json alone and builds the model on the meta device (no weights downloaded, no memory used):
the self-checks that need weights then say "not run (config only)". Registered by :func:`add_parser` from
``cli.build_parser``.
"""
from __future__ import annotations

import json
import sys

NOT_RUN = "not run (config only)"


def ranges(layers) -> str:
    """``[0, 1, 2, 5, 7, 8]`` → ``"0-2, 5, 7-8"`` (``"none"`` when empty)."""
    out, run = [], []
    for l in sorted(layers):
        if run and l == run[-1] + 1:
            run.append(l)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [l]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out) or "none"


def hook_points(spec) -> dict[str, str]:
    """Hook-point pattern → the layers that have it (``lm.hooks.names()`` lists them one by one)."""
    moe, att = ranges(spec.moe_layers), ranges(spec.attention_layers)
    return {"blocks.L.router.hook_logits": moe, "blocks.L.router.hook_choice": moe,
            "blocks.L.router.hook_select": moe, "blocks.L.experts.hook_route": moe,
            "blocks.L.attn.hook_mask": att, "blocks.L.attn.hook_pattern": att,
            "blocks.L.hook_resid_post": ranges(range(spec.n_layers))}


def describe(spec, hf, checks: dict, name: str) -> dict:
    """The inspect record of a model (``hf`` real or on the meta device)."""
    from ..hooks.devices import devices

    n_params = sum(p.numel() for p in hf.parameters())
    dense = [l for l in range(spec.n_layers) if l not in spec.moe_layers]
    kind = getattr(spec, "experts_kind", None) or spec.experts_io
    mod = type(hf).__module__
    impl = "native transformers" if mod.startswith("transformers.") else f"remote code ({mod})"
    rec = {"model": name, "family": spec.family, "class": type(hf).__name__, "implementation": impl,
           "n_layers": spec.n_layers,
           "moe_layers": list(spec.moe_layers), "dense_layers": dense, "n_experts": spec.n_experts,
           "top_k": spec.top_k, "routing": spec.routing, "routing_params": dict(spec.routing_params),
           "experts_kind": kind, "experts_layout": spec.experts_layout, "identity_experts": spec.identity_experts,
           "shared_experts": spec.shared_experts_attr,
           "attention_layers": list(spec.attention_layers), "mixers": {str(k): v for k, v in spec.mixers.items()},
           "lens": "available" if spec.lens is None and checks.get("lens") == "pass" else spec.lens or checks.get("lens"),
           "hook_points": hook_points(spec), "parameters": n_params,
           "bf16_gib": round(n_params * 2 / 2 ** 30, 2), "checks": checks, "notes": list(spec.notes)}
    dts = sorted({str(p.dtype) for p in hf.parameters()})
    devs = [str(d) for d in devices(hf)]
    if devs != ["meta"]:
        rec["dtype"], rec["devices"] = dts[0] if len(dts) == 1 else dts, devs
    return rec


def run_checks(lm) -> dict:
    """The self-checks of a loaded model: ``{"reroute", "lens", "attention_rows"}`` → ``"pass"`` or the reason."""
    from ..hooks import check_lens, check_reroute
    from ..hooks.attn_rows import check_rows, implementation

    refused = check_reroute(lm)
    n = len(lm.spec.moe_layers)
    if not refused:
        reroute = "pass"
    else:
        why = next(iter(refused.values()))
        reroute = f"refused on layers {ranges(refused)} of {n} ({why}); mode='zero' masks still work"
    lens = check_lens(lm)
    impl = implementation(lm)
    if not lm.spec.attention_layers:
        rows = "no softmax attention layers"
    elif impl == "sdpa":
        rows = check_rows(lm) or "pass"
    elif impl == "eager":
        rows = "pass (eager: the module's own probabilities)"
    else:
        rows = f"attention runs {impl!r}: probabilities need eager or sdpa"
    return {"reroute": reroute, "lens": lens or "pass", "attention_rows": rows}


def inspect_config_only(args) -> dict:
    from pathlib import Path

    from ..arch import inspect_model
    from .checks import first_line
    from ..errors import UserError
    from ..arch.loading import build_on_meta, load_config
    from ..model import resolve_path

    try:
        cfg = load_config(resolve_path(args.model), args.trust_remote_code, args.revision)
    except (OSError, ValueError) as err:
        if isinstance(err, ValueError) and "Unrecognized model" not in str(err):
            raise
        where = ("a directory without a config.json naming a model_type" if Path(args.model).expanduser().is_dir() else
                 "not a local directory and not a model on the hub (or no network)")
        raise UserError(f"--model {args.model!r}: {where}: {first_line(err)}; give a directory written by "
                        "save_pretrained or a hub id such as allenai/OLMoE-1B-7B-0924-Instruct") from err
    hf = build_on_meta(cfg, args.trust_remote_code)
    spec = inspect_model(hf)
    checks = {"reroute": NOT_RUN, "lens": spec.lens or NOT_RUN, "attention_rows": NOT_RUN,
              "attention_probe": NOT_RUN}
    return describe(spec, hf, checks, args.model)


def human(rec: dict) -> str:
    rp = ", ".join(f"{k}={v}" for k, v in rec["routing_params"].items())
    mix = ", ".join(f"{l}: {k}" for l, k in rec["mixers"].items()) or "none"
    checks = "  ".join(f"{k}: {v}" for k, v in rec["checks"].items())
    groups: dict[str, list[str]] = {}  # layers → the points they have (one entry per layer set on screen)
    for k, v in rec["hook_points"].items():
        groups.setdefault(v, []).append(k.removeprefix("blocks.L."))
    hp = "; ".join(f"blocks.L.{{{', '.join(ks)}}} for L in [{v}]" if len(ks) > 1 else f"blocks.L.{ks[0]} for L in [{v}]"
                   for v, ks in groups.items())
    lines = [f"model       {rec['model']}  ({rec['class']}, {rec['implementation']})",
             f"family      {rec['family']}: {rec['n_layers']} layers, MoE layers {ranges(rec['moe_layers'])}, "
             f"dense {ranges(rec['dense_layers'])}",
             f"experts     {rec['n_experts']} routed per MoE layer, top-{rec['top_k']}, kind {rec['experts_kind']}"
             + (f" ({rec['experts_layout']} [E·I, H] matrices)" if rec.get("experts_layout") == "flat" else "")
             + (f" (ids {rec['n_experts'] - rec['identity_experts']}..{rec['n_experts'] - 1} zero-compute identity)"
                if rec.get("identity_experts") else "") + f", shared {rec['shared_experts'] or 'none'}",
             f"routing     {rec['routing']}" + (f" ({rp})" if rp else ""),
             f"attention   softmax on layers {ranges(rec['attention_layers'])}; other mixers: {mix}",
             f"lens        {rec['lens']}",
             f"parameters  {rec['parameters']:,} ({rec['bf16_gib']} GiB in bf16)"
             + (f"; loaded as {rec['dtype']} on {', '.join(rec['devices'])}" if "dtype" in rec else ""),
             f"hook points {hp}",
             f"checks      {checks}"]
    if rec.get("quantization"):
        lines.append(f"quantized   {rec['quantization']}")
    lines += [f"note        {n}" for n in rec["notes"]]
    return "\n".join(lines)


def cmd_inspect(args) -> None:
    if args.config_only:
        if args.device is not None or args.device_map is not None or args.dtype is not None:
            print(f"routerlens inspect: note: --config-only loads no weights; --device/--device-map/--dtype are "
                  "ignored", file=sys.stderr)
        rec = inspect_config_only(args)
    else:
        from .common import _load
        from ..hooks.attn_rows import implementation

        lm = _load(args)
        checks = run_checks(lm)
        checks["attention_probe"] = (f"pass ({len(lm.spec.attention_layers)} softmax layers; run with "
                                     f"{implementation(lm)})")
        rec = describe(lm.spec, lm.hf, checks, args.model)
        if lm.quantization:
            rec["quantization"] = lm.quantization["summary"]
    print(json.dumps(rec) if args.json else human(rec))


def add_parser(sub, common) -> None:
    """Add ``inspect`` to the ``routerlens`` subparsers (``common`` adds --model, loading options, --json)."""
    p = sub.add_parser("inspect", help="is this model supported, and how (spec, hook points, self-checks)")
    common(p, data=False)
    p.add_argument("--config-only", action="store_true",
                   help="read config.json only and build the model on the meta device (no weights downloaded); "
                        "self-checks that need weights are not run")
    p.set_defaults(func=cmd_inspect)
