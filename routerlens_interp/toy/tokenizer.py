"""Byte-level BPE tokenizer for the toy world, trained with the ``tokenizers`` library.

The training texts hold every word of the world many times and BPE keeps merging until no pair
is left (``vocab_size`` is only an upper bound), so every name and value ends up a single token
(checked by ``single_token_report``). Any text still encodes (byte-level). No BOS is added
automatically and there is no chat template.
"""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_tokenizer(texts: list[str], vocab_size: int = 4096, min_frequency: int = 5) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it (eos = bos = ``<|endoftext|>``, pad = ``<|pad|>``)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD,
                                   unk_token=None, model_max_length=512, clean_up_tokenization_spaces=False)


def single_token_report(tokenizer, words: list[str]) -> list[str]:
    """The words of ``words`` that are NOT a single token when preceded by a space (empty = all good)."""
    return [w for w in words if len(tokenizer.encode(" " + w, add_special_tokens=False)) != 1]
