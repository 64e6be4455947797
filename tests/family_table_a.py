"""Family table A: tiny configs of 33 MoE families of transformers 5.24 (see ``families.py``).

Every config is a few hundred thousand parameters at most: vocab 320, hidden 32, 2-3 decoder layers, 8 routed
experts (top-2) unless the family needs otherwise. Where a family mixes dense and sparse layers, one dense layer is
kept (``dense_layers``); where it mixes attention kinds (linear attention, Mamba, sliding windows, compressed
attention...), each kind appears at least once. ``routing`` and ``notes`` come from reading each family's router
code in transformers 5.24.
"""
from __future__ import annotations

import transformers as tf

from families import FamilyCase

# Shared by (almost) every text config.
TOK = dict(vocab_size=320, pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=False)
BASE = dict(**TOK, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=128)
# Gated-delta-net (linear attention) sizes of the Qwen3-Next / Qwen3.5 / Qwen4-Exp / Lara families.
GDN = dict(linear_conv_kernel_dim=4, linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
           linear_num_value_heads=4)
# Granite multipliers, all != 1 so a re-implementation that forgets one is caught.
GRANITE = dict(embedding_multiplier=2.0, logits_scaling=2.5, residual_multiplier=0.5, attention_multiplier=0.125)


def _pixtral(hidden: int = 16) -> tf.PixtralVisionConfig:
    """The tiniest Pixtral vision tower (Mistral 3 / Mistral Large 4 multimodal models)."""
    return tf.PixtralVisionConfig(hidden_size=hidden, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  head_dim=hidden // 2, image_size=32, patch_size=8, hidden_act="silu")


def olmoe():
    return tf.OlmoeConfig(**BASE, intermediate_size=16, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False)


def mixtral():
    return tf.MixtralConfig(**BASE, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2)


def qwen2_moe():
    return tf.Qwen2MoeConfig(**BASE, intermediate_size=48, moe_intermediate_size=16, shared_expert_intermediate_size=32,
                             num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[0])


def qwen3_moe():
    return tf.Qwen3MoeConfig(**BASE, head_dim=8, intermediate_size=48, moe_intermediate_size=16, num_experts=8,
                             num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[0])


def deepseek_v2():
    return tf.DeepseekV2Config(**{**BASE, "num_key_value_heads": 4}, intermediate_size=48, moe_intermediate_size=16,
                               n_routed_experts=16, num_experts_per_tok=4, n_shared_experts=1, first_k_dense_replace=1,
                               kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
                               topk_method="group_limited_greedy", n_group=4, topk_group=2, routed_scaling_factor=1.5)


def dbrx():
    return tf.DbrxConfig(**TOK, d_model=32, n_heads=4, n_layers=3, max_seq_len=128,
                         attn_config={"kv_n_heads": 2, "clip_qkv": 8.0, "rope_theta": 10000.0},
                         ffn_config={"ffn_hidden_size": 16, "moe_num_experts": 8, "moe_top_k": 2,
                                     "moe_normalize_expert_weights": 1.0})


def flex_olmo():
    return tf.FlexOlmoConfig(**BASE, intermediate_size=16, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False)


def hunyuan_v1_moe():
    return tf.HunYuanMoEV1Config(**BASE, head_dim=8, intermediate_size=16, num_experts=8, moe_topk=2)


def jamba():
    # layers: [mamba, attention, mamba]; experts on even layers (the Mamba ones), layer 1 dense.
    return tf.JambaConfig(**BASE, intermediate_size=16, num_experts=8, num_experts_per_tok=2,
                          attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=0,
                          use_mamba_kernels=False, mamba_d_state=4, mamba_d_conv=4, mamba_expand=2)


def lara_mini():
    return tf.LaraMiniConfig(**BASE, **GDN, head_dim=8, moe_intermediate_size=16, shared_expert_intermediate_size=16,
                             num_experts=8, num_experts_per_tok=2, sliding_window=4,
                             layer_types=["linear_attention", "sliding_attention", "full_attention"])


def mellum():
    return tf.MellumConfig(**BASE, head_dim=8, intermediate_size=48, moe_intermediate_size=16, num_experts=8,
                           num_experts_per_tok=2, sliding_window=4,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                           mlp_layer_types=["dense", "sparse", "sparse"])


def minimax():
    return tf.MiniMaxConfig(**BASE, head_dim=8, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2,
                            block_size=4, layer_types=["full_attention", "linear_attention", "full_attention"])


def qwen3_5_moe_text():
    return tf.Qwen3_5MoeTextConfig(**BASE, **GDN, head_dim=8, moe_intermediate_size=16,
                                   shared_expert_intermediate_size=16, num_experts=8, num_experts_per_tok=2,
                                   layer_types=["linear_attention", "full_attention", "linear_attention"])


def qwen3_next():
    return tf.Qwen3NextConfig(**BASE, **GDN, head_dim=8, intermediate_size=48, moe_intermediate_size=16,
                              shared_expert_intermediate_size=16, num_experts=8, num_experts_per_tok=2,
                              mlp_only_layers=[0],
                              layer_types=["linear_attention", "full_attention", "linear_attention"])


def qwen4_exp_text():
    return tf.Qwen4ExpTextConfig(**BASE, **GDN, head_dim=8, moe_intermediate_size=16,
                                 shared_expert_intermediate_size=16, num_experts=8, num_experts_per_tok=2,
                                 layer_types=["linear_attention", "indexed_attention", "linear_attention"],
                                 hc_count=2, hc_lowrank=8, indexer_n_heads=2, indexer_kv_heads=1,
                                 indexer_head_dim=8, indexer_budget=4, indexer_compress_ratio=2)


def qwen3_vl_moe():
    text = dict(**BASE, head_dim=8, intermediate_size=48, moe_intermediate_size=16, num_experts=8,
                num_experts_per_tok=2, mlp_only_layers=[0],
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                 "mrope_interleaved": True})
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=4, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=32, num_position_embeddings=16, deepstack_visual_indexes=[0])
    return tf.Qwen3VLMoeConfig(text_config=text, vision_config=vision, image_token_id=310, video_token_id=311,
                               vision_start_token_id=312, vision_end_token_id=313, tie_word_embeddings=False)


