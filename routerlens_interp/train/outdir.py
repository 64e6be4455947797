"""Output paths: one run at a time per output, and no earlier result replaced unless asked.

**Lock.** A run that writes ``DIR`` holds an exclusive ``fcntl.flock`` on ``DIR/.routerlens.lock`` (an
output *file* ``F``: on ``.F.routerlens.lock`` next to it, so that two runs writing different files of
one directory do not block each other) from before any work until it ends. The lock file holds the
holder's PID and command; a second run refuses at once with :class:`OutputInUse`, naming that PID. The
kernel drops a flock when its holder dies (even by SIGKILL), so a lock file left by a dead process is
simply taken over (``locked(..., note=...)`` is told so). The holder deletes the lock file when done.
Locks are re-entrant within one process (the CLI takes the lock, then :func:`~routerlens_interp.train.tune_router`
takes it again for the Python API's sake).

**Earlier results.** :func:`previous_result` says what a directory or file output already holds
(``None``: nothing), for the CLI's refusal without ``--overwrite`` / ``--resume``: a directory counts as
holding a result when it has any entry besides the lock file (an adapter, a checkpoint, a report, or
anything else: a command writes several files and would replace some of them).
"""
from __future__ import annotations

import errno
import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError

__all__ = ["LOCK_NAME", "OutputInUse", "lock_file_for", "locked", "previous_result"]

LOCK_NAME = ".routerlens.lock"

_held: dict[str, list] = {}  # realpath of a lock file → [fd, depth] held by this process
_guard = threading.Lock()


class OutputInUse(UserError):
    """Another process holds the lock of an output. Attributes: ``path`` (the output), ``pid`` (the
    holder's, ``None`` when its lock file was unreadable)."""

    def __init__(self, path: Path, pid: int | None, holder: str):
        self.path, self.pid = path, pid
        who = f"PID {pid}" + (f", {holder}" if holder else "") if pid is not None else "another process"
        super().__init__(f"{path} is being written by another run ({who}); wait for it to finish, stop it, or "
                         "choose another output")


def lock_file_for(path, is_dir: bool) -> Path:
    """The lock file of an output directory (inside it) or an output file (a hidden sibling)."""
    p = Path(path)
    return p / LOCK_NAME if is_dir else p.parent / f".{p.name}{LOCK_NAME}"


def _read_holder(fd: int) -> tuple[int | None, str]:
    """(PID, command) written in an open lock file; (None, "") when it holds neither."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace").splitlines()
    try:
        return int(text[0]), (text[1] if len(text) > 1 else "")
    except (IndexError, ValueError):
        return None, ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _acquire(lock: Path, output: Path, what: str, note) -> int:
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no flock
        fcntl = None
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:
            if note:
                note(f"{output}: no file locks on this system; nothing stops a second run from writing here at "
                     "the same time")
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, holder = _read_holder(fd)
            os.close(fd)
            raise OutputInUse(output, pid, holder) from None
        except OSError as e:  # a file system without flock (some network mounts): go on, say so
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            if note:
                note(f"{output}: this file system does not support locks; nothing stops a second run from "
                     "writing here at the same time")
            return fd
        # The holder deletes the file when it is done: the file we locked must still be the one at `lock`
        # (else a third run could create and lock a new file while we hold the old, unlinked one).
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        pid, holder = _read_holder(fd)
        if pid is not None and note:
            state = "no longer running" if not _alive(pid) else "not holding it any more"
            note(f"{output}: taking over the lock left by PID {pid}" + (f" ({holder})" if holder else "")
                 + f", {state}; check that its output is complete")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n{what}\n".encode())
    except BaseException:  # (e.g. a full disk) not held after all
        _release(lock, fd)
        raise
    return fd


def _release(lock: Path, fd: int) -> None:
    try:
        os.unlink(lock)  # while still locked: a waiting opener then sees a new inode (see _acquire)
    except OSError:  # gone already, or (no flock) a system that cannot delete an open file: a stale file only
        pass
    os.close(fd)


@contextmanager
def locked(path, is_dir: bool, what: str = "", note=None):
    """Hold the output lock of ``path`` (a directory, made when missing, or a file) for the ``with`` block.

    ``what``: the holder's command, written into the lock file for a refused run's message.
    ``note(text)``: told when a stale lock file is taken over. Raises :class:`OutputInUse` at once when
    another process holds it; re-entrant in this process."""
    output = Path(path)
    made = None
    if is_dir and not output.is_dir():
        missing = [q for q in (output, *output.parents) if not q.exists()]
        output.mkdir(parents=True, exist_ok=True)
        made = missing[-1] if missing else None
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_file_for(output, is_dir)
    key = os.path.realpath(lock)
    with _guard:
        entry = _held.get(key)
        if entry is None:
            try:
                entry = _held[key] = [_acquire(lock, output, what or " ".join(sys.argv), note), 0]
            except BaseException:
                _remove_empty(made)
                raise
        entry[1] += 1
    try:
        yield
    finally:
        with _guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                _release(lock, entry[0])
        _remove_empty(made)


def _remove_empty(made: Path | None) -> None:
    """Remove the directories made for a lock when the run left nothing in them (it failed early)."""
    if made is None:
        return
    for d in sorted([made, *(p for p in made.rglob("*") if p.is_dir())], key=lambda p: -len(p.parts)):
        try:
            d.rmdir()
        except OSError:
            return


# what a file in an output directory says about the result there, in this order
_MARKERS = (("adapter.json", "an adapter (adapter.json)"),
            ("checkpoint", "the checkpoint of an unfinished training run (checkpoint/)"),
            ("report.json", "a demo report (report.json)"),
            ("attention_gain.csv", "analysis tables (attention_gain.csv, apg.csv)"))


def previous_result(path, is_dir: bool) -> str | None:
    """What ``path`` already holds, in words (``None``: nothing, so writing it loses nothing).

    A directory: any entry but the lock file counts; known results are named. A file: that it exists."""
    p = Path(path)
    if not is_dir:
        return "a file" if p.exists() or p.is_symlink() else None
    if not p.is_dir():
        return None
    entries = sorted(e.name for e in p.iterdir() if e.name != LOCK_NAME)
    if not entries:
        return None
    for name, words in _MARKERS:
        if name in entries:
            return words
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    return f"{len(entries)} file{'s' if len(entries) > 1 else ''} ({shown})"
