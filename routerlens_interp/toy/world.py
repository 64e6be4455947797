"""The toy world: people with five single-token attributes, built deterministically from a seed.

Two populations share one pool of invented single-token names:

* **memorised** people (``World.known``): their facts are fixed and appear closed-book in
  pretraining, so the model holds them in its weights. They are split into ``train``/``dev``/
  ``test`` groups so that the data sets of different splits never ask the same question.
* **unseen** names (``World.unseen``): they never get fixed facts. Whenever one appears (always
  inside a context), its attribute values are drawn afresh, so the only way to answer a question
  about an unseen person is to read the context. They too are split into ``train``/``dev``/``test``
  groups for the data sets; pretraining draws from all of them.

Every fact has several phrasings (``FACT_TEMPLATES``) and every question several phrasings
(``QUESTION_TEMPLATES``). No fact phrasing starts with the name, so a name is always preceded by a
space and is the same token wherever it occurs.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

ATTRIBUTES = ("year", "city", "job", "employer", "instrument")

CITIES = (
    "Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Oslo", "Lisbon", "Dublin", "Athens",
    "Cairo", "Lima", "Quito", "Tokyo", "Seoul", "Delhi", "Dhaka", "Hanoi", "Manila", "Sydney",
    "Perth", "Toronto", "Boston", "Denver", "Chicago", "Dallas", "Miami", "Austin", "Seattle",
    "Phoenix", "Nairobi", "Lagos", "Accra", "Tunis", "Riga", "Tallinn", "Warsaw", "Budapest",
    "Helsinki", "Geneva",
)
JOBS = (
    "baker", "pilot", "doctor", "lawyer", "farmer", "painter", "teacher", "nurse", "chemist",
    "sailor", "architect", "dentist", "plumber", "banker", "poet", "surgeon", "tailor", "butcher",
    "jeweler", "carpenter", "librarian", "journalist", "engineer", "pharmacist", "photographer",
    "astronomer", "geologist", "translator", "firefighter", "actor",
)
EMPLOYERS = (
    "Zentrix", "Oltava", "Brimcorp", "Quandle", "Vexora", "Halvic", "Morrowind", "Tessaly",
    "Pyloric", "Gantry", "Corvane", "Lumira", "Straxon", "Kelvora", "Dunmore", "Ashgrove",
    "Nimbrel", "Orvex", "Plexa", "Ravelin", "Sorbet", "Tarquin", "Umbrex", "Veltrum", "Wexford",
    "Yarrow", "Zephyra", "Bexley", "Cindral", "Fennick",
)
INSTRUMENTS = (
    "violin", "piano", "guitar", "cello", "flute", "harp", "drums", "trumpet", "oboe", "banjo",
    "clarinet", "saxophone", "ukulele", "accordion", "viola", "tuba", "mandolin", "bassoon",
    "harmonica", "trombone",
)
VALUES: dict[str, tuple[str, ...]] = {
    "year": tuple(str(y) for y in range(1900, 2000)),
    "city": CITIES,
    "job": JOBS,
    "employer": EMPLOYERS,
    "instrument": INSTRUMENTS,
}

# {n}: name, {v}: value, {a}: "a"/"an" for {v}. No phrasing starts with {n}.
FACT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "year": ("The birth year of {n} is {v}.", "In {v}, {n} was born.", "Records show {n} was born in {v}."),
    "city": ("The hometown of {n} is {v}.", "In {v}, {n} grew up.", "Records show {n} comes from {v}."),
    "job": ("The occupation of {n} is {v}.", "By profession, {n} is {a} {v}.", "Records show {n} works as {a} {v}."),
    "employer": ("The employer of {n} is {v}.", "At {v}, {n} has a job.", "Records show {n} works for {v}."),
    "instrument": ("The instrument of {n} is the {v}.", "On the {v}, {n} plays music.", "Records show {n} plays the {v}."),
}
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "year": ("When was {n} born?", "In what year was {n} born?", "What is the birth year of {n}?"),
    "city": ("Where was {n} raised?", "Which city does {n} come from?", "What is the hometown of {n}?"),
    "job": ("What is the occupation of {n}?", "What does {n} do for a living?", "What is the job of {n}?"),
    "employer": ("Who employs {n}?", "Which company does {n} work for?", "What is the employer of {n}?"),
    "instrument": ("What instrument does {n} play?", "Which instrument does {n} play?", "What is the instrument of {n}?"),
}
# Attributes that nobody has memorised: for anyone, a value only ever comes from a context (fresh
# each time). Used in pretraining so that reading is sometimes needed for memorised people too.
# name -> value type (one of ATTRIBUTES).
EXTRA_ATTRIBUTES = {"fav_city": "city", "dream_job": "job", "first_job_year": "year"}
FACT_TEMPLATES.update({
    "fav_city": ("The favourite city of {n} is {v}.", "Records show {n} loves {v}.", "In {v}, {n} likes to travel."),
    "dream_job": ("The dream job of {n} is {v}.", "Records show {n} wants to be {a} {v}.", "As {a} {v}, {n} dreams of working."),
    "first_job_year": ("The first job of {n} began in {v}.", "Records show {n} started working in {v}.", "In {v}, {n} started working."),
})
QUESTION_TEMPLATES.update({
    "fav_city": ("What is the favourite city of {n}?", "Which city does {n} love?", "Where does {n} like to travel?"),
    "dream_job": ("What is the dream job of {n}?", "What does {n} want to be?", "What job does {n} dream of?"),
    "first_job_year": ("When did {n} start working?", "In what year did {n} start working?", "When did the first job of {n} begin?"),
})
# Short-bio sentences (plain descriptive text in pretraining); the name may start these.
BIO_TEMPLATES: dict[str, tuple[str, ...]] = {
    "year": ("{n} was born in {v}.",),
    "city": ("{n} grew up in {v}.",),
    "job": ("{n} works as {a} {v}.",),
    "employer": ("{n} is employed by {v}.",),
    "instrument": ("{n} plays the {v}.",),
}

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "h", "j")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "n", "r", "l", "s", "m")
SPLITS = ("train", "dev", "test")


def article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


@dataclass(frozen=True)
class Person:
    """A memorised person: ``facts`` maps every attribute of ``ATTRIBUTES`` to its value."""

    name: str
    facts: dict = field(hash=False, compare=True)
    group: str = "train"


@dataclass
class World:
    """The toy world. ``known``: memorised people; ``unseen``: split name -> unseen names."""

    seed: int
    known: list[Person]
    unseen: dict[str, list[str]]

    @property
    def known_by_group(self) -> dict[str, list[Person]]:
        return {g: [p for p in self.known if p.group == g] for g in SPLITS}

    @property
    def unseen_names(self) -> list[str]:
        return [n for g in SPLITS for n in self.unseen[g]]

    def all_words(self) -> list[str]:
        """Every name and value (they should all be single tokens)."""
        return [p.name for p in self.known] + self.unseen_names + [v for a in ATTRIBUTES for v in VALUES[a]]


def make_names(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct pronounceable names (CV + CV + coda), none equal to a value or a word in use."""
    taken = {v.lower() for a in ATTRIBUTES for v in VALUES[a]}
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        s = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
        if s in seen or s in taken:
            continue
        seen.add(s)
        out.append(s.capitalize())
    return out


