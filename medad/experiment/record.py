"""One run record for every experiment: what a run is, what it read, and the one way it writes its results.

A :class:`RunRecord` is made once at an entry point (a chapter's command line, or a notebook
through :class:`medad.chapter.ChapterRun`) and flows down:

- **parameters**: the profile resolved against the chapter's schema, with the caller's overrides;
  threads, seeds and device set from them;
- **data**: :class:`RecordingOpener` opens every dataset the run reads, records it with its
  checksum, and records the subset the run actually used (``note_subset``);
- **kind**, by one rule (:func:`run_kind`): a quick-profile run or a run on synthetic data is
  ``smoke`` and never a chapter's headline; a rehearsal is ``rehearsal`` and is never written under
  ``results/``; a GPU run of the full profile is ``gpu-full``, another GPU run ``gpu``; everything
  else (a long CPU run) is ``long-cpu``;
- **state** (:class:`RunState`): the run's checkpoints and finished units, in a folder outside the
  work tree (``--checkpoints``, default ``<medad cache>/runs/<chapter>/<name>``), with the settings
  the run was started under: a rerun with the same name resumes only under equal settings, and
  a rerun under other settings is refused with each difference named (``--fresh`` starts afresh);
- **results**: ``results/<chapter>/<name>/`` is written only by the run that owns it (its
  ``run_id`` is in the folder's ``provenance.json``): another run of the same name is refused
  unless ``--fresh`` says to replace it. Every run writes ``table.csv`` and ``provenance.json``
  through :meth:`RunRecord.write`, in one provenance schema; the commit and code digest are taken at
  the start, and the compute seconds are summed over every invocation that resumed the run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from medad.errors import ConfigError
from medad.experiment.checkpoint import atomic_write_json, jsonable, settings_differences

# Provenance keys every run writes (a chapter's extra keys may not reuse them).
PROVENANCE_KEYS = ("chapter", "run", "run_id", "kind", "profile", "schedule", "precision", "parameters", "commit",
                   "code_sha256", "command", "device", "threads", "data", "started", "finished", "seconds",
                   "invocations", "environment")
# Parameters that may differ between an interruption and its resumption (they do not change the numbers).
RESUMABLE_PARAMETERS = {"threads", "device", "checkpoint_every", "log_every"}


def check_run_name(name: str, what: str = "run name") -> str:
    """A run name becomes a folder name: letters, digits, '.', '_' and '-', starting with a letter or digit."""
    from medad.results import RUN_NAME

    if not isinstance(name, str) or not RUN_NAME.fullmatch(name) or set(name) == {"."}:
        raise ConfigError(f"{what} {name!r}: a run name is one folder name of letters, digits, '.', '_' and '-' "
                          "(at most 100, starting with a letter or digit), e.g. long-cpu-2026-12-03")
    return name


def run_kind(profile: str, device: str, synthetic: bool) -> str:
    """How a run ranks as a chapter's headline (medad.results.RUN_KINDS), decided by one rule."""
    if profile == "rehearse":
        return "rehearsal"
    if synthetic or profile == "quick":
        return "smoke"
    if str(device).startswith("cuda"):
        return "gpu-full" if profile == "full" else "gpu"
    return "long-cpu"


# ----------------------------------------------------------------------------- data


