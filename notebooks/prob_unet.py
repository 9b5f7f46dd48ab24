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
# # Probabilistic U-Net on LIDC: samples, GED curves, baselines
#
# ```{glue:md} provenance
# :format: myst
# ```
#
# Four radiologists outlining the same lung nodule rarely agree: one draws it
# tight, another generous, a third does not mark it at all. A segmentation
# network trained on such labels and asked for *one* answer averages the
# disagreement away. The Probabilistic U-Net {cite}`kohl2018probabilistic`
# instead learns a *distribution* over segmentations and draws as many
# plausible ones as asked. This chapter re-implements it and the baselines of
# the paper's comparison, trains them on the LIDC-IDRI crops
# {cite}`armato2011lidc` with four grader masks per slice, and scores their
# samples with the generalized energy distance (GED) against the graders.

# %% tags=["parameters", "hide-input"]
profile = "quick"        # quick | full (medad/profiles/prob_unet.yml)
data_dir = None          # folder with the archives; None -> $MEDAD_DATA -> synthetic data
device = None            # None -> the profile's (cpu for quick; auto for full)
seed = None
epochs = None            # passes over the training slices; None -> the profile's `iterations`
iterations = None        # training steps per model
train_slices = None
test_slices = None
models = None            # list of model names; None -> all five
threads = None           # CPU threads for torch
max_minutes_per_model = None  # time cap per model (minutes); when it stops a model, the chapter says so
long_run = None          # run folder under results/prob_unet/ to show; None -> the best committed

# %% tags=["remove-input"]
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from medad.chapter import ChapterRun
from medad.data.lidc import grader_count
from medad.metrics.ged import distance_matrices, ged_from_distances
from medad.models.ambiguous import build_model
from medad.reports import common, prob_unet as report
from medad.train import prob_unet_experiment as exp

common.quiet_notebook()
run = ChapterRun("prob_unet", profile=profile, data_dir=data_dir, device=device, seed=seed, epochs=epochs,
                 iterations=iterations, train_slices=train_slices, test_slices=test_slices, models=models,
                 threads=threads, max_minutes_per_model=max_minutes_per_model)
cfg = run.config

# %% [markdown]
# ## What was reproduced
#
# Each claim of the paper, checked against this chapter's headline run by the rule stated under
# the tables (the front page shows the same table for all four papers).

# %% tags=["remove-input"]
from medad.reports import claims as claims_report

claims_report.show_chapter("prob_unet", long_run, glue=run.glue)

# %% [markdown]
# ## Headline results
#
# The numbers this chapter stands on come from its best committed run,
# {glue:text}`long_name`, stored as small files under `results/prob_unet/`
# and **not** recomputed when the book is built. On
# {glue:text}`long_test:,` real LIDC test slices from
# {glue:text}`long_patients` patients, with 16 samples per slice, the
# Probabilistic U-Net reaches a GED of {glue:text}`long_pu`, the
# deterministic U-Net {glue:text}`long_unet` and M-heads
# {glue:text}`long_mheads` (95% patient-bootstrap intervals).

# %% tags=["remove-input"]
headline_run, headline_table = common.headline("prob_unet", long_run, select=report.headline_rows)
display(Markdown(common.headline_label(headline_run)))
display(common.show_table(headline_table, caption="LIDC, 16 samples per slice: this book's committed run and reported numbers"))
display(Markdown(common.sources_markdown("prob_unet")))
lt = headline_run.table
for key, method in (("long_pu", "Prob. U-Net"), ("long_unet", "U-Net (deterministic)"), ("long_mheads", "M-heads")):
    run.glue(key, report.interval(lt, method, "GED", "16 samples", "LIDC"))
