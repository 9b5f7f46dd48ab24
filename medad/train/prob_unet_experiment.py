"""The Probabilistic U-Net chapter's experiment: data preparation, training of every model, evaluation.

Used by the chapter notebook (quick/full profiles) and by the long CPU run::

    nice -n 5 python -m medad.train.prob_unet_experiment --profile long_cpu --data-dir ../shared/data \
        --name long-cpu-<date> --threads 1

which writes small result files (no images, no weights) under ``results/prob_unet/<name>/``.
Its options and the profile are validated against the chapter's schema before any work; a
rerun with the same name resumes from the checkpoints when the settings are the same and is
refused when they differ (``--fresh`` deletes the run's checkpoints and starts again).

Protocol: patient-level train/val/test split from ``data/splits/lidc.json``; every model is
trained on a random grader's mask per slice and step, selected on the validation split
(GED of a few samples on a fixed subset), and evaluated once on the test slices: GED against
the number of samples, sample diversity, Hungarian-matched IoU, GED by number of graders
who marked the slice, patient-level bootstrap intervals.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medad import provenance
from medad.errors import ConfigError, command_line
from medad.paths import REPO_ROOT
from medad.metrics.bootstrap import bootstrap_ci
from medad.metrics.ged import distance_matrices, ged_from_distances, hungarian_iou, sample_diversity
from medad.models.ambiguous import MODELS, TITLES, build_model
from medad.train.segmentation import TrainResult, TrainSettings, to_batch, train

CHAPTER = "prob_unet"


# ----------------------------------------------------------------------------- data


def center_crop(data: dict, size: int | None) -> dict:
    """The central size x size window of every slice (LIDC crops are centred on the nodule)."""
    if not size:
        return data
    h, w = data["images"].shape[-2:]
    if size > min(h, w):
        return data
    top, left = (h - size) // 2, (w - size) // 2
    out = dict(data)
    out["images"] = data["images"][..., top : top + size, left : left + size]
    out["grader_masks"] = data["grader_masks"][..., top : top + size, left : left + size]
    return out


def take(data: dict, index) -> dict:
    index = np.asarray(index)
    return {k: (v[index] if isinstance(v, np.ndarray) and len(v) == len(data["images"]) else v) for k, v in data.items()}


def patient_subset(data: dict, n_slices: int | None, seed: int) -> dict:
    """Whole patients, in a seeded order, until at least ``n_slices`` slices (all when None)."""
    if not n_slices or n_slices >= len(data["images"]):
        return data
    groups = np.asarray(data["groups"])
    patients = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(patients))
    chosen, count = [], 0
    for i in order:
        chosen.append(patients[i])
        count += int((groups == patients[i]).sum())
        if count >= n_slices:
            break
    return take(data, np.flatnonzero(np.isin(groups, chosen)))


def slice_subset(data: dict, n_slices: int | None, seed: int) -> dict:
    if not n_slices or n_slices >= len(data["images"]):
        return data
    return take(data, np.sort(np.random.default_rng(seed).permutation(len(data["images"]))[:n_slices]))


def load_split_arrays(ds) -> dict:
    from medad.data.lidc import load_arrays

    arrays = dict(load_arrays(ds, progress=False))
    arrays["groups"] = np.asarray(arrays["groups"]).astype(str)
    return arrays


def prepare_data(datasets: dict, cfg: dict) -> dict:
    """{split: arrays} from opened datasets, cropped and subset as the profile says."""
    seed = int(cfg.get("seed", 0))
    by = cfg.get("eval_subset", "patients")
    if by not in ("patients", "slices"):
        raise ConfigError(f"eval_subset must be 'patients' or 'slices', got {by!r}")
    subset = patient_subset if by == "patients" else slice_subset
    out = {}
    for split, ds in datasets.items():
        arrays = center_crop(load_split_arrays(ds), cfg.get("crop"))
        if split == "train":
            arrays = slice_subset(arrays, cfg.get("train_slices"), seed)
        else:  # val/test subsets: whole patients, or (small profiles) random slices from many patients
            arrays = subset(arrays, cfg.get(f"{split}_slices"), seed)
        out[split] = arrays
    return out


# ----------------------------------------------------------------------------- models and training


def model_options(cfg: dict, name: str) -> dict:
    opts = {"channels": tuple(cfg["channels"]), "convs_per_block": cfg.get("convs_per_block", 3),
            "latent_dim": cfg.get("latent_dim", 6), "beta": cfg.get("beta", 1.0),
            "num_1x1_convs": cfg.get("num_1x1_convs", 3), "dropout": cfg.get("dropout", 0.5),
            "members": cfg.get("ensemble_members", 4), "heads": cfg.get("heads", 4), "relax": cfg.get("mheads_relax", 0.05)}
    if name != "dropout_unet":
        opts.pop("dropout")
    return opts


def iterations_for(cfg: dict, n_train: int) -> int:
    """``epochs`` (over the training slices used) wins over ``iterations`` when set."""
    if cfg.get("epochs"):
        return max(1, math.ceil(float(cfg["epochs"]) * n_train / int(cfg["batch_size"])))
    return int(cfg["iterations"])


def train_settings(cfg: dict, n_train: int, device: str, seed: int) -> TrainSettings:
    return TrainSettings(
        iterations=iterations_for(cfg, n_train), batch_size=int(cfg["batch_size"]),
        lr_values=tuple(cfg["lr_values"]), lr_boundaries=tuple(cfg["lr_boundaries"]),
        weight_decay=float(cfg.get("weight_decay", 1e-5)), seed=seed, device=device,
        precision=cfg.get("precision", "fp32"), channels_last=bool(cfg.get("channels_last", False)),
        checkpoint_every=int(cfg.get("checkpoint_every") or 0), val_every=int(cfg.get("val_every") or 0),
        val_slices=int(cfg.get("val_select_slices", 150)), val_samples=int(cfg.get("val_samples", 8)),
        max_minutes=cfg.get("max_minutes_per_model"),
    )


def check_models(names) -> list[str]:
    names = list(names)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ConfigError(f"unknown model(s) {unknown}; choose from: {', '.join(MODELS)}")
    return names


def train_models(cfg: dict, data: dict, device: str, checkpoint_root: str | os.PathLike | None = None,
                 progress: bool = True, models=None) -> dict[str, TrainResult]:
    """Train every model in ``cfg['models']`` with the same settings and seed; returns name -> TrainResult."""
    seed = int(cfg.get("seed", 0))
    results = {}
    for name in check_models(models or cfg["models"]):
        torch.manual_seed(seed)  # same initialisation stream for every model
        model = build_model(name, **model_options(cfg, name))
        settings = train_settings(cfg, len(data["train"]["images"]), device, seed)
        ckpt = Path(checkpoint_root) / name if checkpoint_root else None
        results[name] = train(model, data["train"], data["val"], settings, checkpoint_dir=ckpt,
                              progress=progress, desc=TITLES[name], model_config=model_options(cfg, name))
    return results


# ----------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    """Per-slice metrics of one model on the test slices."""

    sample_counts: list
    ged: np.ndarray  # (slices, len(sample_counts)), empty-empty = 0
    ged_official: np.ndarray  # same, official NaN-propagating convention
    diversity: np.ndarray  # (slices, len(sample_counts)) E[d(S, S')]
    hm_iou: np.ndarray  # (slices,)
    seconds: float = 0.0
    examples: dict = field(default_factory=dict)  # slice index -> bool (k, H, W) first samples, for figures


def evaluate_model(model, data: dict, sample_counts, device: str, seed: int, hm_iou_samples: int = 16,
                   batch_size: int = 16, keep_examples=(), n_keep: int = 6, progress: bool = False,
                   desc: str = "evaluate") -> Evaluation:
    """Draw max(sample_counts) samples per test slice, batch by batch, and score them against the graders."""
    from tqdm.auto import tqdm

    counts = sorted(int(c) for c in sample_counts)
    n_max = counts[-1]
    model.to(device).eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)  # MC dropout draws from the global stream
    n = len(data["images"])
    ged = np.empty((n, len(counts)), np.float32)
    ged_off = np.empty_like(ged)
    div = np.empty_like(ged)
    hm = np.empty(n, np.float64)
    keep = {int(i) for i in keep_examples}
    examples = {}
    t0 = time.perf_counter()
    for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, mininterval=5, leave=False):
        index = np.arange(start, min(n, start + batch_size))
        images, graders = to_batch(data, index, device)
        with torch.no_grad():
            samples = model.sample(images, n_max, generator=gen)
        dm = distance_matrices(samples, graders, device=device)
        dm_off = dm.convention("official")
        for j, c in enumerate(counts):
            ged[index, j] = ged_from_distances(dm, c).numpy()
            ged_off[index, j] = ged_from_distances(dm_off, c).numpy()
            div[index, j] = sample_diversity(dm, c).numpy()
        hm[index] = hungarian_iou(samples[:, :hm_iou_samples].cpu(), graders.cpu())
        for k, i in enumerate(index):
            if int(i) in keep:
                examples[int(i)] = samples[k, :n_keep].cpu().numpy()
    return Evaluation(counts, ged, ged_off, div, hm, time.perf_counter() - t0, examples)


def grader_counts(data: dict) -> np.ndarray:
    m = data["grader_masks"]
    return m.reshape(m.shape[0], m.shape[1], -1).any(axis=2).sum(axis=1)


def summarize(evals: dict[str, Evaluation], data: dict, n_boot: int = 1000, seed: int = 0, table_samples: int = 16):
    """Tables (pandas) with patient-bootstrap 95% intervals: GED curve, per-model table, GED by graders."""
    import pandas as pd

    groups = np.asarray(data["groups"])
    marked = grader_counts(data)
    curve, table, by_graders = [], [], []
    for name, ev in evals.items():
        for j, c in enumerate(ev.sample_counts):
            est = bootstrap_ci(ev.ged[:, j], groups, n_boot, seed=seed)[0]
            off = ev.ged_official[:, j]
            curve.append({"model": name, "title": TITLES.get(name, name), "samples": c, **est.as_dict(),
                          "official_nan_fraction": float(np.isnan(off).mean()),
                          "official_nanmean": float(np.nanmean(off)) if np.isfinite(off).any() else float("nan")})
        j = ev.sample_counts.index(table_samples) if table_samples in ev.sample_counts else len(ev.sample_counts) - 1
        g1 = bootstrap_ci(ev.ged[:, 0], groups, n_boot, seed=seed)[0]
        gt = bootstrap_ci(ev.ged[:, j], groups, n_boot, seed=seed)[0]
        gl = bootstrap_ci(ev.ged[:, -1], groups, n_boot, seed=seed)[0]
        dv = bootstrap_ci(ev.diversity[:, j], groups, n_boot, seed=seed)[0]
        hm = bootstrap_ci(ev.hm_iou, groups, n_boot, seed=seed)[0]
        table.append({"model": name, "title": TITLES.get(name, name),
                      f"GED@{ev.sample_counts[0]}": g1.mean, f"GED@{ev.sample_counts[j]}": gt.mean,
                      f"GED@{ev.sample_counts[j]} low": gt.low, f"GED@{ev.sample_counts[j]} high": gt.high,
                      "GED@max": gl.mean, "max samples": ev.sample_counts[-1], f"diversity@{ev.sample_counts[j]}": dv.mean,
                      "HM-IoU": hm.mean, "eval seconds": round(ev.seconds, 1)})
        for k in range(int(marked.max()) + 1):
            sel = marked == k
            if sel.any():
                est = bootstrap_ci(ev.ged[sel, j], groups[sel], n_boot, seed=seed)[0]
                by_graders.append({"model": name, "title": TITLES.get(name, name), "graders": k,
                                   "samples": ev.sample_counts[j], **est.as_dict()})
    return pd.DataFrame(curve), pd.DataFrame(table), pd.DataFrame(by_graders)


def example_slices(data: dict) -> dict[int, int]:
    """For the samples figure: the test slice with the largest lesion among those marked by k = 1..4 graders."""
    marked = grader_counts(data)
    sizes = data["grader_masks"].any(1).sum((1, 2))
    pick = {}
    for k in (1, 2, 3, 4):
        idx = np.flatnonzero(marked == k)
        if len(idx):
            pick[k] = int(idx[np.argmax(sizes[idx])])
    return pick


def save_examples(path: Path, data: dict, pick: dict[int, int], evals: dict[str, "Evaluation"]) -> None:
    """The few test slices the samples figure shows, with their grader masks and each model's first samples.

    Small (a handful of 64x64 crops, bit-packed masks), so a committed run can draw its own figure.
    """
    index = np.array([pick[k] for k in sorted(pick)], dtype=int)
    arrays = {"marked_by": np.array(sorted(pick)), "slice_index": index, "images": data["images"][index],
              "grader_masks": np.packbits(data["grader_masks"][index], axis=-1),
              "patients": np.asarray(data["groups"])[index], "width": np.array(data["images"].shape[-1])}
    for m, ev in evals.items():
        arrays[f"samples_{m}"] = np.packbits(np.stack([ev.examples[int(i)] for i in index]), axis=-1)
    np.savez_compressed(path, **arrays)


def load_examples(path: Path) -> dict:
    """What :func:`save_examples` stored, unpacked: images, grader_masks (k, 4, H, W), samples per model (k, n, H, W)."""
    with np.load(path) as z:
        width = int(z["width"])
        out = {"marked_by": z["marked_by"], "slice_index": z["slice_index"], "images": z["images"], "patients": z["patients"],
               "grader_masks": np.unpackbits(z["grader_masks"], axis=-1, count=width).astype(bool), "samples": {}}
        for key in z.files:
            if key.startswith("samples_"):
                out["samples"][key[len("samples_"):]] = np.unpackbits(z[key], axis=-1, count=width).astype(bool)
    return out


# ----------------------------------------------------------------------------- synthetic oracle check


def oracle_check(model, ds, data: dict, sample_counts, device: str, seed: int) -> "pandas.DataFrame":
    """GED of the model and of the oracle sampler (``ds.oracle_masks``) on synthetic slices, two ways.

    ``vs graders``: against the slice's 4 drawn grader masks (what real data allows);
    ``vs truth``: against the known grader-mask distribution itself (exact expectations over
    its outcomes, :func:`medad.metrics.ged.ged_from_distances` with ``grader_weights``).
    """
    import pandas as pd

    if not hasattr(ds, "oracle_distribution"):
        raise ConfigError("the oracle check needs the synthetic LIDC dataset (it knows each slice's mask distribution)")
    counts = sorted(int(c) for c in sample_counts)
    n_max = counts[-1]
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    crop = (ds.size - data["images"].shape[-1]) // 2
    rows = []
    model.to(device).eval()
    n = len(data["images"])
    images, graders = to_batch(data, np.arange(n), device)
    with torch.no_grad():
        model_samples = torch.cat([model.sample(images[i : i + 32], n_max, generator=gen) for i in range(0, n, 32)]).cpu()
    oracle_samples = torch.from_numpy(np.stack([ds.oracle_masks(i, n_max, rng) for i in range(n)]))
    outcomes, probs = zip(*(ds.oracle_distribution(i) for i in range(n)))
    outcomes = torch.from_numpy(np.stack(outcomes))
    if crop:
        s = slice(crop, crop + data["images"].shape[-1])
        oracle_samples, outcomes = oracle_samples[..., s, s], outcomes[..., s, s]
    probs = torch.from_numpy(np.stack(probs)).float()
    for sampler, samples in (("Prob. U-Net", model_samples), ("oracle", oracle_samples)):
        dm_g = distance_matrices(samples, graders.cpu())
        dm_t = distance_matrices(samples, outcomes)
        for c in counts:
            rows.append({"sampler": sampler, "samples": c, "reference": "vs 4 graders",
                         "ged": float(ged_from_distances(dm_g, c).mean())})
            rows.append({"sampler": sampler, "samples": c, "reference": "vs true distribution",
                         "ged": float(ged_from_distances(dm_t, c, grader_weights=probs).mean())})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- long run (command line)


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def code_digest() -> str:
    """SHA-256 of the chapter's own code and profile (the run may start before they are committed)."""
    package = REPO_ROOT / "medad"
    files = sorted(package.glob("models/*.py")) + sorted(package.glob("metrics/*.py")) + sorted(package.glob("train/*.py"))
    return provenance.files_digest(files + [package / "profiles" / f"{CHAPTER}.yml"])