class RecordingOpener:
    """``medad.data.open_dataset`` for one data directory, recording every split opened and the subset used."""

    def __init__(self, data_dir=None, synthetic: bool | None = None, n_synthetic: int | None = None):
        self.data_dir, self.synthetic_only, self.n_synthetic = data_dir, synthetic, n_synthetic
        self.opened: list[tuple[str, str]] = []
        self.datasets: list = []
        self.subsets: dict[tuple[str, str], dict] = {}

    def __call__(self, name: str, split: str, **kwargs):
        from medad.data import open_dataset

        if self.synthetic_only is not None:
            kwargs.setdefault("synthetic", self.synthetic_only)
        if self.n_synthetic is not None:
            kwargs.setdefault("n", self.n_synthetic)
        ds = open_dataset(name, split, self.data_dir, **kwargs)
        self.opened.append((name, split))
        if ds not in self.datasets:
            self.datasets.append(ds)
        return ds

    def note_subset(self, ds, used: int | Sequence[int], how: str = "") -> None:
        """Record that the run used ``used`` items (a count or the indices) of ``ds``, chosen ``how``."""
        n = used if isinstance(used, int) else len(used)
        key = (ds.name, ds.split)
        before = self.subsets.get(key)
        if before and before["n_used"] >= n:
            return
        self.subsets[key] = {"n_used": int(n), "subset": how or ("all" if n == len(ds) else "subset")}

    @property
    def any_synthetic(self) -> bool:
        return any(ds.synthetic for ds in self.datasets)

    def provenance(self) -> list[dict]:
        out = []
        for ds in self.datasets:
            item = dict(ds.provenance())
            item.update(self.subsets.get((ds.name, ds.split), {}))
            if item not in out:
                out.append(item)
        return out


# ----------------------------------------------------------------------------- state


class RunState:
    """A run's checkpoints and finished units; ``folder=None`` keeps units in memory and writes no checkpoints
    (a notebook's quick run).

    A unit's value is JSON, except that NumPy arrays anywhere in it (per-image scores, a pixel-pair matrix)
    are kept as arrays: with a folder they are stored beside ``units.json`` in ``units/<key>.pt`` and
    ``units.json`` holds a reference, so it stays small.
    """

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder is not None else None
        self._units: dict[str, Any] = {}
        self.after_unit: Callable[[], Any] | None = None  # RunRecord: note this invocation (a killed one included)
        if self.folder is not None and (self.folder / "units.json").is_file():
            stored = json.loads((self.folder / "units.json").read_text())
            self._units = {key: self._load_arrays(key, value) for key, value in stored.items()}

    def checkpoint(self, key: str) -> Path | None:
        """Where the training unit ``key`` keeps its checkpoint (None without a folder)."""
        if self.folder is None:
            return None
        return self.folder / "checkpoints" / (_file_name(key) + ".pt")

    def done(self, key: str) -> bool:
        return key in self._units

    def get(self, key: str):
        return self._units[key]

    def unit(self, key: str, compute: Callable[[], Any], keep_checkpoint: bool = True):
        """The result of unit ``key``: stored when it finished (JSON, arrays beside it), else computed now and stored."""
        if key in self._units:
            return self._units[key]
        arrays: dict[str, Any] = {}
        plain = jsonable({"v": _take_arrays(compute(), arrays)})["v"]
        if self.folder is not None:
            from medad.experiment.checkpoint import atomic_save

            if arrays:
                atomic_save(arrays, self._arrays_file(key))
            atomic_write_json(self.folder / "units.json", {**self._stored(), key: plain})
            if not keep_checkpoint and self.checkpoint(key) is not None:
                self.checkpoint(key).unlink(missing_ok=True)
        self._units[key] = _put_arrays(plain, arrays)
        if self.after_unit is not None:
            self.after_unit()
        return self._units[key]

    def finished_units(self) -> list[str]:
        return list(self._units)

    def _arrays_file(self, key: str) -> Path:
        return self.folder / "units" / (_file_name(key) + ".pt")

    def _stored(self) -> dict:
        return {key: _take_arrays(value, {}) for key, value in self._units.items()}

    def _load_arrays(self, key: str, value):
        if not _has_reference(value):
            return value
        from medad.experiment.checkpoint import load_checkpoint

        return _put_arrays(value, load_checkpoint(self._arrays_file(key)))


_ARRAY = "__array__"


def _file_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", key)


