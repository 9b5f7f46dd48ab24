"""Plumbing of the early-gastric-cancer chapter: tables of a run next to the reported numbers, the figures.

Every table names the stand-in data (lower-GI endoscopy, not gastric cancer) in its dataset
column or caption; numbers are fractions, shown with their 95% intervals.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from medad.results import format_row
from medad.train.egc_experiment import CLS_DATASET, PAIRED_SETTING, SEG_DATASET, STANDIN

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
    shown = part.assign(cell=[format_row(r, digits) for r in part.to_dict("records")])
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
    """Display a table the way every chapter does (``common.show_table``): without its index, with a caption."""
    from IPython.display import display

    from medad.reports.common import show_table

    display(show_table(table, caption=caption, index=False))


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


def difference_table(ours: pd.DataFrame) -> pd.DataFrame:
    """Each segmenter minus U-Net on the same test images: IoU and Dice, signed mean (95% paired bootstrap interval)."""
    part = ours[(ours["dataset"] == STANDIN[SEG_DATASET]) & (ours["setting"] == PAIRED_SETTING)]
    columns = {"iou": "IoU difference", "dice": "Dice difference"}
    table = pd.DataFrame({"Method": pd.unique(part["method"])})
    for metric, name in columns.items():
        rows = part[part["metric"] == metric].set_index("method")
        table[name] = [f"{rows.at[m, 'value']:+.3f} ({rows.at[m, 'ci_low']:+.3f} to {rows.at[m, 'ci_high']:+.3f})"
                       if m in rows.index else "–" for m in table["Method"]]
    return table


def seed_table(seg_per_seed: dict | None) -> pd.DataFrame:
    """Each segmenter's test IoU and Dice for every training seed (from a run's provenance)."""
    from medad.train.egc_experiment import SEG_METHODS

    rows = []
    for variant, runs in (seg_per_seed or {}).items():
        cells = {"Method": SEG_METHODS.get(variant, variant)}
        for metric, name in (("iou", "IoU"), ("dice", "Dice")):
            for i, r in enumerate(runs):
                cells[f"{name}, seed {i + 1}"] = f"{r[metric]:.3f}"
        rows.append(cells)
    return pd.DataFrame(rows).fillna("–") if rows else pd.DataFrame(columns=["Method"])


def ranking_sentence(ours: pd.DataFrame, metric: str = "dice") -> str:
    """One sentence per variant: better than, worse than, or not told apart from U-Net (paired interval vs 0)."""
    part = ours[(ours["setting"] == PAIRED_SETTING) & (ours["metric"] == metric)]
    if part.empty:
        return f"This run's table has no paired {metric} differences to U-Net."
    said = []
    for method, v, lo, hi in zip(part["method"], part["value"], part["ci_low"], part["ci_high"]):
        name = method.split(" minus ")[0]
        if np.isfinite(lo) and lo > 0:
            verdict = "better than U-Net"
        elif np.isfinite(hi) and hi < 0:
            verdict = "worse than U-Net"
        else:
            verdict = "not told apart from U-Net"
        said.append(f"{name} is {verdict} ({metric.capitalize()} {v:+.3f}, 95% interval {lo:+.3f} to {hi:+.3f})")
    return "; ".join(said) + "."


def backbone_sentence(ours: pd.DataFrame) -> str:
    """Attention IoU and pointing game of GAIN and the plain classifier on each backbone of the run."""
    test = ours[ours["setting"] == "test"]
    archs = [m[len("GAIN ("):].split(",")[0] for m in pd.unique(test["method"]) if m.startswith("GAIN (")]
    if len(archs) < 2:
        return "This run trained one backbone only."

    def one(prefix, metric):
        number = value(test, prefix, metric)
        return f"{number:.3f}" if np.isfinite(number) else "–"

    parts = [f"on {a}, attention IoU {one(f'GAIN ({a}', 'attention_iou')} with GAIN against "
             f"{one(f'plain classifier ({a}', 'attention_iou')} without the attention loss (pointing game "
             f"{one(f'GAIN ({a}', 'pointing_game')} against {one(f'plain classifier ({a}', 'pointing_game')})"
             for a in archs]
    return "Backbone by backbone: " + "; ".join(parts) + "."


def mining_sentence(ours: pd.DataFrame) -> str:
    """What adding attention mining to GAIN changed in the run: accuracy, attention IoU, pointing game."""
    def cell(prefix, metric):
        hit = ours[ours["method"].str.startswith(prefix) & (ours["metric"] == metric)]
        return format_row(hit.iloc[0]) if len(hit) else None

    pairs = [(m, cell("GAIN (", m), cell("GAIN + attention mining", m))
             for m in ("accuracy", "attention_iou", "pointing_game")]
    if any(am is None or base is None for _, base, am in pairs):
        return "This run did not train GAIN with attention mining."
    names = {"accuracy": "accuracy", "attention_iou": "attention IoU", "pointing_game": "pointing game"}
    return ("With attention mining, against GAIN without it: "
            + "; ".join(f"{names[m]} {am} against {base}" for m, base, am in pairs) + ".")


def example_figure(result: dict, n: int = 4, title_data: str = STANDIN[CLS_DATASET]):
    """Test lesion images: image, true mask, each classifier's Grad-CAM attention (one colour bar), CA-U-Net output.

    Every attention panel shares the colour scale 0–1 of the normalised map (its colour bar at the
    right); ``p`` in a panel is that classifier's lesion probability for the image.
    """
    import textwrap

    import matplotlib.pyplot as plt

    from medad import viz
    from medad.reports import style

    test = result["data"]["cls"]["test"]
    keep = result["keep"]
    first = next(iter(keep.values()))
    lesion_index = first["lesion_index"][:n]
    pipeline = result.get("pipeline")
    columns = ["image", "lesion\nmask"] + [f"{_short(m)}\nattention" for m in keep] + (["two-stage\noutput"] if pipeline else [])
    panel = (style.WIDTH_IN - 0.9) / len(columns)
    fig, axes = plt.subplots(len(lesion_index), len(columns), figsize=(style.WIDTH_IN, panel * len(lesion_index) + 1.7),
                             squeeze=False, layout="constrained")
    attention = None
    for r, i in enumerate(lesion_index):
        image = test["images"][i]
        viz.show_image(axes[r, 0], image, columns[0] if r == 0 else "")
        viz.show_image(axes[r, 1], image, columns[1] if r == 0 else "")
        viz.overlay_mask(axes[r, 1], test["masks"][i])
        for c, (method, kept) in enumerate(keep.items(), start=2):
            viz.show_image(axes[r, c], image, columns[c] if r == 0 else "")
            height, width = image.shape[:2]  # the map covers the image whatever its resolution
            attention = axes[r, c].imshow(kept["maps"][r], cmap="jet", alpha=0.45, vmin=0, vmax=1,
                                          extent=(-0.5, width - 0.5, height - 0.5, -0.5))
            axes[r, c].contour(test["masks"][i].astype(float), levels=[0.5], colors=["white"], linewidths=0.8)
            axes[r, c].text(0.03, 0.04, f"p {kept['prob'][i]:.2f}", color="white", transform=axes[r, c].transAxes,
                            fontsize=style.MIN_FONT_PT, bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "lw": 0})
        if pipeline:
            c = len(columns) - 1
            pred = pipeline["pred"][i]
            small = _resize(image, pred.shape[0])
            viz.show_image(axes[r, c], small, columns[c] if r == 0 else "")
            viz.overlay_mask(axes[r, c], pred, colour="#00e5ff")
    if attention is not None:
        fig.colorbar(attention, ax=axes[:, 2:2 + len(keep)].ravel().tolist(), shrink=0.9, location="bottom",
                     aspect=30, label="Grad-CAM attention (normalised, 0–1)")
    fig.suptitle(textwrap.fill(f"Test lesion images of {title_data}", 75))
    return fig


def _short(method: str) -> str:
    return {"gain": "GAIN", "plain": "plain", "gain-am": "GAIN+AM"}.get(method, method)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def best_in_last_epoch(histories: dict, prefix: str = "seg") -> tuple[int, int]:
    """(how many, of how many) models starting with ``prefix`` scored best on validation in their last epoch."""
    runs = [h for name, h in histories.items() if name.startswith(prefix) and h]
    last = sum(max(range(len(h)), key=lambda i: h[i]["val"]) == len(h) - 1 for h in runs)
    return int(last), len(runs)


def convergence_sentence(histories: dict | None) -> str:
    """Whether the run's segmenters were still improving when their budget ended."""
    if not histories:
        return "This run's provenance has no training curves."
    last, total = best_in_last_epoch(histories)
    epochs = max((len(h) for name, h in histories.items() if name.startswith("seg")), default=0)
    if total == 0:
        return "This run trained no segmenter."
    verdict = ("so the ablation compares the networks after the same short training, not at convergence"
               if last > total / 2 else "so most had levelled off within the budget")
    return (f"{last} of the {total} segmenters scored their best validation Dice in their last epoch "
            f"(epoch {epochs}), {verdict}.")


