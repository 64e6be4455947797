"""What the ``routerlens`` command checks at its boundary, and how it reports what a user got wrong.

argparse types for numbers (``positive_int``, ``probability`` ...), output paths checked before any
work, ``--device``, model loading with the user's errors named, and the one-line error text
(``describe_error``) that :func:`routerlens_interp.cli.commands.main` prints for the exception types in
:func:`user_errors` (``--debug`` shows the traceback instead). :func:`claim_out` locks a command's
output and refuses to replace an earlier result unasked (mechanism in :mod:`.outdir`).
"""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

__all__ = ["positive_int", "non_negative_int", "seed_int", "positive_float", "probability", "finite_float", "check_out_file",
           "check_out_dir", "check_device", "load_model", "add_load_options", "load_options", "first_line", "one_line",
           "user_errors", "describe_error", "add_debug", "add_png_flags", "png_mode", "add_overwrite", "claim_out",
           "outputs_held", "OVERWRITE_HELP"]


# --- numbers at the boundary: argparse turns an ArgumentTypeError into a usage line and exit 2 -----
def _int_at_least(lo: int, what: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give {what}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} is too small; give {what}")
        return v
    parse.__name__ = "integer"
    return parse


positive_int = _int_at_least(1, "an integer >= 1")
non_negative_int = _int_at_least(0, "an integer >= 0")


def seed_int(text: str) -> int:
    v = non_negative_int(text)
    if v >= 2 ** 32:  # NumPy's seed range
        raise argparse.ArgumentTypeError(f"{v} is too large; give a seed in [0, 2**32)")
    return v


def _float_where(ok, wanted: str):
    """An argparse type: a float for which ``ok(value)`` holds (NaN never does), else one line naming ``wanted``."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; give {wanted}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"{text} is out of range; give {wanted}")
        return v
    return parse


positive_float = _float_where(lambda v: 0 < v < float("inf"), "a finite number > 0")
probability = _float_where(lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")
finite_float = _float_where(lambda v: abs(v) < float("inf"), "a finite number")


positive_float.__name__ = seed_int.__name__ = "number"
probability.__name__ = "probability"


def check_out_file(path: str | None, flag: str = "--out", example: str = "out.json") -> None:
    """Refuse before any work when a file is to be written where a directory stands (or under a file);
    create its missing parent directories now, so the result is not lost to them at the end."""
    if path is None:
        return
    from ..errors import UserError

    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file path (e.g. {p / example})")
    if any(q.exists() and not q.is_dir() for q in p.parents):
        raise UserError(f"{flag} {path}: a parent of it is a file, not a directory; choose another path")
    p.parent.mkdir(parents=True, exist_ok=True)


def check_out_dir(path: str | None, flag: str = "--out") -> None:
    """Refuse before any work when a directory is to be written where a file stands."""
    if path is None:
        return
    from ..errors import UserError

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {path} is a file; {flag} names a directory: give a new or existing directory")
    if any(q.exists() and not q.is_dir() for q in p.parents):
        raise UserError(f"{flag} {path}: a parent of it is a file, not a directory; choose another path")


# --- outputs: locked for the whole command, an earlier result kept unless --overwrite / --resume ----
OVERWRITE_HELP = ("replace what the output already holds. Without it a command refuses an output file that exists, "
                  "or an output directory with anything in it (an adapter, a checkpoint, a report, any file). While a "
                  "command runs its output is locked: a second command on it refuses, naming the first one's PID")
_claims: list[ExitStack] = []  # the stack of the running command (outputs_held); locks are released with it
_unheld = ExitStack()  # claim_out outside outputs_held: held until the process ends


@contextmanager
def outputs_held():
    """The block in which :func:`claim_out`'s locks are held (``cli.main`` wraps each command in it)."""
    with ExitStack() as stack:
        _claims.append(stack)
        try:
            yield
        finally:
            _claims.pop()


def add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def _in_worker_process() -> bool:
    """A process of a multi-process launch (torchrun / accelerate) other than the first: the first one
    holds the lock for all of them."""
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
    return rank.strip() not in ("", "0")


