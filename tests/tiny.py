"""Tiny models of every supported family, built from configs (no hub), saved and reloaded."""
from __future__ import annotations

import torch
import transformers as tf

COMMON = dict(vocab_size=320, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, eos_token_id=1, bos_token_id=2,
              tie_word_embeddings=False)


def configs() -> dict[str, tf.PretrainedConfig]:
    """Family name → a tiny config with 8 routed experts, top-2."""
    return {
        "olmoe": tf.OlmoeConfig(**COMMON, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False),
        "mixtral": tf.MixtralConfig(**COMMON, num_local_experts=8, num_experts_per_tok=2),
        "qwen2_moe": tf.Qwen2MoeConfig(**COMMON, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=24,
                                       shared_expert_intermediate_size=32, norm_topk_prob=True,
                                       mlp_only_layers=[1]),
        "qwen3_moe": tf.Qwen3MoeConfig(**COMMON, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=24,
                                       norm_topk_prob=True, head_dim=8),
        "deepseek_v2": tf.DeepseekV2Config(**{**COMMON, "num_key_value_heads": 4}, n_routed_experts=8, num_experts_per_tok=2,
                                           moe_intermediate_size=24, n_shared_experts=1, first_k_dense_replace=1,
                                           kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=4,
                                           qk_nope_head_dim=4, v_head_dim=8, topk_method="group_limited_greedy",
                                           n_group=4, topk_group=2, routed_scaling_factor=1.5),
        "deepseek_v3": tf.DeepseekV3Config(**{**COMMON, "num_key_value_heads": 4}, n_routed_experts=8, num_experts_per_tok=2,
                                           moe_intermediate_size=24, n_shared_experts=1, first_k_dense_replace=1,
                                           kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=4,
                                           qk_nope_head_dim=4, v_head_dim=8, n_group=4, topk_group=2,
                                           routed_scaling_factor=2.5, norm_topk_prob=True),
        "phimoe": tf.PhimoeConfig(**COMMON, num_local_experts=8, num_experts_per_tok=2),
        "granitemoe": tf.GraniteMoeConfig(**COMMON, num_local_experts=8, num_experts_per_tok=2),
    }


def build(family: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised tiny causal LM of ``family`` (eager attention, eval mode)."""
    torch.manual_seed(seed)
    cfg = configs()[family]
    cfg._attn_implementation = "eager"
    model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():  # routers start at zero in some families: give them something to route by
        for name, p in model.named_parameters():
            if name.endswith("gate.weight") or name.endswith("router.weight") or "e_score_correction" in name:
                p.normal_(0, 0.5)
        for name, b in model.named_buffers():
            if "e_score_correction_bias" in name:
                b.normal_(0, 0.1)
    return model.eval()


CORPUS = [
    "Based on the context below, output the correct answer for the following question.",
    "Context: Alice Smith was born in 1950 in Paris. She works as a baker.",
    "Question: Where was Alice Smith born? Answer: Paris",
    "Bob Jones lives in Rome and is a painter born in 1972. When was Bob Jones born?",
]


def tokenizer():
    """A byte-level BPE tokenizer (vocab 300: any text encodes) with pad=0, eos=1, bos=2 like the configs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>", "<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")


def save(family: str, path, seed: int = 0) -> str:
    """Build a tiny ``family`` model and save model + tokenizer with ``save_pretrained`` into ``path``."""
    model = build(family, seed)
    model.save_pretrained(path)
    tokenizer().save_pretrained(path)
    return str(path)