def build_world(seed: int = 0, n_known: int = 400, n_unseen: int = 300,
                known_split=(0.6, 0.15, 0.25), unseen_split=(0.6, 0.15, 0.25)) -> World:
    """Build the world deterministically from ``seed`` (same arguments -> equal worlds)."""
    rng = random.Random(f"toy-world-{seed}")
    names = make_names(rng, n_known + n_unseen)
    known_names, unseen_names = names[:n_known], names[n_known:]

    def groups(n, fr):
        a, b = int(round(n * fr[0])), int(round(n * (fr[0] + fr[1])))
        return ["train"] * a + ["dev"] * (b - a) + ["test"] * (n - b)

    known = [Person(nm, {a: rng.choice(VALUES[a]) for a in ATTRIBUTES}, g)
             for nm, g in zip(known_names, groups(n_known, known_split))]
    ug = groups(n_unseen, unseen_split)
    unseen = {g: [nm for nm, gg in zip(unseen_names, ug) if gg == g] for g in SPLITS}
    return World(seed=seed, known=known, unseen=unseen)


def fact_sentence(rng: random.Random, name: str, attr: str, value: str, bio: bool = False) -> str:
    """One sentence stating ``attr(name) = value`` in a random phrasing."""
    t = rng.choice(BIO_TEMPLATES[attr] if bio else FACT_TEMPLATES[attr])
    return t.format(n=name, v=value, a=article(value))


def question_text(rng: random.Random, name: str, attr: str) -> str:
    """A question asking for ``attr`` of ``name`` in a random phrasing."""
    return rng.choice(QUESTION_TEMPLATES[attr]).format(n=name)


def random_facts(rng: random.Random) -> dict:
    """Fresh attribute values for an unseen person."""
    return {a: rng.choice(VALUES[a]) for a in ATTRIBUTES}


def other_value(rng: random.Random, attr: str, avoid) -> str:
    """A value of type ``attr`` not in ``avoid``."""
    avoid = set(avoid)
    while True:
        v = rng.choice(VALUES[attr])
        if v not in avoid:
            return v
