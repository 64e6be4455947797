"""Batched greedy evaluation: equals one-at-a-time, stops at EOS/newline, scores with SQuAD EM/F1."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

import routerlens_interp as rl  # noqa: E402
from routerlens_interp.evaluation import generate, stop_token_ids  # noqa: E402

DATA = [
    rl.QAExample("Alice Smith was born in 1950 in Paris.", "Where was Alice born?", ["Paris"], memory_answer="Rome"),
    rl.QAExample("Bob lives in Rome and paints.", "Where does Bob live?", ["Rome"]),
    rl.QAExample("The baker Carol works in a small shop in Berlin near the river.", "Who works in Berlin?",
                 ["Carol"], memory_answer="Dan"),
    rl.QAExample("", "Where was Alice born?", ["Paris"]),
]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return rl.load(tiny.save("olmoe", tmp_path_factory.mktemp("olmoe")))


def _greedy_one(lm, ex, max_new):
    """Independent greedy loop without cache or padding."""
    ids = lm.encode(ex).input_ids[None]
    stops = set(stop_token_ids(lm))
    out = []
    for _ in range(max_new):
        nxt = int(lm.hf(input_ids=ids).logits[0, -1].argmax())
        if nxt in stops:
            break
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return lm.tokenizer.decode(out, skip_special_tokens=True).split("\n")[0].strip()


def test_batched_equals_one_at_a_time_and_independent_loop(lm):
    batched = generate(lm, DATA, max_new_tokens=6, batch_size=4)
    single = [generate(lm, [ex], max_new_tokens=6, batch_size=1)[0] for ex in DATA]
    assert batched == single
    with torch.no_grad():
        assert batched == [_greedy_one(lm, ex, 6) for ex in DATA]


def test_stop_tokens_contain_eos_and_newlines(lm):
    stops = stop_token_ids(lm)
    assert lm.tokenizer.eos_token_id in stops
    assert all("\n" in lm.tokenizer.decode([i]) for i in stops if i != lm.tokenizer.eos_token_id)
    assert lm.tokenizer.encode("\n", add_special_tokens=False)[0] in stops


def test_evaluate_scores_match_metrics(lm, monkeypatch):
    import routerlens_interp.evaluation as ev

    fake = ["paris", "the Rome", "Dan", "London"]
    monkeypatch.setattr(ev, "generate", lambda *a, **k: list(fake))
    s = rl.evaluate(lm, DATA)
    assert s["n"] == 4 and s["predictions"] == fake
    assert s["em"] == pytest.approx(50.0)  # paris, the Rome
    assert s["memory_rate"] == pytest.approx(50.0)  # Dan matches memory of ex 3; ex 1 does not
    with pytest.raises(ValueError):
        rl.evaluate(lm, [])


def test_evaluate_under_mask_changes_nothing_outside(lm):
    before = rl.evaluate(lm, DATA, max_new_tokens=4)["predictions"]
    with rl.mask_experts(lm, {0: [0, 1, 2]}):
        rl.evaluate(lm, DATA, max_new_tokens=4)
    assert rl.evaluate(lm, DATA, max_new_tokens=4)["predictions"] == before
