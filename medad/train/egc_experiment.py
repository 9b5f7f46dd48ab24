"""The early-gastric-cancer chapter's experiment: GAIN vs plain classifier, the CA-U-Net ablation, the pipeline.

Used by the chapter notebook (quick/full profiles) and by the long CPU run::

    nice -n 5 python -m medad.train.egc_experiment --profile long_cpu --data-dir /work/shared/data \\
        --name long-cpu-2026-11-23b

which writes ``results/egc/<name>/table.csv`` and ``provenance.json`` (no images, no weights).
On a 2-core machine, first train the two parts side by side, one thread each (same command
plus ``--only classification`` and ``--only segmentation``); the plain command then finds
every model in the run's checkpoints and only evaluates.

Protocol (stand-in data: lower-GI endoscopy, not gastric cancer):

- classification on ``endoscopy_ad`` (Kvasir-SEG polyps with masks vs HyperKvasir normal colon
  frames; its split keeps near-duplicate frames together): GAIN (0.9 CE + 0.1 MSE) and the plain
  classifier (CE) on the same ImageNet backbone, ``seeds`` training seeds, the epoch with the best
  validation AUC kept (ties, common once AUC reaches 1, broken by the validation log-likelihood).
  With ``frozen_stages`` > 0 the stem and first stages keep their ImageNet
  weights; their output is computed once per image (and for its horizontal flip, the training
  augmentation) and every model trains on it - the CPU budget allows nothing else.
- test metrics: accuracy, precision, recall, specificity, F1, ROC AUC (decision: argmax), mean and
  95% t-interval over seeds; attention maps from Grad-CAM (pytorch_grad_cam) on the last stage for
  both models, scored against the lesion masks (IoU of the map thresholded at ``attention_threshold``
  and pointing game: the map's maximum inside the mask); shortcut checks: accuracy with the
  on-screen overlays blanked, and the lesion probability and recall with the lesion blurred away.
- segmentation on ``kvasir_seg`` (800/100/100): U-Net, +CBAM, +ASPP, CA-U-Net with one budget,
  pixel-wise cross-entropy, the epoch with the best validation Dice kept; pixel accuracy, IoU and
  Dice per test image (MONAI's metrics), mean over seeds, 95% bootstrap interval over images.
- two-stage pipeline on the classification test images: classify (GAIN, first seed), segment
  what is called a lesion (CA-U-Net, first seed); Dice on lesion images (0 when missed) and the
  fraction of normal images with any predicted lesion pixel.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from medad import provenance
from medad.data.endoscopy_ad import OVERLAY_BOXES  # the frames' on-screen overlays (shared with the MVFA chapter)
from medad.errors import ConfigError, DataError, command_line
from medad.models.ca_unet import VARIANTS, build_segmenter
from medad.models.gain import LESION, AttentionClassifier, build_classifier

CHAPTER = "egc"
CLS_DATASET = "endoscopy_ad"
SEG_DATASET = "kvasir_seg"
# How tables and figures name the stand-in data.
STANDIN = {
    CLS_DATASET: "endoscopy_ad (STAND-IN: lower-GI polyps vs normal colon frames, not gastric cancer)",
    SEG_DATASET: "kvasir_seg (STAND-IN: colon polyps, not gastric cancer)",
}
CLS_METHODS = {"gain": "GAIN", "plain": "plain classifier", "gain-am": "GAIN + attention mining"}
SEG_METHODS = {"unet": "U-Net", "unet+cbam": "U-Net + CBAM", "unet+aspp": "U-Net + ASPP", "ca-unet": "CA-U-Net"}


# ----------------------------------------------------------------------------- data


def resize_pair(image: np.ndarray, mask: np.ndarray | None, size: int, where: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB image and bool mask -> (size, size, 3) uint8 and (size, size) bool (aspect not kept, as the paper)."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise DataError(f"{where}: expected a uint8 (H, W) or (H, W, 3) image, got {image.dtype} {image.shape}")
    if mask is None:
        mask = np.zeros(image.shape[:2], dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        raise DataError(f"{where}: its mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                        f"{image.shape[1]}x{image.shape[0]}; a mask must have its image's size")
    pil = Image.fromarray(image).convert("RGB").resize((size, size), Image.BILINEAR)
    small = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
    return np.asarray(pil, dtype=np.uint8), np.asarray(small) > 127


def pick(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """A seeded subset of at most ``limit`` indices, stratified by label (all, sorted, when limit is None)."""
    n = len(labels)
    if limit is None or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    chosen = []
    for value in np.unique(labels):
        idx = np.flatnonzero(labels == value)
        k = max(1, int(round(limit * len(idx) / n)))
        chosen.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(chosen))


def load_arrays(ds, size: int, limit: int | None = None, seed: int = 0, progress: bool = False) -> dict:
    """A split as arrays: images (N, S, S, 3) uint8, masks (N, S, S) bool, labels, groups, ids."""
    from tqdm.auto import tqdm

    labels_all = np.asarray(ds.labels)
    if ds.name == SEG_DATASET:  # every Kvasir-SEG image is a polyp (its loader labels them 0: one class)
        labels_all = np.ones(len(ds), dtype=np.int64)
    index = pick(labels_all, limit, seed)
    images, masks, groups, ids = [], [], [], []
    for i in tqdm(index, desc=f"{ds.name} {ds.split}", disable=not progress, leave=False, mininterval=5):
        s = ds[int(i)]
        im, mk = resize_pair(s.image, s.mask, size, where=str(s.id))
        images.append(im)
        masks.append(mk)
        groups.append(s.group)
        ids.append(s.id)
    return {"images": np.stack(images), "masks": np.stack(masks), "labels": labels_all[index].astype(np.int64),
            "groups": np.asarray(groups), "ids": np.asarray(ids), "dataset": ds.name, "split": ds.split}


def to_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def blank_overlays(images: np.ndarray, boxes=OVERLAY_BOXES) -> np.ndarray:
    """A copy with the on-screen overlay regions set to black."""
    out = images.copy()
    h, w = images.shape[1:3]
    for x0, y0, x1, y1 in boxes:
        out[:, int(y0 * h): int(math.ceil(y1 * h)), int(x0 * w): int(math.ceil(x1 * w))] = 0
    return out


def blur_lesions(images: np.ndarray, masks: np.ndarray, sigma_frac: float = 0.08) -> np.ndarray:
    """A copy where the (slightly dilated) lesion region is replaced by a heavy Gaussian blur of the image."""
    from scipy import ndimage

    out = images.copy()
    size = images.shape[1]
    sigma = max(1.0, sigma_frac * size)
    grow = max(1, int(round(0.03 * size)))
    for i in np.flatnonzero(masks.reshape(len(masks), -1).any(1)):
        region = ndimage.binary_dilation(masks[i], iterations=grow)
        blurred = np.stack([ndimage.gaussian_filter(images[i, :, :, c].astype(np.float32), sigma) for c in range(3)], -1)
        out[i][region] = np.clip(blurred[region], 0, 255).astype(np.uint8)
    return out


# ----------------------------------------------------------------------------- shared training helpers


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def fingerprint(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(str(a.shape).encode())
        digest.update(np.ascontiguousarray(a[:: max(1, len(a) // 16)]).tobytes())
    return digest.hexdigest()[:16]


def fit(model: torch.nn.Module, batch_loss, n_train: int, validate, *, epochs: int, batch_size: int, lr: float, seed: int,
        checkpoint: Path | None = None, tag: str = "", progress: bool = True, desc: str = "train") -> dict:
    """Adam, ``epochs`` shuffled passes; ``validate()`` (higher is better) after each; the best epoch's weights kept.

    ``validate()`` returns a number, or a tuple compared in order (later entries break ties of
    earlier ones; the first is the one plotted as the history's ``val``).

    ``batch_loss(index, rng)`` returns the dict of loss terms for the training items ``index``.
    A checkpoint after every epoch (weights, optimiser, random states, best so far); an existing
    one with the same ``tag`` is resumed, and on the CPU gives the same result as an uninterrupted run.
    """
    from tqdm.auto import tqdm

    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError(f"need epochs >= 1, batch_size >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    state = {"epoch": 0, "best": -math.inf, "best_epoch": 0, "best_state": None, "history": [], "seconds": 0.0}
    if checkpoint is not None and checkpoint.is_file():
        ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if ck.get("tag") != tag:
            raise ConfigError(f"{checkpoint} was written for another model, data or schedule; delete it to start afresh")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        rng.bit_generator.state = ck["numpy_rng"]
        torch.set_rng_state(ck["torch_rng"])
        state = ck["state"]
    t0 = time.perf_counter() - state["seconds"]
    steps = math.ceil(n_train / batch_size)
    bar = tqdm(total=epochs * steps, initial=state["epoch"] * steps, desc=desc, disable=not progress, leave=False, mininterval=5)
    while state["epoch"] < epochs:
        model.train()
        order = rng.permutation(n_train)
        running = 0.0
        for start in range(0, n_train, batch_size):
            out = batch_loss(np.sort(order[start: start + batch_size]), rng)
            if not torch.isfinite(out["loss"]):
                raise FloatingPointError(f"{desc}: the loss became non-finite in epoch {state['epoch'] + 1}; lower lr (now {lr:g})")
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            running += float(out["loss"].detach())
            bar.update(1)
        model.eval()
        checked = validate()
        key = tuple(float(v) for v in checked) if isinstance(checked, tuple) else (float(checked),)
        score = key[0]
        state["epoch"] += 1
        state["history"].append({"epoch": state["epoch"], "loss": running / steps, "val": score,
                                 **({"val_key": list(key)} if len(key) > 1 else {})})
        best_key = state.get("best_key") or ([state["best"]] if state["best"] > -math.inf else None)
        if best_key is None or key > tuple(best_key):
            state.update(best=score, best_key=list(key), best_epoch=state["epoch"],
                         best_state={k: v.detach().clone() for k, v in model.state_dict().items()})
        state["seconds"] = time.perf_counter() - t0
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            _save_atomic({"tag": tag, "model": model.state_dict(), "optimizer": opt.state_dict(),
                          "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "state": state}, checkpoint)
    bar.close()
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    model.eval()
    return {"best_epoch": state["best_epoch"], "best_val": state["best"], "history": state["history"],
            "seconds": round(state["seconds"], 1)}


# ----------------------------------------------------------------------------- classification


@torch.no_grad()
def trunk_outputs(model: AttentionClassifier, images: np.ndarray, batch_size: int = 32, progress: bool = False,
                  desc: str = "trunk") -> torch.Tensor:
    """The frozen part's output for every image (uint8 (N, S, S, 3)), computed once."""
    from tqdm.auto import tqdm

    model.eval()
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False, mininterval=5):
        out.append(model.trunk(to_float(images[start: start + batch_size]).to(device_of(model))).cpu())
    return torch.cat(out)  # kept on the CPU; batches go to the model's device


