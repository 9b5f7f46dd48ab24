"""Report plumbing of the Probabilistic U-Net chapter: the long run's tidy table, figures and display tables.

``tidy_long_run`` turns a run folder written by ``medad.train.prob_unet_experiment``
(``results.json``, ``oracle.json``) into the rows of ``medad.results`` (one row per
number, with its 95% patient-bootstrap interval where the run has one);
``convert_long_run`` writes them as the run's ``table.csv`` and adds ``kind`` and
``schedule`` to its ``provenance.json``, keeping every other file::

    python -m medad.reports.prob_unet results/prob_unet/long-cpu-2026-11-22
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from medad import results, viz
from medad.errors import DataError
from medad.models.ambiguous import TITLES
from medad.train import prob_unet_experiment as experiment

CHAPTER = "prob_unet"
MODULES = ("medad.models.prob_unet", "medad.models.seg_baselines", "medad.metrics.ged",
           "medad.train.prob_unet_experiment", "medad.data.lidc")


# ----------------------------------------------------------------------------- committed long run -> tidy table


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path} is missing: a Prob. U-Net run folder holds results.json (and oracle.json)")
    return json.loads(path.read_text())


def tidy_long_run(long: dict, oracle: dict | None = None) -> list[dict]:
    """One tidy row per number of a run folder's ``results.json`` and ``oracle.json`` (runs made before the harness)."""
    table = pd.DataFrame(oracle["table"]) if oracle else None
    return experiment.tidy_rows(long, table, oracle["slices"]["test"] if oracle else 0)


def long_run_schedule(long: dict, provenance: dict, oracle: dict | None = None) -> str:
    """A few words that say how long and how big the run was, taken from its own files."""
    cfg = long["config"]
    steps = sorted({t["steps"] for t in long["training"].values()})
    iters = f"{steps[0]:,}" if len(steps) == 1 else f"{steps[0]:,}–{steps[-1]:,}"
    crop = f"{cfg['crop']}x{cfg['crop']} px crops" if cfg.get("crop") else "whole 128x128 slices"
    text = (f"{iters} iterations per model, batch {cfg['batch_size']}, channels {'-'.join(map(str, cfg['channels']))}, "
            f"{crop}, {long['data']['train']['slices']:,} training slices, {provenance.get('threads', '?')} CPU thread(s), "
            f"{provenance['seconds'] / 60:.0f} min")
    if oracle:
        text += f"; synthetic oracle check {oracle['training']['steps']:,} iterations"
    return text


def convert_long_run(folder: str | Path) -> Path:
    """Write ``table.csv`` of a long-run folder and add ``kind``/``schedule`` to its provenance."""
    folder = Path(folder)
    long = _read_json(folder / "results.json")
    provenance = _read_json(folder / "provenance.json")
    oracle = json.loads((folder / "oracle.json").read_text()) if (folder / "oracle.json").is_file() else None
    provenance = {**provenance, "kind": "long-cpu", "schedule": long_run_schedule(long, provenance, oracle)}
    return results.write_run(provenance.get("chapter", CHAPTER), folder.name, tidy_long_run(long, oracle), provenance,
                              root=folder.parent.parent)


# ----------------------------------------------------------------------------- headline


def headline_rows(table: pd.DataFrame, samples: int = 16) -> pd.DataFrame:
    """The rows the literature reports: GED and HM-IoU with ``samples`` samples on LIDC."""
    keep = table["setting"].eq(f"{samples} samples") & table["metric"].isin(["GED", "HM-IoU"]) & table["dataset"].eq("LIDC")
    return table[keep]


def long_run_files(run) -> dict:
    """The long run's own results.json (curves, by-graders) for the headline figure."""
    return _read_json(run.path / "results.json")


def value(table: pd.DataFrame, method: str, metric: str, setting: str, dataset: str | None = None) -> tuple[float, float, float]:
    """(value, low, high) of one row; NaNs when the row is absent."""
    sel = table["method"].eq(method) & table["metric"].eq(metric) & table["setting"].eq(setting)
    if dataset:
        sel &= table["dataset"].eq(dataset)
    if not sel.any():
        return (math.nan, math.nan, math.nan)
    r = table[sel].iloc[0]
    return (float(r["value"]), float(r["ci_low"]), float(r["ci_high"]))


def interval(table: pd.DataFrame, method: str, metric: str, setting: str, dataset: str | None = None) -> str:
    """One row as ``0.450 (0.391–0.506)``."""
    return results.format_interval(*value(table, method, metric, setting, dataset))


