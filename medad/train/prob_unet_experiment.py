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

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medad.errors import ConfigError
from medad.experiment import cli
from medad.experiment.loop import FitResult
from medad.experiment.record import RunRecord, RunState
from medad.metrics.bootstrap import bootstrap_ci
from medad.metrics.ged import distance_matrices, ged_from_distances, hungarian_iou, sample_diversity
from medad.models.ambiguous import TITLES, build_model
from medad.train.segmentation import TrainSettings, to_batch, train

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
    seed = int(cfg["seed"])
    by = cfg["eval_subset"]
    if by not in ("patients", "slices"):
        raise ConfigError(f"eval_subset must be 'patients' or 'slices', got {by!r}")
    subset = patient_subset if by == "patients" else slice_subset
    out = {}
    for split, ds in datasets.items():
        arrays = center_crop(load_split_arrays(ds), cfg["crop"])
        if split == "train":
            arrays = slice_subset(arrays, cfg["train_slices"], seed)
        else:  # val/test subsets: whole patients, or (small profiles) random slices from many patients
            arrays = subset(arrays, cfg[f"{split}_slices"], seed)
        out[split] = arrays
    return out


# ----------------------------------------------------------------------------- models and training


def model_options(cfg: dict, name: str) -> dict:
    opts = {"channels": tuple(cfg["channels"]), "convs_per_block": cfg["convs_per_block"],
            "latent_dim": cfg["latent_dim"], "beta": cfg["beta"], "num_1x1_convs": cfg["num_1x1_convs"],
            "dropout": cfg["dropout"], "members": cfg["ensemble_members"], "heads": cfg["heads"],
            "relax": cfg["mheads_relax"]}
    if name != "dropout_unet":
        opts.pop("dropout")
    return opts


def iterations_for(cfg: dict, n_train: int) -> int:
    """``epochs`` (over the training slices used) when set, else ``iterations`` (the schema forbids giving both)."""
    if cfg["epochs"]:
        return max(1, math.ceil(float(cfg["epochs"]) * n_train / int(cfg["batch_size"])))
    return int(cfg["iterations"])


def train_settings(cfg: dict, n_train: int, device: str, seed: int) -> TrainSettings:
    return TrainSettings(
        iterations=iterations_for(cfg, n_train), batch_size=int(cfg["batch_size"]),
        lr_values=tuple(cfg["lr_values"]), lr_boundaries=tuple(cfg["lr_boundaries"]),
        weight_decay=float(cfg["weight_decay"]), seed=seed, device=device,
        precision=cfg["precision"], channels_last=bool(cfg["channels_last"]),
        checkpoint_every=int(cfg["checkpoint_every"]), val_every=int(cfg["val_every"]),
        val_slices=int(cfg["val_select_slices"]), val_samples=int(cfg["val_samples"]),
        max_minutes=cfg["max_minutes_per_model"],
    )


def train_models(cfg: dict, data: dict, device: str, state: RunState | None = None, progress: bool = True,
                 models=None, prefix: str = "") -> dict[str, FitResult]:
    """Train every model in ``cfg['models']`` with the same settings and seed; returns name -> FitResult.

    With a :class:`RunState`, each model checkpoints to ``state.checkpoint(prefix + name)`` and a rerun
    resumes it (a finished model is only restored).
    """
    seed = int(cfg["seed"])
    results = {}
    for name in models or cfg["models"]:
        torch.manual_seed(seed)  # same initialisation stream for every model
        model = build_model(name, **model_options(cfg, name))
        settings = train_settings(cfg, len(data["train"]["images"]), device, seed)
        ckpt = state.checkpoint(prefix + name) if state is not None else None
        results[name] = train(model, data["train"], data["val"], settings, checkpoint_dir=ckpt.with_suffix("") if ckpt else None,
                              progress=progress, desc=fit_name(name, prefix), model_config=model_options(cfg, name))
    return results


