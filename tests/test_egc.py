"""Early-gastric-cancer chapter: GAIN classifier, CBAM / CA-U-Net, metrics, shortcut checks, training resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medad.errors import ConfigError, DataError
from medad.models.ca_unet import CBAM, VARIANTS, build_segmenter
from medad.models.gain import build_classifier
from medad.train import egc_data as D
from medad.train import egc_experiment as E


@pytest.fixture(scope="module")
def lite0():
    torch.manual_seed(0)
    return build_classifier("effnet-lite0", "gain", image_size=64, frozen_stages=6)


# ----------------------------------------------------------------------------- CBAM and the ablation networks


def test_cbam_matches_its_equations():
    torch.manual_seed(0)
    cbam = CBAM(8, reduction=2).eval()
    x = torch.randn(2, 8, 6, 5)
    mlp = cbam.channel.mlp
    mc = torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
    f1 = mc * x
    ms = torch.sigmoid(cbam.spatial.conv(torch.cat([f1.mean(1, keepdim=True), f1.amax(1, keepdim=True)], 1)))
    assert cbam.spatial.conv.kernel_size == (7, 7)
    torch.testing.assert_close(cbam(x), ms * f1)


def test_ablation_variants_have_their_modules_and_shapes():
    x = torch.rand(2, 3, 32, 32)
    for variant, (cbam, aspp) in VARIANTS.items():
        net = build_segmenter(variant, (4, 8, 16), seed=0).eval()
        assert net(x).shape == (2, 2, 32, 32)
        assert any(isinstance(m, CBAM) for m in net.modules()) == cbam
        assert (type(net.bottleneck).__name__ == "ASPPBottleneck") == aspp
    with pytest.raises(ConfigError, match="divisible by 4"):
        build_segmenter("ca-unet", (4, 8, 16))(torch.rand(1, 3, 30, 30))
    with pytest.raises(ConfigError, match="unknown segmentation variant"):
        build_segmenter("unet++")


# ----------------------------------------------------------------------------- GAIN


def test_closed_form_attention_equals_pytorch_grad_cam(lite0):
    from medad.compat.torchvision_ops import ensure_torchvision

    ensure_torchvision()
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(1)
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():  # the lesion direction = image 0's features at one location: a positive, non-constant map
        feats = lite0.features(images)
        lite0.fc.weight[1] = feats[0, :, 0, 0] / feats[0, :, 0, 0].norm()
    ours = lite0.attention(images).detach().numpy()
    with GradCAM(model=lite0.eval(), target_layers=[lite0.feature_layer]) as cam:
        ref = cam(input_tensor=images, targets=[ClassifierOutputTarget(1)] * 3)
    assert ours.shape == ref.shape == (3, 64, 64)
    assert ours[0].std() > 0.1  # a real map, not a constant one
    np.testing.assert_allclose(ours, ref, atol=0.02)


def test_gain_loss_terms(lite0):
    torch.manual_seed(2)
    images = torch.rand(4, 3, 64, 64)
    masks = torch.zeros(4, 64, 64, dtype=torch.bool)
    masks[1, 10:30, 20:40] = True
    masks[3, 40:60, 5:25] = True
    labels = torch.tensor([0, 1, 0, 1])
    out = lite0.loss(labels, masks, images=images)
    logits = lite0(images)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    mse = ((lite0.attention(images[[1, 3]]) - masks[[1, 3]].float()) ** 2).mean()
    torch.testing.assert_close(out["ce"], ce)
    torch.testing.assert_close(out["attention"], mse)
    torch.testing.assert_close(out["loss"], 0.9 * ce + 0.1 * mse)
    normal_only = lite0.loss(torch.zeros(4, dtype=torch.long), masks, images=images)
    assert float(normal_only["attention"]) == 0.0  # no mask term on normal images
    # the cached-trunk path gives the same loss as the image path
    same = lite0.loss(labels, masks, trunk=lite0.trunk(images))
    torch.testing.assert_close(same["loss"], out["loss"])


def test_plain_and_mining_variants():
    plain = build_classifier("effnet-lite0", "plain", image_size=64, frozen_stages=6)
    images, masks = torch.rand(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.bool)
    labels = torch.tensor([1, 1])
    out = plain.loss(labels, masks, images=images)
    torch.testing.assert_close(out["loss"], out["ce"])
    am = build_classifier("effnet-lite0", "gain-am", image_size=64, frozen_stages=6)
    out = am.loss(labels, masks, images=images)
    assert 0.0 <= float(out["mining"].detach()) <= 1.0
    with pytest.raises(ConfigError, match="needs the images"):
        am.loss(labels, masks, trunk=am.trunk(images))


def test_mining_on_cached_trunk_equals_the_image_path():
    # training passes the cached trunk for the main pass and the images for the mining pass only
    am = build_classifier("effnet-lite0", "gain-am", image_size=64, frozen_stages=6, seed=3)
    torch.manual_seed(4)
    images = torch.rand(3, 3, 64, 64)
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[2, 8:40, 16:48] = True
    labels = torch.tensor([0, 0, 1])
    both = am.loss(labels, masks, images=images, trunk=am.trunk(images))
    ref = am.loss(labels, masks, images=images)
    for key in ("ce", "attention", "mining", "loss"):
        torch.testing.assert_close(both[key], ref[key], msg=key)
    assert float(both["mining"].detach()) > 0
    both["loss"].backward()  # the mining term reaches the trainable stages through the attention map
    assert all(p.grad is not None for p in am.fc.parameters())
    with pytest.raises(ConfigError, match="same batch"):
        am.loss(labels, masks, images=images, trunk=am.trunk(images[:2]))


def test_bad_input_is_a_clear_error(tmp_path, lite0):
    with pytest.raises(DataError, match="do not match images"):
        lite0.loss(torch.tensor([1]), torch.ones(1, 32, 32, dtype=torch.bool), images=torch.rand(1, 3, 64, 64))
    with pytest.raises(DataError, match="mask must have its image's size"):
        D.resize_pair(np.zeros((40, 50, 3), np.uint8), np.zeros((40, 40), bool), 32, where="frame.jpg")
    with pytest.raises(ConfigError, match="does not exist"):
        build_classifier("resnet50", "gain", pretrained=str(tmp_path / "resnet50-missing.pth"))
    with pytest.raises(ConfigError, match="unknown architecture 'resnet-51'"):
        build_classifier("resnet-51", "gain")
    with pytest.raises(ConfigError, match="unknown classifier method"):
        build_classifier("effnet-lite0", "gradcam")


def test_random_init_is_labelled():
    model = build_classifier("effnet-lite0", "plain", pretrained=False, image_size=64, frozen_stages=6)
    assert model.weights_label == "random-init"
    assert E.method_label("effnet-lite0", "plain", model.weights_label) == "plain classifier (EfficientNet-Lite0, random-init)"


# ----------------------------------------------------------------------------- shortcut checks


def test_blanking_and_blurring_touch_only_their_regions():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 255, (2, 40, 40, 3), dtype=np.uint8)
    blank = D.blank_overlays(images)
    assert (blank[:, 30:, :10] == 0).all() and (blank[:, 5:20, :5] == 0).all()
    np.testing.assert_array_equal(blank[:, :, 20:], images[:, :, 20:])
    masks = np.zeros((2, 40, 40), bool)
    masks[0, 15:25, 15:25] = True
    blurred = D.blur_lesions(images, masks, 0.1)
    np.testing.assert_array_equal(blurred[1], images[1])          # no lesion: unchanged
    np.testing.assert_array_equal(blurred[0, :10], images[0, :10])  # far from the lesion: unchanged
    assert np.abs(blurred[0, 18:22, 18:22].astype(int) - images[0, 18:22, 18:22]).mean() > 20
    assert blurred[0, 15:25, 15:25].std() < images[0, 15:25, 15:25].std() / 3


# ----------------------------------------------------------------------------- profiles


def test_profiles_declare_precision_and_the_rehearsal_caps_only_counts():
    from medad import profiles

    table = profiles.load("egc")
    for name in ("quick", "full", "long_cpu", "rehearse"):
        cfg = profiles.resolve_named("egc", name)
        assert cfg["precision"] in ("fp32", "bf16") and isinstance(cfg["channels_last"], bool), name
        assert set(table[name]) <= set(table["schema"]), name
    full, rehearse = table["full"], table["rehearse"]
    counts = {"seeds", "seg_seeds", "cls_epochs", "seg_epochs", "train_images", "val_images", "test_images",
              "seg_train_images", "seg_val_images", "seg_test_images", "bootstrap"}
    assert {k for k in full if rehearse.get(k) != full[k]} <= counts  # sizes, resolutions, models, precision: the full run's
    assert set(rehearse) == set(full) and len(rehearse["seeds"]) == 1 and rehearse["cls_epochs"] == rehearse["seg_epochs"] == 1
    assert "3 seeds" in E.schedule_text(profiles.resolve_named("egc", "long_cpu"))
    assert E.schedule_text(profiles.resolve_named("egc", "quick")).endswith("; float32")
    with pytest.raises(ConfigError, match="profile must be one of"):
        profiles.resolve_named("egc", "schema")


def test_choices_come_from_the_registries():
    from medad import profiles
    from medad.models.gain import METHODS

    with pytest.raises(ConfigError, match="'cls_methods'.*one of gain, plain, gain-am"):
        profiles.resolve("egc", "quick", cls_methods=["gain", "gradcam"])
    with pytest.raises(ConfigError, match="'seg_variants'.*one of " + ", ".join(VARIANTS).replace("+", r"\+")):
        profiles.resolve("egc", "quick", seg_variants=["unet++"])
    with pytest.raises(ConfigError, match="'precision'.*one of fp32, bf16"):
        profiles.resolve("egc", "quick", precision="fp16")
    with pytest.raises(ConfigError, match="extra_archs must list backbones other than arch"):
        E.check_config(profiles.resolve("egc", "quick", extra_archs=["effnet-lite0"]))
    assert list(E.CLS_METHODS) == list(METHODS)


def test_classifier_units_put_the_profile_backbone_first():
    from medad import profiles

    cfg = profiles.resolve("egc", "quick", extra_archs=["effnet-lite2"])
    assert E.classifier_units(cfg) == [("gain", "effnet-lite0", "gain"), ("plain", "effnet-lite0", "plain"),
                                       ("gain-am", "effnet-lite0", "gain-am"), ("effnet-lite2-gain", "effnet-lite2", "gain"),
                                       ("effnet-lite2-plain", "effnet-lite2", "plain")]


# ----------------------------------------------------------------------------- report tables


def test_report_tables_name_the_standin_and_keep_reported_apart():
    import pandas as pd

    from medad.reports import egc as report
    from medad.results import load_reported, row, rows_over_seeds

    rows = [rows_over_seeds(E.STANDIN[E.CLS_DATASET], "test", "GAIN (EfficientNet-Lite0, ImageNet)", "accuracy", [0.9, 0.92, 0.94], 200),
            row(E.STANDIN[E.SEG_DATASET], "test", "CA-U-Net", "iou", 0.5, 0.45, 0.55, 1, 100)]
    table = pd.DataFrame(rows)
    cls = report.classification_table(table, load_reported("egc"), "run-x")
    assert cls.loc[0, "Accuracy"] == "0.920 s.d. 0.020" and "STAND-IN" in cls.loc[0, "Data"]
    assert cls["Method"].str.endswith("(reported)").sum() == len(cls) - 1
    seg = report.segmentation_table(table, load_reported("egc"), "run-x")
    assert seg.loc[0, "IoU"] == "0.500 (0.450–0.550)" and "STAND-IN" in seg.loc[0, "Data"]
    assert report.value(table, "CA-U-Net", "iou") == 0.5 and np.isnan(report.value(table, "U-Net", "iou"))


def test_ranking_sentence_and_difference_table_read_paired_rows():
    import pandas as pd

    from medad.reports import egc as report
    from medad.train.egc_evaluation import paired_differences

    base = np.random.default_rng(0).uniform(0.2, 0.8, 60)
    runs = {"unet": [{"iou": base, "dice": base}], "ca-unet": [{"iou": base + 0.05, "dice": base + 0.05}],
            "unet+cbam": [{"iou": base + np.random.default_rng(1).normal(0, 0.05, 60), "dice": base + 0.0}]}
    table = pd.DataFrame(paired_differences(runs, np.arange(60), "unet", n_boot=300))
    sentence = report.ranking_sentence(table)
    assert "CA-U-Net is better than U-Net (Dice +0.050" in sentence
    assert "U-Net + CBAM is not told apart from U-Net" in sentence
    worse = table.assign(value=-table["value"], ci_low=-table["ci_high"], ci_high=-table["ci_low"])
    assert "CA-U-Net is worse than U-Net" in report.ranking_sentence(worse)
    shown = report.difference_table(table)
    assert list(shown.columns) == ["Method", "IoU difference", "Dice difference"] and len(shown) == 2
    assert shown.loc[shown["Method"] == "CA-U-Net minus U-Net", "Dice difference"].item().startswith("+0.050 (+")


def test_mining_sentence_compares_with_gain():
    import pandas as pd

    from medad.reports import egc as report
    from medad.results import row

    d = E.STANDIN[E.CLS_DATASET]
    rows = [row(d, "test", f"{name} (EfficientNet-Lite0, ImageNet)", metric, v, v - 0.01, v + 0.01, 3, 100)
            for name, base in (("GAIN", 0.5), ("GAIN + attention mining", 0.6))
            for metric, v in (("accuracy", base + 0.3), ("attention_iou", base - 0.2), ("pointing_game", base))]
    text = report.mining_sentence(pd.DataFrame(rows))
    assert "attention IoU 0.400 (0.390–0.410) against 0.300 (0.290–0.310)" in text
    assert "did not train" in report.mining_sentence(pd.DataFrame(rows[:3]))


def test_convergence_sentence_and_curves_of_a_run():
    from medad.reports import egc as report

    rising = [{"epoch": e, "loss": 1.0, "val": 0.1 * e} for e in (1, 2, 3)]
    flat = [{"epoch": e, "loss": 1.0, "val": v} for e, v in ((1, 0.5), (2, 0.7), (3, 0.6))]
    hist = {"seg-unet-seed0": rising, "seg-unet-seed1": rising, "seg-ca-unet-seed0": flat, "cls-gain-am-seed0": rising}
    assert report.best_in_last_epoch(hist) == (2, 3)
    assert report.convergence_sentence(hist).startswith("2 of the 3 segmenters scored their best validation Dice in "
                                                        "their last epoch (epoch 3), so the ablation compares")
    assert "levelled off" in report.convergence_sentence({"seg-unet-seed0": flat})
    assert "no training curves" in report.convergence_sentence(None)
    fig = report.training_curves({"histories": hist})
    seg_ax = fig.axes[1]
    assert len(seg_ax.lines) == 3 and [t.get_text() for t in seg_ax.get_legend().get_texts()] == ["unet", "ca-unet"]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["gain-am"]


def test_seed_table_and_tie_break_curves():
    from medad.reports import egc as report

    table = report.seed_table({"unet": [{"iou": 0.6, "dice": 0.7}, {"iou": 0.61, "dice": 0.72}]})
    assert table.to_dict("records") == [{"Method": "U-Net", "IoU, seed 1": "0.600", "IoU, seed 2": "0.610",
                                         "Dice, seed 1": "0.700", "Dice, seed 2": "0.720"}]
    assert list(report.seed_table(None).columns) == ["Method"]
    hist = {"cls-gain-seed0": [{"epoch": 1, "loss": 1.0, "val": 1.0, "val_key": [1.0, -0.3]},
                               {"epoch": 2, "loss": 0.5, "val": 1.0, "val_key": [1.0, -0.1]}]}
    fig = report.training_curves({"histories": hist})
    assert list(fig.axes[0].lines[0].get_ydata()) == [-0.3, -0.1]  # the tie-break, not the flat AUC
    assert fig.axes[0].get_ylabel() == "validation mean log-likelihood"


def test_backbone_sentence_lists_each_backbone():
    import pandas as pd

    from medad.reports import egc as report
    from medad.results import row

    d = E.STANDIN[E.CLS_DATASET]
    rows = [row(d, "test", f"{m} ({a}, ImageNet)", metric, v, v - 0.01, v + 0.01, 3, 100)
            for a, base in (("EfficientNet-Lite0", 0.3), ("EfficientNet-Lite2", 0.4))
            for m, shift in (("GAIN", 0.1), ("plain classifier", 0.0))
            for metric, v in (("attention_iou", base + shift), ("pointing_game", base + shift + 0.2))]
    text = report.backbone_sentence(pd.DataFrame(rows))
    assert ("on EfficientNet-Lite2, attention IoU 0.500 with GAIN against 0.400 without the attention loss "
            "(pointing game 0.700 against 0.600)") in text and "on EfficientNet-Lite0" in text
    assert report.backbone_sentence(pd.DataFrame(rows[:4])) == "This run trained one backbone only."


def test_runs_table_shows_the_headline_first_and_labels_older_runs():
    from medad.reports import egc as report
    from medad.results import list_runs

    runs = [r for r in list_runs("egc") if r.name.startswith("long-cpu-2026-11-23")]
    table = report.runs_table(runs, "long-cpu-2026-11-23")
    assert list(table.columns) == ["Number", "long-cpu-2026-11-23 (headline)", "long-cpu-2026-11-23b (older run)"]
    rows = table.set_index("Number")
    assert rows.loc["training arithmetic"].iloc[0].startswith("float32 (recorded before")
    b = rows["long-cpu-2026-11-23b (older run)"]
    assert b["U-Net IoU"].startswith("0.610 (0.566–0.654)") and b["GAIN accuracy"] == "0.995 s.d. 0.005"
    assert b["CA-U-Net minus U-Net, IoU"].startswith("0.064 (0.041–0.087)")
    assert rows.loc["U-Net + ASPP minus U-Net, IoU", "long-cpu-2026-11-23 (headline)"] == "–"  # that run had one seed, no pairs


def test_sign_changes_name_a_difference_that_flipped_between_runs():
    import pandas as pd

    from medad.reports import egc as report
    from medad.results import Run, row

    def run(name, low, high):
        table = pd.DataFrame([row(E.STANDIN[E.SEG_DATASET], E.PAIRED_SETTING, "U-Net + ASPP minus U-Net", "iou",
                                  (low + high) / 2, low, high, 3, 100)])
        return Run("egc", name, None, table, {"kind": "long-cpu"})

    flipped = report.sign_changes([run("new", 0.01, 0.05), run("old", -0.05, -0.02)], "new")
    assert flipped.startswith("U-Net + ASPP minus U-Net changed sign between two committed runs")
    assert "+0.030 (+0.010 to +0.050) in new (headline); -0.035 (-0.050 to -0.020) in old (older run)" in flipped
    assert report.sign_changes([run("new", 0.01, 0.05), run("old", -0.01, 0.02)], "new").startswith("No paired difference")
