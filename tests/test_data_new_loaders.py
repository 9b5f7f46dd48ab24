"""lgg_brain_ad, hyperkvasir_normal and endoscopy_ad on fixtures in their public layouts; near-duplicate grouping."""
from __future__ import annotations

import numpy as np
import pytest

import fixtures as fx
from medad.data import near_duplicates, open_dataset, registry
from medad.errors import DataError

REAL_MANIFEST = registry.manifest
SPLITS = ("train", "val", "test")


@pytest.fixture(autouse=True)
def unverified(monkeypatch):
    """Fixture ZIPs cannot have the real archives' SHA-256 or size: read them as if the manifest recorded neither."""
    patched = {key: dict(entry, sha256=None, size=None) for key, entry in REAL_MANIFEST().items()}
    monkeypatch.setattr(registry, "manifest", lambda: patched)


def load(name, split, root, **kwargs):
    return open_dataset(name, split, root, synthetic=False, **kwargs)


def write_endoscopy(root, kvasir=True, hk=True, zipped=True):
    if kvasir:
        fx.write(root, fx.kvasir_files(), fx.ARCHIVES["kvasir_seg"] if zipped else None)
    if hk:
        fx.write(root, fx.hyperkvasir_files(), fx.ARCHIVES["hyperkvasir_normal"] if zipped else None)
    return root


# ----------------------------------------------------------------------------- near-duplicate grouping


def test_components_join_chains_and_name_the_smallest_member():
    assert near_duplicates.components(6, [(4, 1), (1, 3), (2, 5)]).tolist() == [0, 1, 2, 1, 1, 2]


def test_threshold_is_strict_mean_absolute_difference():
    base = np.zeros((3, near_duplicates.THUMB ** 2), np.float32)
    base[1] += near_duplicates.THRESHOLD - 0.5  # just under: a near-duplicate of 0
    base[2] += near_duplicates.THRESHOLD + 0.5  # 0.5 from item 1 (a pair), 4.5 from item 0 (not)
    assert near_duplicates.near_duplicate_pairs(base) == [(0, 1), (1, 2)]


# ----------------------------------------------------------------------------- lgg_brain_ad (BMAD layout)


@pytest.mark.parametrize("zipped", [True, False])
def test_lgg_counts_masks_and_patient_groups(tmp_path, zipped):
    root = fx.write(tmp_path, fx.lgg_files(), fx.ARCHIVES["lgg_brain_ad"] if zipped else None)
    expected = {"train": (5, 0), "val": (2, 1), "test": (3, 3)}
    seen_patients = {}
    for split in SPLITS:
        ds = load("lgg_brain_ad", split, root)
        assert ds.classes == ("good", "Ungood")
        assert tuple(np.bincount(ds.labels, minlength=2)) == expected[split]
        seen_patients[split] = set(ds.groups)
        for s in ds:
            assert s.image.dtype == np.uint8 and s.image.ndim == 2
            assert s.mask.dtype == bool and s.mask.shape == s.image.shape
            assert s.mask.any() == (s.label == 1)  # Ungood: its mask; good: all false
            assert s.id.rsplit("/", 1)[1].startswith(s.group + "_")
    folders = {"train": "train", "val": "valid", "test": "test"}
    assert seen_patients == {s: {p for p, _, _ in fx.LGG_PATIENTS[folders[s]]} for s in SPLITS}


def test_lgg_ungood_slice_without_mask_is_named(tmp_path):
    files = fx.lgg_files()
    del files["lgg-brain-ad/test/Ungood/anomaly_mask/TCGA_CS_6186_20000601_2.png"]
    root = fx.write(tmp_path, files, fx.ARCHIVES["lgg_brain_ad"])
    with pytest.raises(DataError, match=r"TCGA_CS_6186_20000601_2\.png: Ungood image has no mask; expected .*anomaly_mask"):
        load("lgg_brain_ad", "test", root)


def test_lgg_title_says_what_it_is():
    title = registry.get_spec("lgg_brain_ad").title
    assert "LGG" in title and "FLAIR" in title and not title.startswith("BMAD")


# ----------------------------------------------------------------------------- hyperkvasir_normal


