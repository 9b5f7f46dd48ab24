"""Report plumbing of the Backbones appendix: tables and figures of the stand-in's checks, speed, embeddings."""
from __future__ import annotations

import numpy as np
import pandas as pd

from medad.backbones import backbone_table, measure

MODULES = ("medad.backbones", "medad.backbones.standin", "medad.backbones.devise", "medad.backbones.clip_openclip",
           "medad.backbones.measure", "medad.backbones.sanity")


def registry_table() -> pd.DataFrame:
    table = pd.DataFrame(backbone_table()).set_index("name")
    table["text encoder"] = table["text encoder"].map({True: "yes", False: "no"})
    return table[["architecture", "text encoder", "weights"]]


def heldout_table(held: dict) -> pd.DataFrame:
    return pd.DataFrame(
        {"top-1": [held["top1_gloss"], held["top1_names"], held["chance"]],
         "top-5": [held["top5_gloss"], held["top5_names"], 5 * held["chance"]]},
        index=pd.Index(["name + gloss", "names only", "chance"], name="text of a held-out class"),
    )


def imagenet_table(top: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        {"expected ImageNet class": [r["expected"] or "(none)" for r in top],
         "top-3 (probability)": ["; ".join(f"{label} ({p:.2f})" for label, p in r["top"]) for r in top]},
        index=pd.Index([r["picture"] for r in top], name="picture"),
    )


def caption_figure(pictures, match: dict, name: str):
    import seaborn as sns
    from PIL import Image

    from medad.reports import style

    fig, axes = style.subplots(1, 2, height=4.2, gridspec_kw={"width_ratios": [1, 6]}, layout="constrained")
    strip = np.concatenate([np.asarray(Image.fromarray(p.load()).resize((96, 96))) for p in pictures], axis=0)
    axes[0].imshow(strip)  # one picture per heatmap row, same order
    axes[0].set_title("pictures")
    axes[0].axis("off")
    prefix = "a photo of "
    captions = [c.removeprefix(prefix) if c.startswith(prefix) else c for c in match["captions"]]
    sns.heatmap(pd.DataFrame(match["similarity"], index=match["pictures"], columns=captions), annot=True,
                fmt=".2f", cmap="viridis", cbar=False, ax=axes[1], annot_kws={"fontsize": style.MIN_FONT_PT})
    axes[1].set(xlabel=f"caption ('{prefix}…')", ylabel="picture")
    axes[1].set_title(f"{name} (STAND-IN): cosine of picture and caption")
    axes[1].tick_params(axis="x", labelrotation=40)
    for label in axes[1].get_xticklabels():
        label.set_horizontalalignment("right")
    return fig


def level_r2_table(standin, report: dict) -> pd.DataFrame:
    r2 = pd.Series(report["level_r2"])
    return pd.DataFrame({"width (channels)": [standin.stage_widths[s - 1] for s in r2.index], "R² (held-out crops)": r2.values},
                        index=pd.Index(r2.index, name="stage"))


def speed_rows(names, standin, device: str, n_images: int, repeats: int, seed: int) -> pd.DataFrame:
    rows = []
    for name in names:
        b, note = (standin, "pretrained") if name == standin.name else measure.load_for_speed(name, device)
        res = measure.encode_speed(b, n_images, repeats, seed=seed)
        rows.append({"backbone": name + (" (STAND-IN)" if b.is_standin else ""), "image size (px)": res["image_size"],
                     "weights used": note, "images/s": res["images_per_s"]})
    return pd.DataFrame(rows).set_index("backbone")


def speed_figure(speed: pd.DataFrame, device: str):
    import textwrap

    from medad.reports import style

    fig, ax = style.subplots(height=0.45 * len(speed) + 1.6, layout="constrained")
    ax.barh(speed.index, speed["images/s"], color="tab:blue")
    ax.invert_yaxis()
    ax.set(xlabel="images per second (higher is faster)", ylabel="backbone",
           title=textwrap.fill(f"encode_image speed on {device}", 45))
    return fig


