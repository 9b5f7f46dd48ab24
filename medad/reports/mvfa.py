"""Plumbing of the MVFA chapter: tables in the paper's shape, glue of the headline numbers, and figures."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from medad.results import format_row

DATASET_TITLES = {
    "lgg_brain_ad": "LGG brain MRI", "endoscopy_ad": "Endoscopy", "chest_xray": "Chest X-ray", "brain_mri": "Brain MRI",
    "average": "Average", "bmad_his": "HIS (BMAD)", "bmad_chest": "ChestXray (BMAD)", "bmad_oct17": "OCT17 (BMAD)",
    "bmad_brain": "BrainMRI (BMAD)", "bmad_liver": "LiverCT (BMAD)", "bmad_resc": "RESC (BMAD)",
}
METRIC_SHORT = {"image AUC": "AC", "pixel AUC": "AS"}


def strip_backbone(method: str) -> str:
    """'MVFA [STAND-IN]' -> 'MVFA' (the backbone is named once, in the caption and the column header)."""
    return method.split(" [")[0]


def _cell(r) -> str:
    return format_row(r, digits=3)


def paper_shape(table: pd.DataFrame, setting: str, method: str, label: str) -> pd.DataFrame:
    """One row per dataset, AC and AS columns of ``method`` in ``setting`` (value, interval, s.d. over seeds)."""
    t = table[(table["setting"] == setting) & (table["method"].map(strip_backbone) == method)]
    if t.empty:
        return pd.DataFrame()
    t = t.assign(cell=[_cell(r) for _, r in t.iterrows()], col=[f"{label} {METRIC_SHORT.get(m, m)}" for m in t["metric"]])
    out = t.pivot_table(index="dataset", columns="col", values="cell", aggfunc="first", sort=False)
    out.index = [DATASET_TITLES.get(d, d) for d in out.index]
    out.columns.name = None
    return out.fillna("–")


def headline_table(table: pd.DataFrame, reported: pd.DataFrame, setting: str, backbone: str) -> pd.DataFrame:
    """Our MVFA numbers on our datasets, the paper's on BMAD, stacked (different data: never one row)."""
    ours = paper_shape(table, setting, "MVFA", f"ours ({backbone})")
    theirs = paper_shape(reported, setting, "MVFA (reported)", "reported (CLIP, BMAD)")
    if ours.empty:
        return theirs
    both = pd.concat([ours, theirs], axis=0)
    return both.fillna("–")