def fit_name(model: str, prefix: str = "") -> str:
    """How a model's training is named in progress bars and timings ('U-Net ensemble', 'oracle check: Prob. U-Net')."""
    return ("oracle check: " if prefix.startswith("oracle") else "") + TITLES[model]


def full_profile_steps(full: dict, rehearsal: dict, sizes: dict | None = None) -> dict[str, int]:
    """Training steps of every model in the ``full`` profile, by fit name (the rehearsal projects its time from them).

    ``epochs``, when the full profile sets it, is turned into steps with the training split's slice count
    (``sizes[("lidc", "train")]``, as the rehearsal opened it; 10,859 here)."""
    n_train = full["train_slices"] or (sizes or {}).get(("lidc", "train"), 10859)
    steps = {fit_name(m): iterations_for(full, n_train) for m in full["models"]}
    steps[fit_name("prob_unet", "oracle-")] = int(full["oracle_iterations"])
    return steps


def stopped_early(trained: dict[str, FitResult]) -> dict[str, str]:
    """Models whose time cap stopped them: name -> 'N of M steps' (the chapter says so next to their numbers)."""
    return {m: f"{r.steps:,} of {r.settings['loop']['steps']:,} steps" for m, r in trained.items()
            if r.stopped_by != "steps"}


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
                      "HM-IoU": hm.mean, "HM-IoU low": hm.low, "HM-IoU high": hm.high, "eval seconds": round(ev.seconds, 1)})
        for k in range(int(marked.max()) + 1):
            sel = marked == k
            if sel.any():
                est = bootstrap_ci(ev.ged[sel, j], groups[sel], n_boot, seed=seed)[0]
                by_graders.append({"model": name, "title": TITLES.get(name, name), "graders": k,
                                   "samples": ev.sample_counts[j], **est.as_dict()})
    return pd.DataFrame(curve), pd.DataFrame(table), pd.DataFrame(by_graders)


def paired_differences(ged: dict[str, np.ndarray], counts: dict[str, list], groups, samples: int = 16,
                       n_boot: int = 1000, seed: int = 0, reference: str = "prob_unet") -> list[dict]:
    """The Prob. U-Net's GED minus each baseline's, slice by slice on the same test slices, at ``samples`` samples.

    ``ged[m]``: (slices, len(counts[m])) per-slice GED. The interval is the patient bootstrap of the mean
    difference, so it says whether the ranking holds on these slices (a negative difference: the Prob. U-Net's
    samples are closer to the graders'), which two separate intervals cannot.
    """
    if reference not in ged or samples not in counts[reference]:
        return []
    mine = np.asarray(ged[reference], dtype=np.float64)[:, list(counts[reference]).index(samples)]
    out = []
    for name, values in ged.items():
        if name == reference or samples not in counts[name]:
            continue
        diff = mine - np.asarray(values, dtype=np.float64)[:, list(counts[name]).index(samples)]
        est = bootstrap_ci(diff, groups, n_boot, seed=seed)[0]
        out.append({"model": name, "title": f"{TITLES[reference]} minus {TITLES.get(name, name)}", "samples": samples,
                    **est.as_dict()})
    return out


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


# ----------------------------------------------------------------------------- the experiment (notebook and command line)

CODE_FILES = ("medad/models/prob_unet.py", "medad/models/seg_baselines.py", "medad/models/unet.py",
              "medad/models/ambiguous.py", "medad/models/segmentation_common.py", "medad/metrics/ged.py",
              "medad/metrics/bootstrap.py", "medad/train/segmentation.py", "medad/train/prob_unet_experiment.py",
              "medad/experiment/loop.py", "medad/experiment/precision.py", f"medad/profiles/{CHAPTER}.yml")


