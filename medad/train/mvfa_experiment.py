"""MVFA's protocol, done without the official code's leaks, and the chapter's long CPU run.

Few-shot (per dataset, K, seed): K normal + K abnormal support images drawn
from the dataset's *validation* split with the seed, each augmented x11; the
adapters train on them (the seed also initialises the adapters); the memory
bank holds the adapted tokens of the augmented normal support images. The
checkpoint is chosen on the remaining validation images (never the test set);
the min-max statistics of the default ("reference") normalisation come from
them too. The official scripts choose the checkpoint by its TEST score: that
protocol is run once (the first seed) to show how much it inflates the numbers.

Zero-shot (leave-one-out): for each held-out dataset the adapters train on
the other datasets only; :class:`RecordingOpener` records every split opened,
so a test can check that the held-out dataset is read for testing alone.

Baselines on the same backbone, splits and test images: the frozen backbone's
tokens with the text matrix (WinCLIP-style zero-shot), a memory bank of frozen
tokens from the K-shot support (PatchCore-style few-shot), the same from many
normal training images (full-normal-shot), and projector-only adapters
(``residual=False``, April-GAN-style).

Command line (the chapter's headline run; resumes from its checkpoints)::

    nice -n 5 python -m medad.train.mvfa_experiment --profile long_cpu --data-dir ../shared/data \\
        --name long-cpu-2026-11-23
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from medad import provenance
from medad.errors import ConfigError, DataError, command_line
from medad.metrics.classification import roc_auc
from medad.models import mvfa as M

CHAPTER = "mvfa"
DATASETS = ("lgg_brain_ad", "endoscopy_ad", "chest_xray", "brain_mri")
PIXEL_DATASETS = ("lgg_brain_ad", "endoscopy_ad", "bmad_brainmri", "bmad_liverct", "bmad_resc")
NORMAL_CLASS_NAMES = ("normal", "notumor", "good")


# ----------------------------------------------------------------------------- data


class RecordingOpener:
    """``medad.data.open_dataset`` for one data directory, remembering every (dataset, split) it opened."""

    def __init__(self, data_dir=None, synthetic: bool | None = None, n_synthetic: int | None = None):
        self.data_dir, self.synthetic, self.n_synthetic = data_dir, synthetic, n_synthetic
        self.opened: list[tuple[str, str]] = []
        self.datasets: list = []

    def __call__(self, name: str, split: str):
        from medad.data import open_dataset

        ds = open_dataset(name, split, self.data_dir, synthetic=self.synthetic, n=self.n_synthetic)
        self.opened.append((name, split))
        if ds not in self.datasets:
            self.datasets.append(ds)
        return ds

    def provenance(self) -> list[dict]:
        out = []
        for ds in self.datasets:
            item = ds.provenance()
            if item not in out:
                out.append(item)
        return out


def check_datasets(names: Sequence[str], what: str = "datasets") -> list[str]:
    from medad.data import list_datasets

    known = set(list_datasets())
    names = list(names)
    if not names:
        raise ConfigError(f"{what}: give at least one dataset")
    bad = [n for n in names if n not in known or n not in M.OBJECT_NAMES]
    if bad:
        raise ConfigError(f"{what}: unknown dataset(s) {', '.join(map(repr, bad))}; MVFA runs on: "
                          f"{', '.join(n for n in M.OBJECT_NAMES if n in known)}")
    return names


def binary_labels(ds) -> np.ndarray:
    """0 normal / 1 abnormal; the dataset's first class must be its normal class."""
    if ds.classes[0].lower() not in NORMAL_CLASS_NAMES:
        raise DataError(f"dataset {ds.name!r}: first class {ds.classes[0]!r} is not a normal class "
                        f"({', '.join(NORMAL_CLASS_NAMES)}); MVFA needs normal vs abnormal labels")
    return (np.asarray(ds.labels) > 0).astype(np.int64)


@dataclass
class ImageSet:
    """Preprocessed images of one dataset: images (N, 3, S, S), labels (N,), masks (N, S, S) bool or None."""

    dataset: str
    images: torch.Tensor
    labels: np.ndarray
    masks: torch.Tensor | None
    ids: list[str] = field(default_factory=list)
    raw: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def pixel_level(self) -> bool:
        return self.masks is not None


