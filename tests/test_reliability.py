"""Issue 9, one class of failure per section, each checked at every entry point it can reach.

2 parameters are validated once (the profile schema) for notebooks, ChapterRun and command lines;
3 medad errors reach the user as one line (``python -m medad``, module command lines, notebooks)
  and Ctrl-C ends with one line saying what to rerun;
4 an interrupted build keeps the previous executed chapter; stale temporary files are removed;
5 a checkpoint of a run with other settings is refused, with how to start afresh;
6 ``data make-split`` refuses to overwrite without --force;
7 a chapter's stamp covers only what it depends on, says why it re-executes, and a failed
  execution is shown as failed.

The book pipeline is exercised with a stand-in for papermill (no kernel) except in the one
test, marked slow, that executes real notebooks to check what the kernel shows.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from medad import cli, params, pipeline, profiles
from medad.chapter import ChapterRun
from medad.errors import ConfigError, command_line
from medad.paths import REPO_ROOT
from medad.train import prob_unet_experiment as exp
from medad.train.segmentation import TrainSettings, train

# ----------------------------------------------------------------------------- 2 parameters

BAD_PARAMETERS = [  # (given, words the error must contain)
    ({"iterations": -5}, ["'iterations' = -5", ">= 1"]),
    ({"iterations": 0}, ["'iterations' = 0"]),
    ({"models": "unet"}, ["'models' = 'unet'", "a list is expected"]),
    ({"models": ["unet", "nope"]}, ["'nope'", "dropout_unet"]),
    ({"seed": 2.5}, ["'seed' = 2.5", "integer"]),
    ({"seed": True}, ["'seed' = True", "not a boolean"]),
    ({"threads": 0}, ["'threads' = 0"]),
    ({"test_slices": -1}, ["'test_slices' = -1"]),
    ({"iteratons": 3}, ["unknown parameter(s) iteratons", "known parameters:", "iterations"]),
]


def _via_resolve(given):
    profiles.resolve("prob_unet", "quick", **given)


def _via_chapter_run(given):
    ChapterRun("prob_unet", profile="quick", **given)


@pytest.mark.parametrize("entry", [_via_resolve, _via_chapter_run], ids=["profiles.resolve", "ChapterRun"])
@pytest.mark.parametrize("given,words", BAD_PARAMETERS, ids=[next(iter(g)) + "=" + repr(g[next(iter(g))]) for g, _ in BAD_PARAMETERS])
def test_bad_parameters_are_config_errors_naming_parameter_value_and_rule(entry, given, words, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAD_RUN_DIR", str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        entry(given)
    message = str(caught.value)
    assert message.startswith("prob_unet:")
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("argv,words", [
    (["--threads", "0"], ["'threads' = 0"]),
    (["--models", "unet,foo"], ["'foo'", "mheads"]),
    (["--profile", "medium"], ["long_cpu", "'medium'"]),
    (["--name", "../elsewhere"], ["--name '../elsewhere'"]),
])
def test_experiment_command_line_is_validated_before_any_work(argv, words, capsys, monkeypatch):
    monkeypatch.setattr(exp, "prepare_data", lambda *a, **k: pytest.fail("validation must come before loading data"))
    args = ["--name", "check", *argv]
    assert exp.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ConfigError: ")
    for word in words:
        assert word in err, err


def test_a_papermill_parameter_the_notebook_lacks_is_found():
    from medad.chapter import unknown_injected_parameters

    history = ["", 'profile = "quick"\nepochs = None  # passes\n', '# Parameters\nprofile = "full"\nepoch = 3\n', "x = 1"]
    assert unknown_injected_parameters(history) == (["epoch"], ["epochs", "profile"])
    assert unknown_injected_parameters(history[:2] + ['# Parameters\nepochs = 3\n']) == ([], ["epochs", "profile"])
    assert unknown_injected_parameters(["", "import os"]) == ([], [])  # not run by papermill


def test_valid_values_are_converted_and_kept():
    cfg = profiles.resolve("prob_unet", "quick", seed="3", iterations=7.0, models=["unet"], threads=None)
    assert cfg["seed"] == 3 and isinstance(cfg["iterations"], int) and cfg["iterations"] == 7
    assert cfg["models"] == ["unet"] and cfg["threads"] == profiles.load("prob_unet")["quick"]["threads"]


def test_every_profile_of_every_chapter_satisfies_its_schema():
    for chapter in profiles.chapters():
        for name in profiles.named_profiles(chapter):
            profiles.resolve_named(chapter, name, drop=("oracle",))


def test_every_chapter_passes_only_declared_parameters_to_chapter_run():
    import ast

    for chapter in pipeline.chapters_from_toc():
        tree = ast.parse((pipeline.NOTEBOOKS_DIR / f"{chapter}.py").read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "ChapterRun"]
        assert len(calls) == 1, f"{chapter}: one ChapterRun(...) expected"
        given = {k.arg for k in calls[0].keywords} - {"profile", "data_dir"}
        assert given <= set(profiles.schema(chapter)), f"{chapter}: {given - set(profiles.schema(chapter))} not in its schema"


def test_schema_choices_follow_the_registries():
    from medad.backbones import REGISTRY
    from medad.data import list_datasets
    from medad.models.ambiguous import MODELS

    backbones = profiles.schema("backbones")
    for key, registry in (("embedding_backbone", REGISTRY), ("speed_backbones", REGISTRY), ("datasets", list_datasets())):
        assert set(params.registry_choices(backbones[key]["choices_from"])) == set(registry)
    assert set(params.registry_choices(profiles.schema("prob_unet")["models"]["choices_from"])) == set(MODELS)
    with pytest.raises(ConfigError, match="'embedding_backbone'.*one of .*standin-effnet-lite0-minilm"):
        profiles.resolve("backbones", "quick", embedding_backbone="resnet50-imagenet")


def _profile_dir(tmp_path, monkeypatch, text):
    (tmp_path / "toy.yml").write_text(text)
    monkeypatch.setattr(profiles, "PROFILE_DIR", tmp_path)


@pytest.mark.parametrize("text,words", [
    ("quick: {a: 1}\nfull: {a: 2}\n", ["needs a 'schema' mapping"]),
    ("quick: {a: 1, b: 2}\nfull: {a: 2}\nschema:\n  a: {type: int}\n", ["'quick' sets b, not declared"]),
    ("quick: {a: 1}\nfull: {a: 2}\nschema:\n  a: {type: 'list[dict]'}\n", ["schema.a", "type 'list[dict]' is not one of"]),
    ("quick: {a: 1}\nfull: {a: 2}\nschema:\n  a: {type: int, minimum: 1}\n", ["schema.a", "unknown key(s) minimum"]),
])
def test_a_broken_schema_declaration_is_named(text, words, tmp_path, monkeypatch):
    _profile_dir(tmp_path, monkeypatch, text)
    with pytest.raises(ConfigError) as caught:
        profiles.resolve("toy", "quick")
    for word in words:
        assert word in str(caught.value)


def test_parameter_table_lists_quick_full_allowed_and_help(tmp_path, monkeypatch):
    _profile_dir(tmp_path, monkeypatch, "quick: {n: 2, mode: fast}\nfull: {n: 40, mode: slow}\nschema:\n"
                 "  n: {type: int, min: 1, help: passes}\n  mode: {type: str, choices: [fast, slow]}\n"
                 "  cap: {type: float, gt: 0, optional: true}\n")
    rows = params.parameter_table("toy")
    assert rows == [
        {"name": "n", "quick": 2, "full": 40, "allowed": "int, >= 1", "help": "passes"},
        {"name": "mode", "quick": "fast", "full": "slow", "allowed": "str, one of fast, slow", "help": ""},
        {"name": "cap", "quick": None, "full": None, "allowed": "float, > 0, or null", "help": ""},
    ]
    with pytest.raises(ConfigError, match=r"'mode' = 'medium'.*one of fast, slow"):
        profiles.resolve("toy", "quick", mode="medium")


# ----------------------------------------------------------------------------- 3 short errors, Ctrl-C


@pytest.mark.parametrize("argv", [
    [sys.executable, "-m", "medad", "book", "--profile", "fast", "--no-html"],
    pytest.param([sys.executable, "-m", "medad.train.prob_unet_experiment", "--name", "x", "--threads", "0"],
                 marks=pytest.mark.slow),  # imports torch: slow on a busy machine; main() is checked in-process above
], ids=["python -m medad", "python -m medad.train.prob_unet_experiment"])
def test_command_lines_print_one_line_not_a_traceback(argv):
    proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ConfigError: "), proc.stderr
    assert "Traceback" not in proc.stderr


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("entry,argv,patch,words", [
    (cli.main, ["book", "--chapters", "data_atlas"], ("medad.pipeline.build_book", _interrupt),
     ["python -m medad book --chapters data_atlas"]),
    (exp.main, ["--name", "run1", "--models", "unet"], ("medad.train.prob_unet_experiment.run_experiment", _interrupt),
     ["checkpoints are kept", "python -m medad.train.prob_unet_experiment --name run1 --models unet"]),
], ids=["python -m medad", "prob_unet_experiment"])
def test_ctrl_c_ends_with_one_line_saying_what_to_rerun(entry, argv, patch, words, capsys, monkeypatch):
    monkeypatch.setattr(*patch)
    assert entry(argv) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("interrupted; "), err
    for word in words:
        assert word in err


def test_kernel_handler_shows_the_error_as_one_line_then_where(monkeypatch):
    from medad.errors import _short_notebook_error

    class Shell:
        shown = None

        def _showtraceback(self, etype, value, stb):
            self.shown = (etype, stb)

    def deep():
        raise ConfigError("prob_unet: parameter 'epochs' = 0: must be > 0")

    try:
        deep()
    except ConfigError as exc:
        shell = Shell()
        _short_notebook_error(shell, ConfigError, exc, exc.__traceback__)
    etype, stb = shell.shown
    assert etype is ConfigError and len(stb) == 2
    assert stb[0] == "ConfigError: prob_unet: parameter 'epochs' = 0: must be > 0"
    assert "in deep" in stb[1] and "MEDAD_TRACEBACK=1" in stb[1]


def test_full_tracebacks_on_request(monkeypatch):
    @command_line("prog")
    def main(argv=None):
        raise ConfigError("bad")

    assert main([]) == 2
    monkeypatch.setenv("MEDAD_TRACEBACK", "1")
    with pytest.raises(ConfigError):
        main([])


# ----------------------------------------------------------------------------- book pipeline (4, 7)

CHAPTER = '''# %% [markdown]
# # Toy chapter

# %% tags=["parameters"]
profile = "quick"
data_dir = None
# %%
print("ran", profile)
'''


@pytest.fixture
def book(tmp_path, monkeypatch):
    """A book with one chapter 'toy' whose medad modules are copies under tmp_path, executed by a fake papermill."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "toy.py").write_text(CHAPTER)
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n- file: book/executed/toy\n")
    for name in ("used.py", "unused.py"):
        (tmp_path / "medad").mkdir(exist_ok=True)
        (tmp_path / "medad" / name).write_text(f"# {name}\n")
    profile_dir = tmp_path / "profiles"
    profile_dir.mkdir()
    (profile_dir / "toy.yml").write_text("quick: {}\nfull: {}\nschema: {}\n")
    monkeypatch.setattr(profiles, "PROFILE_DIR", profile_dir)
    monkeypatch.setattr(pipeline, "NOTEBOOKS_DIR", notebooks)
    monkeypatch.setattr(pipeline, "EXECUTED_DIR", tmp_path / "executed")
    monkeypatch.setattr(pipeline, "TOC", tmp_path / "_toc.yml")
    monkeypatch.setattr(pipeline, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(pipeline, "SOURCE_ROOT", tmp_path)
    calls = {"n": 0, "behaviour": "ok"}

    def fake_execute(source, output, parameters, **kwargs):
        """Write the executed notebook (with the cell's output) and the run's reads.json, as a kernel would."""
        calls["n"] += 1
        nb = nbformat.read(source, as_version=4)
        nb.cells[-1].outputs = [nbformat.v4.new_output("stream", text=f"ran {parameters['profile']} #{calls['n']}\n")]
        nbformat.write(nb, output)
        if calls["behaviour"] == "interrupt":
            raise KeyboardInterrupt
        if calls["behaviour"] == "fail":
            error = type("PapermillExecutionError", (Exception,), {})("failed")
            error.ename, error.evalue, error.exec_count = "ConfigError", "toy: parameter 'n' = -1: must be >= 1", 3
            raise error
        run_dir = Path(__import__("os").environ["MEDAD_RUN_DIR"])
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "reads.json").write_text(json.dumps({"modules": ["medad/used.py"], "archives": []}))

    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    return tmp_path, calls