def oracle_config(cfg: dict) -> dict:
    """The main parameters with the oracle check's own network, schedule and slice counts."""
    return {**cfg, "channels": cfg["oracle_channels"] or cfg["channels"], "iterations": cfg["oracle_iterations"],
            "epochs": None, "val_every": cfg["oracle_val_every"],
            "val_select_slices": min(cfg["val_select_slices"], cfg["oracle_val_slices"]),
            "train_slices": None, "val_slices": None, "test_slices": None}


def run_oracle(cfg: dict, opener, state: RunState | None, device: str, progress: bool = True,
               model=None, synthetic: dict | None = None) -> tuple["pandas.DataFrame", dict]:
    """The synthetic oracle check: a Prob. U-Net on synthetic LIDC against the oracle sampler.

    ``model``/``synthetic``: reuse a Prob. U-Net already trained on synthetic data (the chapter on
    the embedded default); otherwise one is trained on ``oracle_*_slices`` synthetic slices with
    the ``oracle_*`` schedule. Returns the table and the training summary.
    """
    seed = int(cfg["seed"])
    ocfg = oracle_config(cfg)
    summary = {}
    if model is None:
        n = {"train": cfg["oracle_train_slices"], "val": cfg["oracle_val_slices"], "test": cfg["oracle_test_slices"]}
        syn = {s: opener("lidc", s, synthetic=True, n=n[s]) for s in ("train", "val", "test")}
        synthetic = {"datasets": syn, "data": prepare_data(syn, ocfg)}
        fitted = train_models(ocfg, synthetic["data"], device, state, progress, models=["prob_unet"], prefix="oracle-")
        model = fitted["prob_unet"].model
        summary = {**fitted["prob_unet"].summary(), "validations": fitted["prob_unet"].validations}
    table = oracle_check(model, synthetic["datasets"]["test"], synthetic["data"]["test"], cfg["sample_counts"],
                         device, seed + 11)
    return table, {"training": summary, "slices": {s: len(d["images"]) for s, d in synthetic["data"].items()}}


def open_and_prepare(cfg: dict, opener) -> tuple[dict, dict]:
    """The three LIDC splits opened through ``opener`` and prepared (crop, subsets) as ``cfg`` says."""
    datasets = {s: opener("lidc", s) for s in ("train", "val", "test")}
    data = prepare_data(datasets, cfg)
    for split, d in data.items():
        how = "all" if len(d["images"]) == len(datasets[split]) else ("random slices" if split == "train" else cfg["eval_subset"])
        opener.note_subset(datasets[split], len(d["images"]), f"{how}, central {cfg['crop']} px" if cfg["crop"] else how)
    return datasets, data


