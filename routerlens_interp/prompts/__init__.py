"""QA example → prompt tokens with spans (context, question, answer-in-context, last prompt position).

Spans come from the fast tokenizer's character offsets, so they are exact for any tokenizer. The
prompt is the paper's template (``prompts.templates``), wrapped in the model's chat template when it has
one; otherwise the plain ``"\\n\\nAnswer:"`` suffix is appended and the answer follows after a space.
The answer's tokens are those the template renders after the prompt, ended by the template's
end-of-turn token (``prompts.target``). Contexts too long for the window are cut around the answer.
"""
from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..examples import QAExample
from .target import has_chat_template, target_tokens
from .templates import OPEN_BOOK, PLAIN_SUFFIX, prompt_body

_EMPTY = lambda: torch.zeros(0, dtype=torch.long)  # noqa: E731


@dataclass
class Encoded:
    """One encoded example.

    Attributes:
        input_ids: ``[T]`` prompt tokens, followed by the answer tokens and the end-of-turn token(s)
            when encoded ``with_answer`` (``T = prompt_len + len(answer) + len(end)``).
        prompt_len: number of prompt tokens; ``last_prompt = prompt_len - 1`` predicts the first answer token.
        context, question: ``[n]`` long tensors of token positions inside the prompt.
        answer_in_context: ``[m]`` positions of the tokens of every gold-answer occurrence in the context
            (empty when the answer does not occur there).
        answer: ``[a]`` positions of the answer tokens (only ``with_answer``; the end token(s) excluded).
        answer_ids: ``[a]`` token ids of the first gold answer as the model would emit them after the
            prompt (``ĠParis`` after ``Assistant:``); ``answer_ids[0]`` is what the last prompt position predicts.
        truncated: the context was shortened to fit the window.
        end: ``[e]`` positions of the tokens that end the answer's turn (the template's end-of-turn token,
            or EOS; only ``with_answer``): in the training loss, not in expert counts.
    """

    input_ids: torch.Tensor
    prompt_len: int
    context: torch.Tensor
    question: torch.Tensor
    answer_in_context: torch.Tensor
    answer: torch.Tensor
    answer_ids: torch.Tensor
    truncated: bool = False
    text: str = ""
    example: QAExample | None = field(default=None, repr=False)
    end: torch.Tensor = field(default_factory=_EMPTY)

    @property
    def last_prompt(self) -> int:
        return self.prompt_len - 1

    def span(self, name: str) -> torch.Tensor:
        """Positions of span ``name``: ``context``, ``question``, ``answer_in_context``, ``answer``,
        ``end``, ``prompt``, ``all`` (prompt + answer, without the end token(s): what the paper counts)
        or ``sequence`` (every position, end included)."""
        if name == "prompt":
            return torch.arange(self.prompt_len)
        if name == "all":
            return torch.arange(self.prompt_len + len(self.answer))
        if name == "sequence":
            return torch.arange(len(self.input_ids))
        if name in ("context", "question", "answer_in_context", "answer", "end"):
            return getattr(self, name)
        raise ValueError(f"unknown span {name!r}; use context, question, answer_in_context, answer, end, prompt, "
                         "all or sequence")


def render(tokenizer, example: QAExample) -> tuple[str, int, int]:
    """→ (prompt text, char offset of the context in it, char offset of the question in it)."""
    body = prompt_body(example.context, example.question)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                             add_generation_prompt=True)
        start = text.find(body)
        if start < 0:
            raise ValueError("the chat template changed the prompt text; cannot locate spans")
    else:
        text, start = body + PLAIN_SUFFIX, 0
    ctx = start + (OPEN_BOOK.index("{context}") if example.context else 0)
    return text, ctx, start + body.rindex(example.question)


def _positions(offsets: list[tuple[int, int]], lo: int, hi: int) -> list[int]:
    return [i for i, (a, b) in enumerate(offsets) if b > lo and a < hi and b > a]