def claim_out(args, path, *, is_dir: bool, flag: str = "--out", example: str = "out.json",
              resumable: bool = False) -> None:
    """Preconditions of writing an output, checked before any work (before the model loads).

    The path's kind (:func:`check_out_dir` / :func:`check_out_file`), then an exclusive lock held until
    the command ends (:func:`routerlens_interp.train.outdir.locked`: a second run on the same output refuses at
    once naming this PID; a stale lock of a dead process is taken over with a note on stderr), then, under
    the lock, a refusal when it already holds a result (:func:`routerlens_interp.train.outdir.previous_result`)
    unless ``--overwrite`` or (``resumable``: training) ``--resume``."""
    from ..errors import UserError
    from ..train.outdir import locked, previous_result

    if path is None:
        return
    overwrite, resume = getattr(args, "overwrite", False), resumable and getattr(args, "resume", False)
    if overwrite and resume:
        raise UserError("give --resume (continue the training in --out) or --overwrite (start it over), not both")
    if is_dir:
        check_out_dir(path, flag)
    else:
        check_out_file(path, flag, example)
    cmd = getattr(args, "command", "?")
    if not _in_worker_process():
        note = lambda text: print(f"routerlens {cmd}: note: {text}", file=sys.stderr)
        stack = _claims[-1] if _claims else _unheld
        stack.enter_context(locked(path, is_dir, what=f"routerlens {cmd}", note=note))
    held = previous_result(path, is_dir)
    if held is None or overwrite or resume:
        return
    if not is_dir:
        raise UserError(f"{flag} {path} already exists; give --overwrite to replace it, or another path")
    how = "--resume to continue that training, --overwrite to start over" if resumable else "--overwrite to replace it"
    raise UserError(f"{flag} {path} already holds {held} from an earlier run; give {how}, or another {flag}")


def check_device(device: str | None) -> None:
    import torch

    from ..errors import UserError

    if device is None:
        return
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device name; give cpu, cuda, cuda:1, mps ...") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available here (no GPU or a CPU-only torch); "
                            "use --device cpu") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here; "
                            f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available here; use --device cpu")


def add_load_options(p: argparse.ArgumentParser) -> None:
    """The loading options of every command that loads a model (``--model`` and ``--device`` are added by
    the caller); :func:`load_options` reads them back."""
    from ..arch.loading import DTYPES

    p.add_argument("--dtype", choices=list(DTYPES), default=None,
                   help="parameter dtype (default: as transformers loads the checkpoint)")
    p.add_argument("--device-map", type=device_map_arg, default=None, metavar="MAP",
                   help="spread the layers over devices: auto, balanced, sequential, or a JSON object "
                        "'{\"model.layers.0\": 0, ...}' (excludes --device; needs accelerate)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the model repository's own modeling code (model and tokenizer)")
    p.add_argument("--revision", default=None, help="hub branch, tag or commit of the model (model and tokenizer)")
    p.add_argument("--allow-partial-quantization", action="store_true",
                   help="load a quantised checkpoint / quantization_config anyway (bitsandbytes quantises nn.Linear "
                        "modules only: not transformers 5's fused experts); refused otherwise")