def load_images(ds, indices: Sequence[int], backbone, pixel_level: bool, keep_raw: bool = False) -> ImageSet:
    """Decode and preprocess the chosen samples; masks squashed to the input size like the images."""
    size = backbone.image_size
    labels = binary_labels(ds)
    imgs, masks, ids, raw = [], [], [], []
    for i in indices:
        s = ds[int(i)]
        imgs.append(backbone.preprocess(s.image))
        ids.append(s.id)
        if keep_raw:
            raw.append(s.image)
        if pixel_level:
            if s.mask is None:
                raise DataError(f"{ds.name}/{ds.split}: sample {s.id} has no mask, but pixel-level scores were asked for")
            m = torch.from_numpy(np.asarray(s.mask, dtype=np.float32))[None, None]
            masks.append(F.interpolate(m, size=(size, size), mode="nearest")[0, 0] > 0.5)
    if not imgs:
        raise DataError(f"{ds.name}/{ds.split}: no images selected")
    return ImageSet(ds.name, torch.stack(imgs), labels[np.asarray(indices, dtype=int)],
                    torch.stack(masks) if pixel_level else None, ids, raw)


def has_masks(name: str) -> bool:
    return name in PIXEL_DATASETS


def stratified_subset(labels: np.ndarray, n: int | None, rng: np.random.Generator,
                      exclude: Sequence[int] = ()) -> np.ndarray:
    """Up to ``n`` indices keeping the class proportions (all when n is None), in a seeded random order."""
    pool = np.setdiff1d(np.arange(len(labels)), np.asarray(exclude, dtype=int))
    if n is None or n >= len(pool):
        return np.sort(pool)
    chosen = []
    for c in (0, 1):
        idx = pool[labels[pool] == c]
        take = int(round(n * len(idx) / len(pool)))
        chosen.append(rng.choice(idx, size=min(take, len(idx)), replace=False))
    return np.sort(np.concatenate(chosen))


