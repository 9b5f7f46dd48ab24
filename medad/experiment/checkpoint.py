"""The checkpoint contract every experiment shares.

- :func:`atomic_save` / :func:`atomic_write_text`: write to a temporary file of this process
  (``<name>.<pid>.tmp``), then rename; a failed write (disk full, read-only folder) removes its
  temporary file and raises a :class:`~medad.errors.ConfigError` naming the file and the fault.
  :func:`remove_stale_temporaries` deletes what a killed process left behind (its pid is gone).
- :func:`load_checkpoint`: a truncated or corrupt file is a one-line error naming it, with the fix.
- :class:`RandomState`: every random-number state a run draws from (Python, NumPy's global and
  ``Generator`` objects, torch's CPU and CUDA streams and ``torch.Generator`` objects), captured into
  and restored from a checkpoint, so that on the CPU a resumed run repeats the uninterrupted one.
- :func:`settings_differences` / :func:`refuse_resume`: a checkpoint stores the settings it was made
  with; resuming under other settings is refused with each differing setting named, and ``--fresh``
  suggested. (Generalised from the Probabilistic U-Net loop, the first to refuse.)
- :func:`fingerprint`: a cheap identity of training arrays, stored with the settings so that a
  resume on other data is refused too.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from medad.errors import ConfigError

TMP_SUFFIX = ".tmp"


def _temporary(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")


def _write_fault(path: Path, exc: OSError) -> ConfigError:
    why = {28: "the disk is full", 30: "the file system is read-only", 13: "permission denied"}.get(exc.errno, exc.strerror or str(exc))
    return ConfigError(f"cannot write {path}: {why}; free space or choose another folder (--checkpoints / --name)")


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_fault(path.parent, exc) from None
    tmp = _temporary(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_fault(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a half-written file under ``path``."""
    def write(tmp: Path) -> None:
        buffer = io.BytesIO()
        torch.save(obj, buffer)  # serialise first: a failure here touches no file
        tmp.write_bytes(buffer.getvalue())

    return _atomic(Path(path), write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return _atomic(Path(path), lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=1, default=_json_default))


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete ``*.<pid>.tmp`` files in ``folder`` whose process is gone (and legacy ``*.tmp`` files); returns them."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(f"*{TMP_SUFFIX}"):
        stem = tmp.name[: -len(TMP_SUFFIX)]
        pid = stem.rsplit(".", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue  # another live process is writing it
        if pid.isdigit() and int(pid) == os.getpid():
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    """A checkpoint written by :func:`atomic_save`; a truncated or corrupt file is a clear error naming it."""
    path = Path(path)
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path} cannot be read ({first[:160]}); it is truncated or corrupt: delete it, "
                          "or rerun with --fresh to start this run afresh") from None


# ----------------------------------------------------------------------------- random states


class RandomState:
    """The random streams one training run draws from, by name.

    Python's ``random``, NumPy's global stream and torch's global CPU (and CUDA) streams are always
    included; ``generators`` adds named ``numpy.random.Generator`` and ``torch.Generator`` objects.
    """

    def __init__(self, **generators):
        self.generators = generators

    def capture(self) -> dict:
        state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                 "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
                 "named": {}}
        for name, gen in self.generators.items():
            state["named"][name] = gen.bit_generator.state if isinstance(gen, np.random.Generator) else gen.get_state()
        return state

    def restore(self, state: Mapping) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if state.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        for name, gen in self.generators.items():
            saved = state["named"][name]
            if isinstance(gen, np.random.Generator):
                gen.bit_generator.state = saved
            else:
                gen.set_state(saved.cpu() if hasattr(saved, "cpu") else saved)


# ----------------------------------------------------------------------------- settings


def _normalise(value):
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def jsonable(settings: Mapping) -> dict:
    """Settings as plain JSON values (tuples as lists), the form stored in checkpoints and compared."""
    return json.loads(json.dumps(_normalise(dict(settings)), default=_json_default))


def _flatten(settings: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in settings.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings_differences(saved: Mapping, now: Mapping, resumable: Iterable[str] = ()) -> list[str]:
    """``'name: old -> new'`` for every setting that differs (nested ones as ``outer.inner``), except ``resumable``."""
    saved, now, skip = _flatten(jsonable(saved)), _flatten(jsonable(now)), set(resumable)
    return [f"{k}: {saved.get(k)} -> {now.get(k)}" for k in sorted(set(saved) | set(now))
            if k not in skip and saved.get(k) != now.get(k)]


def refuse_resume(path: str | os.PathLike, differences: Iterable[str]) -> ConfigError:
    """The error for a resume under other settings: names each difference and the ways out."""
    path = Path(path)
    return ConfigError(
        f"{path} was made under other settings ({'; '.join(differences)}); resuming it would mix two runs. "
        f"Rerun with the original settings, or add --fresh to delete {path.parent if path.suffix else path} and "
        "start afresh, or give this run another --name"
    )


def fingerprint(*arrays) -> str:
    """Shapes and a hash of a sample of rows of each array: enough to tell two training sets apart."""
    digest = hashlib.sha256()
    for a in arrays:
        a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        digest.update(str((a.shape, str(a.dtype))).encode())
        digest.update(np.ascontiguousarray(a[:: max(1, len(a) // 16)]).tobytes())
    return digest.hexdigest()[:16]
