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
# # Data atlas
#
# ```{glue:md} provenance
# :format: myst
# ```
#
# Before any method, the data. This chapter looks at every dataset the book
# uses: what the images look like with their masks, how the classes are
# balanced across splits, how large and how bright the images are, and, for
# LIDC, how often the four graders disagree: the ambiguity that the
# Probabilistic U-Net chapter sets out to model. Datasets whose archive is in
# the data directory are shown as they are, the others are listed as not
# present; without any data directory, every dataset is shown through its
# **synthetic** counterpart from `medad.data.synthetic`, labelled
# "(synthetic)" wherever it appears.

# %% tags=["parameters", "hide-input"]
profile = "quick"        # quick | full (see medad/profiles/data_atlas.yml)
data_dir = None          # folder with the archives; None -> $MEDAD_DATA -> synthetic data
dataset = None           # one registry name to show only that dataset; None -> all
device = None
seed = None
samples_per_grid = None
stats_images = None

# %% tags=["remove-input"]
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from medad import atlas, viz
from medad.chapter import ChapterRun
from medad.data import available_real, list_datasets
from medad.data.lidc import grader_count
from medad.reports import common, data_atlas as report

common.quiet_notebook()
run = ChapterRun("data_atlas", profile=profile, data_dir=data_dir, device=device, seed=seed,
                 samples_per_grid=samples_per_grid, stats_images=stats_images)
cfg = run.config
names = [dataset] if dataset else list_datasets()
real = available_real(run.data_dir)
run.glue("n_datasets", len(names))
run.glue("n_real", sum(real[n] for n in names))
if "lidc" in names:
    lidc = report.lidc_arrays(run, real["lidc"])
    counts = np.concatenate([grader_count(a["grader_masks"]) for a in lidc["arrays"].values()])
    hist = atlas.agreement_histogram(counts)
    run.glue("lidc_slices", int(len(counts)))
    run.glue("lidc_kind", lidc["kind"])
    run.glue("lidc_all_four", float(hist[4]))
    run.glue("lidc_only_one", float(hist[1]))
else:
    for key in ("lidc_slices", "lidc_kind", "lidc_all_four", "lidc_only_one"):
        run.glue(key, "n/a")

# %% [markdown]
# ## Headline results
#
# This chapter has no committed run and reports no paper's numbers: what it
# shows is the data, counted by this build. Real archives were found for
# {glue:text}`n_real` of the {glue:text}`n_datasets` registered datasets
# ("real" means the archive is in the data directory and matches the
# checksum in `data/manifest.yml`). Of all {glue:text}`lidc_slices:,` LIDC
# slices ({glue:text}`lidc_kind`), only {glue:text}`lidc_all_four:.1%` were
# marked by all four graders and {glue:text}`lidc_only_one:.1%` by just one:
# for most lesions a single "correct" segmentation does not exist.

# %% tags=["remove-input"]
display(common.show_table(report.overview_table(names, real, run.data_dir), caption="The registered datasets and what this build used"))

# %% [markdown]
# Every dataset is read through one API; a sample carries its image, label and
# masks (for LIDC, one mask per grader):

# %%
lidc_train = run.open_dataset("lidc", "train", synthetic=not real["lidc"])
s = lidc_train[0]
print("image", s.image.shape, s.image.dtype)
print("grader masks", s.grader_masks.shape, "| patient", s.group)

# %% [markdown]
# ## Re-executing this chapter: samples, class balance and image statistics
#
# For each dataset, computed by this build (**{glue:text}`profile_name`**
# profile): a seeded grid of training images with their masks, the number of
# images per class and split (all images, from the labels), and size and
# intensity statistics measured on a seeded sample of
# {glue:text}`stats_images:,` training images per dataset (in the quick
# profile a smoke-sized sample; `full` measures more). This page took
# {glue:text}`seconds_taken:.0f` s.

# %% tags=["remove-input"]
run.glue("profile_name", profile)
run.glue("stats_images", int(cfg["stats_images"]))
summaries, stats_frames = {}, []
for name in names:
    shown, stats = report.dataset_block(run, name, real[name], cfg)
    stats_frames.append(stats)
    summaries[shown] = atlas.summarise_statistics(stats)

