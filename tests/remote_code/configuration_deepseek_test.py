"""Configurations of the tiny DeepSeek-V2 / -V3 remote-code test models (``modeling_deepseek_test.py``).

Written for the routerlens tests. Its MoE fields mirror the public DeepSeek-V2 remote-code config
(``configuration_deepseek.py`` on the hub: ``n_routed_experts``, ``n_shared_experts``, ``moe_intermediate_size``,
``first_k_dense_replace``, ``topk_method``, ``n_group``, ``topk_group``, ``routed_scaling_factor``,
``norm_topk_prob``, ``scoring_func``, ``aux_loss_alpha``, ``seq_aux``); attention settings are Llama's.
"""
from transformers import LlamaConfig


class DeepseekV2TestConfig(LlamaConfig):
    model_type = "deepseek_v2"

    def __init__(self, n_routed_experts=16, n_shared_experts=1, moe_intermediate_size=12, num_experts_per_tok=4,
                 first_k_dense_replace=1, moe_layer_freq=1, topk_method="greedy", n_group=1, topk_group=1,
                 routed_scaling_factor=1.0, norm_topk_prob=False, scoring_func="softmax", aux_loss_alpha=0.001,
                 seq_aux=True, **kwargs):
        self.n_routed_experts = n_routed_experts
        self.n_shared_experts = n_shared_experts
        self.moe_intermediate_size = moe_intermediate_size
        self.num_experts_per_tok = num_experts_per_tok
        self.first_k_dense_replace = first_k_dense_replace
        self.moe_layer_freq = moe_layer_freq
        self.topk_method = topk_method
        self.n_group = n_group
        self.topk_group = topk_group
        self.routed_scaling_factor = routed_scaling_factor
        self.norm_topk_prob = norm_topk_prob
        self.scoring_func = scoring_func
        self.aux_loss_alpha = aux_loss_alpha
        self.seq_aux = seq_aux
        super().__init__(**kwargs)


class DeepseekV3TestConfig(DeepseekV2TestConfig):
    """DeepSeek-V3's remote config adds sigmoid scoring with a correction bias (``topk_method="noaux_tc"``)."""

    model_type = "deepseek_v3"
