"""The MVFA chapter's experiment: MVFA-AD's protocol, its official checkpoint selection measured beside ours.

One entry point, :func:`run_experiment`, called by the chapter notebook (``run.opener``,
``run.state``) and by the command line::

    nice -n 5 python -m medad.train.mvfa_experiment --profile long_cpu --data-dir ../shared/data \\
        --name long-cpu-<date> --threads 1 [--stages few_shot,baselines] [--datasets a,b]

which writes ``results/mvfa/<name>/`` through :class:`medad.experiment.record.RunRecord`. Each
(stage, dataset, seed) is a unit (``state.unit``): a rerun skips finished units and resumes the current
one from its checkpoint (:func:`medad.experiment.loop.fit`); a rerun under other settings is refused.
Later invocations may run further ``--stages`` of the same run (the table then holds every unit).

Few-shot (per dataset, K, seed): K normal + K abnormal support images drawn from the dataset's
*validation* split with the seed, each augmented x11; the adapters (initialised from the seed) train on
them (:class:`medad.train.mvfa_tasks.FewShotTask`); the memory bank holds the adapted tokens of the
augmented normal support images. The weights kept are those with the best validation score on other
validation images (never the test set), whose scores also give the min-max statistics of the default
("reference") normalisation. For the first ``official_selection_seeds`` seeds the same run also scores the
test set every validation as MVFA-AD's ``train_few.py`` does (test-set min-max, pixel AUC + image AUC,
image AUC alone without masks) and keeps those weights too (the loop's ``track``): the row "checkpoint
chosen on test (official)" is that selection, measured beside "checkpoint chosen on validation (same
run)", so the gap is the leak the official protocol adds.

Zero-shot (leave-one-out): for each held-out dataset the adapters train on the other datasets only
(at most ``zero_train_per_class`` images per class and source); the held-out dataset is opened for its
test split only, after training. Baselines on the same backbone, splits and test images: the frozen
backbone's tokens against the text matrix (WinCLIP-style), memory banks of frozen tokens from the K-shot
support and from normal training images (PatchCore-style), projector-only adapters (``residual=False``,
April-GAN-style). Shortcut check (``shortcut`` stage): the few-shot protocol again with the overlay boxes
of the endoscopy frames blacked out in every image (support, bank, validation and test images).

Numbers: image AUC and pooled pixel AUC (:mod:`medad.metrics.anomaly`); each table row comes from the
per-image predictions of every seed (:func:`medad.results.rows_from_predictions`: mean over seeds, a 95%
bootstrap interval over test images, patients where the dataset has them, the seeds' s.d.).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from medad.errors import ConfigError, DataError
from medad.experiment import cli
from medad.experiment.loop import LoopSettings, fit
from medad.metrics.anomaly import PixelPairs, image_auc, pixel_auc_statistic
from medad.models import mvfa as M
from medad.train.mvfa_tasks import OFFICIAL, VAL, FewShotTask, TrainData, ZeroShotTask

CHAPTER = "mvfa"
PIXEL_DATASETS = ("lgg_brain_ad", "endoscopy_ad", "bmad_brainmri", "bmad_liverct", "bmad_resc")
NORMAL_CLASS_NAMES = ("normal", "notumor", "good")
STAGES = ("few_shot", "baselines", "projector", "zero_shot", "shortcut", "k_curve")
CODE_FILES = ("medad/models/mvfa.py", "medad/train/mvfa_experiment.py", "medad/train/mvfa_tasks.py",
              "medad/metrics/anomaly.py", "medad/metrics/bootstrap.py", "medad/experiment/loop.py",
              "medad/experiment/precision.py", f"medad/profiles/{CHAPTER}.yml")


def shortcut_boxes() -> dict:
    """Datasets with a known non-anatomical shortcut, and the boxes (fractions of the frame) that hide it."""
    from medad.data.endoscopy_ad import OVERLAY_BOXES

    return {"endoscopy_ad": OVERLAY_BOXES}


# ----------------------------------------------------------------------------- data


def binary_labels(ds) -> np.ndarray:
    """0 normal / 1 abnormal; the dataset's first class must be its normal class."""
    if ds.classes[0].lower() not in NORMAL_CLASS_NAMES:
        raise DataError(f"dataset {ds.name!r}: first class {ds.classes[0]!r} is not a normal class "
                        f"({', '.join(NORMAL_CLASS_NAMES)}); MVFA needs normal vs abnormal labels")
    return (np.asarray(ds.labels) > 0).astype(np.int64)


def has_masks(name: str) -> bool:
    return name in PIXEL_DATASETS