def device_map_arg(text: str):
    from ..arch.loading import parse_device_map

    try:
        return parse_device_map(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def load_options(args) -> dict:
    """The keyword arguments of :func:`load_model` from parsed CLI arguments."""
    return {k: getattr(args, k, None) for k in ("device", "dtype", "device_map", "revision")} | {
        "trust_remote_code": bool(getattr(args, "trust_remote_code", False)),
        "allow_partial_quantization": bool(getattr(args, "allow_partial_quantization", False))}


def load_model(name: str, device: str | None = None, **options):
    """``rl.load`` with the errors a user causes (no such model, no network, a damaged or incomplete
    model directory) turned into a :class:`UserError` that says which and what to do. ``options``: the
    loading options of ``rl.load`` (``dtype``, ``device_map``, ``trust_remote_code``, ``revision``,
    ``allow_partial_quantization``)."""
    import routerlens_interp as rl

    from ..errors import UserError
    from ..prompts import check_tokenizer

    check_device(device)
    if device is not None and options.get("device_map") is not None:
        raise UserError(f"--device {device} and --device-map exclude each other: a device map already says where "
                        "every layer goes; give one of them")
    local = name == "toy" or Path(name).expanduser().is_dir()
    try:
        lm = rl.load(name, device=device, **options)
    except UserError:
        raise
    except (OSError, ValueError) as err:
        from huggingface_hub.errors import HFValidationError

        if isinstance(err, FileNotFoundError) and name == "toy":
            raise
        # not local: only the hub's "not found / no network / bad id" errors are about the name; a model
        # found but refused (NotMoEError, an unknown architecture) keeps its own message
        if not local and not isinstance(err, (OSError, HFValidationError)):
            raise
        if not local and not Path(name).expanduser().exists():
            raise UserError(f"--model {name!r} is not a local directory and not a model on the hub (or no "
                            f"network: {first_line(err)}); give a directory written by save_pretrained, a hub "
                            "id such as allenai/OLMoE-1B-7B-0924-Instruct, or 'toy'") from err
        if not local:
            raise UserError(f"--model {name!r} is a file; give the model's directory (config.json + weights), "
                            "a hub id, or 'toy'") from err
        if isinstance(err, OSError) or "Unrecognized model" in str(err):  # config or weights missing
            raise UserError(f"--model {name}: not a model directory ({first_line(err)}); give a directory "
                            "written by save_pretrained (config.json + weights + tokenizer files)") from err
        raise
    except Exception as err:
        from safetensors import SafetensorError

        if isinstance(err, SafetensorError):
            raise UserError(f"--model {name}: a weights file is damaged ({err}); re-download or re-save the "
                            "model") from err
        raise
    check_tokenizer(lm.tokenizer, name)
    return lm


def first_line(err: BaseException) -> str:
    return next((l.strip() for l in str(err).splitlines() if l.strip()), type(err).__name__)


def one_line(text: str) -> str:
    """Join a multi-line message into one line (``a:`` + ``b`` → ``a: b``; other lines with ``; ``)."""
    out = ""
    for part in (l.strip() for l in text.splitlines()):
        if part:
            out = part if not out else out + (" " if out.endswith(":") else "; ") + part
    return out


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that bad input or the machine's state cause (not bugs): one line, exit 2.

    ValueError covers UserError, JSON and text-encoding errors and the hub's id validation; OSError
    covers missing files, directories where files belong, a full disk, permissions and the hub's
    not-found / no-network errors; SafetensorError a damaged tensor file."""
    from safetensors import SafetensorError

    return ValueError, OSError, KeyError, NotImplementedError, SafetensorError


def describe_error(err: BaseException) -> str:
    """The CLI's one-line text for a user error: the problem, then the fix."""
    import errno

    from ..errors import UserError

    if isinstance(err, OSError) and not isinstance(err, UserError) and err.errno is not None:
        f = err.filename or "a file"
        fixes = {errno.ENOSPC: f"no space left on the device while writing {f}; free some space or write elsewhere",
                 errno.EDQUOT: f"disk quota exceeded while writing {f}; free some space or write elsewhere"}
        if err.filename:
            fixes.update({errno.EISDIR: f"{f} is a directory; give a file path",
                          errno.ENOTDIR: f"{f}: a part of this path is a file, not a directory; choose another path",
                          errno.EACCES: f"permission denied: {f}; choose a path you can read or write",
                          errno.EPERM: f"operation not permitted: {f}; choose a path you can read or write",
                          errno.EROFS: f"{f} is on a read-only file system; write elsewhere",
                          errno.ENOENT: f"no such file or directory: {f}; check the path"})
        if err.errno in fixes:
            return fixes[err.errno]
    if isinstance(err, KeyError) and err.args:
        return one_line(str(err.args[0]))
    if isinstance(err, UnicodeDecodeError):
        return f"{err}; save the file as UTF-8"
    text = one_line(str(err)) or type(err).__name__
    if type(err).__module__.startswith("safetensors"):
        return f"a safetensors file is damaged or not a safetensors file ({text}); re-create it"
    return text


def add_debug(parser: argparse.ArgumentParser) -> None:
    """``--debug`` before or after the subcommand (also on subcommands registered by other modules)."""
    help_ = "show the full traceback instead of a one-line error"
    parser.add_argument("--debug", action="store_true", help=help_)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in action.choices.values():
                if "--debug" not in sp._option_string_actions:
                    # SUPPRESS: a subcommand's default must not overwrite a --debug given before it
                    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=help_)


def add_png_flags(p: argparse.ArgumentParser) -> None:
    """``--png`` (required: checked before any work) / ``--no-png``; default: PNGs where kaleido finds a browser."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--png", dest="png", action="store_const", const=True, default="auto",
                   help="require PNG figures (fails at once when no Chromium is found); default: HTML always, PNG "
                        "too when kaleido finds a Chromium")
    g.add_argument("--no-png", dest="png", action="store_const", const=False, help="HTML figures only")


def png_mode(args):
    """``True`` / ``False`` / ``"auto"``; with ``--png`` the exporter is checked now, before the work starts."""
    from ..plot.export import resolve_png

    if args.png is True:
        resolve_png(True)
    return args.png
