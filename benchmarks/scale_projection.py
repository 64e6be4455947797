"""Project ``benchmarks/scale.py``'s measurements to the full models (16 and 48 layers) on one H100, bf16.

    python benchmarks/scale.py --json > scale.json && python benchmarks/scale_projection.py scale.json

Parameter counts come from the real configs (a model built on the meta device: no memory). Memory, as
``TrainConfig(precision="bf16")`` trains: every weight in bf16 (2 B), and each *trained* tensor also as a
float32 master (4 B, replacing its bf16 copy: the upcast is in place), a float32 gradient (4 B) and AdamW's
two moments (8 B): 16 B per trained parameter. Activations:
the measured ``ckpt`` activation memory per token and layer (OLMoE shape, float32 on CPU; used for
Qwen3 too) halved for bf16, times batch 8 × 300 tokens and the layer count (with gradient checkpointing: the measured ratio applied). Time: FFT's
FLOPs per token = 6 × parameters active per token (attention, router, top-k experts, LM head); at an
assumed model-FLOPs utilisation (MFU, default 10 % of the H100's 989 TFLOPS dense bf16: MoE steps at batch
8 × 300 tokens are launch- and routing-bound), RT and CEFT at the measured step ratios to FFT.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from scale import SHAPES  # noqa: E402

H100_BF16 = 989e12
GIB = 2**30


def counts(shape: str) -> dict:
    """Parameters of the full model: total, routers, one expert, active per token (embeddings excluded)."""
    import torch
    import transformers as tf

    kw = dict(SHAPES[shape])
    cls, layers = getattr(tf, kw.pop("cls")), kw.pop("full_layers")
    cfg = cls(**kw, num_hidden_layers=layers, tie_word_embeddings=False)
    with torch.device("meta"):
        hf = tf.AutoModelForCausalLM.from_config(cfg)
    total = router = experts = 0
    for name, p in hf.named_parameters():
        total += p.numel()
        if name.endswith("mlp.gate.weight"):
            router += p.numel()
        elif ".experts." in name:
            experts += p.numel()
    E, k, V, H = kw["num_experts"], kw["num_experts_per_tok"], kw["vocab_size"], kw["hidden_size"]
    per_expert = experts // (E * layers)
    embed = 2 * V * H
    active = total - embed - experts + k * per_expert * layers + V * H  # + the LM head's matmul
    return {"layers": layers, "total": total, "router": router, "per_expert": per_expert, "experts": experts,
            "active": active, "E": E}


def project(res: dict, mfu: float = 0.10, tokens: int = 300, batch: int = 8, n_ceft: int = 8) -> list[dict]:
    d = res["details"]
    c = d["ckpt"]
    act_tok_layer = c["plain"]["act"] / c["tokens"] / c.get("layers", d["layers"]) / 2  # bf16
    rows = []
    for shape in ("olmoe", "qwen3"):
        n = counts(shape)
        L = n["layers"]
        w = 2 * n["total"]
        trained = {"rt": n["router"], "ceft": n_ceft * n["per_expert"] * L, "fft": n["total"]}
        act = act_tok_layer * tokens * batch * L
        fft_s = 6 * n["active"] * tokens * 1000 / (mfu * H100_BF16)
        step = {"rt": res["rt_step_ratio"], "ceft": res["ceft_step_ratio"], "fft": 1.0}
        for m in ("rt", "ceft", "fft"):
            mem = w + 14 * trained[m] + act  # 16 B per trained parameter in place of its 2 B bf16 copy
            rows.append({"model": shape, "layers": L, "method": m, "trained_params": trained[m],
                         "mem_gib": mem / GIB, "mem_ckpt_gib": (w + 14 * trained[m] + act * res["ckpt_act_mem_ratio"]) / GIB,
                         "hours_per_1000": fft_s * step[m] / 3600, "params": n["total"], "active": n["active"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", help="file whose last line is scale.py's JSON")
    ap.add_argument("--mfu", type=float, default=0.10)
    a = ap.parse_args()
    res = json.loads(Path(a.results).read_text().strip().splitlines()[-1])
    print("| model | method | trained params | GPU memory, bf16 (GiB) | with checkpointing | h (min) / 1,000 ex., 1 epoch |")
    print("|---|---|---|---|---|---|")
    for r in project(res, a.mfu):
        print(f"| {r['model']} ({r['layers']} layers, {r['params'] / 1e9:.1f} B, {r['active'] / 1e9:.2f} B active) | "
              f"{r['method'].upper()} | {r['trained_params'] / 1e6:,.1f} M | {r['mem_gib']:.0f} | "
              f"{r['mem_ckpt_gib']:.0f} | {r['hours_per_1000']:.3f} ({60 * r['hours_per_1000']:.1f}) |")


if __name__ == "__main__":
    main()
