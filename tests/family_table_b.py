"""Family table, part B: DeepSeek-V3-style sigmoid routers and their descendants, hybrid-attention MoEs, and
the MoE families that exist only inside multimodal models (see ``families.py``).

Every config is tiny (hidden 32, 2-5 layers, 8 routed experts where the family allows it) and keeps one layer of
each kind the family has: one dense MLP layer where the family has dense layers, one layer of each attention/mixer
kind where it is hybrid, and expert groups (``n_group=4, topk_group=2``) where the router is group-limited.
"""
from __future__ import annotations

from families import FamilyCase

# Shared token ids / vocabulary of the tiny tokenizer (``tiny.py``).
_TOK = dict(vocab_size=320, pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=False)
# Multi-head latent attention (DeepSeek-V2/V3 MLA), tiny: 4 heads, q/kv LoRA 16, nope 8 + rope 8, v 8.
_MLA = dict(num_attention_heads=4, num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=16,
            qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8)
# DeepSeek sparse attention (DSA) indexer, tiny: keeps 8 of the 12 test tokens.
_DSA = dict(index_topk=8, index_head_dim=8, index_n_heads=2)
# Expert layout: 8 routed experts, top-2, 4 groups of 2 with 2 groups kept.
_MOE8 = dict(num_experts_per_tok=2)
_GROUPS = dict(n_group=4, topk_group=2)


def _deepseek_v3():
    from transformers import DeepseekV3Config

    return DeepseekV3Config(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                            num_hidden_layers=3, **_MLA, n_shared_experts=1, n_routed_experts=8, **_MOE8,
                            **_GROUPS, first_k_dense_replace=1, routed_scaling_factor=2.5,
                            max_position_embeddings=128)


def _deepseek_v32():
    from transformers import DeepseekV32Config

    return DeepseekV32Config(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                             num_hidden_layers=3, **_MLA, **_DSA, n_shared_experts=1, n_routed_experts=8, **_MOE8,
                             **_GROUPS, mlp_layer_types=["dense", "sparse", "sparse"], routed_scaling_factor=2.5,
                             max_position_embeddings=128)


def _axk1():
    from transformers import AXK1Config

    return AXK1Config(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3,
                      **_MLA, n_shared_experts=1, n_routed_experts=8, **_MOE8, **_GROUPS,
                      mlp_layer_types=["dense", "sparse", "sparse"], routed_scaling_factor=2.5,
                      max_position_embeddings=128)


def _axk2():
    from transformers import AXK2Config

    return AXK2Config(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3,
                      **_MLA, **_DSA, n_shared_experts=1, n_routed_experts=8, **_MOE8, **_GROUPS,
                      mlp_layer_types=["dense", "sparse", "sparse"], routed_scaling_factor=2.5, gated_norm_rank=4,
                      max_position_embeddings=128)


def _bailing_hybrid():
    from transformers import BailingHybridConfig

    # head_dim is overwritten with qk_rope_head_dim in __post_init__ (and saved that way), and the KDA layers
    # read their head size from the original head_dim: keep both equal (8) so a reload builds the same model.
    return BailingHybridConfig(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                               num_hidden_layers=3, **_MLA, head_dim=8, n_shared_experts=1, num_experts=8, **_MOE8,
                               **_GROUPS, first_k_dense_replace=1, layer_group_size=2,
                               layer_types=["linear_attention", "full_attention", "linear_attention"],
                               routed_scaling_factor=2.5, max_position_embeddings=128)


def _beam():
    from transformers import BeamConfig

    return BeamConfig(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=8, **_MOE8, **_GROUPS,
                      mlp_layer_types=["dense", "sparse", "sparse"],
                      layer_types=["sliding_attention", "sliding_attention", "full_attention"], sliding_window=4,
                      routed_scaling_factor=2.5, max_position_embeddings=128)


def _dots1():
    from transformers import Dots1Config

    return Dots1Config(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, n_shared_experts=1,
                       n_routed_experts=8, **_MOE8, **_GROUPS, first_k_dense_replace=1, norm_topk_prob=True,
                       sliding_window=4, max_window_layers=2, routed_scaling_factor=2.5, max_position_embeddings=128)