def granitemoe():
    return tf.GraniteMoeConfig(**BASE, **GRANITE, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2)


def granitemoe_swa():
    return tf.GraniteMoeSWAConfig(**BASE, **GRANITE, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2,
                                  shared_intermediate_size=24, sliding_window=4,
                                  layer_types=["full_attention", "sliding_attention", "sliding_attention"])


def granitemoehybrid():
    return tf.GraniteMoeHybridConfig(**BASE, **GRANITE, intermediate_size=16, num_local_experts=8,
                                     num_experts_per_tok=2, shared_intermediate_size=24,
                                     layer_types=["linear_attention", "full_attention", "linear_attention"],
                                     mamba_n_heads=8, mamba_n_groups=1, mamba_d_state=8, mamba_d_conv=4,
                                     mamba_expand=2, mamba_chunk_size=4)


def granitemoeshared():
    return tf.GraniteMoeSharedConfig(**BASE, **GRANITE, intermediate_size=16, num_local_experts=8,
                                     num_experts_per_tok=2, shared_intermediate_size=24)


def aria_text():
    return tf.AriaTextConfig(**BASE, intermediate_size=16, moe_num_experts=8, moe_topk=2, moe_num_shared_experts=1)


def cohere2_moe():
    return tf.Cohere2MoeConfig(**BASE, head_dim=8, intermediate_size=16, prefix_dense_intermediate_size=48,
                               num_experts=8, num_experts_per_tok=2, num_shared_experts=1, sliding_window=4,
                               layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                               mlp_layer_types=["dense", "sparse", "sparse"])