def answer_occurrences(context: str, answers: list[str]) -> list[tuple[int, int]]:
    """Character ranges of every gold answer inside ``context`` (case-insensitive fallback)."""
    out = []
    for ans in answers:
        if not ans:
            continue
        hits = [(m.start(), m.end()) for m in re.finditer(re.escape(ans), context)]
        if not hits:
            hits = [(m.start(), m.end()) for m in re.finditer(re.escape(ans), context, flags=re.IGNORECASE)]
        out.extend(hits)
    return sorted(set(out))


class TruncationTally:
    """Examples whose context was cut to fit, collected by :func:`truncation_report` (keyed by object id)."""

    def __init__(self, what: str, warn: bool):
        self.what, self.warn = what, warn
        self.seen: set[int] = set()
        self.truncated: dict[int, str] = {}  # id(example) → the token budget it was cut to fit, in words

    @property
    def n_truncated(self) -> int:
        return len(self.truncated)

    def message(self) -> str:
        fits = " / ".join(sorted(set(self.truncated.values())))
        return (f"{self.what + ': ' if self.what else ''}the context of {self.n_truncated} of {len(self.seen)} "
                f"examples was truncated to fit {fits}, keeping the part around the first gold answer")


_TALLIES: list[TruncationTally] = []


@contextmanager
def truncation_report(what: str = "", warn: bool = True):
    """Collect the truncations of every :func:`encode` inside the block into one :class:`TruncationTally`
    and, with ``warn``, report them in one warning at the end (instead of one warning per example).
    Nested blocks collect their own examples (the innermost one counts); ``warn=False`` keeps them quiet."""
    tally = TruncationTally(what, warn)
    _TALLIES.append(tally)
    try:
        yield tally
    finally:
        _TALLIES.remove(tally)
        if warn and tally.n_truncated:
            warnings.warn(tally.message(), stacklevel=3)


def _budget(max_length: int | None, reserve: int) -> str:
    if reserve:
        return f"{max_length - reserve} tokens (the model window of {max_length} less {reserve} for generated tokens)"
    return f"the model window of {max_length} tokens"


def _note(example, truncated: bool, max_length: int | None, reserve: int, before: int, after: int) -> None:
    if _TALLIES:
        t = _TALLIES[-1]
        t.seen.add(id(example))
        if truncated:
            t.truncated[id(example)] = _budget(max_length, reserve)
    elif truncated:
        warnings.warn(f"context truncated from {before} to {after} characters to fit {_budget(max_length, reserve)}, "
                      "keeping the part around the first gold answer", stacklevel=4)