@pytest.mark.parametrize("zipped", [True, False])
def test_hyperkvasir_classes_from_folders_and_near_copies_in_one_split(tmp_path, zipped):
    root = fx.write(tmp_path, fx.hyperkvasir_files(), fx.ARCHIVES["hyperkvasir_normal"] if zipped else None)
    splits = {s: load("hyperkvasir_normal", s, root) for s in SPLITS}
    assert all(ds.classes == ("cecum", "bbps-2-3", "pylorus") for ds in splits.values())
    total = sum(np.bincount(ds.labels, minlength=3) for ds in splits.values())
    assert total.tolist() == [13, 10, 4]  # 12 cecum + the near copy, 10 bbps-2-3, 4 pylorus; .DS_Store and the CSV left out
    ids = {s: set(ds[i].id for i in range(len(ds))) for s, ds in splits.items()}
    assert sum(map(len, ids.values())) == 27 and not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    copy, original = fx.HK_NEAR_COPY
    holder = {s for s, names in ids.items() for n in names if n.endswith((copy, original))}
    assert len(holder) == 1  # both frames in the same split
    ds = splits[holder.pop()]
    groups = {ds[i].id.rsplit("/", 2)[-2] + "/" + ds[i].id.rsplit("/", 1)[1]: ds[i].group for i in range(len(ds))}
    assert groups[copy] == groups[original] == "0000aaaa-0000"
    all_groups = splits["train"].groups + splits["val"].groups + splits["test"].groups
    assert len(set(all_groups)) == 26 and all_groups.count("0000aaaa-0000") == 2  # the pair is the only near-copy
    assert ds[0].mask is None and ds[0].image.shape == (32, 32, 3)


def test_hyperkvasir_split_is_fixed_and_cached(tmp_path, monkeypatch):
    root = fx.write(tmp_path, fx.hyperkvasir_files(), fx.ARCHIVES["hyperkvasir_normal"])
    first = [load("hyperkvasir_normal", s, root).groups for s in SPLITS]

    def no_decoding(image):
        raise AssertionError("near-duplicate groups recomputed despite the cache")

    monkeypatch.setattr(near_duplicates, "thumbnail", no_decoding)
    assert [load("hyperkvasir_normal", s, root, seed=7).groups for s in SPLITS] == first  # the seed does not move it


def test_hyperkvasir_wrong_layout_says_what_is_expected(tmp_path):
    files = {n.replace("labeled-images/", ""): b for n, b in fx.hyperkvasir_files().items()}
    root = fx.write(tmp_path, files, fx.ARCHIVES["hyperkvasir_normal"])
    with pytest.raises(DataError, match=r"no class folders found; expected HyperKvasir's layout .*labeled-images/<tract>/<category>/<class>"):
        load("hyperkvasir_normal", "train", root)


# ----------------------------------------------------------------------------- endoscopy_ad (composed)


@pytest.mark.parametrize("zipped", [True, False])
def test_endoscopy_ad_polyps_keep_kvasir_split_and_normals_get_empty_masks(tmp_path, zipped):
    root = write_endoscopy(tmp_path, zipped=zipped)
    polyps = dict(zip(SPLITS, fx.KVASIR_COUNTS.values()))
    normal_total = 0
    for split in SPLITS:
        ds = load("endoscopy_ad", split, root)
        assert ds.classes == ("normal", "polyp") and not ds.synthetic
        assert int((ds.labels == 1).sum()) == polyps[split]
        normal_total += int((ds.labels == 0).sum())
        for i in range(len(ds)):
            s = ds[i]
            assert s.label == ds.labels[i] and s.group == ds.groups[i]
            assert s.mask.dtype == bool and s.mask.shape == s.image.shape[:2]
            assert s.mask.any() == (s.label == 1)
            assert s.group.startswith("kvasir_seg:" if s.label else "hyperkvasir_normal:")
        assert len(ds.checksum.split(" + ")) == len(ds.source.split(" + ")) == 2 and ds.provenance()["kind"] == "real"
        assert ("hyper-kvasir-normal.zip" in ds.source) == zipped
    assert normal_total == 23  # cecum + bbps-2-3; the upper-GI pylorus frames are not lower-GI normal mucosa


def test_endoscopy_ad_subset_and_missing_normal_archive(tmp_path):
    root = write_endoscopy(tmp_path, hk=False)
    with pytest.raises(DataError, match=r"dataset 'endoscopy_ad' needs hyper-kvasir-normal\.zip in .*: missing\. hyper-kvasir-normal\.zip not found"):
        load("endoscopy_ad", "test", root)
    write_endoscopy(tmp_path, kvasir=False)
    ds = load("endoscopy_ad", "train", root)
    part = ds.subset([0, len(ds) - 1])
    assert len(part) == 2 and part.labels.tolist() == [0, 1] and part[1].id == ds[len(ds) - 1].id


def test_synthetic_counterparts_are_named_and_shaped():
    lgg = open_dataset("lgg_brain_ad", "train", n=8)
    endo = open_dataset("endoscopy_ad", "train", n=8)
    assert lgg.synthetic and lgg.display_name == "lgg_brain_ad (synthetic)" and set(lgg.labels) == {0}
    assert endo.synthetic and set(endo.labels) == {0, 1} and endo[0].image.shape == (96, 96, 3)
    assert all((s.mask.any()) == (s.label == 1) for s in endo)
    assert open_dataset("hyperkvasir_normal", "test", n=4).provenance()["kind"] == "synthetic"
