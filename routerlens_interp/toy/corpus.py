"""Pretraining documents for the toy model (text pairs ``(prompt, target)``; EOS is added later).

Document kinds (``KINDS``):

* ``memory``  closed-book QA about a memorised person: ``plain_prompt("", q)`` + ``" value"``.
* ``bio``     plain descriptive text: 3-5 true facts about a memorised person (no QA, target "").
* ``read``    open-book QA about an unseen person (fresh values; the context states the fact among
              0-3 distractors, often of the same type about other people): reading is the only way.
* ``known``   open-book QA about a memorised person with a *consistent* context (true facts only),
              which states the asked fact only with probability ``p_present``; otherwise it holds
              other facts about the person or other people. The answer is always the memorised value.
              No pretraining context ever contradicts a memorised fact.
* ``known_new`` open-book QA about a memorised person's *unmemorised* attribute (``EXTRA_ATTRIBUTES``,
              fresh value, stated in the context among true facts of the person, often of the same
              value type): reading is needed for memorised people too. Off by default.

A curriculum (``mixture(progress)``): during the first ``reading_warmup`` fraction of training only
``read`` documents are drawn, with 1-2 facts at first (a pure copy task), growing to 2-4 facts;
afterwards the full mixture is used.

``layout="v2"`` (world v2, see :mod:`.data`): ``read`` and ``known`` contexts hold 2-4 facts of the
asked type about different people plus 0-2 other facts (:func:`~.data.make_bound_context`), so the
answer must be bound to the asked person; the curriculum's copy phase still starts with 1-2 facts.
"""
from __future__ import annotations

import random

from routerlens_interp.prompts.templates import plain_prompt, plain_target
from routerlens_interp.toy.data import make_bound_context, make_context
from routerlens_interp.toy.world import (ATTRIBUTES, EXTRA_ATTRIBUTES, VALUES, World, fact_sentence,
                                         question_text, random_facts)

KINDS = ("memory", "bio", "read", "known", "known_new")
DEFAULT_MIX = {"memory": 0.30, "bio": 0.08, "read": 0.40, "known": 0.22}


def n_read_facts(rng: random.Random, progress: float, reading_warmup: float, max_facts: int = 4) -> int:
    """Number of facts in a ``read`` context: 1-2 early, then up to ``max_facts``."""
    if reading_warmup > 0 and progress < 0.3 * reading_warmup:
        return rng.randint(1, 2)
    if reading_warmup > 0 and progress < reading_warmup:
        return rng.randint(1, 3)
    return 1 if rng.random() < 0.1 else rng.randint(2, max_facts)


class DocSampler:
    """Draws pretraining documents from a world. Deterministic given the ``rng`` passed in."""

    def __init__(self, world: World, mix: dict | None = None, p_present: float = 0.3,
                 reading_warmup: float = 0.1, p_hard: float = 0.0, read_max_facts: int = 4, layout: str = "v1"):
        """``p_hard``: share of ``read`` contexts whose distractors are mostly same-type facts about
        other people (trains binding a value to its name); ``read_max_facts``: most facts per context;
        ``layout``: "v1" (the shipped model's contexts) or "v2" (2-4 values of the asked type)."""
        if layout not in ("v1", "v2"):
            raise ValueError(f"layout {layout!r}: choose 'v1' or 'v2'")
        self.layout = layout
        self.world, self.p_present, self.reading_warmup = world, p_present, reading_warmup
        self.p_hard, self.read_max_facts = p_hard, read_max_facts
        self.mix = dict(DEFAULT_MIX if mix is None else mix)
        self.known = list(world.known)
        self.unseen = world.unseen_names
        self.all_names = [p.name for p in self.known] + self.unseen

    def kind(self, rng: random.Random, progress: float) -> str:
        if progress < self.reading_warmup:
            return "read"
        r, acc = rng.random() * sum(self.mix.values()), 0.0
        for k, w in self.mix.items():
            acc += w
            if r < acc:
                return k
        return k

    def sample(self, rng: random.Random, progress: float = 1.0) -> tuple[str, str, str]:
        """One document: (kind, prompt text, target text)."""
        k = self.kind(rng, progress)
        return (k, *getattr(self, "_" + k)(rng, progress))

    def _memory(self, rng, progress):
        p, a = rng.choice(self.known), rng.choice(ATTRIBUTES)
        return plain_prompt("", question_text(rng, p.name, a)), plain_target(p.facts[a])

    def _bio(self, rng, progress):
        p = rng.choice(self.known)
        attrs = rng.sample(ATTRIBUTES, rng.randint(3, 5))
        return " ".join(fact_sentence(rng, p.name, a, p.facts[a], bio=rng.random() < 0.5) for a in attrs), ""

    def _read(self, rng, progress):
        name, a = rng.choice(self.unseen), rng.choice(ATTRIBUTES)
        facts = random_facts(rng)
        n = n_read_facts(rng, progress, self.reading_warmup, self.read_max_facts)
        if self.layout == "v2":
            n_same = n if progress < self.reading_warmup else rng.randint(2, 4)
            ctx, _ = make_bound_context(rng, self.world, name, a, facts[a], facts, n_same,
                                        rng.randint(0, 2) if n_same > 1 else 0, self.all_names)
            return plain_prompt(ctx, question_text(rng, name, a)), plain_target(facts[a])
        kinds = (0.15, 0.9) if rng.random() < self.p_hard else (0.35, 0.75)
        ctx, _ = make_context(rng, self.world, name, a, facts[a], facts, n, self.all_names, kinds=kinds)
        return plain_prompt(ctx, question_text(rng, name, a)), plain_target(facts[a])

    def _known(self, rng, progress):
        p, a = rng.choice(self.known), rng.choice(ATTRIBUTES)
        present = rng.random() < self.p_present
        if self.layout == "v2":
            ctx, _ = make_bound_context(rng, self.world, p.name, a, p.facts[a], p.facts,
                                        rng.randint(2, 4) if present else rng.randint(1, 3), rng.randint(0, 2),
                                        self.all_names, include_target=present)
            return plain_prompt(ctx, question_text(rng, p.name, a)), plain_target(p.facts[a])
        n = rng.randint(1, 4) if present else rng.randint(1, 3)
        ctx, _ = make_context(rng, self.world, p.name, a, p.facts[a], p.facts, n, self.all_names,
                              include_target=present)
        return plain_prompt(ctx, question_text(rng, p.name, a)), plain_target(p.facts[a])


    def _known_new(self, rng, progress):
        p, x = rng.choice(self.known), rng.choice(sorted(EXTRA_ATTRIBUTES))
        v = rng.choice(VALUES[EXTRA_ATTRIBUTES[x]])
        ctx, _ = make_context(rng, self.world, p.name, x, v, p.facts, rng.randint(1, 4), self.all_names,
                              kinds=(0.6, 0.6))
        return plain_prompt(ctx, question_text(rng, p.name, x)), plain_target(v)


def tokenizer_texts(world: World, n_docs: int = 20000, seed: int = 0) -> list[str]:
    """Texts to train the tokenizer on: sampled documents plus every name and value in context."""
    rng = random.Random(f"toy-tok-{seed}")
    s = DocSampler(world, mix={k: 1.0 for k in KINDS if k != "known_new"})
    texts = [pr + tg for _, pr, tg in (s.sample(rng) for _ in range(n_docs))]
    for w in world.all_words():  # make sure every word is frequent in both positions
        texts += [f"{w} {w}. {w}?"] * 10
    return texts
