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

STAT_FIELDS = ("height", "width", "channels", "mean", "std", "mask_fraction", "class")  # atlas.image_statistics
STAT_COLUMNS = {"images_measured": "images", "most_common_size": "size (px)", "channels": "channels",
                "intensity_mean": "mean (0–255)", "intensity_std": "s.d. (0–255)", "mask_fraction": "mask area"}


def overview_table(names, real: dict, data_dir=None) -> pd.DataFrame:
    """One row per dataset; ``data`` says real, not present (a data directory without its archive) or synthetic."""
    absent = "not present" if data_dir is not None else "synthetic"
    rows = []
    for n in names:
        spec = get_spec(n)
        rows.append({"dataset": n, "title": spec.title, "classes": ", ".join(spec.classes) or "(masks only)",
                     "data": "real" if real[n] else absent,
                     "licence": manifest()[spec.manifest_key].get("licence", "")})
    return pd.DataFrame(rows).set_index("dataset")


def dataset_block(run, name: str, real: bool, cfg: dict) -> tuple[str, pd.DataFrame]:
    """Show one dataset (heading, sample grid, class balance); return its display name and image statistics.

    A dataset whose archive is not in the given data directory gets one line saying so, and no
    grid or statistics: pictures of its synthetic counterpart would say nothing about the data.
    Without any data directory (the synthetic build) every dataset is shown through its
    synthetic counterpart, labelled as such.
    """
    from IPython.display import Markdown, display

    if not real and run.data_dir is not None:
        display(Markdown(absent_line(name, run.data_dir)))
        return name, pd.DataFrame(columns=[*STAT_FIELDS, "dataset"])
    splits = {split: run.open_dataset(name, split, synthetic=not real) for split in get_spec(name).splits}
    train = splits["train"]
    shown = train.display_name
    display(Markdown(f"### {shown}"))
    idx = atlas.pick(len(train), cfg["samples_per_grid"], run.seed)
    samples = [train[int(i)] for i in idx]
    # a synthetic counterpart only shows what the generator draws: one row of small panels is enough
    fig = viz.sample_grid(samples, train.classes, title=f"{shown}: seeded training samples",
                          ncols=len(samples) if train.synthetic else None)
    common.show_figure(fig, grid_caption(samples))
    display(common.show_table(atlas.class_balance(splits), caption=f"{shown}: images per class and split"))
    stats = atlas.image_statistics(train, cfg["stats_images"], run.seed)
    stats["dataset"] = shown
    return shown, stats


def absent_line(name: str, data_dir) -> str:
    """``**bmad_his** (BMAD HIS ...): not present in the data directory (bmad missing).``"""
    from medad.data import dataset_status
    from medad.data.registry import describe_status

    why = describe_status(dataset_status(name, data_dir)).removeprefix("NOT REAL: ")
    return f"**{name}** ({get_spec(name).title}): not present in the data directory ({why}); not shown."


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
    """One row per dataset that was measured (datasets not present have no statistics)."""
    measured = {name: summary for name, summary in summaries.items() if summary.get("images_measured")}
    table = pd.DataFrame(measured, index=list(STAT_COLUMNS)).T[list(STAT_COLUMNS)].rename(columns=STAT_COLUMNS)
    for column in ("mean (0–255)", "s.d. (0–255)", "mask area"):
        table[column] = pd.to_numeric(table[column], errors="coerce")
    return table.rename_axis("dataset")


def intensity_figure(all_stats: pd.DataFrame):
    """Mean intensity per image, one box per dataset and class, labelled on the axis (no legend to decode)."""
    import seaborn as sns

    from medad.reports import style

    stats = all_stats.assign(group=[f"{d}: {c}" if c != "-" else d for d, c in zip(all_stats["dataset"], all_stats["class"])])
    order = list(dict.fromkeys(stats.sort_values(["dataset", "class"], kind="stable")["group"]))
    fig, ax = style.subplots(height=max(2.4, 0.32 * len(order) + 1.2), layout="constrained")
    palette = {d: f"C{i % 10}" for i, d in enumerate(dict.fromkeys(stats["dataset"]))}  # colours repeat after ten
    colours = {g: palette[d] for g, d in zip(stats["group"], stats["dataset"])}
    sns.boxplot(data=stats, y="group", x="mean", order=order, hue="group", palette=colours, legend=False, ax=ax,
                fliersize=2, linewidth=0.8)
    ax.set(xlabel="mean intensity of an image (grey level, 0–255)", ylabel="")
    fig.suptitle("Mean image intensity by dataset and class (one colour per dataset)")  # the figure's width, not the axes
    return fig


def lidc_arrays(run, real: bool) -> dict:
    splits = {split: run.open_dataset("lidc", split, synthetic=not real) for split in ("train", "val", "test")}
    return {"kind": "synthetic" if splits["train"].synthetic else "real",
            "arrays": {split: load_arrays(ds, progress=False) for split, ds in splits.items()}}  # no bar in the book


def agreement_figure(per_split: pd.DataFrame, kind: str):
    from medad.reports import style

    fig, ax = style.subplots(height=3.4, width=6.5, layout="constrained")
    per_split.plot.bar(ax=ax, rot=0)
    ax.set(xlabel="graders who marked the slice (count)", ylabel="fraction of slices",
           title=f"LIDC ({kind}): graders who marked a slice, per split")
    ax.legend(title="split")
    return fig


def disagreement_figure(test: dict, kind: str, rows: int = 4):
    """The test slices with the largest mean pairwise 1 − IoU among slices at least one grader marked."""
    from medad.reports import style

    disagreement = atlas.pairwise_disagreement(test["grader_masks"])
    marked = grader_count(test["grader_masks"]) > 0
    order = np.argsort(-np.where(marked, disagreement, -1))[:rows]
    size = style.WIDTH_IN / 6
    fig, axes = plt.subplots(len(order), 6, figsize=(style.WIDTH_IN, (size + 0.3) * len(order) + 0.4), squeeze=False,
                             layout="constrained")
    for r, (row, i) in enumerate(zip(axes, order)):
        viz.show_image(row[0], test["images"][i], f"patient {str(test['groups'][i]).rsplit('-', 1)[-1]}")
        for g in range(4):
            viz.show_image(row[g + 1], test["images"][i], f"grader {g}" if r == 0 else "")
            viz.overlay_mask(row[g + 1], test["grader_masks"][i, g], viz.GRADER_COLOURS[g])
        viz.show_image(row[5], test["images"][i], f"1−IoU {disagreement[i]:.2f}")
        viz.outline_masks(row[5], test["grader_masks"][i])
    fig.suptitle(f"LIDC ({kind}) test slices with the largest grader disagreement")
    return fig
