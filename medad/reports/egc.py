"""Plumbing of the early-gastric-cancer chapter: tables of a run next to the reported numbers, the figures.

Every table names the stand-in data (lower-GI endoscopy, not gastric cancer) in its dataset
column or caption; numbers are fractions, shown with their 95% intervals.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from medad.results import format_interval
from medad.train.egc_experiment import CLS_DATASET, SEG_DATASET, STANDIN

CLS_COLUMNS = {"accuracy": "Accuracy", "precision": "Precision", "recall": "Recall", "specificity": "Specificity",
               "f1": "F1", "auc": "AUC"}
ATTENTION_COLUMNS = {"attention_iou": "Attention IoU", "pointing_game": "Pointing game",
                     "accuracy_overlays_blanked": "Accuracy, overlays blanked", "p_lesion_clean": "P(lesion), lesion images",
                     "p_lesion_lesion_blurred": "P(lesion), lesion blurred", "recall_lesion_blurred": "Recall, lesion blurred"}
SEG_COLUMNS = {"pixel_accuracy": "PA", "iou": "IoU", "dice": "Dice"}
PIPELINE_COLUMNS = {"two_stage_dice_lesion": "Dice on lesion images (0 if missed)",
                    "two_stage_normal_flagged": "Normal images with lesion pixels"}


def _cells(table: pd.DataFrame, columns: dict, digits: int = 3) -> pd.DataFrame:
    """Rows = method, one column per metric in ``columns``, cells 'value (low–high)'."""
    part = table[table["metric"].isin(columns)]
    if part.empty:
        return pd.DataFrame(columns=["Method", *columns.values()])
    shown = part.assign(cell=[format_interval(v, lo, hi, digits) for v, lo, hi in
                              zip(part["value"], part["ci_low"], part["ci_high"])])
    wide = shown.pivot_table(index="method", columns="metric", values="cell", aggfunc="first", sort=False)
    wide = wide.reindex(columns=[c for c in columns if c in wide.columns]).rename(columns=columns)
    wide.columns.name = None
    return wide.fillna("–").reset_index().rename(columns={"method": "Method"})


def _ours_and_reported(ours: pd.DataFrame, reported: pd.DataFrame | None, columns: dict, data: str) -> pd.DataFrame:
    mine = _cells(ours, columns)
    mine.insert(1, "Data", data)
    rows = [mine]
    for dataset, part in ([] if reported is None else reported[reported["metric"].isin(columns)].groupby("dataset", sort=False)):
        cells = _cells(part, columns)
        cells["Method"] = cells["Method"] + " (reported)"
        cells.insert(1, "Data", dataset)
        rows.append(cells)
    return pd.concat(rows, ignore_index=True).fillna("–")


def classification_table(ours: pd.DataFrame, reported: pd.DataFrame | None, label: str) -> pd.DataFrame:
    """Our classifiers (``label`` names the run) and the reported rows, one row per method."""
    return _ours_and_reported(ours[ours["dataset"] == STANDIN[CLS_DATASET]], reported, CLS_COLUMNS,
                              f"{label}: endoscopy_ad STAND-IN")


def attention_table(ours: pd.DataFrame) -> pd.DataFrame:
    return _cells(ours[ours["dataset"] == STANDIN[CLS_DATASET]], ATTENTION_COLUMNS)


def segmentation_table(ours: pd.DataFrame, reported: pd.DataFrame | None, label: str) -> pd.DataFrame:
    mine = ours[(ours["dataset"] == STANDIN[SEG_DATASET]) & (ours["setting"] == "test")]
    return _ours_and_reported(mine, reported, SEG_COLUMNS, f"{label}: Kvasir-SEG STAND-IN")


def show(table: pd.DataFrame, caption: str) -> None:
    """Display a table without its index, with a caption."""
    from IPython.display import display

    display(table.style.hide(axis="index").set_caption(caption))


def sources(reported: pd.DataFrame, metrics: dict) -> str:
    """One line per reported data set: where its numbers come from (for a table's caption)."""
    rep = reported[reported["metric"].isin(metrics)].drop_duplicates(["dataset", "source"])
    return "; ".join(f"{d}: {s}" for d, s in zip(rep["dataset"], rep["source"]))


def pipeline_table(ours: pd.DataFrame) -> pd.DataFrame:
    return _cells(ours[ours["setting"] == "test, two-stage"], PIPELINE_COLUMNS)


def value(table: pd.DataFrame, method_prefix: str, metric: str) -> float:
    """One number of a tidy table (the first method starting with ``method_prefix``); NaN when absent."""
    hit = table[table["method"].str.startswith(method_prefix) & (table["metric"] == metric)]
    return float(hit["value"].iloc[0]) if len(hit) else float("nan")


def example_figure(result: dict, n: int = 4, title_data: str = STANDIN[CLS_DATASET]):
    """Test lesion images: image, true mask, GAIN attention, plain Grad-CAM, CA-U-Net output (two-stage)."""
    import matplotlib.pyplot as plt

    from medad import viz

    test = result["data"]["cls"]["test"]
    keep = result["keep"]
    first = next(iter(keep.values()))
    lesion_index = first["lesion_index"][:n]
    pipeline = result.get("pipeline")
    columns = ["image", "lesion mask"] + [f"{_short(m)} attention" for m in keep] + (["two-stage output"] if pipeline else [])
    fig, axes = plt.subplots(len(lesion_index), len(columns), figsize=(1.9 * len(columns), 1.9 * len(lesion_index)),
                             squeeze=False)
    for r, i in enumerate(lesion_index):
        image = test["images"][i]
        viz.show_image(axes[r, 0], image, columns[0] if r == 0 else "")
        viz.show_image(axes[r, 1], image, columns[1] if r == 0 else "")
        viz.overlay_mask(axes[r, 1], test["masks"][i])
        for c, (method, kept) in enumerate(keep.items(), start=2):
            viz.show_image(axes[r, c], image, columns[c] if r == 0 else "")
            axes[r, c].imshow(kept["maps"][r], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            axes[r, c].contour(test["masks"][i].astype(float), levels=[0.5], colors=["white"], linewidths=0.8)
            axes[r, c].text(2, image.shape[0] - 4, f"P(lesion) {kept['prob'][i]:.2f}", color="white", fontsize=7)
        if pipeline:
            c = len(columns) - 1
            pred = pipeline["pred"][i]
            small = _resize(image, pred.shape[0])
            viz.show_image(axes[r, c], small, columns[c] if r == 0 else "")
            viz.overlay_mask(axes[r, c], pred, colour="#00e5ff")
    fig.suptitle(f"Test lesion images of {title_data}", fontsize=9)
    fig.tight_layout()
    return fig


def _short(method: str) -> str:
    return {"gain": "GAIN", "plain": "plain"}.get(method, method)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def training_curves(result: dict):
    """Validation score per epoch of every trained model of a run (the epoch kept is the best one)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, history in result["histories"].items():
        ax = axes[0] if name.startswith("cls") else axes[1]
        ax.plot([h["epoch"] for h in history], [h["val"] for h in history], marker="o", label=name.split("-", 1)[1])
    axes[0].set(title="Classifiers (endoscopy_ad STAND-IN)", xlabel="epoch", ylabel="validation ROC AUC")
    axes[1].set(title="Segmenters (Kvasir-SEG STAND-IN)", xlabel="epoch", ylabel="validation Dice")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    fig.tight_layout()
    return fig