def run_experiment(cfg: dict, opener, state: RunState | None = None, device: str = "cpu", progress: bool = True,
                   oracle: bool = True, prepared: tuple[dict, dict] | None = None) -> dict:
    """The whole chapter: data, every model trained and selected on validation, test evaluation, oracle check.

    Called by the notebook (``opener`` = the chapter run's; ``prepared`` = :func:`open_and_prepare`'s result
    when the notebook already has the data) and by the command line. Returns the
    prepared data, the fitted models, the evaluations and their tables, the oracle table, and the
    ``results`` mapping written as ``results.json`` by a committed run.
    """
    seed = int(cfg["seed"])
    datasets, data = prepared or open_and_prepare(cfg, opener)
    trained = train_models(cfg, data, device, state, progress)
    pick = example_slices(data["test"])
    counts = cfg["sample_counts"]
    evals = {}
    for name, res in trained.items():
        limit = int(cfg["max_samples"].get(name, max(counts)))
        evals[name] = evaluate_model(res.model, data["test"], [c for c in counts if c <= limit], device, seed + 7,
                                     cfg["hm_iou_samples"], keep_examples=pick.values(), progress=progress,
                                     desc=f"test {TITLES[name]}")
    curve, table, by_graders = summarize(evals, data["test"], cfg["n_boot"], seed, cfg["table_samples"])
    oracle_table, oracle_info = (None, {})
    if oracle:
        reuse = datasets["train"].synthetic and "prob_unet" in trained
        oracle_table, oracle_info = run_oracle(cfg, opener, state, device, progress,
                                               model=trained["prob_unet"].model if reuse else None,
                                               synthetic={"datasets": datasets, "data": data} if reuse else None)
    results = {
        "config": dict(cfg),
        "data": {s: {"slices": int(len(d["images"])), "patients": int(len(np.unique(d["groups"]))),
                     "crop": cfg["crop"], "synthetic": bool(datasets[s].synthetic)} for s, d in data.items()},
        "training": {m: {**r.summary(), "best_step": r.best_step, "best_val_ged": r.best["val_ged"]["value"],
                         "val_history": r.validations, "loss_history": r.history[:: max(1, len(r.history) // 60)]}
                     for m, r in trained.items()},
        "curve": curve.to_dict(orient="records"), "table": table.to_dict(orient="records"),
        "by_graders": by_graders.to_dict(orient="records"),
        "paired": paired_differences({m: e.ged for m, e in evals.items()}, {m: e.sample_counts for m, e in evals.items()},
                                     data["test"]["groups"], int(cfg["table_samples"]), int(cfg["n_boot"]), seed),
    }
    return {"datasets": datasets, "data": data, "trained": trained, "evals": evals, "pick": pick, "curve": curve,
            "table": table, "by_graders": by_graders, "oracle": oracle_table, "oracle_info": oracle_info,
            "results": results, "stopped_early": stopped_early(trained),
            "rows": tidy_rows(results, oracle_table, oracle_info.get("slices", {}).get("test", 0))}


def tidy_rows(results: dict, oracle: "pandas.DataFrame | None" = None, oracle_slices: int = 0) -> list[dict]:
    """One tidy row (:mod:`medad.results`) per number of a run's ``results`` and its oracle table."""
    from medad.results import row

    dataset = "synthetic LIDC" if results["data"]["test"]["synthetic"] else "LIDC"
    cfg = results["config"]
    ts = cfg.get("table_samples", 16)
    rows = []
    for c in results["curve"]:
        setting = f"{c['samples']} samples"
        rows.append(row(dataset, setting, c["title"], "GED", c["mean"], c["low"], c["high"], n=c["n"]))
        rows.append(row(dataset, setting, c["title"], "GED, official convention (non-NaN slices)",
                        c["official_nanmean"], n=c["n"]))
        rows.append(row(dataset, setting, c["title"], "NaN slices, official convention", c["official_nan_fraction"], n=c["n"]))
    n_test = results["data"]["test"]["slices"]
    for t in results["table"]:
        rows.append(row(dataset, f"{ts} samples", t["title"], "sample diversity", t[f"diversity@{ts}"], n=n_test))
        rows.append(row(dataset, f"{cfg.get('hm_iou_samples', 16)} samples", t["title"], "HM-IoU", t["HM-IoU"],
                        t.get("HM-IoU low", math.nan), t.get("HM-IoU high", math.nan), n=n_test))
    for b in results["by_graders"]:
        rows.append(row(dataset, f"{b['samples']} samples, {b['graders']} graders marked", b["title"], "GED",
                        b["mean"], b["low"], b["high"], n=b["n"]))
    for p in results.get("paired", []):  # runs before the paired differences have none
        rows.append(row(dataset, f"{p['samples']} samples, paired difference", p["title"], "GED", p["mean"], p["low"],
                        p["high"], n=p["n"]))
    for model, t in results["training"].items():
        rows.append(row(dataset, f"step {t['best_step']} of {t['steps']} kept", TITLES.get(model, model),
                        "validation GED", t["best_val_ged"], n=cfg.get("val_select_slices", 0)))
    if oracle is not None:
        for o in oracle.to_dict(orient="records"):
            rows.append(row("synthetic LIDC", f"{o['samples']} samples, {o['reference']}", o["sampler"], "GED",
                            o["ged"], n=oracle_slices))
    return rows


def schedule_text(results: dict, oracle_info: dict | None, threads: int) -> str:
    """A few words that say how long and how big the run was, taken from its own numbers."""
    cfg = results["config"]
    steps = sorted({t["steps"] for t in results["training"].values()})
    iters = f"{steps[0]:,}" if len(steps) == 1 else f"{steps[0]:,}–{steps[-1]:,}"
    crop = f"{cfg['crop']}x{cfg['crop']} px crops" if cfg.get("crop") else "whole 128x128 slices"
    minutes = sum(t["seconds"] for t in results["training"].values()) / 60
    text = (f"{iters} iterations per model, batch {cfg['batch_size']}, channels {'-'.join(map(str, cfg['channels']))}, "
            f"{crop}, {results['data']['train']['slices']:,} training slices, {cfg['precision']}"
            f"{', channels-last' if cfg['channels_last'] else ''}, {threads} CPU thread(s), {minutes:.0f} min of training")
    if oracle_info and oracle_info.get("training"):
        text += f"; synthetic oracle check {oracle_info['training']['steps']:,} iterations"
    return text


def write_committed(record: RunRecord, out: dict) -> Path:
    """The run's folder: table.csv, provenance.json, results.json, per_slice.npz, examples.npz, oracle.json."""
    from medad.experiment.checkpoint import atomic_write_json
    from medad.experiment.precision import describe

    evals, test = out["evals"], out["data"]["test"]

    def per_slice(path: Path) -> None:
        np.savez_compressed(path, groups=test["groups"], graders_marked=grader_counts(test),
                            **{f"ged_{m}": e.ged.astype(np.float16) for m, e in evals.items()},
                            **{f"counts_{m}": np.array(e.sample_counts) for m, e in evals.items()},
                            **{f"hm_iou_{m}": e.hm_iou.astype(np.float16) for m, e in evals.items()},
                            **{f"diversity_{m}": e.diversity.astype(np.float16) for m, e in evals.items()})

    files = {"results.json": lambda p: atomic_write_json(p, {"run": record.name, "profile": record.profile, **out["results"]}),
             "per_slice.npz": per_slice,
             "examples.npz": lambda p: save_examples(p, test, out["pick"], evals)}
    if out["oracle"] is not None:
        files["oracle.json"] = lambda p: atomic_write_json(p, {"data": "synthetic LIDC (medad.data.synthetic.synthetic_lidc)",
                                                               **out["oracle_info"], "table": out["oracle"].to_dict(orient="records")})
    cfg = out["results"]["config"]
    return record.write(out["rows"],
                        schedule_text(out["results"], out["oracle_info"], record.threads),
                        precision=describe(cfg["precision"], cfg["channels_last"]),
                        extra={"stopped_early": out["stopped_early"]}, files=files)


def main(argv=None) -> None:
    args = cli.parser(CHAPTER, "Train and evaluate the Prob. U-Net chapter's models; write results/prob_unet/<name>/")
    args.add_argument("--models", default=None, help="comma-separated subset of the profile's models")
    args.add_argument("--no-oracle", action="store_true", help="skip the synthetic oracle check")
    ns = args.parse_args(argv)
    record = cli.make_record(CHAPTER, ns, code_files=CODE_FILES, overrides={"models": cli.name_list(ns.models, "--models")})
    out = run_experiment(record.config, record.opener, record.state, record.device, progress=True, oracle=not ns.no_oracle)
    for model, note in out["stopped_early"].items():
        print(f"{TITLES[model]}: stopped by the time cap after {note}")
    print(f"results written to {write_committed(record, out)}")


main = cli.main_for(CHAPTER, main, on_interrupt="finished models and checkpoints are kept; to resume, rerun")


if __name__ == "__main__":
    sys.exit(main())
