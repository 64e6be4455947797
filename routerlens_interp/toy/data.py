"""The toy data sets: ``toy-open`` (SQuAD-like), ``toy-conflict`` (NQ-Swap-like), ``toy-memory``.

``toy_dataset(name, split)`` builds them on the fly from the world seed (deterministic; cached in
memory). Splits never share a question: questions of a split only name people of that split's
group (see ``world.py``).

* ``toy-open``: a context of 2-4 facts about *unseen* people (fresh values) states the asked fact;
  gold = that value, which occurs verbatim in the context.
* ``toy-conflict``: the asked person is *memorised*; the context states a substituted value of the
  same type (never the memorised one) among 1-3 true distractor facts; gold = the context's value,
  ``memory_answer`` = the memorised value (which does not occur in the context).
* ``toy-memory``: closed book (``context == ""``) about a memorised person; gold = memorised value.

World v2 (``toy2-open``, ``toy2-conflict``, ``toy2-memory``; same people and facts, other contexts):
every context holds 2-4 values of the asked type, each about a different person, plus 0-2 other
facts (:func:`make_bound_context`). A model can no longer answer by gathering "the value of the asked
type" from the context (the bag strategy that works on about half of the v1 contexts, see
:func:`bag_solvable`): it has to bind the value to the asked person.
"""
from __future__ import annotations

import copy
import functools
import random

from routerlens_interp.examples import QAExample
from routerlens_interp.toy.world import (ATTRIBUTES, World, build_world, fact_sentence, other_value,
                                         question_text, random_facts)

TOY_DATASETS = ("toy-open", "toy-conflict", "toy-memory")
TOY2_DATASETS = ("toy2-open", "toy2-conflict", "toy2-memory")
SIZES = {
    "toy-open": {"train": 1500, "dev": 200, "test": 350},
    "toy-conflict": {"train": 1200, "dev": 200, "test": 350},
    "toy-memory": {"train": 1200, "dev": 200, "test": 350},
}
SIZES.update({"toy2" + k[3:]: dict(v) for k, v in SIZES.items()})
WORLD_SEED = 0


@functools.lru_cache(maxsize=8)
def get_world(seed: int = WORLD_SEED) -> World:
    """The (cached) world for ``seed``."""
    return build_world(seed)


def facts_of(world: World, name: str, rng: random.Random, cache: dict) -> dict:
    """True facts of a memorised person, or fresh (per-context, cached in ``cache``) ones of an unseen name."""
    if name not in cache:
        known = {p.name: p for p in world.known}
        cache[name] = dict(known[name].facts) if name in known else random_facts(rng)
    return cache[name]


def make_context(rng: random.Random, world: World, name: str, attr: str, value: str, facts: dict,
                 n_facts: int, others: list[str], include_target: bool = True,
                 avoid: tuple = (), kinds: tuple = (0.35, 0.75)) -> tuple[str, list[tuple[str, str, str]]]:
    """A context of ``n_facts`` sentences about ``name`` and other people.

    The target fact ``(name, attr, value)`` is included when ``include_target``; distractors are
    other attributes of ``name`` (values from ``facts``), or facts about people drawn from
    ``others`` (memorised people keep their true values, unseen ones get fresh values). A
    distractor of the asked type never carries ``value`` or a value in ``avoid``, and no
    (person, attribute) pair occurs twice. ``kinds``: cumulative probabilities of a distractor being
    (same person, other attribute) and (other person, same attribute); the rest are (other person,
    any attribute). Returns (text, [(name, attr, value), ...]).
    """
    triples = [(name, attr, value)] if include_target else []
    used = {(name, attr)}
    bad = {value, *avoid}
    cache: dict = {name: facts}
    tries = 0
    while len(triples) < n_facts and tries < 50:
        tries += 1
        r = rng.random()
        if r < kinds[0]:
            a = rng.choice([x for x in ATTRIBUTES if x != attr])
            n, v = name, facts[a]
        else:
            n = rng.choice(others)
            if n == name:
                continue
            a = attr if r < kinds[1] else rng.choice(ATTRIBUTES)
            v = facts_of(world, n, rng, cache)[a]
        if (n, a) in used or (a == attr and v in bad):
            continue
        used.add((n, a))
        triples.append((n, a, v))
    rng.shuffle(triples)
    return " ".join(fact_sentence(rng, n, a, v) for n, a, v in triples), triples


