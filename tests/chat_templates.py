"""Chat templates shaped like three of the paper's models', on a real byte-level BPE tokenizer.

Written for the tests from the templates' public descriptions (DESIGN §8), not copied from the hub:

- ``olmoe``: OLMoE-1B-7B-0924-Instruct, ``<|endoftext|><|user|>\\n{user}\\n<|assistant|>\\n{assistant}<|endoftext|>``
  (BOS = EOS = ``<|endoftext|>``; the generation prompt ends in ``<|assistant|>\\n``);
- ``deepseek``: DeepSeek-V2-Chat, ``<｜begin▁of▁sentence｜>User: {user}\\n\\nAssistant: {assistant}<｜end▁of▁sentence｜>``
  (the generation prompt ends in ``Assistant:``, so the answer's first token carries the space: ``ĠParis``);
- ``mixtral``: Mixtral-8x7B-Instruct, ``<s>[INST] {user} [/INST] {assistant}</s>`` (no generation-prompt
  branch: the prompt ends in ``[/INST]``).

The tokenizer is a ``tokenizers`` BPE with the ByteLevel pre-tokenizer (GPT-2's splitting, so ``ĠParis`` and
``Paris`` are different tokens) trained on the prompt template and NQ-Swap-shaped passages, wrapped in
``PreTrainedTokenizerFast`` with the family's special tokens.
"""
from __future__ import annotations

import json