def _build(**kwargs):
    lines = []
    status = pipeline.build_book("quick", None, html=False, echo=lines.append, **kwargs)
    return status, "\n".join(lines)


def test_interrupted_build_keeps_the_previous_output_and_stamp(book):
    root, calls = book
    assert _build()[0] == 0
    output, stamp = root / "executed" / "toy.ipynb", root / "executed" / "toy.stamp.json"
    before = (output.read_bytes(), stamp.read_bytes())
    calls["behaviour"] = "interrupt"
    status, report = _build(force=True)
    assert status == 130
    assert "interrupted while executing toy" in report and "python -m medad book --profile quick" in report
    assert (output.read_bytes(), stamp.read_bytes()) == before  # the good output survived
    (root / "executed" / ".toy.ipynb.tmp").write_text("left by a killed build")
    calls["behaviour"] = "ok"
    assert _build()[1].count("toy: cached") == 1
    assert not list((root / "executed").glob(".*.tmp"))


def test_stamp_covers_what_the_chapter_imported_and_says_why_it_reruns(book):
    root, calls = book
    status, report = _build()
    assert status == 0 and "toy: executing (not executed before)" in report
    assert "toy: cached" in _build()[1]
    (root / "medad" / "unused.py").write_text("# edited, but the chapter never imported it\n")
    assert "toy: cached" in _build()[1]
    (root / "medad" / "used.py").write_text("# edited\n")
    report = _build()[1]
    assert "toy: executing (medad code it imports changed: medad/used.py)" in report
    (root / "profiles" / "toy.yml").write_text("quick: {}\nfull: {}\nschema: {}\n# tuned\n")
    assert "toy: executing (its profile YAML changed)" in _build()[1]
    (root / "notebooks" / "toy.py").write_text(CHAPTER + "print('more')\n")
    assert "toy: executing (its notebook source changed)" in _build()[1]
    assert "toy: executing (--force)" in _build(force=True)[1]
    assert calls["n"] == 5