def _dots3_note_text():
    from transformers import Dots3NoteTextConfig

    # Layers 0-1 use DSA (MLA + indexer), layer 2 sliding-window MLA with its own head layout (per_layer_config).
    return Dots3NoteTextConfig(
        **_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, shared_experts_intermediate_size=16,
        num_hidden_layers=3, **_MLA, head_dim=16, **_DSA, n_shared_experts=1, n_routed_experts=8, **_MOE8, **_GROUPS,
        mlp_layer_types=["dense", "sparse", "sparse"], routed_scaling_factor=2.5, max_position_embeddings=128,
        sliding_window=4, swa_num_attention_heads=4, swa_num_key_value_heads=4, swa_q_lora_rank=16,
        swa_kv_lora_rank=16, swa_head_dim=16, swa_qk_nope_head_dim=8, swa_v_head_dim=8)


def _exaone_moe():
    from transformers import ExaoneMoeConfig

    return ExaoneMoeConfig(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                           num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                           num_experts=8, **_MOE8, **_GROUPS, num_shared_experts=1, first_k_dense_replace=1,
                           sliding_window=4, sliding_window_pattern=3, routed_scaling_factor=2.5,
                           max_position_embeddings=128)


def _glm4_moe():
    from transformers import Glm4MoeConfig

    return Glm4MoeConfig(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         n_shared_experts=1, n_routed_experts=8, **_MOE8, **_GROUPS, first_k_dense_replace=1,
                         use_qk_norm=True, routed_scaling_factor=2.5, max_position_embeddings=128)


def _glm4_moe_lite():
    from transformers import Glm4MoeLiteConfig

    return Glm4MoeLiteConfig(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                             num_hidden_layers=3, **_MLA, n_shared_experts=1, n_routed_experts=8, **_MOE8, **_GROUPS,
                             mlp_layer_types=["dense", "sparse", "sparse"], routed_scaling_factor=2.5,
                             max_position_embeddings=128)


def _glm_moe_dsa():
    from transformers import GlmMoeDsaConfig

    # Layer 2 reuses layer 1's DSA top-k ("shared" indexer).
    return GlmMoeDsaConfig(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                           num_hidden_layers=3, **_MLA, **_DSA, n_shared_experts=1, n_routed_experts=8, **_MOE8,
                           **_GROUPS, mlp_layer_types=["dense", "sparse", "sparse"],
                           indexer_types=["full", "full", "shared"], routed_scaling_factor=2.5,
                           max_position_embeddings=128)


def _hy_v4_text_kwargs():
    return dict(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3, **_MLA,
                **_DSA, n_shared_experts=1, n_routed_experts=8, **_MOE8, **_GROUPS,
                mlp_layer_types=["dense", "sparse", "sparse"], indexer_types=["full", "full", "shared"], hc_mult=2,
                routed_scaling_factor=2.5, max_position_embeddings=128)


def _hy_v4():
    from transformers import HYV4Config

    return HYV4Config(**_hy_v4_text_kwargs())


def _kimi_linear():
    from transformers import KimiLinearConfig

    return KimiLinearConfig(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                            num_hidden_layers=3, **_MLA, n_shared_experts=1, num_experts=8, **_MOE8, **_GROUPS,
                            mlp_layer_types=["dense", "sparse", "sparse"],
                            layer_types=["linear_attention", "full_attention", "linear_attention"],
                            linear_head_dim=8, linear_num_heads=4, linear_conv_kernel_dim=4,
                            routed_scaling_factor=2.5, max_position_embeddings=128)


def _mimo_v2_flash():
    from transformers import MiMoV2FlashConfig

    return MiMoV2FlashConfig(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                             num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                             v_head_dim=8, n_routed_experts=8, **_MOE8, **_GROUPS,
                             mlp_layer_types=["dense", "sparse", "sparse"],
                             layer_types=["full_attention", "sliding_attention", "full_attention"], sliding_window=4,
                             routed_scaling_factor=2.5, max_position_embeddings=128)