def training_curves(result: dict):
    """Validation score per epoch of every trained model of a run: one colour per model, one line per seed."""
    import matplotlib.pyplot as plt

    from medad.reports import style

    fig, axes = style.subplots(1, 2, height=3.6, layout="constrained")
    colours: dict[str, dict[str, str]] = {"cls": {}, "seg": {}}
    tie_break = False
    for name, history in result["histories"].items():
        kind, rest = name.split("-", 1)                      # 'cls-gain-am-seed0' -> 'cls', 'gain-am-seed0'
        model = rest.rsplit("-seed", 1)[0]
        ax = axes[0] if kind == "cls" else axes[1]
        own = colours["cls" if kind == "cls" else "seg"]
        first = model not in own
        own.setdefault(model, f"C{len(own) % 10}")
        # classifiers whose AUC saturates are told apart by the tie-break (validation log-likelihood): plot that
        second = kind == "cls" and all(len(h.get("val_key", [])) > 1 for h in history)
        tie_break |= second
        ys = [h["val_key"][1] if second else h["val"] for h in history]
        ax.plot([h["epoch"] for h in history], ys, marker="o", markersize=3, linewidth=1,
                color=own[model], alpha=0.8, label=model if first else None)
    axes[0].set(title="Classifiers (endoscopy_ad\nSTAND-IN)", xlabel="epoch",
                ylabel="validation mean log-likelihood" if tie_break else "validation ROC AUC")
    axes[1].set(title="Segmenters (Kvasir-SEG\nSTAND-IN)", xlabel="epoch", ylabel="validation Dice")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    return fig


