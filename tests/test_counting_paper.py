"""Counting as the paper's ``exp_act_count.py`` does: top-k over prompt + answer tokens, without EOS (issue 20.5)."""
from __future__ import annotations

import pytest
import torch

import chat_templates as ct
import routerlens_interp as rl

DATA = [rl.QAExample(r["context"], r["question"], [r["answer"]], r["memory_answer"]) for r in ct.NQ_SWAP[:4]]


@pytest.fixture(scope="module", params=["deepseek", "olmoe"])
def lm(request, tmp_path_factory):
    path = ct.save_model(request.param, tmp_path_factory.mktemp(request.param))
    return rl.load(path)


def _paper_counts(lm, examples, drop_last: bool) -> torch.Tensor:
    """Independent count: the template's rendering of user + assistant, tokenised whole, one example at a
    time; ``argsort(router_logits)[-k:]`` per token from ``output_router_logits``; EOS left out."""
    tok, k = lm.tokenizer, lm.spec.top_k
    counts = torch.zeros(len(lm.spec.moe_layers), lm.spec.n_experts, dtype=torch.long)
    for ex in examples:
        user = ct.PROMPT.format(context=ex.context, question=ex.question)
        text = tok.apply_chat_template([{"role": "user", "content": user}, {"role": "assistant", "content": ex.answer}],
                                       tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids[-1] == tok.eos_token_id
        with torch.no_grad():
            out = lm.hf(input_ids=torch.tensor([ids]), output_router_logits=True)
        n = len(ids) - 1 if drop_last else len(ids)
        for r, logits in enumerate(out.router_logits):
            top = logits[:n].float().argsort(dim=-1)[:, -k:]
            counts[r] += torch.bincount(top.reshape(-1), minlength=lm.spec.n_experts)
    return counts


def test_count_all_is_prompt_and_answer_without_eos(lm):
    c = rl.count_experts(lm, DATA, batch_size=3)
    expected = _paper_counts(lm, DATA, drop_last=True)
    assert torch.equal(c.counts, expected)
    n_tokens = sum(len(lm.encode(ex, with_answer=True).input_ids) - 1 for ex in DATA)
    assert c.n_tokens == n_tokens and int(c.counts.sum()) == n_tokens * lm.spec.top_k * len(lm.spec.moe_layers)
    seq = rl.count_experts(lm, DATA, span="sequence", batch_size=2)  # the end token too
    assert torch.equal(seq.counts, _paper_counts(lm, DATA, drop_last=False))
    assert seq.n_tokens == c.n_tokens + len(DATA)
