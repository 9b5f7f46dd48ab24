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
# the data directory are shown as they are; the others through their
# **synthetic** counterparts from `medad.data.synthetic`, labelled
# "(synthetic)" wherever they appear.

# %% tags=["parameters", "hide-input"]
profile = "quick"        # quick | full (see medad/profiles/data_atlas.yml)
data_dir = None          # folder with the archives; None -> $MEDAD_DATA -> synthetic data
dataset = None           # one registry name to show only that dataset; None -> all
device = None
seed = None
samples_per_grid = None
stats_images = None

# %% tags=["remove-input"]
import numpy as np
import pandas as pd
from IPython.display import display

from medad import atlas
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
display(common.show_table(report.overview_table(names, real), caption="The registered datasets and what this build used"))

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

# %%
record = run.finish()
