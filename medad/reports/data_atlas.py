"""Report plumbing of the data atlas: overview table, per-dataset blocks, LIDC agreement figures."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from medad import atlas, viz
from medad.data import get_spec, manifest
from medad.data.lidc import grader_count, load_arrays
from medad.reports import common

MODULES = ("medad.data", "medad.data.registry", "medad.data.lidc", "medad.data.synthetic", "medad.atlas")

STAT_COLUMNS = {"images_measured": "images", "most_common_size": "size (px)", "channels": "channels",
                "intensity_mean": "mean (0–255)", "intensity_std": "s.d. (0–255)", "mask_fraction": "mask area"}


def overview_table(names, real: dict) -> pd.DataFrame:
    rows = []
    for n in names:
        spec = get_spec(n)
        rows.append({"dataset": n, "title": spec.title, "classes": ", ".join(spec.classes) or "(masks only)",
                     "data": "real" if real[n] else "synthetic",
                     "licence": manifest()[spec.manifest_key].get("licence", "")})
    return pd.DataFrame(rows).set_index("dataset")


def dataset_block(run, name: str, real: bool, cfg: dict) -> tuple[str, pd.DataFrame]:
    """Show one dataset (heading, sample grid, class balance); return its display name and image statistics."""
    from IPython.display import Markdown, display

    splits = {split: run.open_dataset(name, split, synthetic=not real) for split in get_spec(name).splits}
    train = splits["train"]
    shown = train.display_name
    display(Markdown(f"### {shown}"))
    idx = atlas.pick(len(train), cfg["samples_per_grid"], run.seed)
    samples = [train[int(i)] for i in idx]
    fig = viz.sample_grid(samples, train.classes, title=f"{shown}: seeded training samples")
    common.show_figure(fig, grid_caption(samples))
    display(common.show_table(atlas.class_balance(splits), caption=f"{shown}: images per class and split"))
    stats = atlas.image_statistics(train, cfg["stats_images"], run.seed)
    stats["dataset"] = shown
    return shown, stats


def grid_caption(samples) -> str:
    """What the sample grid shows, for this dataset's kind of annotation."""
    parts = ["Class label above each image"] if any(s.label is not None and s.label >= 0 for s in samples) else []
    if any(s.grader_masks is not None for s in samples):
        parts.append("each grader's outline in its own colour (no outline: that grader did not mark the slice)")
    elif any(s.mask is not None and s.mask.any() for s in samples):
        parts.append("lesion masks filled in gold")
    text = "; ".join(parts) or "Seeded training images"
    return text[0].upper() + text[1:] + "."


def statistics_table(summaries: dict) -> pd.DataFrame:
    table = pd.DataFrame(summaries).T[list(STAT_COLUMNS)].rename(columns=STAT_COLUMNS)
    for column in ("mean (0–255)", "s.d. (0–255)", "mask area"):
        table[column] = pd.to_numeric(table[column], errors="coerce")
    return table.rename_axis("dataset")


def intensity_figure(all_stats: pd.DataFrame):
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(8, max(2.8, 0.5 * all_stats["dataset"].nunique() + 1)))
    sns.boxplot(data=all_stats, y="dataset", x="mean", hue="class", ax=ax, fliersize=1, linewidth=0.7)
    ax.set(xlabel="mean intensity of an image (grey level, 0–255)", ylabel="dataset",
           title="Mean image intensity by dataset and class")
    ax.legend(fontsize=7, title="class", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def lidc_arrays(run, real: bool) -> dict:
    splits = {split: run.open_dataset("lidc", split, synthetic=not real) for split in ("train", "val", "test")}
    return {"kind": "synthetic" if splits["train"].synthetic else "real",
            "arrays": {split: load_arrays(ds) for split, ds in splits.items()}}


def agreement_figure(per_split: pd.DataFrame, kind: str):
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    per_split.plot.bar(ax=ax, rot=0)
    ax.set(xlabel="graders who marked the slice (count)", ylabel="fraction of slices",
           title=f"LIDC ({kind}): graders who marked a slice, per split")
    ax.legend(title="split", fontsize=7)
    fig.tight_layout()
    return fig


def disagreement_figure(test: dict, kind: str, rows: int = 4):
    """The test slices with the largest mean pairwise 1 − IoU among slices at least one grader marked."""
    disagreement = atlas.pairwise_disagreement(test["grader_masks"])
    marked = grader_count(test["grader_masks"]) > 0
    order = np.argsort(-np.where(marked, disagreement, -1))[:rows]
    fig, axes = plt.subplots(len(order), 6, figsize=(9, 1.6 * len(order)), squeeze=False)
    for row, i in zip(axes, order):
        viz.show_image(row[0], test["images"][i], f"{test['groups'][i]}")
        for g in range(4):
            viz.show_image(row[g + 1], test["images"][i], f"grader {g}")
            viz.overlay_mask(row[g + 1], test["grader_masks"][i, g], viz.GRADER_COLOURS[g])
        viz.show_image(row[5], test["images"][i], f"1-IoU {disagreement[i]:.2f}")
        viz.outline_masks(row[5], test["grader_masks"][i])
    fig.suptitle(f"LIDC ({kind}) test slices with the largest grader disagreement", fontsize=10)
    fig.tight_layout()
    return fig
