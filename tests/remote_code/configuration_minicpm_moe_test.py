"""Configuration of the tiny MiniCPM-MoE test model (``modeling_minicpm_moe_test.py``).

Written for the routerlens tests. It mirrors the public MiniCPM-MoE-8x2B remote-code config
(``model_type = "minicpm"``, ``num_experts``, ``num_experts_per_tok``, ``scale_emb``, ``dim_model_base``,
``scale_depth``); the attention settings are Llama's, which the test model reuses.
"""
from transformers import LlamaConfig


class MiniCPMMoETestConfig(LlamaConfig):
    model_type = "minicpm"

    def __init__(self, num_experts=8, num_experts_per_tok=2, scale_emb=1.0, dim_model_base=None,
                 scale_depth=1.0, **kwargs):
        self.num_experts = num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.scale_emb = scale_emb
        self.dim_model_base = dim_model_base
        self.scale_depth = scale_depth
        super().__init__(**kwargs)
