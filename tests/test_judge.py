"""AccLLM: a stub callable judge and the bundled model as a (weak) judge."""
import math

import pytest
import torch

import routerlens_interp as rl
from routerlens_interp.errors import UserError
from routerlens_interp.evaluation.judge import JUDGE_PROMPT, judge_prompt, parse_verdict

DATA = [rl.QAExample("Alice Smith was born in Paris.", "Where was Alice Smith born?", ["Paris"]),
        rl.QAExample("Bob lives in Rome.", "Where does Bob live?", ["Rome"]),
        rl.QAExample("Carol works in Lima.", "Where does Carol work?", ["Lima", "Lima, Peru"])]
PREDS = ["Paris", "in the city of Rome", "Berlin"]


def stub(prompt: str) -> str:
    """Says yes when the gold answer's first word occurs in the prediction (a lenient grader)."""
    gold = prompt.split("Gold answer: ")[1].split("\n")[0].split(" / ")[0]
    pred = prompt.split("Predicted answer: ")[1].split("\n")[0]
    return "Yes." if gold.lower() in pred.lower() else "No"


def test_stub_judge_verdicts_and_agreement_with_em():
    seen = []
    s = rl.judge_accuracy(PREDS, DATA, lambda p: (seen.append(p), stub(p))[1])
    assert seen[2] == judge_prompt(DATA[2].question, DATA[2].answers, PREDS[2])
    assert "Gold answer: Lima / Lima, Peru" in seen[2]
    assert s["judged"] == [True, True, False] and s["verdicts"] == ["Yes.", "Yes.", "No"]
    assert s["acc_llm"] == pytest.approx(200 / 3)
    # EM: [1, 0, 0]; judge: [1, 1, 0] → they agree on examples 0 and 2
    assert s["table"] == {"both_correct": 1, "judge_only": 1, "em_only": 0, "both_wrong": 1}
    assert s["agreement_with_em"] == pytest.approx(200 / 3)
    assert s["judge_prompt"] == JUDGE_PROMPT and s["judge_mode"] == "generate" and s["n_unparsed"] == 0


def test_unparsed_replies_are_counted_not_guessed():
    s = rl.judge_accuracy(PREDS, DATA, lambda p: "maybe?")
    assert s["judged"] == [None, None, None] and s["n_unparsed"] == 3 and s["acc_llm"] == 0.0
    assert [parse_verdict(t) for t in ("Yes", " no.", "Correct", "**yes**", "", "perhaps")] == \
        [True, False, True, True, None, None]
    with pytest.raises(UserError, match="not text"):
        rl.judge_accuracy(PREDS, DATA, lambda p: 1)
    with pytest.raises(UserError, match="3 predictions for 2"):
        rl.judge_accuracy(PREDS, DATA[:2], stub)


@pytest.fixture(scope="module")
def toy():
    return rl.load("toy")


def test_bundled_model_as_likelihood_judge(toy):
    s = rl.judge_accuracy(PREDS, DATA, toy)
    assert s["judge_mode"] == "likelihood" and s["n_unparsed"] == 0 and len(s["verdicts"]) == 3
    v = s["verdicts"][1]
    prompt = judge_prompt(DATA[1].question, DATA[1].answers, PREDS[1])  # no chat template: " yes" follows
    with torch.no_grad():  # independent: log P(word | prompt) by one forward per word
        def lp(word):
            ctx = toy.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            whole = toy.tokenizer(prompt + word, add_special_tokens=False)["input_ids"]
            logp = torch.log_softmax(toy.hf(input_ids=torch.tensor([whole])).logits[0].double(), -1)
            return float(sum(logp[i - 1, whole[i]] for i in range(len(ctx), len(whole))))
        yes = math.log(math.exp(lp(" yes")) + math.exp(lp(" Yes")))
        no = math.log(math.exp(lp(" no")) + math.exp(lp(" No")))
    assert v["logprob_yes"] == pytest.approx(yes, abs=1e-3) and v["logprob_no"] == pytest.approx(no, abs=1e-3)
    assert v["verdict"] == ("yes" if yes > no else "no") and s["judged"][1] == (yes > no)


def test_bundled_model_as_generating_judge_keeps_raw_text(toy):
    s = rl.judge_accuracy(PREDS[:2], DATA[:2], toy, mode="generate")
    assert all(isinstance(v, str) for v in s["verdicts"])
    assert s["judged"] == [parse_verdict(v) for v in s["verdicts"]]


def test_evaluate_with_judge_adds_acc_llm(toy, monkeypatch):
    import routerlens_interp.evaluation.generate as ev

    monkeypatch.setattr(ev, "generate", lambda *a, **k: list(PREDS))
    s = rl.evaluate(toy, DATA, judge=stub)
    assert s["metric"] == "em/f1/acc_llm" and s["em"] == pytest.approx(100 / 3)
    assert s["acc_llm"] == pytest.approx(200 / 3) and s["predictions"] == PREDS and "verdicts" in s


def test_any_local_causal_lm_directory_is_a_judge(tmp_path):
    """A dense model (rl.load would refuse it: not MoE) saved with save_pretrained judges through transformers."""
    import sys
    from pathlib import Path

    import transformers as tf

    sys.path.insert(0, str(Path(__file__).parent))
    import tiny

    torch.manual_seed(0)
    tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=300, n_positions=256)) \
        .save_pretrained(tmp_path)
    tiny.tokenizer().save_pretrained(tmp_path)
    s = rl.judge_accuracy(PREDS, DATA, str(tmp_path))
    assert s["judge"] == str(tmp_path) and s["judge_mode"] == "likelihood" and len(s["judged"]) == 3
    with pytest.raises(UserError, match="could not load the judge model"):
        rl.judge_accuracy(PREDS, DATA, str(tmp_path / "missing"))
