"""The command line every chapter's experiment shares: one parser, one way to make a run record.

    python -m medad.train.<chapter>_experiment --profile long_cpu --data-dir DIR --name NAME [--threads N]
        [--device cpu|cuda|auto] [--fresh] [--checkpoints DIR] [--datasets a,b] [chapter options]

Parameters go through the chapter's schema (``medad/profiles/<chapter>.yml``) before any work;
errors are one line (exit 2), Ctrl-C says how to resume (exit 130). ``--data-dir`` is resolved
against the caller's working directory. The run's checkpoints live outside the work tree
(``--checkpoints``, default ``<medad cache>/runs``); a rerun with the same name resumes under the
same settings, ``--fresh`` discards that run's checkpoints and results and starts afresh.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Callable, Iterable

from medad.errors import ConfigError, command_line
from medad.experiment.record import RunRecord, check_run_name


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def name_list(text: str) -> list[str]:
    """``a,b`` or ``a, b`` -> ['a', 'b']; an empty list is an error."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of names, got {text!r}")
    return names


def run_name(text: str) -> str:
    try:
        return check_run_name(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser(chapter: str, description: str, datasets: bool = False) -> argparse.ArgumentParser:
    """The shared options; a chapter adds its own with ``add_argument`` on the result."""
    from medad import profiles

    ap = argparse.ArgumentParser(prog=f"python -m medad.train.{chapter}_experiment", description=description)
    ap.add_argument("--profile", default="long_cpu", choices=profiles.named_profiles(chapter),
                    help=f"a mapping of medad/profiles/{chapter}.yml")
    ap.add_argument("--data-dir", default=None,
                    help="folder with the archives, relative to the current folder (default: $MEDAD_DATA; none: synthetic)")
    ap.add_argument("--name", required=True, type=run_name, help=f"run name: results/{chapter}/<name>/")
    ap.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: the profile's)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the profile's)")
    ap.add_argument("--fresh", action="store_true",
                    help="discard this run's checkpoints and results folder first and start afresh")
    ap.add_argument("--checkpoints", default=None,
                    help="folder for run states (default: <medad cache>/runs; outside the work tree)")
    if datasets:
        ap.add_argument("--datasets", type=name_list, default=None, help="comma-separated datasets (default: the profile's)")
    return ap


def data_dir_argument(value: str | None) -> str | None:
    """``--data-dir ''`` is a mistake, not "no data directory"; a relative folder is the caller's."""
    if value is None:
        return None
    if not value.strip():
        raise ConfigError("--data-dir '' is empty: give the folder holding the archives, or leave the option out "
                          "(then $MEDAD_DATA, or synthetic data when that is unset)")
    return str(Path(value).expanduser().resolve())


def make_record(chapter: str, args: argparse.Namespace, *, code_files: Iterable[str], overrides: dict | None = None,
                resumable: Iterable[str] = ()) -> RunRecord:
    """The :class:`RunRecord` of a command-line run from the parsed shared options."""
    given = {"threads": args.threads, "device": args.device, **(overrides or {})}
    if getattr(args, "datasets", None) is not None:
        given["datasets"] = args.datasets
    return RunRecord(chapter, args.profile, args.name, data_dir=data_dir_argument(args.data_dir),
                     overrides={k: v for k, v in given.items() if v is not None}, fresh=args.fresh,
                     state_root=args.checkpoints, command=" ".join(shlex.quote(a) for a in
                                                                   [f"python -m medad.train.{chapter}_experiment",
                                                                    *sys.argv[1:]]),
                     code_files=code_files, resumable=resumable)


def main_for(chapter: str, body: Callable[[list[str] | None], object],
             on_interrupt: str = "finished units and checkpoints are kept; to resume, rerun the same command"):
    """Wrap a chapter's ``main(argv)`` with one-line errors and a Ctrl-C message."""
    return command_line(f"python -m medad.train.{chapter}_experiment", on_interrupt=on_interrupt)(body)