def test_failed_execution_is_shown_as_failed_and_retried(book):
    root, calls = book
    assert _build()[0] == 0
    calls["behaviour"] = "fail"
    status, report = _build(force=True)
    assert status == 1 and "toy: ConfigError: toy: parameter 'n' = -1: must be >= 1 (cell 3)" in report
    nb = nbformat.read(root / "executed" / "toy.ipynb", as_version=4)
    assert nb.cells[0].source.startswith("# Toy chapter")  # the title stays first
    banner = nb.cells[1]
    assert pipeline.FAILURE_TAG in banner.metadata["tags"] and banner.source.startswith(":::{admonition} The last execution of this chapter failed\n:class: error")
    assert "parameter 'n' = -1" in banner.source and "--chapters toy" in banner.source
    calls["behaviour"] = "ok"
    report = _build()[1]
    assert "toy: executing (its last execution failed)" in report
    nb = nbformat.read(root / "executed" / "toy.ipynb", as_version=4)
    assert not any(pipeline.FAILURE_TAG in c.metadata.get("tags", []) for c in nb.cells)


def test_rerun_reasons_name_changed_data_and_parameters():
    parts = {"source": "s", "profile": "p", "parameters": {"profile": "quick", "data_dir": None},
             "data": {"manifest": "m", "lidc": "sha-new"}, "modules": {"medad/a.py": "1"}}
    old = {**parts, "data": {"manifest": "m", "lidc": "sha-old"}, "parameters": {"profile": "full", "data_dir": None}}
    assert pipeline.rerun_reasons({"status": "ok", "parts": parts}, parts) == []
    assert pipeline.rerun_reasons({"status": "ok", "parts": old}, parts) == ["parameters changed: profile", "data changed: lidc"]
    assert pipeline.rerun_reasons({"status": "failed", "parts": parts}, parts) == ["its last execution failed"]
    assert pipeline.rerun_reasons(None, parts) == ["not executed before"]


