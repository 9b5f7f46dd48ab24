"""Committed results of long runs: one tidy table per run, its provenance, and the papers' reported numbers.

Layout (small files only, never data or weights)::

    results/<chapter>/<run>/table.csv        one row per number (TABLE_COLUMNS)
    results/<chapter>/<run>/provenance.json  commit, schedule, device, data, seconds, ``kind``
    results/<chapter>/reported.csv           the paper's own numbers, TABLE_COLUMNS + ``source``

A run's ``kind`` (in its provenance) ranks it as a chapter's headline: a GPU
run of the full profile beats a long CPU run, which beats anything else; among
runs of one kind the newest wins. A chapter shows its headline run first,
labelled with its run name and schedule, and this build's quick profile after it.

Intervals (said once, on the Reproducing page): ``ci_low``/``ci_high`` of a row are a 95%
percentile bootstrap over the test images (patients where the dataset has them) within the
run, for several seeds with every seed scored on the same resample
(:func:`rows_from_predictions`); the spread over seeds is the separate ``seed_sd`` column.
Tables written before ``seed_sd`` existed still load (the column is then empty), and
``python -m medad.results convert RUN_FOLDER`` turns an older run's Student-t intervals
over seeds into that convention without retraining (:func:`convert_run`).
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

TABLE_COLUMNS = ("dataset", "setting", "method", "metric", "value", "ci_low", "ci_high", "seeds", "n", "seed_sd")
# seed_sd (standard deviation over seeds) came later: a table without it is still valid, the column is then empty
REQUIRED_COLUMNS = TABLE_COLUMNS[:-1]
OPTIONAL_COLUMNS = ("seed_sd",)
REPORTED_COLUMNS = REQUIRED_COLUMNS + ("source",)
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
    def cut_short(self) -> bool:
        """True for a run stopped before every planned unit finished (its provenance lists what did not run)."""
        units = self.provenance.get("units") or {}
        return bool(self.provenance.get("units_not_run")) or units.get("finished", 0) < units.get("planned", 0)

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


def seed_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation (ddof=1) of per-seed values; one finite value has no s.d. (NaN)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(x) == 0:
        return (math.nan, math.nan)
    return (float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else math.nan)


def row(dataset: str, setting: str, method: str, metric: str, value: float, ci_low: float = math.nan,
        ci_high: float = math.nan, seeds: int = 1, n: int = 0, seed_sd: float = math.nan) -> dict:
    """One tidy row (use this rather than building dicts by hand, so the columns stay right)."""
    return dict(zip(TABLE_COLUMNS, (dataset, setting, method, metric, float(value), float(ci_low), float(ci_high),
                                    int(seeds), int(n), float(seed_sd))))


def rows_from_predictions(dataset: str, setting: str, method: str, metric: str, statistic, per_seed,
                          groups=None, n_boot: int = 1000, seed: int = 0) -> dict:
    """A tidy row in the book's interval convention, from every seed's per-image predictions.

    ``statistic(*arrays) -> float`` is the metric (e.g. ``medad.metrics.classification.roc_auc``
    of labels and scores); ``per_seed`` one tuple of per-image arrays per training seed, the same
    test images in the same order; ``groups`` the patient of each image where the dataset has
    patients. The value is the mean over seeds, the interval a 95% percentile bootstrap over
    test images (every seed scored on the same resample), ``seed_sd`` the seeds' standard deviation
    (:func:`medad.metrics.bootstrap.bootstrap_statistic`).
    """
    from medad.metrics.bootstrap import bootstrap_statistic

    est = bootstrap_statistic(statistic, per_seed, groups=groups, n_boot=n_boot, seed=seed)
    return row(dataset, setting, method, metric, est.value, est.low, est.high, seeds=est.seeds, n=est.n,
               seed_sd=est.seed_sd)


def rows_over_seeds(dataset: str, setting: str, method: str, metric: str, per_seed: Sequence[float], n: int) -> dict:
    """A tidy row from per-seed numbers alone: their mean and s.d. over seeds, and no interval.

    The book's interval resamples test images (:func:`rows_from_predictions`); per-seed summary
    numbers cannot give one, and a Student-t interval over a few seeds is no substitute (over 3
    seeds it leaves [0, 1] for an AUC near 1), so ``ci_low``/``ci_high`` stay NaN.
    """
    mean, sd = seed_spread(per_seed)
    return row(dataset, setting, method, metric, mean, seeds=len(per_seed), n=n, seed_sd=sd)


def check_table(table: pd.DataFrame, where: str, columns: Sequence[str] = TABLE_COLUMNS) -> pd.DataFrame:
    """``table`` with ``columns`` in order; a missing optional column (``seed_sd``) is added empty, any other is an error."""
    optional = [c for c in columns if c in OPTIONAL_COLUMNS]
    missing = [c for c in columns if c not in table.columns and c not in optional]
    if missing:
        expected = ", ".join(c for c in columns if c not in optional) + (f" (optional: {', '.join(optional)})" if optional else "")
        raise DataError(f"{where}: missing column(s) {', '.join(missing)}; a results table has {expected}")
    table = table.assign(**{c: math.nan for c in columns if c not in table.columns})
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
                    percent: bool = False, sd: float = math.nan) -> str:
    """``0.450 (0.390–0.510)``, then `` s.d. 0.012`` when a spread over seeds is given; an en dash when there is no value."""
    if value is None or not np.isfinite(value):
        return "–"
    scale = 100.0 if percent else 1.0
    text = f"{value * scale:.{digits}f}"
    if low is not None and high is not None and np.isfinite(low) and np.isfinite(high):
        text += f" ({low * scale:.{digits}f}–{high * scale:.{digits}f})"
    if sd is not None and np.isfinite(sd):
        text += f" s.d. {sd * scale:.{digits}f}"
    return text


def format_row(r, digits: int = 3, percent: bool = False) -> str:
    """One tidy row (a mapping or Series) as :func:`format_interval` writes it, with its ``seed_sd`` when it has one."""
    return format_interval(r["value"], r["ci_low"], r["ci_high"], digits, percent, r.get("seed_sd", math.nan))


def _cells(table: pd.DataFrame, digits: int, percent: bool) -> list[str]:
    return [format_row(r, digits, percent) for r in table.to_dict("records")]


def wide(table: pd.DataFrame, index: Sequence[str], columns: Sequence[str], digits: int = 3,
         percent: bool = False) -> pd.DataFrame:
    """Pivot a tidy table for display: one cell per number, written as ``value (low–high)``."""
    shown = table.assign(cell=_cells(table, digits, percent))
    out = shown.pivot_table(index=list(index), columns=list(columns), values="cell", aggfunc="first", sort=False)
    out.columns.name = None
    return out.fillna("–")


def side_by_side(ours: pd.DataFrame, reported: pd.DataFrame, ours_label: str, keys: Sequence[str] = ("dataset", "metric"),
                 digits: int = 3, percent: bool = False) -> pd.DataFrame:
    """Our numbers next to the paper's reported ones, one row per ``keys``, columns labelled with their source."""
    mine = ours.assign(**{ours_label: _cells(ours, digits, percent)})
    theirs = reported.assign(reported=_cells(reported, digits, percent))
    merged = mine[list(keys) + [ours_label]].merge(theirs[list(keys) + ["reported"]], on=list(keys), how="outer")
    return merged.fillna("–")