def chapter_commit() -> str:
    """HEAD's hash, marked '+uncommitted' when the chapter's own files are untracked or modified."""
    import subprocess

    from medad import provenance
    from medad.paths import REPO_ROOT

    commit = provenance.git_commit()
    paths = ["medad/models", "medad/metrics", "medad/train", f"medad/profiles/{CHAPTER}.yml"]
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=REPO_ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return commit
    return commit if not dirty or commit.endswith("+uncommitted") else commit + "+uncommitted"


def run_long(profile: str, data_dir: str | None, name: str, threads: int, device: str | None, out_root: Path,
             checkpoint_root: Path, models=None) -> Path:
    """Train and evaluate every model of ``profile``; write results.json, per_slice.npz and provenance.json."""
    import medad.profiles as profiles
    from medad import provenance
    from medad.data import open_dataset
    from medad.runtime import device_description, resolve_device, seed_everything

    cfg = profiles.resolve_named(CHAPTER, profile, {"threads": threads, "device": device, "models": models}, drop=("oracle",))
    threads = cfg.get("threads") or 1
    torch.set_num_threads(threads)
    seed = int(cfg.get("seed", 0))
    dev = resolve_device(device or cfg.get("device", "auto"))
    seed_everything(seed)
    started, t0, digest, commit = provenance.now_utc(), time.perf_counter(), code_digest(), chapter_commit()
    datasets = {s: open_dataset("lidc", s, data_dir, seed=seed) for s in ("train", "val", "test")}
    data = prepare_data(datasets, cfg)
    trained = train_models(cfg, data, dev, checkpoint_root=checkpoint_root / name, progress=True)
    counts = cfg["sample_counts"]
    evals = {}
    pick = example_slices(data["test"])
    for mname, res in trained.items():
        mc = [c for c in counts if c <= int(cfg.get("max_samples", {}).get(mname, max(counts)))]
        evals[mname] = evaluate_model(res.model, data["test"], mc, dev, seed + 7, cfg.get("hm_iou_samples", 16),
                                      keep_examples=pick.values(), progress=True, desc=f"test {TITLES[mname]}")
    curve, table, by_graders = summarize(evals, data["test"], cfg.get("n_boot", 1000), seed, cfg.get("table_samples", 16))
    out = out_root / name
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "run": name, "profile": profile, "config": cfg,
        "data": {s: {"slices": int(len(d["images"])), "patients": int(len(np.unique(d["groups"]))),
                     "crop": cfg.get("crop"), "synthetic": bool(datasets[s].synthetic)} for s, d in data.items()},
        "training": {m: {**r.summary(), "val_history": r.val_history,
                         "loss_history": r.history[:: max(1, len(r.history) // 60)]} for m, r in trained.items()},
        "curve": curve.to_dict(orient="records"), "table": table.to_dict(orient="records"),
        "by_graders": by_graders.to_dict(orient="records"),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    np.savez_compressed(out / "per_slice.npz", groups=data["test"]["groups"], graders_marked=grader_counts(data["test"]),
                        **{f"ged_{m}": e.ged.astype(np.float16) for m, e in evals.items()},
                        **{f"counts_{m}": np.array(e.sample_counts) for m, e in evals.items()},
                        **{f"hm_iou_{m}": e.hm_iou.astype(np.float16) for m, e in evals.items()},
                        **{f"diversity_{m}": e.diversity.astype(np.float16) for m, e in evals.items()})
    save_examples(out / "examples.npz", data["test"], pick, evals)
    prov = {
        "chapter": CHAPTER, "run": name, "commit": commit, "code_sha256": digest,
        "profile": profile, "seed": seed,
        "device": device_description(dev), "threads": threads, "started": started, "finished": provenance.now_utc(),
        "seconds": round(time.perf_counter() - t0, 1),
        "data": [ds.provenance() for ds in datasets.values()], "environment": provenance.environment(),
        "command": "python -m medad.train.prob_unet_experiment " + " ".join(
            f"--{k} {v}" for k, v in (("profile", profile), ("name", name), ("threads", threads)) if v),
    }
    (out / "provenance.json").write_text(json.dumps(prov, indent=1, default=_json_default))
    return out


def run_oracle(profile: str, name: str, threads: int, device: str | None, out_root: Path, checkpoint_root: Path) -> Path:
    """The synthetic oracle check with a longer schedule: train a Prob. U-Net on synthetic LIDC, compare with the oracle.

    Settings: the profile's values overridden by its ``oracle`` mapping. Writes ``oracle.json``
    (table, training summary and provenance) next to the run's other result files.
    """
    import medad.profiles as profiles
    from medad import provenance
    from medad.data import open_dataset
    from medad.runtime import device_description, resolve_device, seed_everything

    overrides = {**(profiles.load(CHAPTER)[profile].get("oracle") or {}), "threads": threads, "device": device}
    cfg = profiles.resolve_named(CHAPTER, profile, overrides, drop=("oracle",))
    threads = cfg.get("threads") or 1
    torch.set_num_threads(threads)
    seed = int(cfg.get("seed", 0))
    dev = resolve_device(device or cfg.get("device", "auto"))
    seed_everything(seed)
    started, t0, digest, commit = provenance.now_utc(), time.perf_counter(), code_digest(), chapter_commit()
    n = {"train": cfg.get("oracle_train_slices", 400), "val": cfg.get("oracle_val_slices", 100), "test": cfg.get("oracle_test_slices", 100)}
    syn = {s: open_dataset("lidc", s, None, synthetic=True, seed=seed, n=n[s]) for s in ("train", "val", "test")}
    data = prepare_data(syn, {**cfg, "train_slices": None, "val_slices": None, "test_slices": None})
    res = train_models(cfg, data, dev, checkpoint_root=checkpoint_root / f"{name}-oracle", models=["prob_unet"])["prob_unet"]
    table = oracle_check(res.model, syn["test"], data["test"], cfg["sample_counts"], dev, seed + 11)
    out = out_root / name
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "run": name, "profile": profile, "data": "synthetic LIDC (medad.data.synthetic.synthetic_lidc)", "config": cfg,
        "slices": {s: len(d["images"]) for s, d in data.items()}, "training": {**res.summary(), "val_history": res.val_history},
        "table": table.to_dict(orient="records"),
        "provenance": {"commit": commit, "code_sha256": digest, "device": device_description(dev),
                       "threads": threads, "seed": seed, "started": started, "finished": provenance.now_utc(),
                       "seconds": round(time.perf_counter() - t0, 1), "data": [d.provenance() for d in syn.values()]},
    }
    (out / "oracle.json").write_text(json.dumps(payload, indent=1, default=_json_default))
    return out


def check_run_name(name: str) -> str:
    """A run name becomes a folder name: letters, digits, '.', '_' and '-' only."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name or ""):
        raise ConfigError(f"--name {name!r}: a run name is a folder name; use letters, digits, '.', '_' and '-'")
    return name


@command_line("python -m medad.train.prob_unet_experiment",
              on_interrupt="finished models and checkpoints are kept; to resume, rerun")
def main(argv=None) -> None:
    import shutil

    from medad.paths import REPO_ROOT, RESULTS_DIR

    ap = argparse.ArgumentParser(description="Train and evaluate the Prob. U-Net chapter's models; write results/prob_unet/<name>/")
    ap.add_argument("--profile", default="long_cpu", help="a mapping in medad/profiles/prob_unet.yml (long_cpu, full, quick)")
    ap.add_argument("--data-dir", default=None, help="folder with the archives (default: $MEDAD_DATA; none -> synthetic)")
    ap.add_argument("--name", required=True, help="run name: results/prob_unet/<name>/")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch (>= 1)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--models", default=None, help="comma-separated subset of the profile's models")
    ap.add_argument("--checkpoints", default=str(REPO_ROOT / "runs" / "prob_unet-checkpoints"),
                    help="checkpoint folder (not committed); a rerun with the same name and settings resumes")
    ap.add_argument("--fresh", action="store_true", help="delete this run's checkpoints first and train from scratch")
    ap.add_argument("--stage", choices=("main", "oracle", "all"), default="all",
                    help="main: LIDC models; oracle: the synthetic oracle check (profile's `oracle` settings); all: both")
    args = ap.parse_args(argv)
    check_run_name(args.name)
    if args.fresh:
        for folder in (Path(args.checkpoints) / args.name, Path(args.checkpoints) / f"{args.name}-oracle"):
            if folder.is_dir():
                shutil.rmtree(folder)
                print(f"--fresh: removed {folder}")
    if args.stage in ("main", "all"):
        out = run_long(args.profile, args.data_dir, args.name, args.threads, args.device, RESULTS_DIR / CHAPTER,
                       Path(args.checkpoints), models=args.models.split(",") if args.models else None)
        print(f"results written to {out}")
    if args.stage in ("oracle", "all"):
        out = run_oracle(args.profile, args.name, args.threads, args.device, RESULTS_DIR / CHAPTER, Path(args.checkpoints))
        print(f"oracle check written to {out / 'oracle.json'}")


if __name__ == "__main__":
    sys.exit(main())
