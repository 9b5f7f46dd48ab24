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
from medad.experiment.precision import describe
from medad.errors import DataError
from medad.models.ambiguous import TITLES
from medad.reports import style
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


def _minutes(long: dict, provenance: dict) -> float:
    """The run's minutes: its models' training seconds summed where it was resumed across invocations (the
    provenance's ``seconds`` of a run written before the harness counted only the last invocation)."""
    training = sum(float(t.get("seconds", 0.0)) for t in long["training"].values())
    return max(training, float(provenance["seconds"])) / 60


def long_run_schedule(long: dict, provenance: dict, oracle: dict | None = None) -> str:
    """A few words that say how long and how big the run was, taken from its own files."""
    cfg = long["config"]
    steps = sorted({t["steps"] for t in long["training"].values()})
    iters = f"{steps[0]:,}" if len(steps) == 1 else f"{steps[0]:,}–{steps[-1]:,}"
    crop = f"{cfg['crop']}x{cfg['crop']} px crops" if cfg.get("crop") else "whole 128x128 slices"
    text = (f"{iters} iterations per model, batch {cfg['batch_size']}, channels {'-'.join(map(str, cfg['channels']))}, "
            f"{crop}, {long['data']['train']['slices']:,} training slices, {provenance.get('threads', '?')} CPU thread(s), "
            f"{_minutes(long, provenance):.0f} min")
    if oracle:
        text += f"; synthetic oracle check {oracle['training']['steps']:,} iterations"
    return text


def paired_from_per_slice(path: Path, cfg: dict) -> list[dict]:
    """:func:`medad.train.prob_unet_experiment.paired_differences` from a committed run's ``per_slice.npz``
    (its per-slice GED is stored as float16: the differences agree with the run's own to about 1e-3)."""
    with np.load(path) as z:
        models = [k[len("ged_"):] for k in z.files if k.startswith("ged_")]
        ged = {m: z[f"ged_{m}"] for m in models}
        counts = {m: [int(c) for c in z[f"counts_{m}"]] for m in models}
        groups = z["groups"]
    return experiment.paired_differences(ged, counts, groups, int(cfg.get("table_samples", 16)),
                                         int(cfg.get("n_boot", 1000)), int(cfg.get("seed", 0)))


def hm_iou_intervals(path: Path, table: list[dict], cfg: dict) -> list[dict]:
    """The per-model table with HM-IoU's patient-bootstrap interval where a run written before the harness lacks it
    and its ``per_slice.npz`` holds the per-slice HM-IoU (float16; the mean is the run's own, kept as written)."""
    from medad.metrics.bootstrap import bootstrap_ci

    with np.load(path) as z:
        per_slice = {k[len("hm_iou_"):]: z[k].astype(np.float64) for k in z.files if k.startswith("hm_iou_")}
        groups = z["groups"]
    out = []
    for t in table:
        if "HM-IoU low" not in t and t["model"] in per_slice:
            est = bootstrap_ci(per_slice[t["model"]], groups, int(cfg.get("n_boot", 1000)), seed=int(cfg.get("seed", 0)))[0]
            t = {**t, "HM-IoU low": est.low, "HM-IoU high": est.high}
        out.append(t)
    return out


def convert_long_run(folder: str | Path) -> Path:
    """Write ``table.csv`` of a long-run folder and add ``kind``/``schedule`` to its provenance."""
    folder = Path(folder)
    long = _read_json(folder / "results.json")
    provenance = _read_json(folder / "provenance.json")
    oracle = json.loads((folder / "oracle.json").read_text()) if (folder / "oracle.json").is_file() else None
    if "paired" not in long and (folder / "per_slice.npz").is_file():  # runs written before results.json had them
        long = {**long, "paired": paired_from_per_slice(folder / "per_slice.npz", long["config"])}
    if (folder / "per_slice.npz").is_file():
        long = {**long, "table": hm_iou_intervals(folder / "per_slice.npz", long["table"], long["config"])}
    cfg = long["config"]
    provenance = {**provenance, "kind": "long-cpu", "schedule": long_run_schedule(long, provenance, oracle),
                  "precision": describe(cfg.get("precision", "fp32"), bool(cfg.get("channels_last", False)))}
    return results.write_run(provenance.get("chapter", CHAPTER), folder.name, tidy_long_run(long, oracle), provenance,
                              root=folder.parent.parent)


