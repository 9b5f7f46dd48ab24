"""medad.results: tidy run tables, headline choice, reported numbers, interval formatting."""
import math

import numpy as np
import pandas as pd
import pytest

from scipy import stats

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


def test_rows_over_seeds_give_the_seeds_spread_and_no_interval():
    r = results.rows_over_seeds("brain", "test", "MVFA", "image AUC", [0.8, 0.9, 1.0], n=80)
    assert r["value"] == pytest.approx(0.9) and r["seed_sd"] == pytest.approx(0.1) and r["seeds"] == 3
    assert math.isnan(r["ci_low"]) and math.isnan(r["ci_high"])  # a t-interval here would reach 1.148
    assert math.isnan(results.rows_over_seeds("b", "t", "m", "auc", [0.5], n=1)["seed_sd"])


def test_rows_from_predictions_follow_the_bootstrap_convention():
    from medad.metrics.classification import roc_auc

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 30)
    per_seed = [(labels, labels + rng.normal(0, s, 60)) for s in (0.6, 0.8, 1.0)]
    r = results.rows_from_predictions("brain", "test", "MVFA", "image AUC", roc_auc, per_seed, n_boot=300)
    aucs = [roc_auc(*p) for p in per_seed]
    assert r["value"] == pytest.approx(np.mean(aucs)) and r["seed_sd"] == pytest.approx(np.std(aucs, ddof=1))
    assert 0 <= r["ci_low"] < r["value"] < r["ci_high"] <= 1 and r["seeds"] == 3 and r["n"] == 60
    assert list(r) == list(results.TABLE_COLUMNS)


def test_formatting():
    assert results.format_interval(0.45, 0.39, 0.51, 2) == "0.45 (0.39–0.51)"
    assert results.format_interval(0.9244, digits=2, percent=True) == "92.44"
    assert results.format_interval(float("nan")) == "–"
    assert results.format_interval(0.518, 0.45, 0.58, 1, percent=True, sd=0.021) == "51.8 (45.0–58.0) s.d. 2.1"
    assert results.format_row(results.row("d", "s", "m", "auc", 0.9, seeds=3, seed_sd=0.1), 2) == "0.90 s.d. 0.10"


def test_tables_without_seed_sd_still_load(tmp_path):
    folder = _write(tmp_path, "old", "cpu", "2026", 0.3)
    old = pd.read_csv(folder / "table.csv").drop(columns="seed_sd")
    old.to_csv(folder / "table.csv", index=False)
    run = results.load_run("demo", "old", root=tmp_path)
    assert list(run.table.columns) == list(results.TABLE_COLUMNS) and run.table["seed_sd"].isna().all()
    assert run.table["value"].iloc[0] == pytest.approx(0.3)


def _t_row(values, metric="auc", method="GAIN", digits=6):
    """A row as rows_over_seeds wrote it before the bootstrap convention: mean and Student-t interval, 6 digits."""
    from scipy import stats

    k = len(values)
    mean, half = np.mean(values), stats.t.ppf(0.975, k - 1) * np.std(values, ddof=1) / math.sqrt(k)
    r = results.row("endo", "test", method, metric, mean, mean - half, mean + half, seeds=k, n=200)
    return {c: (float(f"{v:.{digits}g}") if isinstance(v, float) else v) for c, v in r.items()}


def test_convert_table_removes_t_intervals_and_keeps_bootstrap_ones():
    table = pd.DataFrame([
        _t_row([0.8, 0.9, 1.0]),                                              # AUC 0.9 (0.652–1.148): t over 3 seeds
        results.row("endo", "test", "U-Net", "dice", 0.70, 0.66, 0.75, seeds=3, n=100),  # bootstrap: asymmetric
        results.row("endo", "test", "zero-shot", "auc", 0.6, 0.5, 0.7, seeds=1, n=100),  # one seed: untouched
    ]).drop(columns="seed_sd")
    new, counts = results.convert_table(table, {})
    assert new["ci_low"].isna().tolist() == [True, False, False] and new["ci_high"].isna().tolist() == [True, False, False]
    assert new.loc[0, "seed_sd"] == pytest.approx(0.1, rel=1e-5)  # recovered from the interval's half-width
    assert new.loc[1, ["ci_low", "ci_high"]].tolist() == [0.66, 0.75] and math.isnan(new.loc[1, "seed_sd"])
    assert counts["t_intervals_removed"] == 1 and counts["seed_sd_from_t_interval"] == 1
    assert counts["bootstrap_intervals_kept"] == 1
    # with the per-seed values stored in the provenance, they give seed_sd and confirm the t-interval
    stored = {"per_seed": {"gain": [{"auc": 0.8}, {"auc": 0.9}, {"auc": 1.0}]},
              "seg_per_seed": {"unet": [{"dice": 0.68}, {"dice": 0.70}, {"dice": 0.72}]}}
    new, counts = results.convert_table(table, stored)
    assert counts["seed_sd_from_stored_per_seed"] == 2 and counts["t_intervals_removed"] == 1
    assert new.loc[1, "seed_sd"] == pytest.approx(0.02) and new.loc[1, "ci_low"] == 0.66


