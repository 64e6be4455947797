"""lm-evaluation-harness on the in-memory model: ``rl.harness(lm, tasks=["mmlu"])`` under any intervention.

(The module is ``lmeval``, not ``harness``: a submodule named like the function would shadow ``rl.harness``.)

:class:`HarnessLM` is an ``lm_eval.api.model.TemplateLM`` over a :class:`~routerlens_interp.model.MoEModel`: it
calls the model's ordinary forward, so the masks (``rl.mask_experts``) and adapters (``adapter.applied(lm)``)
in force when the harness runs apply to every request. Log-likelihoods are computed by
:func:`routerlens_interp.evaluation.choice.loglikelihood_tokens` (the harness's own pair encoding, inherited from
``TemplateLM``); ``generate_until`` decodes greedily and cuts at the task's stop strings.

``lm-eval`` is an optional dependency (``pip install 'routerlens_interp[harness]'``): its table-printing
dependency pins ``python-dateutil<3``, which would downgrade the dateutil of some environments.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..errors import UserError

__all__ = ["HarnessLM", "harness", "harness_available"]


def harness_available() -> bool:
    """Whether ``lm_eval`` imports."""
    try:
        import lm_eval.api.model  # noqa: F401
    except ImportError:
        return False
    return True


def _require():
    try:
        from lm_eval.api.model import TemplateLM
    except ImportError as err:
        raise UserError(f"rl.harness needs lm-evaluation-harness ({err}); install it with "
                        "`pip install 'routerlens_interp[harness]'` (or `pip install lm-eval`)") from None
    return TemplateLM


def _make_class():
    TemplateLM = _require()

    class _HarnessLM(TemplateLM):
        """The harness's view of a MoEModel (see the module docstring)."""

        def __init__(self, lm, batch_size: int = 16, max_gen_toks: int = 256, progress: bool = True):
            super().__init__()
            self.lm, self.batch_size, self.max_gen_toks, self.progress = lm, int(batch_size), int(max_gen_toks), progress
            self.tokenizer = lm.tokenizer

        @property
        def eot_token_id(self) -> int:
            return self.lm.tokenizer.eos_token_id

        @property
        def max_length(self) -> int:
            return self.lm.window or 2048

        @property
        def tokenizer_name(self) -> str:
            return str(getattr(self.lm.tokenizer, "name_or_path", "") or self.lm.name).replace("/", "__")

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
            return list(self.lm.tokenizer(string, add_special_tokens=bool(add_special_tokens))["input_ids"])

        def tok_decode(self, tokens, **kwargs) -> str:
            return self.lm.tokenizer.decode(tokens, skip_special_tokens=True)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
            from .choice import loglikelihood_tokens

            pairs = [(ctx, cont) for _, ctx, cont in requests]
            res = loglikelihood_tokens(self.lm, pairs, self.batch_size, self.progress and not disable_tqdm,
                                       desc="harness loglikelihood")
            for (key, _, _), r in zip(requests, res):
                self.cache_hook.add_partial("loglikelihood", key, r)
            return res

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            """Whole-text log-likelihood in windows of the model's length (the harness's perplexity tasks)."""
            from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

            from .choice import loglikelihood_tokens

            out = []
            for (text,) in tqdm([r.args for r in requests], disable=disable_tqdm or not self.progress,
                                desc="harness rolling"):
                windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)]
                out.append(sum(lp for lp, _ in loglikelihood_tokens(self.lm, windows, self.batch_size)))
            return out

        @torch.no_grad()
        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            """Greedy continuation of each context up to the first stop string (``until``) or ``max_gen_toks``."""
            tok, hf, out = self.lm.tokenizer, self.lm.hf, []
            for context, gen_kwargs in tqdm([r.args for r in requests], disable=disable_tqdm or not self.progress,
                                            desc="harness generate"):
                kw = dict(gen_kwargs or {})
                until = kw.pop("until", None) or []
                until = [until] if isinstance(until, str) else list(until)
                max_new = int(kw.pop("max_gen_toks", self.max_gen_toks))
                if kw.get("do_sample") or float(kw.get("temperature", 0.0) or 0.0) > 0:
                    raise UserError("rl.harness decodes greedily; this task asks for sampling (do_sample/temperature)")
                ids = self.tok_encode(context)[-(self.max_length - max_new):] if context else [self.eot_token_id]
                inp = torch.tensor([ids], device=self.lm.device)
                was = hf.training
                hf.eval()
                try:
                    gen = hf.generate(input_ids=inp, attention_mask=torch.ones_like(inp), max_new_tokens=max_new,
                                      do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
                finally:
                    hf.train(was)
                text = tok.decode(gen[0, len(ids):], skip_special_tokens=True)
                for stop in until:
                    if stop and stop in text:
                        text = text[:text.index(stop)]
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                out.append(text)
            return out

    return _HarnessLM


_CLASS = None
_MANAGERS: dict = {}


def _task_manager(include_path: tuple, include_defaults: bool):
    """One ``TaskManager`` per (paths, defaults): indexing the ~15,000 built-in task configs takes seconds."""
    from lm_eval.tasks import TaskManager

    key = (tuple(str(p) for p in include_path), bool(include_defaults))
    if key not in _MANAGERS:
        _MANAGERS[key] = TaskManager(include_path=list(include_path) or None, include_defaults=include_defaults)
    return _MANAGERS[key]


def HarnessLM(lm, batch_size: int = 16, max_gen_toks: int = 256, progress: bool = True):
    """An ``lm_eval`` ``TemplateLM`` over ``lm`` (a MoEModel); pass it as ``model=`` to ``lm_eval.simple_evaluate``."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _make_class()
    return _CLASS(lm, batch_size=batch_size, max_gen_toks=max_gen_toks, progress=progress)


def harness(lm, tasks: Sequence[str] | str, num_fewshot: int | None = None, limit: int | float | None = None,
            include_path: str | Sequence[str] | None = None, include_defaults: bool = True, batch_size: int = 16,
            progress: bool = True, seed: int = 1234, log_samples: bool = False, **kwargs) -> dict:
    """Run lm-eval ``tasks`` on ``lm`` as it is now (masks and adapters in force apply).

    Args:
        tasks: harness task names (``"mmlu"``, ``"mmlu_abstract_algebra"``, your own from ``include_path``).
        num_fewshot: override the tasks' default shots (MMLU: 0 by default; 5 is the paper's convention).
        limit: at most this many documents per task (an int) or that share (a float < 1).
        include_path: directories of your own task YAMLs; ``include_defaults=False`` skips indexing the
            built-in tasks (faster when only your own are run).
        kwargs: passed to ``lm_eval.simple_evaluate``.
    Returns:
        the harness's results dict (``results[task]["acc,none"]`` …, ``configs``, ``versions``; ``samples``
        with ``log_samples=True``). Built-in tasks download their data from the hub (the network).
    """
    _require()
    from lm_eval import simple_evaluate

    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    if not tasks:
        raise UserError("rl.harness needs at least one task name")
    tm = _task_manager(tuple([include_path] if isinstance(include_path, str) else include_path or ()),
                       include_defaults)
    missing = [t for t in tasks if t not in tm.all_tasks]
    if missing:
        raise UserError(f"unknown lm-eval task(s) {missing}; list them with `lm_eval ls tasks`, or give "
                        f"include_path= the directory of your task YAML")
    res = simple_evaluate(model=HarnessLM(lm, batch_size=batch_size, progress=progress), tasks=tasks,
                          num_fewshot=num_fewshot, limit=limit, task_manager=tm, log_samples=log_samples,
                          random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                          **kwargs)
    if res is None:
        raise UserError("lm-eval returned no results (a non-zero rank of a distributed run?)")
    return dict(res)
