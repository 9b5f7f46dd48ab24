"""Issue 17, reliability round two (the parts outside the experiment drivers), one section per item of the brief.

1 CI builds the book on the synthetic default; the ViP quick profile fits synthetic splits
2 relative data directories are resolved against the caller's folder before a kernel sees them;
  the Makefile quotes DATA and CHAPTERS
3 a failed chapter keeps its last good execution under the failure's date and error
4 integrity checks re-hash instead of trusting stale evidence; extracted folders are stamped by
  their files' sizes and mtimes
5 silent acceptance becomes an error or a visible message
6 tracebacks become one-line errors (schema bounds, notebook-only parameters, run names,
  make-split seeds, Ctrl-C during a build)
7 cache and concurrency faults: cache folder faults are named, temporary files are per process and
  never left behind, one build per tree

Every test here failed on the commit before this work (22aae85) and passes after it.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nbformat
import numpy as np
import pytest

import fixtures as fx
from medad import cli, pipeline, profiles
from medad.chapter import ChapterRun
from medad.data import open_dataset, registry
from medad.data.checksums import sha256_of
from medad.errors import ChecksumError, ConfigError, DataError
from medad.paths import REPO_ROOT

# ----------------------------------------------------------------------------- shared set-up


@pytest.fixture
def kvasir_zip(tmp_path, monkeypatch):
    """A data directory with a Kvasir-SEG fixture ZIP whose SHA-256 the manifest records (as for a published archive)."""
    data = tmp_path / "data"
    fx.write(data, fx.kvasir_files(), archive="kvasir-seg.zip")
    path = data / "kvasir-seg.zip"
    monkeypatch.setitem(registry.manifest(), "kvasir_seg", dict(registry.manifest()["kvasir_seg"], sha256=sha256_of(path), size=None))
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    return data


def _flip_byte_keeping_size_and_mtime(path: Path, offset: int = 100) -> None:
    st = path.stat()
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


TOY_CHAPTER = '''# %% [markdown]
# # Toy chapter

# %% tags=["parameters"]
profile = "quick"
data_dir = None
# %%
print("ran", profile)
'''


@pytest.fixture
def book(tmp_path, monkeypatch):
    """A book tree with one chapter 'toy', executed by a stand-in for papermill that records what it was given."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "toy.py").write_text(TOY_CHAPTER)
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n- file: book/executed/toy\n")
    (tmp_path / "medad").mkdir()
    (tmp_path / "medad" / "used.py").write_text("# used\n")
    profile_dir = tmp_path / "profiles"
    profile_dir.mkdir()
    (profile_dir / "toy.yml").write_text("quick: {}\nfull: {}\nschema: {}\n")
    monkeypatch.setattr(profiles, "PROFILE_DIR", profile_dir)
    monkeypatch.setattr(pipeline, "NOTEBOOKS_DIR", notebooks)
    monkeypatch.setattr(pipeline, "EXECUTED_DIR", tmp_path / "executed")
    monkeypatch.setattr(pipeline, "TOC", tmp_path / "_toc.yml")
    monkeypatch.setattr(pipeline, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(pipeline, "SOURCE_ROOT", tmp_path)
    calls = {"n": 0, "behaviour": "ok", "parameters": [], "env": [], "hook": None}

    def fake_execute(source, output, parameters, **kwargs):
        calls["n"] += 1
        calls["parameters"].append(dict(parameters))
        calls["env"].append(os.environ.get("MEDAD_DATA"))
        if calls["hook"]:
            calls["hook"]()
        nb = nbformat.read(source, as_version=4)
        nb.cells[-1].outputs = [nbformat.v4.new_output("stream", text=f"ran {parameters['profile']} #{calls['n']}\n")]
        nbformat.write(nb, output)
        if calls["behaviour"] == "fail":
            error = type("PapermillExecutionError", (Exception,), {})("failed")
            error.ename, error.evalue, error.exec_count = "DataError", f"data directory is broken (run #{calls['n']})", 2
            raise error
        run_dir = Path(os.environ["MEDAD_RUN_DIR"])
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "reads.json").write_text(json.dumps({"modules": ["medad/used.py"], "archives": []}))

    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    return tmp_path, calls