def test_seed_sd_recovered_from_a_t_interval_equals_the_stored_per_seed_sd():
    """On the EGC run's own per-seed numbers: the recovery used for runs that stored none is exact (to 6 digits)."""
    import json

    prov = json.loads((results.RESULTS_DIR / "egc" / "long-cpu-2026-11-23b" / "provenance.json").read_text())
    rows, expected = [], []
    for unit, runs in prov["per_seed"].items():
        for metric in ("accuracy", "auc", "f1", "attention_iou", "pointing_game"):
            rows.append(_t_row([r[metric] for r in runs], metric, unit))
            expected.append(np.std([r[metric] for r in runs], ddof=1))
    new, counts = results.convert_table(pd.DataFrame(rows), {})
    assert counts["t_intervals_removed"] == len(rows) and new["ci_low"].isna().all()
    np.testing.assert_allclose(new["seed_sd"], expected, rtol=1e-4, atol=1e-6)


def test_convert_run_writes_a_note_and_is_idempotent(tmp_path):
    folder = tmp_path / "demo" / "run"
    folder.mkdir(parents=True)
    pd.DataFrame([_t_row([0.8, 0.9, 1.0])]).drop(columns="seed_sd").to_csv(folder / "table.csv", index=False)
    (folder / "provenance.json").write_text('{"kind": "long-cpu"}')
    assert results.main(["convert", str(folder)]) == 0
    run = results.load_run("demo", "run", root=tmp_path)
    note = run.provenance["interval_conversion"]
    assert note["t_intervals_removed"] == 1 and "bootstrap over test images" in note["convention"]
    assert run.table["ci_low"].isna().all() and run.table["seed_sd"].iloc[0] == pytest.approx(0.1, rel=1e-5)
    assert results.convert_run(folder)["changed"] is False
    with pytest.raises(DataError, match="table.csv"):
        results.convert_run(tmp_path / "nothing")


BOUNDED = r"auc|acc|f1|iou|dice|pointing|specific|sensitiv|recall|precision"


@pytest.mark.parametrize("path", sorted(results.RESULTS_DIR.glob("*/*/table.csv")),
                         ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_committed_intervals_of_bounded_metrics_stay_in_range(path):
    table = pd.read_csv(path)
    text = table["setting"] + " " + table["method"] + " " + table["metric"]
    bounded = table["metric"].str.contains(BOUNDED, case=False) & ~text.str.contains("difference|delta")
    top = 100.0 if (table.loc[bounded, "value"].dropna() > 1).any() else 1.0
    part = table[bounded]
    assert ((part["ci_low"] >= 0) | part["ci_low"].isna()).all() and ((part["ci_high"] <= top) | part["ci_high"].isna()).all()
    # no Student-t interval over seeds is left: an interval on a row over several seeds is a bootstrap (asymmetric)
    multi = table[(table["seeds"] > 1) & table["ci_low"].notna() & ~text.str.contains("difference")]
    half = (multi["ci_high"] - multi["ci_low"]) / 2
    symmetric = ((multi["value"] - multi["ci_low"] - half).abs() < 2e-5) & (half > 0)  # [1, 1] is no Student-t
    sd = multi["seed_sd"] if "seed_sd" in multi else pd.Series(np.nan, index=multi.index)
    t_half = stats.t.ppf(0.975, multi["seeds"] - 1) * sd / np.sqrt(multi["seeds"])
    # symmetric by chance (a bootstrap of a discrete score) is fine; symmetric with the t half-width of the seeds is not
    student = symmetric & (sd.isna() | ((half - t_half).abs() < 1e-4))
    assert not student.any(), multi[student][["method", "metric"]].to_string()


def test_wide_and_side_by_side():
    ours = pd.DataFrame([results.row("brain", "K=4", "MVFA", "image AUC", 0.8, 0.7, 0.9, 3, 100)])
    reported = pd.DataFrame([{**results.row("brain", "K=4", "MVFA", "image AUC", 0.9244), "source": "paper"}])
    table = results.side_by_side(ours, reported, "ours (long CPU)", digits=2)
    assert table.loc[0, "ours (long CPU)"] == "0.80 (0.70–0.90)" and table.loc[0, "reported"] == "0.92"
    pivot = results.wide(ours, ["dataset"], ["metric"], digits=2)
    assert pivot.loc["brain", "image AUC"] == "0.80 (0.70–0.90)"