def embed_datasets(run, standin, names, per_dataset: int, batch_size: int, real: dict):
    """A seeded subsample of each dataset's test split, embedded (unit norm); per-image dataset and label."""
    rng = np.random.default_rng(run.seed)
    frames, embeddings, kinds = [], [], []
    for name in names:
        ds = run.open_dataset(name, "test", synthetic=not real.get(name, False))
        idx = np.sort(rng.choice(len(ds), size=min(int(per_dataset), len(ds)), replace=False))
        embeddings.append(measure.embed_images(standin, [ds[int(i)].image for i in idx], int(batch_size)))
        label_names = [ds.classes[l] if 0 <= l < len(ds.classes) else "(no label)" for l in ds.labels[idx]]
        frames.append(pd.DataFrame({"dataset": ds.display_name, "label": [f"{ds.display_name}: {n}" for n in label_names]}))
        kinds.append(f"{ds.display_name}: {len(idx)}")
    points = pd.concat(frames, ignore_index=True)
    emb = np.concatenate(embeddings)
    return points, emb / np.linalg.norm(emb, axis=1, keepdims=True), kinds  # cosine geometry, as the joint space is used


def knn_table(points: pd.DataFrame, emb: np.ndarray) -> pd.DataFrame:
    within = []
    for name, part in points.groupby("dataset", sort=False):
        if part["label"].nunique() > 1:
            within.append({"dataset": name, "images": len(part),
                           "5-NN label accuracy": measure.knn_accuracy(emb[part.index], part["label"].to_numpy()),
                           "most frequent label": part["label"].value_counts(normalize=True).iloc[0]})
    return pd.DataFrame(within).set_index("dataset")


def layouts(emb: np.ndarray, perplexity: float, neighbours: int, seed: int) -> dict:
    """t-SNE and UMAP of ``emb``; a perplexity of at least the number of points is an error naming the parameter
    (it used to be lowered silently)."""
    import umap
    from sklearn.manifold import TSNE

    from medad.errors import ConfigError

    if not float(perplexity) < len(emb):
        raise ConfigError(f"tsne_perplexity {perplexity:g} must be below the number of embedded points ({len(emb)}); "
                          f"choose a smaller tsne_perplexity or more images_per_dataset")
    return {
        "t-SNE": TSNE(n_components=2, perplexity=float(perplexity), init="pca", random_state=seed).fit_transform(emb),
        "UMAP": umap.UMAP(n_neighbors=int(neighbours), metric="cosine", random_state=seed, n_jobs=1).fit_transform(emb),
    }


def layout_figure(points: pd.DataFrame, xy: np.ndarray, method: str, name: str, suffix: str):
    """Two panels: every image coloured by its dataset; then, for the datasets with several labels, by label.

    Each panel has its own legend under it, at the book's type size: the label panel greys out
    the datasets with one label only, so its legend lists just the labels worth telling apart.
    """
    import textwrap

    import seaborn as sns

    from medad.reports import style

    points = points.assign(x=xy[:, 0], y=xy[:, 1])
    several = points.groupby("dataset")["label"].transform("nunique") > 1
    fig, axes = style.subplots(1, 2, height=5.6, layout="constrained")
    sns.scatterplot(data=points, x="x", y="y", hue="dataset", palette="dark", s=14, linewidth=0, ax=axes[0])
    axes[1].scatter(points.loc[~several, "x"], points.loc[~several, "y"], s=8, color="#cccccc", linewidths=0,
                    label="one-label datasets")
    sns.scatterplot(data=points[several], x="x", y="y", hue="label", palette="tab10", s=14, linewidth=0,
                    ax=axes[1])  # another palette: a label's colour must not suggest a dataset of the left panel
    fig.suptitle(textwrap.fill(f"{method} of {name} (STAND-IN) image embeddings{suffix}", 70))
    for ax, by in zip(axes, ("dataset", "label")):
        ax.set_title(f"coloured by {by}")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_xlabel(f"{method} 1 (a.u.)"), ax.set_ylabel(f"{method} 2 (a.u.)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=1, markerscale=1.5, frameon=False)
    return fig