def gpt_oss():
    return tf.GptOssConfig(**BASE, head_dim=8, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2,
                           sliding_window=4, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                           rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 4.0,
                                            "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                                            "original_max_position_embeddings": 32})


def jetmoe():
    # num_attention_heads = num_key_value_heads * num_experts_per_tok = 4 (set by the config itself).
    return tf.JetMoeConfig(**TOK, hidden_size=32, num_hidden_layers=3, num_key_value_heads=2, kv_channels=8,
                           max_position_embeddings=128, intermediate_size=16, num_local_experts=8,
                           num_experts_per_tok=2)


def ernie4_5_moe():
    return tf.Ernie4_5_MoeConfig(**BASE, intermediate_size=48, moe_intermediate_size=16, moe_num_experts=8, moe_k=2,
                                 moe_num_shared_experts=1, moe_layer_start_index=1)


def longcat_flash():
    # 2 logical decoder layers, each with 2 MLA attention sublayers, 2 dense MLPs and 1 shortcut MoE.
    return tf.LongcatFlashConfig(**{k: v for k, v in BASE.items() if k not in ("num_hidden_layers",
                                                                                "num_key_value_heads")},
                                 num_layers=2, num_key_value_heads=4, ffn_hidden_size=48, expert_ffn_hidden_size=16,
                                 q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=4, qk_rope_head_dim=4, head_dim=4,
                                 v_head_dim=8, n_routed_experts=8, zero_expert_num=2, moe_topk=2,
                                 routed_scaling_factor=2.0)


def mistral4():
    text = tf.Mistral4Config(**{**BASE, "num_key_value_heads": 4}, intermediate_size=48, moe_intermediate_size=16,
                             n_routed_experts=16, num_experts_per_tok=4, n_shared_experts=1, first_k_dense_replace=1,
                             n_group=4, topk_group=2, routed_scaling_factor=1.5, kv_lora_rank=16, q_lora_rank=16,
                             qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
                             rope_parameters={"type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                              "original_max_position_embeddings": 32, "max_position_embeddings": 128,
                                              "beta_fast": 32.0, "beta_slow": 1.0, "mscale_all_dim": 1.0,
                                              "mscale": 1.0, "llama_4_scaling_beta": 0.1})
    return tf.Mistral3Config(text_config=text, vision_config=_pixtral(), image_token_index=310,
                             spatial_merge_size=2, tie_word_embeddings=False)


def mistral_large4():
    text = tf.MistralLarge4TextConfig(**{**BASE, "num_key_value_heads": 4}, intermediate_size=48,
                                      moe_intermediate_size=16, n_routed_experts=16, num_experts_per_tok=4,
                                      n_shared_experts=1, n_group=4, topk_group=2, routed_scaling_factor=1.5,
                                      kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
                                      first_k_dense_replace=1, index_topk=4, index_head_dim=8, index_n_heads=2,
                                      indexer_types=["full", "full", "shared"], no_rope_layers=[1, 1, 0],
                                      rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                       "original_max_position_embeddings": 32, "beta_fast": 32.0,
                                                       "beta_slow": 1.0, "attention_factor": 1.0})
    return tf.MistralLarge4Config(text_config=text, vision_config=_pixtral(), image_token_index=310,
                                  spatial_merge_size=2, tie_word_embeddings=False)


def phimoe():
    return tf.PhimoeConfig(**BASE, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2)


def flint():
    return tf.FlintConfig(**BASE, head_dim=8, intermediate_size=48, moe_intermediate_size=16,
                          shared_expert_intermediate_size=16, num_experts=8, num_experts_per_tok=2, mlp_only_layers=[0],
                          sliding_window=4, layer_types=["full_attention", "sliding_attention", "full_attention"])


def gemma4_text():
    return tf.Gemma4TextConfig(**BASE, head_dim=8, global_head_dim=16, intermediate_size=32, enable_moe_block=True,
                               num_experts=8, top_k_experts=2, moe_intermediate_size=16, sliding_window=4,
                               hidden_size_per_layer_input=0, final_logit_softcapping=30.0,
                               layer_types=["sliding_attention", "sliding_attention", "full_attention"])


def llama4_text():
    return tf.Llama4TextConfig(**BASE, head_dim=8, intermediate_size=16, intermediate_size_mlp=48,
                               num_local_experts=8, num_experts_per_tok=2, moe_layers=[1, 2],
                               no_rope_layer_interval=3, attention_chunk_size=4, floor_scale=8)


def deepseek_v4():
    return tf.DeepseekV4Config(**{**BASE, "num_key_value_heads": 1}, head_dim=16, partial_rotary_factor=0.25,
                               q_lora_rank=16, moe_intermediate_size=16, n_routed_experts=8, num_experts_per_tok=2,
                               n_shared_experts=1, routed_scaling_factor=1.5, hc_mult=2, hc_sinkhorn_iters=4,
                               sliding_window=4, o_groups=2, o_lora_rank=8, index_n_heads=2, index_head_dim=8,
                               index_topk=2,
                               compress_rates={"compressed_sparse_attention": 2, "heavily_compressed_attention": 4},
                               layer_types=["sliding_attention", "compressed_sparse_attention",
                                            "heavily_compressed_attention"],
                               mlp_layer_types=["hash_moe", "moe", "moe"])


