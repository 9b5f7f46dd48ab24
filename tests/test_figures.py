"""Figures for a lecture hall: every figure of the book fits the column with text of 10 pt or more (medad.reports.style).

Each figure function is drawn on small synthetic inputs and measured the way the book shows it
(style.measure: the rendered width after the tight crop, the smallest font the renderer drew).
"""
import base64
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from medad import atlas, viz  # noqa: E402
from medad.reports import backbones as bb_report  # noqa: E402
from medad.reports import data_atlas as atlas_report  # noqa: E402
from medad.reports import egc as egc_report  # noqa: E402
from medad.reports import mvfa as mvfa_report  # noqa: E402
from medad.reports import prob_unet as pu_report  # noqa: E402
from medad.reports import style  # noqa: E402
from medad.reports import vip as vip_report  # noqa: E402
from medad.results import headline_run  # noqa: E402

RNG = np.random.default_rng(0)


def _images(n, size=64, rgb=False):
    return RNG.integers(0, 255, (n, size, size, 3) if rgb else (n, size, size), dtype=np.uint8)


def _masks(n, size=64):
    masks = np.zeros((n, size, size), bool)
    masks[:, 20:40, 15:45] = True
    return masks


def _atlas_figures():
    samples = [SimpleNamespace(image=im, label=i % 2, mask=m, grader_masks=None)
               for i, (im, m) in enumerate(zip(_images(8), _masks(8)))]
    yield "sample grid", viz.sample_grid(samples, ["normal", "abnormal"], title="a dataset: seeded training samples")
    stats = pd.DataFrame({"dataset": np.repeat([f"dataset {d}" for d in range(5)], 30),
                          "class": np.tile(["normal", "glioma", "meningioma"], 50), "mean": RNG.normal(100, 20, 150)})
    yield "intensity boxes (15 groups)", atlas_report.intensity_figure(stats)
    many = pd.DataFrame({"dataset": np.repeat([f"hyperkvasir_normal {d} (synthetic)" for d in range(14)], 4),
                         "class": "bbps-2-3", "mean": RNG.normal(100, 20, 56)})  # the synthetic build: 14 datasets
    yield "intensity boxes (14 datasets)", atlas_report.intensity_figure(many)
    per_split = pd.DataFrame({s: atlas.agreement_histogram(RNG.integers(0, 5, 50)) for s in ("train", "val", "test")})
    yield "grader agreement", atlas_report.agreement_figure(per_split, "synthetic")
    test = {"images": _images(6), "grader_masks": np.stack([_masks(6)] * 4, 1) & (RNG.random((6, 4, 1, 1)) < 0.7),
            "groups": np.array([f"synthetic-patient-test-{i:04d}" for i in range(6)])}
    yield "grader disagreement", atlas_report.disagreement_figure(test, "synthetic")
    survey = {c: {"black": RNG.random((32, 32)), "text": RNG.random((32, 32)) * 0.2} for c in ("normal", "polyp")}
    yield "overlay maps", atlas.plot_overlay_maps(survey, {"normal": "HyperKvasir normal", "polyp": "Kvasir-SEG polyp"},
                                                  "endoscopy_ad (100 + 100 training frames): on-screen overlays")
    yield "near-duplicate groups", atlas.plot_duplicate_groups(_IndexedFrames(_images(6, rgb=True)), [[0, 1, 2], [3, 4]])


class _IndexedFrames:
    display_name, split = "hyperkvasir_normal", "train"

    def __init__(self, images):
        self.images = images

    def __getitem__(self, i):
        return SimpleNamespace(image=self.images[i], id=f"hyper-kvasir/x/{i:08d}abcdef.jpg")


def _egc_result(methods=("gain", "plain", "gain-am")):
    n = 5
    test = {"images": _images(n, rgb=True), "masks": _masks(n), "labels": np.ones(n, int)}
    keep = {m: {"maps": RNG.random((n, 16, 16)), "prob": RNG.random(n), "lesion_index": np.arange(n)} for m in methods}
    return {"data": {"cls": {"test": test}}, "keep": keep, "pipeline": {"pred": _masks(n, 32)}}