def run_precision(run) -> str:
    """The arithmetic a committed run trained in, as its provenance says (runs before the option: float32)."""
    if run is None:
        return "no committed run"
    return run.provenance.get("precision") or "float32 (recorded before the precision option existed)"


# (row, setting, method, metric) of the runs table; a method ending in "(" or "minus" is a prefix
RUN_ROWS = (("GAIN accuracy", "test", "GAIN (", "accuracy"), ("GAIN AUC", "test", "GAIN (", "auc"),
            ("GAIN attention IoU", "test", "GAIN (", "attention_iou"),
            ("plain classifier attention IoU", "test", "plain classifier (", "attention_iou"),
            ("U-Net IoU", "test", "U-Net", "iou"), ("CA-U-Net IoU", "test", "CA-U-Net", "iou"),
            ("CA-U-Net minus U-Net, IoU", PAIRED_SETTING, "CA-U-Net minus", "iou"),
            ("U-Net + CBAM minus U-Net, IoU", PAIRED_SETTING, "U-Net + CBAM minus", "iou"),
            ("U-Net + ASPP minus U-Net, IoU", PAIRED_SETTING, "U-Net + ASPP minus", "iou"))


def _run_row(table: pd.DataFrame, setting: str, method: str, metric: str):
    chosen = table["method"].str.startswith(method) if method.endswith(("(", "minus")) else table["method"] == method
    hit = table[(table["setting"] == setting) & chosen & (table["metric"] == metric)]
    return hit.iloc[0] if len(hit) else None


def _run_name(run, headline: str | None) -> str:
    return f"{run.name} ({'headline' if run.name == headline else 'older run'})"


def runs_table(runs, headline: str | None = None) -> pd.DataFrame:
    """Key numbers of every committed run, one column per run (``headline`` first, the others labelled older runs)."""
    ordered = sorted(runs, key=lambda r: r.name != headline)
    if not ordered:
        return pd.DataFrame(columns=["Number"])
    columns = {"Number": ["kind", "training arithmetic", *(name for name, *_ in RUN_ROWS)]}
    for run in ordered:
        cells = [run.kind, run_precision(run)]
        for _, setting, method, metric in RUN_ROWS:
            hit = _run_row(run.table, setting, method, metric)
            cells.append(format_row(hit) if hit is not None else "–")
        columns[_run_name(run, headline)] = cells
    return pd.DataFrame(columns)


def sign_changes(runs, headline: str | None = None) -> str:
    """Which paired differences to U-Net are separated from 0 in opposite directions in two committed runs."""
    said = []
    for name, setting, method, metric in RUN_ROWS:
        if setting != PAIRED_SETTING:
            continue
        rows = [(run, _run_row(run.table, setting, method, metric)) for run in runs]
        above = [(run, r) for run, r in rows if r is not None and np.isfinite(r["ci_low"]) and r["ci_low"] > 0]
        below = [(run, r) for run, r in rows if r is not None and np.isfinite(r["ci_high"]) and r["ci_high"] < 0]
        if above and below:
            shown = "; ".join(f"{r['value']:+.3f} ({r['ci_low']:+.3f} to {r['ci_high']:+.3f}) in {_run_name(run, headline)}"
                              for run, r in above[:1] + below[:1])
            said.append(f"{name.split(',')[0]} changed sign between two committed runs, each interval excluding 0: "
                        f"{shown}")
    if not said:
        return "No paired difference to U-Net is separated from 0 in opposite directions by two committed runs."
    return ("; ".join(said) + ". A paired interval resamples the test images for networks already trained; "
            "it does not cover training them again, which moved this difference further than the interval's width.")
