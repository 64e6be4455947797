"""Prompt text: the paper's open-book template, a closed-book variant, and the answer suffix.

Kept apart from token-level encoding (``routerlens_interp.prompts``) so that data generators (the toy world) can
render exactly the text a model is evaluated on without loading a model.
"""
from __future__ import annotations

OPEN_BOOK = (
    "Based on the context below, output the correct answer for the following question.\n\n"
    "Context:\n{context}\n\nQuestion:\n{question}"
)
CLOSED_BOOK = "Answer the following question.\n\nQuestion:\n{question}"
# Models without a chat template get this suffix; the answer follows after one space.
PLAIN_SUFFIX = "\n\nAnswer:"


def prompt_body(context: str, question: str) -> str:
    """The user message: the paper's template, or the closed-book one when ``context`` is empty."""
    if context:
        return OPEN_BOOK.format(context=context, question=question)
    return CLOSED_BOOK.format(question=question)


def plain_prompt(context: str, question: str) -> str:
    """Full prompt text for a model with no chat template (the bundled toy model)."""
    return prompt_body(context, question) + PLAIN_SUFFIX


def plain_target(answer: str) -> str:
    """Text appended after :func:`plain_prompt` for training (EOS is added as a token)."""
    return " " + answer
