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
# # MVFA: adapting a vision-language model for medical anomaly detection
#
# ```{glue:md} provenance
# :format: myst
# ```
#
# A radiologist can describe an anomaly in words long before anyone has
# collected a thousand labelled examples of it. MVFA {cite}`huang2024mvfa`
# builds on that: it takes a vision-language model trained on natural images,
# inserts small residual adapters at four depths of its image encoder so that
# patch features line up with the words "normal" and "abnormal", and scores
# each patch in two ways: against a text prompt (zero-shot branch) and against
# a memory bank of the few normal images available (few-shot branch). This
# chapter re-implements it in `medad.models.mvfa`, runs its protocol in
# `medad.train.mvfa_experiment` with the official code's leaks removed
# (checkpoints chosen on validation images, never on the test set), and
# compares it with simpler baselines on the same features and splits.
#
# No CLIP weights exist on this machine. Every number below comes from the
# **STAND-IN** backbone (ImageNet EfficientNet-Lite0 joined to the MiniLM sentence
# encoder by a DeViSE map, see the backbones appendix), never from CLIP, and
# on four public datasets close to, but not the same as, the paper's BMAD
# benchmark {cite}`bao2024bmad`. The paper's own numbers are shown next to ours,
# labelled "reported", for orientation only.

# %% tags=["parameters"]
profile = "quick"        # quick | full (medad/profiles/mvfa.yml)
data_dir = None          # folder with the archives; None -> $MEDAD_DATA -> synthetic data
device = None            # None -> the profile's
seed = None
datasets = None          # None -> the profile's (quick: lgg_brain_ad, chest_xray)
k = None                 # shots: K normal + K abnormal support images
epochs = None
test_images = None       # stratified test subset per dataset
threads = None
long_run = None          # folder under results/mvfa/ to show; None -> the best committed run

# %% tags=["remove-input"]
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display

from medad.chapter import ChapterRun
from medad.reports import mvfa as rep
from medad.results import headline_run, load_reported

warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
run = ChapterRun("mvfa", profile=profile, data_dir=data_dir, device=device, seed=seed, datasets=datasets, k=k,
                 epochs=epochs, test_images=test_images, threads=threads)
cfg = run.config
if cfg.get("threads"):
    torch.set_num_threads(int(cfg["threads"]))
t_start = time.perf_counter()
reported = load_reported("mvfa")
headline = headline_run("mvfa", long_run)

# %% [markdown]
# ## What was reproduced
#
# Each claim of the paper, checked against this chapter's headline run by the rule stated under
# the tables (the front page shows the same table for all four papers).

# %% tags=["remove-input"]
from medad.reports import claims as claims_report

claims_report.show_chapter("mvfa", long_run, glue=run.glue)

# %% [markdown]
# ## Headline results
#
# The chapter's headline is its best committed run, **{glue:text}`headline_label`**.
# It was not recomputed in this build: the tables below are read from
# `results/mvfa/<run>/table.csv`. Cells are image AUC (AC) and pixel AUC (AS),
# the mean over seeds with, where the run stored per-image scores, a 95%
# bootstrap interval over test images, and the standard deviation over seeds
# (s.d.; see "Intervals" in Reproducing); "average" is the mean over
# datasets. With K = {glue:text}`headline_k` normal and K abnormal support
# images, MVFA on the STAND-IN reaches an average image AUC of
# {glue:text}`h_few_ac:.3f` over our four datasets, and
# {glue:text}`h_lgg_as:.3f` pixel AUC on LGG brain MRI. The paper reports
# {glue:text}`r_few_ac:.3f` average image AUC with CLIP ViT-L/14-336 on BMAD:
# a different backbone and different data, so the two are not comparable
# one-to-one. A large s.d. means the seeds disagree.

# %% tags=["remove-input"]
if headline is None:
    display(Markdown("**No committed run yet.** Run `python -m medad.train.mvfa_experiment --profile long_cpu "
                     "--data-dir <data> --name <run>` to create one; the re-executed quick profile is below."))
    table, label, backbone_name = None, "no committed run yet", "STAND-IN"
    run.glue("headline_label", label)
    run.glue("headline_k", int(cfg["k"]))
