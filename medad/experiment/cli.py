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


def name_list(text: str | None, option: str) -> list[str] | None:
    """``a,b`` or ``a, b`` -> ['a', 'b'] (None stays None); an empty list is an error naming the option."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ConfigError(f"{option} {text!r}: expected a comma-separated list of names")
    return names


def parser(chapter: str, description: str, datasets: bool = False, finished_only: bool = False) -> argparse.ArgumentParser:
    """The shared options; a chapter adds its own with ``add_argument`` on the result.

    ``finished_only``: the chapter's run is made of units (RunState) and can tabulate a run cut short."""
    from medad import profiles

    ap = argparse.ArgumentParser(prog=f"python -m medad.train.{chapter}_experiment", description=description)
    ap.add_argument("--profile", default="long_cpu",
                    help=f"a mapping of medad/profiles/{chapter}.yml: {', '.join(profiles.named_profiles(chapter))}")
    ap.add_argument("--data-dir", default=None,
                    help="folder with the archives, relative to the current folder (default: $MEDAD_DATA; none: synthetic)")
    ap.add_argument("--name", required=True, help=f"run name: results/{chapter}/<name>/")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch, >= 1 (default: the profile's)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the profile's)")
    ap.add_argument("--fresh", action="store_true",
                    help="discard this run's checkpoints and results folder first and start afresh")
    ap.add_argument("--checkpoints", default=None,
                    help="folder for run states (default: <medad cache>/runs; outside the work tree)")
    if datasets:
        ap.add_argument("--datasets", default=None, help="comma-separated datasets (default: the profile's)")
    if finished_only:
        ap.add_argument("--finished-only", action="store_true",
                        help="write the table from the units already finished (a run cut short); train nothing")
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
    check_run_name(args.name, "--name")
    given = {"threads": args.threads, "device": args.device, **(overrides or {})}
    if getattr(args, "datasets", None) is not None:
        given["datasets"] = name_list(args.datasets, "--datasets")
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