# %% [markdown]
# ### Sizes and intensities
#
# Mean intensity per image (grayscale; RGB images averaged over channels),
# split by class where a dataset has classes. Differences between classes in
# plain brightness are worth knowing: a classifier can learn them instead of
# the pathology.

# %% tags=["remove-input"]
display(common.show_table(report.statistics_table(summaries), digits=2,
                          caption="Image statistics of a seeded sample per dataset (mask area: fraction of pixels)"))
common.show_figure(report.intensity_figure(pd.concat(stats_frames, ignore_index=True)),
                   "Boxes that sit apart within one dataset mean its classes differ in plain brightness.")

# %% [markdown]
# ## LIDC: how many graders marked each slice
#
# Every LIDC slice was outlined independently by four graders; an empty mask
# means that grader did not mark the lesion at all. Slices marked by one to
# three graders are where a single "correct" segmentation does not exist.

# %% tags=["remove-input"]
if "lidc" in names:
    per_split = pd.DataFrame({s: atlas.agreement_histogram(grader_count(a["grader_masks"]))
                              for s, a in lidc["arrays"].items()})
    common.show_figure(report.agreement_figure(per_split, lidc["kind"]),
                       "One bar group per number of graders; similar bars across splits mean the split kept the ambiguity balanced.")
    display(common.show_table(per_split.rename_axis("graders who marked it"), percent=tuple(per_split.columns),
                              caption="Fraction of slices per split"))

# %% [markdown]
# ### Where the graders disagree
#
# The slices below, from the test split, are those with the largest mean
# pairwise disagreement (1 − IoU between two graders' masks) among slices
# that at least one grader marked. Each panel is one grader; the last panel
# overlays all four outlines.

# %% tags=["remove-input"]
if "lidc" in names:
    common.show_figure(report.disagreement_figure(lidc["arrays"]["test"], lidc["kind"]),
                       "Each row is one slice: the graders' masks, then all four outlines over the image.")

# %% [markdown]
# ## Code and parameters

# %% tags=["remove-input"]
common.code_and_parameters("data_atlas", report.MODULES)

# %% [markdown]
# ## Sources and licences
#
# LIDC-IDRI {cite}`armato2011lidc`, chest X-ray {cite}`kermany2018identifying`,
# Kvasir-SEG {cite}`jha2020kvasir`, Brain Tumor MRI {cite}`nickparvar2021brain`,
# BMAD {cite}`bao2024bmad` and Derm7pt {cite}`kawahara2019derm7pt`. Download pages
# are listed in the README and in `data/manifest.yml`.

# %% [markdown]
# ## LGG brain MRI and endoscopy: lesion against normal
#
# Three datasets give the anomaly-detection and lesion-vs-normal chapters real
# data with both image- and pixel-level labels. `lgg_brain_ad` holds FLAIR
# slices of 20 TCGA lower-grade-glioma patients
# {cite}`buda2019lgg,mazurowski2017lgg,pedano2016tcgalgg` in the layout MVFA
# reads BMAD's BrainMRI in: normal slices, tumour slices with their masks, and
# patient-disjoint splits whose train split is normal only. It is the closest
# open analogue of BMAD's BrainMRI, not BMAD. `hyperkvasir_normal` holds
# HyperKvasir's normal lower-GI frames {cite}`borgli2020hyperkvasir`, and
# `endoscopy_ad` puts them next to Kvasir-SEG's polyps {cite}`jha2020kvasir`
# (normal 0, polyp 1; every split holds both). The table says what this run
# read for each of them.

# %% tags=["remove-input"]
from medad.data import available_real as _available_real
from medad.data.near_duplicates import THRESHOLD as _DUP_THRESHOLD

lesion_names = [n for n in ("lgg_brain_ad", "hyperkvasir_normal", "endoscopy_ad") if dataset in (None, n)]
lesion_real = _available_real(run.data_dir)
lesion_n = min(cfg["stats_images"], 100)  # frames per dataset (per class for the overlay maps)


def lesion_open(name, split):
    return run.open_dataset(name, split, synthetic=not lesion_real[name])


display(atlas.status_table(lesion_names, run.data_dir))

# %% [markdown]
# ### Test slices and frames with their masks
#
# The training split of `lgg_brain_ad` is normal only (as BMAD's), so the
# grids below show test images, half normal and half abnormal, with the
# lesion mask filled in gold. Normal images have an empty mask. The tables
# count images per class and split, then give the size and intensity of a
# seeded sample of test images.