def _nemotron_h():
    from transformers import NemotronHConfig

    # One block per mixer: Mamba2, MoE, attention, MoE, dense MLP.
    return NemotronHConfig(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                           moe_shared_expert_intermediate_size=16,
                           layers_block_type=["linear_attention", "moe", "full_attention", "moe", "mlp"],
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, mamba_num_heads=4,
                           mamba_head_dim=8, ssm_state_size=8, n_groups=2, conv_kernel=4, expand=1, chunk_size=4,
                           n_routed_experts=8, **_MOE8, **_GROUPS, routed_scaling_factor=2.5,
                           max_position_embeddings=128)


def _solar_open():
    from transformers import SolarOpenConfig

    return SolarOpenConfig(**_TOK, hidden_size=32, moe_intermediate_size=16, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, n_shared_experts=1,
                           n_routed_experts=8, **_MOE8, **_GROUPS, routed_scaling_factor=2.5,
                           max_position_embeddings=128)


# ---- multimodal-only families -------------------------------------------------------------------------------
# Image/video token ids >= 300 so the test prompts (ids 3..299) never contain one.
_MM_TOKENS = dict(image_token_id=310, video_token_id=311)


def _glm4v_moe():
    from transformers import Glm4vMoeConfig

    text = dict(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, n_shared_experts=1, n_routed_experts=8, **_MOE8,
                **_GROUPS, first_k_dense_replace=1, routed_scaling_factor=2.5, max_position_embeddings=128,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                                 "mrope_section": [1, 1, 0]})
    vision = dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=16, out_hidden_size=32, patch_size=2,
                  image_size=8, spatial_merge_size=2, temporal_patch_size=2)
    return Glm4vMoeConfig(text_config=text, vision_config=vision, **_MM_TOKENS, image_start_token_id=312,
                          image_end_token_id=313, video_start_token_id=314, video_end_token_id=315,
                          tie_word_embeddings=False)


def _hy_v4_vl():
    from transformers import HYV4VLConfig

    text = _hy_v4_text_kwargs()
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
    vision = dict(hidden_size=16, intermediate_size=16, num_attention_heads=2, num_hidden_layers=1,
                  out_hidden_size=32, patch_size=2, spatial_merge_size=2, max_image_size=16)
    return HYV4VLConfig(text_config=text, vision_config=vision, **_MM_TOKENS, tie_word_embeddings=False)


def _glm5_next():
    from transformers import Glm5NextConfig

    # KDA (linear attention) layers 0 and 2, one MLA+DSA layer (NoPE) in between.
    text = dict(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
                qk_rope_head_dim=0, v_head_dim=8, index_topk=8, index_head_dim=8, index_n_heads=2, index_kpool=4,
                n_shared_experts=1, n_routed_experts=8, **_MOE8, **_GROUPS,
                mlp_layer_types=["dense", "sparse", "sparse"],
                layer_types=["linear_attention", "indexed_attention", "linear_attention"],
                linear_head_dim=8, linear_num_heads=4, linear_conv_kernel_dim=4, hc_mult=2, hc_sinkhorn_iters=3,
                routed_scaling_factor=2.5, max_position_embeddings=128)
    vision = dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=16, out_hidden_size=32,
                  projection_intermediate_size=16, patch_size=2, image_size=8, spatial_merge_size=2,
                  temporal_patch_size=2)
    return Glm5NextConfig(text_config=text, vision_config=vision, **_MM_TOKENS, image_start_token_id=312,
                          image_end_token_id=313, video_start_token_id=314, video_end_token_id=315,
                          tie_word_embeddings=False)


def _step3p7():
    from transformers import Step3p7Config

    text = dict(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, share_expert_dim=16,
                num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                n_routed_experts=8, **_MOE8, mlp_layer_types=["dense", "sparse", "sparse"],
                layer_types=["full_attention", "sliding_attention", "full_attention"], sliding_window=4,
                num_sliding_attention_heads=2, moe_router_scaling_factor=2.5, max_position_embeddings=128)
    text.pop("bos_token_id")
    vision = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14,
                  mlp_ratio=1.0, max_position_embeddings=4)
    return Step3p7Config(text_config=text, vision_config=vision, image_token_id=310)