@dataclass
class ImageSet:
    """Preprocessed images of one dataset: images (N, 3, S, S), labels (N,), masks (N, S, S) bool or None."""

    dataset: str
    images: torch.Tensor
    labels: np.ndarray
    masks: torch.Tensor | None
    ids: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    raw: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def pixel_level(self) -> bool:
        return self.masks is not None

    def take(self, idx) -> "ImageSet":
        idx = np.asarray(idx, dtype=int)
        pick = lambda xs: [xs[i] for i in idx] if xs else []  # noqa: E731
        return ImageSet(self.dataset, self.images[idx], self.labels[idx], None if self.masks is None else self.masks[idx],
                        pick(self.ids), pick(self.groups), pick(self.raw))

    def blanked(self, boxes, backbone) -> "ImageSet":
        """The same images with ``boxes`` set to black (:func:`medad.models.mvfa.blank_boxes`)."""
        return ImageSet(self.dataset, M.blank_boxes(self.images, boxes, backbone), self.labels, self.masks, self.ids,
                        self.groups, self.raw)


def load_images(ds, indices: Sequence[int], backbone, pixel_level: bool, keep_raw: bool = False) -> ImageSet:
    """Decode and preprocess the chosen samples; masks squashed to the input size like the images."""
    size = backbone.image_size
    labels = binary_labels(ds)
    imgs, masks, ids, groups, raw = [], [], [], [], []
    for i in indices:
        s = ds[int(i)]
        imgs.append(backbone.preprocess(s.image))
        ids.append(s.id)
        groups.append(str(s.group or s.id))
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
                    torch.stack(masks) if pixel_level else None, ids, groups, raw)


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


@dataclass
class Prepared:
    """A dataset's validation images (the support pool), test images, text matrix, and normal training images."""

    name: str
    val: ImageSet | None
    test: ImageSet
    text: torch.Tensor
    train_normal: ImageSet | None = None


def text_for(backbone, dataset: str, texts: dict | None = None) -> torch.Tensor:
    """The dataset's text matrix (:func:`medad.models.mvfa.text_matrix`), computed once per run when ``texts`` is
    the run's cache (420 sentences through a CLIP text tower take a minute on a CPU)."""
    if texts is None:
        return M.text_matrix(backbone, M.object_name(dataset))
    if dataset not in texts:
        texts[dataset] = M.text_matrix(backbone, M.object_name(dataset))
    return texts[dataset]


def prepare(opener, name: str, backbone, cfg, keep_raw: bool = False, with_val: bool = True,
            full_normal: bool = True, texts: dict | None = None) -> Prepared:
    """Open a dataset's val split (the support pool; skipped with ``with_val=False``) and a stratified test
    subset (``test_images``; all when null) and, with ``full_normal`` and ``full_normal_images`` set, normal
    training images; build its text matrix. The subsets used are recorded through ``opener.note_subset``."""
    from medad.data.subsets import stratified_subset

    pixel = has_masks(name)
    val = None
    if with_val:
        val_ds = opener(name, "val")
        val = load_images(val_ds, np.arange(len(val_ds)), backbone, pixel)
    test_ds = opener(name, "test")
    test_idx = stratified_subset(binary_labels(test_ds), cfg["test_images"], int(cfg["split_seed"]))
    test = load_images(test_ds, test_idx, backbone, pixel, keep_raw=keep_raw)
    opener.note_subset(test_ds, test_idx, "all" if len(test_idx) == len(test_ds) else "stratified, split_seed")
    train_normal = None
    if full_normal and cfg["full_normal_images"]:
        train_ds = opener(name, "train")
        normal = np.flatnonzero(binary_labels(train_ds) == 0)
        rng = np.random.default_rng(int(cfg["split_seed"]))
        pick = np.sort(rng.choice(normal, size=min(int(cfg["full_normal_images"]), len(normal)), replace=False))
        train_normal = load_images(train_ds, pick, backbone, False)
        opener.note_subset(train_ds, pick, "normal images, split_seed")
    return Prepared(name, val, test, text_for(backbone, name, texts), train_normal)


# ----------------------------------------------------------------------------- scoring


class Scorer:
    """The run's way of scoring a set of images: map size, batch, precision (the network only)."""

    def __init__(self, cfg):
        self.map_size, self.batch = int(cfg["map_size"]), int(cfg["eval_batch"])
        self.precision, self.channels_last = cfg["precision"], bool(cfg["channels_last"])

    def __call__(self, model, ims: ImageSet, bank, text, det_few: bool | None = None) -> M.BranchScores:
        """Both branches at every level; the few-shot branch only where it is scored (seg with masks,
        det without; ``det_few=True`` adds the det branch of a masked dataset)."""
        return M.branch_scores(model, ims.images, text, bank, self.map_size, batch=self.batch, seg_few=ims.pixel_level,
                               det_few=(not ims.pixel_level) or bool(det_few), precision=self.precision,
                               channels_last=self.channels_last)

    def bank(self, model, images) -> M.MemoryBank:
        return M.build_memory_bank(model, images, precision=self.precision, channels_last=self.channels_last)


def block(dataset: str, setting: str, seed: int, test: ImageSet) -> dict:
    """A unit's numbers for one (dataset, setting, seed): per-image scores and pixel pairs, added by :func:`add`."""
    return {"dataset": dataset, "setting": setting, "seed": int(seed), "labels": np.asarray(test.labels),
            "groups": list(test.groups), "scores": {}, "pixel": {}}


