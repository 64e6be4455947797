"""QA example → prompt tokens with spans (context, question, answer-in-context, last prompt position).

Spans come from the fast tokenizer's character offsets, so they are exact for any tokenizer. The
prompt is the paper's template (``templates.py``), wrapped in the model's chat template when it has
one; otherwise the plain ``"\\n\\nAnswer:"`` suffix is appended and the answer follows after a space.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

import torch

from .errors import UserError
from .examples import QAExample
from .templates import OPEN_BOOK, PLAIN_SUFFIX, plain_target, prompt_body


@dataclass
class Encoded:
    """One encoded example.

    Attributes:
        input_ids: ``[T]`` prompt tokens, followed by answer tokens + EOS when encoded ``with_answer``.
        prompt_len: number of prompt tokens; ``last_prompt = prompt_len - 1`` predicts the first answer token.
        context, question: ``[n]`` long tensors of token positions inside the prompt.
        answer_in_context: ``[m]`` positions of the tokens of every gold-answer occurrence in the context
            (empty when the answer does not occur there).
        answer: ``[a]`` positions of the answer tokens (only ``with_answer``; EOS excluded).
        answer_ids: ``[a]`` token ids of the first gold answer as the model should produce it.
        truncated: the context was shortened to fit the window.
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

    @property
    def last_prompt(self) -> int:
        return self.prompt_len - 1

    def span(self, name: str) -> torch.Tensor:
        """Positions of span ``name`` ∈ {context, question, answer_in_context, answer, prompt, all}."""
        if name == "prompt":
            return torch.arange(self.prompt_len)
        if name == "all":
            return torch.arange(len(self.input_ids))
        if name in ("context", "question", "answer_in_context", "answer"):
            return getattr(self, name)
        raise ValueError(f"unknown span {name!r}; use context, question, answer_in_context, answer, prompt or all")


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


def encode(tokenizer, example: QAExample, with_answer: bool = False, max_length: int | None = None) -> Encoded:
    """Tokenize ``example`` into an :class:`Encoded` with spans.

    Contexts that do not fit ``max_length`` (the model's window) are truncated from the end of the
    context only, with a warning; a prompt that does not fit even without context raises ValueError.
    """
    truncated = False
    ex = example
    chat = bool(getattr(tokenizer, "chat_template", None))
    ans_ids = tokenizer((example.answer if chat else plain_target(example.answer)),
                        add_special_tokens=False)["input_ids"]
    while True:
        text, ctx_start, q_start = render(tokenizer, ex)
        enc = tokenizer(text, add_special_tokens=not chat, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        total = len(ids) + (len(ans_ids) + 1 if with_answer else 0)
        if max_length is None or total <= max_length:
            break
        if not ex.context:
            if with_answer and len(ids) <= max_length:  # the question fits: the answer is what does not
                raise UserError(f"the gold answer is {len(ans_ids)} tokens (+ EOS); after the {len(ids)}-token "
                                f"prompt it does not fit the model's window of {max_length} even without the "
                                f"context; shorten the answer")
            raise UserError(f"the prompt is {len(ids)} tokens even without its context, longer than the model's "
                            f"window of {max_length}; shorten the question")
        excess = total - max_length
        ctx_tok = _positions(offsets, ctx_start, ctx_start + len(ex.context))
        keep = max(len(ctx_tok) - excess - 1, 0)
        cut = offsets[ctx_tok[keep]][0] - ctx_start if keep < len(ctx_tok) else len(ex.context)
        ex = QAExample(ex.context[:max(cut, 0)].rstrip(), ex.question, ex.answers, ex.memory_answer, ex.id, ex.meta)
        truncated = True
    if truncated:
        warnings.warn(f"context truncated from {len(example.context)} to {len(ex.context)} characters to fit the "
                      f"model window of {max_length} tokens", stacklevel=2)
    ctx = _positions(offsets, ctx_start, ctx_start + len(ex.context)) if ex.context else []
    qst = _positions(offsets, q_start, q_start + len(ex.question))
    ans_ctx: list[int] = []
    for a, b in answer_occurrences(ex.context, example.answers):
        ans_ctx.extend(_positions(offsets, ctx_start + a, ctx_start + b))
    if not ids:
        raise UserError("the tokenizer turned the prompt into no tokens (a model directory without tokenizer "
                        "files?); save the base model's tokenizer into it (tokenizer.save_pretrained(DIR))")
    prompt_len = len(ids)
    if with_answer:
        eos = tokenizer.eos_token_id
        ids = ids + list(ans_ids) + ([eos] if eos is not None else [])
        answer = list(range(prompt_len, prompt_len + len(ans_ids)))
    else:
        answer = []
    lt = lambda xs: torch.tensor(sorted(set(xs)), dtype=torch.long)
    return Encoded(torch.tensor(ids, dtype=torch.long), prompt_len, lt(ctx), lt(qst), lt(ans_ctx), lt(answer),
                   torch.tensor(ans_ids, dtype=torch.long), truncated, text, example)


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
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # truncation is allowed; its warning comes with the run
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