def _egc_figures():
    yield "Grad-CAM examples", egc_report.example_figure(_egc_result(), n=3)
    hist = {f"{k}-{m}-seed{s}": [{"epoch": e, "loss": 1.0, "val": 0.1 * e + s} for e in (1, 2, 3)]
            for k, ms in (("cls", ("gain", "plain", "gain-am", "effnet-lite2-gain")), ("seg", ("unet", "ca-unet")))
            for m in ms for s in (0, 1)}
    yield "training curves", egc_report.training_curves({"histories": hist})


def _mvfa_figures():
    yield "anomaly maps", mvfa_report.anomaly_map_figure(list(_images(6)), _masks(6), RNG.random((6, 16, 16)),
                                                         RNG.random(6), "LGG brain MRI: MVFA (STAND-IN, quick profile) "
                                                         "anomaly maps, 4 abnormal then 2 normal test images")
    labels = np.array([0] * 15 + [1] * 15)
    fig, _ = mvfa_report.tsne_figure({"frozen STAND-IN tokens (no adapters)": RNG.random((30, 4)),
                                      "MVFA det adapters": RNG.random((30, 4))}, labels,
                                     title="LGG brain MRI test images (quick profile, STAND-IN)")
    yield "t-SNE", fig
    curve = pd.DataFrame({"dataset": np.repeat(["lgg_brain_ad", "endoscopy_ad", "chest_xray", "brain_mri"], 3),
                          "K": np.tile([2, 4, 8], 4), "value": RNG.random(12), "ci_low": np.nan, "ci_high": np.nan})
    yield "AUC against K", mvfa_report.k_curve_figure(curve, "MVFA image AUC against K (long-cpu, STAND-IN)")


class _FakeViP:
    def class_representations(self):
        return torch.randn(4, 8), None


def _vip_figures():
    rows = [{"true class": t, "prediction": p, "n": 10, "symptom class": c, "symptom": f"{c} symptom number {k} " * 3,
             "similarity": float(RNG.random())}
            for t in ("NORMAL", "PNEUMONIA") for p in ("right", "wrong") for c in ("NORMAL", "PNEUMONIA") for k in range(6)]
    yield "symptom similarity", vip_report.symptom_similarity_figure(pd.DataFrame(rows), "Per-symptom similarity, chest X-ray "
                                                                      "test images (quick profile, standin-effnet-lite0-minilm)")
    labels = np.repeat(np.arange(4), 10)
    yield "embedding", vip_report.embedding_figure(_FakeViP(), torch.randn(40, 8), labels,
                                                   ["glioma", "meningioma", "notumor", "pituitary"],
                                                   "Test image features and class representations s_c (quick profile)")


def _prob_unet_figures():
    run = headline_run("prob_unet")
    yield "headline GED", pu_report.headline_figure(run)
    trained = {m: SimpleNamespace(history=[{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)],
                                  validations=[{"step": s, "val_ged": 0.5} for s in (1, 3)])
               for m in ("prob_unet", "unet", "dropout_unet", "unet_ensemble", "mheads")}
    yield "training", pu_report.training_figure(trained, "synthetic")
    data = {"images": _images(4), "grader_masks": np.stack([_masks(4)] * 4, 1)}
    evals = {m: SimpleNamespace(examples={i: _masks(4) for i in range(4)})
             for m in ("prob_unet", "unet", "dropout_unet", "unet_ensemble", "mheads")}
    yield "samples", pu_report.samples_figure(pu_report.examples_from_build(data, evals, {1: 0, 2: 1, 3: 2, 4: 3}),
                                             "committed run long-cpu-2026-12-03")  # the longest title the book shows
    yield "oracle", pu_report.oracle_figure(_oracle())


def _oracle():
    return pd.DataFrame([{"sampler": s, "samples": n, "reference": r, "ged": g + 0.1 * (r == "vs 4 graders")}
                         for s, g in (("Prob. U-Net", 0.5), ("oracle", 0.3)) for n in (1, 4, 16)
                         for r in ("vs 4 graders", "vs true distribution")])