# ----------------------------------------------------------------------------- headline


def paired_table(table: pd.DataFrame) -> pd.DataFrame:
    """A run's paired GED differences (Prob. U-Net minus each baseline), one row each; empty for older runs."""
    rows = table[table["setting"].str.endswith("paired difference") & table["metric"].eq("GED")]
    return pd.DataFrame({"comparison": rows["method"], "samples": rows["setting"].str.split(" ").str[0],
                         "GED difference (95% interval)": [results.format_interval(v, lo, hi) for v, lo, hi
                                                           in zip(rows["value"], rows["ci_low"], rows["ci_high"])],
                         "test slices": rows["n"]}).reset_index(drop=True)


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


def plot_curve(curve: pd.DataFrame, title: str, ax=None, legend: bool = True):
    """GED against the number of samples, one line per model, 95% bootstrap band."""
    ax = ax or style.subplots(height=3.8, layout="constrained")[1]
    counts = sorted(curve["samples"].unique())
    for name, part in curve.groupby("title", sort=False):
        ax.plot(part["samples"], part["mean"], marker="o", label=name, lw=1.2)
        ax.fill_between(part["samples"], part["low"], part["high"], alpha=0.2)
    ax.set(xscale="log", xlabel="samples per slice N (log scale)", ylabel="GED (1 − IoU units;\nlower is better)",
           title=title)
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.minorticks_off()
    if legend:
        ax.legend()
    return ax


def bars_with_ci(by: pd.DataFrame, ax, ylabel: str, title: str, legend: bool = True, models: list | None = None):
    """Grouped bars (graders x model) with the patient-bootstrap 95% interval as error bars.

    ``models`` fixes the order and the colours (model i is colour Ci, as in :func:`plot_curve` when
    it draws the same models in the same order), so two panels can share one legend.
    """
    models = models or list(dict.fromkeys(by["title"]))
    order = [m for m in models if m in set(by["title"])]
    piv = {v: by.pivot(index="graders", columns="title", values=v)[order] for v in ("mean", "low", "high")}
    yerr = np.stack([(piv["mean"] - piv["low"]).values.T, (piv["high"] - piv["mean"]).values.T], axis=1)
    piv["mean"].plot.bar(ax=ax, yerr=yerr, rot=0, capsize=2, error_kw={"lw": 0.8}, legend=legend,
                         color=[f"C{models.index(m)}" for m in order])
    ax.set(xlabel="graders who marked the slice", ylabel=ylabel, title=title)


def headline_figure(run):
    """The committed run's GED curve and GED by grader agreement, one legend under both panels."""
    long = long_run_files(run)
    ts = long["config"].get("table_samples", 16)
    fig, axes = style.subplots(1, 2, height=4.4, layout="constrained")
    curve = pd.DataFrame(long["curve"])
    plot_curve(curve, "test GED against samples", ax=axes[0], legend=False)
    bars_with_ci(pd.DataFrame(long["by_graders"]), axes[1], f"GED, {ts} samples\n(1 − IoU units)",
                 "GED by grader agreement", legend=False, models=list(dict.fromkeys(curve["title"])))
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=3)
    fig.suptitle(f"Committed run {run.name}: LIDC test slices,\n95% patient-bootstrap intervals")
    return fig


def training_figure(trained: dict, kind: str):
    fig, axes = style.subplots(1, 2, height=3.8, layout="constrained")
    for name, res in trained.items():
        hist = pd.DataFrame(res.history)
        axes[0].plot(hist["step"], hist["loss"], label=TITLES[name], lw=1)
        val = pd.DataFrame(res.validations)
        axes[1].plot(val["step"], val["val_ged"], marker="o", label=TITLES[name], lw=1)
    axes[0].set(yscale="log", xlabel="iteration (steps)", ylabel="training loss (nats per slice)",
                title=f"LIDC ({kind}):\ntraining loss")
    axes[1].set(xlabel="iteration (steps)", ylabel="validation GED (1 − IoU units)", title="model selection\non validation")
    fig.legend(*axes[1].get_legend_handles_labels(), loc="outside lower center", ncols=3)
    return fig


