"""The few lines every chapter notebook starts and ends with.

A chapter notebook does::

    run = ChapterRun("prob_unet", profile=profile, data_dir=data_dir, seed=seed, device=device, epochs=epochs)
    cfg = run.config                     # the profile's values, overridden by the parameters cell
    train = run.open_dataset("lidc", "train")
    ...
    run.glue("test_ged", ged)            # a number the prose shows with {glue:text}`test_ged:.3f`
    run.finish()                         # glues the provenance table and the time taken

and its first markdown cell shows the provenance table with the ``glue:md``
directive (see notebooks/data_atlas.py). Each run also writes
``provenance.json`` (and anything the chapter saves) to ``run.out_dir``, and
``reads.json``: the medad modules the chapter imported and the archives it
read, which the book pipeline hashes to decide when to re-execute it.

In a notebook, ``ChapterRun`` also makes the kernel show medad's errors
(bad parameters, missing data) as one line instead of a long traceback.
"""
from __future__ import annotations

import ast
import json
import os
import sys
import time
from pathlib import Path

from medad import params, profiles, provenance
from medad.data.registry import get_spec, resolve_data_dir
from medad.errors import ConfigError, show_in_notebooks
from medad.paths import REPO_ROOT
from medad.runtime import device_description


class PlainText:
    """A string that glues as itself: plain strings would show in the book with their quotes ('real')."""

    def __init__(self, text: str):
        self.text = text

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(self.text)

    def __repr__(self) -> str:
        return self.text


def _check_renders_as_text(name: str, value: str) -> None:
    # myst-nb's {glue:text} reads glued text as a Python literal when it can: "1,500" shows as (1, 500).
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return
    if not isinstance(parsed, str) and str(parsed) != value:
        raise ValueError(
            f"glue {name!r}: the text {value!r} would be shown as {parsed!r}; glue the number itself "
            f"and format it in the prose, e.g. {{glue:text}}`{name}:,`"
        )


def glue(name: str, value, display: bool = False) -> None:
    """myst-nb's glue when the book tools are installed; otherwise just keep the value visible."""
    if isinstance(value, str):
        _check_renders_as_text(name, value)
        value = PlainText(value)
    try:
        from myst_nb import glue as _glue
    except ImportError:  # running outside the book toolchain: show, don't fail
        print(f"{name} = {value!r}")
        return
    _glue(name, value, display=display)


READS_FILE = "reads.json"  # in the run folder: what ChapterRun.finish saw the chapter use (medad.pipeline hashes it)


def imported_medad_files() -> list[str]:
    """Source files of every imported medad module, relative to the repository when inside it."""
    files = set()
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if (name == "medad" or name.startswith("medad.")) and path:
            path = Path(path).resolve()
            files.add(path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else str(path))
    return sorted(files)


def _assigned_names(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}


def unknown_injected_parameters(history: list[str]) -> tuple[list[str], list[str]]:
    """(names papermill injected that the notebook's parameters cell lacks, the names it has).

    ``history`` is the kernel's input history (IPython's ``In``): papermill's injected cell
    starts with ``# Parameters`` and runs right after the cell tagged ``parameters``.
    """
    for i, source in enumerate(history):
        if i > 0 and source.startswith("# Parameters\n"):
            declared = _assigned_names(history[i - 1])
            if declared:
                return sorted(_assigned_names(source) - declared), sorted(declared)
    return [], []