def make_bound_context(rng: random.Random, world: World, name: str, attr: str, value: str, facts: dict,
                       n_same: int, n_other: int, others: list[str], include_target: bool = True,
                       avoid: tuple = ()) -> tuple[str, list[tuple[str, str, str]]]:
    """A world-v2 context: ``n_same`` facts of type ``attr`` about distinct people, plus ``n_other`` others.

    With ``include_target`` the asked fact ``(name, attr, value)`` is one of the ``n_same``; the rest
    are ``attr`` facts about people from ``others`` (memorised people keep their true values, unseen
    ones get fresh values), all values distinct and none equal to ``value`` or in ``avoid``. The
    ``n_other`` facts are other attributes of ``name`` (from ``facts``) or any other attribute of other
    people. No (person, attribute) pair occurs twice. Returns (text, [(name, attr, value), ...]).
    """
    triples = [(name, attr, value)] if include_target else []
    used, cache = {(name, attr)}, {name: facts}
    vals = {value, *avoid}
    n_same_others = n_same - len(triples)
    tries = 0
    while n_same_others > 0 and tries < 100:
        tries += 1
        n = rng.choice(others)
        if n == name or (n, attr) in used:
            continue
        v = facts_of(world, n, rng, cache)[attr]
        if v in vals:
            continue
        used.add((n, attr))
        vals.add(v)
        triples.append((n, attr, v))
        n_same_others -= 1
    n_other_left, tries = n_other, 0
    while n_other_left > 0 and tries < 100:
        tries += 1
        n = name if rng.random() < 0.5 else rng.choice(others)
        a = rng.choice([x for x in ATTRIBUTES if x != attr])
        if (n, a) in used:
            continue
        used.add((n, a))
        triples.append((n, a, facts_of(world, n, rng, cache)[a]))
        n_other_left -= 1
    rng.shuffle(triples)
    return " ".join(fact_sentence(rng, n, a, v) for n, a, v in triples), triples


def bag_solvable(triples: list[tuple[str, str, str]], attr: str) -> bool:
    """True when the context holds exactly one value of type ``attr`` (the bag strategy answers it)."""
    return len({v for _, a, v in triples if a == attr}) == 1


def _context(rng: random.Random, world: World, name: str, attr: str, value: str, facts: dict, others: list[str],
             v2: bool, avoid: tuple = ()) -> tuple[str, list[tuple[str, str, str]]]:
    """A data-set context: v1 (2-4 facts, :func:`make_context`) or v2 (:func:`make_bound_context`)."""
    if v2:
        return make_bound_context(rng, world, name, attr, value, facts, rng.randint(2, 4), rng.randint(0, 2), others,
                                  avoid=avoid)
    return make_context(rng, world, name, attr, value, facts, rng.randint(2, 4), others, avoid=avoid)


def _open(world: World, split: str, size: int, rng: random.Random, v2: bool = False) -> list[QAExample]:
    names = world.unseen[split]
    others = names + [p.name for p in world.known_by_group[split]]
    out = []
    for i in range(size):
        name, attr = rng.choice(names), rng.choice(ATTRIBUTES)
        facts = random_facts(rng)
        ctx, triples = _context(rng, world, name, attr, facts[attr], facts, others, v2)
        out.append(QAExample(ctx, question_text(rng, name, attr), [facts[attr]], None,
                             f"toy{'2' if v2 else ''}-open-{split}-{i}",
                             {"attr": attr, "person": name, "known": False, "n_facts": len(triples)}))
    return out


def _pairs(world: World, split: str, size: int, rng: random.Random):
    pairs = [(p, a) for p in world.known_by_group[split] for a in ATTRIBUTES]
    rng.shuffle(pairs)
    while len(pairs) < size:  # more examples than pairs: repeat pairs (new contexts)
        pairs += pairs[: size - len(pairs)]
    return pairs[:size]


def _conflict(world: World, split: str, size: int, rng: random.Random, v2: bool = False) -> list[QAExample]:
    others = world.unseen[split] + [p.name for p in world.known_by_group[split]]
    out = []
    for i, (p, attr) in enumerate(_pairs(world, split, size, rng)):
        true = p.facts[attr]
        sub = other_value(rng, attr, {true})
        ctx, triples = _context(rng, world, p.name, attr, sub, p.facts, others, v2, avoid=(true,))
        out.append(QAExample(ctx, question_text(rng, p.name, attr), [sub], true,
                             f"toy{'2' if v2 else ''}-conflict-{split}-{i}",
                             {"attr": attr, "person": p.name, "known": True, "n_facts": len(triples)}))
    return out


def _memory(world: World, split: str, size: int, rng: random.Random, v2: bool = False) -> list[QAExample]:
    return [QAExample("", question_text(rng, p.name, attr), [p.facts[attr]], None,
                      f"toy{'2' if v2 else ''}-memory-{split}-{i}", {"attr": attr, "person": p.name, "known": True})
            for i, (p, attr) in enumerate(_pairs(world, split, size, rng))]


_BUILDERS = {"toy-open": _open, "toy-conflict": _conflict, "toy-memory": _memory}
_BUILDERS.update({"toy2" + k[3:]: functools.partial(f, v2=True) for k, f in _BUILDERS.items()})


@functools.lru_cache(maxsize=32)
def _cached(name: str, split: str, seed: int) -> tuple[QAExample, ...]:
    rng = random.Random(f"toy-data-{seed}-{name}-{split}")
    return tuple(_BUILDERS[name](get_world(seed), split, SIZES[name][split], rng))


def toy_dataset(name: str, split: str = "test", seed: int = WORLD_SEED) -> list[QAExample]:
    """The toy data set ``name`` (one of ``TOY_DATASETS``) for ``split`` in {train, dev, test}.

    Deterministic for a given ``seed``; returns fresh copies (callers may mutate them).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown toy data set {name!r}; choose from {TOY_DATASETS + TOY2_DATASETS}")
    if split not in SIZES[name]:
        raise ValueError(f"unknown split {split!r}; choose from train, dev, test")
    return copy.deepcopy(list(_cached(name, split, seed)))