else:
    table, label = headline.table, headline.label
    backbone_name = "STAND-IN" if headline.provenance.get("stand_in", True) else headline.provenance.get("backbone", "")
    run.glue("headline_label", label)
    run.glue("headline_k", int(headline.provenance.get("config", {}).get("k", cfg["k"])))
few_setting = f"few-shot K={cfg['k']}" if table is None else f"few-shot K={headline.provenance['config']['k']}"
get = (lambda *a, **kw: float("nan")) if table is None else (lambda *a, **kw: rep.value(table, *a, **kw))
run.glue("h_few_ac", get("average", few_setting, "MVFA"))
run.glue("h_lgg_as", get("lgg_brain_ad", few_setting, "MVFA", "pixel AUC"))
run.glue("r_few_ac", rep.value(reported, "average", "few-shot K=4", "MVFA (reported)"))

# %% [markdown]
# **Few-shot (K = 4)**, MVFA, ours on the STAND-IN against the paper's on BMAD:

# %% tags=["remove-input"]
if table is not None:
    display(rep.headline_table(table, reported, few_setting, backbone_name))

# %% [markdown]
# **Zero-shot, leave-one-out**: adapters trained on the other datasets only,
# tested on the held-out one (zero-shot branch alone). A test of the protocol
# checks that the held-out dataset's files are opened only after training,
# and only its test split. Here MVFA's zero-shot average image AUC is
# {glue:text}`h_zero_ac:.3f` (0.5 is chance) against {glue:text}`r_zero_ac:.3f`
# reported for CLIP on BMAD: adapters trained on three other datasets of a
# different kind did not transfer on the STAND-IN.

# %% tags=["remove-input"]
if table is not None:
    if rep.paper_shape(table, "zero-shot", "MVFA", "ours").empty:
        display(Markdown("*The zero-shot stage did not finish in this run.*"))
    else:
        display(rep.headline_table(table, reported, "zero-shot", backbone_name))
run.glue("h_zero_ac", get("average", "zero-shot", "MVFA"))
run.glue("r_zero_ac", rep.value(reported, "average", "zero-shot", "MVFA (reported)"))

# %% [markdown]
# ### Baselines on the same features and splits
#
# WinCLIP-style {cite}`jeong2023winclip`: the frozen backbone's own patch
# tokens against the same text matrix, no training. PatchCore-style
# {cite}`roth2022patchcore`: a memory bank of frozen tokens, from the K-shot
# normal support images (x11 augmented) or from normal training images (the
# classic full-normal-shot detector). Projector-only (April-GAN-style
# {cite}`chen2023aprilgan`): MVFA's adapters trained the same way, but without
# the residual mix, so the backbone's features are projected, not adapted.
# Average image AUC: MVFA {glue:text}`h_few_ac:.3f`, WinCLIP-style
# {glue:text}`h_winclip:.3f`, PatchCore-style K-shot {glue:text}`h_patchcore:.3f`,
# projector-only {glue:text}`h_proj:.3f`.

# %% tags=["remove-input"]
if table is not None:
    methods = [("zero-shot", "WinCLIP-style (frozen, text)"), ("zero-shot", "MVFA"),
               (few_setting, "PatchCore-style (frozen memory bank)"),
               (few_setting, "projector-only (April-GAN-style)"), (few_setting, "MVFA")]
    methods += [(s, "PatchCore-style (frozen memory bank)") for s in table["setting"].unique() if s.startswith("full-normal")]
    display(Markdown("Image AUC:"))
    display(rep.methods_table(table, "image AUC", methods))
    display(Markdown("Pixel AUC (datasets with masks):"))
    display(rep.methods_table(table, "pixel AUC", methods))
run.glue("h_winclip", get("average", "zero-shot", "WinCLIP-style (frozen, text)"))
run.glue("h_patchcore", get("average", few_setting, "PatchCore-style (frozen memory bank)"))
run.glue("h_proj", get("average", few_setting, "projector-only (April-GAN-style)"))