def add(blk: dict, method: str, out: M.Combined, test: ImageSet, pixel: bool = True, image: bool = True) -> None:
    """Record a method's image scores (and, with masks, its pixel pairs) in ``blk``."""
    if image:
        blk["scores"][method] = np.asarray(out.image, dtype=np.float64)
    if pixel and test.pixel_level and out.maps is not None:
        blk["pixel"][method] = PixelPairs.from_maps(out.maps, test.masks, test.dataset).as_arrays()


# ----------------------------------------------------------------------------- few-shot


@dataclass
class FewShotDetails:
    """What the notebook's figures need from a few-shot unit computed in this process."""

    model: M.MVFA
    bank: M.MemoryBank
    test_scores: M.BranchScores
    ref_scores: M.BranchScores
    test: ImageSet


def loop_settings(cfg, steps_per_epoch: int, epochs: int, seed: int, device: str, check_every: int,
                  track: Sequence[str] = ()) -> LoopSettings:
    every = lambda n: (n * steps_per_epoch) if n else None  # noqa: E731  (epochs -> steps; 0 = only at the end)
    steps = epochs * steps_per_epoch
    if cfg["max_steps"]:  # a rehearsal's cap: a few steps of every unit, then everything after training as usual
        steps = min(steps, int(cfg["max_steps"]))
    return LoopSettings(steps=steps, seed=seed, device=device, precision=cfg["precision"],
                        channels_last=bool(cfg["channels_last"]), validate_every=every(check_every),
                        checkpoint_every=every(cfg["checkpoint_every"]), select=VAL, mode="max", track=tuple(track))


def few_shot(prep: Prepared, backbone, k: int, seed: int, cfg, *, device: str = "cpu", residual: bool = True,
             official: bool = False, method: str = "MVFA", setting: str | None = None, boxes=None,
             checkpoint=None, progress: bool = False) -> tuple[dict, FewShotDetails]:
    """Train on a K-shot support set of ``prep.val``, select on other validation images, score the test images.

    official: also score the test set at every validation and keep the official selection's weights
              (``check_every`` must then be 1: MVFA-AD scores every epoch)
    boxes:    black out these boxes in every image (the shortcut check)
    Returns the unit's value (``{"blocks": [...], "training": ...}``) and the details the figures use.
    """
    from medad.data.subsets import stratified_subset

    if official and int(cfg["check_every"]) != 1:
        raise ConfigError(f"the official checkpoint selection scores the test set every epoch; check_every must be 1 "
                          f"when official_selection_seeds > 0, got {cfg['check_every']}")
    val, test = prep.val, prep.test
    if boxes:
        val, test = val.blanked(boxes, backbone), test.blanked(boxes, backbone)
    normal, abnormal = support_indices(val.labels, k, seed, where=f"{prep.name} few-shot")
    rest = np.setdiff1d(np.arange(len(val)), np.concatenate([normal, abnormal]))
    sel = val.take(rest[stratified_subset(val.labels[rest], cfg["select_images"], seed + 1000)])
    sup = val.take(np.concatenate([abnormal, normal]))
    imgs, masks = M.augment_x11(sup.images, sup.masks)
    labels = torch.from_numpy(np.tile(sup.labels, 11))
    normal_aug = imgs[labels == 0]
    model = M.MVFA(backbone, levels=cfg["levels"], residual=residual, seed=seed)
    score = Scorer(cfg)
    epochs = int(cfg["epochs"])
    task = FewShotTask(model, TrainData(prep.name, imgs, labels, masks, prep.text), bank_images=normal_aug, val=sel,
                       test=test if official else None, score=score, lr=float(cfg["lr"]),
                       batch_size=int(cfg["batch_size"]), precision=cfg["precision"],
                       name=f"{method} {prep.name} K={k} seed {seed}",
                       options={"k": k, "seed": seed, "boxes": [list(b) for b in boxes or ()]})
    settings = loop_settings(cfg, task.steps_per_epoch(), epochs, seed, device, int(cfg["check_every"]),
                             track=(OFFICIAL,) if official else ())
    result = fit(task, settings, checkpoint=checkpoint, progress=progress)
    bank = score.bank(model, normal_aug)
    ref = score(model, sel, bank, prep.text)
    scores = score(model, test, bank, prep.text, det_few=bool(cfg["det_branch"]))
    blk = block(prep.name, setting or f"few-shot K={k}", seed, test)
    add(blk, method, M.combine(scores, ref, test.pixel_level), test)
    if method == "MVFA" and not boxes:
        if test.pixel_level and cfg["det_branch"]:  # the det adapters' own image score of a masked dataset
            blk["scores"]["MVFA, det branch"] = M.combine(scores, ref, True).det_image.astype(np.float64)
        add(blk, "MVFA, test-set min-max", M.combine(scores, None, test.pixel_level, normalisation="test"), test)
        add(blk, "MVFA, zero-shot branch", M.combine(scores, ref, test.pixel_level, branch="zero"), test)
        add(blk, "MVFA, few-shot branch", M.combine(scores, ref, test.pixel_level, branch="few"), test)
        for li, s in enumerate(model.levels):
            add(blk, f"MVFA, level {s} only", M.combine(scores.levels([li]), ref.levels([li]), test.pixel_level), test)
    elif method == "MVFA":  # the shortcut check: MVFA and its zero-shot branch alone (the text side sees no box)
        add(blk, "MVFA, zero-shot branch", M.combine(scores, ref, test.pixel_level, branch="zero"), test)
    training = {**result.summary(), "validations": result.validations, "loss": [h["loss"] for h in result.history]}
    if official:  # both selections scored alike: test-set min-max, the same run's weights
        add(blk, "MVFA, checkpoint chosen on validation (same run)",
            M.combine(scores, None, test.pixel_level, normalisation="test"), test)
        selected = {name: v.detach().clone() for name, v in model.state_dict().items()}
        model.load_state_dict(result.best_states[OFFICIAL])
        leaked = score(model, test, score.bank(model, normal_aug), prep.text)
        add(blk, "MVFA, checkpoint chosen on test (official)",
            M.combine(leaked, None, test.pixel_level, normalisation="test"), test)
        model.load_state_dict(selected)
        training["official"] = {"validations": len(result.validations), "best": result.best}
    return {"blocks": [blk], "training": training}, FewShotDetails(model, bank, scores, ref, test)


