"""Operations per training step of RT, CEFT and FFT on the ``train_cost.py`` model (torch.profiler).

    python benchmarks/train_ops.py [--device cpu|cuda] [--methods fft,rt,ceft] [--top 15] [--json]

Profiles one optimizer step (the third; two are skipped as warm-up) of each method in this process and
counts: every ``aten::`` op, the top-level ones (not called from another aten op: what Python
dispatches), and on CUDA the GPU kernels and the host-device synchronisations
(``cudaStreamSynchronize`` / ``cudaDeviceSynchronize`` / ``cudaMemcpy*`` calls), and ``aten::item`` calls
(a sync when the tensor is on the GPU; on the CPU, ``_grouped_mm`` reads its offsets this way). Then it lists
the top-level ops whose count differs from FFT's. On a GPU, where a step of this small model is bound by
launches, kernels and syncs are the figures that explain step time; the CPU counts use AdamW's
per-tensor loop (torch uses ``foreach`` only on accelerators), so ``--foreach`` forces the GPU default.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy", "cudaMemcpyAsync")


def count_step(method: str, model_dir: str, device: str, foreach: bool) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    import routerlens_interp as rl
    from train_cost import N_SELECTED, examples

    lm = rl.load(model_dir, device=device)
    kw = dict(max_steps=4, batch_size=8, lr=5e-4, progress=False, checkpoint_every=0)
    fns = {"rt": rl.tune_router, "fft": rl.full_finetune,
           "ceft": lambda *a, **k: rl.ceft(*a, experts={l: list(range(N_SELECTED)) for l in lm.spec.moe_layers},
                                           **k)}
    res = {}

    def on_trace(p):
        top, every, kernels, items, syncs = collections.Counter(), 0, 0, 0, collections.Counter()
        for e in p.events():
            name = e.name
            if name.startswith("aten::"):
                every += 1
                par = e.cpu_parent
                while par is not None and not par.name.startswith("aten::"):
                    par = par.cpu_parent
                if par is None:
                    top[name] += 1
                items += name == "aten::item"
            elif name in SYNC_CALLS:
                syncs[name] += 1
            if e.device_type.name == "CUDA":
                kernels += 1
        res.update(top=top, all=every, kernels=kernels, items=items, syncs=dict(syncs))

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    adamw, clip = torch.optim.AdamW, torch.nn.utils.clip_grad_norm_
    if foreach:  # what torch picks on an accelerator, counted on the CPU
        torch.optim.AdamW = lambda *a, **k: adamw(*a, foreach=True, **k)
        torch.nn.utils.clip_grad_norm_ = lambda *a, **k: clip(*a, foreach=True, **k)
    try:
        with profile(activities=acts, schedule=schedule(wait=1, warmup=1, active=1, repeat=1),
                     on_trace_ready=on_trace) as prof:
            fns[method](lm, examples(), None, callback=lambda info: prof.step(), **kw)
    finally:
        torch.optim.AdamW, torch.nn.utils.clip_grad_norm_ = adamw, clip
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default="fft,rt,ceft")
    ap.add_argument("--foreach", action="store_true", help="foreach AdamW and clipping (the GPU default)")
    ap.add_argument("--top", type=int, default=15, help="differences from FFT listed per method")
    ap.add_argument("--json", action="store_true", help="print only the JSON result line")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    from train_cost import build_model

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        build_model(Path(tmp))
        counts = {m: count_step(m, tmp, args.device, args.foreach) for m in args.methods.split(",")}
    for m, c in counts.items():
        out[m] = {"top_level_ops": sum(c["top"].values()), "all_aten_ops": c["all"], "kernels": c["kernels"],
                  "item_calls": c["items"], "syncs": c["syncs"]}
        if not args.json:
            print(f"{m:5} top-level aten ops {out[m]['top_level_ops']:6d}   all aten ops {c['all']:6d}   "
                  f"kernels {c['kernels']:6d}   item {c['items']:5d}   syncs {c['syncs']}")
    if "fft" in counts and not args.json:
        ref = counts["fft"]["top"]
        for m, c in counts.items():
            if m == "fft":
                continue
            diff = {n: c["top"].get(n, 0) - ref.get(n, 0) for n in set(c["top"]) | set(ref)}
            diff = sorted(((d, n) for n, d in diff.items() if d), key=lambda x: (-abs(x[0]), x[1]))[:args.top]
            print(f"{m} - fft, top-level: " + ", ".join(f"{n.removeprefix('aten::')} {d:+d}" for d, n in diff))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
