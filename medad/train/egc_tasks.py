"""The early-gastric-cancer chapter's training units on the shared loop (:func:`medad.experiment.loop.fit`).

:class:`ClassifierTask` — GAIN, the plain classifier or GAIN + attention mining
(:mod:`medad.models.gain`) on the cached output of the frozen stages (``trunks``, computed once
per image and for its horizontal flip, the training augmentation; attention mining also runs
the flipped images themselves through the whole network). Adam at ``cls_lr``; an epoch is one
shuffled pass in batches of ``cls_batch_size`` (the last one smaller); validation after every
epoch scores ``(ROC AUC, mean log-likelihood)`` of the validation labels, compared in order: the
AUC reaches 1.0 within an epoch or two on the stand-in, and the log-likelihood breaks those ties.

:class:`SegmenterTask` — one network of the ablation (:mod:`medad.models.ca_unet`) with pixel-wise
cross-entropy on horizontally flipped (p = 0.5) Kvasir-SEG images; Adam at ``seg_lr``; validation
Dice (mean over the validation images) after every epoch.

Both: the epoch with the best validation score is the one returned (ties keep the earlier), and
the loop owns precision (``precision`` fp32 | bf16, ``channels_last``), checkpoints (one per unit,
after every epoch), exact resumption on the CPU, refusal of a resume under other settings (model,
data fingerprint, learning rate, batch size, precision, seed, ...: each named), and timing.
Evaluation (probabilities, Grad-CAM, masks) runs in float32 outside autocast.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from medad.experiment.checkpoint import fingerprint
from medad.experiment.loop import FitResult, LoopSettings, Task, fit
from medad.experiment.precision import as_input
from medad.experiment.schedules import epoch_batches, steps_per_epoch
from medad.models.ca_unet import build_segmenter
from medad.models.gain import LESION, AttentionClassifier, build_classifier
from medad.train.egc_data import to_float

CLS_SELECT, SEG_SELECT = "val_auc_loglik", "val_dice"


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One shuffled pass over ``n`` items, the last batch smaller (every item seen once per epoch), each sorted."""
    return [np.sort(b) for b in epoch_batches(rng.permutation(n), batch_size, drop_last=False)]


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------- classifiers