def _backbone_figures():
    pictures = [SimpleNamespace(load=lambda: _images(1, 96, rgb=True)[0]) for _ in range(4)]
    match = {"pictures": ["flower", "temple", "portrait", "gift"],
             "captions": ["a photo of a flower", "a photo of a temple", "a photo of a person in uniform",
                          "a photo of a gift box", "a photo of a cat", "a photo of a car", "a photo of a dog",
                          "a photo of a ship"], "similarity": RNG.random((4, 8)).tolist()}
    yield "captions", bb_report.caption_figure(pictures, match, "standin-effnet-lite0-minilm")
    speed = pd.DataFrame({"images/s": [100.0, 20.0, 5.0]},
                         index=["standin-effnet-lite0-minilm (STAND-IN)", "clip-vit-b-16", "clip-vit-l-14-336"])
    yield "speed", bb_report.speed_figure(speed, "cpu (x86_64, 2 cores, torch 2.13.0+cpu)")
    points = pd.DataFrame({"dataset": np.repeat(["lidc", "chest_xray", "kvasir_seg", "brain_mri"], 20)})
    points["label"] = points["dataset"] + ": " + np.where(points["dataset"].isin(["chest_xray", "brain_mri"]),
                                                          np.tile(["a", "b", "c", "d"], 20), "(no label)")
    yield "t-SNE of datasets", bb_report.layout_figure(points, RNG.random((80, 2)), "t-SNE", "standin-effnet-lite0-minilm",
                                                       ": synthetic data")


FIGURES = [_atlas_figures, _egc_figures, _mvfa_figures, _vip_figures, _prob_unet_figures, _backbone_figures]


@pytest.mark.parametrize("make", FIGURES, ids=lambda f: f.__name__.strip("_"))
def test_every_figure_fits_the_column_with_10pt_text(make):
    for name, fig in make():
        _, record = style.measure(fig)
        shown = min(record["width_in"] * style.CSS_PX_PER_INCH, style.COLUMN_PX)
        assert record["width_in"] <= style.COLUMN_IN + 0.02, (name, record)
        assert record["min_font_pt"] >= style.MIN_FONT_PT, (name, record)
        assert style.displayed_font_pt(record, shown) >= style.MIN_FONT_PT, (name, record)
        plt.close(fig)


def _is_colour_bar(ax) -> bool:
    return getattr(ax, "_colorbar", None) is not None  # matplotlib marks a colour bar's axes so


def _colour_bars(fig) -> int:
    return sum(map(_is_colour_bar, fig.axes))


def test_maps_have_colour_bars():
    assert _colour_bars(egc_report.example_figure(_egc_result(), n=2)) == 1
    atlas_maps = dict(_atlas_figures())["overlay maps"]
    assert _colour_bars(atlas_maps) == 2  # one per row: each row has its own scale
    mvfa_maps = dict(_mvfa_figures())["anomaly maps"]
    assert _colour_bars(mvfa_maps) == 1
    plt.close("all")


def test_mvfa_image_and_map_rows_are_framed_alike():
    fig = dict(_mvfa_figures())["anomaly maps"]
    fig.canvas.draw()
    panels = [ax for ax in fig.axes if not _is_colour_bar(ax)]
    assert len(panels) == 12
    top, bottom = panels[0::2], panels[1::2]
    for a, b in zip(top, bottom):
        pa, pb = a.get_position(), b.get_position()
        assert pa.width == pytest.approx(pb.width, rel=1e-3) and pa.x0 == pytest.approx(pb.x0, rel=1e-3)
        assert a.axison == b.axison and not a.get_xticks().size and not b.get_xticks().size
        assert [s.get_visible() for s in a.spines.values()] == [s.get_visible() for s in b.spines.values()]
    plt.close("all")


def test_oracle_lines_solid_for_the_true_distribution_dashed_for_four_graders():
    """What the chapter's caption says: solid = scored against the true distribution, dashed = against 4 graders."""
    fig = pu_report.oracle_figure(_oracle())
    handles = {h.get_label(): h for h in fig.axes[0].get_legend().legend_handles}
    assert handles["vs true distribution"].get_linestyle() == "-"
    assert handles["vs 4 graders"].get_linestyle() == "--"
    plt.close(fig)