@torch.no_grad()
def lesion_probability(model: AttentionClassifier, trunk: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    model.eval()
    dev = device_of(model)
    probs = [torch.softmax(model.head(model.features_from_trunk(trunk[s: s + batch_size].to(dev))), 1)[:, LESION].cpu()
             for s in range(0, len(trunk), batch_size)]
    return torch.cat(probs).numpy()


class _TrunkToLogits(torch.nn.Module):
    """The trainable part of a classifier as a module of the trunk output (what Grad-CAM is run on)."""

    def __init__(self, model: AttentionClassifier):
        super().__init__()
        self.model = model

    def forward(self, z):
        return self.model.head(self.model.features_from_trunk(z))


def grad_cam_maps(model: AttentionClassifier, trunk: torch.Tensor, size: int, batch_size: int = 32) -> np.ndarray:
    """Grad-CAM (pytorch_grad_cam) of the lesion class on the last stage: (N, size, size) in [0, 1]."""
    from medad.compat.torchvision_ops import ensure_torchvision

    ensure_torchvision()
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model.eval()
    maps = []
    with GradCAM(model=_TrunkToLogits(model), target_layers=[model.feature_layer]) as cam:
        for s in range(0, len(trunk), batch_size):
            z = trunk[s: s + batch_size].to(device_of(model))
            small = cam(input_tensor=z, targets=[ClassifierOutputTarget(LESION)] * len(z))  # at the trunk's grid
            up = F.interpolate(torch.from_numpy(small).float().unsqueeze(1), size=(size, size), mode="bilinear",
                               align_corners=False).squeeze(1)
            low = up.flatten(1).amin(1).view(-1, 1, 1)
            maps.append(((up - low) / (up.flatten(1).amax(1).view(-1, 1, 1) - low + 1e-7)).numpy())
    return np.concatenate(maps)


def attention_scores(maps: np.ndarray, masks: np.ndarray, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Per image: IoU of (map >= threshold) with the mask, and pointing-game hit (the map's maximum in the mask)."""
    if maps.shape != masks.shape:
        raise ConfigError(f"attention maps {maps.shape} and masks {masks.shape} must have the same shape")
    flat_m, flat_k = maps.reshape(len(maps), -1), masks.reshape(len(masks), -1).astype(bool)
    on = flat_m >= threshold
    inter, union = (on & flat_k).sum(1), (on | flat_k).sum(1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    hit = flat_k[np.arange(len(flat_k)), flat_m.argmax(1)].astype(float)
    return {"iou": iou, "hit": hit}


def train_classifier(cfg: dict, method: str, seed: int, data: dict, trunks: dict, checkpoint_dir: Path | None = None,
                     progress: bool = True, unit: str | None = None) -> tuple[AttentionClassifier, dict]:
    """Train one classifier (``method`` gain / plain / gain-am) on cached trunk outputs; select on validation AUC
    (ties broken by the validation log-likelihood).

    ``gain-am`` adds GAIN's attention-mining term, which classifies each lesion image again with its
    attended region erased: that pass goes through the whole network (the frozen stages too, for
    the gradient that reaches the attention map), so it is several times slower per image.
    """
    from medad.metrics.classification import roc_auc

    model = build_classifier(cfg["arch"], method, pretrained=cfg.get("weights_file") or True, image_size=cfg["image_size"],
                             seed=seed, frozen_stages=cfg["frozen_stages"])
    dev = torch.device(cfg.get("_device", "cpu"))
    model.to(dev)
    train, val = data["train"], data["val"]
    labels = torch.from_numpy(train["labels"])
    masks = torch.from_numpy(train["masks"])
    z, z_flip = trunks["train"], trunks["train_flip"]
    mining = model.weights.mining > 0

    def batch_loss(index, rng):
        flip = torch.from_numpy(rng.random(len(index)) < 0.5)
        idx = torch.from_numpy(index)
        batch = torch.where(flip.view(-1, 1, 1, 1), z_flip[idx], z[idx])
        mk = torch.where(flip.view(-1, 1, 1), masks[idx].flip(-1), masks[idx])
        images = None
        if mining:  # the same flipped images the cached trunk outputs came from
            raw = to_float(train["images"][index])
            images = torch.where(flip.view(-1, 1, 1, 1), raw.flip(-1), raw).to(dev)
        return model.loss(labels[idx].to(dev), mk.to(dev), trunk=batch.to(dev), images=images)

    def validate():
        # AUC first; it reaches 1.0 within an epoch or two on the stand-in, so the log-likelihood breaks the ties
        prob = np.clip(lesion_probability(model, trunks["val"]), 1e-6, 1 - 1e-6)
        y = val["labels"] == LESION
        return roc_auc(val["labels"], prob), float(np.mean(np.where(y, np.log(prob), np.log1p(-prob))))

    # the schedule's length is not in the tag: a finished run can be resumed to more epochs
    tag = (f"{method}-{cfg['arch']}-{seed}-{cfg['image_size']}-{cfg['frozen_stages']}-{cfg['cls_lr']}-"
           f"{fingerprint(train['images'])}-select:auc,loglik")
    ck = checkpoint_dir / f"cls-{unit or method}-seed{seed}.pt" if checkpoint_dir else None
    info = fit(model, batch_loss, len(labels), validate, epochs=cfg["cls_epochs"], batch_size=cfg["cls_batch_size"],
               lr=cfg["cls_lr"], seed=seed, checkpoint=ck, tag=tag, progress=progress, desc=f"{method} seed {seed}")
    return model, info


def evaluate_classifier(model: AttentionClassifier, test: dict, trunks: dict, cfg: dict) -> tuple[dict, dict]:
    """Test metrics, attention scores on lesion images and the two shortcut checks (per-image arrays kept)."""
    from medad.metrics.classification import binary_report

    y = test["labels"]
    prob = lesion_probability(model, trunks["test"])
    out = {k: float(v) for k, v in binary_report(y, (prob >= 0.5).astype(int), prob).items()}
    lesion = (y == LESION) & test["masks"].reshape(len(y), -1).any(1)
    maps = grad_cam_maps(model, trunks["test"][torch.from_numpy(lesion)], test["images"].shape[1])
    att = attention_scores(maps, test["masks"][lesion], cfg["attention_threshold"])
    out["attention_iou"] = float(np.nanmean(att["iou"]))
    out["pointing_game"] = float(att["hit"].mean())
    blanked = lesion_probability(model, trunks["test_blanked"])
    out["accuracy_overlays_blanked"] = float(((blanked >= 0.5).astype(int) == y).mean())
    blurred = lesion_probability(model, trunks["test_blurred"])[lesion]
    out["p_lesion_clean"] = float(prob[lesion].mean())
    out["p_lesion_lesion_blurred"] = float(blurred.mean())
    out["recall_lesion_blurred"] = float((blurred >= 0.5).mean())
    return out, {"prob": prob, "maps": maps, "lesion_index": np.flatnonzero(lesion)}


# measured on the lesion images with a mask only (the rest on every test image)
LESION_ONLY_METRICS = ("attention_iou", "pointing_game", "p_lesion_clean", "p_lesion_lesion_blurred", "recall_lesion_blurred")
CLS_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc", "attention_iou", "pointing_game",
               "accuracy_overlays_blanked", "p_lesion_clean", "p_lesion_lesion_blurred", "recall_lesion_blurred")


# ----------------------------------------------------------------------------- segmentation


def seg_batch(data: dict, index, size: int | None = None, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    images = to_float(data["images"][index]).to(device)
    masks = torch.from_numpy(np.ascontiguousarray(data["masks"][index])).long().to(device)
    if size and images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        masks = F.interpolate(masks.unsqueeze(1).float(), size=(size, size), mode="nearest").squeeze(1).long()
    return images, masks


@torch.no_grad()
def predict_masks(model, data: dict, size: int | None = None, batch_size: int = 16, index=None) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true masks (N, S, S) bool at the segmenter's size."""
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


def segmentation_scores(pred: np.ndarray, true: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: pixel accuracy, and IoU and Dice of the lesion class (MONAI's MeanIoU / DiceMetric; empty truth: NaN)."""
    from medad.compat.torchvision_ops import ensure_torchvision

    ensure_torchvision()
    from monai.metrics import DiceMetric, MeanIoU

    if pred.shape != true.shape:
        raise ConfigError(f"predicted masks {pred.shape} and true masks {true.shape} must have the same shape")
    p = torch.from_numpy(pred).unsqueeze(1).float()
    t = torch.from_numpy(true).unsqueeze(1).float()
    dice = DiceMetric(include_background=True, reduction="none")(p, t).squeeze(1).numpy()
    iou = MeanIoU(include_background=True, reduction="none")(p, t).squeeze(1).numpy()
    pa = (pred == true).reshape(len(pred), -1).mean(1)
    return {"pixel_accuracy": pa, "iou": iou, "dice": dice}


def train_segmenter(cfg: dict, variant: str, seed: int, data: dict, checkpoint_dir: Path | None = None,
                    progress: bool = True):
    """Train one ablation network with pixel-wise cross-entropy; select on validation Dice."""
    dev = torch.device(cfg.get("_device", "cpu"))
    model = build_segmenter(variant, cfg["seg_channels"], seed=seed).to(dev)
    train, val, size = data["train"], data["val"], cfg["seg_size"]

    def batch_loss(index, rng):
        images, masks = seg_batch(train, index, size, dev)
        flip = torch.from_numpy(rng.random(len(index)) < 0.5).to(dev)
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        masks = torch.where(flip.view(-1, 1, 1), masks.flip(-1), masks)
        return {"loss": F.cross_entropy(model(images), masks)}

    def validate():
        return float(np.nanmean(segmentation_scores(*predict_masks(model, val, size))["dice"]))

    tag = f"{variant}-{seed}-{size}-{tuple(cfg['seg_channels'])}-{cfg['seg_lr']}-{fingerprint(train['images'])}"
    ck = checkpoint_dir / f"seg-{variant}-seed{seed}.pt" if checkpoint_dir else None
    info = fit(model, batch_loss, len(train["images"]), validate, epochs=cfg["seg_epochs"], batch_size=cfg["seg_batch_size"],
               lr=cfg["seg_lr"], seed=seed, checkpoint=ck, tag=tag, progress=progress, desc=f"{variant} seed {seed}")
    return model, info


# ----------------------------------------------------------------------------- the whole experiment


def check_config(cfg: dict) -> dict:
    from medad.models.gain import ARCHITECTURES

    if cfg["arch"] not in ARCHITECTURES:
        raise ConfigError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {cfg['arch']!r}")
    bad = [m for m in cfg["cls_methods"] if m not in CLS_METHODS]
    if bad:
        raise ConfigError(f"cls_methods must be among {', '.join(repr(m) for m in CLS_METHODS)}, got {bad}")
    bad = [v for v in cfg["seg_variants"] if v not in VARIANTS]
    if bad:
        raise ConfigError(f"seg_variants must be among {', '.join(VARIANTS)}, got {bad}")
    bad = [a for a in cfg.get("extra_archs", []) if a not in ("effnet-lite0", "effnet-lite2") or a == cfg["arch"]]
    if bad:
        raise ConfigError(f"extra_archs must be packaged ImageNet backbones other than arch {cfg['arch']!r} "
                          f"(effnet-lite0, effnet-lite2), got {bad}")
    if not cfg["seeds"] or not cfg["seg_seeds"]:
        raise ConfigError("seeds and seg_seeds must each list at least one seed")
    if cfg["frozen_stages"] < 1:
        raise ConfigError("frozen_stages must be >= 1: the experiment trains on cached trunk outputs")
    return cfg


def load_data(cfg: dict, open_dataset, progress: bool = True) -> dict:
    """Classification and segmentation splits as arrays; ``open_dataset(name, split)`` opens a dataset."""
    cls, seg = {}, {}
    limits = {"train": cfg.get("train_images"), "val": cfg.get("val_images"), "test": cfg.get("test_images")}
    seg_limits = {"train": cfg.get("seg_train_images"), "val": cfg.get("seg_val_images"), "test": cfg.get("seg_test_images")}
    for split in ("train", "val", "test"):
        cls[split] = load_arrays(open_dataset(CLS_DATASET, split), cfg["image_size"], limits[split], cfg["seed"], progress)
        seg[split] = load_arrays(open_dataset(SEG_DATASET, split), cfg["seg_size"], seg_limits[split], cfg["seed"], progress)
    for split in ("train", "val", "test"):
        if len(np.unique(cls[split]["labels"])) < 2:
            raise DataError(f"{CLS_DATASET} {split}: needs both normal and lesion images, got only label "
                            f"{int(cls[split]['labels'][0])}")
    return {"cls": cls, "seg": seg}


def compute_trunks(cfg: dict, cls: dict, progress: bool = True) -> dict:
    """The frozen trunk's outputs for every image set the classifiers see (the trunk is the same for all)."""
    probe = build_classifier(cfg["arch"], "plain", pretrained=cfg.get("weights_file") or True, image_size=cfg["image_size"],
                             frozen_stages=cfg["frozen_stages"]).to(cfg.get("_device", "cpu"))
    test = cls["test"]
    sets = {"train": cls["train"]["images"], "train_flip": cls["train"]["images"][:, :, ::-1],
            "val": cls["val"]["images"], "test": test["images"], "test_blanked": blank_overlays(test["images"]),
            "test_blurred": blur_lesions(test["images"], test["masks"], cfg["blur_sigma"])}
    trunks = {k: trunk_outputs(probe, v, progress=progress, desc=f"trunk {k}") for k, v in sets.items()}
    return {"trunks": trunks, "weights_label": probe.weights_label, "weights_source": probe.weights_source,
            "blanked": sets["test_blanked"], "blurred": sets["test_blurred"]}


def method_label(cfg: dict, method: str, weights_label: str) -> str:
    name = CLS_METHODS[method]
    arch = {"effnet-lite0": "EfficientNet-Lite0", "effnet-lite2": "EfficientNet-Lite2", "resnet50": "ResNet-50",
            "vgg16": "VGG-16"}[cfg["arch"]]
    return f"{name} ({arch}, {weights_label})"


PARTS = ("classification", "segmentation")


def run_experiment(cfg: dict, open_dataset, checkpoint_dir: Path | None = None, progress: bool = True,
                   data: dict | None = None, parts: tuple[str, ...] = PARTS) -> dict:
    """Everything the chapter reports: tidy rows, per-seed numbers, and what the figures need.

    ``parts`` limits the work to the classifiers or the segmenters (the two-stage pipeline needs
    both): two processes, one per part, can fill the checkpoints of one run side by side, and a
    last run over both parts then only evaluates.
    """
    from medad.metrics.bootstrap import bootstrap_ci
    from medad.results import row, rows_over_seeds

    from medad.runtime import resolve_device

    cfg = check_config(dict(cfg))
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise ConfigError(f"parts must be among {', '.join(PARTS)}, got {list(parts)}")
    cfg["_device"] = resolve_device(cfg.get("device") or "cpu")  # models and batches go there; arrays stay on the CPU
    data = data or load_data(cfg, open_dataset, progress)
    cls, seg = data["cls"], data["seg"]
    cached = compute_trunks(cfg, cls, progress) if "classification" in parts else {}
    trunks = cached.get("trunks", {})
    per_seed: dict[str, list[dict]] = {}
    keep: dict = {}
    timing: dict[str, float] = {}
    histories: dict[str, list] = {}
    labels: dict[str, str] = {}
    # the profile's backbone first (its rows come first, and its models feed the figures and the pipeline), then
    # GAIN and the plain classifier on each extra backbone: the backbone comparison
    for arch in [cfg["arch"], *cfg.get("extra_archs", [])] if "classification" in parts else ():
        main = arch == cfg["arch"]
        acfg = cfg if main else {**cfg, "arch": arch, "weights_file": None}
        arch_cached = cached if main else compute_trunks(acfg, cls, progress)
        for method in cfg["cls_methods"] if main else [m for m in cfg["cls_methods"] if m != "gain-am"]:
            unit = method if main else f"{arch}-{method}"
            labels[unit] = method_label(acfg, method, arch_cached["weights_label"])
            for seed in cfg["seeds"]:
                model, info = train_classifier(acfg, method, seed, cls, arch_cached["trunks"], checkpoint_dir, progress,
                                               unit=unit)
                scores, arrays = evaluate_classifier(model, cls["test"], arch_cached["trunks"], acfg)
                scores.update(best_epoch=info["best_epoch"], val_auc=info["best_val"], seconds=info["seconds"])
                per_seed.setdefault(unit, []).append(scores)
                timing[f"cls-{unit}-seed{seed}"] = info["seconds"]
                histories[f"cls-{unit}-seed{seed}"] = info["history"]
                if main and seed == cfg["seeds"][0]:
                    keep[method] = {"model": model, **arrays}
    rows = []
    n_test = len(cls["test"]["labels"])
    n_lesion = len(next(iter(keep.values()))["lesion_index"]) if keep else 0
    for unit, runs in per_seed.items():
        label = labels[unit]
        for metric in CLS_METRICS:
            n = n_lesion if metric in LESION_ONLY_METRICS else n_test
            rows.append(rows_over_seeds(STANDIN[CLS_DATASET], "test", label, metric, [r[metric] for r in runs], n))

    seg_scores: dict[str, list[dict]] = {}
    seg_models = {}
    for variant in cfg["seg_variants"] if "segmentation" in parts else ():
        for seed in cfg["seg_seeds"]:
            model, info = train_segmenter(cfg, variant, seed, seg, checkpoint_dir, progress)
            scores = segmentation_scores(*predict_masks(model, seg["test"], cfg["seg_size"]))
            seg_scores.setdefault(variant, []).append(scores)
            timing[f"seg-{variant}-seed{seed}"] = info["seconds"]
            histories[f"seg-{variant}-seed{seed}"] = info["history"]
            if seed == cfg["seg_seeds"][0]:
                seg_models[variant] = model
    n_seg = len(seg["test"]["images"])
    for variant, runs in seg_scores.items():
        for metric in ("pixel_accuracy", "iou", "dice"):
            per_image = np.nanmean(np.stack([r[metric] for r in runs]), axis=0)  # mean over seeds, per image
            est = bootstrap_ci(per_image, np.arange(n_seg), n_boot=cfg["bootstrap"], seed=cfg["seed"])[0]
            rows.append(row(STANDIN[SEG_DATASET], "test", SEG_METHODS[variant], metric, est.mean, est.low, est.high,
                            seeds=len(runs), n=est.n))
    rows += paired_differences(seg_scores, "unet", n_boot=cfg["bootstrap"], seed=cfg["seed"])

    pipeline = None
    if "gain" in keep and seg_models:
        variant = "ca-unet" if "ca-unet" in seg_models else cfg["seg_variants"][-1]
        pipeline = two_stage(keep["gain"]["prob"], seg_models[variant], cls["test"], cfg)
        for metric in ("two_stage_dice_lesion", "two_stage_normal_flagged"):
            est = bootstrap_ci(pipeline[metric], np.arange(len(pipeline[metric])), n_boot=cfg["bootstrap"], seed=cfg["seed"])[0]
            rows.append(row(STANDIN[CLS_DATASET], "test, two-stage",
                            f"GAIN then {SEG_METHODS[variant]} (first seeds)", metric, est.mean, est.low, est.high, 1, est.n))
    return {"rows": rows, "per_seed": per_seed, "seg_per_seed": seg_scores, "keep": keep, "seg_models": seg_models,
            "pipeline": pipeline, "data": data, "cached": cached, "timing": timing, "histories": histories, "config": cfg}


PAIRED_SETTING = "test, paired difference to U-Net"


def paired_differences(seg_scores: dict[str, list[dict]], reference: str = "unet", n_boot: int = 1000,
                       seed: int = 0) -> list[dict]:
    """Each variant minus ``reference`` on the same test images (IoU, Dice): mean and 95% paired bootstrap interval.

    Per image, both networks' scores are first averaged over their seeds; resampling the image
    differences keeps the pairing, so the interval is much narrower than comparing two separate
    intervals, and one that excludes 0 ranks the two networks on this test set.
    """
    from medad.metrics.bootstrap import bootstrap_ci
    from medad.results import row

    if reference not in seg_scores:
        return []
    base = {m: np.nanmean(np.stack([r[m] for r in seg_scores[reference]]), axis=0) for m in ("iou", "dice")}
    rows = []
    for variant, runs in seg_scores.items():
        if variant == reference:
            continue
        for metric in ("iou", "dice"):
            diff = np.nanmean(np.stack([r[metric] for r in runs]), axis=0) - base[metric]
            keep = np.isfinite(diff)
            est = bootstrap_ci(diff[keep], np.arange(int(keep.sum())), n_boot=n_boot, seed=seed)[0]
            rows.append(row(STANDIN[SEG_DATASET], PAIRED_SETTING, f"{SEG_METHODS[variant]} minus {SEG_METHODS[reference]}",
                            metric, est.mean, est.low, est.high, seeds=len(runs), n=est.n))
    return rows


def two_stage(prob: np.ndarray, segmenter, test: dict, cfg: dict) -> dict:
    """Classify, then segment what is called a lesion; per-image Dice on lesion images (0 if missed), flags on normals."""
    called = prob >= 0.5
    size = cfg["seg_size"]
    index = np.flatnonzero(called)
    pred_called, _ = predict_masks(segmenter, test, size, index=index)
    n = len(prob)
    pred = np.zeros((n, size, size), dtype=bool)
    pred[index] = pred_called
    true = _true_masks(test, size)
    lesion = test["labels"] == LESION
    dice = np.zeros(int(lesion.sum()))
    hit = called[lesion]
    if hit.any():
        dice[hit] = segmentation_scores(pred[lesion][hit], true[lesion][hit])["dice"]
    dice = np.nan_to_num(dice, nan=0.0)
    flagged = pred[~lesion].reshape(int((~lesion).sum()), -1).any(1).astype(float)
    return {"two_stage_dice_lesion": dice, "two_stage_normal_flagged": flagged, "pred": pred, "true": true}


def _true_masks(test: dict, size: int) -> np.ndarray:
    masks = torch.from_numpy(np.ascontiguousarray(test["masks"])).unsqueeze(1).float()
    return F.interpolate(masks, size=(size, size), mode="nearest").squeeze(1).bool().numpy()


# ----------------------------------------------------------------------------- the long CPU run


def seg_seed_means(seg_scores: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Per variant and seed: the test mean of each segmentation metric (the seed-to-seed spread, for provenance)."""
    return {variant: [{m: float(np.nanmean(v)) for m, v in run.items()} for run in runs]
            for variant, runs in seg_scores.items()}


def code_digest() -> str:
    """SHA-256 of the chapter's own code and profile (the run may start before they are committed)."""
    return provenance.files_digest(["medad/models/gain.py", "medad/models/ca_unet.py", "medad/train/egc_experiment.py",
                                    f"medad/profiles/{CHAPTER}.yml"])


def profile_config(profile: str) -> dict:
    """A mapping of medad/profiles/egc.yml: quick, full or long_cpu (the committed run's schedule)."""
    from medad import profiles

    return profiles.resolve_named(CHAPTER, profile)  # validated against the schema in the YAML


def schedule_text(cfg: dict) -> str:
    """The run's schedule in a few words (printed next to the run's name in the book)."""
    extra = "".join(f" (also {a})" for a in cfg.get("extra_archs", []))
    return (f"{len(cfg['seeds'])} seeds x {cfg['cls_epochs']} epochs per classifier{extra} at {cfg['image_size']} px, "
            f"first {cfg['frozen_stages']} stages frozen; {len(cfg['seg_seeds'])} seed(s) x {cfg['seg_epochs']} epochs "
            f"per segmenter at {cfg['seg_size']} px")


def run_long(profile: str, data_dir: str | None, name: str, threads: int, out_root: Path | None = None,
             checkpoint_root: Path | None = None, only: str | None = None) -> Path:
    """Run the whole experiment under ``profile`` and write results/egc/<name>/ (table.csv, provenance.json).

    ``only`` ('classification' or 'segmentation') trains just that part into the run's checkpoints
    and writes no results: start one process per part side by side (one CPU thread each), then the
    same command without ``only`` finds every model trained and evaluates them all.
    """
    from medad import provenance
    from medad.data.registry import open_dataset, resolve_data_dir
    from medad.results import write_run
    from medad.runtime import cache_dir, device_description, seed_everything

    torch.set_num_threads(threads)
    cfg = profile_config(profile)
    seed_everything(int(cfg["seed"]))
    data_dir = resolve_data_dir(data_dir)
    checkpoint_root = checkpoint_root or cache_dir() / "egc" / name
    started, t0, digest, commit = provenance.now_utc(), time.perf_counter(), code_digest(), provenance.git_commit()
    opened = []

    def open_ds(ds_name, split):
        ds = open_dataset(ds_name, split, data_dir)
        opened.append(ds.provenance())
        return ds

    if only is not None:
        run_experiment(cfg, open_ds, checkpoint_dir=Path(checkpoint_root), progress=True, parts=(only,))
        return Path(checkpoint_root)
    result = run_experiment(cfg, open_ds, checkpoint_dir=Path(checkpoint_root), progress=True)
    dev = result["config"]["_device"]
    kind = "long-cpu" if profile == "long_cpu" else ("gpu-full" if profile == "full" and dev.startswith("cuda") else "cpu")
    prov = {"kind": kind, "schedule": schedule_text(cfg), "profile": profile,
            "commit": commit, "code_sha256": digest, "device": device_description(dev), "threads": threads,
            "seed": cfg["seed"], "started": started, "finished": provenance.now_utc(),
            "seconds": round(time.perf_counter() - t0, 1), "parameters": cfg, "data": opened,
            "weights": result["cached"]["weights_source"], "timing_seconds": result["timing"],
            "per_seed": result["per_seed"], "seg_per_seed": seg_seed_means(result["seg_per_seed"]),
            "histories": result["histories"],
            "environment": provenance.environment()}
    return write_run(CHAPTER, name, result["rows"], json.loads(json.dumps(prov, default=str)), root=out_root)


@command_line("python -m medad.train.egc_experiment", on_interrupt="finished units are kept; to resume, rerun")
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m medad.train.egc_experiment", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="long_cpu", help="a mapping in medad/profiles/egc.yml (long_cpu, quick, full)")
    ap.add_argument("--data-dir", default=None, help="folder of the archives (default $MEDAD_DATA, else synthetic data)")
    ap.add_argument("--name", required=True, help="run name: results/egc/<name>/")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--only", choices=PARTS, default=None,
                    help="train only this part into the run's checkpoints and write no results (run one process per "
                         "part side by side, then the command without --only evaluates everything)")
    args = ap.parse_args(argv)
    if args.threads < 1:
        raise SystemExit("--threads must be >= 1")
    folder = run_long(args.profile, args.data_dir, args.name, args.threads, only=args.only)
    print(f"checkpoints of the {args.only} part are in {folder}" if args.only else f"wrote {folder}")


if __name__ == "__main__":
    raise SystemExit(main())