@torch.no_grad()
def trunk_outputs(model: AttentionClassifier, images: np.ndarray, batch_size: int = 32, progress: bool = False,
                  desc: str = "trunk") -> torch.Tensor:
    """The frozen part's float32 output for every image (uint8 (N, S, S, 3)), computed once, kept on the CPU."""
    from tqdm.auto import tqdm

    model.eval()
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False, mininterval=5):
        out.append(model.trunk(to_float(images[start: start + batch_size]).to(device_of(model))).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def lesion_probability(model: AttentionClassifier, trunk: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Softmax probability of the lesion class for every cached trunk output (float32)."""
    model.eval()
    dev = device_of(model)
    probs = [torch.softmax(model.head(model.features_from_trunk(trunk[s: s + batch_size].to(dev))).float(), 1)[:, LESION].cpu()
             for s in range(0, len(trunk), batch_size)]
    return torch.cat(probs).numpy()


class ClassifierTask(Task):
    """One classifier on cached trunk outputs (module docstring)."""

    def __init__(self, model: AttentionClassifier, data: dict, trunks: dict, *, method: str, lr: float,
                 batch_size: int, seed: int, name: str = "classifier"):
        self.model, self.data, self.trunks, self.method, self.name = model, data, trunks, method, name
        self.lr_value, self.batch_size = float(lr), int(batch_size)
        self.labels = torch.from_numpy(data["train"]["labels"])
        self.masks = torch.from_numpy(data["train"]["masks"])
        torch.manual_seed(seed)  # anything drawing from the global stream starts from the seed

    def optimizers(self):
        return [torch.optim.Adam(_trainable(self.model), lr=self.lr_value)]

    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.labels), self.batch_size, drop_last=False)

    def epoch_batches(self, epoch, rng):
        return _batches(len(self.labels), self.batch_size, rng)

    def loss(self, batch, rng):
        flip = torch.from_numpy(rng.random(len(batch)) < 0.5)
        idx = torch.from_numpy(batch)
        z = torch.where(flip.view(-1, 1, 1, 1), self.trunks["train_flip"][idx], self.trunks["train"][idx])
        masks = torch.where(flip.view(-1, 1, 1), self.masks[idx].flip(-1), self.masks[idx])
        images = None
        if self.model.weights.mining > 0:  # the same flipped images the cached trunk outputs came from
            raw = to_float(self.data["train"]["images"][batch])
            images = as_input(torch.where(flip.view(-1, 1, 1, 1), raw.flip(-1), raw).to(self.device), self.channels_last)
        return self.model.loss(self.labels[idx].to(self.device), masks.to(self.device),
                               trunk=as_input(z.to(self.device), self.channels_last), images=images)

    def validate(self):
        from medad.metrics.classification import roc_auc

        prob = np.clip(lesion_probability(self.model, self.trunks["val"]), 1e-6, 1 - 1e-6)
        labels = self.data["val"]["labels"]
        loglik = float(np.mean(np.where(labels == LESION, np.log(prob), np.log1p(-prob))))
        return {CLS_SELECT: (roc_auc(labels, prob), loglik)}

    def settings(self) -> dict:
        m = self.model
        return {"model": f"{self.method} classifier", "arch": m.arch, "weights": m.weights_source,
                "image_size": m.image_size, "frozen_stages": m.frozen_stages, "lr": self.lr_value,
                "batch_size": self.batch_size, "loss_weights": vars(m.weights),
                "data": fingerprint(self.data["train"]["images"], self.data["train"]["labels"], self.data["val"]["labels"]),
                "selection": "validation ROC AUC, ties broken by the validation mean log-likelihood"}


# ----------------------------------------------------------------------------- segmenters


def seg_batch(data: dict, index, size: int | None = None, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Float images (B, 3, S, S) in [0, 1] and long masks (B, S, S) of the items ``index``, at ``size`` px."""
    images = to_float(data["images"][index]).to(device)
    masks = torch.from_numpy(np.ascontiguousarray(data["masks"][index])).long().to(device)
    if size and images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        masks = F.interpolate(masks.unsqueeze(1).float(), size=(size, size), mode="nearest").squeeze(1).long()
    return images, masks


@torch.no_grad()
def predict_masks(model, data: dict, size: int | None = None, batch_size: int = 16, index=None) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true masks (N, S, S) bool at the segmenter's size (float32 forward passes)."""
    model.eval()
    index = np.arange(len(data["images"])) if index is None else np.asarray(index)
    preds, trues = [], []
    for s in range(0, len(index), batch_size):
        images, masks = seg_batch(data, index[s: s + batch_size], size, device_of(model))
        preds.append(model(images).argmax(1).bool().cpu().numpy())
        trues.append(masks.bool().cpu().numpy())
    if not preds:
        return np.zeros((0, 1, 1), bool), np.zeros((0, 1, 1), bool)
    return np.concatenate(preds), np.concatenate(trues)


class SegmenterTask(Task):
    """One segmentation network with pixel-wise cross-entropy (module docstring)."""

    def __init__(self, model, data: dict, *, variant: str, size: int, lr: float, batch_size: int, seed: int,
                 name: str = "segmenter"):
        self.model, self.data, self.variant, self.size, self.name = model, data, variant, int(size), name
        self.lr_value, self.batch_size = float(lr), int(batch_size)
        torch.manual_seed(seed)

    def optimizers(self):
        return [torch.optim.Adam(self.model.parameters(), lr=self.lr_value)]

    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.data["train"]["images"]), self.batch_size, drop_last=False)

    def epoch_batches(self, epoch, rng):
        return _batches(len(self.data["train"]["images"]), self.batch_size, rng)

    def loss(self, batch, rng):
        images, masks = seg_batch(self.data["train"], batch, self.size, self.device)
        flip = torch.from_numpy(rng.random(len(batch)) < 0.5).to(self.device)
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        masks = torch.where(flip.view(-1, 1, 1), masks.flip(-1), masks)
        return {"loss": F.cross_entropy(self.model(as_input(images, self.channels_last)).float(), masks)}

    def validate(self):
        from medad.metrics.bootstrap import mean_statistic
        from medad.metrics.segmentation import segmentation_scores

        return {SEG_SELECT: mean_statistic(segmentation_scores(*predict_masks(self.model, self.data["val"], self.size))["dice"])}

    def settings(self) -> dict:
        return {"model": self.variant, "channels": list(self.model.channels), "size": self.size, "lr": self.lr_value,
                "batch_size": self.batch_size, "data": fingerprint(self.data["train"]["images"], self.data["train"]["masks"],
                                                                   self.data["val"]["masks"]),
                "selection": "validation Dice"}