def test_png_output_records_width_and_font_and_asks_for_its_width():
    fig, ax = style.subplots(height=3)
    ax.plot([0, 1])
    ax.set_title("title")
    data, metadata = style.png_output(fig)
    record = style.read_record(base64.b64decode(data))
    assert record["dpi"] == style.DPI >= 150 and record["min_font_pt"] == 10
    assert metadata == {"width": round(record["width_in"] * style.CSS_PX_PER_INCH)}
    assert style.displayed_font_pt(record, metadata["width"]) == pytest.approx(10, rel=0.01)
    assert style.displayed_font_pt(record, metadata["width"] / 2) == pytest.approx(5, rel=0.01)
    ax.set_xlabel("tiny", fontsize=6)
    assert style.measure(fig)[1]["min_font_pt"] == 6
    ax.axis("off")  # a hidden axis's labels are not drawn, so they do not count
    assert style.measure(fig)[1]["min_font_pt"] == 10
    plt.close(fig)


def test_inside_ipython_every_displayed_figure_goes_through_the_style():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        style.use()
        fig, ax = style.subplots(height=2)
        ax.plot([0, 1])
        data, metadata = shell.display_formatter.format(fig)
        record = style.read_record(base64.b64decode(data["image/png"]))
        assert record is not None and metadata["image/png"]["width"] == round(record["width_in"] * 96)
        plt.close(fig)
    finally:
        InteractiveShell.clear_instance()


def test_vip_attention_is_a_table_against_uniform_weights():
    att = pd.DataFrame({"dataset": "chest_xray", "backbone": "b", "seed": 1,
                        "class": ["NORMAL"] * 2 + ["PNEUMONIA"] * 2, "symptom": ["s1", "s2", "p1", "p2"],
                        "weight": [0.5, 0.5, 0.6, 0.4]})
    table = vip_report.attention_table(att).set_index("class")
    assert table.loc["NORMAL", "largest |weight − 1/K|"] == pytest.approx(0.0)
    assert table.loc["PNEUMONIA", "largest |weight − 1/K|"] == pytest.approx(0.1)
    assert table.loc["PNEUMONIA", "most weighted symptom"] == "p1" and table.loc["NORMAL", "K"] == 2
    assert table.loc["PNEUMONIA", "weights, min–max (1/K)"] == "0.4000–0.6000 (0.5000)"
    assert table["data"].iloc[0] == "chest X-ray (Pneumonia), b"


def test_atlas_says_not_present_in_one_line_and_measures_only_present_datasets(tmp_path):
    line = atlas_report.absent_line("bmad_his", tmp_path)
    assert line.startswith("**bmad_his** (BMAD HIS") and "not present in the data directory" in line
    assert "\n" not in line
    table = atlas_report.statistics_table({"lidc": {"images_measured": 3, "most_common_size": "128x128", "channels": 1,
                                                    "intensity_mean": 90.0, "intensity_std": 20.0, "mask_fraction": 0.1},
                                           "bmad_his": atlas.summarise_statistics(pd.DataFrame())})
    assert list(table.index) == ["lidc"]
    over = atlas_report.overview_table(["lidc", "bmad_his"], {"lidc": True, "bmad_his": False}, tmp_path)
    assert over["data"].tolist() == ["real", "not present"]
    assert atlas_report.overview_table(["bmad_his"], {"bmad_his": False})["data"].tolist() == ["synthetic"]


def test_browser_check_fails_a_figure_shown_too_small_or_drawn_outside_the_style(tmp_path):
    import importlib.util

    from medad.paths import REPO_ROOT

    spec = importlib.util.spec_from_file_location("book_browser_check", REPO_ROOT / "benchmarks" / "book_browser_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    fig, ax = style.subplots(height=3)
    ax.set_title("title")
    data, metadata = style.png_output(fig)
    good = tmp_path / "good.png"
    good.write_bytes(base64.b64decode(data))
    plain = tmp_path / "plain.png"
    fig.savefig(plain)  # a PNG without the style's record
    plt.close(fig)
    shown = metadata["width"]
    assert check.figure_problems([{"src": good.as_uri(), "shown_px": shown, "output": True}]) == []
    small = check.figure_problems([{"src": good.as_uri(), "shown_px": shown * 0.8, "output": True}])
    assert len(small) == 1 and "= 8.0 pt on the page (minimum 10 pt)" in small[0]
    assert "no 'medad-figure' record" in check.figure_problems([{"src": plain.as_uri(), "shown_px": 300, "output": True}])[0]
    assert check.figure_problems([{"src": plain.as_uri(), "shown_px": 300, "output": False}]) == []  # a logo, not a figure
    assert check.toc_pages()[0] == "book/intro" and "book/reproducing" in check.toc_pages()
