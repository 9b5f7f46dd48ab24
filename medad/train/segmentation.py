"""Training loop for the ambiguous-segmentation models (Probabilistic U-Net and baselines).

- batches of ``batch_size`` slices drawn at random; each model picks a random grader's mask
  per slice and step (the paper's protocol, inside ``model.loss``);
- Adam with a piecewise-constant learning rate (the official schedule: 1e-4, then 5e-5, 1e-5,
  5e-7 at 1/3, 2/3 and all of the iterations) and the official L2 weight penalty (1e-5 x sum w^2 / 2);
- validation GED on a fixed subset of the validation split every ``val_every`` steps; the
  weights with the lowest validation GED are the ones returned (model selection never sees test);
- a checkpoint (``last.pt``: weights, optimiser, every random-number state, history, best
  weights, the run's settings) every ``checkpoint_every`` steps, and resumption from it: on the
  CPU a resumed run reproduces the uninterrupted one exactly. A checkpoint written under other
  settings (schedule, seed, data, model) is refused with the differences named, never resumed
  under the new ones; temporary files of an interrupted save are removed at the next start;
- a non-finite loss stops training with :class:`NonFiniteLossError` instead of training on NaN.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medad.errors import ConfigError, MedadError
from medad.experiment.precision import as_input, autocast, check_precision, memory_format
from medad.metrics.ged import distance_matrices, ged_from_distances
from medad.models.segmentation_common import l2_penalty


class NonFiniteLossError(MedadError, FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainSettings:
    iterations: int = 1000
    batch_size: int = 10
    lr_values: Sequence[float] = (1e-4, 5e-5, 1e-5, 5e-7)
    lr_boundaries: Sequence[float] = (1 / 3, 2 / 3, 1.0)  # fractions of `iterations` where the next value starts
    weight_decay: float = 1e-5
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"  # fp32 | bf16 autocast (KL and cross-entropy stay float32), CPU and CUDA
    channels_last: bool = False  # NHWC weights and batches (faster convolutions under bf16)
    checkpoint_every: int = 0  # 0: no periodic checkpoints
    val_every: int = 0  # 0: validate once, at the end
    val_slices: int = 200
    val_samples: int = 16
    log_every: int = 10
    max_minutes: float | None = None  # stop early (and say so) when this wall-clock budget is spent
    grad_clip: float | None = None

    def __post_init__(self):
        if self.iterations < 1 or self.batch_size < 1:
            raise ConfigError(f"iterations and batch_size must be >= 1, got {self.iterations}, {self.batch_size}")
        if len(self.lr_values) != len(self.lr_boundaries) + 1 or min(self.lr_values) <= 0:
            raise ConfigError("lr_values needs one more (positive) entry than lr_boundaries")
        check_precision(self.precision)
        if list(self.lr_boundaries) != sorted(self.lr_boundaries):
            raise ConfigError(f"lr_boundaries must be increasing, got {self.lr_boundaries}")

    def lr_at(self, step: int) -> float:
        k = sum(step >= b * self.iterations for b in self.lr_boundaries)
        return float(self.lr_values[k])


@dataclass
class TrainResult:
    model: torch.nn.Module
    history: list = field(default_factory=list)
    val_history: list = field(default_factory=list)
    best_step: int = 0
    best_val_ged: float = float("nan")
    steps: int = 0
    seconds: float = 0.0
    stopped_by: str = "iterations"
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"steps": self.steps, "best_step": self.best_step, "best_val_ged": self.best_val_ged,
                "seconds": round(self.seconds, 1), "stopped_by": self.stopped_by,
                "parameters": sum(p.numel() for p in self.model.parameters())}


def to_batch(data: dict, index, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, H, W) and bool grader masks (N, G, H, W) -> float (B, 1, H, W) in [0, 1], bool (B, G, H, W)."""
    images = torch.from_numpy(np.ascontiguousarray(data["images"][index])).to(device).float().div_(255).unsqueeze(1)
    masks = torch.from_numpy(np.ascontiguousarray(data["grader_masks"][index])).to(device)
    return images, masks


def _check_data(data: dict, name: str) -> None:
    if "images" not in data or "grader_masks" not in data:
        raise ConfigError(f"{name} must be a dict with 'images' (N,H,W) uint8 and 'grader_masks' (N,G,H,W) bool")
    if data["images"].ndim != 3 or data["grader_masks"].ndim != 4 or len(data["images"]) != len(data["grader_masks"]):
        raise ConfigError(f"{name}: images {data['images'].shape} and grader_masks {data['grader_masks'].shape} do not fit")
    if len(data["images"]) == 0:
        raise ConfigError(f"{name} is empty")


