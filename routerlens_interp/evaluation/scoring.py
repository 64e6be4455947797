"""``rl.evaluate``: the metric follows the data set, and ``rl.forgetting``: MMLU before and after fine-tuning.

| data | how it is scored | result keys |
|---|---|---|
| QA (SQuAD, NQ-Swap, ConFiQA, NQ, HotpotQA, CounterFact, toy) | greedy decoding, SQuAD EM/F1 | ``em``, ``f1``, ``memory_rate`` |
| + ``judge=`` | the same, plus a language model's verdict | ``acc_llm``, ``agreement_with_em``, ``verdicts`` |
| Gigaword (``meta["task"] == "summarization"``) | greedy decoding, BLEU / METEOR / ROUGE-L | ``bleu``, ``meteor``, ``meteor_stages``, ``rouge_l`` |
| MemoTrap, MMLU (:class:`ChoiceExample`) | log-likelihood of each choice | ``accuracy``, ``accuracy_norm``, ``shots`` |

Every result has ``metric``, ``n`` and ``predictions``. Decoding is :func:`routerlens_interp.evaluation.generate.evaluate`'s
(its keyword arguments pass through unchanged); masks and adapters in force apply to all of it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..data.benchmarks import ChoiceExample
from ..errors import UserError
from ..examples import QAExample

__all__ = ["evaluate", "task_of", "forgetting"]


def task_of(data: Sequence) -> str:
    """``"choice"``, ``"summarization"`` or ``"qa"`` — what ``data`` asks for; UserError for a mixture."""
    kinds = set()
    for ex in data:
        if isinstance(ex, ChoiceExample):
            kinds.add("choice")
        elif isinstance(ex, QAExample):
            kinds.add("summarization" if ex.meta.get("task") == "summarization" else "qa")
        else:
            raise UserError(f"evaluate scores QAExample or ChoiceExample items; got {type(ex).__name__}")
    if len(kinds) > 1:
        raise UserError(f"the data mixes tasks ({', '.join(sorted(kinds))}); evaluate one data set at a time")
    return kinds.pop() if kinds else "qa"


def evaluate(lm, data: Sequence, *, shots: int = 0, fewshot: Sequence[ChoiceExample] | None = None,
             judge=None, judge_mode: str | None = None, **kwargs) -> dict:
    """Score ``lm`` on ``data`` with the data set's metric (table in the module docstring).

    Args:
        data: ``[n]`` examples from :func:`~routerlens_interp.data.load_dataset` (one task).
        shots, fewshot: k-shot multiple choice (MMLU: 0 or 5; ``fewshot`` = the solved examples, MMLU's
            ``dev`` split; fetched from the hub for hub MMLU when None).
        judge, judge_mode: QA only — add AccLLM (:func:`routerlens_interp.evaluation.judge.judge_accuracy`).
        kwargs: decoding options of :func:`routerlens_interp.evaluation.generate.evaluate` (``max_new_tokens``,
            ``batch_size``, ``progress`` …); multiple choice uses ``batch_size`` and ``progress``.
    """
    from . import generate as evaluation

    data = list(data)
    task = task_of(data)
    if task == "choice":
        if judge is not None:
            raise UserError("judge= applies to generated answers; multiple choice is scored by log-likelihood")
        from .choice import choice_accuracy

        return choice_accuracy(lm, data, shots=shots, fewshot=fewshot, batch_size=kwargs.get("batch_size", 16),
                               progress=kwargs.get("progress", False))
    if shots or fewshot is not None:
        raise UserError("shots/fewshot apply to multiple choice (MemoTrap, MMLU), not to generated answers")
    s = evaluation.evaluate(lm, data, **kwargs)
    if task == "summarization":
        if judge is not None:
            raise UserError("judge= judges answers to questions; Gigaword summaries are scored with BLEU/METEOR/ROUGE-L")
        from .text_metrics import text_scores

        out = {"metric": "bleu/meteor/rouge_l", **text_scores(s["predictions"], [ex.answers for ex in data])}
        out["predictions"] = s["predictions"]
        return out
    s["metric"] = "em/f1"
    if judge is not None:
        from .judge import judge_accuracy
        from .metrics import em_f1

        ems = [em_f1(p, ex.answers)[0] for p, ex in zip(s["predictions"], data)]
        s.update(judge_accuracy(s["predictions"], data, judge, mode=judge_mode,
                                batch_size=kwargs.get("batch_size", 8), progress=kwargs.get("progress", False),
                                em=ems))
        s["metric"] = "em/f1/acc_llm"
    return s


def forgetting(lm, adapters, data: Sequence[ChoiceExample] | None = None, shots: int = 0,
               fewshot: Sequence[ChoiceExample] | None = None, batch_size: int = 16, progress: bool = False,
               tasks: Sequence[str] | None = None, **harness_kwargs) -> dict:
    """How much multiple-choice accuracy (MMLU) each fine-tuned adapter loses against the base model.

    Args:
        adapters: ``{name: adapter}`` (or a list, named ``adapter0`` …) of objects with ``.applied(lm)``
            (RouterAdapter, ExpertAdapter, full fine-tuning's adapter): each is applied in turn, the base in between.
        data: ``[n]`` ChoiceExample (e.g. ``rl.load_dataset("mmlu", split="test", limit=1000)``), scored by
            :func:`~routerlens_interp.evaluation.choice.choice_accuracy` with ``shots`` / ``fewshot``.
        tasks: instead of ``data``, lm-eval task names (``["mmlu"]``) run through :func:`rl.harness
            <routerlens_interp.evaluation.lmeval.harness>` (``harness_kwargs``: ``num_fewshot``, ``limit``, ``include_path`` …);
            the accuracy is the mean of the tasks' ``acc`` ×100.
    Returns:
        ``{"base": acc, "adapters": {name: {"accuracy", "drop"}}, "n", "shots"}`` — accuracies ×100,
        ``drop = base − accuracy`` (positive = forgotten); with ``tasks`` also ``"tasks"``.
    """
    from .choice import choice_accuracy

    named = dict(adapters) if isinstance(adapters, Mapping) else {f"adapter{i}": a for i, a in enumerate(adapters)}
    for name, a in named.items():
        if not hasattr(a, "applied"):
            raise UserError(f"adapter {name!r} ({type(a).__name__}) has no .applied(lm); pass RouterAdapter / "
                            f"ExpertAdapter objects (rl.load_adapter(DIR))")
    if (data is None) == (tasks is None):
        raise UserError("forgetting needs exactly one of data= (multiple-choice examples) or tasks= (lm-eval tasks)")
    if tasks is not None:
        from .lmeval import harness

        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        n_docs = {}

        def run():
            res = harness(lm, tasks, batch_size=batch_size, progress=progress, **harness_kwargs)
            accs = [res["results"][t]["acc,none"] for t in tasks if "acc,none" in res["results"].get(t, {})]
            if not accs:
                raise UserError(f"the lm-eval tasks {tasks} report no 'acc' metric; forgetting compares accuracies")
            n_docs.update({t: res.get("n-samples", {}).get(t, {}).get("effective") for t in tasks})
            return 100.0 * sum(accs) / len(accs)
        shots = harness_kwargs.get("num_fewshot") or 0
    else:
        data = list(data)
        if task_of(data) != "choice":
            raise UserError("forgetting is measured on multiple-choice data (MMLU: rl.load_dataset('mmlu', ...))")
        if shots and fewshot is None:
            from .choice import _hub_fewshot

            fewshot = _hub_fewshot(data)  # fetched once, not once per adapter
        run = lambda: choice_accuracy(lm, data, shots, fewshot, batch_size, progress)["accuracy"]
    base = run()
    out = {}
    for name, a in named.items():
        with a.applied(lm):
            acc = run()
        out[name] = {"accuracy": acc, "drop": base - acc}
    result = {"base": base, "adapters": out, "n": len(data) if data is not None else n_docs, "shots": int(shots)}
    if tasks is not None:
        result["tasks"] = tasks
    return result