# ----------------------------------------------------------------------------- figures


def plot_curve(curve: pd.DataFrame, title: str, ax=None):
    """GED against the number of samples, one line per model, 95% bootstrap band."""
    ax = ax or plt.subplots(figsize=(6, 3.6))[1]
    counts = sorted(curve["samples"].unique())
    for name, part in curve.groupby("title", sort=False):
        ax.plot(part["samples"], part["mean"], marker="o", label=name, lw=1.2)
        ax.fill_between(part["samples"], part["low"], part["high"], alpha=0.2)
    ax.set(xscale="log", xlabel="samples per slice N (count, log scale)", ylabel="GED (1 − IoU units; lower is better)",
           title=title)
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.legend(fontsize=7)
    return ax


def bars_with_ci(by: pd.DataFrame, ax, ylabel: str, title: str):
    """Grouped bars (graders x model) with the patient-bootstrap 95% interval as error bars."""
    order = list(dict.fromkeys(by["title"]))
    piv = {v: by.pivot(index="graders", columns="title", values=v)[order] for v in ("mean", "low", "high")}
    yerr = np.stack([(piv["mean"] - piv["low"]).values.T, (piv["high"] - piv["mean"]).values.T], axis=1)
    piv["mean"].plot.bar(ax=ax, yerr=yerr, rot=0, capsize=2, error_kw={"lw": 0.8})
    ax.set(xlabel="graders who marked the slice (count)", ylabel=ylabel, title=title)
    ax.legend(fontsize=6)


def headline_figure(run):
    long = long_run_files(run)
    ts = long["config"].get("table_samples", 16)
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.9))  # about the column's width: labels stay legible
    plot_curve(pd.DataFrame(long["curve"]), "test GED against samples", ax=axes[0])
    bars_with_ci(pd.DataFrame(long["by_graders"]), axes[1], f"GED, {ts} samples (1 − IoU units)",
                 "GED by grader agreement")
    fig.suptitle(f"Committed run {run.name}: LIDC test slices, 95% patient-bootstrap intervals", fontsize=10)
    fig.tight_layout()
    return fig


def training_figure(trained: dict, kind: str):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for name, res in trained.items():
        hist = pd.DataFrame(res.history)
        axes[0].plot(hist["step"], hist["loss"], label=TITLES[name], lw=1)
        val = pd.DataFrame(res.validations)
        axes[1].plot(val["step"], val["val_ged"], marker="o", label=TITLES[name], lw=1)
    axes[0].set(yscale="log", xlabel="iteration (steps)", ylabel="training loss (nats per slice)",
                title=f"LIDC ({kind}): training loss")
    axes[1].set(xlabel="iteration (steps)", ylabel="validation GED (1 − IoU units)", title="model selection on validation")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def examples_from_build(data: dict, evals: dict, pick: dict[int, int]) -> dict:
    """This build's example slices in the form :func:`medad.train.prob_unet_experiment.load_examples` returns."""
    index = [pick[k] for k in sorted(pick)]
    return {"marked_by": np.array(sorted(pick)), "images": data["images"][index], "grader_masks": data["grader_masks"][index],
            "samples": {m: np.stack([ev.examples[i] for i in index]) for m, ev in evals.items()}}


def samples_figure(examples: dict, kind: str, n_show: int = 4):
    """Rows: test slices marked by 1..4 graders; columns: image, graders, Prob. U-Net samples, one per baseline.

    ``examples``: a committed run's ``examples.npz`` (``load_examples``) or :func:`examples_from_build`.
    """
    samples = examples["samples"]
    rows = list(enumerate(examples["marked_by"]))
    fig, axes = plt.subplots(len(rows), 5 + 2 * n_show, figsize=(1.25 * (5 + 2 * n_show), 1.45 * len(rows)), squeeze=False)
    other = [m for m in samples if m != "prob_unet"]
    for r, (i, k) in enumerate(rows):
        img = examples["images"][i]
        viz.show_image(axes[r, 0], img, f"{k} grader(s)")
        for g in range(4):
            viz.show_image(axes[r, 1 + g], img, f"grader {g}" if r == 0 else "")
            viz.overlay_mask(axes[r, 1 + g], examples["grader_masks"][i, g], viz.GRADER_COLOURS[g])
        for j in range(n_show):
            viz.show_image(axes[r, 5 + j], img, f"Prob. U-Net {j + 1}" if r == 0 else "")
            viz.overlay_mask(axes[r, 5 + j], samples["prob_unet"][i, j] if "prob_unet" in samples else None)
        for j in range(n_show):  # one sample of each baseline (ensemble, M-heads: the second member or head)
            ax = axes[r, 5 + n_show + j]
            if j < len(other):
                m = other[j]
                viz.show_image(ax, img, TITLES[m] if r == 0 else "")
                viz.overlay_mask(ax, samples[m][i, 1 % samples[m].shape[1]], "#00bfff")
            else:
                ax.axis("off")
    fig.suptitle(f"LIDC ({kind}) test slices: graders (left) and model samples (right)", fontsize=9)
    fig.tight_layout()
    return fig


