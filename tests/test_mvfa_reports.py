"""The MVFA chapter's plumbing: tables in the paper's shape, the profile's schema, the t-SNE silhouette."""
from __future__ import annotations

import numpy as np
import pandas as pd
import yaml

from medad.paths import REPO_ROOT
from medad.reports import mvfa as rep
from medad.results import load_reported, row


def _table():
    return pd.DataFrame([
        row("lgg_brain_ad", "few-shot K=4", "MVFA [STAND-IN]", "image AUC", 0.75, 0.70, 0.80, 3, 80),
        row("lgg_brain_ad", "few-shot K=4", "MVFA [STAND-IN]", "pixel AUC", 0.93, 0.92, 0.94, 3, 80),
        row("chest_xray", "few-shot K=4", "MVFA [STAND-IN]", "image AUC", 0.81, 0.79, 0.83, 3, 80),
        row("chest_xray", "few-shot K=4", "PatchCore-style (frozen memory bank) [STAND-IN]", "image AUC", 0.7, seeds=3, n=80),
    ])


def test_paper_shape_and_headline_table_keep_ours_and_reported_apart():
    ours = rep.paper_shape(_table(), "few-shot K=4", "MVFA", "ours")
    assert ours.loc["LGG brain MRI", "ours AC"] == "0.750 (0.700–0.800)"
    assert ours.loc["Chest X-ray", "ours AS"] == "–"  # no masks: an empty cell, not a number
    both = rep.headline_table(_table(), load_reported("mvfa"), "few-shot K=4", "STAND-IN")
    assert both.loc["BrainMRI (BMAD)", "reported (CLIP, BMAD) AC"] == "0.924"
    assert both.loc["LGG brain MRI", "reported (CLIP, BMAD) AC"] == "–"  # never on the same row
    assert rep.value(_table(), "chest_xray", "few-shot K=4", "PatchCore-style (frozen memory bank)") == 0.7
    assert np.isnan(rep.value(_table(), "brain_mri", "few-shot K=4", "MVFA"))


def test_reported_numbers_are_fractions_with_sources():
    rep_ = load_reported("mvfa")
    assert rep_["value"].between(0, 1).all() and rep_["source"].str.len().gt(10).all()
    avg = rep.value(rep_, "average", "few-shot K=4", "MVFA (reported)")
    six = rep_[(rep_.setting == "few-shot K=4") & (rep_.metric == "image AUC") & rep_.dataset.str.startswith("bmad")]
    assert len(six) == 6 and abs(six["value"].mean() - avg) < 5e-4  # the paper's average is the mean of its six


def test_every_profile_key_is_declared_in_the_schema():
    data = yaml.safe_load((REPO_ROOT / "medad" / "profiles" / "mvfa.yml").read_text())
    for profile in ("quick", "full", "long_cpu"):
        missing = set(data[profile]) - set(data["schema"])
        assert not missing, (profile, missing)


def test_silhouette_separates_separable_features_and_not_mixed_ones():
    import matplotlib

    matplotlib.use("Agg")
    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 20)
    apart = np.vstack([rng.normal(0, 0.1, (20, 5)) + [3, 0, 0, 0, 0], rng.normal(0, 0.1, (20, 5)) + [0, 3, 0, 0, 0]])
    mixed = rng.normal(0, 1, (40, 5)) + 5
    fig, sil = rep.tsne_figure({"apart": apart, "mixed": mixed}, labels, seed=0)
    assert sil["apart"] > 0.8 and abs(sil["mixed"]) < 0.1
    assert fig.axes[0].get_xlabel().startswith("t-SNE")


def test_k_curve_collects_every_few_shot_k_of_one_method():
    t = pd.concat([_table(), pd.DataFrame([
        row("lgg_brain_ad", "few-shot K=2", "MVFA [STAND-IN]", "image AUC", 0.6, seeds=1, n=80),
        row("lgg_brain_ad", "few-shot K=8", "MVFA [STAND-IN]", "image AUC", 0.8, seeds=1, n=80),
        row("lgg_brain_ad", "zero-shot", "MVFA [STAND-IN]", "image AUC", 0.5, seeds=1, n=80),
        row("lgg_brain_ad", "few-shot K=4, overlay boxes masked", "MVFA [STAND-IN]", "image AUC", 0.7, seeds=1, n=80)])])
    curve = rep.k_curve(t)
    lgg = curve[curve.dataset == "lgg_brain_ad"]
    assert lgg["K"].tolist() == [2, 4, 8] and lgg["value"].tolist() == [0.6, 0.75, 0.8]
    import matplotlib

    matplotlib.use("Agg")
    fig = rep.k_curve_figure(curve, "t")
    assert fig.axes[0].get_ylabel() == "image AUC"


def test_seeds_note_says_when_two_methods_ran_different_seeds():
    t = pd.DataFrame([row("average", "few-shot K=4", "MVFA [STAND-IN]", "pixel AUC", 0.93, seeds=3, n=0),
                      row("average", "few-shot K=4", "projector-only (April-GAN-style) [STAND-IN]", "pixel AUC", 0.94,
                          seeds=1, n=0)])
    note = rep.seeds_note(t, "few-shot K=4", "projector-only (April-GAN-style)", "MVFA")
    assert "projector-only ran 1 seed and MVFA 3" in note
    assert rep.seeds_note(t, "few-shot K=4", "MVFA", "MVFA") == "" and rep.seeds_note(None, "x", "a", "b") == ""


def test_below_chance_counts_datasets_whose_whole_interval_is_under_one_half():
    import pandas as pd

    from medad.reports import mvfa as rep

    rows = [("a", 0.30, 0.20, 0.45), ("b", 0.40, 0.30, 0.55), ("c", 0.80, 0.70, 0.90), ("average", 0.2, 0.1, 0.3)]
    table = pd.DataFrame([{"dataset": d, "setting": "zero-shot", "method": "MVFA [STAND-IN]", "metric": "image AUC",
                           "value": v, "ci_low": lo, "ci_high": hi} for d, v, lo, hi in rows])
    assert rep.below_chance_count(table, "zero-shot", "MVFA") == "1 of 3 datasets"  # b's interval reaches 0.55
    assert rep.below_chance_count(table, "zero-shot", "other") == "no dataset"


def test_zero_shot_source_range_reads_the_units_best_selection_auc():
    from types import SimpleNamespace

    from medad.reports import mvfa as rep

    training = {"zero_shot/a/0": {"best": {"val": {"value": 0.91}}}, "zero_shot/b/0": {"best": {"val": {"value": 0.99}}},
                "few_shot/a/0": {"best": {"val": {"value": 0.10}}}}
    assert rep.zero_shot_source_range(SimpleNamespace(provenance={"training": training})) == "0.910–0.990"
    assert rep.zero_shot_source_range(SimpleNamespace(provenance={})) == "–"