# ----------------------------------------------------------------------------- one unit each


def loop_settings(cfg, steps: int, seed: int, device: str, select: str) -> LoopSettings:
    """Validation and a checkpoint after every epoch; the best validation score's weights returned."""
    return LoopSettings(steps=steps, seed=seed, device=device, precision=cfg["precision"],
                        channels_last=cfg["channels_last"], validate_every=0, checkpoint_every=0, log_every=0,
                        select=select, mode="max")


def train_classifier(cfg, arch: str, method: str, seed: int, data: dict, trunks: dict, checkpoint: Path | None = None,
                     device: str = "cpu", progress: bool = True, name: str | None = None) -> FitResult:
    """Train one classifier for ``cls_epochs`` epochs (or restore it from a finished ``checkpoint``)."""
    weights = cfg["weights_file"] if arch == cfg["arch"] and cfg["weights_file"] else True
    model = build_classifier(arch, method, pretrained=weights, image_size=cfg["image_size"], seed=seed,
                             frozen_stages=cfg["frozen_stages"])
    task = ClassifierTask(model, data, trunks, method=method, lr=cfg["cls_lr"], batch_size=cfg["cls_batch_size"],
                          seed=seed, name=name or f"{method} seed {seed}")
    steps = cfg["cls_epochs"] * task.steps_per_epoch()
    return fit(task, loop_settings(cfg, steps, seed, device, CLS_SELECT), checkpoint, progress)


def train_segmenter(cfg, variant: str, seed: int, data: dict, checkpoint: Path | None = None, device: str = "cpu",
                    progress: bool = True) -> FitResult:
    """Train one segmentation network for ``seg_epochs`` epochs (or restore it from a finished ``checkpoint``)."""
    model = build_segmenter(variant, cfg["seg_channels"], seed=seed)
    task = SegmenterTask(model, data, variant=variant, size=cfg["seg_size"], lr=cfg["seg_lr"],
                         batch_size=cfg["seg_batch_size"], seed=seed, name=f"{variant} seed {seed}")
    steps = cfg["seg_epochs"] * task.steps_per_epoch()
    return fit(task, loop_settings(cfg, steps, seed, device, SEG_SELECT), checkpoint, progress)


def epoch_history(result: FitResult, select: str) -> list[dict]:
    """Per epoch: ``epoch``, mean training ``loss``, the validation score ``val`` (and ``val_key``, the whole tuple)."""
    losses = {h["step"]: h["loss"] for h in result.history}
    out = []
    for v in result.validations:
        key = v[select] if isinstance(v[select], list) else [v[select]]
        entry = {"epoch": int(round(v["epoch"])), "loss": losses.get(v["step"], float("nan")), "val": key[0]}
        if len(key) > 1:
            entry["val_key"] = key
        out.append(entry)
    return out