def support_indices(labels: np.ndarray, k: int, seed: int, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """K normal and K abnormal indices, drawn with ``seed``; a clear error when there are fewer than K."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"K (shots) must be a positive integer, got {k!r}")
    rng = np.random.default_rng(seed)
    picked = []
    for c, name in ((0, "normal"), (1, "abnormal")):
        idx = np.flatnonzero(labels == c)
        if len(idx) < k:
            raise ConfigError(f"{where}: K={k} {name} support images asked for, but the validation split has only "
                              f"{len(idx)}; choose K <= {len(idx)}")
        picked.append(np.sort(rng.choice(idx, size=k, replace=False)))
    return picked[0], picked[1]


# ----------------------------------------------------------------------------- metrics


def pixel_auc(maps: np.ndarray, masks: torch.Tensor | None, dataset: str = "") -> float:
    """Pixel AUC of anomaly maps (N, s, s) against masks (N, S, S), the masks brought to the maps' size."""
    if masks is None or maps is None:
        raise ConfigError(f"pixel AUC asked of {dataset or 'a dataset'} without masks; it has image labels only")
    s = maps.shape[-1]
    m = F.interpolate(masks[:, None].float(), size=(s, s), mode="nearest")[:, 0].numpy() > 0.5
    if m.all() or not m.any():
        return math.nan
    return roc_auc(m.reshape(-1).astype(int), maps.reshape(-1))


def image_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    if len(np.unique(labels)) < 2:
        return math.nan
    return roc_auc(labels, scores)


def summary_metrics(test: M.BranchScores, reference: M.BranchScores | None, ims: ImageSet, branch: str = "both",
                    normalisation: str = "reference") -> dict:
    """image AUC (and pixel AUC and the det branch's image AUC for masked datasets) of one scoring choice."""
    out = M.combine(test, reference, ims.pixel_level, branch=branch, normalisation=normalisation)
    res = {"image AUC": image_auc(ims.labels, out.image)}
    if ims.pixel_level:
        res["pixel AUC"] = pixel_auc(out.maps, ims.masks, ims.dataset)
        res["image AUC, det branch"] = image_auc(ims.labels, out.det_image)
    return res


# ----------------------------------------------------------------------------- training


@dataclass
class TrainData:
    """One dataset's training images (already augmented) with its text matrix."""

    dataset: str
    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    text: torch.Tensor


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_adapters(model: M.MVFA, data: Sequence[TrainData], *, epochs: int, lr: float, batch_size: int, seed: int,
                   check_every: int = 0, on_check: Callable[[int], dict] | None = None,
                   checkpoint: Path | None = None, progress: bool = False, desc: str = "train") -> dict:
    """Adam (betas 0.5, 0.999) on the adapters only, one dataset per batch; returns the history.

    ``on_check(epoch)`` runs after every ``check_every`` epochs and after the last; it returns a
    dict of scores kept in the history with the adapters' state. With ``checkpoint`` the state,
    optimiser and history are saved after every epoch and a rerun resumes from them.
    """
    from tqdm.auto import tqdm

    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ConfigError(f"epochs and batch_size must be >= 1 and lr > 0; got {epochs}, {batch_size}, {lr}")
    loss_fn = M.MVFALoss()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.5, 0.999))
    history = {"loss": [], "checks": []}
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optim"])
        history, start = saved["history"], saved["epoch"]
    gen = torch.Generator().manual_seed(seed)
    batches_per_epoch = sum(math.ceil(len(d.images) / batch_size) for d in data)
    for _ in range(start):  # replay the draws of the finished epochs: the same batch order as an uninterrupted run
        for d in data:
            torch.randperm(len(d.images), generator=gen)
        torch.randperm(batches_per_epoch, generator=gen)
    bar = tqdm(total=epochs * batches_per_epoch, initial=start * batches_per_epoch, desc=desc, disable=not progress,
               leave=False)
    for epoch in range(start, epochs):
        model.train()
        order = []
        for di, d in enumerate(data):
            perm = torch.randperm(len(d.images), generator=gen)
            order += [(di, perm[i:i + batch_size]) for i in range(0, len(perm), batch_size)]
        shuffle = torch.randperm(len(order), generator=gen).tolist()
        losses = []
        for j in shuffle:
            di, idx = order[j]
            d = data[di]
            out = model(d.images[idx])
            loss = loss_fn(out, d.text, d.labels[idx], None if d.masks is None else d.masks[idx])
            if not torch.isfinite(loss):
                raise ConfigError(f"{desc}: the loss became {loss.item()} at epoch {epoch + 1}; lower the learning rate")
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach().item())
            bar.update(1)
        history["loss"].append(float(np.mean(losses)))
        done = epoch + 1
        if on_check is not None and ((check_every and done % check_every == 0) or done == epochs):
            model.eval()
            history["checks"].append({"epoch": done, **on_check(done), "state": _state(model)})
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "history": history, "epoch": done}, tmp)
            tmp.replace(checkpoint)
    bar.close()
    model.eval()
    return history


def best_check(history: dict, key: str) -> dict:
    """The check with the highest ``key`` (earliest on ties); NaN scores never win."""
    checks = [c for c in history["checks"] if np.isfinite(c.get(key, math.nan))]
    if not checks:
        checks = history["checks"]
    return max(checks, key=lambda c: (c.get(key, -1.0) if np.isfinite(c.get(key, math.nan)) else -1.0, -c["epoch"]))


# ----------------------------------------------------------------------------- one dataset, prepared once


@dataclass
class Prepared:
    """A dataset's validation images (the support pool), test images and text matrix."""

    name: str
    val: ImageSet | None
    test: ImageSet
    text: torch.Tensor
    train_normal: ImageSet | None = None


def prepare(opener, name: str, backbone, cfg: dict, keep_raw: bool = False, with_val: bool = True) -> Prepared:
    """Load a dataset's val split (the support pool; skipped with ``with_val=False``), a stratified test
    subset and, when ``full_normal_images`` is set, normal training images; build its text matrix."""
    pixel = has_masks(name)
    rng = np.random.default_rng(int(cfg.get("split_seed", 0)))
    val = None
    if with_val:
        val_ds = opener(name, "val")
        val = load_images(val_ds, np.arange(len(val_ds)), backbone, pixel)
    test_ds = opener(name, "test")
    test_idx = stratified_subset(binary_labels(test_ds), cfg.get("test_images"), rng)
    test = load_images(test_ds, test_idx, backbone, pixel, keep_raw=keep_raw)
    train_normal = None
    if cfg.get("full_normal_images"):
        train_ds = opener(name, "train")
        normal = np.flatnonzero(binary_labels(train_ds) == 0)
        pick = np.sort(rng.choice(normal, size=min(int(cfg["full_normal_images"]), len(normal)), replace=False))
        train_normal = load_images(train_ds, pick, backbone, False)
    return Prepared(name, val, test, M.text_matrix(backbone, M.object_name(name)), train_normal)


