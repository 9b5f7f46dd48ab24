"""The book's chapters as a reader meets them: no stderr or warnings in executed notebooks,
the Prob. U-Net long run in the tidy results format, the report blocks every chapter shares."""
from __future__ import annotations

import json
import shutil

import nbformat
import pandas as pd
import pytest

from medad import results
from medad.paths import BOOK_DIR, RESULTS_DIR
from medad.reports import common
from medad.reports import prob_unet as report
from medad.reports.notebook_checks import residue

LONG_RUN = RESULTS_DIR / "prob_unet" / "long-cpu-2026-11-22"


def _notebook(*outputs):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x = 1")
    cell.outputs = list(outputs)
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), cell]
    return nb


def test_residue_finds_stderr_warnings_and_progress_bars():
    clean = _notebook(nbformat.v4.new_output("stream", name="stdout", text="GED 0.45\n"),
                      nbformat.v4.new_output("display_data", data={"text/plain": "a table"}))
    assert residue(clean) == []
    assert "stderr" in residue(_notebook(nbformat.v4.new_output("stream", name="stderr", text="anything")))[0]
    warned = _notebook(nbformat.v4.new_output("stream", name="stdout", text="x.py:3: UserWarning: careful\n"))
    assert "UserWarning" in residue(warned)[0]
    bar = _notebook(nbformat.v4.new_output("display_data", data={"text/plain": "train: 50%| 40/80 [00:03<00:03, 12.1it/s]"}))
    assert residue(bar)


EXECUTED = sorted((BOOK_DIR / "executed").glob("*.ipynb"))


@pytest.mark.skipif(not EXECUTED, reason="no executed chapters in book/executed (run `python -m medad book` first)")
@pytest.mark.parametrize("path", EXECUTED, ids=[p.stem for p in EXECUTED])
def test_executed_chapters_have_no_stderr_or_warnings(path):
    assert residue(nbformat.read(path, as_version=4)) == []


def test_long_run_tidy_rows_match_its_results_json():
    long = json.loads((LONG_RUN / "results.json").read_text())
    oracle = json.loads((LONG_RUN / "oracle.json").read_text())
    table = pd.DataFrame(report.tidy_long_run(long, oracle))
    assert list(table.columns) == list(results.TABLE_COLUMNS)
    curve = {(c["title"], c["samples"]): c for c in long["curve"]}
    for (method, samples), c in curve.items():  # every curve point is a row with its interval
        v, lo, hi = report.value(table, method, "GED", f"{samples} samples", "LIDC")
        assert (v, lo, hi) == pytest.approx((c["mean"], c["low"], c["high"]))
    assert len(table) == 3 * len(long["curve"]) + 2 * len(long["table"]) + len(long["by_graders"]) \
        + len(long["training"]) + len(oracle["table"])
    assert set(table.loc[table["dataset"] == "synthetic LIDC", "method"]) == {"Prob. U-Net", "oracle"}


def test_convert_long_run_keeps_files_and_makes_it_the_headline(tmp_path):
    folder = tmp_path / "prob_unet" / LONG_RUN.name
    shutil.copytree(LONG_RUN, folder)
    (folder / "table.csv").unlink()
    before = json.loads((folder / "provenance.json").read_text())
    report.convert_long_run(folder)
    assert {p.name for p in folder.iterdir()} >= {"results.json", "oracle.json", "per_slice.npz", "table.csv"}
    run = results.headline_run("prob_unet", root=tmp_path)
    assert run.kind == "long-cpu" and run.provenance["commit"] == before["commit"]
    assert "700 iterations per model" in run.label and "64x64" in run.label
    committed = results.load_run("prob_unet", LONG_RUN.name)  # the committed table is what the converter writes
    pd.testing.assert_frame_equal(run.table, committed.table)


def test_convert_long_run_names_a_missing_file(tmp_path):
    with pytest.raises(results.DataError, match="results.json"):
        report.convert_long_run(tmp_path / "nothing")


def test_headline_table_puts_run_and_reported_side_by_side():
    run, table = common.headline("prob_unet", select=report.headline_rows)
    assert run.name == results.headline_run("prob_unet").name and run.kind in results.HEADLINE_KINDS
    assert list(table.columns) == ["GED, this book", "GED, reported", "HM-IoU, this book", "HM-IoU, reported"]
    expected = report.interval(run.table, "Prob. U-Net", "GED", "16 samples", "LIDC")
    assert table.loc["Prob. U-Net", "GED, this book"] == expected and "–" in expected
    assert table.loc["Prob. U-Net", "GED, reported"] == "0.239"  # PHiSeg's second-hand number
    reported = results.load_reported("prob_unet")
    assert reported["source"].str.len().gt(0).all()
    assert table.loc["MedFM (flow matching)", "GED, this book"] == "–"


def test_parameters_table_from_profile_with_schema_help(tmp_path, monkeypatch):
    from medad import profiles

    (tmp_path / "demo.yml").write_text(
        "quick:\n  epochs: 2\n  datasets: [a, b]\n"
        "full:\n  epochs: 50\n  datasets: [a, b, c]\n"
        "schema:\n  epochs: {type: int, min: 1, help: 'passes over the training images'}\n"
        "  datasets: {type: 'list[str]'}\n")
    monkeypatch.setattr(profiles, "PROFILE_DIR", tmp_path)
    table = common.parameters_table("demo").set_index("parameter")
    assert table.loc["epochs"].tolist() == ["2", "50", "passes over the training images (int, >= 1)"]
    assert table.loc["datasets"].tolist() == ["a, b", "a, b, c", "(list[str])"]


def test_every_chapter_profile_renders_a_parameters_table():
    for chapter in ("prob_unet", "backbones", "data_atlas"):
        table = common.parameters_table(chapter)
        assert len(table) >= 4 and table["quick"].ne("").all()