def _cut_context(ex: QAExample, offsets, ctx_start: int, excess: int, answers: list[str], limit: int) -> str:
    """The context shortened by about ``excess`` tokens: cut from the end, or, where that would lose the
    first gold-answer occurrence, a window of the context around it."""
    ctx_tok = _positions(offsets, ctx_start, ctx_start + len(ex.context))
    keep = max(len(ctx_tok) - excess - 1, 0)  # one token of slack: the cut text re-tokenises
    occ = answer_occurrences(ex.context, answers)
    a0, a1 = occ[0] if occ else (0, 0)
    atok = [i for i, t in enumerate(ctx_tok) if offsets[t][1] > ctx_start + a0 and offsets[t][0] < ctx_start + a1]
    if not atok or keep >= len(ctx_tok):
        cut = offsets[ctx_tok[keep]][0] - ctx_start if keep < len(ctx_tok) else len(ex.context)
        return ex.context[:max(cut, 0)].rstrip()
    first, last = atok[0], atok[-1]
    if keep < last - first + 1:
        raise UserError(f"the context must be cut to {keep} tokens to fit {limit} tokens, fewer than its gold "
                        f"answer's {last - first + 1}; the example cannot keep its answer in its context: shorten "
                        "the question or drop the record")
    if last < keep:  # cutting from the end keeps the answer
        s = 0
    else:  # centre the answer in the kept window
        s = max(0, min(first - (keep - (last - first + 1)) // 2, len(ctx_tok) - keep))
    lo = offsets[ctx_tok[s]][0] - ctx_start
    hi = offsets[ctx_tok[s + keep - 1]][1] - ctx_start
    return ex.context[max(lo, 0):hi].strip()


def encode(tokenizer, example: QAExample, with_answer: bool = False, max_length: int | None = None,
           reserve: int = 0) -> Encoded:
    """Tokenize ``example`` into an :class:`Encoded` with spans.

    The answer tokens are those the model's own template gives after the prompt
    (:func:`~routerlens_interp.prompts.target.target_tokens`: ``ĠParis`` after DeepSeek-V2-Chat's
    ``Assistant:``), followed with ``with_answer`` by the end-of-turn token(s) (EOS without a template).

    Args:
        max_length: the token budget (the model's window); ``None``: no limit.
        reserve: tokens to leave free after the prompt inside ``max_length`` (generation's new tokens).

    A context that does not fit ``max_length - reserve`` (with the answer and its end, ``with_answer``)
    is truncated: cut from its end, or, where that would cut out the first gold-answer occurrence, to a
    window of the context around it. One warning per example, or one per block inside
    :func:`truncation_report`. A prompt that does not fit even without its context raises UserError.
    """
    truncated = False
    ex = example
    chat = has_chat_template(tokenizer)
    limit = None if max_length is None else max_length - reserve
    if limit is not None and limit < 1:
        raise UserError(f"the model's window of {max_length} tokens leaves no room for a prompt after keeping "
                        f"{reserve} tokens free for generation; lower the number of new tokens (--max-new-tokens)")
    while True:
        text, ctx_start, q_start = render(tokenizer, ex)
        enc = tokenizer(text, add_special_tokens=not chat, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        if not ids:
            raise UserError("the tokenizer turned the prompt into no tokens (a model directory without tokenizer "
                            "files?); save the base model's tokenizer into it (tokenizer.save_pretrained(DIR))")
        if example.answer.strip() or with_answer:
            target, n_ans = target_tokens(tokenizer, prompt_body(ex.context, ex.question), text, ids, example.answer)
        else:
            target, n_ans = [], 0
        total = len(ids) + (len(target) if with_answer else 0)
        if limit is None or total <= limit:
            break
        room = f"the model's window of {max_length}" + (f" less {reserve} new tokens" if reserve else "")
        if not ex.context:
            if with_answer and len(ids) <= limit:  # the question fits: the answer is what does not
                raise UserError(f"the gold answer is {n_ans} tokens (+ {len(target) - n_ans} to end it); after the "
                                f"{len(ids)}-token prompt it does not fit {room} even without the context; "
                                "shorten the answer")
            raise UserError(f"the prompt is {len(ids)} tokens even without its context, longer than {room}; "
                            "shorten the question")
        cut = _cut_context(ex, offsets, ctx_start, total - limit, example.answers, limit)
        ex = QAExample(cut, ex.question, ex.answers, ex.memory_answer, ex.id, ex.meta)
        truncated = True
    _note(example, truncated, max_length, reserve, len(example.context), len(ex.context))
    ctx = _positions(offsets, ctx_start, ctx_start + len(ex.context)) if ex.context else []
    qst = _positions(offsets, q_start, q_start + len(ex.question))
    ans_ctx: list[int] = []
    for a, b in answer_occurrences(ex.context, example.answers):
        ans_ctx.extend(_positions(offsets, ctx_start + a, ctx_start + b))
    prompt_len = len(ids)
    answer, end = [], []
    if with_answer:
        ids = ids + list(target)
        answer = list(range(prompt_len, prompt_len + n_ans))
        end = list(range(prompt_len + n_ans, prompt_len + len(target)))
    lt = lambda xs: torch.tensor(sorted(set(xs)), dtype=torch.long)
    return Encoded(torch.tensor(ids, dtype=torch.long), prompt_len, lt(ctx), lt(qst), lt(ans_ctx), lt(answer),
                   torch.tensor(target[:n_ans], dtype=torch.long), truncated, text, example, lt(end))


def pad_batch(encoded: list[Encoded], pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """Stack ``input_ids`` with padding → ``{"input_ids": [B, T], "attention_mask": [B, T]}``.

    Right padding keeps every example's positions as when run alone (tracing, training); left
    padding is for generation. ``offsets[b]`` is where example b starts (non-zero only for left).
    """
    T = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), T), dtype=torch.long)
    offsets = torch.zeros(len(encoded), dtype=torch.long)
    for b, e in enumerate(encoded):
        n = len(e.input_ids)
        o = T - n if side == "left" else 0
        ids[b, o:o + n] = e.input_ids
        mask[b, o:o + n] = 1
        offsets[b] = o
    return {"input_ids": ids, "attention_mask": mask, "offsets": offsets}


def check_tokenizer(tokenizer, where: str = "the model") -> None:
    """Refuse a tokenizer that cannot encode text (e.g. a model directory saved without its tokenizer
    files gets an empty stand-in that encodes everything to no tokens)."""
    probe = "Context:\nAlice was born in Paris.\n\nQuestion:\nWhere was Alice born?"
    try:
        ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
    except Exception as err:  # any failure here is the tokenizer files' fault, not the user's text
        raise UserError(f"{where}: its tokenizer cannot encode text ({type(err).__name__}: {err}); save the base "
                        "model's tokenizer into the model directory (tokenizer.save_pretrained(DIR))") from err
    if len(ids) == 0 or len(tokenizer) < 3:
        raise UserError(f"{where}: no usable tokenizer ({len(tokenizer)} tokens, encodes text to {len(ids)}); the "
                        "directory lacks tokenizer files (tokenizer.json / tokenizer_config.json): save the base "
                        "model's tokenizer into it (tokenizer.save_pretrained(DIR))")


def describe_example(example: QAExample, index: int) -> str:
    """``file, record i (id x)`` for a loaded example, or ``example i (id x)``."""
    src, rec = example.meta.get("source"), example.meta.get("record")
    where = f"{src}, record {rec}" if src and rec is not None else f"{src + ', ' if src else ''}example {index}"
    return where + (f" (id {example.id})" if example.id is not None and str(example.id) != str(rec) else "")


def check_examples(lm, examples, with_answer: bool = True) -> None:
    """Encode every example once, before a long run, and refuse the first that cannot be used.

    Raises :class:`UserError` naming the file, record index and id and what is wrong: an empty
    question, an empty answer, or a prompt (+ answer) that does not fit ``lm.window``. Warns (once,
    with the count and the first such record) about non-empty contexts that hold no gold answer.
    Costs one tokenization per example (no forward pass).
    """
    absent = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, QAExample):
            continue
        problem = None
        if not ex.question.strip():
            problem = "the question is empty"
        elif not all(a.strip() for a in ex.answers):
            problem = f"a gold answer is empty ({ex.answers!r})"
        else:
            try:
                with warnings.catch_warnings(), truncation_report(warn=False):
                    warnings.simplefilter("ignore")  # truncation is allowed; its count comes with the run
                    lm.encode(ex, with_answer=with_answer)
            except (ValueError, IndexError) as err:
                problem = str(err)
        if problem:
            raise UserError(f"{describe_example(ex, i)}: {problem}; fix or remove that record")
        if ex.context and ex.meta.get("task") != "summarization" and not answer_occurrences(ex.context, ex.answers):
            absent.append(describe_example(ex, i))
    if absent:
        warnings.warn(f"{len(absent)} of {len(examples)} examples have a context without any of their gold answers "
                      f"(first: {absent[0]}); context-QA data should hold the answer in the context", stacklevel=2)
