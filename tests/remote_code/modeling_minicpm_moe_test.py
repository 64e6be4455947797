"""A tiny MiniCPM-MoE written for the routerlens tests, loaded with ``trust_remote_code=True``.

It mirrors the layout of the public MiniCPM-MoE-8x2B remote code (``modeling_minicpm.py`` on the hub), which
transformers does not ship: each decoder layer's ``mlp`` is a ``MiniCPMMoE`` block holding

- ``gate``: a plain ``nn.Linear(hidden, num_experts, bias=False)`` (weight ``[E, H]``), and
- ``experts``: an ``nn.ModuleList`` of per-expert MLPs with ``w1`` (gate), ``w3`` (up) and ``w2`` (down) linears,

routed by softmax → top-k → renormalisation inside the block's forward. As in the public code, eval mode runs a
sorted dispatch (``moe_infer``) under ``torch.no_grad`` and training mode a differentiable loop; the logits are
``lm_head(h / (hidden_size / dim_model_base))``. Attention, norms and embeddings are Llama's (not the point).
"""
import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from .configuration_minicpm_moe_test import MiniCPMMoETestConfig


class MiniCPMMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MiniCPMMoE(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_experts = config.num_experts
        self.num_experts_per_tok = config.num_experts_per_tok
        self.experts = nn.ModuleList([MiniCPMMLP(config) for _ in range(self.num_experts)])
        self.gate = nn.Linear(config.hidden_size, self.num_experts, bias=False)

    def forward(self, hidden_states):
        orig_shape = hidden_states.shape
        hidden_states = hidden_states.view(-1, hidden_states.shape[-1])
        scores = self.gate(hidden_states)
        scores_prob = F.softmax(scores, dim=-1, dtype=torch.float32)
        expert_weights, expert_indices = torch.topk(scores_prob, self.num_experts_per_tok, dim=-1)
        expert_weights = expert_weights / expert_weights.sum(dim=-1, keepdim=True)
        expert_weights = expert_weights.to(hidden_states.dtype)
        flat_expert_indices = expert_indices.view(-1)
        if self.training:
            hidden_states = hidden_states.repeat_interleave(self.num_experts_per_tok, dim=0)
            y = torch.empty_like(hidden_states)
            for i, expert in enumerate(self.experts):
                y[flat_expert_indices == i] = expert(hidden_states[flat_expert_indices == i])
            y = (y.view(*expert_weights.shape, -1) * expert_weights.unsqueeze(-1)).sum(dim=1)
            return y.view(*orig_shape)
        return self.moe_infer(hidden_states, flat_expert_indices, expert_weights.view(-1, 1)).view(*orig_shape)

    @torch.no_grad()
    def moe_infer(self, x, flat_expert_indices, flat_expert_weights):
        expert_cache = torch.zeros_like(x)
        idxs = flat_expert_indices.argsort()
        tokens_per_expert = flat_expert_indices.bincount(minlength=self.num_experts).cpu().numpy().cumsum(0)
        token_idxs = idxs // self.num_experts_per_tok
        for i, end_idx in enumerate(tokens_per_expert):
            start_idx = 0 if i == 0 else tokens_per_expert[i - 1]
            if start_idx == end_idx:
                continue
            expert = self.experts[i]
            exp_token_idx = token_idxs[start_idx:end_idx]
            expert_out = expert(x[exp_token_idx])
            expert_out.mul_(flat_expert_weights[idxs[start_idx:end_idx]])
            expert_cache.scatter_reduce_(0, exp_token_idx.view(-1, 1).repeat(1, x.shape[-1]), expert_out,
                                         reduce="sum")
        return expert_cache


class MiniCPMForCausalLM(LlamaForCausalLM):
    config_class = MiniCPMMoETestConfig

    def __init__(self, config):
        super().__init__(config)
        for layer in self.model.layers:
            layer.mlp = MiniCPMMoE(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, labels=None,
                use_cache=None, logits_to_keep=0, **kwargs):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        h = slice_logits_to_keep(out.last_hidden_state, logits_to_keep)
        logits = self.lm_head(h / (self.config.hidden_size / self.config.dim_model_base))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values)