# %% tags=["remove-input"]
for name in [n for n in lesion_names if n != "hyperkvasir_normal"]:
    splits = {split: lesion_open(name, split) for split in ("train", "val", "test")}
    test = splits["test"]
    half = max(cfg["samples_per_grid"] // 2, 1)
    shown = [int(i) for k in range(len(test.classes)) for i in np.flatnonzero(test.labels == k)[atlas.pick(int((test.labels == k).sum()), half, run.seed)]]
    viz.sample_grid([test[i] for i in shown], test.classes, title=f"{test.display_name}: test images, lesion masks in gold", ncols=half)
    plt.show()
    display(Markdown(f"**{test.display_name}**: images per class and split"))
    display(atlas.class_balance(splits))
    stats = atlas.image_statistics(test, lesion_n, run.seed)
    display(stats.groupby("class")[["height", "width", "mean", "std", "mask_fraction"]].mean().round(3).reindex(list(test.classes))
            .rename(columns={"mean": "mean intensity (0-255)", "std": "contrast (std)", "mask_fraction": "mask share of the image"}))

# %% [markdown]
# ### Near-identical HyperKvasir frames
#
# HyperKvasir gives no patient or video id, and several frames of one
# examination look the same. The loader groups frames whose 16x16 grayscale
# thumbnails differ by less than {glue:text}`dup_threshold` gray levels on
# average and keeps each group inside one split. It found
# {glue:text}`dup_groups` such groups holding {glue:text}`dup_images` of
# {glue:text}`dup_frames` frames. The largest groups of the training split are
# shown below, each frame titled with its distance Δ to the group's first frame.

# %% tags=["remove-input"]
run.glue("dup_threshold", float(_DUP_THRESHOLD))
if "hyperkvasir_normal" in lesion_names:
    hk_splits = {split: lesion_open("hyperkvasir_normal", split) for split in ("train", "val", "test")}
    hk_groups = {split: atlas.duplicate_groups(ds) for split, ds in hk_splits.items()}
    run.glue("dup_groups", sum(len(g) for g in hk_groups.values()))
    run.glue("dup_images", sum(len(m) for g in hk_groups.values() for m in g))
    run.glue("dup_frames", sum(len(ds) for ds in hk_splits.values()))
    if hk_groups["train"]:
        atlas.plot_duplicate_groups(hk_splits["train"], hk_groups["train"])
        plt.show()
    else:
        display(Markdown(f"No near-duplicate frames in {hk_splits['train'].display_name}."))
else:
    for key in ("dup_groups", "dup_images", "dup_frames"):
        run.glue(key, "n/a")

# %% [markdown]
# ### On-screen overlays shared by both endoscopy sources
#
# Both sources show the scope's on-screen display: a black position box at
# the lower left, white text at the left edge, and black corners. The maps
# give, per pixel, the share of frames in which it is screen black (top) or
# white text (bottom), for each source; the last column is the smaller of the
# two shares, bright only where both sources carry the overlay. The box is in
# {glue:text}`box_polyp:.0%` of the polyp frames but
# {glue:text}`box_normal:.0%` of the normal frames, so a lesion-vs-normal
# classifier can score well by looking at the box alone: check where it
# looks (the attention chapters do) before trusting its accuracy.

# %% tags=["remove-input"]
if "endoscopy_ad" in lesion_names:
    endo = lesion_open("endoscopy_ad", "train")
    survey = atlas.overlay_by_class(endo, lesion_n, run.seed)
    sources = {"normal": "HyperKvasir normal", "polyp": "Kvasir-SEG polyp"} if not endo.synthetic else {c: f"{c} (synthetic)" for c in endo.classes}
    atlas.plot_overlay_maps(survey, sources, title=f"{endo.display_name} ({len(survey['normal']['box'])} + {len(survey['polyp']['box'])} training frames): on-screen overlays")
    plt.show()
    run.glue("box_polyp", float(survey["polyp"]["box"].mean()))
    run.glue("box_normal", float(survey["normal"]["box"].mean()))
else:
    run.glue("box_polyp", "n/a")
    run.glue("box_normal", "n/a")

# %% tags=["remove-input"]
record = run.finish()