def examples_from_build(data: dict, evals: dict, pick: dict[int, int]) -> dict:
    """This build's example slices in the form :func:`medad.train.prob_unet_experiment.load_examples` returns."""
    index = [pick[k] for k in sorted(pick)]
    return {"marked_by": np.array(sorted(pick)), "images": data["images"][index], "grader_masks": data["grader_masks"][index],
            "samples": {m: np.stack([ev.examples[i] for i in index]) for m, ev in evals.items()}}


SHORT_TITLES = {"unet": "U-Net", "dropout_unet": "dropout", "unet_ensemble": "ensemble", "mheads": "M-heads"}


def samples_figure(examples: dict, kind: str, n_show: int = 4):
    """Rows: test slices marked by 1..4 graders; columns: the graders' outlines on the image, ``n_show``
    Probabilistic U-Net samples, one sample of each baseline. As wide as the page's column.

    ``examples``: a committed run's ``examples.npz`` (``load_examples``) or :func:`examples_from_build`.
    """
    samples = examples["samples"]
    other = [m for m in samples if m != "prob_unet"]
    columns = ["graders"] + [f"PU {j + 1}" for j in range(n_show)] + [SHORT_TITLES.get(m, TITLES[m]) for m in other]
    panel = (style.WIDTH_IN - 0.4) / len(columns)
    rows = list(enumerate(examples["marked_by"]))
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(style.WIDTH_IN, panel * len(rows) + 1.2), squeeze=False,
                             layout="constrained")
    for r, (i, k) in enumerate(rows):
        img = examples["images"][i]
        viz.show_image(axes[r, 0], img, columns[0] if r == 0 else "")
        viz.outline_masks(axes[r, 0], examples["grader_masks"][i])
        axes[r, 0].axis("on")  # for the row label; no ticks, no frame
        axes[r, 0].set_xticks([]), axes[r, 0].set_yticks([])
        for spine in axes[r, 0].spines.values():
            spine.set_visible(False)
        axes[r, 0].set_ylabel(f"{k} grader{'s' if k > 1 else ''}")
        for j in range(n_show):
            viz.show_image(axes[r, 1 + j], img, columns[1 + j] if r == 0 else "")
            viz.overlay_mask(axes[r, 1 + j], samples["prob_unet"][i, j] if "prob_unet" in samples else None)
        for j, m in enumerate(other):  # one sample of each baseline (ensemble, M-heads: the second member or head)
            ax = axes[r, 1 + n_show + j]
            viz.show_image(ax, img, columns[1 + n_show + j] if r == 0 else "")
            viz.overlay_mask(ax, samples[m][i, 1 % samples[m].shape[1]], "#00bfff")
    # two lines: a committed run's name in ``kind`` would widen the figure past the column
    fig.suptitle(f"LIDC ({kind}) test slices:\ngraders, Prob. U-Net samples (PU), baselines")
    return fig


def oracle_figure(oracle: pd.DataFrame):
    """GED of the model and of the oracle sampler against the number of samples.

    Colour: the sampler. Line style, set explicitly: **solid** = scored against the true
    distribution, **dashed** = scored against the four drawn graders.
    """
    import seaborn as sns

    fig, ax = style.subplots(height=3.8, layout="constrained")
    styles = {"vs true distribution": "", "vs 4 graders": (4, 2)}
    present = [r for r in styles if r in set(oracle["reference"])]
    sns.lineplot(data=oracle, x="samples", y="ged", hue="sampler", style="reference", style_order=present,
                 dashes={r: styles[r] for r in present}, marker="o", ax=ax)
    counts = sorted(oracle["samples"].unique())
    ax.set(xscale="log", xlabel="samples per slice N (log scale)", ylabel="mean GED (1 − IoU units)",
           title="Synthetic LIDC: Prob. U-Net against the oracle sampler")
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.minorticks_off()
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
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