def subset(ims: ImageSet, idx: Sequence[int]) -> ImageSet:
    idx = np.asarray(idx, dtype=int)
    return ImageSet(ims.dataset, ims.images[idx], ims.labels[idx], None if ims.masks is None else ims.masks[idx],
                    [ims.ids[i] for i in idx] if ims.ids else [], [ims.raw[i] for i in idx] if ims.raw else [])


def score(model, ims: ImageSet, text, bank, cfg) -> M.BranchScores:
    return M.branch_scores(model, ims.images, text, bank, int(cfg["map_size"]), batch=int(cfg.get("eval_batch", 16)),
                           seg_few=ims.pixel_level, det_few=(not ims.pixel_level) or bool(cfg.get("det_branch", True)))


# ----------------------------------------------------------------------------- few-shot


@dataclass
class FewShotResult:
    rows: list[dict]
    model: M.MVFA
    bank: M.MemoryBank
    test_scores: M.BranchScores
    ref_scores: M.BranchScores
    history: dict


def few_shot(prep: Prepared, backbone, k: int, seed: int, cfg: dict, *, residual: bool = True,
             track_test: bool = False, levels=None, checkpoint: Path | None = None, progress: bool = False,
             method: str = "MVFA") -> FewShotResult:
    """Train on a K-shot support set of ``prep.val``, select on the rest of val, score the test images."""
    normal, abnormal = support_indices(prep.val.labels, k, seed, where=f"{prep.name} few-shot")
    rest = np.setdiff1d(np.arange(len(prep.val)), np.concatenate([normal, abnormal]))
    pick = stratified_subset(prep.val.labels[rest], cfg.get("select_images"), np.random.default_rng(seed + 1000))
    sel = subset(prep.val, rest[pick])
    sup = subset(prep.val, np.concatenate([abnormal, normal]))
    imgs, masks = M.augment_x11(sup.images, sup.masks)
    labels = torch.from_numpy(np.tile(sup.labels, 11))
    normal_aug = imgs[labels == 0]
    model = M.MVFA(backbone, levels=levels or cfg.get("levels"), residual=residual, seed=seed)
    data = [TrainData(prep.name, imgs, labels, masks, prep.text)]
    state = {}

    def on_check(epoch):
        bank = M.build_memory_bank(model, normal_aug)
        ref = score(model, sel, prep.text, bank, cfg)
        res = {"val": summary_metrics(ref, ref, sel, normalisation="test")["image AUC"]}
        if track_test:
            res["test"] = summary_metrics(score(model, prep.test, prep.text, bank, cfg), ref, prep.test)["image AUC"]
        state[epoch] = (bank, ref)
        return res

    history = train_adapters(model, data, epochs=int(cfg["epochs"]), lr=float(cfg["lr"]),
                             batch_size=int(cfg["batch_size"]), seed=seed, check_every=int(cfg.get("check_every", 0)),
                             on_check=on_check, checkpoint=checkpoint, progress=progress,
                             desc=f"{method} {prep.name} K={k} seed {seed}")
    chosen = best_check(history, "val")
    model.load_state_dict(chosen["state"])
    bank, ref = state.get(chosen["epoch"]) or (None, None)
    if bank is None:  # resumed after this check: rebuild from the saved adapters
        bank = M.build_memory_bank(model, normal_aug)
        ref = score(model, sel, prep.text, bank, cfg)
    test = score(model, prep.test, prep.text, bank, cfg)
    setting = f"few-shot K={k}"
    rows = []
    n = len(prep.test)

    def add(meth, metrics, det: bool = False):
        for metric, v in metrics.items():
            if "det branch" not in metric:
                rows.append(_row(prep.name, setting, meth, metric, v, seed, n))
            elif det:  # the det adapters' own image score, reported for the main method only
                rows.append(_row(prep.name, setting, f"{meth}, det branch", "image AUC", v, seed, n))

    add(method, summary_metrics(test, ref, prep.test), det=True)
    if method == "MVFA":
        add(f"{method}, test-set min-max", summary_metrics(test, ref, prep.test, normalisation="test"))
        add(f"{method}, zero-shot branch", summary_metrics(test, ref, prep.test, branch="zero"))
        add(f"{method}, few-shot branch", summary_metrics(test, ref, prep.test, branch="few"))
        for li, s in enumerate(model.levels):
            add(f"{method}, level {s} only", summary_metrics(test.levels([li]), ref.levels([li]), prep.test))
        if track_test:
            worst = best_check(history, "test")
            rows.append(_row(prep.name, setting, f"{method}, checkpoint chosen on test", "image AUC", worst["test"], seed, n))
            rows.append(_row(prep.name, setting, f"{method}, checkpoint chosen on validation (same run)", "image AUC",
                             chosen.get("test", math.nan), seed, n))
    for c in history["checks"]:
        c.pop("state", None)
    return FewShotResult(rows, model, bank, test, ref, history)