run.glue("long_name", headline_run.name)
run.glue("long_schedule", headline_run.provenance.get("schedule", "schedule not recorded"))
run.glue("long_precision", headline_run.provenance.get("precision", "float32"))
paired = report.paired_table(lt)
if len(paired):
    display(common.show_table(paired, index=False, caption="The Prob. U-Net's GED minus each baseline's on the same test "
                                                            "slices (16 samples; negative: the Prob. U-Net is closer to the "
                                                            "graders), mean with its 95% patient-bootstrap interval"))
run.glue("long_test", int(lt.loc[lt["dataset"].eq("LIDC"), "n"].max()))
run.glue("long_patients", int(report.long_run_files(headline_run)["data"]["test"]["patients"]))
common.show_figure(report.headline_figure(headline_run),
                   "Left: test GED against the number of samples (lower is better); right: GED by how many "
                   "of the four graders marked the slice.")
if (headline_run.path / "examples.npz").is_file():
    common.show_figure(report.samples_figure(exp.load_examples(headline_run.path / "examples.npz"), f"committed run {headline_run.name}"),
                       "The committed run's models on test slices marked by one to four graders: the graders' masks "
                       "(left; an empty panel: that grader did not mark the slice), four Probabilistic U-Net samples, "
                       "and one sample of each baseline.")

# %% [markdown]
# The reported numbers are not comparable one-to-one with this book's. The
# paper itself shows LIDC results only as plots, so the one number quoted for
# the Probabilistic U-Net is the one PHiSeg {cite}`baumgartner2019phiseg`
# reports for its own training of the model; the later methods' numbers are a
# re-run by the MedFM authors. Those works use other LIDC crops (128 x 128 or
# 180 x 180) and their own, unseeded splits, and train for up to 240k
# iterations with 32–192 channels; the committed run: {glue:text}`long_schedule`
# ({glue:text}`long_precision`). Two conventions matter as much as training: how two empty masks are
# scored and whether the $i = j$ pairs count (PHiSeg's code, like this book,
# scores two empty masks as a perfect match and keeps the $i = j$ pairs).

# %% [markdown]
# ## The method
#
# A U-Net $f_\text{unet}$ computes features of the image $X$ once. A *prior net*
# maps $X$ to a Gaussian over a low-dimensional latent code $z \in \mathbb{R}^6$;
# a *posterior net* sees the image **and** one grader's mask $Y$:
#
# $$
# \begin{aligned}
# P(z \mid X) &= \mathcal{N}\big(\mu_\text{prior}(X), \operatorname{diag}\sigma^2_\text{prior}(X)\big), \\
# Q(z \mid X, Y) &= \mathcal{N}\big(\mu_\text{post}(X, Y), \operatorname{diag}\sigma^2_\text{post}(X, Y)\big).
# \end{aligned}
# $$
#
# A segmentation is $S = f_\text{comb}\big(f_\text{unet}(X), z\big)$: $z$ is
# tiled over the image, concatenated with the last U-Net features and passed
# through three $1\times1$ convolutions. Training shows one randomly chosen
# grader's mask per slice and step and minimises
#
# $$
# \mathcal{L} = \operatorname{CE}\big(Y, f_\text{comb}(f_\text{unet}(X), z_q)\big)
#   + \beta\, \mathrm{KL}\big(Q(z \mid X, Y) \,\|\, P(z \mid X)\big)
# $$
#
# with $z_q \sim Q$, $\beta = 1$, the cross-entropy summed over pixels and
# the KL in closed form. At test
# time only the prior is used: each new $z$ costs one pass of $f_\text{comb}$,
# so a hundred samples are cheap. `medad` bounds $\log\sigma$ smoothly
# ($|\log\sigma| < 8$) so the KL cannot overflow.
#
# **Baselines**, as in the paper: a deterministic U-Net (its "samples" are
# copies of one answer), a Dropout U-Net sampled with dropout left on, an
# ensemble of independently initialised U-Nets, and M-heads (one trunk,
# several output heads, trained with the best-of-M loss). One call builds any
# of them from the profile's settings:

# %%
model = build_model("prob_unet", **exp.model_options(cfg, "prob_unet"))
n_weights = sum(p.numel() for p in model.parameters())
print(f"{type(model).__name__}: {n_weights:,} weights")

# %% [markdown]
# ## The metric
#
# With $d(a, b) = 1 - \operatorname{IoU}(a, b)$ between two masks,
#
# $$
# D^2_\text{GED} = 2\,\mathbb{E}[d(S, Y)] - \mathbb{E}[d(S, S')] - \mathbb{E}[d(Y, Y')],
# $$
#
# estimated per slice from $N$ samples and the four graders. Two conventions
# hold for every number in this chapter: two empty masks agree perfectly,
# $d(\emptyset, \emptyset) = 0$ (the official code makes such a slice's GED
# NaN; that variant is reported too), and the expectations average over all
# pairs including $i = j$, the paper's estimator, so GED falls as $N$ grows even
# for a perfect model. The cell below scores two "models" on one real test
# slice: one that returns the four graders' own masks, and one that returns
# grader 0's mask four times.

# %% tags=["remove-input"]
datasets, data = exp.open_and_prepare(cfg, run.opener)
kind = "synthetic" if datasets["train"].synthetic else "real"
marked = grader_count(data["test"]["grader_masks"])
pick = exp.example_slices(data["test"])
graders = torch.from_numpy(data["test"]["grader_masks"][[pick.get(3, 0)]])  # a slice three graders marked

# %%
spread = distance_matrices(graders, graders)
repeated = distance_matrices(graders[:, [0, 0, 0, 0]], graders)
for name, dm in (("the four graders", spread), ("grader 0, 4 times", repeated)):
    print(f"samples = {name}: GED {ged_from_distances(dm, 4).item():.3f}")

# %% [markdown]
# We also report the Hungarian-matched IoU (HM-IoU) between 16 samples and the
# graders, and the sample diversity $\mathbb{E}[d(S, S')]$.
#
# ## Re-executing this chapter
#
# Everything below is computed by this build of the book: the
# **{glue:text}`profile_name`** profile on **{glue:text}`data_kind`** LIDC data,
# {glue:text}`train_slices:,` training slices, {glue:text}`iterations:,`
# iterations per model, networks with {glue:text}`channels` channels on the
# central {glue:text}`crop_px` pixels. With the quick profile these numbers
# are a **smoke-sized check** that the code runs end to end on real data, not
# results: the headline above is the committed run's. The chapter took
# {glue:text}`seconds_taken:.0f` s.
#
# ### Data
#
# LIDC slices come with a patient-level split (`data/splits/lidc.json`): no
# patient is in two splits. Models are selected on validation slices and
# scored once on the test slices. Of the {glue:text}`test_n:,` test slices
# used here ({glue:text}`test_patients:,` patients),
# {glue:text}`test_marked_all:.0%` were marked by all four graders and
# {glue:text}`test_marked_one:.0%` by exactly one.

# %% tags=["remove-input"]
n_train = len(data["train"]["images"])
size = data["train"]["images"].shape[-1]
run.glue("data_kind", kind)
run.glue("profile_name", profile)
run.glue("train_slices", int(n_train))
run.glue("iterations", int(exp.iterations_for(cfg, n_train)))
run.glue("channels", "-".join(str(c) for c in cfg["channels"]))
run.glue("crop_px", f"{size}x{size}")
run.glue("test_n", int(len(marked)))
run.glue("test_patients", int(len(np.unique(data["test"]["groups"]))))
run.glue("test_marked_all", float(np.mean(marked == 4)))
run.glue("test_marked_one", float(np.mean(marked == 1)))
display(common.show_table(report.split_table(data), caption=f"LIDC ({kind}) slices used by this build"))

# %% [markdown]
# ### Training
#
# Every model gets the same budget, seed and learning-rate schedule; the
# weights kept are those with the lowest validation GED (a few samples on a
# fixed subset of validation slices). This is the whole training call:

# %%
# every model trained and selected on validation, then scored on the test slices, then the
# synthetic oracle check; the full profile checkpoints (run.state) and a rerun resumes
out = exp.run_experiment(cfg, run.opener, run.state, run.device, progress=False, prepared=(datasets, data))
trained = out["trained"]

# %% tags=["remove-input"]
run.glue("train_minutes", sum(r.seconds for r in trained.values()) / 60)
run.glue("time_cap_note", "; ".join(f"{report.TITLES[m]} was stopped by the time cap (max_minutes_per_model) "
                                    f"after {note}" for m, note in out["stopped_early"].items())
         or "No model was stopped by the time cap")
display(common.show_table(report.training_table(trained), caption="Training of this build (smoke-sized)"))
common.show_figure(report.training_figure(trained, kind),
                   "Left: training loss per model; right: validation GED at each check, whose lowest point gives the weights kept.")

# %% [markdown]
# Training all models took {glue:text}`train_minutes:.1f` minutes here.
# {glue:text}`time_cap_note`.
#
# ### GED against the number of samples
#
# Each model draws up to 100 samples per test slice (the Dropout U-Net fewer
# in the CPU profiles: every dropout sample runs the whole network). With
# {glue:text}`table_samples` samples this build's Probabilistic U-Net scores
# {glue:text}`pu_ged16`, the deterministic U-Net {glue:text}`unet_ged16`. A
# Probabilistic U-Net is only as good as its prior: test samples come from the
# prior, which learns to cover the posterior only through the KL term, still
# {glue:text}`pu_final_kl:.1f` nats per slice at the end of this training.
# Short schedules show exactly that.

# %% tags=["remove-input"]
curve, table, by_graders = out["curve"], out["table"], out["by_graders"]
ts = cfg["table_samples"]
run.glue("table_samples", ts)
run.glue("pu_final_kl", float(trained["prob_unet"].history[-1]["kl"]) if "prob_unet" in trained else float("nan"))
for name, key in (("prob_unet", "pu"), ("unet", "unet")):
    run.glue(f"{key}_ged16", report.table_interval(table, name, ts))
fig = report.plot_curve(curve, f"LIDC ({kind}, {profile} profile): test GED against samples").figure
fig.tight_layout()
common.show_figure(fig, "Smoke-sized: this build's test GED with 95% patient-bootstrap bands.")
display(common.show_table(report.model_table(table, ts), caption=f"This build ({profile} profile, smoke-sized)"))

# %% [markdown]
# ### Samples next to the graders
#
# Test slices marked by one, two, three and four graders (the largest lesion
# of each kind): the image with every grader's outline in its own colour, the
# first four Probabilistic U-Net samples (PU 1–4), then one sample of each
# baseline.

# %% tags=["remove-input"]
common.show_figure(report.samples_figure(report.examples_from_build(data["test"], out["evals"], out["pick"]), kind),
                   "Graders left, samples right; after minutes of CPU training the samples show the mechanics, "
                   "not the quality.")

# %% [markdown]
# ### The official code's empty-mask convention
#
# Scored as the official evaluation code does (an empty-empty pair is NaN, and
# NaN propagates through two of the three means),
# {glue:text}`pu_official_nan:.0%` of the test slices get no GED at all for
# this build's Probabilistic U-Net with {glue:text}`table_samples` samples.
# The mean over the remaining slices is computed on a different,
# model-dependent subset of slices, which is why this book uses
# $d(\emptyset, \emptyset) = 0$.

# %% tags=["remove-input"]
official = report.official_table(curve, ts)
run.glue("pu_official_nan", report.official_nan_fraction(curve, "prob_unet", ts))
display(common.show_table(official, caption=f"{ts} samples, this build: both empty-mask conventions"))