def methods_table(table: pd.DataFrame, metric: str, methods: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """Rows (setting, method) -> per-dataset cells of ``metric``; ``methods`` lists (setting, method) in order."""
    rows = {}
    for setting, method in methods:
        t = table[(table["setting"] == setting) & (table["method"].map(strip_backbone) == method) & (table["metric"] == metric)]
        if t.empty:
            continue
        rows[f"{method} ({setting})"] = {DATASET_TITLES.get(r["dataset"], r["dataset"]): _cell(r) for _, r in t.iterrows()}
    return pd.DataFrame(rows).T.fillna("–") if rows else pd.DataFrame()


def rows_of(table: pd.DataFrame, setting: str, method: str, metric: str = "image AUC") -> pd.DataFrame:
    """The rows of ``method`` (named without its backbone) in ``setting`` for ``metric``, every dataset."""
    return table[(table["setting"] == setting) & (table["method"].map(strip_backbone) == method)
                 & (table["metric"] == metric)]


def value(table: pd.DataFrame, dataset: str, setting: str, method: str, metric: str = "image AUC") -> float:
    t = rows_of(table, setting, method, metric)
    t = t[t["dataset"] == dataset]
    return float(t["value"].iloc[0]) if len(t) else math.nan


def anomaly_map_figure(images: Sequence[np.ndarray], masks: np.ndarray, maps: np.ndarray, scores: Sequence[float],
                       title: str):
    """Each column: the image with its ground-truth mask outlined (top), MVFA's anomaly map (bottom, one colour scale).

    Both rows are framed alike: the same panel size, no ticks, a thin frame, a row label at the
    left; the colour bar sits in its own column, so it takes no width from the map panels.
    """
    import textwrap

    import matplotlib.pyplot as plt

    from medad.reports import style

    n = len(images)
    panel = (style.WIDTH_IN - 1.3) / n
    fig = plt.figure(figsize=(style.WIDTH_IN, 2 * panel + 1.3), layout="constrained")
    grid = fig.add_gridspec(2, n + 1, width_ratios=[1] * n + [0.08])
    lo, hi = float(np.min(maps)), float(np.max(maps))
    for j in range(n):
        image = np.asarray(images[j])
        height, width = image.shape[:2]
        top, bottom = fig.add_subplot(grid[0, j]), fig.add_subplot(grid[1, j])
        top.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
        top.set_title(f"score {scores[j]:.2f}")
        im = bottom.imshow(maps[j], cmap="inferno", vmin=lo, vmax=hi, extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        if masks[j].any():
            outline = _resize_mask(masks[j], (height, width))
            top.contour(outline, levels=[0.5], colors="#ffd700", linewidths=1.0)
            bottom.contour(outline, levels=[0.5], colors="#00e0ff", linewidths=1.0)
        for ax in (top, bottom):
            ax.set_xticks([]), ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_linewidth(0.6)
        if j == 0:
            top.set_ylabel("image, mask")
            bottom.set_ylabel("anomaly map")
    fig.colorbar(im, cax=fig.add_subplot(grid[1, n]), label="anomaly score\n(a.u.)")
    fig.suptitle(textwrap.fill(title, 75))
    return fig


def _resize_mask(mask: np.ndarray, shape) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    return np.asarray(img.resize((shape[1], shape[0]), Image.NEAREST)) > 127


def tsne_figure(features: dict[str, np.ndarray], labels: np.ndarray, seed: int = 0, title: str = ""):
    """t-SNE of image features, one panel per entry of ``features``; returns (figure, {name: silhouette}).

    The silhouette (normal vs abnormal, cosine distance) is measured in the feature space itself, not on the
    2-D picture, so it does not depend on t-SNE's randomness. One legend for all panels, under them.
    """
    import textwrap

    from sklearn.manifold import TSNE
    from sklearn.metrics import silhouette_score

    from medad.reports import style

    fig, axes = style.subplots(1, len(features), height=4.0, squeeze=False, layout="constrained")
    sil = {}
    for ax, (name, x) in zip(axes[0], features.items()):
        sil[name] = float(silhouette_score(x, labels, metric="cosine"))
        perplexity = float(min(30, max(5, (len(x) - 1) // 3)))
        xy = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(x)
        for c, colour, label in ((0, "#4c72b0", "normal"), (1, "#dd4444", "abnormal")):
            ax.scatter(xy[labels == c, 0], xy[labels == c, 1], s=14, c=colour, label=label, alpha=0.8)
        ax.set_title(textwrap.fill(name, 28) + f"\nsilhouette {sil[name]:.3f}")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_xlabel("t-SNE 1 (a.u.)")
        ax.set_ylabel("t-SNE 2 (a.u.)")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncols=2, markerscale=1.5)
    if title:
        fig.suptitle(textwrap.fill(title, 75))
    return fig, sil


def image_features(out) -> np.ndarray:
    """One vector per image from adapted tokens: the mean over patches of the det tokens, levels concatenated."""
    import torch

    return torch.cat([torch.nn.functional.normalize(t.mean(1), dim=-1) for t in out.det], dim=1).cpu().numpy()


def seeds_note(table: pd.DataFrame | None, setting: str, a: str, b: str) -> str:
    """"" when methods ``a`` and ``b`` ran the same seeds in ``setting``; else a clause saying that only their
    paired differences (same seeds, same images) compare them."""
    def seeds(method: str) -> int:
        if table is None:
            return 0
        rows = table[(table["setting"] == setting) & (table["method"].map(strip_backbone) == method)]
        return int(rows["seeds"].max()) if len(rows) else 0

    na, nb = seeds(a), seeds(b)
    if 0 in (na, nb) or na == nb:
        return ""
    return (f" (but {a.split(' (')[0]} ran {na} seed{'s' * (na > 1)} and {b} {nb}: only the paired differences, "
            "on the same seeds and images, compare the two)")


def k_curve(table: pd.DataFrame, metric: str = "image AUC", method: str = "MVFA") -> pd.DataFrame:
    """Rows of ``method`` in every few-shot setting: dataset, K, value, ci_low, ci_high, seeds."""
    t = table[table["setting"].str.fullmatch(r"few-shot K=\d+") & (table["method"].map(strip_backbone) == method)
              & (table["metric"] == metric)]  # not "few-shot K=4, overlay boxes masked": another protocol
    return t.assign(K=t["setting"].str.removeprefix("few-shot K=").astype(int))[
        ["dataset", "K", "value", "ci_low", "ci_high", "seeds"]].sort_values(["dataset", "K"])


def k_curve_figure(curve: pd.DataFrame, title: str):
    """Image AUC against K, one line per dataset; error bars where the run has intervals."""
    import textwrap

    from medad.reports import style

    fig, ax = style.subplots(height=3.8, layout="constrained")
    for d, g in curve[curve["dataset"] != "average"].groupby("dataset", sort=False):
        lo = (g["value"] - g["ci_low"]).fillna(0).clip(lower=0)
        hi = (g["ci_high"] - g["value"]).fillna(0).clip(lower=0)
        ax.errorbar(g["K"], g["value"], yerr=[lo, hi], marker="o", capsize=3, label=DATASET_TITLES.get(d, d))
    ax.set_xscale("log", base=2)
    ks = sorted(curve["K"].unique())
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("K (normal and abnormal support images each)")
    ax.set_ylabel("image AUC")
    ax.set_title(textwrap.fill(title, 55))  # the legend at the right narrows the axes
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


# ----------------------------------------------------------------------------- the headline run in words


def run_parameters(run) -> dict:
    """A committed run's parameters: ``parameters`` of the one provenance schema, ``config`` of runs written before it."""
    prov = run.provenance
    return dict(prov.get("parameters") or prov.get("config") or {})


def run_protocol(run) -> str:
    """The input protocol a run used; runs from before the switch used the backbone's own normalisation ('corrected')."""
    return str(run.provenance.get("protocol") or run_parameters(run).get("protocol") or "corrected")


def order_word(a: float, b: float, above: str = "above", below: str = "below", same: str = "level with") -> str:
    """How ``a`` stands to ``b`` in a word; an en dash when either is missing."""
    if not (np.isfinite(a) and np.isfinite(b)):
        return "–"
    return above if a > b else below if a < b else same


def difference_row(table: pd.DataFrame, dataset: str, setting: str, name: str, metric: str = "image AUC"):
    """The paired-difference row ``name`` (e.g. 'MVFA minus projector-only (April-GAN-style)'), or None."""
    t = table[(table["dataset"] == dataset) & (table["setting"] == setting) & (table["method"].map(strip_backbone) == name)
              & (table["metric"] == f"{metric} difference")]
    return None if t.empty else t.iloc[0]


def difference_text(row) -> str:
    """``+0.012 (−0.004 to +0.030), interval includes 0`` for a paired-difference row; '–' without one."""
    if row is None or not np.isfinite(row["value"]):
        return "no paired difference in this run"
    text = f"{row['value']:+.3f}"
    if np.isfinite(row["ci_low"]) and np.isfinite(row["ci_high"]):
        excludes = row["ci_low"] > 0 or row["ci_high"] < 0
        text += (f" (95% interval {row['ci_low']:+.3f} to {row['ci_high']:+.3f}, "
                 f"{'excludes' if excludes else 'includes'} 0)")
    return text


def below_chance_count(table: pd.DataFrame, setting: str, method: str, metric: str = "image AUC") -> str:
    """``'3 of 4 datasets'`` on which ``method``'s whole interval lies below 0.5: its score ranks the normal
    images above the abnormal ones there (an AUC of 0.3 is the score of 0.7 turned upside down)."""
    rows = rows_of(table, setting, method, metric)
    rows = rows[rows["dataset"] != "average"].dropna(subset=["ci_high"])
    return f"{int((rows['ci_high'] < 0.5).sum())} of {len(rows)} datasets" if len(rows) else "no dataset"


def zero_shot_source_range(run) -> str:
    """``'0.941–0.997'``: the range over a run's zero-shot units of the best image AUC on the source datasets'
    selection images (how well the adapters learnt the datasets they were trained on); ``'–'`` without them."""
    training = (getattr(run, "provenance", None) or {}).get("training") or {}
    best = [u["best"]["val"]["value"] for k, u in training.items()
            if k.startswith("zero_shot/") and isinstance(u, dict) and "val" in (u.get("best") or {})]
    return f"{min(best):.3f}–{max(best):.3f}" if best else "–"


def per_dataset_count(table: pd.DataFrame, setting: str, method_a: str, method_b: str, metric: str = "image AUC",
                      datasets: Sequence[str] | None = None) -> str:
    """``'3 of 4 datasets'`` on which ``method_a`` scores above ``method_b``."""
    shown = [d for d in (datasets or table["dataset"].unique()) if d != "average"]
    pairs = [(value(table, d, setting, method_a, metric), value(table, d, setting, method_b, metric)) for d in shown]
    pairs = [(a, b) for a, b in pairs if np.isfinite(a) and np.isfinite(b)]
    return f"{sum(a > b for a, b in pairs)} of {len(pairs)} datasets" if pairs else "no dataset"


VERDICT_WORDS = {"reproduced": "supports the paper's claim", "partly": "partly supports it (ordered as claimed, not everywhere separated)",
                 "not reproduced": "does not support it", "not testable here": "cannot test it",
                 "not run yet": "has not run it yet"}


def ablation_verdicts(evaluations) -> pd.DataFrame:
    """The chapter's ablation claims (results/mvfa/claims.yml, kind: ablation) with what the headline run says."""
    rows = [{"ablation (the paper's claim)": e.claim["claim"], "this run": VERDICT_WORDS.get(e.verdict, e.verdict),
             "evidence": e.summary()} for e in evaluations if e.claim.get("kind") == "ablation"]
    return pd.DataFrame(rows)


def older_runs(runs, headline, rows: Sequence[tuple[str, str, str, str]]) -> pd.DataFrame:
    """Each committed run (headline first) with a few of its numbers: rows are (label, setting, method, metric)
    taken on the average over datasets ('lgg_brain_ad' rows for a label starting with 'LGG')."""
    out = {}
    for run in runs:
        params = run_parameters(run)
        col = f"{run.name}{' (headline)' if headline is not None and run.name == headline.name else ''}"
        cells = {"schedule": run.provenance.get("schedule", ""), "protocol": run_protocol(run),
                 "arithmetic": run.provenance.get("precision") or "float32"}
        for label, setting, method, metric in rows:
            k = params.get("k", 4)
            dataset = "lgg_brain_ad" if label.startswith("LGG") else "average"
            t = run.table[(run.table["dataset"] == dataset) & (run.table["setting"] == setting.format(k=k))
                          & (run.table["method"].map(strip_backbone) == method) & (run.table["metric"] == metric)]
            cells[label] = format_row(t.iloc[0]) if len(t) else "–"
        out[col] = cells
    return pd.DataFrame(out)
