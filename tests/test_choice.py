"""Log-likelihood multiple choice: batched scores equal an independent per-example forward; MMLU prompt format."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

import routerlens_interp as rl  # noqa: E402
from routerlens_interp.evaluation.choice import encode_pair, loglikelihoods, render_choice  # noqa: E402
from routerlens_interp.errors import UserError  # noqa: E402

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """The tiny OLMoE with a 1,024-token window (5-shot MMLU prompts fit; byte-level BPE makes them long)."""
    import transformers as tf

    d = tmp_path_factory.mktemp("olmoe_choice")
    torch.manual_seed(0)
    cfg = tiny.configs()["olmoe"]
    cfg.max_position_embeddings = 1024
    model = tf.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate.weight"):
                p.normal_(0, 0.5)
    model.save_pretrained(d)
    tiny.tokenizer().save_pretrained(d)
    return rl.load(str(d))


@torch.no_grad()
def direct_logprob(lm, context: str, continuation: str) -> float:
    """Independent: one unpadded forward over context + continuation, log-softmax by hand."""
    tok = lm.tokenizer
    ctx = tok(context, add_special_tokens=False)["input_ids"] if context else [tok.eos_token_id]
    n_space = len(context) - len(context.rstrip())
    if n_space:  # lm-eval moves the context's trailing spaces to the continuation
        context, continuation = context[:-n_space], context[-n_space:] + continuation
        ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"] if context else ctx + \
        tok(continuation, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx):]
    inp = whole[-(lm.window + 1):][:-1]  # lm-eval's rule: over-long inputs keep their last window + 1 tokens
    logits = lm.hf(input_ids=torch.tensor([inp])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    first = len(inp) - len(cont)  # position predicting the first continuation token
    return float(sum(lp[first + i, t] for i, t in enumerate(cont)))


def test_mmlu_prompt_is_lm_evals_format():
    dev = rl.load_dataset(FIX / "mmlu_dev.jsonl")
    ex = rl.load_dataset(FIX / "mmlu_test.jsonl")[0]
    ctx, conts = render_choice(ex, dev[:1])
    assert conts == [" A", " B", " C", " D"]
    assert ctx == ("The following are multiple choice questions (with answers) about abstract algebra.\n\n"
                   "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"
                   "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
                   "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:")
    mt = rl.load_dataset(FIX / "memotrap.csv")[0]
    assert render_choice(mt) == (mt.prompt, [" heavy.", " fonder."])


def test_batched_loglikelihoods_equal_independent_forward(lm):
    reqs = [("Alice was born in Paris. Alice was born in", " Paris"), ("Bob lives in", " Rome and paints."),
            ("Question: where?  ", "Lima"), ("", "Paris")]
    got = loglikelihoods(lm, reqs, batch_size=3)
    for (c, x), (lp, greedy) in zip(reqs, got):
        assert lp == pytest.approx(direct_logprob(lm, c, x), abs=1e-4)
        assert isinstance(greedy, bool)
    assert encode_pair(lm.tokenizer, "a b ", "c")[1] == encode_pair(lm.tokenizer, "a b", " c")[1]


def test_choice_accuracy_is_argmax_of_independent_scores(lm):
    data = rl.load_dataset(FIX / "memotrap.csv") + rl.load_dataset(FIX / "mmlu_test.jsonl")
    s = rl.choice_accuracy(lm, data, batch_size=4)
    expect = []
    for ex in data:
        ctx, conts = render_choice(ex)
        lps = [direct_logprob(lm, ctx, c) for c in conts]
        expect.append(max(range(len(lps)), key=lps.__getitem__))
        assert s["logprobs"][len(expect) - 1] == pytest.approx(lps, abs=1e-4)
    assert s["predictions"] == expect
    assert s["accuracy"] == pytest.approx(100 * sum(p == ex.label for p, ex in zip(expect, data)) / len(data))
    assert s["n"] == 6 and s["shots"] == 0 and 0 <= s["accuracy_norm"] <= 100


def test_five_shot_uses_the_subjects_dev_examples(lm):
    dev = rl.load_dataset(FIX / "mmlu_dev.jsonl")
    test = rl.load_dataset(FIX / "mmlu_test.jsonl")
    five = rl.evaluate(lm, test, shots=5, fewshot=dev)
    zero = rl.evaluate(lm, test)
    assert five["metric"] == "accuracy" and five["shots"] == 5 and five["logprobs"] != zero["logprobs"]
    ctx, _ = render_choice(test[0], dev)
    assert five["logprobs"][0] == pytest.approx([direct_logprob(lm, ctx, f" {L}") for L in "ABCD"], abs=1e-4)
    with pytest.raises(UserError, match="6-shot needs 6"):
        rl.evaluate(lm, test, shots=6, fewshot=dev)
    with pytest.raises(UserError, match="fewshot="):
        rl.evaluate(lm, test, shots=5)  # a local file: no hub dev split to fetch


def test_mask_changes_scores_and_is_undone(lm):
    data = rl.load_dataset(FIX / "mmlu_test.jsonl")
    before = rl.choice_accuracy(lm, data)["logprobs"]
    with rl.mask_experts(lm, {l: [0, 1, 2, 3] for l in lm.spec.moe_layers}):
        masked = rl.choice_accuracy(lm, data)["logprobs"]
        ctx, _ = render_choice(data[0])
        assert masked[0][0] == pytest.approx(direct_logprob(lm, ctx, " A"), abs=1e-4)
    assert masked != before
    assert rl.choice_accuracy(lm, data)["logprobs"] == before


def test_evaluate_refuses_mixtures_and_misplaced_options(lm):
    mc = rl.load_dataset(FIX / "memotrap.csv")
    qa = [rl.QAExample("Bob lives in Rome.", "Where does Bob live?", ["Rome"])]
    with pytest.raises(UserError, match="mixes tasks"):
        rl.evaluate(lm, mc + qa)
    with pytest.raises(UserError, match="shots/fewshot apply to multiple choice"):
        rl.evaluate(lm, qa, shots=5)
    with pytest.raises(UserError, match="judge= applies to generated answers"):
        rl.evaluate(lm, mc, judge=lambda p: "yes")


def test_over_long_inputs_lose_tokens_from_the_left(lm, monkeypatch):
    monkeypatch.setattr(lm.hf.config, "max_position_embeddings", 24)
    reqs = [("Alice Smith was born in 1950 in Paris. She works as a baker in Rome. Alice was born in", " Paris")]
    with pytest.warns(UserWarning, match="lost tokens from the left"):
        (lp, _), = loglikelihoods(lm, reqs)
    assert lp == pytest.approx(direct_logprob(lm, *reqs[0]), abs=1e-4)