def _refuse_unknown_papermill_parameters(chapter: str, passed: set[str] = frozenset()) -> None:
    """papermill only warns about a parameter the notebook does not have, and a misspelt one is then ignored.

    The notebook's own parameters (declared in its parameters cell, not passed to ChapterRun in ``passed``)
    are checked against the chapter's schema here, as the others are in ``profiles.resolve``.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    unknown, declared = unknown_injected_parameters(shell.user_ns.get("In", []) if shell else [])
    if unknown:
        raise ConfigError(f"{chapter}: unknown parameter(s) {', '.join(unknown)} given to papermill; "
                          f"this notebook's parameters: {', '.join(declared)}")
    own = {n: shell.user_ns.get(n) for n in declared if n not in passed and n not in ("profile", "data_dir")} if shell else {}
    params.validate(chapter, {n: v for n, v in own.items() if v is not None})


def caller_dir() -> Path:
    """The folder a relative ``data_dir`` given to a chapter is relative to: where its command was typed.

    In a notebook kernel that is the shell's ``$PWD``, which the kernel inherits from the
    command that started it (papermill, jupyter), since the kernel itself may run
    elsewhere (``papermill --cwd notebooks``); ``python -m medad book`` passes an absolute
    path. Elsewhere it is the current working directory.
    """
    try:
        from IPython import get_ipython

        in_kernel = get_ipython() is not None and hasattr(get_ipython(), "kernel")
    except ImportError:
        in_kernel = False
    pwd = os.environ.get("PWD", "")
    if in_kernel and os.path.isabs(pwd) and os.path.isdir(pwd):
        return Path(pwd)
    return Path.cwd()


class ChapterRun:
    """Resolves a chapter's parameters, seeds, threads and device, and records provenance.

    It is a notebook's :class:`medad.experiment.record.RunRecord` (no run name: nothing is written
    under ``results/``) plus glue: ``run.opener`` opens and records datasets, ``run.state`` is where
    the experiment keeps checkpoints (a folder under ``runs/`` for the full profile, none otherwise).
    """

    def __init__(self, chapter: str, profile: str = "quick", data_dir: str | None = None, **given):
        from medad.experiment.record import RunRecord, RunState

        show_in_notebooks()  # first: a bad parameter below is already shown as one line
        _refuse_unknown_papermill_parameters(chapter, set(given))
        self.chapter = chapter
        self.config = profiles.resolve(chapter, profile, **given)
        self.profile = profile
        self.out_dir = Path(os.environ.get("MEDAD_RUN_DIR") or REPO_ROOT / "runs" / f"{chapter}-{profile}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # the data directory is absolute from here on (and in provenance): relative to where the command was typed
        self.run_record = RunRecord(chapter, profile, None, data_dir=resolve_data_dir(data_dir, base=caller_dir()),
                                    resolved=self.config)
        self.opener = self.run_record.opener
        self.seed, self.device, self.data_dir = self.run_record.seed, self.run_record.device, self.run_record.data_dir
        self.state = RunState(self.out_dir / "state" if profile == "full" else None)
        self._data = self.opener.datasets  # provenance entries are read from the opener at finish()
        self._t0 = time.perf_counter()
        self.record = {
            "chapter": chapter,
            "commit": provenance.git_commit(),
            "profile": profile,
            "device": device_description(self.device),
            "threads": self.run_record.threads,
            "seed": self.seed,
            "started": provenance.now_utc(),
            "parameters": {k: v for k, v in self.config.items() if k not in ("profile", "seed", "device")},
            "data": [],
            "environment": provenance.environment(),
        }

    @property
    def uses_real_data(self) -> bool:
        return self.data_dir is not None

    def open_dataset(self, name: str, split: str = "train", **kwargs):
        """``medad.data.open_dataset`` with this run's data directory, recorded in the provenance.

        The run's seed is *not* passed on: seeded carve-outs (a val split) and
        synthetic data stay the same across training seeds, as real data does.
        """
        ds = self.opener(name, split, **kwargs)
        self.record["data"] = self.opener.provenance()  # the record is current after each opening, not only at finish
        return ds

    def note_dataset(self, ds) -> None:
        if ds not in self.opener.datasets:
            self.opener.datasets.append(ds)

    def glue(self, name: str, value, display: bool = False) -> None:
        glue(name, value, display=display)

    def reads(self) -> dict:
        """What this execution depended on: medad's imported source files and the real archives opened."""
        archives = {get_spec(ds.name).manifest_key for ds in self.opener.datasets if not ds.synthetic}
        return {"modules": imported_medad_files(), "archives": sorted(archives)}

    def finish(self) -> dict:
        """Glue the provenance table and the time taken; write provenance.json; return the record."""
        self.record["data"] = self.opener.provenance()
        self.record["seconds"] = round(time.perf_counter() - self._t0, 1)
        self.record["finished"] = provenance.now_utc()
        (self.out_dir / "provenance.json").write_text(json.dumps(self.record, indent=2, default=str))
        (self.out_dir / READS_FILE).write_text(json.dumps(self.reads(), indent=1))
        from IPython.display import Markdown

        glue("provenance", Markdown(provenance.markdown_table(self.record)), display=False)
        glue("seconds_taken", self.record["seconds"], display=False)
        return self.record
