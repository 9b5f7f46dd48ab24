"""Training of the ambiguous-segmentation models (Probabilistic U-Net and baselines) on the shared loop.

:class:`AmbiguousSegmentationTask` is the chapter's :class:`medad.experiment.loop.Task`:

- every step draws ``batch_size`` slices at random (without replacement within the batch); each model
  picks a random grader's mask per slice and step (the paper's protocol, inside ``model.loss``);
- Adam with a piecewise-constant learning rate (the official schedule: 1e-4, then 5e-5, 1e-5, 5e-7
  at 1/3, 2/3 and all of the iterations: :meth:`TrainSettings.lr_at`) and the official L2 weight
  penalty (1e-5 x sum w^2 / 2, logged as ``penalty``);
- validation GED on a fixed subset of the validation split every ``val_every`` steps (all pairs,
  d(empty, empty) = 0, its own random stream so it never shifts training's); the weights with the
  lowest validation GED are the ones returned: model selection never sees the test split.

The loop (:func:`medad.experiment.loop.fit`) owns precision, checkpoints (``<checkpoint_dir>/last.pt``),
resumption (exact on the CPU; refused under other settings, with the differences named), the
progress bar, timing and the time cap. :func:`train` is the one call the chapter makes.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medad.errors import ConfigError
from medad.experiment.checkpoint import fingerprint
from medad.experiment.loop import FitResult, LoopSettings, NonFiniteLossError, Task, fit
from medad.experiment.precision import as_input, check_precision
from medad.metrics.ged import distance_matrices, ged_from_distances
from medad.models.segmentation_common import l2_penalty

__all__ = ["TrainSettings", "AmbiguousSegmentationTask", "train", "sample_all", "validation_ged", "to_batch",
           "NonFiniteLossError", "FitResult"]


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
    checkpoint_every: int = 0  # 0: at every validation (or only at the end without validations)
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

    def lr_at(self, step: int, iterations: int | None = None) -> float:
        """The piecewise-constant rate of ``step`` in a schedule of ``iterations`` steps (default: this one's)."""
        total = self.iterations if iterations is None else iterations
        k = sum(step >= b * total for b in self.lr_boundaries)
        return float(self.lr_values[k])

    def block(self) -> int:
        """Steps per "epoch" of this step-based schedule: the validation interval (or 1,000 without one)."""
        return self.val_every or 1000

    def loop(self) -> LoopSettings:
        return LoopSettings(steps=self.iterations, seed=self.seed, device=self.device, precision=self.precision,
                            channels_last=self.channels_last, validate_every=self.val_every or None,
                            checkpoint_every=self.checkpoint_every or (self.val_every or None), log_every=self.log_every,
                            max_minutes=self.max_minutes, grad_clip=self.grad_clip, select="val_ged", mode="min")


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


class AmbiguousSegmentationTask(Task):
    """One ambiguous-segmentation model (it needs ``loss`` and ``sample``) on grader-labelled slices.

    An "epoch" of this task is the block of steps between two validations (its batches are drawn at
    its start from the run's generator, the same draws, in the same order, as one per step).
    """

    def __init__(self, model: torch.nn.Module, train_data: dict, val_data: dict, settings: TrainSettings,
                 name: str = "train", model_config: dict | None = None):
        _check_data(train_data, "train_data")
        _check_data(val_data, "val_data")
        self.model, self.train_data, self.val_data, self.s, self.name = model, train_data, val_data, settings, name
        self.model_config = dict(model_config or {})
        torch.manual_seed(settings.seed)  # MC dropout draws from the global stream: start it from the seed
        self.gen = torch.Generator(device=settings.device).manual_seed(settings.seed)
        n_val = len(val_data["images"])
        self.val_index = np.sort(np.random.default_rng(settings.seed + 1).permutation(n_val)[: settings.val_slices])

    def optimizers(self):
        return [torch.optim.Adam(self.model.parameters(), lr=self.s.lr_at(0))]

    def steps_per_epoch(self) -> int:
        return self.s.block()

    def epoch_batches(self, epoch: int, rng: np.random.Generator) -> list:
        n = len(self.train_data["images"])
        size = min(self.s.batch_size, n)
        return [np.sort(rng.choice(n, size=size, replace=False)) for _ in range(self.steps_per_epoch())]

    def lr(self, step: int, total_steps: int) -> float:
        return self.s.lr_at(step, total_steps)

    def loss(self, batch, rng) -> dict[str, torch.Tensor]:
        images, masks = to_batch(self.train_data, batch, self.device)
        out = self.model.loss(as_input(images, self.channels_last), masks, generator=self.gen)
        terms = {f"model_{k}" if k == "loss" else k: v for k, v in out.items()}
        if self.s.weight_decay:
            terms["penalty"] = self.s.weight_decay * l2_penalty(self.model)
            terms["loss"] = out["loss"] + terms["penalty"]
        else:
            terms["loss"] = out["loss"]
        return terms

    def validate(self) -> dict:
        return {"val_ged": validation_ged(self.model, self.val_data, self.val_index, self.s.val_samples,
                                          self.device, self.s.seed + 2)}

    def settings(self) -> dict:
        keep = {k: v for k, v in asdict(self.s).items() if k not in ("iterations", "device", "checkpoint_every",
                                                                     "log_every", "max_minutes")}
        return {"model": getattr(self.model, "kind", type(self.model).__name__), "model_config": self.model_config,
                "schedule": keep, "data": fingerprint(self.train_data["images"], self.train_data["grader_masks"]),
                "layout": _layout(self.model)}

    def generators(self) -> dict:
        return {"sampling": self.gen}


def _layout(model: torch.nn.Module) -> str:
    """The network's shape in a few words (tensor count, weights, a digest of every tensor's name and shape)."""
    import hashlib

    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    digest = hashlib.sha256(repr(shapes).encode()).hexdigest()[:10]
    return f"{len(shapes)} tensors, {sum(p.numel() for p in model.parameters()):,} weights, shapes {digest}"


def train(model: torch.nn.Module, train_data: dict, val_data: dict, settings: TrainSettings,
          checkpoint_dir: str | os.PathLike | None = None, progress: bool = True, desc: str = "train",
          model_config: dict | None = None) -> FitResult:
    """Train ``model`` and return the :class:`FitResult` with the best validation weights loaded.

    ``model_config``: the options the model was built with, stored in the checkpoint so that a
    resumption with other options is refused by name (the layout is compared in any case).
    """
    task = AmbiguousSegmentationTask(model, train_data, val_data, settings, desc, model_config)
    checkpoint = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    return fit(task, settings.loop(), checkpoint=checkpoint, progress=progress)
