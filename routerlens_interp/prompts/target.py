"""The answer as the model would emit it: tokens after the generation prompt, and the end of the turn.

A chat template may put text between its generation prompt and the assistant's content (DeepSeek-V2-Chat's
generation prompt ends in ``Assistant:`` and its assistant turn renders ``Assistant: {answer}``), so the
answer's first token is the one the model needs after the prompt (``ĠParis``), not the answer tokenised
alone (``Paris``). :func:`target_tokens` therefore renders the whole conversation with the assistant turn,
checks that the rendering starts with the generation prompt, and takes the tokens after the prompt.

**Which tokens end the target.** The end of the target is the template's own text after the answer up to
and including its first special token (its end-of-turn token: ``<|endoftext|>`` for OLMoE-Instruct,
``<｜end▁of▁sentence｜>`` for DeepSeek-V2-Chat, ``</s>`` for Mixtral-Instruct, ``<|im_end|>`` for ChatML
templates): that is the token a model stops its turn with, so training puts it in the loss and decoding
stops at it. What a template renders after that token (e.g. ChatML's ``\\n``) is never generated and is not
part of the target. A template that renders no special token after the answer, and a model without a
chat template (the plain ``"\\n\\nAnswer:"`` prompt, the answer after one space), end with the tokenizer's
EOS, as the paper's code (``answer + eos_token``) does.
"""
from __future__ import annotations

from ..errors import UserError
from .templates import plain_target

__all__ = ["target_tokens", "special_ids", "end_of_turn_ids", "has_chat_template"]


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def special_ids(tokenizer) -> set[int]:
    """Ids of the tokenizer's special tokens (EOS, BOS, PAD, and every added token marked special)."""
    ids = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or []) if i is not None}
    for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(t, "special", False):
            ids.add(int(i))
    return ids


def _chat(tokenizer, user: str, answer: str | None) -> str:
    msgs = [{"role": "user", "content": user}]
    if answer is None:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": answer}], tokenize=False,
                                         add_generation_prompt=False)


def target_tokens(tokenizer, user: str, prompt_text: str, prompt_ids: list[int], answer: str) -> tuple[list[int], int]:
    """Tokens the model must emit after ``prompt_ids`` to answer ``answer`` and end its turn.

    Args:
        user: the user message (the paper's prompt body) that ``prompt_text`` renders.
        prompt_text: the rendered prompt (chat template with its generation prompt, or the plain prompt).
        prompt_ids: ``[P]`` the tokens of ``prompt_text`` as the model is given them.
        answer: the gold answer (surrounding white space is dropped: scoring strips it too).

    Returns:
        ``(target, n_answer)``: ``target`` = ``[n_answer + n_end]`` token ids; the first ``n_answer``
        are the answer's (with the white space the template puts before it), the rest end the turn
        (see the module docstring). ``prompt_ids + target`` is the conversation as the template renders it.

    Raises:
        UserError: the template's rendering with the assistant turn does not start with its generation
        prompt, changes the answer text, or puts other text than white space before the answer; or the
        tokens after the prompt cannot be split off the prompt's tokens.
    """
    answer = answer.strip()
    if not answer:
        raise UserError("the gold answer is empty; give a non-empty answer")
    chat = has_chat_template(tokenizer)
    if chat:
        full = _chat(tokenizer, user, answer)
        if not full.startswith(prompt_text):
            at = next((i for i, (a, b) in enumerate(zip(full, prompt_text)) if a != b), min(len(full), len(prompt_text)))
            raise UserError(f"the chat template renders the conversation with the answer as text that does not "
                            f"start with its generation prompt (they differ at character {at}: "
                            f"{prompt_text[at:at + 20]!r} vs {full[at:at + 20]!r}), so the answer's tokens cannot "
                            "be told apart from the prompt's; use a template whose assistant turn continues its "
                            "generation prompt")
    else:
        full = prompt_text + plain_target(answer)
    rest = full[len(prompt_text):]
    a = rest.find(answer)
    if a < 0:
        raise UserError(f"the chat template changed the answer text (rendered the assistant turn as {rest[:60]!r}, "
                        f"which does not contain {answer!r}); cannot locate the answer's tokens")
    if rest[:a].strip():
        raise UserError(f"the chat template puts {rest[:a]!r} between its generation prompt and the answer; the "
                        "toolkit's prompt ends at the generation prompt, so that text would be trained and scored "
                        "as answer: use a template whose generation prompt includes it")
    enc = tokenizer(full, add_special_tokens=not chat, return_offsets_mapping=True)
    ids, offs = [int(i) for i in enc["input_ids"]], [tuple(o) for o in enc["offset_mapping"]]
    P, shift = len(prompt_ids), len(prompt_text)
    if ids[:P] == [int(i) for i in prompt_ids]:
        tail, toffs = ids[P:], [(s - shift, e - shift) for s, e in offs[P:]]
    else:
        # The rendering's tokens across the prompt's end differ from the prompt's own (a merge over the
        # boundary): the model continues from prompt_ids, so tokenise the rest alone, if that gives the
        # same text back.
        enc = tokenizer(rest, add_special_tokens=False, return_offsets_mapping=True)
        tail, toffs = [int(i) for i in enc["input_ids"]], [tuple(o) for o in enc["offset_mapping"]]
        if tokenizer.decode(list(prompt_ids) + tail) != tokenizer.decode(ids):
            raise UserError("the tokens of the prompt followed by the answer differ from the tokens of the "
                            "rendered conversation (a token spans the end of the generation prompt), so the "
                            "answer cannot be given as tokens after the prompt; use a template whose generation "
                            "prompt ends at a token boundary")
    a_end = a + len(answer)
    n_answer = next((i for i, (s, _) in enumerate(toffs) if s >= a_end), len(tail))
    if n_answer == 0:
        raise UserError(f"the answer {answer!r} gave no tokens after the prompt; check the tokenizer")
    specials = special_ids(tokenizer)
    end = next((j for j in range(n_answer, len(tail)) if tail[j] in specials), None)
    if end is not None:
        return tail[:end + 1], n_answer
    eos = getattr(tokenizer, "eos_token_id", None)
    return tail[:n_answer] + ([int(eos)] if eos is not None else []), n_answer


def end_of_turn_ids(tokenizer) -> list[int]:
    """Token ids a turn ends with: EOS plus the special token(s) the chat template puts after an answer
    (found by rendering a probe conversation); decoding stops at any of them."""
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    if has_chat_template(tokenizer):
        user = "Answer the following question.\n\nQuestion:\nWhere was Alice born?"
        prompt = _chat(tokenizer, user, None)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        try:
            target, n = target_tokens(tokenizer, user, prompt, prompt_ids, "Paris")
        except UserError:
            return ids  # such a template is refused when an example is encoded, with the reason
        specials = special_ids(tokenizer)
        ids += [t for t in target[n:] if t in specials and t not in ids]
    return ids
