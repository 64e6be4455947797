"""The answer's tokens are what the model would emit under its chat template (issue 20, item 2).

Checked on a real byte-level BPE tokenizer under templates shaped like OLMoE-Instruct's, DeepSeek-V2-Chat's and
Mixtral-Instruct's (``chat_templates.py``), against the template's own rendering of the whole conversation.
"""
from __future__ import annotations

import copy

import pytest

import chat_templates as ct
import routerlens_interp as rl
from routerlens_interp.errors import UserError
from routerlens_interp.prompts import encode, render

REC = ct.NQ_SWAP[0]
EX = rl.QAExample(REC["context"], REC["question"], [REC["answer"]], REC["memory_answer"])


@pytest.fixture(scope="module", params=list(ct.TEMPLATES))
def named_tok(request):
    return request.param, ct.tokenizer(request.param)


def test_fixture_templates_render_their_public_shape(named_tok):
    name, tok = named_tok
    got = tok.apply_chat_template([{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}],
                                  tokenize=False)
    assert got == ct.TEMPLATES[name][4]


def test_answer_tokens_follow_the_template(named_tok):
    name, tok = named_tok
    enc = encode(tok, EX, with_answer=True)
    user = ct.PROMPT.format(context=EX.context, question=EX.question)
    # independent: the template's rendering of the conversation with the assistant turn, tokenised whole
    full = tok.apply_chat_template([{"role": "user", "content": user}, {"role": "assistant", "content": EX.answer}],
                                   tokenize=False)
    full_ids = tok(full, add_special_tokens=False)["input_ids"]
    assert enc.input_ids.tolist() == full_ids  # prompt + answer + end = the conversation as rendered
    assert tok.decode(enc.input_ids.tolist()) == full
    # the generation prompt is a prefix: the model is given exactly enc.input_ids[:prompt_len]
    gen = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    assert enc.input_ids[:enc.prompt_len].tolist() == tok(gen, add_special_tokens=False)["input_ids"]
    first = tok.convert_ids_to_tokens(int(enc.answer_ids[0]))
    if name == "olmoe":  # "<|assistant|>\n" then the answer: no space before it
        assert first == "R" and tok.decode(enc.answer_ids.tolist()) == "Rome"
    else:  # DeepSeek's "Assistant:" + " Rome", Mixtral's "[/INST]" + " Rome": the first token carries the space
        assert first == "ĠR" and tok.decode(enc.answer_ids.tolist()) == " Rome"
    assert enc.input_ids[enc.answer].tolist() == enc.answer_ids.tolist()
    # the target ends with the template's end-of-turn token, which is EOS for all three
    assert enc.input_ids[enc.end].tolist() == [tok.eos_token_id] and enc.end.tolist() == [len(enc.input_ids) - 1]
    from routerlens_interp.prompts.target import end_of_turn_ids

    assert end_of_turn_ids(tok) == [tok.eos_token_id]


def test_end_of_turn_token_other_than_eos():
    """ChatML: the turn ends with <|im_end|> (then a newline that is never generated); EOS is another token."""
    tok = ct.tokenizer("olmoe")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    tok.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                         "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    enc = encode(tok, EX, with_answer=True)
    assert enc.input_ids[enc.end].tolist() == [im_end]
    assert tok.decode(enc.answer_ids.tolist()) == "Rome"
    from routerlens_interp.prompts.target import end_of_turn_ids

    assert sorted(end_of_turn_ids(tok)) == sorted([tok.eos_token_id, im_end])


def test_template_without_an_end_token_ends_with_eos():
    tok = ct.tokenizer("olmoe")
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    enc = encode(tok, EX, with_answer=True)
    assert tok.decode(enc.answer_ids.tolist()) == "Rome" and enc.input_ids[enc.end].tolist() == [tok.eos_token_id]


def test_no_template_is_the_plain_concatenation():
    tok = ct.tokenizer("olmoe")
    tok.chat_template = None
    enc = encode(tok, EX, with_answer=True)
    text = render(tok, EX)[0]
    assert text.endswith("\n\nAnswer:")
    ids = tok(text + " " + EX.answer, add_special_tokens=True)["input_ids"]
    assert enc.input_ids.tolist() == ids + [tok.eos_token_id]
    assert tok.decode(enc.answer_ids.tolist()) == " Rome"


@pytest.mark.parametrize("template,why", [
    # the assistant turn does not continue the generation prompt
    ("{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n\n{% else %}ASSISTANT: "
     "{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}",
     "generation prompt"),
    # text other than white space between the generation prompt and the answer
    ("{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n\n{% else %}Assistant: Sure! "
     "{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}",
     "between its generation prompt and the answer"),
    # the answer's text is changed
    ("{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n\n{% else %}Assistant: "
     "{{ m['content'] | upper }}{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant:"
     "{% endif %}", "changed the answer"),
])
def test_templates_that_hide_the_answer_are_refused(template, why):
    tok = copy.deepcopy(ct.tokenizer("deepseek"))
    tok.chat_template = template
    with pytest.raises(UserError, match=why):
        encode(tok, EX, with_answer=True)


def test_a_generation_prompt_whose_tokens_merge_with_the_answer_turn():
    """Generation prompt ending in a space ("Assistant: "): alone its last token is "Ġ"; followed by the answer,
    GPT-2's splitting gives "ĠR", "ome". The model is given the prompt's own tokens, so the target is what
    follows them: the rest of the rendering tokenised alone ("R", "ome", EOS)."""
    tok = ct.tokenizer("deepseek")
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}"
                         "{% else %}\n\nAssistant: {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}\n\nAssistant: {% endif %}")
    enc = encode(tok, EX, with_answer=True)
    gen = tok.apply_chat_template([{"role": "user", "content": ct.PROMPT.format(context=EX.context,
                                                                               question=EX.question)}],
                                  tokenize=False, add_generation_prompt=True)
    gen_ids = tok(gen, add_special_tokens=False)["input_ids"]
    full_ids = tok(gen + EX.answer + tok.eos_token, add_special_tokens=False)["input_ids"]
    assert full_ids[:len(gen_ids)] != gen_ids  # the case this test is about
    assert enc.input_ids[:enc.prompt_len].tolist() == gen_ids
    assert enc.input_ids[enc.prompt_len:].tolist() == tok("Rome" + tok.eos_token, add_special_tokens=False)["input_ids"]
    assert tok.decode(enc.answer_ids.tolist()) == "Rome"
    assert tok.decode(enc.input_ids.tolist()) == tok.decode(full_ids)