# ---- softmax-free / other routers ---------------------------------------------------------------------------

def _afmoe():
    from transformers import AfmoeConfig

    return AfmoeConfig(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3,
                       num_dense_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=8,
                       **_MOE8, num_shared_experts=1, route_scale=2.5,
                       layer_types=["sliding_attention", "sliding_attention", "full_attention"], sliding_window=4,
                       max_position_embeddings=128)


def _hy_v3():
    from transformers import HYV3Config

    return HYV3Config(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=8, **_MOE8,
                      num_shared_experts=1, mlp_layer_types=["dense", "sparse", "sparse"],
                      router_scaling_factor=2.5, max_position_embeddings=128)


def _inkling_text():
    from transformers import InklingTextConfig

    return InklingTextConfig(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                             num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                             swa_num_attention_heads=4, swa_num_key_value_heads=2, swa_head_dim=8,
                             sliding_window_size=4, d_rel=4, rel_extent=16,
                             layer_types=["hybrid_sliding", "hybrid_sliding", "hybrid"],
                             mlp_layer_types=["dense", "sparse", "sparse"], n_routed_experts=8, **_MOE8,
                             n_shared_experts=2, route_scale=2.5, max_position_embeddings=128)


def _inkling2_kwargs():
    return dict(**_TOK, hidden_size=32, moe_intermediate_size=16, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, swa_num_attention_heads=4, swa_num_key_value_heads=2,
                swa_head_dim=8, sliding_window_size=4, d_rel=4, rel_extent=16, log_scaling_n_floor=8,
                layer_types=["hybrid_sliding", "hybrid", "hybrid_sliding"], n_layers_per_attn_res_block=1,
                n_routed_experts=8, **_MOE8, route_scale=2.5, unpadded_vocab_size=320,
                max_position_embeddings=128)


def _inkling2_text():
    from transformers import Inkling2TextConfig

    return Inkling2TextConfig(**_inkling2_kwargs())


def _inkling2_loop_text():
    from transformers import Inkling2LoopTextConfig

    # Layer 1 is looped: run twice per forward pass (loop_num_passes=2).
    return Inkling2LoopTextConfig(**_inkling2_kwargs(), loop_layer_index_start=1, loop_layer_index_end=2,
                                  loop_num_passes=2, loop_gate_rank=4)


def _kolibri1():
    from transformers import Kolibri1Config

    return Kolibri1Config(**_TOK, hidden_size=32, moe_intermediate_size=16, shared_expert_intermediate_size=16,
                          num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                          num_experts=8, **_MOE8, norm_topk_prob=True,
                          layer_types=["sliding_attention", "sliding_attention", "full_attention"], sliding_window=4,
                          max_position_embeddings=128)


def _laguna():
    from transformers import LagunaConfig

    return LagunaConfig(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                        shared_expert_intermediate_size=16, num_hidden_layers=3, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=8, num_experts=8, **_MOE8,
                        mlp_layer_types=["dense", "sparse", "sparse"],
                        layer_types=["full_attention", "sliding_attention", "full_attention"], sliding_window=4,
                        moe_routed_scaling_factor=2.5, moe_router_logit_softcapping=5.0,
                        max_position_embeddings=128)


def _lfm2_moe():
    from transformers import Lfm2MoeConfig

    return Lfm2MoeConfig(**_TOK, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, num_dense_layers=1,
                         num_experts=8, **_MOE8, layer_types=["conv", "full_attention", "conv"],
                         routed_scaling_factor=2.5, max_position_embeddings=128)


def _minimax_m2():
    from transformers import MiniMaxM2Config

    return MiniMaxM2Config(**_TOK, hidden_size=32, intermediate_size=16, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=8, **_MOE8,
                           max_position_embeddings=128)