# ----------------------------------------------------------------------------- baselines without training


def frozen_baselines(prep: Prepared, backbone, k: int, seeds: Sequence[int], cfg) -> dict:
    """WinCLIP-style zero-shot (frozen tokens vs text), PatchCore-style K-shot and full-normal-shot memory banks."""
    frozen = M.FrozenTokens(backbone, levels=cfg["levels"])
    score, test = Scorer(cfg), prep.test
    blocks = []
    zero = block(prep.name, "zero-shot", 0, test)
    add(zero, "WinCLIP-style (frozen, text)", M.combine(score(frozen, test, None, prep.text), None, test.pixel_level,
                                                         branch="zero", normalisation="test"), test)
    blocks.append(zero)
    for seed in seeds:
        normal, _ = support_indices(prep.val.labels, k, seed, where=f"{prep.name} few-shot")
        imgs, _ = M.augment_x11(prep.val.images[normal])
        out = M.combine(score(frozen, test, score.bank(frozen, imgs), prep.text), None, test.pixel_level, branch="few",
                        normalisation="test")
        blk = block(prep.name, f"few-shot K={k}", seed, test)
        add(blk, "PatchCore-style (frozen memory bank)", out, test)
        blocks.append(blk)
    if prep.train_normal is not None:
        out = M.combine(score(frozen, test, score.bank(frozen, prep.train_normal.images), prep.text), None,
                        test.pixel_level, branch="few", normalisation="test")
        blk = block(prep.name, f"full-normal ({len(prep.train_normal)} images)", 0, test)
        add(blk, "PatchCore-style (frozen memory bank)", out, test)
        blocks.append(blk)
    return {"blocks": blocks}


# ----------------------------------------------------------------------------- zero-shot, leave one out


