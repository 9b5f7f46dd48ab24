"""Book pipeline: chapter discovery, re-execution only on change, failures reported at the end; profiles and provenance."""
from __future__ import annotations

import json

import pytest

from medad import pipeline, profiles, provenance
from medad.chapter import ChapterRun
from medad.errors import ConfigError

OK_CHAPTER = '''# %% tags=["parameters"]
profile = "quick"
data_dir = None
# %%
print("ran", profile)
'''
BAD_CHAPTER = '''# %% tags=["parameters"]
profile = "quick"
data_dir = None
# %%
raise ValueError("this chapter is broken on purpose")
'''


def test_chapters_come_from_the_toc_in_order(tmp_path):
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: book/intro\nparts:\n- caption: A\n  chapters:\n  - file: book/executed/one\n"
                   "  - file: book/other\n- caption: B\n  chapters:\n  - file: book/executed/two\n")
    assert pipeline.chapters_from_toc(toc) == ["one", "two"]


def test_real_toc_lists_the_data_atlas():
    assert "data_atlas" in pipeline.chapters_from_toc()


@pytest.mark.slow
def test_failing_chapter_does_not_stop_the_others_and_is_named(tmp_path, monkeypatch):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "good.py").write_text(OK_CHAPTER)
    (notebooks / "bad.py").write_text(BAD_CHAPTER)
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: book/intro\nchapters:\n- file: book/executed/bad\n- file: book/executed/good\n")
    monkeypatch.setattr(pipeline, "NOTEBOOKS_DIR", notebooks)
    monkeypatch.setattr(pipeline, "EXECUTED_DIR", tmp_path / "executed")
    monkeypatch.setattr(pipeline, "TOC", toc)
    monkeypatch.setattr(pipeline, "REPO_ROOT", tmp_path)
    lines = []
    status = pipeline.build_book("quick", None, html=False, echo=lines.append)
    report = "\n".join(lines)
    assert status == 1
    assert "bad: failed" in report and "good: executed" in report
    assert "1 chapter(s) failed" in report and "ValueError: this chapter is broken on purpose" in report
    # the failing notebook is still written, with its error, so the book can show it
    assert (tmp_path / "executed" / "bad.ipynb").is_file()

    # second run: the good chapter is unchanged and cached; the bad one is tried again
    lines.clear()
    assert pipeline.build_book("quick", None, html=False, echo=lines.append) == 1
    report = "\n".join(lines)
    assert "good: cached" in report and "bad: failed" in report

    # a changed parameter (profile) or source re-executes
    lines.clear()
    pipeline.build_book("quick", None, chapters=["good"], html=False, echo=lines.append)
    assert "good: cached" in "\n".join(lines)
    (notebooks / "good.py").write_text(OK_CHAPTER + "\nprint('changed')\n")
    lines.clear()
    assert pipeline.build_book("quick", None, chapters=["good"], html=False, echo=lines.append) == 0
    assert "good: executed" in "\n".join(lines)
    import nbformat

    executed = nbformat.read(tmp_path / "executed" / "good.ipynb", as_version=4)
    outputs = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "ran quick" in outputs and "changed" in outputs


def test_stamp_depends_on_parameters_and_data(tmp_path, monkeypatch):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "good.py").write_text(OK_CHAPTER)
    monkeypatch.setattr(pipeline, "NOTEBOOKS_DIR", notebooks)
    base = pipeline.chapter_stamp("good", {"profile": "quick"}, None)
    assert base == pipeline.chapter_stamp("good", {"profile": "quick"}, None)
    assert base != pipeline.chapter_stamp("good", {"profile": "full"}, None)
    data = tmp_path / "data"
    data.mkdir()
    assert base != pipeline.chapter_stamp("good", {"profile": "quick"}, data)


def test_unknown_chapter_and_profile_are_config_errors():
    with pytest.raises(ConfigError, match="unknown chapter"):
        pipeline.build_book("quick", None, chapters=["no_such_chapter"], html=False, echo=lambda *_: None)
    with pytest.raises(ConfigError, match="profile must be one of quick, full"):
        pipeline.build_book("fast", None, html=False, echo=lambda *_: None)


def test_missing_data_directory_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        pipeline.build_book("quick", str(tmp_path / "nope"), html=False, echo=lambda *_: None)


def test_profiles_fill_only_what_is_not_given():
    quick = profiles.resolve("data_atlas", "quick")
    assert quick["profile"] == "quick" and quick["samples_per_grid"] == profiles.load("data_atlas")["quick"]["samples_per_grid"]
    override = profiles.resolve("data_atlas", "quick", samples_per_grid=3, stats_images=None)
    assert override["samples_per_grid"] == 3 and override["stats_images"] == quick["stats_images"]
    with pytest.raises(ConfigError, match="profile must be one of"):
        profiles.resolve("data_atlas", "medium")
    with pytest.raises(ConfigError, match="no profiles for chapter"):
        profiles.resolve("no_such_chapter", "quick")


def test_every_toc_chapter_has_profiles_and_a_parameters_cell():
    import jupytext

    for chapter in pipeline.chapters_from_toc():
        assert chapter in profiles.chapters(), f"{chapter}: medad/profiles/{chapter}.yml missing"
        nb = jupytext.read(pipeline.NOTEBOOKS_DIR / f"{chapter}.py")
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{chapter}: needs exactly one cell tagged 'parameters'"
        for name in ("profile", "data_dir", "device", "seed"):
            assert f"{name} =" in tagged[0].source, f"{chapter}: parameters cell lacks {name}"
        assert "run.finish()" in nb.cells[-1].source, f"{chapter}: last cell must call run.finish()"


def test_chapter_run_records_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAD_RUN_DIR", str(tmp_path))
    run = ChapterRun("data_atlas", profile="quick", seed=5, device="cpu")
    ds = run.open_dataset("lidc", "test", n=4)
    record = run.finish()
    saved = json.loads((tmp_path / "provenance.json").read_text())
    assert saved["seed"] == 5 and saved["profile"] == "quick" and saved["device"].startswith("cpu")
    assert saved["data"][0]["kind"] == "synthetic" and saved["data"][0]["sha256"] == ds.checksum
    assert saved["commit"] and saved["seconds"] >= 0
    table = provenance.markdown_table(record)
    assert "synthetic" in table and "Commit" in table and "Seed" in table


def test_cuda_request_without_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        ChapterRun("data_atlas", profile="quick", device="cuda")


def test_glue_refuses_text_that_myst_nb_would_misread():
    from medad.chapter import glue

    with pytest.raises(ValueError, match=r"would be shown as \(1, 500\)"):
        glue("n", "1,500")
    glue("kind", "real")          # plain words are fine
    glue("channels", "8-16-32-48")
