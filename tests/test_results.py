"""medad.results: tidy run tables, headline choice, reported numbers, interval formatting."""
import math

import pandas as pd
import pytest

from medad import results
from medad.errors import ConfigError, DataError


def _write(tmp_path, name, kind, finished, value):
    rows = [results.row("lidc", "test", "Prob. U-Net", "GED@16", value, value - 0.1, value + 0.1, seeds=1, n=604)]
    return results.write_run("demo", name, rows, {"kind": kind, "finished": finished, "schedule": "700 iterations"}, root=tmp_path)


def test_round_trip_and_headline_order(tmp_path):
    _write(tmp_path, "cpu-a", "cpu", "2026-11-23 10:00", 0.9)
    _write(tmp_path, "long-old", "long-cpu", "2026-11-21 10:00", 0.5)
    _write(tmp_path, "long-new", "long-cpu", "2026-11-22 10:00", 0.45)
    runs = results.list_runs("demo", root=tmp_path)
    assert [r.name for r in runs] == ["long-new", "long-old", "cpu-a"]
    best = results.headline_run("demo", root=tmp_path)
    assert best.name == "long-new" and best.table["value"].iloc[0] == pytest.approx(0.45)
    assert "long CPU run: 700 iterations" in best.label
    assert results.headline_run("empty", root=tmp_path) is None


def test_bad_kind_and_missing_columns(tmp_path):
    with pytest.raises(ConfigError, match="kind"):
        results.write_run("demo", "x", [], {"kind": "fast"}, root=tmp_path)
    folder = _write(tmp_path, "ok", "cpu", "2026", 0.3)
    pd.DataFrame({"dataset": ["a"]}).to_csv(folder / "table.csv", index=False)
    with pytest.raises(DataError, match="missing column"):
        results.load_run("demo", "ok", root=tmp_path)
    with pytest.raises(DataError, match="reported"):
        results.load_reported("demo", root=tmp_path)


def test_intervals_and_formatting():
    mean, low, high = results.mean_interval([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9) and low < 0.9 < high
    assert high - mean == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert math.isnan(results.mean_interval([0.5])[1])
    assert results.format_interval(0.45, 0.39, 0.51, 2) == "0.45 (0.39–0.51)"
    assert results.format_interval(0.9244, digits=2, percent=True) == "92.44"
    assert results.format_interval(float("nan")) == "–"


def test_wide_and_side_by_side():
    ours = pd.DataFrame([results.row("brain", "K=4", "MVFA", "image AUC", 0.8, 0.7, 0.9, 3, 100)])
    reported = pd.DataFrame([{**results.row("brain", "K=4", "MVFA", "image AUC", 0.9244), "source": "paper"}])
    table = results.side_by_side(ours, reported, "ours (long CPU)", digits=2)
    assert table.loc[0, "ours (long CPU)"] == "0.80 (0.70–0.90)" and table.loc[0, "reported"] == "0.92"
    pivot = results.wide(ours, ["dataset"], ["metric"], digits=2)
    assert pivot.loc["brain", "image AUC"] == "0.80 (0.70–0.90)"