# ----------------------------------------------------------------------------- converting older runs

CONVENTION = ("95% percentile bootstrap over test images (patients where the dataset has them) within the run; "
              "several seeds: each seed scored on the same resample, averaged; spread over seeds in seed_sd")


def _t_quantile(seeds: int, level: float = 0.95) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, seeds - 1))


def _per_seed_values(provenance: dict) -> dict[str, dict[str, list[float]]]:
    """Per-seed numbers a run's provenance stores (``per_seed``, ``seg_per_seed``: unit -> one dict per seed)."""
    out: dict[str, dict[str, list[float]]] = {}
    for key in ("per_seed", "seg_per_seed"):
        for unit, runs in (provenance.get(key) or {}).items():
            if isinstance(runs, list) and runs and all(isinstance(r, dict) for r in runs):
                metrics = {m for r in runs for m, v in r.items() if isinstance(v, (int, float))}
                out[f"{key}:{unit}"] = {m: [float(r[m]) for r in runs if m in r] for m in metrics}
    return out


def _match_units(table: pd.DataFrame, stored: dict) -> dict[tuple, dict[str, list[float]]]:
    """(dataset, setting, method) -> the stored per-seed values whose means equal every row of that method."""
    found = {}
    multi = table[table["seeds"] > 1]
    for key, part in multi.groupby(["dataset", "setting", "method"], sort=False):
        hits = []
        for values in stored.values():
            shared = [r for r in part.to_dict("records") if len(values.get(r["metric"], [])) == r["seeds"]]
            if shared and all(math.isclose(float(np.mean(values[r["metric"]])), r["value"], rel_tol=1e-5, abs_tol=1e-6)
                              for r in shared):
                hits.append(values)
        if len(hits) == 1:  # ambiguous matches (two units with equal means everywhere) are not used
            found[key] = hits[0]
    return found