@torch.no_grad()
def sample_all(model, data: dict, n: int, device: str, batch_size: int = 32, generator=None, index=None) -> torch.Tensor:
    """n samples for every slice of ``data`` (or the slices in ``index``): bool (N, n, H, W) on the CPU."""
    model.eval()
    index = np.arange(len(data["images"])) if index is None else np.asarray(index)
    out = []
    for start in range(0, len(index), batch_size):
        images, _ = to_batch(data, index[start : start + batch_size], device)
        out.append(model.sample(images, n, generator=generator).cpu())
    return torch.cat(out)


def validation_ged(model, data: dict, index, n_samples: int, device: str, seed: int) -> float:
    """Mean GED (empty-empty = 0, all pairs) of ``n_samples`` samples on the slices ``index``; RNG-neutral."""
    devices = [torch.device(device).index or 0] if str(device).startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):  # dropout sampling must not shift the training stream
        torch.manual_seed(seed)
        gen = torch.Generator(device=device).manual_seed(seed)
        samples = sample_all(model, data, n_samples, device, generator=gen, index=index)
    graders = torch.from_numpy(np.ascontiguousarray(data["grader_masks"][index]))
    return float(ged_from_distances(distance_matrices(samples, graders, device=device)).mean())


def data_fingerprint(data: dict) -> str:
    """A cheap identity of a training set (shape and a hash of a few slices), stored in checkpoints."""
    import hashlib

    images = data["images"]
    probe = images[:: max(1, len(images) // 16)]
    return f"{images.shape}:{hashlib.sha256(np.ascontiguousarray(probe).tobytes()).hexdigest()[:16]}"


# Settings that may change between a run and its resumption: they do not alter what is trained.
# (`iterations` may grow too, when the learning rates of the steps already done stay the same.)
RESUMABLE_CHANGES = {"device", "checkpoint_every", "log_every", "max_minutes", "iterations"}


def settings_differences(saved: dict, now: dict) -> list[str]:
    """'name: old -> new' for every setting that differs (lists and tuples compare alike)."""
    def norm(value):
        return list(value) if isinstance(value, (list, tuple)) else value

    return [f"{k}: {norm(saved.get(k))} -> {norm(now.get(k))}" for k in sorted(set(saved) | set(now))
            if k not in RESUMABLE_CHANGES and norm(saved.get(k)) != norm(now.get(k))]


def _check_resumable(ck: dict, ckpt_path: Path, model, settings: dict, model_config: dict, data: str) -> None:
    """Refuse a checkpoint written for another model, schedule, seed or training set."""
    differences = []
    if ck["kind"] != getattr(model, "kind", type(model).__name__):
        differences.append(f"model: {ck['kind']} -> {getattr(model, 'kind', type(model).__name__)}")
    saved = ck.get("settings", {})
    differences += settings_differences(saved, settings)
    if saved.get("iterations", settings["iterations"]) != settings["iterations"]:
        before = TrainSettings(**{**settings, **{k: v for k, v in saved.items() if k in settings}})
        now = TrainSettings(**settings)
        if now.iterations < ck["step"] or any(before.lr_at(k) != now.lr_at(k) for k in range(ck["step"])):
            differences.append(f"iterations: {before.iterations} -> {now.iterations}, which changes the "
                               f"learning rates of the {ck['step']} steps already done")
    differences += settings_differences(ck.get("model_config", {}), model_config) if "model_config" in ck else []
    if ck.get("data") != data:
        differences.append(f"other training data ({ck.get('data')} -> {data})")
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    saved_shapes = ck.get("shapes", shapes)  # checkpoints from before shapes were stored: load_state_dict checks
    changed = sorted(k for k in set(shapes) | set(saved_shapes) if saved_shapes.get(k) != shapes.get(k))
    if changed:
        differences.append(f"network layout: {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}")
    if differences:
        raise _refuse(ckpt_path, "; ".join(differences))


def _refuse(ckpt_path: Path, differences: str) -> ConfigError:
    return ConfigError(
        f"{ckpt_path} is a checkpoint of a run with other settings ({differences}); resuming it would mix the two. "
        f"To start afresh, delete {ckpt_path.parent} (from the command line: add --fresh), "
        "or give this run another name or checkpoint folder"
    )


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(model: torch.nn.Module, train_data: dict, val_data: dict, settings: TrainSettings,
          checkpoint_dir: str | os.PathLike | None = None, resume: bool = True, progress: bool = True,
          desc: str = "train", model_config: dict | None = None) -> TrainResult:
    """Train ``model`` (it needs ``loss`` and ``sample``) and return it with the best validation weights loaded.

    ``model_config``: the options the model was built with, stored in the checkpoint so that a
    resumption with other options is refused by name (the layout is compared in any case).
    """
    from tqdm.auto import tqdm

    _check_data(train_data, "train_data")
    _check_data(val_data, "val_data")
    s = settings
    device = s.device
    memory_format(model.to(device), s.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr_at(0))
    rng = np.random.default_rng(s.seed)
    torch.manual_seed(s.seed)
    gen = torch.Generator(device=device).manual_seed(s.seed)
    val_index = np.sort(np.random.default_rng(s.seed + 1).permutation(len(val_data["images"]))[: s.val_slices])

    step, elapsed, history, val_history = 0, 0.0, [], []
    best = {"step": 0, "ged": float("inf"), "state": None}
    ckpt_path = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    model_config = json.loads(json.dumps(model_config or {}, default=str))
    fingerprint = data_fingerprint(train_data)
    if ckpt_path is not None:
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        for stale in ckpt_path.parent.glob("*.tmp"):  # a save interrupted before its rename
            stale.unlink()
        if resume and ckpt_path.is_file():
            ck = torch.load(ckpt_path, map_location=device, weights_only=False)
            _check_resumable(ck, ckpt_path, model, asdict(s), model_config, fingerprint)
            try:
                model.load_state_dict(ck["model"])
            except RuntimeError as exc:  # an old checkpoint of another layout (no stored shapes)
                raise _refuse(ckpt_path, f"network layout: {str(exc).splitlines()[-1].strip()}") from None
            opt.load_state_dict(ck["optimizer"])
            rng.bit_generator.state = ck["numpy_rng"]
            torch.set_rng_state(ck["torch_rng"])
            if ck.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(ck["cuda_rng"])
            gen.set_state(ck["generator"].to(gen.get_state().device) if hasattr(ck["generator"], "to") else ck["generator"])
            step, elapsed, history, val_history, best = ck["step"], ck["elapsed"], ck["history"], ck["val_history"], ck["best"]

    def checkpoint() -> None:
        if ckpt_path is None:
            return
        _save_atomic({
            "kind": getattr(model, "kind", type(model).__name__), "model": model.state_dict(), "optimizer": opt.state_dict(),
            "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if str(device).startswith("cuda") else None,
            "generator": gen.get_state(), "step": step, "elapsed": elapsed, "history": history,
            "val_history": val_history, "best": best, "settings": asdict(s), "data": fingerprint,
            "model_config": model_config, "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
        }, ckpt_path)

    def validate() -> None:
        ged = validation_ged(model, val_data, val_index, s.val_samples, device, s.seed + 2)
        val_history.append({"step": step, "val_ged": ged})
        if ged < best["ged"]:
            best.update(step=step, ged=ged, state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        model.train()

    n_train = len(train_data["images"])
    t0 = time.perf_counter() - elapsed
    stopped_by = "iterations"
    running: dict[str, float] = {}
    bar = tqdm(total=s.iterations, initial=step, desc=desc, disable=not progress, mininterval=5, leave=False)
    model.train()
    while step < s.iterations:
        if s.max_minutes is not None and time.perf_counter() - t0 > 60 * s.max_minutes:
            stopped_by = "time budget"
            break
        for group in opt.param_groups:
            group["lr"] = s.lr_at(step)
        index = np.sort(rng.choice(n_train, size=min(s.batch_size, n_train), replace=False))
        images, masks = to_batch(train_data, index, device)
        with autocast(device, s.precision):
            out = model.loss(as_input(images, s.channels_last), masks, generator=gen)
        loss = out["loss"] + s.weight_decay * l2_penalty(model) if s.weight_decay else out["loss"]
        if not torch.isfinite(loss):
            terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in out.items())
            raise NonFiniteLossError(f"{desc}: the loss became non-finite at step {step} ({terms}); "
                                     f"lower the learning rate (now {s.lr_at(step):g}) or check the inputs")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if s.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        opt.step()
        step += 1
        for k, v in out.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        running["n"] = running.get("n", 0) + 1
        if step % s.log_every == 0 or step == s.iterations:
            n = running.pop("n")
            history.append({"step": step, "lr": s.lr_at(step - 1), "seconds": round(time.perf_counter() - t0, 2),
                            **{k: round(v / n, 5) for k, v in running.items()}})
            running = {}
            bar.set_postfix(loss=history[-1]["loss"], refresh=False)
        if s.val_every and step % s.val_every == 0:
            validate()
            bar.set_postfix(loss=history[-1]["loss"] if history else None, val_ged=round(val_history[-1]["val_ged"], 4), refresh=False)
        elapsed = time.perf_counter() - t0
        if s.checkpoint_every and step % s.checkpoint_every == 0:
            checkpoint()
        bar.update(1)
    bar.close()
    if not val_history or val_history[-1]["step"] != step:
        validate()
    elapsed = time.perf_counter() - t0
    checkpoint()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
        if ckpt_path is not None:
            _save_atomic({"kind": getattr(model, "kind", ""), "model": best["state"], "step": best["step"], "val_ged": best["ged"]},
                         ckpt_path.with_name("best.pt"))
    model.eval()
    return TrainResult(model=model, history=history, val_history=val_history, best_step=best["step"],
                       best_val_ged=best["ged"], steps=step, seconds=elapsed, stopped_by=stopped_by, settings=asdict(s))
