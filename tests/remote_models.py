"""Tiny remote-code MoE models (``tests/remote_code/``) saved as hub checkpoints look: ``config.json`` with an
``auto_map``, the modeling and configuration files next to the weights, and the tiny tokenizer of ``tiny.py``.
Loading them needs ``trust_remote_code=True``, exactly like MiniCPM-MoE-8x2B or DeepSeek-V2 on the hub."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch

SRC = Path(__file__).parent / "remote_code"
TOK = dict(vocab_size=320, pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=False)
BASE = dict(**TOK, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=128)

# name → (config module, config class, modeling module, model class, config values)
MODELS = {
    "minicpm_moe": ("configuration_minicpm_moe_test", "MiniCPMMoETestConfig", "modeling_minicpm_moe_test",
                    "MiniCPMForCausalLM",
                    dict(BASE, model_type="minicpm", intermediate_size=12, num_experts=8, num_experts_per_tok=2,
                         scale_emb=1.0, dim_model_base=8, scale_depth=1.0)),
    "deepseek_v2_remote": ("configuration_deepseek_test", "DeepseekV2TestConfig", "modeling_deepseek_test",
                           "DeepseekV2ForCausalLM",
                           dict(BASE, model_type="deepseek_v2", intermediate_size=40, moe_intermediate_size=12,
                                n_routed_experts=16, num_experts_per_tok=4, n_shared_experts=1,
                                first_k_dense_replace=1, moe_layer_freq=1, topk_method="group_limited_greedy",
                                n_group=4, topk_group=2, routed_scaling_factor=1.5, norm_topk_prob=False,
                                scoring_func="softmax", aux_loss_alpha=0.001, seq_aux=True)),
    "deepseek_v3_remote": ("configuration_deepseek_test", "DeepseekV3TestConfig", "modeling_deepseek_test",
                           "DeepseekV3ForCausalLM",
                           dict(BASE, model_type="deepseek_v3", intermediate_size=40, moe_intermediate_size=12,
                                n_routed_experts=16, num_experts_per_tok=4, n_shared_experts=1,
                                first_k_dense_replace=1, moe_layer_freq=1, topk_method="noaux_tc",
                                n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True,
                                scoring_func="sigmoid", aux_loss_alpha=0.0, seq_aux=True)),
}


def save(name: str, path, seed: int = 0) -> str:
    """Write remote-code model ``name`` (random weights, routers ~ N(0, 1)) into ``path`` → ``str(path)``."""
    import tiny
    from families import sharpen
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg_mod, cfg_cls, mod_mod, mod_cls, values = MODELS[name]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for f in (cfg_mod, mod_mod):
        shutil.copy(SRC / f"{f}.py", path / f"{f}.py")
    values = dict(values, architectures=[mod_cls],
                  auto_map={"AutoConfig": f"{cfg_mod}.{cfg_cls}", "AutoModelForCausalLM": f"{mod_mod}.{mod_cls}"})
    (path / "config.json").write_text(json.dumps(values, indent=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = AutoConfig.from_pretrained(path, trust_remote_code=True)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=True, attn_implementation="eager")
        sharpen(model, seed)
        model.save_pretrained(path)
    tiny.tokenizer().save_pretrained(path)
    return str(path)
