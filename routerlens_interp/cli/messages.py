"""Warnings on the ``routerlens`` command line: one line each, ``routerlens <cmd>: warning: <what>``.

Python's own format (``.../model.py:71: UserWarning: ...`` and then the source line) is for developers;
on the command line it also lands in the middle of a progress bar. :func:`one_line_warnings` routes
``warnings.warn`` and the WARNING records of the libraries' loggers (transformers, datasets,
huggingface_hub, accelerate, and this package) through one writer that

- joins a message into one line, prefixed with the command;
- writes it with ``tqdm.write`` (a running bar is cleared, the line printed, the bar redrawn);
- prints a message once per command (the same text again is dropped);
- drops the libraries' known harmless warnings (:data:`HARMLESS`).

``--debug`` keeps Python's full warnings instead (``cli.main`` then does not enter it).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
import warnings
from contextlib import contextmanager

__all__ = ["HARMLESS", "one_line_warnings"]

# Substrings of warnings that say nothing a user of the toolkit must act on.
HARMLESS = (
    # the tokenizer's note on a text longer than its model_max_length: the toolkit truncates every
    # prompt to the model's window itself (prompts.encode), so this never reaches the model
    "Token indices sequence length is longer than the specified maximum sequence length",
    # sampling settings (temperature, top_p ...) of a model's generation_config.json: the toolkit decodes
    # greedily on purpose (do_sample=False), so they are ignored by design
    "The following generation flags are not valid and may be ignored",
)

_LOGGERS = ("transformers", "datasets", "huggingface_hub", "accelerate", "routerlens_interp")


def _write(line: str) -> None:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover (tqdm is a dependency)
        print(line, file=sys.stderr, flush=True)
        return
    tqdm.write(line, file=sys.stderr)


class _Handler(logging.Handler):
    def __init__(self, emit_text):
        super().__init__(logging.WARNING)
        self._emit_text = emit_text

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._emit_text(record.getMessage())
        except Exception:  # a broken message must not stop the command
            self.handleError(record)


# The libraries add their own stderr handler when their logging module is first imported, which may
# happen in the middle of a command (transformers is imported lazily): _AfterImport swaps it then.
_LOGGING_MODULES = ("transformers.utils.logging", "datasets.utils.logging", "huggingface_hub.utils.logging")


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``after()`` once one of :data:`_LOGGING_MODULES` has been imported (its code has run)."""

    def __init__(self, after):
        self.after, self.busy = after, False

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _LOGGING_MODULES or self.busy:
            return None
        self.busy = True
        try:
            spec = importlib.util.find_spec(fullname)  # the other finders' spec
        finally:
            self.busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            self.after()

        spec.loader.exec_module = exec_module
        return spec


@contextmanager
def one_line_warnings(command: str):
    """Within the block, every warning is one line ``routerlens <command>: warning: <what>`` on stderr.

    Python's warning filters stay as the caller set them (``-W``, ``PYTHONWARNINGS``); only how a shown
    warning is printed changes. Everything is put back on exit."""
    from .checks import one_line

    seen: set[str] = set()

    def emit(text: str) -> None:
        text = one_line(str(text))
        if not text or any(h in text for h in HARMLESS) or text in seen:
            return
        seen.add(text)
        _write(f"routerlens {command}: warning: {text}")

    def showwarning(message, category, filename, lineno, file=None, line=None):
        emit(str(message))

    handler = _Handler(emit)
    saved: dict[str, tuple[list, bool]] = {}  # logger → its handlers and propagate flag, put back on exit

    def swap() -> None:
        """Replace each library logger's handlers by ours (again after a library configured itself)."""
        for name in _LOGGERS:
            lg = logging.getLogger(name)
            theirs = [h for h in lg.handlers if h is not handler]
            if name not in saved or theirs:
                saved[name] = (saved.get(name, ([], None))[0] + theirs, lg.propagate)
            lg.handlers, lg.propagate = [handler], False

    swap()
    hook = _AfterImport(swap)
    sys.meta_path.insert(0, hook)
    root = logging.getLogger()
    root.addHandler(handler)  # other loggers without handlers (Python would print the bare message)
    with warnings.catch_warnings():  # restores showwarning (and the filters) on exit
        warnings.showwarning = showwarning
        try:
            yield
        finally:
            sys.meta_path.remove(hook)
            root.removeHandler(handler)
            for name, (handlers, propagate) in saved.items():
                lg = logging.getLogger(name)
                lg.handlers, lg.propagate = handlers, propagate