def _build(**kwargs):
    lines = []
    status = pipeline.build_book(kwargs.pop("profile", "quick"), kwargs.pop("data_dir", None), html=False,
                                 echo=lines.append, **kwargs)
    return status, "\n".join(lines)


def _one_line_error(capsys, *words) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err
    return err


# ----------------------------------------------------------------------------- 1 the synthetic default builds


def test_ci_runs_the_tests_then_builds_the_book_on_the_synthetic_default(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    log = tmp_path / "make.log"
    (fake_bin / "make").write_text(
        "#!/usr/bin/env bash\n"
        f"echo \"$* | MEDAD_DATA=${{MEDAD_DATA-<unset>}}\" >> {log}\n")
    (fake_bin / "make").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "MEDAD_DATA": str(tmp_path)}
    proc = subprocess.run(["bash", str(REPO_ROOT / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == f"test | MEDAD_DATA={tmp_path}"  # the real-data tests keep their data
    book = [c for c in calls[1:] if c.startswith("book")]
    assert len(book) == 1, calls
    args, data = book[0].split(" | ")
    assert data == "MEDAD_DATA=<unset>"  # no data directory at all: the embedded default
    words = args.split()
    assert "DATA=" in words and "CHAPTERS=" in words and "PROFILE=quick" in words


def test_vip_quick_subsets_on_synthetic_data_take_the_split_itself(tmp_path, monkeypatch):
    """`make book` without data failed ViP with KeyError 'chest_xray/test/64': the feature cache generated 160
    synthetic test images where the split (which the test groups and provenance read) has 64."""
    from test_vip import TinyBackbone, _cfg

    from medad.experiment.record import RecordingOpener, RunState
    from medad.train import vip_experiment as vx

    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    quick = profiles.load("vip")["quick"]
    cfg = _cfg(settings=["main"], seeds=[1], epochs=1, batch_size=32, n_boot=20, views=0,
               **{f"{name}_images": quick[f"{name}_images"] for name in ("train", "val", "test")})
    split = len(open_dataset("chest_xray", "test"))
    assert quick["test_images"] > split  # the quick profile asks for more than the synthetic split holds
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = vx.run_experiment(cfg, RecordingOpener(None), RunState(tmp_path / "state"), progress=False,
                                log=lambda *_: None, backbones={"tiny-test": TinyBackbone()})
    assert set(r["n"] for r in out["rows"]) == {split}  # every test image of the split, and only those
    notes = {str(w.message) for w in caught if "images asked for" in str(w.message)}
    assert notes == {f"chest_xray (synthetic) {name}: {quick[f'{name}_images']} images asked for, the split has {split}; "
                     f"all {split} are used" for name in ("train", "val", "test")}  # said, not silent


# ----------------------------------------------------------------------------- 2 relative data directories


def test_book_resolves_a_relative_data_dir_in_the_callers_folder(book, tmp_path, monkeypatch):
    _, calls = book
    caller = tmp_path / "caller"
    (caller / "archives" / "Kvasir-SEG").mkdir(parents=True)  # an extracted archive: the folder holds data
    monkeypatch.chdir(caller)
    monkeypatch.setenv("MEDAD_DATA", "")
    assert cli.main(["book", "--data-dir", "archives", "--no-html"]) in (0, 1)
    assert calls["parameters"][-1]["data_dir"] == str(caller / "archives")  # absolute before the kernel
    assert calls["env"][-1] == str(caller / "archives")  # the kernel's MEDAD_DATA is never a relative one
    monkeypatch.chdir(caller / "archives")
    assert cli.main(["book", "--data-dir", ".", "--no-html", "--force"]) in (0, 1)
    assert calls["parameters"][-1]["data_dir"] == str(caller / "archives")


def test_relative_medad_data_never_reaches_the_kernel_relative(book, tmp_path, monkeypatch):
    _, calls = book
    (tmp_path / "caller" / "archives" / "Kvasir-SEG").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "caller")
    monkeypatch.setenv("MEDAD_DATA", "archives")
    _build()
    assert calls["parameters"][-1]["data_dir"] == str(tmp_path / "caller" / "archives")
    assert calls["env"][-1] == str(tmp_path / "caller" / "archives")


def _fake_venv(tmp_path) -> tuple[Path, Path]:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    record = tmp_path / "argv.json"
    (venv / "bin" / "python").write_text(
        f"#!{sys.executable}\nimport json, os, sys\njson.dump({{'argv': sys.argv[1:], 'cwd': os.getcwd()}}, open({str(record)!r}, 'w'))\n")
    (venv / "bin" / "python").chmod(0o755)
    stamp = venv / ".medad-installed"
    stamp.touch()  # newer than requirements.lock & co.: nothing to install
    return venv, record


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_book_quotes_data_and_chapters_and_works_from_another_folder(tmp_path):
    venv, record = _fake_venv(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(["make", "-s", "-f", str(REPO_ROOT / "Makefile"), "book", f"VENV={venv}",
                           "DATA=dir with it's spaces", "CHAPTERS=data_atlas, mvfa"],
                          cwd=elsewhere, capture_output=True, text=True, timeout=60, env={**os.environ, "MEDAD_DATA": ""})
    assert proc.returncode == 0, proc.stderr
    got = json.loads(record.read_text())
    assert got["argv"] == ["-m", "medad", "book", "--profile", "quick", "--data-dir", "dir with it's spaces",
                           "--chapters", "data_atlas, mvfa"]
    assert got["cwd"] == str(elsewhere)  # a relative DATA is then resolved where make was run
    assert cli.parse_chapters("data_atlas, mvfa") == cli.parse_chapters("data_atlas,mvfa") == ["data_atlas", "mvfa"]


def test_open_dataset_keeps_a_relative_data_dir_absolute(tmp_path, monkeypatch):
    fx.read_unverified(monkeypatch)
    fx.write(tmp_path / "caller" / "data", fx.kvasir_files(), archive="kvasir-seg.zip")
    monkeypatch.chdir(tmp_path / "caller")
    ds = open_dataset("kvasir_seg", "test", "data", synthetic=False)
    monkeypatch.chdir(tmp_path)  # a later chdir (a kernel, a tool) must not lose the data
    assert ds[0].image.ndim == 3
    assert registry.resolve_data_dir("data", base=tmp_path / "caller") == tmp_path / "caller" / "data"


def test_data_cli_names_the_absolute_folder(tmp_path, monkeypatch, capsys):
    fx.read_unverified(monkeypatch)
    fx.write(tmp_path / "data", fx.kvasir_files(), archive="kvasir-seg.zip")
    monkeypatch.chdir(tmp_path / "data")
    assert cli.main(["data", "list", "--data-dir", "."]) == 0
    assert f"data directory: {tmp_path / 'data'}\n" in capsys.readouterr().out


class _FakeKernelShell:
    """What ChapterRun sees of an IPython kernel: a ``kernel``, the user namespace and its input history."""

    def __init__(self, history, namespace=None):
        self.kernel = object()
        self.user_ns = {"In": history, **(namespace or {})}

    def set_custom_exc(self, *args):
        pass


def _in_kernel(monkeypatch, history=("",), namespace=None):
    import IPython

    shell = _FakeKernelShell(list(history), namespace)
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    return shell


def test_chapter_run_in_a_kernel_resolves_data_dir_where_papermill_was_typed(tmp_path, monkeypatch):
    """papermill --cwd notebooks -p data_dir archives, typed in caller/: the kernel runs in notebooks/."""
    fx.read_unverified(monkeypatch)
    fx.write(tmp_path / "caller" / "archives", fx.kvasir_files(), archive="kvasir-seg.zip")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.setenv("MEDAD_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("PWD", str(tmp_path / "caller"))
    monkeypatch.chdir(tmp_path / "notebooks")
    _in_kernel(monkeypatch)
    run = ChapterRun("data_atlas", profile="quick", data_dir="archives")
    assert run.data_dir == tmp_path / "caller" / "archives"
    monkeypatch.setattr(__import__("IPython"), "get_ipython", lambda: None)  # plain Python: its own folder
    monkeypatch.chdir(tmp_path / "caller")
    assert ChapterRun("data_atlas", profile="quick", data_dir="archives").data_dir == tmp_path / "caller" / "archives"


@pytest.mark.slow
def test_papermill_relative_data_dir_in_a_real_kernel(tmp_path):
    notebook = tmp_path / "notebooks" / "where.ipynb"
    notebook.parent.mkdir()
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("profile = 'quick'\ndata_dir = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "from medad.chapter import ChapterRun\nrun = ChapterRun('data_atlas', profile=profile, data_dir=data_dir)\n"
        "open('where.txt', 'w').write(str(run.data_dir))")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, notebook)
    caller = tmp_path / "caller"
    (caller / "archives" / "Kvasir-SEG").mkdir(parents=True)
    env = {**os.environ, "PWD": str(caller), "MEDAD_RUN_DIR": str(tmp_path / "run"), "MEDAD_DATA": "",
           "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([str(Path(sys.executable).parent / "papermill"), str(notebook), str(tmp_path / "out.ipynb"),
                           "-p", "data_dir", "archives", "--cwd", str(notebook.parent), "--no-progress-bar"],
                          cwd=caller, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (notebook.parent / "where.txt").read_text() == str(caller / "archives")


# ----------------------------------------------------------------------------- 3 the last good execution stays


def test_a_failed_chapter_keeps_the_last_good_execution_under_its_error(book):
    root, calls = book
    output = root / "executed" / "toy.ipynb"
    assert _build()[0] == 0
    calls["behaviour"] = "fail"
    for attempt in (2, 3):  # failing twice still keeps the first, good execution
        status, report = _build(force=True)
        assert status == 1 and f"toy: DataError: data directory is broken (run #{attempt}) (cell 2)" in report
        nb = nbformat.read(output, as_version=4)
        assert nb.cells[-1].outputs[0]["text"] == "ran quick #1\n"  # the good execution's output
        banners = [c for c in nb.cells if pipeline.FAILURE_TAG in c.metadata.get("tags", [])]
        assert len(banners) == 1 and nb.cells[1] is banners[0]
        text = banners[0].source
        assert f"data directory is broken (run #{attempt})" in text
        assert "Failed on 20" in text and " UTC" in text  # the failure's date
        assert "last good execution of this chapter, from 20" in text
    calls["behaviour"] = "ok"
    assert _build()[0] == 0
    nb = nbformat.read(output, as_version=4)
    assert nb.cells[-1].outputs[0]["text"] == "ran quick #4\n"
    assert not any(pipeline.FAILURE_TAG in c.metadata.get("tags", []) for c in nb.cells)


# ----------------------------------------------------------------------------- 4 integrity checks re-hash


def _kvasir_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.split()[1:2] == ["kvasir_seg"])


def test_data_verify_rehashes_an_archive_changed_in_place(kvasir_zip, capsys):
    assert cli.main(["data", "verify", "--data-dir", str(kvasir_zip)]) == 0
    assert _kvasir_line(capsys.readouterr().out).startswith("ok")  # now in the checksum cache
    _flip_byte_keeping_size_and_mtime(kvasir_zip / "kvasir-seg.zip")
    assert cli.main(["data", "verify", "--data-dir", str(kvasir_zip)]) == 1
    line = _kvasir_line(capsys.readouterr().out)
    assert line.startswith("FAILED") and "checksum mismatch" in line


def test_provenance_never_records_the_published_checksum_of_a_changed_archive(kvasir_zip):
    good = open_dataset("kvasir_seg", "test", kvasir_zip)
    assert good.checksum == registry.manifest()["kvasir_seg"]["sha256"]
    _flip_byte_keeping_size_and_mtime(kvasir_zip / "kvasir-seg.zip")
    with pytest.raises(ChecksumError, match="SHA-256 is"):
        open_dataset("kvasir_seg", "test", kvasir_zip)
    assert registry.archive_status("kvasir_seg", kvasir_zip).state == "checksum mismatch"  # data list too


def test_an_extracted_folder_is_stamped_by_its_files_sizes_and_mtimes(tmp_path):
    fx.write(tmp_path, fx.kvasir_files())
    before = pipeline._data_parts(tmp_path, ["kvasir_seg"])["kvasir_seg"]
    mask = tmp_path / "Kvasir-SEG" / "test" / "masks" / "0.jpg"
    mask.write_bytes(fx.encode(np.zeros((16, 20), np.uint8), "JPEG"))  # blanked: same files, same count
    assert pipeline._data_parts(tmp_path, ["kvasir_seg"])["kvasir_seg"] != before


def test_lidc_arrays_of_an_extracted_folder_follow_its_files(tmp_path, monkeypatch):
    from test_lidc import lidc_files

    from medad.data.lidc import load_arrays

    fx.read_unverified(monkeypatch)
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    files = lidc_files()
    fx.write(tmp_path / "data", files)
    first = load_arrays(open_dataset("lidc", "test", tmp_path / "data"), progress=False)
    for name in (n for n in files if "/mask-0/" in n):  # grader 0 marked every slice; now none
        (tmp_path / "data" / name).write_bytes(fx.encode(np.zeros((16, 16), np.uint8), "PNG"))
    again = load_arrays(open_dataset("lidc", "test", tmp_path / "data"), progress=False)
    assert first["grader_masks"][:, 0].any() and not again["grader_masks"][:, 0].any()


# ----------------------------------------------------------------------------- 5 no silent acceptance


def test_an_empty_data_dir_option_is_an_error(book, capsys):
    assert cli.main(["book", "--data-dir", "", "--no-html"]) == 2
    _one_line_error(capsys, "empty")
    assert book[1]["n"] == 0
    assert cli.main(["data", "list", "--data-dir", ""]) == 2
    _one_line_error(capsys, "empty")


@pytest.mark.parametrize("value", [0, 1.5, True, ["a"]])
def test_a_data_dir_that_is_not_a_path_is_an_error(value, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAD_RUN_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="data_dir must be a folder path"):
        open_dataset("chest_xray", "test", value)
    with pytest.raises(ConfigError, match="data_dir must be a folder path"):  # papermill -p data_dir 0
        ChapterRun("data_atlas", profile="quick", data_dir=value)


@pytest.mark.parametrize("value", [",", " , ", ""])
def test_chapters_naming_nothing_is_an_error(value, book, capsys):
    assert cli.main(["book", "--chapters", value, "--no-html"]) == 2
    _one_line_error(capsys, "names no chapter")
    assert book[1]["n"] == 0


def test_data_list_and_verify_take_the_name_given(kvasir_zip, capsys):
    assert cli.main(["data", "list", "kvasir_seg", "--data-dir", str(kvasir_zip)]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:-1] if line and not line.startswith(" ")]
    assert rows == ["kvasir_seg"]
    assert cli.main(["data", "verify", "kvasir_seg", "--data-dir", str(kvasir_zip)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].split()[:2] == ["ok", "kvasir_seg"]
    assert cli.main(["data", "verify", "lidc", "--data-dir", str(kvasir_zip)]) == 1  # the one asked for is missing
    assert "lidc-idri-slices.zip not found" in capsys.readouterr().err
    assert cli.main(["data", "list", "no_such_set", "--data-dir", str(kvasir_zip)]) == 2
    _one_line_error(capsys, "no dataset or archive named 'no_such_set'", "chest_xray")


def test_a_data_dir_holding_no_archive_is_an_error_not_synthetic_data(tmp_path, book):
    empty = tmp_path / "not-the-data"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing here")
    with pytest.raises(DataError, match="holds none of the archives"):
        registry.available_real(empty)  # what the atlas and backbones chapters ask first
    with pytest.raises(DataError, match="holds none of the archives"):
        _build(data_dir=str(empty))
    assert book[1]["n"] == 0


def test_ged_refuses_masks_that_are_not_binary():
    from medad.metrics.ged import ged, ged_reference

    masks = np.zeros((1, 2, 4, 4), np.int64)
    masks[0, 0, :2] = 1
    ok = ged(masks, masks)
    assert np.isfinite(ok.numpy()).all()
    masks[0, 1, 0, 0], masks[0, 1, 1, 1] = 2, 7
    for fn in (ged, ged_reference):
        with pytest.raises(ConfigError, match=r"binary masks.*values \{0, 1, 2, 7\}"):
            fn(masks, masks)


def test_bootstrap_of_nothing_is_an_error():
    from medad.metrics.bootstrap import bootstrap_ci

    with pytest.raises(ConfigError, match="at least one value"):
        bootstrap_ci([], [])


# ----------------------------------------------------------------------------- 6 one line, not a traceback


@pytest.mark.parametrize("chapter,given,words", [
    ("prob_unet", {"seed": 2**64}, ["'seed' = 18446744073709551616", "less than or equal to 9223372036854775807"]),
    ("prob_unet", {"models": []}, ["'models' = []", "at least 1 item"]),
    ("mvfa", {"datasets": []}, ["'datasets' = []"]),
    ("vip", {"seeds": [-1]}, ["'seeds' = [-1]", "greater than or equal to 0"]),
    ("egc", {"seeds": [1, -2]}, ["'seeds' = [1, -2]"]),
    ("prob_unet", {"epochs": float("inf")}, ["'epochs' = inf", "finite"]),
    ("vip", {"lr": float("inf")}, ["'lr' = inf", "finite"]),
])
def test_schema_bounds_every_int_float_and_list(chapter, given, words, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAD_RUN_DIR", str(tmp_path))
    for entry in (lambda: profiles.resolve(chapter, "quick", **given), lambda: ChapterRun(chapter, "quick", **given)):
        with pytest.raises(ConfigError) as caught:
            entry()
        for word in words:
            assert word in str(caught.value), str(caught.value)


def test_an_empty_list_is_allowed_only_where_the_schema_says_so():
    assert profiles.resolve("egc", "quick", extra_archs=[])["extra_archs"] == []
    assert profiles.resolve("prob_unet", "quick", lr_values=[1e-4], lr_boundaries=[])["lr_boundaries"] == []


def test_every_notebook_parameter_is_declared_in_its_schema():
    import ast

    import jupytext

    for chapter in pipeline.chapters_from_toc():
        nb = jupytext.read(pipeline.NOTEBOOKS_DIR / f"{chapter}.py")
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        names = {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets}
        assert names - {"profile", "data_dir"} <= set(profiles.schema(chapter)), (chapter, names - set(profiles.schema(chapter)))


@pytest.mark.parametrize("chapter,name,value,words", [
    ("data_atlas", "dataset", "lidcc", ["'dataset' = 'lidcc'", "one of"]),
    ("data_atlas", "dataset", 3, ["'dataset' = 3"]),
    ("mvfa", "long_run", ["x"], ["'long_run'"]),
])
def test_a_notebooks_own_parameters_are_checked_against_the_schema(chapter, name, value, words, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAD_RUN_DIR", str(tmp_path))
    history = ["", f'profile = "quick"\ndata_dir = None\n{name} = None\n', f"# Parameters\n{name} = {value!r}\n"]
    _in_kernel(monkeypatch, history, {name: value})
    with pytest.raises(ConfigError) as caught:
        ChapterRun(chapter, profile="quick")
    for word in words:
        assert word in str(caught.value), str(caught.value)


@pytest.mark.parametrize("name", ["../mvfa/long-cpu-2026-11-23", "..", "a/b", "/etc", ""])
def test_a_run_name_that_leaves_its_chapter_is_refused(name):
    from medad import results
    from medad.reports import common

    with pytest.raises(ConfigError, match=r"one folder name under results/vip/"):
        results.headline_run("vip", name) if name else results.load_run("vip", name)
    with pytest.raises(ConfigError):
        common.headline("vip", name or "..")  # what the chapters call with their long_run parameter


def test_make_split_with_a_negative_seed_is_one_line(tmp_path, monkeypatch, capsys):
    from test_lidc import lidc_files

    from medad.data import splits

    monkeypatch.setattr(splits, "SPLITS_DIR", tmp_path / "splits")
    fx.write(tmp_path / "data", lidc_files(), archive="lidc-idri-slices.zip")
    fx.read_unverified(monkeypatch)
    assert cli.main(["data", "make-split", "lidc", "--data-dir", str(tmp_path / "data"), "--seed", "-1", "--force"]) == 2
    _one_line_error(capsys, "--seed -1")
    assert not (tmp_path / "splits" / "lidc.json").exists()


CTRL_C_DRIVER = '''
import sys
from pathlib import Path
from medad import pipeline, profiles
from medad.cli import main
root = Path(sys.argv[1])
for name, value in {"NOTEBOOKS_DIR": root / "notebooks", "EXECUTED_DIR": root / "executed", "TOC": root / "_toc.yml",
                    "REPO_ROOT": root, "SOURCE_ROOT": root}.items():
    setattr(pipeline, name, value)
profiles.PROFILE_DIR = root / "profiles"
sys.exit(main(["book", "--no-html"]))
'''


@pytest.mark.slow
def test_ctrl_c_during_a_build_prints_one_line_and_no_kernel_traceback(tmp_path):
    for folder in ("notebooks", "profiles", "medad"):
        (tmp_path / folder).mkdir()
    marker = tmp_path / "kernel-is-running"
    (tmp_path / "notebooks" / "toy.py").write_text(TOY_CHAPTER.replace(
        'print("ran", profile)', f"import time\nopen({str(marker)!r}, 'w').close()\ntime.sleep(120)"))
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n- file: book/executed/toy\n")
    (tmp_path / "profiles" / "toy.yml").write_text("quick: {}\nfull: {}\nschema: {}\n")
    (tmp_path / "driver.py").write_text(CTRL_C_DRIVER)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(tmp_path)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "MEDAD_DATA": ""},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 180
        while not marker.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert marker.exists(), proc.communicate(timeout=30)
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, (out, err)
    assert "interrupted while executing toy" in out
    assert "Traceback" not in out + err and "ZMQError" not in out + err, err


# ----------------------------------------------------------------------------- 7 cache and concurrency faults


def test_an_unusable_cache_folder_is_named_and_good_archives_stay_good(kvasir_zip, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MEDAD_CACHE", str(blocker / "cache"))  # cannot be created, even by root
    assert cli.main(["data", "verify", "--data-dir", str(kvasir_zip)]) == 0
    captured = capsys.readouterr()
    assert any(line.split()[:2] == ["ok", "kvasir_seg"] for line in captured.out.splitlines())
    assert "unreadable" not in captured.out
    assert captured.err.count(f"note: checksum cache folder {blocker / 'cache'}") == 1


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_cache_costs_a_note_not_a_verdict_and_leaves_no_temporary(code, kvasir_zip, tmp_path, monkeypatch, capsys):
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(tmp_path / "cache") in str(dst):
            raise OSError(code, os.strerror(code))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    assert cli.main(["data", "verify", "--data-dir", str(kvasir_zip)]) == 0
    captured = capsys.readouterr()
    assert "ok         kvasir_seg" in captured.out and "unreadable" not in captured.out
    assert f"note: checksum cache folder {tmp_path / 'cache'}: cannot be written ({os.strerror(code)})" in captured.err
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # the failed write's temporary file is gone


RACE = '''
import sys, threading
from pathlib import Path
from medad.data import registry
import fixtures as fx
fx.read_unverified(type("M", (), {"setattr": staticmethod(setattr)})())
bad = []

def verify(root, times):
    for _ in range(times):
        (root / "kvasir-seg.zip").touch()  # a new mtime: the verdict is computed and written to the shared cache again
        status = registry.archive_status("kvasir_seg", root)
        if status.state != "unverified":
            bad.append(status.state + ": " + status.detail)

threads = [threading.Thread(target=verify, args=(Path(folder), int(sys.argv[1]))) for folder in sys.argv[2:]]
[t.start() for t in threads]
[t.join() for t in threads]
print(len(bad), bad[:1])
'''


def test_two_processes_verifying_at_once_never_report_a_good_archive_unreadable(tmp_path):
    """Two `data verify` (each with a few threads, to make the overlap certain) write one checksum cache."""
    env = {**os.environ, "MEDAD_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])}
    (tmp_path / "race.py").write_text(RACE)
    procs = []
    for k in range(2):
        folders = [tmp_path / f"data{k}-{j}" for j in range(3)]
        for folder in folders:
            fx.write(folder, fx.kvasir_files(), archive="kvasir-seg.zip")
        procs.append(subprocess.Popen([sys.executable, str(tmp_path / "race.py"), "40", *map(str, folders)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=300) for p in procs]
    for out, err in results:
        assert out.startswith("0 "), (out, err[-1000:])
    assert not [p for p in (tmp_path / "cache").iterdir() if ".tmp" in p.name]


def test_a_second_build_of_one_tree_stops_with_who_holds_it(book, capsys):
    import threading

    root, calls = book
    inside, release = threading.Event(), threading.Event()

    def block():
        inside.set()
        release.wait(30)

    calls["hook"] = block
    first = threading.Thread(target=_build)
    first.start()
    try:
        assert inside.wait(30)
        calls["hook"] = None
        assert cli.main(["book", "--no-html", "--force"]) == 2
        _one_line_error(capsys, "another book build is running", f"pid {os.getpid()}")
        assert calls["n"] == 1  # the second build executed nothing
    finally:
        release.set()
        first.join(30)
    assert cli.main(["book", "--no-html", "--force"]) == 0  # the lock went with the first build


def test_a_failed_write_in_the_pipeline_leaves_no_temporary_and_says_so(book, monkeypatch, capsys):
    root, _ = book
    real_replace = os.replace

    def disk_full(src, dst):
        if str(root / "executed") in str(dst):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", disk_full)
    assert cli.main(["book", "--no-html"]) == 2
    _one_line_error(capsys, "cannot write", "No space left on device")
    assert [p.name for p in (root / "executed").iterdir()] == []


def test_failed_writes_in_the_data_layer_leave_no_temporary(tmp_path, monkeypatch):
    from test_lidc import lidc_files

    from medad.data import splits
    from medad.data.lidc import load_arrays

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(splits, "SPLITS_DIR", tmp_path / "splits")
        patch.setattr(os, "replace", disk_full)
        with pytest.raises(OSError):
            splits.write_split_file("lidc", ["a", "b", "c"])
        assert list((tmp_path / "splits").iterdir()) == []  # neither a half-written split file nor a temporary
    fx.read_unverified(monkeypatch)
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    fx.write(tmp_path / "data", lidc_files(), archive="lidc-idri-slices.zip")
    ds = open_dataset("lidc", "test", tmp_path / "data")
    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.warns(UserWarning, match="cannot write"):
        arrays = load_arrays(ds, progress=False)  # decoded all the same; only the cache is lost
    assert len(arrays["images"]) == len(ds)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.suffix == ".npz"]
