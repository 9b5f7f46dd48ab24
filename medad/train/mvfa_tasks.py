"""MVFA's training runs as tasks of the shared loop (:func:`medad.experiment.loop.fit`).

:class:`AdapterTask` trains MVFA's adapters on one or more datasets, one dataset per batch
(official ``train_few.py`` / ``train_zero.py`` batch one dataset at a time):

- **optimisers**: MVFA-AD's two Adams (betas 0.5, 0.999), one per adapter family
  (:class:`medad.models.mvfa.AdapterOptimizers`). On a batch of an image-level dataset the
  official scripts step only the detection optimiser. Here the loop steps every optimiser the
  task returns, so the task returns only the detection one when no dataset has masks, and on an
  image-level batch of a mixed run it takes the segmentation adapters out of the backward pass
  (``requires_grad`` off for that forward): their gradients stay ``None``, and Adam leaves a
  parameter without a gradient untouched, its moments and step count included. Either way the
  seg adapters move exactly when the official code moves them.
- **batches**: each epoch, every dataset's images in a fresh random order cut into batches, and the
  batches of all datasets shuffled together (drawn from the run's NumPy generator);
- **loss**: :class:`medad.models.mvfa.MVFALoss` (float32, also under bf16 autocast);
- **validation** (:class:`FewShotTask`, :class:`ZeroShotTask`): named scores, ``"val"`` on validation
  images; a few-shot task can also score the test set each epoch (``"test (official)"``) so that the
  loop's ``track`` keeps the weights that the official selection would keep, in the same run.

Everything else (precision, checkpoints, exact resumption, refusal of a resume under other
settings, best-weights selection, progress, timing) is the loop's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from medad.errors import ConfigError
from medad.experiment.checkpoint import fingerprint
from medad.experiment.loop import Task
from medad.experiment.precision import as_input, memory_format
from medad.models import mvfa as M

VAL = "val"
OFFICIAL = "test (official)"


@dataclass
class TrainData:
    """One dataset's training images (already augmented where the protocol says so), labels, masks, text matrix."""

    dataset: str
    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    text: torch.Tensor

    @property
    def pixel_level(self) -> bool:
        return self.masks is not None


class AdapterTask(Task):
    """MVFA's adapters trained on ``data`` (see the module docstring); subclasses add ``validate``."""

    def __init__(self, model: M.MVFA, data: Sequence[TrainData], *, lr: float, batch_size: int,
                 precision: str = "fp32", name: str = "train", options: dict | None = None):
        if not data:
            raise ConfigError(f"{name}: no training data")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        empty = [d.dataset for d in data if len(d.images) == 0]
        if empty:
            raise ConfigError(f"{name}: no training images for {', '.join(empty)}")
        self.model, self.data, self.name = model, list(data), name
        self.batch_size, self.lr_value, self.precision = int(batch_size), float(lr), precision
        self.options = dict(options or {})
        self.adapter_optimizers = model.optimizers(lr)
        self.seg_learns = any(d.pixel_level for d in self.data)

    def bind(self, device: str, channels_last: bool) -> None:
        super().bind(device, channels_last)
        memory_format(self.model.backbone, channels_last)  # the frozen backbone is not a submodule of the model

    def optimizers(self) -> list[torch.optim.Optimizer]:
        opts = self.adapter_optimizers
        return [opts.seg, opts.det] if self.seg_learns else [opts.det]

    def steps_per_epoch(self) -> int:
        return sum(math.ceil(len(d.images) / self.batch_size) for d in self.data)

    def epoch_batches(self, epoch: int, rng: np.random.Generator) -> list:
        batches = []
        for di, d in enumerate(self.data):
            order = rng.permutation(len(d.images))
            batches += [(di, order[i:i + self.batch_size]) for i in range(0, len(order), self.batch_size)]
        return [batches[j] for j in rng.permutation(len(batches))]

    def loss(self, batch, rng) -> dict[str, torch.Tensor]:
        di, index = batch
        d = self.data[di]
        idx = torch.as_tensor(index, dtype=torch.long)
        images = as_input(d.images[idx].to(self.device), self.channels_last)
        seg_params = self.model.adapter_parameters("seg")
        for p in seg_params:  # image-level batch: the seg adapters must get no gradient (see the module docstring)
            p.requires_grad_(d.pixel_level)
        try:
            out = self.model(images)
        finally:
            for p in seg_params:
                p.requires_grad_(True)
        masks = None if d.masks is None else d.masks[idx].to(self.device)
        return {"loss": M.MVFALoss()(out, d.text.to(self.device), d.labels[idx].to(self.device), masks)}

    def settings(self) -> dict:
        return {"model": {"levels": list(self.model.levels), "residual": self.model.residual,
                          "backbone": self.model.backbone.name, "protocol": self.model.backbone.protocol},
                "lr": self.lr_value, "batch_size": self.batch_size,
                "data": {d.dataset: fingerprint(d.images, d.labels) for d in self.data}, **self.options}


def official_score(scores: M.BranchScores, labels, masks) -> float:
    """MVFA-AD's checkpoint score of a scored set (``train_few.py``'s ``test``): both branches min-max
    normalised over the set itself; pixel AUC + image AUC (max of the map) with masks, image AUC without.
    NaN where an AUC is undefined (NaN never wins a selection)."""
    from medad.metrics.anomaly import image_auc, pixel_auc

    pixel = masks is not None
    out = M.combine(scores, None, pixel, normalisation="test")
    value = image_auc(labels, out.image)
    return value + pixel_auc(out.maps, masks) if pixel else value


class FewShotTask(AdapterTask):
    """One dataset's K-shot support set (x11 augmented); validation scores of the current adapters.

    ``score(model, images, bank, text)`` scores a set of images (:func:`medad.models.mvfa.branch_scores` with the
    run's settings); the memory bank is rebuilt from ``bank_images`` (the augmented normal support images) at
    every validation, as ``train_few.py`` rebuilds it every epoch. ``"val"`` is :func:`official_score` on the
    validation images ``val``; with ``test`` given, ``"test (official)"`` is the same on the test set.
    """

    def __init__(self, model, data: TrainData, *, bank_images: torch.Tensor, val, test=None, score: Callable, **kw):
        super().__init__(model, [data], **kw)
        self.bank_images, self.val, self.test, self.score = bank_images, val, test, score

    def validate(self) -> dict:
        bank = M.build_memory_bank(self.model, self.bank_images, precision=self.precision,
                                   channels_last=self.channels_last)
        text = self.data[0].text
        out = {VAL: official_score(self.score(self.model, self.val, bank, text), self.val.labels, self.val.masks)}
        if self.test is not None:
            out[OFFICIAL] = official_score(self.score(self.model, self.test, bank, text), self.test.labels,
                                           self.test.masks)
        return out


class ZeroShotTask(AdapterTask):
    """Several source datasets; ``"val"`` is the mean zero-shot image AUC on their validation images."""

    def __init__(self, model, data: Sequence[TrainData], *, select: Sequence[tuple], score: Callable, **kw):
        super().__init__(model, data, **kw)
        self.select, self.score = list(select), score

    def validate(self) -> dict:
        from medad.metrics.anomaly import image_auc

        aucs = []
        for ims, text in self.select:
            out = M.combine(self.score(self.model, ims, None, text), None, ims.pixel_level, branch="zero",
                            normalisation="test")
            aucs.append(image_auc(ims.labels, out.image))
        return {VAL: float(np.nanmean(aucs)) if np.isfinite(aucs).any() else math.nan}