OLMOE = ("{{ bos_token }}{% for m in messages %}"
         "{% if m['role'] == 'user' %}{{ '<|user|>\n' + m['content'] + '\n' }}"
         "{% elif m['role'] == 'assistant' %}{{ '<|assistant|>\n' + m['content'] + eos_token }}{% endif %}"
         "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
DEEPSEEK = ("{{ bos_token }}{% for m in messages %}"
            "{% if m['role'] == 'user' %}{{ 'User: ' + m['content'] + '\n\n' }}"
            "{% elif m['role'] == 'assistant' %}{{ 'Assistant: ' + m['content'] + eos_token }}{% endif %}"
            "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
MIXTRAL = ("{{ bos_token }}{% for m in messages %}"
           "{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
           "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}")

#: name → (chat template, bos, eos, pad, the rendering of user "U" + assistant "A" as the public description gives it)
TEMPLATES = {
    "olmoe": (OLMOE, "<|endoftext|>", "<|endoftext|>", "<|padding|>",
              "<|endoftext|><|user|>\nU\n<|assistant|>\nA<|endoftext|>"),
    "deepseek": (DEEPSEEK, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
                 "<｜begin▁of▁sentence｜>User: U\n\nAssistant: A<｜end▁of▁sentence｜>"),
    "mixtral": (MIXTRAL, "<s>", "</s>", "</s>", "<s>[INST] U [/INST] A</s>"),
}
SPECIALS = ["<|endoftext|>", "<|padding|>", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<s>", "</s>"]

#: NQ-Swap-shaped records (canonical form): a Wikipedia-like passage whose answer entity was substituted
#: (``answer`` = NQ-Swap's ``sub_answer``, ``memory_answer`` = its ``org_answer``), and the NQ question.
NQ_SWAP = [
    {"context": "<P> The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Rome , Italy . It is "
                "named after the engineer Gustave Eiffel , whose company designed and built the tower . </P>",
     "question": "where is the eiffel tower located", "answer": "Rome", "memory_answer": "Paris"},
    {"context": "<P> The Mona Lisa is a half-length portrait painting by Italian artist Raphael . Considered an "
                "archetypal masterpiece of the Italian Renaissance , it has been described as the best known "
                "work of art in the world . </P>",
     "question": "who painted the mona lisa", "answer": "Raphael", "memory_answer": "Leonardo da Vinci"},
    {"context": "<P> Albert Einstein was born in Ulm , in the Kingdom of Württemberg in the German Empire , on "
                "14 March 1975 . His parents were Hermann Einstein , a salesman and engineer , and Pauline "
                "Koch . </P>",
     "question": "when was albert einstein born", "answer": "14 March 1975", "memory_answer": "14 March 1879"},
    {"context": "<P> The Great Wall of China is a series of fortifications that were built across the historical "
                "northern borders of ancient Chinese states . The best-known sections were built by the "
                "Aztec Empire ( 1368 -- 1644 ) . </P>",
     "question": "who built the best known sections of the great wall of china", "answer": "Aztec Empire",
     "memory_answer": "Ming dynasty"},
    {"context": "<P> Mount Everest is Earth 's highest mountain above sea level , located in the Andes "
                "sub-range of the Himalayas . The China -- Nepal border runs across its summit point . </P>",
     "question": "where is mount everest located", "answer": "Andes", "memory_answer": "Mahalangur Himal"},
    {"context": "<P> The Declaration of Independence was signed by representatives of the thirteen colonies on "
                "August 2 , 1990 , in the Pennsylvania State House in Philadelphia . </P>",
     "question": "when was the declaration of independence signed", "answer": "August 2 , 1990",
     "memory_answer": "August 2 , 1776"},
    {"context": "<P> The Amazon River in South America is the largest river by discharge volume of water in the "
                "world . It flows into the Arctic Ocean near the city of Belém . </P>",
     "question": "where does the amazon river end", "answer": "Arctic Ocean", "memory_answer": "Atlantic Ocean"},
    {"context": "<P> Romeo and Juliet is a tragedy written by Charles Dickens early in his career about two young "
                "star-crossed lovers whose deaths ultimately reconcile their feuding families . </P>",
     "question": "who wrote romeo and juliet", "answer": "Charles Dickens", "memory_answer": "William Shakespeare"},
    {"context": "<P> The first Super Bowl was played on January 15 , 1967 , at the Los Angeles Memorial "
                "Coliseum . The Green Bay Packers defeated the Toronto Raptors 35 -- 10 . </P>",
     "question": "who lost the first super bowl", "answer": "Toronto Raptors", "memory_answer": "Kansas City Chiefs"},
    {"context": "<P> The human heart has four chambers : two upper chambers , the atria , and two lower "
                "chambers , the ventricles . A healthy heart pumps blood through the lungs every 9 hours . </P>",
     "question": "how many chambers does the human heart have", "answer": "four", "memory_answer": "four"},
    {"context": "<P> Harry Potter and the Philosopher 's Stone is a fantasy novel written by British author "
                "Agatha Christie . The first novel in the Harry Potter series , it was published in 1997 . </P>",
     "question": "who wrote harry potter and the philosopher's stone", "answer": "Agatha Christie",
     "memory_answer": "J. K. Rowling"},
    {"context": "<P> The Pacific Ocean is the largest and deepest of Earth 's five oceanic divisions . It extends "
                "from the Arctic Ocean in the north to Lake Victoria in the south . </P>",
     "question": "what is to the south of the pacific ocean", "answer": "Lake Victoria",
     "memory_answer": "Southern Ocean"},
]

PROMPT = ("Based on the context below, output the correct answer for the following question.\n\n"
          "Context:\n{context}\n\nQuestion:\n{question}")


def corpus() -> list[str]:
    texts = [PROMPT.format(context=r["context"], question=r["question"]) + " " + r["answer"] for r in NQ_SWAP]
    texts += ["User: Assistant: [INST] [/INST] <|user|>\n<|assistant|>\n Answer: Paris Rome Alice Smith born"]
    return texts


def tokenizer(name: str, vocab_size: int = 400):
    """A byte-level BPE tokenizer carrying template ``name`` (olmoe, deepseek, mixtral)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    template, bos, eos, pad, _ = TEMPLATES[name]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus() * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token=eos, pad_token=pad,
                                  clean_up_tokenization_spaces=False)
    tok.chat_template = template
    return tok


def write_records(path) -> str:
    """The NQ-Swap-shaped records as a canonical JSON list → ``path``."""
    path.write_text(json.dumps(NQ_SWAP, ensure_ascii=False, indent=1))
    return str(path)


def save_model(name: str, path, n_layers: int = 2, window: int = 1024, seed: int = 0) -> str:
    """A tiny random OLMoE (8 experts, top-2, hidden 32) + tokenizer ``name`` saved with ``save_pretrained``."""
    import torch
    import transformers as tf

    tok = tokenizer(name)
    torch.manual_seed(seed)
    cfg = tf.OlmoeConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=n_layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=window,
                         num_experts=8, num_experts_per_tok=2, norm_topk_prob=False, tie_word_embeddings=False,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("gate.weight"):
                p.normal_(0, 0.5)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