def _minimax_m3_vl_text():
    from transformers import MiniMaxM3VLTextConfig

    # Layer 1 uses the block-sparse "lightning indexer" attention (blocks of 4 tokens, top-1 + 1 local block).
    return MiniMaxM3VLTextConfig(**_TOK, hidden_size=32, intermediate_size=16, dense_intermediate_size=64,
                                 shared_intermediate_size=16, num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=8, rotary_dim=4, num_local_experts=8, **_MOE8,
                                 mlp_layer_types=["dense", "sparse", "sparse"],
                                 layer_types=["full_attention", "minimax_m3_sparse", "full_attention"],
                                 index_n_heads=2, index_head_dim=8, index_block_size=4, index_topk_blocks=1,
                                 index_local_blocks=1, routed_scaling_factor=2.5, max_position_embeddings=128)


def _doge():
    from transformers import DogeConfig

    return DogeConfig(**_TOK, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, is_moe=True, num_experts=16, num_experts_per_tok=2,
                      keep_window_size=8, max_position_embeddings=128)


def _zaya():
    from transformers import ZayaConfig

    return ZayaConfig(**_TOK, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=8, moe_intermediate_size=16, num_experts=8, num_experts_per_tok=1,
                      router_hidden_size=16, layer_types=["hybrid_sliding", "hybrid"], sliding_window=4,
                      max_position_embeddings=128)