def test_data_part_of_the_stamp_checksums_only_archives_read(tmp_path):
    from medad.data.registry import manifest

    entry = manifest()["kvasir_seg"]
    (tmp_path / entry["top"]).mkdir()
    (tmp_path / entry["top"] / "a.png").write_bytes(b"x")
    none_read = pipeline._data_parts(tmp_path, [])
    read = pipeline._data_parts(tmp_path, ["kvasir_seg"])
    assert none_read["kvasir_seg"] == "present" and read["kvasir_seg"].startswith("folder:1 files, state ")
    assert none_read["lidc"].startswith("unavailable: ") and "not found" in none_read["lidc"]
    synthetic = pipeline._data_parts(None, None)
    assert synthetic["data"] == "synthetic" and synthetic["manifest"] == read["manifest"] != "missing"


# ----------------------------------------------------------------------------- 4, 5 checkpoints

SMALL = {"channels": (4, 8), "convs_per_block": 1, "latent_dim": 3}


def _tiny(n=8, size=16):
    rng = np.random.default_rng(0)
    graders = np.zeros((n, 4, size, size), bool)
    graders[:, :2, 4:9, 4:9] = True
    return {"images": rng.integers(0, 256, (n, size, size), dtype=np.uint8), "grader_masks": graders}


def _settings(**kw):
    base = dict(iterations=2, batch_size=4, lr_values=(1e-3,), lr_boundaries=(), seed=1, val_slices=4,
                val_samples=2, checkpoint_every=1)
    return TrainSettings(**{**base, **kw})