# %% [markdown]
# ### Ablations, normalisation and checkpoint selection
#
# From the same trained adapters: the zero-shot branch alone, the few-shot
# branch alone, both (MVFA); each adapted level alone; MVFA's transductive
# min-max normalisation over the test set instead of the default here
# (statistics from validation images); and, for the first seed only, the
# official scripts' protocol of keeping the checkpoint with the best *test*
# score. Choosing among the run's {glue:text}`h_checks` checkpoints on the test
# set moves the average image AUC from {glue:text}`h_sel_val:.3f` to
# {glue:text}`h_sel_test:.3f` (same runs, same seed): that gap is pure selection
# on the test data, and it grows with the number of checkpoints compared (the
# official scripts compare one per epoch, 50). Test-set min-max
# normalisation gives {glue:text}`h_trans:.3f` against {glue:text}`h_few_ac:.3f`.

# %% tags=["remove-input"]
if table is not None:
    few = table[table["setting"] == few_setting]
    ablations = [(few_setting, m) for m in sorted({rep.strip_backbone(x) for x in few["method"]})
                 if m.startswith("MVFA")]
    display(rep.methods_table(table, "image AUC", ablations))
run.glue("h_sel_val", get("average", few_setting, "MVFA, checkpoint chosen on validation (same run)"))
run.glue("h_sel_test", get("average", few_setting, "MVFA, checkpoint chosen on test"))
run.glue("h_trans", get("average", few_setting, "MVFA, test-set min-max"))
_hc = headline.provenance.get("config", {}) if headline is not None else cfg
run.glue("h_checks", int(_hc["epochs"]) // max(1, int(_hc.get("check_every") or _hc["epochs"])))

# %% [markdown]
# ### AUC against K
#
# The paper's Figure 3 plots AUC against the number of shots. Where the
# committed run has more than one K (K = 4 with all seeds, other K with the
# first seed only), they are drawn here; what to see is whether more support
# images help MVFA on the STAND-IN.

# %% tags=["remove-input"]
curve = rep.k_curve(table) if table is not None else None
if curve is None or curve["K"].nunique() < 2:
    display(Markdown("*The committed run has a single K; the AUC-against-K curve (`--stages k_curve`) was not run.*"))
else:
    rep.k_curve_figure(curve, f"MVFA image AUC against K ({label.split(' (')[0]}, STAND-IN)")
    plt.show()

# %% [markdown]
# ## The method
#
# **Adapters.** After each of four stages $l$ of the frozen image encoder two
# bottleneck adapters (segmentation and detection) see the stage's tokens
# $F_l$: $M_l = \sigma(F_l W_1)$, $A_l = \sigma(M_l W_2)$ with a LeakyReLU
# $\sigma$ and no biases. The stream that flows on into the later stages is
# $F_l \leftarrow 0.8 F_l + 0.1 A_l^{seg} + 0.1 A_l^{det}$, and the middle outputs
# $M_l$, as wide as the joint image-text space, are what gets compared with text.
# On CLIP ViT-L/14-336 the adapters sit after blocks 6, 12, 18, 24; on the
# STAND-IN after EfficientNet stages 4, 5, 7 and 8 (a 8x8 and a 4x4 patch grid
# at 128 px).

# %%
from medad.models import mvfa as M
from medad.train import mvfa_experiment as X

backbone = X.load_backbone_for(cfg)            # the STAND-IN for the quick profile
model = M.MVFA(backbone, levels=cfg["levels"], seed=0)
print(backbone)
print({f"level {s}": tuple(model.adapters[str(s)].seg.down.weight.shape[::-1]) for s in model.levels})

# %% [markdown]
# **Text.** The prompt ensemble: 35 templates x 7 normal and 5 abnormal states of
# one object name per dataset ("Brain", "Chest X-ray film", ...), each sentence
# embedded and normalised, averaged per state and normalised again, a $2 \times d$
# matrix $T$. The zero-shot score of a patch is
# $\mathrm{softmax}(100 \cos(M_l, T))_{abnormal}$, summed over levels.

# %%
normal, abnormal = M.prompt_sentences("Brain")
print(len(normal), "normal sentences, e.g.", repr(normal[40]), "|", len(abnormal), "abnormal, e.g.", repr(abnormal[3]))

# %% [markdown]
# **Few-shot branch and training.** The K normal and K abnormal support images
# come from the validation split and are augmented x11 (4 rotations, 4 shifts,
# 2 flips). The adapters train on them with MONAI's {cite}`cardoso2022monai`
# focal and Dice losses on the segmentation map (where masks exist) and a
# binary cross-entropy on the mean anomaly probability, summed over levels.
# The memory bank holds the adapted tokens of the augmented normal images;
# a test patch scores $\min_b 1 - \cos(M_l(p), b)$, one matrix product for all
# patches. The final score is $0.5$ zero-shot $+ 0.5$ few-shot, each min-max
# normalised; masked datasets score an image by the max of its map.
# The cell below is the whole few-shot protocol for one dataset and seed.

# %%
opener = lambda name, split: run.open_dataset(name, split)  # noqa: E731  (records the data in the provenance)
prepared, fewshot, rows = {}, {}, []
for name in cfg["datasets"]:
    prepared[name] = X.prepare(opener, name, backbone, cfg, keep_raw=True)
    fewshot[name] = X.few_shot(prepared[name], backbone, int(cfg["k"]), int(cfg["seeds"][0]), cfg)
    rows += fewshot[name].rows
    rows += X.frozen_baselines(prepared[name], backbone, int(cfg["k"]), cfg["seeds"][:1], cfg)
quick = X.tidy(rows)

# %% [markdown]
# ## Re-executing this chapter
#
# This build ran the **{glue:text}`profile_name`** profile on
# **{glue:text}`data_kind`** data: {glue:text}`quick_datasets`, K =
# {glue:text}`quick_k`, one seed, {glue:text}`quick_epochs` epochs,
# {glue:text}`quick_test` test images per dataset, in
# {glue:text}`quick_seconds:.0f` s. These numbers are a smoke-sized check that the
# code runs end to end on real data, not results: the headline above is.

# %% tags=["remove-input"]
data_kind = "real" if run.uses_real_data else "synthetic"
run.glue("profile_name", profile)
run.glue("data_kind", data_kind)
run.glue("quick_datasets", ", ".join(rep.DATASET_TITLES.get(d, d) for d in cfg["datasets"]))
run.glue("quick_k", int(cfg["k"]))
run.glue("quick_epochs", int(cfg["epochs"]))
run.glue("quick_test", int(min(len(p.test) for p in prepared.values())))
quick_methods = [("zero-shot", "WinCLIP-style (frozen, text)"), (f"few-shot K={cfg['k']}", "PatchCore-style (frozen memory bank)"),
                 (f"few-shot K={cfg['k']}", "MVFA, zero-shot branch"), (f"few-shot K={cfg['k']}", "MVFA, few-shot branch"),
                 (f"few-shot K={cfg['k']}", "MVFA")]
display(Markdown(f"Quick profile ({data_kind} data, STAND-IN, smoke-sized), image AUC:"))
display(rep.methods_table(quick, "image AUC", quick_methods))

# %% [markdown]
# ### Anomaly maps next to the ground truth
#
# MVFA's combined anomaly maps (bottom, one colour scale) for test images of the
# datasets with masks, the ground-truth outline in yellow on the image and in
# cyan on the map. What to see: whether the bright regions of the map fall
# inside the outlined lesion, and whether normal images stay dark.

# %% tags=["remove-input"]
for name, p in prepared.items():
    if not p.test.pixel_level:
        continue
    res = fewshot[name]
    comb = M.combine(res.test_scores, res.ref_scores, True)
    lab = p.test.labels
    pick = list(np.flatnonzero(lab == 1)[:4]) + list(np.flatnonzero(lab == 0)[:2])
    fig = rep.anomaly_map_figure([p.test.raw[i] for i in pick], p.test.masks[pick].numpy(), comb.maps[pick],
                                 [float(comb.image[i]) for i in pick],
                                 f"{rep.DATASET_TITLES[name]}: MVFA (STAND-IN, quick profile) anomaly maps, "
                                 f"4 abnormal then 2 normal test images")
    plt.show()

# %% [markdown]
# ### What the adapters do to the image features
#
# t-SNE of one feature vector per test image (the mean over patches of each
# level's tokens, levels concatenated), without adapters (the frozen tokens
# mapped to the joint space) and with MVFA's detection adapters. The silhouette
# score of normal vs abnormal, in the feature space with cosine distance, puts a
# number on the picture: {glue:text}`sil_without:.3f` without and
# {glue:text}`sil_with:.3f` with the adapters ({glue:text}`tsne_dataset`).

# %% tags=["remove-input"]
name = cfg["datasets"][0]
p = prepared[name]
n_t = min(int(cfg["tsne_images"]), len(p.test))
with torch.no_grad():
    f_without = rep.image_features(M.FrozenTokens(backbone, levels=cfg["levels"])(p.test.images[:n_t]))
    f_with = rep.image_features(fewshot[name].model(p.test.images[:n_t]))
fig, sil = rep.tsne_figure({"frozen STAND-IN tokens (no adapters)": f_without, "MVFA det adapters": f_with},
                           p.test.labels[:n_t], seed=run.seed,
                           title=f"{rep.DATASET_TITLES[name]} test images (quick profile, STAND-IN)")
plt.show()
run.glue("sil_without", sil["frozen STAND-IN tokens (no adapters)"])
run.glue("sil_with", sil["MVFA det adapters"])
run.glue("tsne_dataset", f"{rep.DATASET_TITLES[name]}, {n_t} test images, quick profile")

# %% [markdown]
# ## What this chapter did not run
#
# - Real CLIP ViT-L/14-336: no weights here. The code path is tested end to end
#   with random weights (ViT-B/16 at 32 px for training, ViT-L/14-336 at 240 px on
#   PyTorch's meta device for the paper's shapes); `profile="full"` runs it
#   where weights are supplied.
# - The paper's schedule (50 epochs, batch 1, 240 px, every test image): the long
#   CPU run used the schedule in its label above, at 128 px with a stratified test
#   subset, and pixel AUC at a 64 x 64 map resolution.
# - K other than 4 with more than one seed (the AUC-against-K curve above has
#   one seed at K = 2, 8 and 16); the six BMAD datasets (not on this machine).
# - The single-level ablation scores each level of the adapters trained at all
#   four levels; it does not retrain adapters at one level.
# - In the committed run, the zero-shot leave-one-out and the projector-only
#   ablation ran with the first seed only, with {glue:text}`h_zero_train`
#   training images per class and source dataset for {glue:text}`h_zero_epochs`
#   epochs; the test-set checkpoint selection was run for the first seed only.

# %% [markdown]
# ## What to take away
#
# - The claims table at the top sums it up: {glue:text}`claims_counts`. Few-shot MVFA against a
#   frozen memory bank built from the same shots is **{glue:text}`claim_mvfa_fewshot_vs_memory_bank`**
#   here (average image AUC {glue:text}`h_few_ac:.3f` against {glue:text}`h_patchcore:.3f`). The
#   paper's {glue:text}`r_few_ac:.3f` comes from CLIP on BMAD: read it as orientation, not as a target.
# - Zero-shot MVFA above chance on a held-out dataset is **{glue:text}`claim_mvfa_zeroshot_above_chance`**
#   (average image AUC {glue:text}`h_zero_ac:.3f`; 0.5 is chance). Zero-shot transfer rests on the
#   backbone's image-text alignment, which the STAND-IN only approximates with a linear map fitted to
#   ImageNet class names.
# - The evaluation protocol moves the numbers too: choosing among {glue:text}`h_checks`
#   checkpoints on the test set gives {glue:text}`h_sel_test:.3f` instead of {glue:text}`h_sel_val:.3f`
#   on the same runs, and test-set min-max normalisation {glue:text}`h_trans:.3f`. Select on
#   validation data and say how many models were compared.
# - With a few seeds and a test subset, intervals are wide: "partly" in the table means the claimed
#   ordering held but the intervals overlap, so the run cannot rank the two.

# %% [markdown]
# ## Exercises

# %% tags=["remove-input"] mystnb={"markdown_format": "myst"}
from medad.reports import exercises

exercises.show("mvfa")

# %% tags=["remove-input"]
hcfg = headline.provenance.get("config", {}) if headline is not None else {}
run.glue("h_zero_train", int(hcfg.get("zero_train_per_class", 0)))
run.glue("h_zero_epochs", int(hcfg.get("zero_epochs", 0)))
run.glue("quick_seconds", time.perf_counter() - t_start)
record = run.finish()
