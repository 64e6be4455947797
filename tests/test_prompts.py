"""Prompts with spans: positions point at the right text, truncation, chat templates."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

import routerlens_interp as rl
from routerlens_interp.prompts import encode, pad_batch

EX = rl.QAExample("Alice Smith was born in Paris. Later Paris became her home; she is a baker.",
                  "Where was Alice Smith born?", ["Paris"])
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture(scope="module")
def tok(load_tiny):
    return load_tiny("olmoe").tokenizer


def _runs(pos: torch.Tensor) -> list[list[int]]:
    """Split sorted positions into runs of consecutive ones."""
    out: list[list[int]] = []
    for p in pos.tolist():
        if out and p == out[-1][-1] + 1:
            out[-1].append(p)
        else:
            out.append([p])
    return out


def _check_spans(tok, enc, ex):
    dec = lambda pos: tok.decode(enc.input_ids[pos].tolist())
    assert _runs(enc.context) == [enc.context.tolist()]  # one contiguous run
    assert dec(enc.context).strip() == ex.context
    assert dec(enc.question).strip() == ex.question
    assert enc.context.max() < enc.question.min() < enc.prompt_len
    for run in _runs(enc.answer_in_context):
        assert dec(run).strip() == ex.answer
    assert tok.decode(enc.input_ids[:enc.prompt_len].tolist()) == enc.text


def test_spans_plain(tok):
    enc = encode(tok, EX, max_length=128)
    _check_spans(tok, enc, EX)
    assert len(_runs(enc.answer_in_context)) == 2  # "Paris" occurs twice in the context
    assert enc.text.endswith("Answer:")
    assert enc.last_prompt == enc.prompt_len - 1 == len(enc.input_ids) - 1
    assert not enc.truncated and len(enc.answer) == 0
    full = encode(tok, EX, with_answer=True, max_length=128)
    assert torch.equal(full.input_ids[:full.prompt_len], enc.input_ids)
    assert tok.decode(full.input_ids[full.answer].tolist()) == " Paris"
    assert torch.equal(full.input_ids[full.answer], full.answer_ids)
    assert full.input_ids[-1] == tok.eos_token_id and full.answer.max() == len(full.input_ids) - 2
    for name in ("context", "question", "answer_in_context", "answer"):
        assert torch.equal(full.span(name), getattr(full, name))
    assert torch.equal(full.span("prompt"), torch.arange(full.prompt_len))
    # "all" is prompt + answer without the end token (what the paper counts); "sequence" is everything
    assert torch.equal(full.span("all"), torch.arange(len(full.input_ids) - 1))
    assert torch.equal(full.span("end"), torch.tensor([len(full.input_ids) - 1]))
    assert len(full.span("sequence")) == len(full.input_ids)
    with pytest.raises(ValueError):
        full.span("nope")


def test_answer_absent_from_context(tok):
    ex = rl.QAExample("Bob lives in Rome.", "Where was Alice born?", ["Paris"])
    enc = encode(tok, ex)
    assert enc.answer_in_context.numel() == 0 and enc.answer_in_context.dtype == torch.long
    _check_spans(tok, enc, ex)
    closed = encode(tok, rl.QAExample("", "Where was Alice born?", ["Paris"]))
    assert closed.context.numel() == 0 and "Context" not in closed.text
    assert tok.decode(closed.input_ids[closed.question].tolist()).strip() == "Where was Alice born?"


def test_truncation_warns_and_fits(tok):
    long_ctx = " ".join(f"Fact {i}: Bob lives in Rome." for i in range(60)) + " Alice was born in Paris."
    ex = rl.QAExample(long_ctx, "Where does Bob live?", ["Rome"])
    with pytest.warns(UserWarning, match="truncated"):
        enc = encode(tok, ex, with_answer=True, max_length=128)
    assert enc.truncated
    assert len(enc.input_ids) <= 128
    assert len(enc.input_ids) >= 120  # not cut more than needed
    ctx = tok.decode(enc.input_ids[enc.context].tolist()).strip()
    assert long_ctx.startswith(ctx) and len(ctx) < len(long_ctx)
    assert tok.decode(enc.input_ids[enc.question].tolist()).strip() == ex.question
    assert tok.decode(enc.input_ids[enc.answer].tolist()) == " Rome"
    for run in _runs(enc.answer_in_context):
        assert tok.decode(enc.input_ids[run].tolist()).strip() == "Rome"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encode(tok, EX, max_length=128)  # short prompts do not warn


def test_prompt_that_cannot_fit_raises(tok):
    q = "Where " * 200 + "?"
    with pytest.raises(ValueError, match="window"):
        encode(tok, rl.QAExample("", q, ["x"]), max_length=128)
    with pytest.raises(ValueError, match="window"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encode(tok, rl.QAExample("Bob lives in Rome.", q, ["x"]), max_length=128)


def test_model_window_used(load_tiny):
    lm = load_tiny("mixtral")
    assert lm.window == 128
    ex = rl.QAExample(" ".join(["Bob lives in Rome."] * 80), "Where does Bob live?", ["Rome"])
    with pytest.warns(UserWarning, match="truncated"):
        enc = lm.encode(ex)
    assert len(enc.input_ids) <= 128


def test_chat_template(tok):
    t = copy.deepcopy(tok)
    t.chat_template = CHAT
    enc = encode(t, EX, with_answer=True)
    assert enc.text.startswith("<|user|>\nBased on the context below") and enc.text.endswith("<|assistant|>\n")
    _check_spans(t, enc, EX)
    assert t.decode(enc.input_ids[enc.answer].tolist()) == "Paris"  # no leading space after a chat template
    assert enc.input_ids[-1] == t.eos_token_id
    with pytest.raises(ValueError, match="chat template"):
        bad = copy.deepcopy(tok)
        bad.chat_template = "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"
        encode(bad, EX)


def test_pad_batch_sides(tok):
    a, b = encode(tok, EX), encode(tok, rl.QAExample("Bob lives in Rome.", "Where?", ["Rome"]))
    for side in ("right", "left"):
        batch = pad_batch([a, b], tok.pad_token_id, side)
        T = batch["input_ids"].shape[1]
        assert T == max(len(a.input_ids), len(b.input_ids))
        for i, e in enumerate((a, b)):
            o = int(batch["offsets"][i])
            n = len(e.input_ids)
            assert torch.equal(batch["input_ids"][i, o:o + n], e.input_ids)
            assert batch["attention_mask"][i].sum() == n and batch["attention_mask"][i, o:o + n].all()
            assert (o == 0) if side == "right" else (o == T - n)
