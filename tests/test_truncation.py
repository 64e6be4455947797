"""Truncation keeps the answer in the context, is counted once, and the length filter measures the untruncated
example (issue 20, item 6)."""
from __future__ import annotations

import json
import warnings

import pytest

import routerlens_interp as rl
from routerlens_interp.errors import UserError
from routerlens_interp.prompts import encode

FILLER = " ".join(f"Fact {i}: Bob lives in Rome." for i in range(30))


@pytest.fixture(scope="module")
def lm(load_tiny):
    return load_tiny("olmoe")


def _context_text(lm, enc) -> str:
    return lm.tokenizer.decode(enc.input_ids[enc.context].tolist()).strip()


@pytest.mark.parametrize("where", ["end", "middle", "start"])
def test_the_answer_stays_in_the_truncated_context(lm, where):
    ans = "Lisbon"
    sentence = f"Alice Smith was born in {ans}."
    half = FILLER[:len(FILLER) // 2].rsplit(" ", 1)[0]
    ctx = {"end": f"{FILLER} {sentence}", "middle": f"{half} {sentence} {FILLER}", "start": f"{sentence} {FILLER}"}[where]
    ex = rl.QAExample(ctx, "Where was Alice Smith born?", [ans])
    with pytest.warns(UserWarning, match="truncated"):  # one example outside a report block: its own warning
        enc = encode(lm.tokenizer, ex, with_answer=True, max_length=128)
    assert enc.truncated and len(enc.input_ids) <= 128
    assert len(enc.input_ids) >= 118  # cut no more than needed
    kept = _context_text(lm, enc)
    assert ans in kept and kept in ctx  # one window of the original context, holding the answer
    assert len(enc.answer_in_context) > 0
    assert lm.tokenizer.decode(enc.input_ids[enc.answer_in_context].tolist()).strip() == ans
    if where == "start":
        assert ctx.startswith(kept)  # cutting from the end kept it: nothing cut at the start


def test_without_the_answer_in_context_it_is_cut_from_the_end(lm):
    ex = rl.QAExample(FILLER, "Where was Alice born?", ["Paris"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = encode(lm.tokenizer, ex, with_answer=True, max_length=128)
    assert FILLER.startswith(_context_text(lm, enc))


def test_an_answer_that_cannot_be_kept_is_refused(lm):
    ans = " ".join(["Lisbon"] * 30)
    ex = rl.QAExample(f"{FILLER} Alice was born in {ans}.", "Where was Alice born?", [ans])
    with pytest.raises(UserError, match="cannot keep its answer"):
        encode(lm.tokenizer, ex, max_length=128)


def test_a_report_block_counts_quietly(lm):
    from routerlens_interp.prompts import truncation_report

    ex = rl.QAExample(f"{FILLER} Alice was born in Lisbon.", "Where was Alice born?", ["Lisbon"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with truncation_report(warn=False) as tally:
            encode(lm.tokenizer, ex, max_length=128)
            encode(lm.tokenizer, rl.QAExample("Bob lives in Rome.", "Where?", ["Rome"]), max_length=128)
    assert tally.n_truncated == 1 and len(tally.seen) == 2


def test_one_warning_with_the_count(lm):
    data = [rl.QAExample(f"{FILLER} Alice was born in Lisbon.", "Where was Alice born?", ["Lisbon"]),
            rl.QAExample("Bob lives in Rome.", "Where?", ["Rome"]),
            rl.QAExample(f"Carol lives in Oslo. {FILLER}", "Where does Carol live?", ["Oslo"])]
    with pytest.warns(UserWarning) as rec:
        c = rl.count_experts(lm, data, batch_size=2)
        c2 = rl.count_experts(lm, data * 2, batch_size=2)  # the same examples twice: counted once each
    msgs = [str(w.message) for w in rec if "truncated" in str(w.message)]
    assert msgs == [msgs[0]] * 2 and "count: the context of 2 of 3 examples" in msgs[0]
    assert c.n_tokens * 2 == c2.n_tokens


def test_max_tokens_measures_the_untruncated_example(lm, tmp_path):
    rows = [{"context": f"{FILLER} Alice was born in Lisbon.", "question": "Where was Alice born?", "answer": "Lisbon"},
            {"context": "Bob lives in Rome.", "question": "Where does Bob live?", "answer": "Rome"}]
    f = tmp_path / "d.json"
    f.write_text(json.dumps(rows))
    n_full = len(encode(lm.tokenizer, rl.QAExample(rows[0]["context"], rows[0]["question"], ["Lisbon"]),
                        with_answer=True).input_ids)
    assert n_full > 2 * lm.window  # the first record is far longer than the window
    with pytest.warns(UserWarning, match="dropped 1 of 2 examples longer than 128 tokens"):
        data = rl.load_dataset(f, max_tokens=lm.window, lm=lm)
    assert [ex.answer for ex in data] == ["Rome"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(rl.load_dataset(f, max_tokens=n_full, lm=lm)) == 2
