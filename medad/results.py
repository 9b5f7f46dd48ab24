"""Committed results of long runs: one tidy table per run, its provenance, and the papers' reported numbers.

Layout (small files only, never data or weights)::

    results/<chapter>/<run>/table.csv        one row per number (TABLE_COLUMNS)
    results/<chapter>/<run>/provenance.json  commit, schedule, device, data, seconds, ``kind``
    results/<chapter>/reported.csv           the paper's own numbers, TABLE_COLUMNS + ``source``

A run's ``kind`` (in its provenance) ranks it as a chapter's headline: a GPU
run of the full profile beats a long CPU run, which beats anything else; among
runs of one kind the newest wins. A chapter shows its headline run first,
labelled with its run name and schedule, and this build's quick profile after it.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from medad.errors import ConfigError, DataError
from medad.paths import RESULTS_DIR

TABLE_COLUMNS = ("dataset", "setting", "method", "metric", "value", "ci_low", "ci_high", "seeds", "n")
REPORTED_COLUMNS = TABLE_COLUMNS + ("source",)
# Headline order: the first kind present wins (medad.experiment.record.run_kind decides a run's kind).
# "cpu" is the kind of runs committed before that rule existed. A smoke run (quick profile or synthetic
# data) and a rehearsal are never a chapter's headline.
RUN_KINDS = ("gpu-full", "long-cpu", "gpu", "cpu", "smoke", "rehearsal")
HEADLINE_KINDS = ("gpu-full", "long-cpu", "gpu", "cpu")


@dataclass
class Run:
    """One committed run: its folder, tidy table and provenance."""

    chapter: str
    name: str
    path: Path
    table: pd.DataFrame
    provenance: dict

    @property
    def kind(self) -> str:
        return self.provenance.get("kind", "cpu")

    @property
    def label(self) -> str:
        """How the book names this run: ``long-cpu-2026-11-22 (long CPU run: 700 iterations per model)``."""
        schedule = self.provenance.get("schedule", "")
        kind = {"gpu-full": "GPU, full profile", "long-cpu": "long CPU run", "gpu": "GPU run", "cpu": "CPU run",
                "smoke": "smoke run, not a result"}.get(self.kind, self.kind)
        return f"{self.name} ({kind}{': ' + schedule if schedule else ''})"


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval of per-seed values; a single value has no interval (NaN bounds)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(x) == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if len(x) < 2:
        return (mean, math.nan, math.nan)
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return (mean, mean - half, mean + half)


def row(dataset: str, setting: str, method: str, metric: str, value: float, ci_low: float = math.nan,
        ci_high: float = math.nan, seeds: int = 1, n: int = 0) -> dict:
    """One tidy row (use this rather than building dicts by hand, so the columns stay right)."""
    return dict(zip(TABLE_COLUMNS, (dataset, setting, method, metric, float(value), float(ci_low), float(ci_high), int(seeds), int(n))))


def rows_over_seeds(dataset: str, setting: str, method: str, metric: str, per_seed: Sequence[float], n: int) -> dict:
    """A tidy row whose value and interval summarise one number measured under several seeds."""
    mean, low, high = mean_interval(per_seed)
    return row(dataset, setting, method, metric, mean, low, high, seeds=len(per_seed), n=n)


def check_table(table: pd.DataFrame, where: str, columns: Sequence[str] = TABLE_COLUMNS) -> pd.DataFrame:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)}; a results table has {', '.join(columns)}")
    return table[list(columns)]


def table_frame(rows: Iterable[dict] | pd.DataFrame) -> pd.DataFrame:
    """Tidy rows (dicts from :func:`row`) or a DataFrame, as a DataFrame."""
    return rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_run_name(chapter: str, name) -> str:
    """A run name is one folder name under ``results/<chapter>/`` (``long-cpu-2026-11-22``): letters, digits, ``.``,
    ``_``, ``-``, starting with a letter or digit. Anything else (``../mvfa/x``, ``a/b``, ``..``) could read or
    write another chapter's runs: a ConfigError."""
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name) or set(name) == {"."}:
        raise ConfigError(f"run name {name!r} for chapter {chapter!r} must be one folder name under results/{chapter}/ "
                          "(letters, digits, '.', '_', '-'; no '/' or '..'), e.g. long-cpu-2026-11-22")
    return name