def _train(folder, settings, channels=(4, 8)):
    from medad.models.ambiguous import build_model

    torch.manual_seed(0)
    config = {**SMALL, "channels": channels}
    return train(build_model("prob_unet", **config), _tiny(), _tiny(), settings, checkpoint_dir=folder,
                 progress=False, model_config=config)


STEPPED = {"lr_values": (1e-3, 1e-4), "lr_boundaries": (0.5,)}  # the rate drops half-way


@pytest.mark.parametrize("first,change,words", [
    ({}, {"lr_values": (5e-4,)}, ["lr_values: [0.001] -> [0.0005]"]),
    ({}, {"seed": 2}, ["seed: 1 -> 2"]),
    (STEPPED, {**STEPPED, "iterations": 4}, ["steps: 2 -> 4", "learning rate of 1 of the 2 steps already done"]),
    ({}, {"channels": (4, 16)}, ["channels: [4, 8] -> [4, 16]", "layout: "]),
], ids=["learning rate", "seed", "longer stepped schedule", "model size"])
def test_resuming_under_other_settings_is_refused_with_how_to_start_fresh(first, change, words, tmp_path):
    _train(tmp_path / "run", _settings(**first))
    channels = change.pop("channels", (4, 8))
    with pytest.raises(ConfigError) as caught:
        _train(tmp_path / "run", _settings(**change), channels=channels)
    message = str(caught.value)
    assert "other settings" in message and f"delete {tmp_path / 'run'}" in message and "--fresh" in message
    for word in words:
        assert word in message, message


def test_longer_run_with_same_rates_resumes_and_stale_temporaries_go(tmp_path):
    _train(tmp_path / "run", _settings())
    (tmp_path / "run" / "last.tmp").write_bytes(b"half a checkpoint")
    result = _train(tmp_path / "run", _settings(iterations=3, max_minutes=60.0))  # budget changes are fine
    assert result.steps == 3
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_fresh_flag_removes_the_runs_checkpoints(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "ck" / "prob_unet" / "run1"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "unet.pt").write_bytes(b"old")
    seen = {}

    def fake_run(cfg, opener, state, *a, **k):
        seen["old checkpoint"] = (folder / "checkpoints" / "unet.pt").exists()
        raise KeyboardInterrupt

    monkeypatch.setattr(exp, "run_experiment", fake_run)
    assert exp.main(["--name", "run1", "--checkpoints", str(tmp_path / "ck"), "--fresh"]) == 130
    assert seen == {"old checkpoint": False} and "--fresh: removed" in capsys.readouterr().out