CASES: list[FamilyCase] = [
    FamilyCase(
        "deepseek_v3", _deepseek_v3, "sigmoid_group", 8, 2, [0], "DeepseekV3ForCausalLM",
        notes="mlp.gate = DeepseekV3TopkRouter (F.linear on self.weight [E,H], fp32) -> (logits[T,E], weights[T,k], "
              "idx[T,k]); sigmoid + mlp.gate.e_score_correction_bias for choice, group top-2-sum, renorm, "
              "x routed_scaling_factor; mlp.experts gate_up_proj [E,2I,H]; mlp.shared_experts; MLA attention"),
    FamilyCase(
        "deepseek_v32", _deepseek_v32, "sigmoid_group", 8, 2, [0], "DeepseekV32ForCausalLM",
        notes="DeepSeek-V3 router/experts (mlp.gate, mlp.experts, mlp.shared_experts); every layer MLA + DSA "
              "indexer (self_attn.indexer) folding a top-k key mask into the attention mask; attn returns "
              "(out, weights)"),
    FamilyCase(
        "axk1", _axk1, "sigmoid_group", 8, 2, [0], "AXK1ForCausalLM",
        notes="DeepSeek-V3 router/experts; AXK1MoE applies mlp.post_mlp_layernorm (RMSNorm) to routed+shared "
              "output inside the MoE block, so the block output is not the plain sum of expert outputs"),
    FamilyCase(
        "axk2", _axk2, "sigmoid_group", 8, 2, [0], "AXK2ForCausalLM",
        notes="router like DeepSeek-V3 but groups optional (n_group=None -> plain sigmoid+bias top-k) and "
              "experts of unchosen groups are masked with 0.0, not -inf (can still win if score+bias<0); "
              "input/post-attn norms are AXK2GatedRMSNorm (norm + low-rank sigmoid gate .mlp.fc1/fc2); "
              "MLA+DSA attention with fused q_gate_proj output gate"),
    FamilyCase(
        "bailing_hybrid", _bailing_hybrid, "sigmoid_group", 8, 2, [0], "BailingHybridForCausalLM",
        notes="DeepSeek-V3 router/experts; mixer at self_attn is BailingHybridDeltaAttention (KDA linear "
              "attention, returns a tensor, not a tuple) on linear_attention layers and MLA "
              "(out, weights) on full_attention layers"),
    FamilyCase(
        "beam", _beam, "sigmoid_group", 8, 2, [0], "BeamForCausalLM",
        notes="BeamTopKRouter: sigmoid+bias group routing, renorm, NO scaling in the router: "
              "routed_scaling_factor is applied by BeamMoE after the experts; no shared experts; sandwich norms "
              "and depth-scaled residual adds; sliding layers RoPE, full layers NoPE (+attention_scaling); "
              "gated attention; final logit softcapping"),
    FamilyCase(
        "dots1", _dots1, "sigmoid_group", 8, 2, [0], "Dots1ForCausalLM",
        notes="DeepSeek-V3 router/experts (+shared) on a Qwen3-style attention; layers >= max_window_layers "
              "use sliding-window attention"),
    FamilyCase(
        "dots3_note_text", _dots3_note_text, "sigmoid_group", 8, 2, [0], "Dots3NoteForCausalLM",
        notes="text-only causal LM of dots3_note; DeepSeek-V3 router/experts, shared expert width "
              "shared_experts_intermediate_size; MLA with per-head sigmoid g_proj gate: layers 0-1 DSA "
              "(indexed_attention), layer 2 sliding-window MLA with its own per_layer_config head layout"),
    FamilyCase(
        "exaone_moe", _exaone_moe, "sigmoid_group", 8, 2, [0], "ExaoneMoeForCausalLM",
        notes="DeepSeek-V3-style router (ExaoneMoeTopkRouter) in mlp (ExaoneMoeSparseMoEBlock) with "
              "shared_experts; sliding/full attention by sliding_window_pattern"),
    FamilyCase(
        "glm4_moe", _glm4_moe, "sigmoid_group", 8, 2, [0], "Glm4MoeForCausalLM",
        notes="DeepSeek-V3 router/experts (+shared); GQA attention with partial RoPE (0.5) and optional QK norm"),
    FamilyCase(
        "glm4_moe_lite", _glm4_moe_lite, "sigmoid_group", 8, 2, [0], "Glm4MoeLiteForCausalLM",
        notes="DeepSeek-V3 router/experts (+shared) with MLA attention; dense/sparse by mlp_layer_types"),
    FamilyCase(
        "glm_moe_dsa", _glm_moe_dsa, "sigmoid_group", 8, 2, [0], "GlmMoeDsaForCausalLM",
        notes="DeepSeek-V3 router/experts; MLA+DSA attention returns a 3-tuple (out, weights, topk_indices) "
              "and the DECODER LAYER returns (hidden, topk_indices) (shared indexer layers reuse the "
              "previous layer's top-k)"),
    FamilyCase(
        "hy_v4", _hy_v4, "sigmoid_group", 8, 2, [0], "HYV4ForCausalLM",
        notes="DeepSeek-V3 router; experts clamp SwiGLU at swiglu_limit; hyper-connections: the residual "
              "stream is [B,S,hc_mult,H] (attn_hc/ffn_hc collapse it before attn/mlp), decoder layer returns "
              "(hidden[B,S,hc,H], topk_indices); final = model.norm(model.hc_head(h)); MLA+DSA attention with "
              "sinks returns (out, weights, topk_indices)"),
    FamilyCase(
        "kimi_linear", _kimi_linear, "sigmoid_group", 8, 2, [0], "KimiLinearForCausalLM",
        notes="DeepSeek-V3 router/experts; self_attn is KimiLinearDeltaAttention (KDA, returns a tensor) on "
              "linear_attention layers, NoPE MLA (out, weights) on full_attention layers; no rotary module"),
    FamilyCase(
        "mimo_v2_flash", _mimo_v2_flash, "sigmoid_group", 8, 2, [0], "MiMoV2FlashForCausalLM",
        notes="DeepSeek-V3 router/experts, no shared experts; SWA layers have 2x kv heads and attention sinks, "
              "v_head_dim != head_dim, partial RoPE"),
    FamilyCase(
        "nemotron_h", _nemotron_h, "sigmoid_group", 8, 2, [0, 2, 4], "NemotronHForCausalLM",
        notes="one mixer per block: model.layers[i].mixer is Mamba2 / NemotronHMoE / attention / MLP; MoE "
              "router mixer.gate (DeepSeek-V3 rule), NON-GATED experts mixer.experts.up_proj [E,I,H] + "
              "down_proj [E,H,I] (relu2), optional fc1/fc2_latent_proj around experts; embeddings "
              "model.embeddings, final norm model.norm_f"),
    FamilyCase(
        "solar_open", _solar_open, "sigmoid_group", 8, 2, [], "SolarOpenForCausalLM",
        notes="Glm4Moe MoE (router mlp.gate, mlp.experts, mlp.shared_experts) in every layer, Llama attention; "
              "no dense layers"),
    FamilyCase(
        "glm4v_moe", _glm4v_moe, "sigmoid_group", 8, 2, [0], "Glm4vMoeForConditionalGeneration",
        multimodal=True, model_type="glm4v_moe_text",
        notes="text model at model.language_model (layers model.language_model.layers, norm "
              "model.language_model.norm), lm_head at top; Glm4Moe-style router/experts; M-RoPE "
              "(mrope_section) attention"),
    FamilyCase(
        "hy_v4_vl", _hy_v4_vl, "sigmoid_group", 8, 2, [0], "HYV4VLForConditionalGeneration",
        multimodal=True, model_type="hy_v4_vl_text",
        notes="HY-V4 text model (hyper-connection streams [B,S,hc,H], MLA+DSA+sinks, decoder returns "
              "(hidden, topk_indices)) at model.language_model; M-RoPE on the rope slice"),
    FamilyCase(
        "glm5_next", _glm5_next, "sigmoid_group", 8, 2, [0], "Glm5NextForConditionalGeneration",
        multimodal=True, model_type="glm5_next_text",
        notes="text model at model.language_model; DeepSeek-V3 router, SwiGLU-clamped experts; mHC "
              "hyper-connections (stream [B,S,hc,H], Sinkhorn comb), final = norm(mean over streams); "
              "self_attn is KDA linear attention (tensor) or NoPE MLA+DSA (out, weights, topk|None); decoder "
              "returns (hidden, topk_indices)"),
    FamilyCase(
        "afmoe", _afmoe, "sigmoid_topk", 8, 2, [0], "AfmoeForCausalLM",
        notes="router at mlp.router (AfmoeTokenChoiceRouter, logits from nested nn.Linear mlp.router.gate), "
              "forward(hidden[B,S,H] 3-D, expert_bias); bias lives on the block: mlp.expert_bias (Parameter, "
              "no grad); always renorm, x route_scale; shared experts; sandwich norms; gated attention"),
    FamilyCase(
        "hy_v3", _hy_v3, "sigmoid_topk", 8, 2, [0], "HYV3ForCausalLM",
        notes="router mlp.gate (HYV3TopKRouter, F.linear on self.weight) takes (hidden, e_score_correction_bias); "
              "the bias is a buffer on the MoE block: mlp.e_score_correction_bias; always renorm, "
              "x router_scaling_factor; shared experts added in fp32"),
    FamilyCase(
        "inkling_text", _inkling_text, "sigmoid_topk", 8, 2, [0], "InklingForCausalLM", router_shared_rows=2,
        notes="router mlp.gate weight [E+n_shared,H]: sigmoid+bias choice on routed experts, weights = "
              "normalised sigmoid over the k chosen AND the shared experts (shared = sink), x route_scale x "
              "global_scale; returns 4-tuple (routed_logits[T,E], w[T,k], idx[T,k], shared_gammas[T,S]) and the "
              "shared experts are scaled by those gammas (masking a routed expert changes them by that rule); "
              "short convs after attn/mlp; final hidden / logits_mup_width_multiplier before lm_head"),
    FamilyCase(
        "inkling2_text", _inkling2_text, "sigmoid_topk", 8, 2, [], "Inkling2ForCausalLM",
        notes="all layers MoE, no shared experts; router mlp.gate (score_fn=scoring_func, +bias choice, "
              "renorm, x route_scale); softcapped SwiGLU experts; block attention residuals (attention_input/"
              "mlp_input mix earlier block states) instead of a plain residual; sliding/full attention with sinks "
              "and relative bias; final = model.norm(model.final_input(...)), logit softcap"),
    FamilyCase(
        "inkling2_loop_text", _inkling2_loop_text, "sigmoid_topk", 8, 2, [], "Inkling2LoopForCausalLM",
        notes="Inkling2 with looped layers: layers[loop_start:loop_end] run loop_num_passes times per forward "
              "(here layer 1 twice), so its router/experts hooks fire twice; message gates mix the previous "
              "pass"),
    FamilyCase(
        "kolibri1", _kolibri1, "topk_sigmoid", 8, 2, [], "Kolibri1ForCausalLM",
        notes="Kolibri1TopKRouter: top-k on raw logits + e_score_correction_bias, then sigmoid of the chosen "
              "logits, renorm only if norm_topk_prob, no scaling; every layer MoE with shared_experts; "
              "post-attn/post-mlp norms (Glm4 layer); full-attention layers are NoPE"),
    FamilyCase(
        "laguna", _laguna, "sigmoid_topk", 8, 2, [0], "LagunaForCausalLM",
        notes="router mlp.gate: optional tanh softcap of logits (moe_router_logit_softcapping, set here), sigmoid "
              "+ e_score_correction_bias (an nn.Parameter, requires_grad=False) choice, always renorm; "
              "moe_routed_scaling_factor applied by the block; shared experts; softplus-gated attention"),
    FamilyCase(
        "lfm2_moe", _lfm2_moe, "sigmoid_topk", 8, 2, [0], "Lfm2MoeForCausalLM",
        notes="MoE at feed_forward (router feed_forward.gate forward(hidden, expert_bias), bias buffer "
              "feed_forward.expert_bias); mixer is self_attn on attention layers, conv (short conv) on conv "
              "layers; norms operator_norm/ffn_norm; final norm model.embedding_norm"),
    FamilyCase(
        "minimax_m2", _minimax_m2, "sigmoid_topk", 8, 2, [], "MiniMaxM2ForCausalLM",
        notes="router mlp.gate forward(hidden, e_score_correction_bias), bias buffer on the block "
              "(mlp.e_score_correction_bias); always renorm, no scaling; experts width = intermediate_size; "
              "every layer MoE, no shared experts"),
    FamilyCase(
        "minimax_m3_vl_text", _minimax_m3_vl_text, "sigmoid_topk", 8, 2, [0], "MiniMaxM3VLForCausalLM",
        notes="text-only causal LM of minimax_m3_vl; router mlp.gate with its own e_score_correction_bias, "
              "renorm, routed_scaling_factor applied by the block; SwiGLU-OAI experts (clamp, alpha, up+1); "
              "shared experts; minimax_m3_sparse layers use a block-sparse lightning indexer"),
    FamilyCase(
        "step3p7", _step3p7, "sigmoid_topk", 8, 2, [0], "Step3p7ForConditionalGeneration",
        multimodal=True, model_type="step3p5",
        notes="text model (config model_type step3p5) at model.language_model; router mlp.gate like MiniMax-M3 "
              "(bias on the router, renorm), moe_router_scaling_factor applied by the block; shared experts; "
              "per-layer head count on sliding layers (per_layer_config); head-wise sigmoid g_proj gate"),
    FamilyCase(
        "doge", _doge, "other", 16, 2, [], "DogeForCausalLM",
        unsupported="product-key retrieval experts: router_gate gives 2 x sqrt(E) key logits, experts are "
                    "Embedding rows (down_embed/up_embed); no router over E experts, no experts module",
        notes="DogeCDMoE at mlp returns (hidden, router_logits[2,T,sqrt(E)]); routing = top-k over the "
              "sqrt(E) x sqrt(E) key-score sums, softmax over the k; the MLP part is a shared expert"),
    FamilyCase(
        "zaya", _zaya, "softmax_bias", 8, 1, [], "ZayaForCausalLM",
        unsupported="MLP router (down_proj -> RMSNorm -> 2 GELU layers -> out_proj) over E+1 classes incl. a "
                    "compute-free skip expert, with router state carried across layers",
        notes="mlp.gate returns (logits[T,E+1], probs[T,1], idx[T,1], router_state); softmax + "
              "balancing_biases for choice, top_k must be 1. Round trip of the sharpened model FAILS: "
              "AssertionError: state_dict mismatch ['model.layers.0.mlp.gate.balancing_biases', "
              "'model.layers.1.mlp.gate.balancing_biases'] (transformers bug: ZayaPreTrainedModel._init_weights "
              "runs balancing_biases[-1] = -1.0 unconditionally, overwriting the loaded skip-class bias)"),
]