# %% [markdown]
# ### Does the GED approach an oracle's? (synthetic data)
#
# Real data cannot tell how good a GED is: the ideal model is unknown. The
# **synthetic** LIDC counterpart in `medad.data.synthetic` knows each slice's
# grader-mask distribution exactly, so it offers an *oracle sampler*. A
# Probabilistic U-Net trained on synthetic slices reaches
# {glue:text}`oracle_pu:.3f` against the true distribution with
# {glue:text}`oracle_n` samples, the oracle {glue:text}`oracle_oracle:.3f`
# (synthetic data, this build). The committed run trained its oracle-check
# model for longer: {glue:text}`long_oracle_pu:.3f` against the oracle's
# {glue:text}`long_oracle_oracle:.3f`.

# %% tags=["remove-input"]
oracle = out["oracle"]
n_or = max(cfg["sample_counts"])
run.glue("oracle_n", n_or)
run.glue("oracle_pu", report.oracle_value(oracle, "Prob. U-Net", n_or))
run.glue("oracle_oracle", report.oracle_value(oracle, "oracle", n_or))
run.glue("long_oracle_pu", report.value(lt, "Prob. U-Net", "GED", f"{n_or} samples, vs true distribution")[0])
run.glue("long_oracle_oracle", report.value(lt, "oracle", "GED", f"{n_or} samples, vs true distribution")[0])
common.show_figure(report.oracle_figure(oracle),
                   "Synthetic data: the gap between the two solid lines is model error; "
                   "the dashed lines add the noise of scoring against four drawn graders.")

# %% [markdown]
# ## Code and parameters
#
# The chapter's code lives in these modules (the report plumbing of this page
# in `medad/reports/prob_unet.py`); the parameters come from the profile, and
# every one can be overridden from the command line.

# %% tags=["remove-input"]
common.code_and_parameters("prob_unet", report.MODULES)

# %% [markdown]
# ## What this chapter did not run
#
# - The paper's schedule and networks: 240k iterations of batch 10 with 32–192 channels on whole
#   128 x 128 slices, on a GPU. The committed run's schedule is in its label above; `profile="full"`
#   runs the paper's settings on a GPU (checkpointed and resumable).
# - The Image2Image VAE baseline of the paper's comparison: not implemented, so its claim is "not
#   testable here".
# - The paper's second benchmark, Cityscapes with artificially flipped classes.
# - The paper's exact LIDC crops and split: this book uses public LIDC-IDRI crops and its own
#   patient-level split (`data/splits/lidc.json`).

# %% [markdown]
# ## What to take away
#
# - The claims table at the top sums it up: {glue:text}`claims_counts`. The paper's ranking, the
#   Prob. U-Net's GED below M-heads', is **{glue:text}`claim_pu_below_mheads`** in the committed run;
#   below the Dropout U-Net's **{glue:text}`claim_pu_below_dropout`**, below a U-Net ensemble's
#   **{glue:text}`claim_pu_below_ensemble`**.
# - GED rewards a model for matching the *spread* of the graders, not only
#   their average: a deterministic U-Net cannot lower its GED with more
#   samples, while a sampling model can, and the paper's estimator lowers every
#   sampling model's GED with $N$ as a matter of arithmetic, so compare models
#   at the same $N$.
# - Empty masks dominate LIDC's ambiguity: GED on slices that one grader
#   marked behaves very differently from slices that all four marked.
# - Selecting weights by validation GED can favour a deterministic network's
#   early, near-empty predictions: on a slice that only one or two of four
#   graders marked, "no nodule" is closer to most graders than any outline.
# - On synthetic data, where the truth is known, the gap to the oracle shows
#   how much of a GED value is model error and how much is the metric's own
#   sampling noise with four graders.

# %% [markdown]
# ## Exercises

# %% tags=["remove-input"] mystnb={"markdown_format": "myst"}
from medad.reports import exercises

exercises.show("prob_unet")

# %% tags=["remove-input"]
record = run.finish()