def zero_shot_training_data(opener, sources: Sequence[str], backbone, cfg, seed: int, texts: dict | None = None
                            ) -> tuple[list[TrainData], list[tuple[ImageSet, torch.Tensor]]]:
    """Per source dataset: a balanced training sample (train split, or val where train lacks a class) and
    disjoint validation images for checkpoint selection (from val)."""
    from medad.data.subsets import stratified_subset

    n = int(cfg["zero_train_per_class"])
    rng = np.random.default_rng(seed)
    train, select = [], []
    for name in sources:
        pixel = has_masks(name)
        text = text_for(backbone, name, texts)
        tr_ds, va_ds = opener(name, "train"), opener(name, "val")
        tr_lab, va_lab = binary_labels(tr_ds), binary_labels(va_ds)
        parts, used_val, used_train = [], [], []
        for c in (0, 1):
            pool = np.flatnonzero(tr_lab == c)
            if len(pool):
                pick = np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))
                used_train += pick.tolist()
                parts.append(load_images(tr_ds, pick, backbone, pixel))
            else:  # the split has no image of this class (LGG's train is normal only): half of val's, at most n
                pool = np.flatnonzero(va_lab == c)
                pick = np.sort(rng.choice(pool, size=min(n, len(pool) // 2), replace=False))
                used_val += pick.tolist()
                parts.append(load_images(va_ds, pick, backbone, pixel))
        images = torch.cat([p.images for p in parts])
        labels = torch.from_numpy(np.concatenate([p.labels for p in parts]))
        masks = torch.cat([p.masks for p in parts]) if pixel else None
        train.append(TrainData(name, images, labels, masks, text))
        sel_idx = stratified_subset(va_lab, cfg["zero_select_per_dataset"], rng, exclude=used_val)
        select.append((load_images(va_ds, sel_idx, backbone, pixel), text))
        opener.note_subset(tr_ds, used_train, f"at most {n} per class, seeded")
        opener.note_subset(va_ds, len(used_val) + len(sel_idx), "zero-shot training where train lacks a class, and selection")
    return train, select


def zero_shot(opener, held_out: str, pool: Sequence[str], backbone, cfg, seed: int, *, device: str = "cpu",
              checkpoint=None, progress: bool = False, test: Prepared | None = None, texts: dict | None = None) -> dict:
    """Adapters trained on ``pool`` minus ``held_out``; tested on ``held_out`` (zero-shot branch only).

    The held-out dataset is opened only after training, and only its test split (``test``: already prepared).
    """
    sources = [d for d in pool if d != held_out]
    if not sources:
        raise ConfigError(f"zero-shot leave-one-out on {held_out!r} needs at least one other dataset to train on")
    train, select = zero_shot_training_data(opener, sources, backbone, cfg, seed, texts)
    model = M.MVFA(backbone, levels=cfg["levels"], seed=seed)
    score = Scorer(cfg)
    task = ZeroShotTask(model, train, select=select, score=score, lr=float(cfg["zero_lr"]),
                        batch_size=int(cfg["batch_size"]), precision=cfg["precision"],
                        name=f"zero-shot, {held_out} held out, seed {seed}",
                        options={"held_out": held_out, "seed": seed, "per_class": int(cfg["zero_train_per_class"])})
    settings = loop_settings(cfg, task.steps_per_epoch(), int(cfg["zero_epochs"]), seed, device,
                             int(cfg["zero_check_every"]))
    result = fit(task, settings, checkpoint=checkpoint, progress=progress)
    if test is None:
        test = prepare(opener, held_out, backbone, cfg, with_val=False, full_normal=False, texts=texts)
    ims = test.test
    blk = block(held_out, "zero-shot", seed, ims)
    add(blk, "MVFA", M.combine(score(model, ims, None, test.text), None, ims.pixel_level, branch="zero",
                               normalisation="test"), ims)
    return {"blocks": [blk], "training": {**result.summary(), "validations": result.validations,
                                          "sources": sources, "per_class": int(cfg["zero_train_per_class"])}}


# ----------------------------------------------------------------------------- the table


def _seed_values(blocks: list[dict], method: str, metric: str) -> dict[int, float]:
    out = {}
    for b in blocks:
        if metric == "image AUC" and method in b["scores"]:
            out[b["seed"]] = image_auc(b["labels"], b["scores"][method])
        elif metric == "pixel AUC" and method in b["pixel"]:
            out[b["seed"]] = PixelPairs(**b["pixel"][method]).auc()
    return out


def table_rows(units: dict, label: str, n_boot: int = 1000) -> list[dict]:
    """Tidy rows from every finished unit: one per (dataset, setting, method, metric), over seeds, plus averages.

    A row's value is the mean over seeds of the metric on the whole test set; its interval a 95% bootstrap over
    test images (patients where the dataset has them), every seed scored on the same resample; ``seed_sd`` the
    seeds' s.d. An "average" row (datasets where every dataset has the number, the pixel datasets for pixel AUC)
    is the mean over datasets, its s.d. over seeds of the per-seed averages; it has no interval.
    """
    from medad.results import rows_from_predictions, rows_over_seeds

    groups: dict[tuple, list[dict]] = {}
    for value in units.values():
        for b in value["blocks"]:
            for metric, key in (("image AUC", "scores"), ("pixel AUC", "pixel")):
                for method in b[key]:
                    groups.setdefault((b["dataset"], b["setting"], method, metric), []).append(b)
    rows, per_seed = [], {}
    for (dataset, setting, method, metric), blocks in groups.items():
        blocks = sorted(blocks, key=lambda b: b["seed"])
        grp = blocks[0]["groups"] or None
        if metric == "image AUC":
            stat, arrays = image_auc, [(b["labels"], b["scores"][method]) for b in blocks]
        else:
            stat, arrays = pixel_auc_statistic([PixelPairs(**b["pixel"][method]) for b in blocks])
        rows.append(rows_from_predictions(dataset, setting, f"{method} [{label}]", metric, stat, arrays, groups=grp,
                                          n_boot=n_boot, seed=0))
        per_seed[(dataset, setting, method, metric)] = _seed_values(blocks, method, metric)
    rows += paired_rows(units, label, n_boot)
    datasets = list(dict.fromkeys(d for d, *_ in groups))
    for setting, method, metric in dict.fromkeys((s, m, met) for _, s, m, met in groups):
        wanted = [d for d in datasets if metric != "pixel AUC" or has_masks(d)]
        have = [per_seed.get((d, setting, method, metric)) for d in wanted]
        if len(wanted) < 2 or any(h is None for h in have):
            continue
        seeds = sorted(set.intersection(*(set(h) for h in have)))
        if not seeds:
            continue
        averages = [float(np.mean([h[s] for h in have])) for s in seeds]
        n = sum(len(groups[(d, setting, method, metric)][0]["labels"]) for d in wanted)
        rows.append(rows_over_seeds("average", setting, f"{method} [{label}]", metric, averages, n))
    return rows


# Paired differences (the same test images, the same seeds): (method, method it is compared with)
PAIRED = (("MVFA", "projector-only (April-GAN-style)"), ("MVFA", "MVFA, zero-shot branch"),
          ("MVFA", "MVFA, few-shot branch"), ("MVFA", "PatchCore-style (frozen memory bank)"),
          ("MVFA, checkpoint chosen on test (official)", "MVFA, checkpoint chosen on validation (same run)"))
MASKED = ", overlay boxes masked"  # the shortcut check's setting suffix: compared with the clean setting's MVFA


def paired_rows(units: dict, label: str, n_boot: int = 1000) -> list[dict]:
    """Rows ``A minus B`` of the same test images and seeds: the mean over seeds of the difference, and its 95%
    bootstrap interval over test images (both scored on each resample), for image and pixel AUC (metrics
    ``image AUC difference``, ``pixel AUC difference``).

    Pairs: :data:`PAIRED` within a setting, each single level against MVFA, and, for the shortcut check,
    MVFA on the clean images minus MVFA with the overlay boxes masked (same images, boxes blacked out).
    """
    from medad.results import rows_from_predictions

    merged: dict[tuple, dict] = {}  # (dataset, setting, seed) -> every method's numbers
    for value in units.values():
        for b in value["blocks"]:
            entry = merged.setdefault((b["dataset"], b["setting"], b["seed"]),
                                      {"labels": b["labels"], "groups": b["groups"], "scores": {}, "pixel": {}})
            entry["scores"].update(b["scores"])
            entry["pixel"].update(b["pixel"])
    specs = []  # (dataset, row setting, (setting a, method a), (setting b, method b), row method)
    for dataset, setting in dict.fromkeys((d, s) for d, s, _ in merged):
        methods = {m for (d, s, _), e in merged.items() if (d, s) == (dataset, setting) for m in e["scores"]}
        pairs = list(PAIRED) + [("MVFA", m) for m in sorted(methods) if m.startswith("MVFA, level ")]
        specs += [(dataset, setting, (setting, a), (setting, b), f"{a} minus {b}") for a, b in pairs]
        if setting.endswith(MASKED):
            specs.append((dataset, setting, (setting.removesuffix(MASKED), "MVFA"), (setting, "MVFA"),
                          "MVFA on clean images minus MVFA"))
    rows = []
    for dataset, setting, (sa, ma), (sb, mb), name in specs:
        seeds = sorted(seed for (d, s, seed) in merged if (d, s) == (dataset, sa) and (dataset, sb, seed) in merged)
        for metric, key in (("image AUC", "scores"), ("pixel AUC", "pixel")):
            both = [(merged[(dataset, sa, x)], merged[(dataset, sb, x)]) for x in seeds]
            both = [(a, b) for a, b in both if ma in a[key] and mb in b[key]]
            if not both:
                continue
            if metric == "image AUC":
                stat = lambda y, u, v: image_auc(y, u) - image_auc(y, v)  # noqa: E731
                arrays = [(a["labels"], a["scores"][ma], b["scores"][mb]) for a, b in both]
            else:
                first, second = ([PixelPairs(**e[key][m]) for e in side] for side, m in
                                 (([a for a, _ in both], ma), ([b for _, b in both], mb)))
                stat_a, arrays = pixel_auc_statistic(first)
                stat_b, _ = pixel_auc_statistic(second)
                stat = lambda keys, f=stat_a, g=stat_b: f(keys) - g(keys)  # noqa: E731
            # a difference of two AUCs lies in [-1, 1]: its metric says so, not "image AUC"
            rows.append(rows_from_predictions(dataset, setting, f"{name} [{label}]", f"{metric} difference", stat, arrays,
                                              groups=both[0][0]["groups"] or None, n_boot=n_boot, seed=0))
    return rows


# ----------------------------------------------------------------------------- the experiment


def load_backbone_for(cfg, device: str = "cpu"):
    """The profile's backbone under its ``protocol``; real CLIP without weights is a clear WeightsNotFound
    (``weights: random`` builds it with random weights, for a rehearsal only)."""
    import warnings

    from medad.backbones import get_spec, load_backbone

    spec = get_spec(cfg["backbone"])
    opts = {"image_size": int(cfg["image_size"]), "resize": "squash", "protocol": cfg["protocol"]}
    if spec.family != "standin":
        opts["pretrained"] = None if cfg["weights"] == "random" else (cfg["weights"] or True)
    if cfg["levels"]:
        opts["levels"] = tuple(cfg["levels"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stand-in's (or random weights') notice: named in every table instead
        return load_backbone(cfg["backbone"], device=device, **opts)


def method_label(backbone, cfg) -> str:
    if backbone.is_standin:
        return "STAND-IN"
    return f"{backbone.name}, random weights" if cfg["weights"] == "random" else backbone.name


def plan(cfg, stages: Sequence[str]) -> list[tuple[str, str, object]]:
    """(stage, dataset, seed or (K, seed)) in the order they run: the first seed and the baselines first, so
    a run stopped early still has a comparison."""
    datasets, seeds = list(cfg["datasets"]), [int(s) for s in cfg["seeds"]]
    out = []
    if "few_shot" in stages:
        out += [("few_shot", d, seeds[0]) for d in datasets]
    if "baselines" in stages:
        out += [("baselines", d, None) for d in datasets]
    if "few_shot" in stages:
        out += [("few_shot", d, s) for s in seeds[1:] for d in datasets]
    if "projector" in stages:
        out += [("projector", d, s) for s in seeds[: int(cfg["projector_seeds"])] for d in datasets]
    if "shortcut" in stages:
        out += [("shortcut", d, s) for s in seeds for d in datasets if d in shortcut_boxes()]
    if "zero_shot" in stages:
        out += [("zero_shot", d, s) for s in seeds[: int(cfg["zero_seeds"])] for d in datasets]
    if "k_curve" in stages:
        out += [("k_curve", d, (kk, s)) for kk in cfg["k_curve"] for s in seeds[: int(cfg["k_curve_seeds"])]
                for d in datasets if kk != int(cfg["k"])]
    return out


def full_profile_steps(full, rehearsal, sizes: dict | None = None) -> dict[str, int]:
    """Training steps of the ``full`` profile by fit-name prefix, for the rehearsal's projection: every few-shot,
    projector-only, shortcut and K-curve unit trains on 2K support images augmented x11, a zero-shot unit on
    ``zero_train_per_class`` images of each class of every other dataset (capped by nothing else here)."""
    batch, epochs = int(full["batch_size"]), int(full["epochs"])
    steps: dict[str, int] = {}
    for stage, dataset, seed in plan(full, full["stages"]):
        k = seed[0] if stage == "k_curve" else int(full["k"])
        if stage == "baselines":
            continue  # frozen: nothing to train
        if stage == "zero_shot":
            images = 2 * int(full["zero_train_per_class"]) * (len(full["datasets"]) - 1)
            key, n = "zero-shot", math.ceil(images / batch) * int(full["zero_epochs"])
        else:
            key = "projector-only" if stage == "projector" else "MVFA"
            n = math.ceil(2 * k * 11 / batch) * epochs
        steps[key] = steps.get(key, 0) + n
    return steps


def run_experiment(cfg, opener, state, device: str = "cpu", progress: bool = True, stages: Sequence[str] | None = None,
                   keep_raw: bool = False, finished_only: bool = False) -> dict:
    """The chapter's runs (``stages``, default the profile's), each unit stored in ``state``; returns
    ``units`` (every finished unit of the run, earlier invocations' included), ``rows`` (the tidy table),
    ``prepared`` (the datasets read in this call), ``details`` (few-shot units computed in this call:
    models and scores for the figures), ``backbone`` and ``label``."""
    from tqdm.auto import tqdm

    stages = list(stages or cfg["stages"])
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    backbone = load_backbone_for(cfg, device)
    label = method_label(backbone, cfg)
    k, seeds = int(cfg["k"]), [int(s) for s in cfg["seeds"]]
    official = set(seeds[: int(cfg["official_selection_seeds"])])
    prepared: dict[str, Prepared] = {}
    details: dict[str, FewShotDetails] = {}
    texts: dict[str, torch.Tensor] = {}

    def prep(d: str) -> Prepared:
        if d not in prepared:
            prepared[d] = prepare(opener, d, backbone, cfg, keep_raw=keep_raw, texts=texts)
        return prepared[d]

    def few(key, d, kk, s, **kw):
        value, det = few_shot(prep(d), backbone, kk, s, cfg, device=device, checkpoint=state.checkpoint(key),
                              progress=progress, **kw)
        details[key] = det
        return value

    todo = plan(cfg, stages)
    planned = [unit_key(stage, d, s) for stage, d, s in todo]
    if finished_only:  # a run cut short: tabulate what finished, train nothing
        todo = []
    for stage, d, s in tqdm(todo, desc="MVFA units", disable=not progress or len(todo) < 2):
        key = unit_key(stage, d, s)
        if stage == "few_shot":
            state.unit(key, lambda: few(key, d, k, s, official=s in official), keep_checkpoint=False)
        elif stage == "baselines":
            state.unit(key, lambda: frozen_baselines(prep(d), backbone, k, seeds, cfg))
        elif stage == "projector":
            state.unit(key, lambda: few(key, d, k, s, residual=False, method="projector-only (April-GAN-style)"),
                       keep_checkpoint=False)
        elif stage == "shortcut":
            state.unit(key, lambda: few(key, d, k, s, boxes=shortcut_boxes()[d], setting=f"few-shot K={k}, overlay boxes masked"),
                       keep_checkpoint=False)
        elif stage == "zero_shot":
            state.unit(key, lambda: zero_shot(opener, d, cfg["datasets"], backbone, cfg, s, device=device,
                                              checkpoint=state.checkpoint(key), progress=progress,
                                              test=prepared.get(d), texts=texts), keep_checkpoint=False)
        elif stage == "k_curve":
            state.unit(key, lambda: _only(few(key, d, s[0], s[1]), "MVFA"), keep_checkpoint=False)
    units = {key: state.get(key) for key in state.finished_units()}
    return {"units": units, "rows": table_rows(units, label, int(cfg["n_boot"])), "prepared": prepared,
            "details": details, "backbone": backbone, "label": label,
            "planned": planned, "unfinished": [key for key in planned if key not in units]}


def unit_key(stage: str, dataset: str, seed) -> str:
    """``few_shot/chest_xray/0``; the K curve's units carry their K: ``k_curve/chest_xray/K=8/0``."""
    return f"{stage}/{dataset}/{seed if stage != 'k_curve' else f'K={seed[0]}/{seed[1]}'}"


def _only(value: dict, method: str) -> dict:
    """A unit keeping one method's numbers (the K curve needs MVFA's alone)."""
    for b in value["blocks"]:
        b["scores"] = {m: v for m, v in b["scores"].items() if m == method}
        b["pixel"] = {m: v for m, v in b["pixel"].items() if m == method}
    return value


# ----------------------------------------------------------------------------- the committed run


def schedule_text(cfg, units: dict, threads: int, unfinished: Sequence[str] = ()) -> str:
    """The run's size in a few words, from its own parameters and finished units (a run cut short says so)."""
    seeds_done: dict[str, list[str]] = {}
    for key in units:
        stage, *_, seed = key.split("/")
        seeds_done.setdefault(stage, [])
        if stage != "baselines" and seed not in seeds_done[stage]:
            seeds_done[stage].append(seed)
    done = ", ".join(f"{stage} (seed{'s' * (len(ss) > 1)} {','.join(ss)})" if ss else stage
                     for stage, ss in seeds_done.items())
    text = (f"{'STAND-IN' if 'standin' in cfg['backbone'] else cfg['backbone']} at {cfg['image_size']} px "
            f"({cfg['protocol']} protocol), K={cfg['k']}, {cfg['epochs']} epochs "
            f"x {cfg['batch_size']}-image batches, {cfg['test_images'] or 'all'} test images per dataset, "
            f"{threads} CPU thread(s); finished: {done}")
    if unfinished:
        text += f"; cut short: {len(unfinished)} of {len(units) + len(unfinished)} planned units not run"
    return text


def write_committed(record, out: dict) -> "Path":
    """``results/mvfa/<name>/``: table.csv and provenance.json (with the backbone, its protocol, and each unit's training)."""
    from medad.experiment.precision import describe

    cfg, backbone = record.config, out["backbone"]
    training = {key: value.get("training") for key, value in out["units"].items() if value.get("training")}
    extra = {"backbone": backbone.name, "backbone_weights": backbone.weights_source, "stand_in": backbone.is_standin,
             "protocol": backbone.protocol, "protocol_description": backbone.protocol_description(),
             "units_done": sorted(out["units"]), "units_not_run": out["unfinished"], "training": _small(training)}
    if not out["units"]:
        raise ConfigError(f"run mvfa/{record.name}: no unit has finished yet, so there is nothing to tabulate; "
                          "run it without --finished-only first")
    return record.write(out["rows"], schedule_text(cfg, out["units"], record.threads, out["unfinished"]),
                        precision=describe(cfg["precision"], cfg["channels_last"]), extra=extra)


def _small(training: dict) -> dict:
    """Per unit: steps, seconds, the best validation (and official) scores, the loss per epoch, kept short."""
    keep = ("steps", "epochs", "seconds", "stopped_by", "best", "official", "sources", "per_class")
    return {k: {**{kk: v[kk] for kk in keep if kk in v}, "loss": [round(x, 5) for x in v.get("loss", [])]}
            for k, v in training.items()}


def main(argv=None) -> None:
    ap = cli.parser(CHAPTER, "MVFA chapter runs: few-shot, baselines, ablations, shortcut check, zero-shot "
                             "leave-one-out, AUC against K; writes results/mvfa/<name>/", datasets=True,
                    finished_only=True)
    ap.add_argument("--stages", default=None, help=f"comma-separated subset of: {', '.join(STAGES)} "
                                                   "(default: the profile's); later invocations may add stages")
    ns = ap.parse_args(argv)
    stages = cli.name_list(ns.stages, "--stages")
    record = cli.make_record(CHAPTER, ns, code_files=CODE_FILES, overrides={"stages": stages}, resumable=("stages",))
    out = run_experiment(record.config, record.opener, record.state, record.device, progress=True,
                         finished_only=ns.finished_only)
    print(f"results written to {write_committed(record, out)}")
    if out["unfinished"]:
        print(f"{len(out['unfinished'])} of {len(out['planned'])} planned units have not run; the provenance lists them")


main = cli.main_for(CHAPTER, main, on_interrupt="finished units and checkpoints are kept; to resume, rerun")


if __name__ == "__main__":
    sys.exit(main())
