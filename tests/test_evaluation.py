"""Batched greedy evaluation: equals one-at-a-time, stops at EOS (or newline), scores with SQuAD EM/F1."""
import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

import routerlens_interp as rl  # noqa: E402
from routerlens_interp.evaluation.generate import generate, stop_token_ids  # noqa: E402

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


def _greedy_one(lm, ex, max_new, newline=False):
    """Independent greedy loop without cache or padding: the paper's rule (stop at EOS, strip), or the
    old one (also stop at a token holding a newline, keep the text before it)."""
    ids = lm.encode(ex, max_length=lm.window - max_new).input_ids[None]
    eos = lm.tokenizer.eos_token_id
    out = []
    for _ in range(max_new):
        nxt = int(lm.hf(input_ids=ids).logits[0, -1].argmax())
        if nxt == eos or (newline and "\n" in lm.tokenizer.decode([nxt])):
            if newline and nxt != eos:
                out.append(nxt)
            break
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    text = lm.tokenizer.decode(out, skip_special_tokens=True)
    return (text.split("\n")[0] if newline else text).strip()


def test_batched_equals_one_at_a_time_and_independent_loop(lm):
    for stop in ("eos", "newline"):
        batched = generate(lm, DATA, max_new_tokens=6, batch_size=4, stop=stop)
        single = [generate(lm, [ex], max_new_tokens=6, batch_size=1, stop=stop)[0] for ex in DATA]
        assert batched == single
        with torch.no_grad():
            assert batched == [_greedy_one(lm, ex, 6, newline=stop == "newline") for ex in DATA]


def test_stop_tokens(lm):
    eos = lm.tokenizer.eos_token_id
    assert stop_token_ids(lm) == [eos]  # no chat template: EOS only (the paper's rule)
    stops = stop_token_ids(lm, "newline")
    assert eos in stops
    assert all("\n" in lm.tokenizer.decode([i]) for i in stops if i != eos)
    assert lm.tokenizer.encode("\n", add_special_tokens=False)[0] in stops
    with pytest.raises(ValueError, match="stop rule"):
        stop_token_ids(lm, "comma")


def _fake_generate(lm, monkeypatch, new_text_tokens, seen=None):
    """``lm.hf.generate`` returning the prompt followed by ``new_text_tokens`` (token ids) for every row."""
    def fake(input_ids, attention_mask, max_new_tokens, eos_token_id, **kw):
        if seen is not None:
            seen.append((input_ids.shape[1], max_new_tokens, list(eos_token_id)))
        new = torch.tensor([new_text_tokens] * input_ids.shape[0])
        return torch.cat([input_ids, new[:, :max_new_tokens]], dim=1)
    monkeypatch.setattr(lm.hf, "generate", fake)


def test_first_token_with_a_newline_is_not_an_empty_answer(lm, monkeypatch):
    tok = lm.tokenizer
    nl = tok.encode("\n", add_special_tokens=False)
    paris = tok.encode("Paris", add_special_tokens=False)
    rome = tok.encode(" Rome", add_special_tokens=False)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    _fake_generate(lm, monkeypatch, nl + paris + [eos, pad, pad])
    assert generate(lm, DATA[:2]) == ["Paris", "Paris"]  # the paper: white space around the answer is stripped
    assert generate(lm, DATA[:2], stop="newline") == ["", ""]  # the old rule keeps the text before the newline
    _fake_generate(lm, monkeypatch, paris + nl + rome + [eos] + rome)
    assert generate(lm, DATA[:1]) == ["Paris\n Rome"]  # only EOS stops; what follows it is dropped
    assert rl.evaluate(lm, DATA[:1], stop="newline")["predictions"] == ["Paris"]


def test_decoding_stops_at_the_templates_end_of_turn_token(lm, monkeypatch):
    import copy

    tok = copy.deepcopy(lm.tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    tok.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                         "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end < lm.hf.config.vocab_size  # an id the tiny model can emit
    lm2 = copy.copy(lm)
    lm2.tokenizer, lm2._stop_ids = tok, {}
    seen = []
    _fake_generate(lm2, monkeypatch, tok.encode("Paris", add_special_tokens=False) + [im_end, 5, 6], seen)
    assert generate(lm2, [rl.QAExample("Bob is in Rome.", "Where?", ["Rome"])], max_new_tokens=4) == ["Paris"]
    assert set(seen[0][2]) == {tok.eos_token_id, im_end}


def test_generation_leaves_room_for_the_new_tokens(load_tiny, monkeypatch):
    """Issue 23.3: a context longer than the window is cut to window - max_new_tokens, and one warning
    gives the count."""
    lm = load_tiny("olmoe", fresh=True)
    assert lm.window == 128
    long_ctx = " ".join(f"Fact {i}: Bob lives in Rome." for i in range(40))
    data = [rl.QAExample(long_ctx, "Where does Bob live?", ["Rome"]),
            rl.QAExample(long_ctx + " Alice was born in Paris.", "Where was Alice born?", ["Paris"]),
            DATA[1]]
    seen = []
    _fake_generate(lm, monkeypatch, [5] * 40, seen)
    with pytest.warns(UserWarning) as rec:
        generate(lm, data, max_new_tokens=16, batch_size=1)
    msgs = [str(w.message) for w in rec if "truncated" in str(w.message)]
    assert len(msgs) == 1 and "2 of 3 examples" in msgs[0] and "112 tokens (the model window of 128 less 16" in msgs[0]
    assert max(n for n, _, _ in seen[:2]) >= 100  # cut no more than needed
    assert all(n + m <= lm.window for n, m, _ in seen)
    # the second example's answer sits at the end of its context: the kept window holds it
    enc = lm.encode(data[1], max_length=112)
    assert enc.truncated and len(enc.answer_in_context) and "Paris" in lm.tokenizer.decode(enc.input_ids[enc.context])
    with pytest.raises(ValueError, match="no room"):
        generate(lm, data, max_new_tokens=128)


def test_evaluate_scores_match_metrics(lm, monkeypatch):
    import routerlens_interp.evaluation.generate as ev

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


def test_on_batch_sees_each_batch_before_it_is_decoded(lm):
    """``on_batch(encoded, batch)``: every example once, in order, with the left-padded batch it is decoded in."""
    from routerlens_interp.prompts import encode

    seen = []
    preds = generate(lm, DATA, max_new_tokens=4, batch_size=3,
                     on_batch=lambda enc, batch: seen.append(([e.example for e in enc], batch["input_ids"].clone())))
    assert [ex for exs, _ in seen for ex in exs] == DATA and [len(exs) for exs, _ in seen] == [3, 1]
    for exs, ids in seen:
        for ex, row in zip(exs, ids):
            want = encode(lm.tokenizer, ex, max_length=getattr(lm, "window", None), reserve=4).input_ids
            assert torch.equal(row[len(row) - len(want):], want)  # left padded
    assert preds == generate(lm, DATA, max_new_tokens=4, batch_size=3)