def _take_arrays(value, arrays: dict):
    """``value`` with each NumPy array replaced by ``{"__array__": name}`` (the array put in ``arrays``)."""
    import numpy as np

    if isinstance(value, np.ndarray):
        name = f"a{len(arrays)}"
        arrays[name] = value
        return {_ARRAY: name}
    if isinstance(value, dict):
        return {k: _take_arrays(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_take_arrays(v, arrays) for v in value]
    return value


def _put_arrays(value, arrays: dict):
    if isinstance(value, dict):
        if set(value) == {_ARRAY}:
            return arrays[value[_ARRAY]]
        return {k: _put_arrays(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_put_arrays(v, arrays) for v in value]
    return value


def _has_reference(value) -> bool:
    if isinstance(value, dict):
        return set(value) == {_ARRAY} or any(_has_reference(v) for v in value.values())
    return isinstance(value, list) and any(_has_reference(v) for v in value)


# ----------------------------------------------------------------------------- the record


class RunRecord:
    """A chapter's run: parameters, data, kind, state and results (see the module docstring).

    ``name=None`` makes a notebook run: no state folder, nothing written under ``results/``.
    """

    def __init__(self, chapter: str, profile: str, name: str | None = None, *, data_dir=None,
                 overrides: dict | None = None, fresh: bool = False, state_root: str | os.PathLike | None = None,
                 results_root: str | os.PathLike | None = None, command: str = "", code_files: Iterable[str] = (),
                 resolved: dict | None = None, resumable: Iterable[str] = ()):
        import torch

        from medad import profiles, provenance
        from medad.data.registry import resolve_data_dir
        from medad.paths import RESULTS_DIR
        from medad.runtime import cache_dir, resolve_device, seed_everything

        self.chapter, self.profile, self.command = chapter, profile, command
        self.resumable = RESUMABLE_PARAMETERS | set(resumable)  # e.g. which stages of the run this invocation does
        self.name = check_run_name(name) if name is not None else None
        self.config = resolved if resolved is not None else profiles.resolve_named(chapter, profile, overrides or {})
        self.data_dir = resolve_data_dir(data_dir)
        threads = self.config.get("threads")
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.threads = torch.get_num_threads()
        self.device = resolve_device(self.config.get("device") or "auto")
        self.seed = int(self.config.get("seed", 0))
        seed_everything(self.seed)
        self.opener = RecordingOpener(self.data_dir)
        self.started, self._t0 = provenance.now_utc(), time.perf_counter()
        self._invocation_id = uuid.uuid4().hex[:12]
        self.commit = provenance.git_commit()
        self.code_files = list(code_files)
        self.code_sha256 = provenance.files_digest(self.code_files) if self.code_files else ""
        self.results_folder = Path(results_root or RESULTS_DIR) / chapter / self.name if self.name else None
        if self.name is None:
            self.state = RunState(None)
            self.run_id = None
            return
        folder = Path(state_root) if state_root else cache_dir() / "runs"
        state_folder = folder / chapter / self.name
        if fresh:
            for target in (state_folder, self.results_folder):
                if target is not None and target.is_dir():
                    shutil.rmtree(target)
                    print(f"--fresh: removed {target}")
        self._check_writable(state_folder)
        self.run_id = self._claim_state(state_folder)
        self._check_results_folder()
        self.state = RunState(state_folder)
        # each finished unit updates invocations.json, so an invocation that is killed later still counts its
        # commit and compute seconds up to its last finished unit
        self.state.after_unit = self._invocations

    # -- guards --------------------------------------------------------------------------------

    def _settings(self) -> dict:
        keep = {k: v for k, v in self.config.items() if k not in self.resumable}
        return jsonable({"profile": self.profile, "parameters": keep,
                         "data_dir": "synthetic" if self.data_dir is None else "given"})

    def _claim_state(self, folder: Path) -> str:
        """This run's id: a new one for a new state folder; the stored one when the settings are equal; else refuse."""
        path = folder / "run.json"
        now = self._settings()
        if path.is_file():
            saved = json.loads(path.read_text())
            differences = settings_differences(saved["settings"]["parameters"], now["parameters"])
            differences += [d for d in settings_differences({k: v for k, v in saved["settings"].items() if k != "parameters"},
                                                            {k: v for k, v in now.items() if k != "parameters"})]
            if differences:
                raise ConfigError(f"run {self.chapter}/{self.name} was started under other settings "
                                  f"({'; '.join(differences)}); resuming would mix two runs. Rerun with the original "
                                  f"settings, add --fresh to discard {folder} and start afresh, or choose another --name")
            return saved["run_id"]
        run_id = uuid.uuid4().hex[:12]
        atomic_write_json(path, {"run_id": run_id, "settings": now, "created": self.started})
        return run_id

    def _check_results_folder(self) -> None:
        folder = self.results_folder
        prov = folder / "provenance.json"
        if folder.is_dir() and any(folder.iterdir()):
            owner = json.loads(prov.read_text()).get("run_id") if prov.is_file() else None
            if owner != self.run_id:
                raise ConfigError(f"{folder} already holds another run's results; a run never writes into another "
                                  "run's folder. Choose another --name, or add --fresh to replace that run")

    def _check_writable(self, state_folder: Path) -> None:
        """Fail before training, not after it, when results or checkpoints cannot be written."""
        for folder in (state_folder, self.results_folder.parent):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                probe = folder / f".medad-write-test.{os.getpid()}"
                probe.write_text("ok")
                probe.unlink()
            except OSError as exc:
                raise ConfigError(f"cannot write to {folder} ({exc.strerror or exc}); choose another folder "
                                  "(--checkpoints for checkpoints) or free space before training") from None

    # -- facts ---------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return run_kind(self.profile, self.device, self.opener.any_synthetic or self.data_dir is None)

    def seconds(self) -> float:
        return time.perf_counter() - self._t0

    def _invocations(self) -> list[dict]:
        """Every invocation of this run so far (stored in its state folder), this one last."""
        from medad import provenance

        me = {"id": self._invocation_id, "started": self.started, "finished": provenance.now_utc(),
              "seconds": round(self.seconds(), 1), "commit": self.commit, "code_sha256": self.code_sha256,
              "command": self.command}
        if self.state.folder is None:
            return [me]
        path = self.state.folder / "invocations.json"
        before = json.loads(path.read_text()) if path.is_file() else []
        merged = [i for i in before if i.get("id", i["started"]) != self._invocation_id] + [me]
        atomic_write_json(path, merged)
        return merged

    def note_invocation(self) -> list[dict]:
        """Count this invocation's compute seconds in the run without writing results (e.g. one part of a run
        trained side by side, which a later invocation evaluates and writes); returns every invocation so far."""
        return self._invocations()

    def provenance(self, schedule: str, precision: str = "float32", extra: dict | None = None) -> dict:
        from medad import provenance
        from medad.runtime import device_description

        clash = sorted(set(extra or {}) & set(PROVENANCE_KEYS))
        if clash:
            raise ConfigError(f"provenance extras may not reuse the common keys {', '.join(clash)}")
        invocations = self._invocations()
        return {
            "chapter": self.chapter, "run": self.name, "run_id": self.run_id, "kind": self.kind, "profile": self.profile,
            "schedule": schedule, "precision": precision, "parameters": jsonable(self.config),
            "commit": invocations[0]["commit"], "code_sha256": invocations[0]["code_sha256"], "command": self.command,
            "device": device_description(self.device), "threads": self.threads, "data": self.opener.provenance(),
            "started": invocations[0]["started"], "finished": provenance.now_utc(),
            "seconds": round(sum(i["seconds"] for i in invocations), 1), "invocations": invocations,
            "environment": provenance.environment(), **(extra or {}),
        }

    def write(self, rows, schedule: str, precision: str = "float32", extra: dict | None = None,
              files: dict[str, Callable[[Path], None]] | None = None) -> Path:
        """Write ``table.csv`` and ``provenance.json`` (and ``files``: name -> writer(path)) of this run."""
        from medad.experiment.checkpoint import atomic_write_text
        from medad.results import check_table, table_frame

        if self.name is None:
            raise ConfigError("a notebook run writes no results folder; give the run a name (the command line does)")
        if self.kind == "rehearsal":
            raise ConfigError("a rehearsal is never written under results/")
        table = check_table(table_frame(rows), f"run {self.name}")
        folder = self.results_folder
        folder.mkdir(parents=True, exist_ok=True)
        for name, writer in (files or {}).items():
            writer(folder / name)
        atomic_write_text(folder / "table.csv", table.to_csv(index=False, float_format="%.6g"))
        atomic_write_json(folder / "provenance.json", self.provenance(schedule, precision, extra))
        return folder