def _row(dataset, setting, method, metric, value, seed, n) -> dict:
    return {"dataset": dataset, "setting": setting, "method": method, "metric": metric, "value": float(value),
            "seed": int(seed), "n": int(n)}


# ----------------------------------------------------------------------------- baselines without training


def frozen_baselines(prep: Prepared, backbone, k: int, seeds: Sequence[int], cfg: dict) -> list[dict]:
    """WinCLIP-style zero-shot (frozen tokens vs text), PatchCore-style K-shot and full-normal-shot memory banks."""
    frozen = M.FrozenTokens(backbone, levels=cfg.get("levels"))
    n = len(prep.test)
    rows = []
    zero = score(frozen, prep.test, prep.text, None, cfg)
    for metric, v in summary_metrics(zero, None, prep.test, branch="zero", normalisation="test").items():
        if not metric.startswith("image AUC, det"):
            rows.append(_row(prep.name, "zero-shot", "WinCLIP-style (frozen, text)", metric, v, 0, n))
    for seed in seeds:
        normal, abnormal = support_indices(prep.val.labels, k, seed, where=f"{prep.name} few-shot")
        imgs, _ = M.augment_x11(prep.val.images[normal])
        bank = M.build_memory_bank(frozen, imgs)
        test = score(frozen, prep.test, prep.text, bank, cfg)
        for metric, v in summary_metrics(test, None, prep.test, branch="few", normalisation="test").items():
            if not metric.startswith("image AUC, det"):
                rows.append(_row(prep.name, f"few-shot K={k}", "PatchCore-style (frozen memory bank)", metric, v, seed, n))
    if prep.train_normal is not None:
        bank = M.build_memory_bank(frozen, prep.train_normal.images)
        test = score(frozen, prep.test, prep.text, bank, cfg)
        for metric, v in summary_metrics(test, None, prep.test, branch="few", normalisation="test").items():
            if not metric.startswith("image AUC, det"):
                rows.append(_row(prep.name, f"full-normal ({len(prep.train_normal)} images)",
                                 "PatchCore-style (frozen memory bank)", metric, v, 0, n))
    return rows


# ----------------------------------------------------------------------------- zero-shot, leave one out