# ----------------------------------------------------------------------------- 6 destructive commands


def test_make_split_refuses_to_overwrite_without_force(tmp_path, monkeypatch, capsys):
    from fixtures import write
    from medad.data import splits
    from test_lidc import lidc_files

    monkeypatch.setattr(splits, "SPLITS_DIR", tmp_path / "splits")
    (tmp_path / "splits").mkdir()
    committed = tmp_path / "splits" / "lidc.json"
    committed.write_text('{"kept": true}')
    data = tmp_path / "data"
    write(data, lidc_files(), archive="lidc-idri-slices.zip")
    assert cli.main(["data", "make-split", "lidc", "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert str(committed) in err and "--force" in err and err.count("\n") == 1
    assert committed.read_text() == '{"kept": true}'
    assert cli.main(["data", "make-split", "lidc", "--data-dir", str(data), "--force"]) == 0
    assert set(json.loads(committed.read_text())) >= {"train", "val", "test"}


# ----------------------------------------------------------------------------- in a real kernel (3, 7)

KERNEL_CHAPTER = '''# %% [markdown]
# # Kernel chapter

# %% tags=["parameters"]
profile = "quick"
data_dir = None
samples_per_grid = None
# %%
from medad.chapter import ChapterRun
run = ChapterRun("data_atlas", profile=profile, data_dir=data_dir, samples_per_grid=samples_per_grid)
# %%
run.finish()
'''


@pytest.mark.slow
def test_notebook_shows_medad_errors_as_one_line_and_records_its_imports(tmp_path, monkeypatch):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "kernel.py").write_text(KERNEL_CHAPTER)
    monkeypatch.setattr(pipeline, "NOTEBOOKS_DIR", notebooks)
    monkeypatch.setattr(pipeline, "EXECUTED_DIR", tmp_path / "executed")
    monkeypatch.setattr(pipeline, "REPO_ROOT", tmp_path)
    # never executed well before: the failed execution itself is shown, its error as one line
    bad = pipeline.execute_chapter("kernel", "quick", None, extra={"samples_per_grid": -1})
    assert bad.status == "failed"
    assert bad.error.startswith("ConfigError: data_atlas: parameter 'samples_per_grid' = -1"), bad.error
    nb = nbformat.read(tmp_path / "executed" / "kernel.ipynb", as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert len(errors) == 1 and errors[0].ename == "ConfigError"
    assert len(errors[0].traceback) == 2 and errors[0].traceback[0].startswith("ConfigError: data_atlas: parameter")
    assert "MEDAD_TRACEBACK=1" in errors[0].traceback[1]
    assert pipeline.FAILURE_TAG in nb.cells[1].metadata["tags"]

    ok = pipeline.execute_chapter("kernel", "quick", None)
    assert ok.status == "executed", ok.error
    stamp = json.loads((tmp_path / "executed" / "kernel.stamp.json").read_text())
    modules = stamp["reads"]["modules"]
    assert "medad/chapter.py" in modules and "medad/params.py" in modules
    assert not any(m.startswith("medad/models/") for m in modules)  # the atlas never imports the models

    typo = pipeline.execute_chapter("kernel", "quick", None, extra={"samples_per_grd": 3})
    assert typo.error.startswith("ConfigError: data_atlas: unknown parameter(s) samples_per_grd given to papermill"), typo.error


@pytest.mark.parametrize("chapter", ["mvfa", "vip", "egc"])
def test_chapter_experiment_command_lines_validate_and_stop_in_one_line(chapter, capsys, monkeypatch):
    import importlib

    module = importlib.import_module(f"medad.train.{chapter}_experiment")
    assert module.main(["--profile", "nope", "--name", "x"]) == 2  # the profile is checked by the schema validator
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: ConfigError: {chapter}: profile must be one of"), err
    # a chapter on the shared harness runs run_experiment; the others still have run_long
    monkeypatch.setattr(module, "run_long" if hasattr(module, "run_long") else "run_experiment", _interrupt)
    assert module.main(["--name", "x"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"python -m medad.train.{chapter}_experiment --name x" in err[0], err
