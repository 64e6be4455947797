"""Exceptions shared by the library and the CLI.

The CLI turns a :class:`UserError` (and the built-in errors a user's input causes) into one line
naming the problem and the fix, exit code 2; :class:`TrainingInterrupted` becomes the line
``interrupted at step N; continue with --resume`` and exit code 128 + signal (130 for SIGINT,
143 for SIGTERM).
"""
from __future__ import annotations

import signal as _signal
from pathlib import Path

__all__ = ["UserError", "IntegrityError", "TrainingInterrupted"]


class UserError(ValueError):
    """Bad input from the user: the message names the problem and how to fix it."""


class IntegrityError(UserError):
    """A file failed its checksum, schema or finiteness check; nothing was loaded from it."""


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing a checkpoint that ``resume=True`` continues exactly.

    Attributes:
        step: optimizer steps finished (and saved) before the stop.
        out_dir: the run's output directory (holds the checkpoint).
        signum: the signal received (``signal.SIGINT`` or ``signal.SIGTERM``).
    """

    def __init__(self, step: int, out_dir: str | Path, signum: int = _signal.SIGINT):
        self.step, self.out_dir, self.signum = int(step), Path(out_dir), int(signum)
        super().__init__(f"interrupted at step {self.step}; continue with --resume (checkpoint in {self.out_dir})")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
