"""The errors medad raises for bad input: each names the file or parameter and what was expected."""
from __future__ import annotations

import functools
import os
import shlex
import sys
import traceback


class MedadError(Exception):
    """Base class: a problem a user can fix, explained in one message."""


class DataError(MedadError):
    """A dataset, archive, image or mask is missing, corrupt or inconsistent."""


class ChecksumError(DataError):
    """An archive's SHA-256 differs from the one the project recorded."""


class ConfigError(MedadError, ValueError):
    """A parameter (profile, dataset name, backbone name, device, ...) is not one we accept."""


class CacheWarning(UserWarning):
    """A cache folder cannot be used (full, read-only, no permission): work goes on without it, and says so."""


class BusyError(MedadError):
    """Another process holds what this one needs (e.g. another build of the same book tree)."""


# --------------------------------------------------------------------------- how errors reach the user
#
# medad's errors are problems a user can fix, so every entry point shows them as one line:
# the command lines through `command_line`, executed notebooks through `show_in_notebooks`
# (registered by medad.chapter.ChapterRun). MEDAD_TRACEBACK=1 shows full tracebacks instead.

INTERRUPTED_EXIT = 130  # the shell's code for a Ctrl-C


def full_tracebacks() -> bool:
    return os.environ.get("MEDAD_TRACEBACK", "") not in ("", "0")


def one_line(exc: BaseException) -> str:
    """``ConfigError: message`` (just the message for a plain MedadError), line breaks folded."""
    message = " ".join(str(exc).split())
    return message if type(exc) is MedadError else f"{type(exc).__name__}: {message}"


def command_line(prog: str, on_interrupt: str = "to start again, rerun"):
    """Decorate a command line's ``main(argv=None)``: medad errors and Ctrl-C end it with one line.

    A :class:`MedadError` prints ``error: ConfigError: ...`` on stderr and returns 2; Ctrl-C
    prints what was interrupted and what to rerun, and returns 130. Anything else is a bug
    and keeps its traceback.
    """

    def decorate(main):
        @functools.wraps(main)
        def guarded(argv=None):
            try:
                status = main(argv)
            except MedadError as exc:
                if full_tracebacks():
                    raise
                print(f"error: {one_line(exc)}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                command = " ".join([prog, *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
                print(f"interrupted; {on_interrupt}: {command}", file=sys.stderr)
                return INTERRUPTED_EXIT
            return 0 if status is None else status

        return guarded

    return decorate


def _short_notebook_error(shell, etype, value, tb, tb_offset=None):
    """IPython custom exception handler: the error as one line, then where medad raised it."""
    if full_tracebacks():
        stb = shell.InteractiveTB.structured_traceback(etype, value, tb, tb_offset=tb_offset)
    else:
        frames = traceback.extract_tb(tb)
        where = f"{frames[-1].filename}:{frames[-1].lineno}, in {frames[-1].name}" if frames else "unknown"
        stb = [one_line(value), f"(raised at {where}; set MEDAD_TRACEBACK=1 for the full traceback)"]
    shell._showtraceback(etype, value, stb)  # publishes the 'error' output papermill reads
    return stb


def show_in_notebooks() -> bool:
    """Make the running IPython kernel (if any) show medad errors as one line; True when registered."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False
    shell.set_custom_exc((MedadError,), _short_notebook_error)
    return True
