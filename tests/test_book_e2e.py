"""End to end: the data-atlas chapter executed by papermill (quick profile) and the HTML book built.

Runs in a copy of the book's sources in a temporary folder, so a developer's
own executed chapters are left alone.
"""
from __future__ import annotations

import shutil

import nbformat
import pytest

from medad import pipeline
from medad.paths import REPO_ROOT
from medad.reports.notebook_checks import residue

pytestmark = pytest.mark.slow


@pytest.fixture
def book_copy(tmp_path, monkeypatch):
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    shutil.copytree(REPO_ROOT / "book", tmp_path / "book", ignore=shutil.ignore_patterns("_build", "executed", "mathjax"))
    monkeypatch.setattr(pipeline, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(pipeline, "BOOK_DIR", tmp_path / "book")
    monkeypatch.setattr(pipeline, "EXECUTED_DIR", tmp_path / "book" / "executed")
    monkeypatch.setattr(pipeline, "TOC", tmp_path / "_toc.yml")
    return tmp_path


def test_data_atlas_executes_and_book_builds(book_copy):
    lines = []
    status = pipeline.build_book("quick", None, chapters=["data_atlas"], echo=lines.append)
    report = "\n".join(lines)
    assert status == 0, report
    assert "data_atlas: executed" in report

    executed = nbformat.read(book_copy / "book" / "executed" / "data_atlas.ipynb", as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert residue(executed) == []  # no stderr, warnings or progress bars in the rendered chapter
    images = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # sample grids, intensity plot, LIDC agreement and disagreement figures

    html = (book_copy / "book" / "_build" / "html" / "book" / "executed" / "data_atlas.html").read_text()
    assert "Provenance" in html and "synthetic" in html and "quick" in html
    assert "glue" not in html.split("Provenance")[0][-200:]  # the glue directive was resolved, not left as text
    assert (book_copy / "book" / "_build" / "html" / "_static" / "mathjax" / "tex-mml-chtml.js").is_file()
    assert "cdn.jsdelivr" not in html