def convert_table(table: pd.DataFrame, provenance: dict) -> tuple[pd.DataFrame, dict]:
    """An older run's table in the book's interval convention, without retraining; returns (table, what was done).

    Rows over several seeds whose interval is the Student-t interval over seeds (what
    ``rows_over_seeds`` wrote before): the interval becomes NaN (per-seed numbers cannot give a
    bootstrap over images, and none is invented) and ``seed_sd`` the seeds' standard deviation,
    from the per-seed values the provenance stores when it has them, else recovered from the
    t-interval itself (its half-width is t(0.975, k−1)·s.d./√k, so s.d. = half-width·√k / t).
    A row counts as a t-interval when its interval equals the t-interval of its stored per-seed
    values or, without those, when it is symmetric about the value. Every other interval
    (bootstrap over images, asymmetric) is kept; its row still gets ``seed_sd`` from stored values.
    """
    table = check_table(table, "table").copy()
    stored = _match_units(table, _per_seed_values(provenance))
    counts = {"t_intervals_removed": 0, "seed_sd_from_stored_per_seed": 0, "seed_sd_from_t_interval": 0,
              "bootstrap_intervals_kept": 0, "rows_over_seeds_without_sd": 0}
    for i, r in table.iterrows():
        k = int(r["seeds"])
        if k < 2:
            continue
        values = stored.get((r["dataset"], r["setting"], r["method"]), {}).get(r["metric"])
        has_interval = np.isfinite(r["ci_low"]) and np.isfinite(r["ci_high"])
        tol = 2e-5 * max(1.0, abs(r["value"]))  # tables keep 6 significant digits
        if values is not None and len(values) == k:
            mean, sd = seed_spread(values)
            half = _t_quantile(k) * sd / math.sqrt(k)
            is_t = has_interval and abs(r["ci_low"] - (mean - half)) < tol and abs(r["ci_high"] - (mean + half)) < tol
            table.at[i, "seed_sd"] = sd
            counts["seed_sd_from_stored_per_seed"] += 1
        elif has_interval and abs((r["value"] - r["ci_low"]) - (r["ci_high"] - r["value"])) < tol:
            is_t = True
            table.at[i, "seed_sd"] = (r["ci_high"] - r["ci_low"]) / 2 * math.sqrt(k) / _t_quantile(k)
            counts["seed_sd_from_t_interval"] += 1
        else:
            is_t = False
            if not has_interval and not np.isfinite(r["seed_sd"]):
                counts["rows_over_seeds_without_sd"] += 1
        if is_t:
            table.at[i, "ci_low"] = table.at[i, "ci_high"] = math.nan
            counts["t_intervals_removed"] += 1
        elif has_interval:
            counts["bootstrap_intervals_kept"] += 1
    return table, counts


def _same(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Equal tables, numbers compared to the 6 significant digits a table.csv keeps."""
    numbers = ["value", "ci_low", "ci_high", "seed_sd"]
    return (a.drop(columns=numbers).equals(b.drop(columns=numbers))
            and np.allclose(a[numbers].to_numpy(float), b[numbers].to_numpy(float), rtol=1e-5, atol=1e-9, equal_nan=True))


def convert_run(folder: str | Path) -> dict:
    """Convert a committed run folder in place (table.csv, and a note in provenance.json); returns the note."""
    folder = Path(folder)
    for path in (folder / "table.csv", folder / "provenance.json"):
        if not path.is_file():
            raise DataError(f"{path} is missing: convert takes a run folder results/<chapter>/<run> holding table.csv and provenance.json")
    provenance = json.loads((folder / "provenance.json").read_text())
    before = pd.read_csv(folder / "table.csv")
    table, counts = convert_table(before, provenance)
    note = {
        "convention": CONVENTION,
        "converted_from": "Student-t 95% intervals over seeds (rows_over_seeds before the bootstrap convention)",
        "why": "a t-interval over 3 seeds can leave a bounded metric's range (an AUC interval reaching past 1); "
               "per-seed summary numbers cannot give a bootstrap over test images, so those rows keep no interval "
               "and show the spread over seeds (seed_sd) instead; nothing was retrained",
        **counts,
    }
    if counts["seed_sd_from_t_interval"]:
        note["seed_sd_recovery"] = ("no per-seed values stored: seed_sd = half-width x sqrt(k) / t(0.975, k-1) of the removed "
                                    "t-interval, which is exact (to the table's 6 digits) since that interval was "
                                    "mean +- t x s.d. / sqrt(k)")
    if counts["rows_over_seeds_without_sd"]:
        note["seed_sd_missing"] = (f"{counts['rows_over_seeds_without_sd']} rows over several seeds had no interval and "
                                   "no stored per-seed values (e.g. averages over datasets or backbones): their seed_sd "
                                   "stays empty")
    if _same(table, check_table(before, "table")):
        return {**note, "changed": False}
    table.to_csv(folder / "table.csv", index=False, float_format="%.6g")
    provenance["interval_conversion"] = note
    (folder / "provenance.json").write_text(json.dumps(provenance, indent=1, default=str))
    return {**note, "changed": True}


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m medad.results", description="Committed runs under results/.")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="rewrite older runs' Student-t intervals over seeds in the bootstrap convention")
    conv.add_argument("folders", nargs="+", type=Path, help="run folders results/<chapter>/<run>")
    args = parser.parse_args(argv)
    for folder in args.folders:
        note = convert_run(folder)
        what = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in note.items() if isinstance(v, int) and not isinstance(v, bool))
        print(f"{folder}: {'converted' if note['changed'] else 'already in the convention, unchanged'} ({what})")
    return 0


if __name__ == "__main__":
    from medad.errors import command_line

    raise SystemExit(command_line("python -m medad.results")(main)())