def write_run(chapter: str, name: str, rows: Iterable[dict] | pd.DataFrame, provenance: dict,
              root: Path | None = None) -> Path:
    """Write ``table.csv`` and ``provenance.json`` of one run; returns the run's folder.

    ``provenance`` must say the run's ``kind`` (one of RUN_KINDS) and should say its
    ``schedule`` in a few words (what the book prints next to the run's name).
    """
    check_run_name(chapter, name)
    if provenance.get("kind") not in RUN_KINDS:
        raise ConfigError(f"provenance['kind'] must be one of {', '.join(RUN_KINDS)}, got {provenance.get('kind')!r}")
    table = check_table(pd.DataFrame(list(rows) if not isinstance(rows, pd.DataFrame) else rows), f"run {name}")
    folder = (root or RESULTS_DIR) / chapter / name
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "table.csv", index=False, float_format="%.6g")
    (folder / "provenance.json").write_text(json.dumps({"chapter": chapter, "run": name, **provenance}, indent=1, default=str))
    return folder


def load_run(chapter: str, name: str, root: Path | None = None) -> Run:
    folder = (root or RESULTS_DIR) / chapter / check_run_name(chapter, name)
    table_path, prov_path = folder / "table.csv", folder / "provenance.json"
    for path in (table_path, prov_path):
        if not path.is_file():
            raise DataError(f"committed run {chapter}/{name}: {path} is missing (a run folder holds table.csv and provenance.json)")
    table = check_table(pd.read_csv(table_path), str(table_path))
    return Run(chapter, name, folder, table, json.loads(prov_path.read_text()))


def list_runs(chapter: str, root: Path | None = None) -> list[Run]:
    """Every committed run of a chapter, headline first (by RUN_KINDS, then newest)."""
    base = (root or RESULTS_DIR) / chapter
    runs = [load_run(chapter, p.parent.name, root) for p in sorted(base.glob("*/table.csv")) if (p.parent / "provenance.json").is_file()]

    def rank(run: Run):
        kind = RUN_KINDS.index(run.kind) if run.kind in RUN_KINDS else len(RUN_KINDS)
        return (kind, _negated(run.provenance.get("finished") or run.provenance.get("started") or ""))

    return sorted(runs, key=rank)


def _negated(text: str) -> tuple:
    return tuple(-ord(c) for c in text)


def headline_run(chapter: str, name: str | None = None, root: Path | None = None) -> Run | None:
    """The named run, or the chapter's best committed run; None when it has none."""
    if name:
        return load_run(chapter, name, root)
    runs = [r for r in list_runs(chapter, root) if r.kind in HEADLINE_KINDS]
    return runs[0] if runs else None


def load_reported(chapter: str, root: Path | None = None) -> pd.DataFrame:
    """The paper's reported numbers (``results/<chapter>/reported.csv``), with their ``source``."""
    path = (root or RESULTS_DIR) / chapter / "reported.csv"
    if not path.is_file():
        raise DataError(f"{path} is missing: the paper's reported numbers for chapter {chapter!r}")
    return check_table(pd.read_csv(path), str(path), REPORTED_COLUMNS)


def format_interval(value: float, low: float = math.nan, high: float = math.nan, digits: int = 3,
                    percent: bool = False) -> str:
    """``0.450 (0.390–0.510)``; just the value when there is no interval; an en dash when there is no value."""
    if value is None or not np.isfinite(value):
        return "–"
    scale = 100.0 if percent else 1.0
    text = f"{value * scale:.{digits}f}"
    if low is not None and high is not None and np.isfinite(low) and np.isfinite(high):
        text += f" ({low * scale:.{digits}f}–{high * scale:.{digits}f})"
    return text


def wide(table: pd.DataFrame, index: Sequence[str], columns: Sequence[str], digits: int = 3,
         percent: bool = False) -> pd.DataFrame:
    """Pivot a tidy table for display: one cell per number, written as ``value (low–high)``."""
    shown = table.assign(cell=[format_interval(v, lo, hi, digits, percent)
                               for v, lo, hi in zip(table["value"], table["ci_low"], table["ci_high"])])
    out = shown.pivot_table(index=list(index), columns=list(columns), values="cell", aggfunc="first", sort=False)
    out.columns.name = None
    return out.fillna("–")


def side_by_side(ours: pd.DataFrame, reported: pd.DataFrame, ours_label: str, keys: Sequence[str] = ("dataset", "metric"),
                 digits: int = 3, percent: bool = False) -> pd.DataFrame:
    """Our numbers next to the paper's reported ones, one row per ``keys``, columns labelled with their source."""
    mine = ours.assign(**{ours_label: [format_interval(v, lo, hi, digits, percent)
                                       for v, lo, hi in zip(ours["value"], ours["ci_low"], ours["ci_high"])]})
    theirs = reported.assign(reported=[format_interval(v, lo, hi, digits, percent)
                                       for v, lo, hi in zip(reported["value"], reported["ci_low"], reported["ci_high"])])
    merged = mine[list(keys) + [ours_label]].merge(theirs[list(keys) + ["reported"]], on=list(keys), how="outer")
    return merged.fillna("–")