CASES: list[FamilyCase] = [
    FamilyCase(
        "olmoe", olmoe, "softmax_topk", 8, 2, model_class="OlmoeForCausalLM",
        notes="mlp.gate (OlmoeTopKRouter: F.linear on self.weight, no bias) -> (logits, w, idx), renorm iff "
              "norm_topk_prob; mlp.experts gate_up_proj [E,2I,H] / down_proj [E,H,I]; q_norm/k_norm over the whole "
              "projection; final model.norm"),
    FamilyCase(
        "mixtral", mixtral, "softmax_topk", 8, 2, model_class="MixtralForCausalLM",
        notes="mlp.gate (F.linear on self.weight) -> (logits, w, idx), always renormalised; training-only input "
              "jitter (router_jitter_noise) in the MoE block; final model.norm"),
    FamilyCase(
        "qwen2_moe", qwen2_moe, "softmax_topk", 8, 2, [0], model_class="Qwen2MoeForCausalLM",
        notes="mlp.gate F.linear on self.weight, renorm iff norm_topk_prob; mlp.shared_expert scaled by "
              "sigmoid(mlp.shared_expert_gate) added; dense layers (mlp_only_layers / decoder_sparse_step) hold a "
              "plain Qwen2MoeMLP as mlp"),
    FamilyCase(
        "qwen3_moe", qwen3_moe, "softmax_topk", 8, 2, [0], model_class="Qwen3MoeForCausalLM",
        notes="mlp.gate F.linear on self.weight, renorm iff norm_topk_prob; no shared expert; per-head q_norm/k_norm; "
              "dense layers via mlp_only_layers"),
    FamilyCase(
        "deepseek_v2", deepseek_v2, "softmax_group", 16, 4, [0], model_class="DeepseekV2ForCausalLM",
        notes="mlp.gate (DeepseekV2TopkRouter) takes [B,S,H], fp32 F.linear on self.weight, softmax; "
              "topk_method=group_limited_greedy (group score = max prob in group, keep topk_group groups) else greedy; "
              "weights NOT renormalised (norm_topk_prob unused), x routed_scaling_factor; shared_experts on the same "
              "input; MLA attention; first_k_dense_replace dense layers"),
    FamilyCase(
        "dbrx", dbrx, "softmax_topk", 8, 2, model_class="DbrxForCausalLM",
        notes="layers at transformer.blocks; router ffn.router returns logits only (nested Linear ffn.router.layer); "
              "top-k in DbrxFFN.route_tokens_to_experts (softmax, topk, p-norm renorm with "
              "moe_normalize_expert_weights=1 => L1); ffn.experts gets 3-D hidden [B,S,H] and flat "
              "mlp.w1/v1/w2 [E*I,H]; attention norm_attn_norm.attn (fused Wqkv, clip_qkv); LayerNorm final "
              "transformer.norm_f; transformers bug: default attn_config lacks rope_theta (AttributeError), so it "
              "is given in attn_config as in hub configs"),
    FamilyCase(
        "flex_olmo", flex_olmo, "softmax_topk", 8, 2, model_class="FlexOlmoForCausalLM",
        notes="router as OLMoE (mlp.gate, F.linear on self.weight); post-norm layer: no input_layernorm, attention and "
              "MoE read the raw residual and post_attention_layernorm / post_feedforward_layernorm normalise their "
              "outputs"),
    FamilyCase(
        "hunyuan_v1_moe", hunyuan_v1_moe, "softmax_topk", 8, 2, model_class="HunYuanMoEV1ForCausalLM",
        notes="mlp.gate (HunYuanMoEV1Gate) logits from nested fp32 Linear mlp.gate.wg; softmax, topk, always "
              "renormalised; mlp.shared_mlp always added; num_experts / moe_topk may be per-layer lists; attention "
              "query_layernorm / key_layernorm"),
    FamilyCase(
        "jamba", jamba, "softmax_topk", 8, 2, [1], model_class="JambaForCausalLM",
        notes="JambaMambaDecoderLayer (mixer attr mamba, returns a tensor) / JambaAttentionDecoderLayer (self_attn); "
              "FFN attr feed_forward (JambaSparseMoeBlock, router feed_forward.router F.linear on self.weight, "
              "weights NOT renormalised) or JambaMLP; final norm model.final_layernorm; no rotary embeddings"),
    FamilyCase(
        "lara_mini", lara_mini, "softmax_topk", 8, 2, model_class="LaraMiniForCausalLM",
        notes="layer_types: linear_attention (attr linear_attn, gated delta net, returns a tensor), sliding_attention "
              "and full_attention (attr self_attn; full layers get no RoPE); mlp.gate fp32 softmax-topk; ungated "
              "mlp.shared_expert always added"),
    FamilyCase(
        "mellum", mellum, "softmax_topk", 8, 2, [0], model_class="MellumForCausalLM",
        notes="mlp_layer_types dense/sparse; per-layer-type RoPE (sliding/full thetas); mlp.gate F.linear on "
              "self.weight, renorm iff norm_topk_prob; checkpoint mtp.* weights ignored on load"),
    FamilyCase(
        "minimax", minimax, "softmax_topk", 8, 2, model_class="MiniMaxForCausalLM",
        notes="mixer attr is self_attn for both kinds: MiniMaxAttention (softmax) or MiniMaxLightningAttention "
              "(linear attention, returns (out, kv-state [B,h,d,d]), not probabilities); residual taken AFTER "
              "input_layernorm and mixed with *_alpha_factor / *_beta_factor; mlp.gate always renormalised"),
    FamilyCase(
        "qwen3_5_moe_text", qwen3_5_moe_text, "softmax_topk", 8, 2, model_class="Qwen3_5MoeForCausalLM",
        notes="layer_types linear_attention (linear_attn, gated delta net) / full_attention (self_attn, sigmoid "
              "output gate from a 2x q_proj); zero-centred RMSNorm (1+w); mlp.gate always renormalised; "
              "shared_expert x sigmoid(shared_expert_gate); hub checkpoints are the VL model "
              "(Qwen3_5MoeForConditionalGeneration), this is the text-only class"),
    FamilyCase(
        "qwen3_next", qwen3_next, "softmax_topk", 8, 2, [0], model_class="Qwen3NextForCausalLM",
        notes="as qwen3_5_moe_text (linear_attn / self_attn, gated shared expert) but renorm iff norm_topk_prob and "
              "dense layers via mlp_only_layers"),
    FamilyCase(
        "qwen4_exp_text", qwen4_exp_text, "softmax_topk", 8, 2, model_class="Qwen4ExpForCausalLM",
        notes="hyper-connections: residual stream is [B,S,hc_count*H]; attn_hyper_connection / mlp_hyper_connection "
              "mix it down to H before the mixer / MoE and inject back, so decoder-layer outputs are hc*H wide; no "
              "model.norm, the final model.hyper_connection_mixer (with hc_norm) collapses to H; layer types "
              "linear_attention (linear_attn) / indexed_attention (self_attn with a mandatory QSA indexer token mask "
              "and output gate); mlp.gate standard + gated shared expert; PLE off"),
    FamilyCase(
        "qwen3_vl_moe", qwen3_vl_moe, "softmax_topk", 8, 2, [0], model_class="Qwen3VLMoeForConditionalGeneration",
        multimodal=True, model_type="qwen3_vl_moe_text",
        notes="language model at model.language_model (Qwen3VLMoeTextModel), lm_head at top; mlp.gate always "
              "renormalised; interleaved M-RoPE (mrope_section [2,1,1] for head_dim 8); deepstack visual features are "
              "added to the first layers' outputs only when images are given"),
    FamilyCase(
        "granitemoe", granitemoe, "topk_softmax", 8, 2, model_class="GraniteMoeForCausalLM",
        notes="block_sparse_moe.router (F.linear on self.weight): topk on logits then softmax over the k; "
              "embedding_multiplier, residual_multiplier on both sublayers, attention_multiplier as attention "
              "scaling, logits divided by logits_scaling"),
    FamilyCase(
        "granitemoe_swa", granitemoe_swa, "topk_softmax", 8, 2, model_class="GraniteMoeSWAForCausalLM",
        notes="as granitemoe plus per-layer sliding/full attention, per-layer rope thetas (model.rotary_embs) and an "
              "optional shared_mlp (shared_intermediate_size > 0) added to block_sparse_moe"),
    FamilyCase(
        "granitemoehybrid", granitemoehybrid, "topk_softmax", 8, 2, model_class="GraniteMoeHybridForCausalLM",
        notes="mixers: mamba (Mamba2, returns a tensor) for linear_attention layers, self_attn otherwise; "
              "shared_mlp always added to block_sparse_moe; no rotary (position_embedding_type None); Granite "
              "multipliers and logits_scaling"),
    FamilyCase(
        "granitemoeshared", granitemoeshared, "topk_softmax", 8, 2, model_class="GraniteMoeSharedForCausalLM",
        notes="as granitemoe plus shared_mlp (ungated add to block_sparse_moe output)"),
    FamilyCase(
        "aria_text", aria_text, "topk_softmax", 8, 2, model_class="AriaTextForCausalLM",
        notes="mlp.router F.linear on self.weight, topk on logits then softmax; experts stored transposed: "
              "gate_up_proj [E,H,2I], down_proj [E,I,H] (x @ W); routed experts always SiLU; mlp.shared_experts "
              "always added; hub Aria checkpoints load as AriaForConditionalGeneration (text-only class here)"),
    FamilyCase(
        "cohere2_moe", cohere2_moe, "topk_softmax", 8, 2, [0], model_class="Cohere2MoeForCausalLM",
        notes="parallel block: one input_layernorm (LayerNorm when rms_norm_eps is None) feeds both self_attn and mlp, "
              "out = residual + attn + mlp; mlp.gate topk on logits then softmax (expert_selection_fn='softmax') or "
              "sigmoid(+renorm); shared_experts combined 'average' ((routed+shared)/2) or 'sum'; RoPE only on "
              "sliding (and dense-prefix) layers; logits x logit_scale"),
    FamilyCase(
        "gpt_oss", gpt_oss, "topk_softmax", 8, 2, model_class="GptOssForCausalLM",
        notes="mlp.router F.linear(weight, bias) then topk on logits, softmax over k; mlp returns (hidden, "
              "router_scores); experts interleaved gate/up gate_up_proj [E,H,2I] + biases, clamped swiglu "
              "(alpha, limit); attention sinks (returned weights drop the sink column); sliding/full alternate"),
    FamilyCase(
        "jetmoe", jetmoe, "topk_softmax", 8, 2, model_class="JetMoeForCausalLM",
        notes="mlp.router (JetMoeTopKGating, nested Linear mlp.router.layer) returns (sorted_idx, batch_index, "
              "batch_gates, expert_size list, logits[T,E]); no experts module taking (hidden, idx, w): "
              "mlp.input_linear / mlp.output_linear (JetMoeParallelExperts [E,out,in], forward(sorted_inputs, "
              "expert_size)) combined in the block + mlp.bias; attention is a mixture of attention heads "
              "(self_attention.experts with its own router) returning (out, attn_weights, router_logits); decoder "
              "attr self_attention"),
    FamilyCase(
        "ernie4_5_moe", ernie4_5_moe, "softmax_bias", 8, 2, [0], model_class="Ernie4_5_MoeForCausalLM",
        notes="mlp.gate fp32 F.linear on self.weight, softmax; top-k chosen on softmax + "
              "mlp.gate.moe_statics.e_score_correction_bias [1,E] (a frozen Parameter); weights = unbiased probs "
              "renormalised (clamp moe_norm_min); shared_experts; dense layers outside "
              "moe_layer_start_index..end / moe_layer_interval"),
    FamilyCase(
        "longcat_flash", longcat_flash, "softmax_bias", 10, 2, model_class="LongcatFlashForCausalLM",
        notes="n_experts = 8 FFN experts + 2 zero-compute identity experts (indices 8, 9); num_layers logical layers, "
              "each with self_attn ModuleList[2] (MLA), mlps ModuleList[2] (dense) and one shortcut MoE mlp fed by "
              "post_attention_layernorm[0] and added at the end of the layer; mlp.router logits = F.linear on "
              "mlp.router.classifier.weight (bias ignored), selection on softmax + e_score_correction_bias (buffer), "
              "weights unbiased x routed_scaling_factor, no renorm; experts gate_up_proj [E+Z,2I,H] but down_proj "
              "[E,H,I]"),
    FamilyCase(
        "mistral4", mistral4, "softmax_group", 16, 4, [0], model_class="Mistral3ForConditionalGeneration",
        multimodal=True,
        notes="hub Mistral-Small-4 loads as Mistral3ForConditionalGeneration with a mistral4 text_config "
              "(Mistral4ForCausalLM also exists); LM at model.language_model; mlp.gate F.linear on self.weight, "
              "softmax, group score = sum of top-2 probs, keep topk_group groups, topk, renorm iff norm_topk_prob, "
              "x routed_scaling_factor, no correction bias; MLA attention; shared_experts; first_k_dense_replace"),
    FamilyCase(
        "mistral_large4", mistral_large4, "softmax_group", 16, 4, [0],
        model_class="MistralLarge4ForConditionalGeneration", multimodal=True, model_type="mistral_large4_text",
        notes="LM at model.language_model; decoder layers return (hidden, topk_indices) and self_attn returns "
              "(out, attn_weights, topk_indices) (DSA indexer, 'full'/'shared' indexer layers, NoPE layers, "
              "optional KV sharing); router as mistral4 but fp32 weight and always renormalised; "
              "final_logit_softcapping; mlp_layer_types dense/sparse"),
    FamilyCase(
        "phimoe", phimoe, "sparsemixer", 8, 2, model_class="PhimoeForCausalLM",
        notes="mlp.router is an nn.Linear subclass -> (logits, w, idx); sparsemixer always picks 2 experts whatever "
              "top_k (argmax, then argmax of the rest; each weight a softmax over logits within 2*jitter_eps of the "
              "max); LayerNorm everywhere (input_layernorm, post_attention_layernorm, model.norm)"),
    FamilyCase(
        "flint", flint, "sigmoid_topk", 8, 2, [0], model_class="FlintForCausalLM",
        notes="mlp.gate fp32 F.linear on self.weight, sigmoid, topk, renorm iff norm_topk_prob, no bias; ungated "
              "mlp.shared_expert always added; attention sinks; full-attention layers NoPE, sliding layers RoPE"),
    FamilyCase(
        "gemma4_text", gemma4_text, "softmax_topk", 8, 2, model_class="Gemma4ForCausalLM",
        notes="router and experts sit on the decoder layer (attrs router, experts) next to the dense mlp; router "
              "reads the pre-FFN residual, RMS-normalises it itself (x scale x H^-0.5), logits from nested Linear "
              "router.proj, returns (softmax probs[T,E], w, idx), w renormalised x per_expert_scale[idx]; experts get "
              "pre_feedforward_layernorm_2(residual); every layer is MoE; families.sharpen leaves router.proj.weight "
              "alone ('proj'); full-attention layers use global_head_dim; final logit softcapping"),
    FamilyCase(
        "llama4_text", llama4_text, "topk_sigmoid", 8, 2, [0], model_class="Llama4ForCausalLM",
        notes="feed_forward (Llama4TextMoe) returns (out[T,H], router_logits); feed_forward.router (nn.Linear "
              "subclass) returns (scores[T,E] = sigmoid of the top-k logits, 0 elsewhere, logits[T,E]); "
              "feed_forward.experts.forward(hidden[E*T,H]) runs every expert on every token, input pre-multiplied "
              "by its score; gate_up_proj [E,H,2I], down_proj [E,I,H] (bmm); shared_expert; moe_layers (dense "
              "layers use intermediate_size_mlp); chunked-attention and NoPE layers"),
    FamilyCase(
        "deepseek_v4", deepseek_v4, "other", 8, 2, model_class="DeepseekV4ForCausalLM",
        notes="residual is [B,S,hc_mult,H] (decoder layers in/out 4-D), attn_hc / ffn_hc collapse it before "
              "input_layernorm+self_attn / post_attention_layernorm+mlp; final model.hc_head then model.norm; "
              "mlp.gate: sqrtsoftplus scores, topk on scores + e_score_correction_bias (buffer), weights unbiased, "
              "renormalised, x routed_scaling_factor; 'hash_moe' layers (DeepseekV4HashRouter) take experts from "
              "buffer tid2eid[input_ids] (all zeros at init) and need input_ids; compressed attention layers return "
              "attn_weights [B,h,S,S+C]; attention sinks; eager only"),
]