def zero_shot_training_data(opener, sources: Sequence[str], backbone, cfg: dict, seed: int
                            ) -> tuple[list[TrainData], list[tuple[ImageSet, torch.Tensor]]]:
    """Per source dataset: a balanced training sample (train split, or val where train lacks a class) and
    disjoint validation images for checkpoint selection (from val)."""
    n = int(cfg["zero_train_per_class"])
    rng = np.random.default_rng(seed)
    train, select = [], []
    for name in sources:
        pixel = has_masks(name)
        text = M.text_matrix(backbone, M.object_name(name))
        tr_ds, va_ds = opener(name, "train"), opener(name, "val")
        tr_lab, va_lab = binary_labels(tr_ds), binary_labels(va_ds)
        parts, used_val = [], []
        for c in (0, 1):
            pool = np.flatnonzero(tr_lab == c)
            ds, lab = (tr_ds, tr_lab) if len(pool) else (va_ds, va_lab)
            if not len(pool):
                pool = np.flatnonzero(va_lab == c)
                pick = rng.choice(pool, size=min(n, len(pool) // 2), replace=False)
                used_val += pick.tolist()
            else:
                pick = rng.choice(pool, size=min(n, len(pool)), replace=False)
            parts.append(load_images(ds, np.sort(pick), backbone, pixel))
        images = torch.cat([p.images for p in parts])
        labels = torch.from_numpy(np.concatenate([p.labels for p in parts]))
        masks = torch.cat([p.masks for p in parts]) if pixel else None
        train.append(TrainData(name, images, labels, masks, text))
        sel_idx = stratified_subset(va_lab, cfg.get("zero_select_per_dataset"), rng, exclude=used_val)
        select.append((load_images(va_ds, sel_idx, backbone, pixel), text))
    return train, select


def zero_shot_loo(opener, held_out: str, pool: Sequence[str], backbone, cfg: dict, seed: int,
                  checkpoint: Path | None = None, progress: bool = False,
                  test: ImageSet | None = None, test_text: torch.Tensor | None = None) -> tuple[list[dict], M.MVFA]:
    """Adapters trained on ``pool`` minus ``held_out``; tested on ``held_out`` (zero-shot branch only)."""
    check_datasets(list(pool) + [held_out], "zero-shot leave-one-out")
    sources = [d for d in pool if d != held_out]
    if not sources:
        raise ConfigError(f"zero-shot leave-one-out on {held_out!r} needs at least one other dataset to train on")
    train, select = zero_shot_training_data(opener, sources, backbone, cfg, seed)
    model = M.MVFA(backbone, levels=cfg.get("levels"), seed=seed)

    def on_check(epoch):
        aucs = [summary_metrics(score(model, ims, text, None, cfg), None, ims, branch="zero", normalisation="test")["image AUC"]
                for ims, text in select]
        return {"val": float(np.nanmean(aucs))}

    hist = train_adapters(model, train, epochs=int(cfg["zero_epochs"]), lr=float(cfg["zero_lr"]),
                          batch_size=int(cfg["batch_size"]), seed=seed, check_every=int(cfg.get("zero_check_every", 0)),
                          on_check=on_check, checkpoint=checkpoint, progress=progress, desc=f"zero-shot, {held_out} held out")
    model.load_state_dict(best_check(hist, "val")["state"])
    if test is None:  # the held-out dataset is opened only now, after training
        p = prepare(opener, held_out, backbone, {**cfg, "full_normal_images": None}, with_val=False)
        test, test_text = p.test, p.text
    scores = score(model, test, test_text, None, cfg)
    metrics = summary_metrics(scores, None, test, branch="zero", normalisation="test")
    rows = [_row(held_out, "zero-shot", "MVFA", m, v, seed, len(test)) for m, v in metrics.items() if "det branch" not in m]
    return rows, model


# ----------------------------------------------------------------------------- tidy table


def tidy(rows: Sequence[dict]) -> "pandas.DataFrame":
    """Per-seed rows -> one row per (dataset, setting, method, metric): mean and 95% t-interval over seeds,
    plus the average over datasets where every dataset has the number."""
    import pandas as pd

    from medad.results import rows_over_seeds

    df = pd.DataFrame(list(rows))
    out = []
    for (d, s, m, met), g in df.groupby(["dataset", "setting", "method", "metric"], sort=False):
        out.append(rows_over_seeds(d, s, m, met, g["value"].tolist(), int(g["n"].iloc[0])))
    table = pd.DataFrame(out)
    avg = []
    datasets = table["dataset"].unique()
    for (s, m, met), g in table.groupby(["setting", "method", "metric"], sort=False):
        if len(g) > 1 and set(g["dataset"]) == set(d for d in datasets if met != "pixel AUC" or d in PIXEL_DATASETS):
            avg.append({"dataset": "average", "setting": s, "method": m, "metric": met, "value": float(g["value"].mean()),
                        "ci_low": math.nan, "ci_high": math.nan, "seeds": int(g["seeds"].min()), "n": int(g["n"].sum())})
    return pd.concat([table, pd.DataFrame(avg)], ignore_index=True) if avg else table


# ----------------------------------------------------------------------------- long run (command line)


def code_digest() -> str:
    """SHA-256 of the chapter's own code and profile (the run may start before they are committed)."""
    return provenance.files_digest(["medad/models/mvfa.py", "medad/train/mvfa_experiment.py", f"medad/profiles/{CHAPTER}.yml"])


def load_backbone_for(cfg: dict, device: str = "cpu"):
    """The profile's backbone; real CLIP without weights is a clear WeightsNotFound, never a random model."""
    import warnings

    from medad.backbones import get_spec, load_backbone

    name = cfg["backbone"]
    spec = get_spec(name)
    opts = {"image_size": int(cfg["image_size"]), "resize": "squash"}
    if spec.family != "standin":
        opts["pretrained"] = cfg.get("weights") or True
    if cfg.get("levels"):
        opts["levels"] = tuple(cfg["levels"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stand-in's own notice; it is named STAND-IN in every table
        return load_backbone(name, device=device, **opts)


def method_label(backbone) -> str:
    return "STAND-IN" if backbone.is_standin else backbone.name


def run_long(profile: str, data_dir, name: str, threads: int, device: str | None, out_root: Path,
             checkpoint_root: Path, stages: Sequence[str] | None = None) -> Path:
    """Every stage of ``profile``; the tidy table is rewritten after each finished unit, so a stopped run leaves
    what it finished, and a rerun with the same name skips finished units and resumes the current one."""
    import pandas as pd

    import medad.profiles as profiles
    from medad import provenance
    from medad.results import write_run
    from medad.runtime import device_description, resolve_device, seed_everything
    from tqdm.auto import tqdm

    torch.set_num_threads(threads)
    cfg = profiles.resolve_named(CHAPTER, profile)  # validated against the schema in medad/profiles/mvfa.yml
    dev = resolve_device(device or cfg.get("device", "cpu"))
    seed_everything(int(cfg.get("seed", 0)))
    datasets = check_datasets(cfg["datasets"])
    stages = list(stages or cfg.get("stages") or ("few_shot", "baselines", "projector", "zero_shot"))
    started, t0, digest, commit = provenance.now_utc(), time.perf_counter(), code_digest(), provenance.git_commit()
    ckpt = checkpoint_root / name
    ckpt.mkdir(parents=True, exist_ok=True)
    units_file = ckpt / "units.json"
    units: dict = json.loads(units_file.read_text()) if units_file.is_file() else {}
    opener = RecordingOpener(data_dir)
    backbone = load_backbone_for(cfg, dev)
    label = method_label(backbone)
    seeds, k = [int(s) for s in cfg["seeds"]], int(cfg["k"])

    def write():
        rows = [r for v in units.values() for r in v]
        if not rows:
            return
        table = tidy(rows)
        table["method"] = table["method"] + f" [{label}]"
        done_stages = list(dict.fromkeys(key.split("/")[0] for key in units))  # over every invocation of this run
        prov = {"kind": "long-cpu" if dev == "cpu" else "gpu-full", "schedule": schedule(cfg, done_stages),
                "commit": commit, "code_sha256": digest,  # HEAD when the run started: the code that ran
                "profile": profile, "backbone": backbone.name,
                "backbone_weights": backbone.weights_source, "stand_in": backbone.is_standin,
                "device": device_description(dev), "threads": threads, "started": started, "finished": provenance.now_utc(),
                "seconds": round(time.perf_counter() - t0, 1), "data": opener.provenance(),
                "units_done": sorted(units), "config": cfg, "environment": provenance.environment(),
                "command": f"python -m medad.train.mvfa_experiment --profile {profile} --name {name} --threads {threads}"}
        previous = out_root / name / "provenance.json"
        if previous.is_file():  # a later invocation (e.g. --stages k_curve) keeps the record of the earlier ones
            before = json.loads(previous.read_text())
            earlier = [i for i in before.get("invocations", [{k: before.get(k) for k in
                                                              ("commit", "code_sha256", "started", "finished", "seconds")}])
                       if i.get("started") != started]
            prov["invocations"] = earlier + [{k: prov[k] for k in ("commit", "code_sha256", "started", "finished", "seconds")}]
            prov["started"] = min(i["started"] for i in prov["invocations"])
            prov["seconds"] = round(sum(float(i.get("seconds") or 0) for i in prov["invocations"]), 1)
        write_run(CHAPTER, name, table, prov, root=out_root.parent)
        pd.DataFrame(rows).to_csv(ckpt / "per_seed.csv", index=False)

    def unit(key, fn):
        if key in units:
            return
        units[key] = fn()
        units_file.write_text(json.dumps(units, indent=0))
        write()
        for f in ckpt.glob(key.replace("/", "-") + ".pt"):
            f.unlink()  # adapters and optimiser of a finished unit are not needed again (tens of MB)

    preps: dict[str, Prepared] = {}

    def prep(d):
        if d not in preps:
            preps[d] = prepare(opener, d, backbone, cfg)
        return preps[d]

    plan = []  # the first seed and the baselines first, so a run stopped early still has a comparison
    if "few_shot" in stages:
        plan += [("few_shot", d, seeds[0]) for d in datasets]
    if "baselines" in stages:
        plan += [("baselines", d, None) for d in datasets]
    if "few_shot" in stages:
        plan += [("few_shot", d, s) for s in seeds[1:] for d in datasets]
    if "projector" in stages:
        plan += [("projector", d, s) for s in seeds[: int(cfg.get("projector_seeds", 1))] for d in datasets]
    if "zero_shot" in stages:
        plan += [("zero_shot", d, s) for s in seeds[: int(cfg.get("zero_seeds", 1))] for d in datasets]
    if "k_curve" in stages:
        plan += [("k_curve", d, (kk, s)) for kk in cfg.get("k_curve", []) for s in seeds[:1] for d in datasets]
    for stage, d, s in tqdm(plan, desc="MVFA long run"):
        key = f"{stage}/{d}/{s}"
        if stage == "few_shot":
            unit(key, lambda: few_shot(prep(d), backbone, k, s, cfg, track_test=(s == seeds[0]),
                                       checkpoint=ckpt / f"{stage}-{d}-{s}.pt", progress=True).rows)
        elif stage == "baselines":
            unit(key, lambda: frozen_baselines(prep(d), backbone, k, seeds, cfg))
        elif stage == "projector":
            unit(key, lambda: few_shot(prep(d), backbone, k, s, cfg, residual=False, method="projector-only (April-GAN-style)",
                                       checkpoint=ckpt / f"{stage}-{d}-{s}.pt", progress=True).rows)
        elif stage == "zero_shot":
            unit(key, lambda: zero_shot_loo(opener, d, datasets, backbone, cfg, s, checkpoint=ckpt / f"{stage}-{d}-{s}.pt",
                                            progress=True)[0])
        elif stage == "k_curve":
            kk, ss = s
            unit(key, lambda: [r for r in few_shot(prep(d), backbone, kk, ss, cfg, checkpoint=ckpt / f"{stage}-{d}-{s}.pt",
                                                   progress=True).rows if r["method"] == "MVFA"])
    write()
    return out_root / name


def schedule(cfg: dict, stages: Sequence[str]) -> str:
    return (f"STAND-IN at {cfg['image_size']} px, K={cfg['k']}, seeds {','.join(map(str, cfg['seeds']))}, "
            f"{cfg['epochs']} epochs x {cfg['batch_size']}-image batches, {cfg.get('test_images') or 'all'} test images "
            f"per dataset; stages: {', '.join(stages)}")


@command_line("python -m medad.train.mvfa_experiment", on_interrupt="finished units are kept; to resume, rerun")
def main(argv=None) -> None:
    from medad.paths import REPO_ROOT, RESULTS_DIR

    ap = argparse.ArgumentParser(description="MVFA chapter runs: few-shot, baselines, ablations, zero-shot "
                                             "leave-one-out; writes results/mvfa/<name>/")
    ap.add_argument("--profile", default="long_cpu", help="a mapping in medad/profiles/mvfa.yml (long_cpu, full, quick)")
    ap.add_argument("--data-dir", default=None, help="folder with the archives (default: $MEDAD_DATA; none -> synthetic)")
    ap.add_argument("--name", required=True, help="run name: results/mvfa/<name>/")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default=None)
    ap.add_argument("--stages", default=None, help="comma-separated: few_shot,baselines,projector,zero_shot,k_curve")
    ap.add_argument("--checkpoints", default=str(REPO_ROOT / "runs" / "mvfa-checkpoints"),
                    help="checkpoint folder (not committed); a rerun with the same name resumes")
    args = ap.parse_args(argv)
    out = run_long(args.profile, args.data_dir, args.name, args.threads, args.device, RESULTS_DIR / CHAPTER,
                   Path(args.checkpoints), stages=args.stages.split(",") if args.stages else None)
    print(f"results written to {out}")


if __name__ == "__main__":
    raise SystemExit(main())
