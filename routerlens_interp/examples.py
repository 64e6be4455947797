"""The unit of data: one question-answering example, in canonical form."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class QAExample:
    """A context-dependent QA example.

    ``answers`` are the gold answers (any one counts as correct). ``memory_answer`` is the answer a
    model would give from memorised knowledge where that differs from the context (NQ-Swap's
    ``org_answer``, ConfiQA's ``orig_answer``, the toy world's true value); ``None`` otherwise.
    An empty ``context`` makes a closed-book question.
    """

    context: str
    question: str
    answers: list[str]
    memory_answer: str | None = None
    id: str | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.answers, str):
            self.answers = [self.answers]
        self.answers = [str(a) for a in self.answers]
        if not self.answers:
            raise ValueError("QAExample needs at least one gold answer (answers=[...]).")

    @property
    def answer(self) -> str:
        """The first gold answer (the one used as training target)."""
        return self.answers[0]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QAExample":
        return cls(**{k: d[k] for k in ("context", "question", "answers", "memory_answer", "id", "meta") if k in d})