def oracle_figure(oracle: pd.DataFrame):
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    sns.lineplot(data=oracle, x="samples", y="ged", hue="sampler", style="reference", marker="o", ax=ax)
    counts = sorted(oracle["samples"].unique())
    ax.set(xscale="log", xlabel="samples per slice N (count, log scale)", ylabel="mean GED (1 − IoU units)",
           title="Synthetic LIDC: Prob. U-Net against the oracle sampler")
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- tables of this build


def oracle_value(oracle: pd.DataFrame, sampler: str, samples: int, reference: str = "vs true distribution") -> float:
    sel = oracle["sampler"].eq(sampler) & oracle["reference"].eq(reference) & oracle["samples"].eq(samples)
    return float(oracle.loc[sel, "ged"].iloc[0]) if sel.any() else math.nan


def table_interval(table: pd.DataFrame, model: str, ts: int) -> str:
    """A model's GED with ``ts`` samples and its interval, from this build's table."""
    row = table.set_index("model")
    if model not in row.index:
        return "–"
    r = row.loc[model]
    return results.format_interval(r[f"GED@{ts}"], r[f"GED@{ts} low"], r[f"GED@{ts} high"])


def official_nan_fraction(curve: pd.DataFrame, model: str, ts: int) -> float:
    sel = curve["model"].eq(model) & curve["samples"].eq(ts)
    return float(curve.loc[sel, "official_nan_fraction"].iloc[0]) if sel.any() else math.nan


def split_table(data: dict) -> pd.DataFrame:
    size = data["train"]["images"].shape[-1]
    return pd.DataFrame({split: {"slices": len(d["images"]), "patients": len(np.unique(d["groups"])),
                                 "size (px)": f"{size}x{size}"} for split, d in data.items()}).T.rename_axis("split")


def model_table(table: pd.DataFrame, ts: int) -> pd.DataFrame:
    """Per model: GED at 1 and ``ts`` samples (with interval), diversity, HM-IoU — five named columns."""
    shown = pd.DataFrame({
        "model": table["title"],
        "GED, 1 sample": table["GED@1"].map("{:.3f}".format),
        f"GED, {ts} samples (95% CI)": [results.format_interval(v, lo, hi) for v, lo, hi in
                                        zip(table[f"GED@{ts}"], table[f"GED@{ts} low"], table[f"GED@{ts} high"])],
        f"diversity, {ts}": table[f"diversity@{ts}"].map("{:.3f}".format),
        "HM-IoU": table["HM-IoU"].map("{:.3f}".format),
    })
    return shown.set_index("model")


def training_table(trained: dict) -> pd.DataFrame:
    """Per model: steps run (and whether the time cap stopped it), the step kept, its validation GED, seconds."""
    rows = {}
    for m, r in trained.items():
        total = r.settings["loop"]["steps"]
        rows[TITLES[m]] = {"steps run": f"{r.steps:,}" + (f" of {total:,} (time cap)" if r.stopped_by != "steps" else ""),
                           "step kept": int(r.best_step), "validation GED": float(r.best["val_ged"]["value"]),
                           "seconds (wall)": round(r.seconds, 1)}
    return pd.DataFrame(rows).T


def official_table(curve: pd.DataFrame, ts: int) -> pd.DataFrame:
    part = curve[curve["samples"] == ts].set_index("title")
    return pd.DataFrame({
        "GED, d(∅,∅) = 0": part["mean"].map("{:.3f}".format),
        "NaN slices, official": part["official_nan_fraction"].map("{:.1%}".format),
        "GED of the rest, official": part["official_nanmean"].map(results.format_interval),
    }).rename_axis("model")


def main(argv=None) -> int:
    for folder in (argv if argv is not None else sys.argv[1:]):
        print(convert_long_run(folder) / "table.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
