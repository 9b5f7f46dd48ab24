"""The loaders of chest_xray, kvasir_seg, brain_mri, BMAD and derm7pt on fixtures in their public layouts."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import fixtures as fx
from medad.data import available_real, get_spec, list_datasets, open_dataset, registry
from medad.data.chest_xray import patient_id
from medad.errors import ChecksumError, ConfigError, DataError

REAL_MANIFEST = registry.manifest
OURS = ("chest_xray", "kvasir_seg", "brain_mri", "derm7pt") + tuple(fx.BMAD_FOLDERS)


@pytest.fixture(autouse=True)
def unverified(monkeypatch):
    """Fixture ZIPs cannot have the real archives' SHA-256: read them as if the manifest recorded none (nor a size)."""
    patched = {key: dict(entry, sha256=None, size=None) for key, entry in REAL_MANIFEST().items()}
    monkeypatch.setattr(registry, "manifest", lambda: patched)


def load(name, split, root, **kwargs):
    return open_dataset(name, split, root, synthetic=False, **kwargs)


def class_counts(ds) -> dict[str, int]:
    return {cls: int(n) for cls, n in zip(ds.classes, np.bincount(ds.labels, minlength=len(ds.classes)))}


def assert_same_samples(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert (x.id, x.label, x.group) == (y.id, y.label, y.group)
        assert np.array_equal(x.image, y.image)
        assert (x.mask is None) == (y.mask is None)
        if x.mask is not None:
            assert np.array_equal(x.mask, y.mask)


# ----------------------------------------------------------------------------- registry


def test_every_loader_is_registered_with_three_splits():
    assert set(OURS) <= set(list_datasets())
    for name in OURS:
        spec = get_spec(name)
        assert spec.splits == ("train", "val", "test")
    assert get_spec("brain_mri").classes == ("notumor", "glioma", "meningioma", "pituitary")
    assert get_spec("bmad_resc").classes == ("good", "Ungood")
    assert get_spec("bmad_resc").manifest_key == "bmad"


def test_unknown_dataset_and_split_list_the_choices():
    with pytest.raises(ConfigError, match="choose one of: .*chest_xray.*kvasir_seg"):
        open_dataset("chest-xray")
    with pytest.raises(ConfigError, match="no split 'validation'; choose one of: train, val, test"):
        open_dataset("kvasir_seg", "validation")


@pytest.mark.parametrize(
    "name, files, archive",
    [
        ("chest_xray", fx.chest_xray_files, "chest_xray"),
        ("brain_mri", fx.brain_mri_files, "brain_mri"),
        ("kvasir_seg", fx.kvasir_files, "kvasir_seg"),
        ("bmad_brainmri", fx.bmad_files, "bmad"),
        ("bmad_his", fx.bmad_files, "bmad"),
        ("derm7pt", fx.derm_files, "derm7pt"),
    ],
)
def test_zip_and_extracted_folder_give_identical_samples(tmp_path, name, files, archive):
    content = files()
    from_zip = fx.write(tmp_path / "z", content, fx.ARCHIVES[archive])
    from_folder = fx.write(tmp_path / "f", content)
    for split in ("train", "val", "test"):
        a, b = load(name, split, from_zip), load(name, split, from_folder)
        assert a.source.endswith(".zip") and b.checksum == "unverified (extracted folder)"
        assert_same_samples(list(a), list(b))


def test_missing_archive_names_the_places_looked_in(tmp_path):
    with pytest.raises(DataError, match=r"kvasir-seg\.zip not found .*Kvasir-SEG/"):
        load("kvasir_seg", "train", tmp_path)
    with pytest.raises(DataError, match=r"bmad\.zip not found .*BMAD/"):
        load("bmad_oct17", "test", tmp_path)


def test_available_real_finds_bmad_under_its_shared_archive(tmp_path):
    fx.write(tmp_path, fx.bmad_files(["bmad_resc"]))
    found = available_real(tmp_path)
    assert found["bmad_resc"] and found["bmad_his"]  # one BMAD folder serves all six names
    assert not found["chest_xray"]


def test_wrong_checksum_is_refused(tmp_path, monkeypatch):
    real_sha_no_size = {key: dict(entry, size=None) for key, entry in REAL_MANIFEST().items()}
    monkeypatch.setattr(registry, "manifest", lambda: real_sha_no_size)
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    root = fx.write(tmp_path, fx.chest_xray_files(), fx.ARCHIVES["chest_xray"])
    with pytest.raises(ChecksumError, match=r"chest_xray\.zip: SHA-256 is .* expected 8c96edb2"):
        load("chest_xray", "test", root)


# ----------------------------------------------------------------------------- chest X-ray


@pytest.mark.parametrize(
    "file, patient",
    [
        ("person1_bacteria_1.jpeg", "person1"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("IM-0001-0001.jpeg", "IM-0001"),
        ("IM-0011-0001-0002.jpeg", "IM-0011"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        ("NORMAL-1003233-0001.jpeg", "1003233"),
        ("chest_xray/train/PNEUMONIA/BACTERIA-7422-0001.jpeg", "7422"),
        ("scan_17.jpeg", None),
    ],
)
def test_chest_patient_ids_from_kermany_names(file, patient):
    assert patient_id(file) == patient


def test_chest_counts_labels_and_patient_disjoint_val(tmp_path):
    files = fx.chest_xray_files()
    root = fx.write(tmp_path, files)
    expected = Counter(tuple(n.split("/")[1:3]) for n in files if not n.endswith(".DS_Store"))
    train, val, test = (load("chest_xray", s, root) for s in ("train", "val", "test"))
    assert class_counts(test) == {"NORMAL": expected["test", "NORMAL"], "PNEUMONIA": expected["test", "PNEUMONIA"]}
    together = Counter(train.classes[label] for label in np.concatenate([train.labels, val.labels]))
    assert together == {"NORMAL": expected["train", "NORMAL"], "PNEUMONIA": expected["train", "PNEUMONIA"]}
    assert all(s.id.split("/")[2] == test.classes[s.label] for s in test)
    # 10 % of the 20 train patients, with every image of a chosen patient
    assert len(set(val.groups)) == 2 and not set(val.groups) & set(train.groups)
    assert {s.group for s in test} == {"test/IM-0101", "test/NORMAL2-IM-0102", "test/person1", "test/person2"}
    assert "train/person4" in set(train.groups) | set(val.groups)  # person4_virus_99_1 joins person4
    image = test[0].image
    assert image.dtype == np.uint8 and image.shape == (16, 20)  # gray


def test_chest_val_carve_out_is_seeded(tmp_path):
    root = fx.write(tmp_path, fx.chest_xray_files())
    val_ids = {seed: tuple(e.image for e in load("chest_xray", "val", root, seed=seed).entries) for seed in range(6)}
    assert val_ids[0] == tuple(e.image for e in load("chest_xray", "val", root, seed=0).entries)
    assert len(set(val_ids.values())) > 1


def test_chest_unknown_file_name_is_an_error(tmp_path):
    files = fx.chest_xray_files()
    files["chest_xray/train/NORMAL/scan_17.jpeg"] = fx.image_bytes("scan_17.jpeg")
    with pytest.raises(DataError, match=r"train/NORMAL/scan_17\.jpeg: cannot tell the patient"):
        load("chest_xray", "train", fx.write(tmp_path, files))


def test_split_folder_without_images_is_an_error(tmp_path):
    files = {n: b for n, b in fx.chest_xray_files().items() if "/test/PNEUMONIA/" not in n}
    root = fx.write(tmp_path, files, fx.ARCHIVES["chest_xray"])
    with pytest.raises(DataError, match=r"chest_xray\.zip:chest_xray/test/PNEUMONIA/: no PNEUMONIA X-rays found"):
        load("chest_xray", "test", root)


def test_unexpected_file_in_class_folder_is_an_error(tmp_path):
    files = fx.chest_xray_files()
    files["chest_xray/test/NORMAL/notes.txt"] = b"scanned 2017"
    with pytest.raises(DataError, match=r"test/NORMAL/notes\.txt: unexpected entry"):
        load("chest_xray", "test", fx.write(tmp_path, files))


def test_unreadable_image_names_the_file(tmp_path):
    files = fx.chest_xray_files()
    fx.corrupt(files, "chest_xray/test/NORMAL/IM-0101-0001.jpeg")
    ds = load("chest_xray", "test", fx.write(tmp_path, files, fx.ARCHIVES["chest_xray"]))
    with pytest.raises(DataError, match=r"chest_xray\.zip:chest_xray/test/NORMAL/IM-0101-0001\.jpeg: not a readable image"):
        ds[0]


# ----------------------------------------------------------------------------- brain MRI


def test_brain_counts_hidden_copy_and_stratified_val(tmp_path):
    root = fx.write(tmp_path, fx.brain_mri_files(per_class_train=10, per_class_test=2))
    train, val, test = (load("brain_mri", s, root) for s in ("train", "val", "test"))
    assert class_counts(test) == dict.fromkeys(fx.BRAIN_CLASSES, 2)  # the .ipynb_checkpoints copy is not an image of the set
    assert class_counts(val) == dict.fromkeys(fx.BRAIN_CLASSES, 1)  # 10 % of each class
    assert class_counts(train) == dict.fromkeys(fx.BRAIN_CLASSES, 9)
    assert not {s.id for s in train} & {s.id for s in val}
    assert all(f"/{val.classes[s.label]}/" in s.id for s in val)
    assert val[0].image.shape == (16, 16) and test.classes[0] == "notumor"


def test_brain_stratified_val_keeps_class_shares(tmp_path):
    files = fx.brain_mri_files(per_class_train=0, per_class_test=1)
    for cls, n in zip(fx.BRAIN_CLASSES, (30, 10, 20, 40)):
        for i in range(n):
            files[f"brain-tumor-mri/Training/{cls}/Tr-{cls[:2]}_{i:04d}.jpg"] = b""  # indexing never decodes
    root = fx.write(tmp_path, files)
    val = load("brain_mri", "val", root, seed=3)
    assert class_counts(val) == {"notumor": 3, "glioma": 1, "meningioma": 2, "pituitary": 4}
    assert [e.image for e in val.entries] == [e.image for e in load("brain_mri", "val", root, seed=3).entries]


# ----------------------------------------------------------------------------- Kvasir-SEG


def test_kvasir_splits_and_mask_pairing(tmp_path):
    root = fx.write(tmp_path, fx.kvasir_files(), fx.ARCHIVES["kvasir_seg"])
    counts = {s: len(load("kvasir_seg", s, root)) for s in ("train", "val", "test")}
    assert counts == {"train": 4, "val": 2, "test": 2}
    ds = load("kvasir_seg", "val", root)
    for entry, sample in zip(ds.entries, ds):
        assert entry.masks == (sample.id.replace("/images/", "/masks/"),)
        assert sample.label == 0 and sample.image.shape == (16, 20, 3) and sample.mask.dtype == bool
        r0, r1, c0, c1 = fx.MASK_BOX
        expected = np.zeros((16, 20), bool)
        expected[r0:r1, c0:c1] = True
        assert np.array_equal(sample.mask, expected)  # JPEG noise stays under the 127 threshold


def test_kvasir_image_without_mask(tmp_path):
    files = fx.kvasir_files()
    del files["Kvasir-SEG/test/masks/1.jpg"]
    with pytest.raises(DataError, match=r"test/images/1\.jpg: image has no mask; expected Kvasir-SEG/test/masks/1\.jpg"):
        load("kvasir_seg", "test", fx.write(tmp_path, files))


def test_kvasir_mask_without_image(tmp_path):
    files = fx.kvasir_files()
    del files["Kvasir-SEG/train/images/3.jpg"]
    with pytest.raises(DataError, match=r"train/masks/3\.jpg: mask has no image"):
        load("kvasir_seg", "train", fx.write(tmp_path, files))


def test_kvasir_mask_of_wrong_size(tmp_path):
    files = fx.kvasir_files()
    fx.resize(files, "Kvasir-SEG/train/masks/2.jpg", (9, 7))
    ds = load("kvasir_seg", "train", fx.write(tmp_path, files))
    with pytest.raises(DataError, match=r"masks/2\.jpg: mask is 7x9 but its image .*images/2\.jpg is 20x16"):
        ds[2]


# ----------------------------------------------------------------------------- BMAD


@pytest.mark.parametrize("name", list(fx.BMAD_FOLDERS))
def test_bmad_sub_datasets(tmp_path, name):
    folder, has_masks, rgb, _ = fx.BMAD_FOLDERS[name]
    root = fx.write(tmp_path, fx.bmad_files([name]), fx.ARCHIVES["bmad"])
    val, test, train = (load(name, s, root) for s in ("val", "test", "train"))
    assert class_counts(val) == dict(zip(("good", "Ungood"), fx.BMAD_COUNTS["valid"]))
    assert class_counts(test) == dict(zip(("good", "Ungood"), fx.BMAD_COUNTS["test"]))
    assert class_counts(train) == {"good": 3, "Ungood": 0}  # normal images only
    assert all(f"/{folder}/valid/{val.classes[s.label]}/img/" in s.id for s in val)
    for sample in test:
        assert sample.image.shape == ((16, 20, 3) if rgb else (16, 20))
        if not has_masks:
            assert sample.mask is None
        elif sample.label == 0:
            assert sample.mask.shape == (16, 20) and not sample.mask.any()
        else:
            assert sample.mask.sum() == (fx.MASK_BOX[1] - fx.MASK_BOX[0]) * (fx.MASK_BOX[3] - fx.MASK_BOX[2])


def test_bmad_groups_are_volumes_or_patients(tmp_path):
    files = fx.bmad_files(["bmad_brainmri", "bmad_oct17"])
    files["BMAD/Brain_AD/test/good/img/00777_61.png"] = files["BMAD/Brain_AD/test/good/img/00106_60.png"]
    root = fx.write(tmp_path, files)
    groups = load("bmad_brainmri", "test", root).groups
    assert "Brain_AD/00777" in groups and "Brain_AD/00106" in groups
    assert load("bmad_oct17", "val", root).groups[0] == "Retina_OCT2017_AD/101"


def test_bmad_without_train_folder_says_so(tmp_path):
    root = fx.write(tmp_path, fx.bmad_files(["bmad_liverct"], with_train=False))
    assert len(load("bmad_liverct", "val", root)) == 5
    with pytest.raises(DataError, match=r"Liver_AD/train/good/img/?: not found\. MVFA's pre-processed Liver_AD has only valid/ and test/"):
        load("bmad_liverct", "train", root)


def test_bmad_ungood_image_without_mask(tmp_path):
    files = fx.bmad_files(["bmad_resc"])
    missing = next(n for n in files if "/test/Ungood/anomaly_mask/" in n)
    del files[missing]
    with pytest.raises(DataError, match=r"Ungood image has no mask; expected .*anomaly_mask/.*bmad_resc is pixel-level"):
        load("bmad_resc", "test", fx.write(tmp_path, files))


def test_bmad_mask_of_wrong_size(tmp_path):
    files = fx.bmad_files(["bmad_brainmri"])
    mask = next(n for n in files if "/valid/Ungood/anomaly_mask/" in n)
    fx.resize(files, mask, (5, 5))
    ds = load("bmad_brainmri", "val", fx.write(tmp_path, files))
    bad = next(i for i, e in enumerate(ds.entries) if e.masks == (mask,))
    with pytest.raises(DataError, match="mask is 5x5 but its image"):
        ds[bad]


# ----------------------------------------------------------------------------- Derm7pt


def test_derm7pt_melanoma_and_nevus_of_the_release_splits(tmp_path):
    root = fx.write(tmp_path, fx.derm_files(), fx.ARCHIVES["derm7pt"])
    for split, (n_nevus, n_mel) in fx.DERM_COUNTS.items():
        ds = load("derm7pt", split, root)
        assert class_counts(ds) == {"nevus": n_nevus, "melanoma": n_mel}
    test = load("derm7pt", "test", root)
    assert test.groups == ["case10", "case11", "case12", "case13"] and list(test.labels) == [0, 1, 0, 1]
    assert test[1].image.shape == (16, 20, 3) and test[1].id == "release_v0/images/Fxx/Fxl011.jpg"


def test_derm7pt_bad_metadata(tmp_path):
    files = fx.derm_files()
    files["release_v0/meta/valid_indexes.csv"] = b"indexes\n6\n99\n"
    with pytest.raises(DataError, match=r"valid_indexes\.csv: index '99' is not a row of meta\.csv \(0\.\.12\)"):
        load("derm7pt", "val", fx.write(tmp_path / "a", files))
    files = fx.derm_files()
    del files["release_v0/images/Fxx/Fxl011.jpg"]
    with pytest.raises(DataError, match=r"images/Fxx/Fxl011\.jpg: missing; meta\.csv row 10 \(case 11\)"):
        load("derm7pt", "test", fx.write(tmp_path / "b", files))
    files = fx.derm_files()
    files["release_v0/meta/meta.csv"] = b"case_num,diagnosis\n1,melanoma\n"
    with pytest.raises(DataError, match=r"meta\.csv: no column\(s\) derm"):
        load("derm7pt", "train", fx.write(tmp_path / "c", files))


# ----------------------------------------------------------------------------- synthetic counterparts


REAL_LOOK = {  # name -> (gray?, has masks) of the real loader
    "chest_xray": (True, False), "brain_mri": (True, False), "kvasir_seg": (False, True), "derm7pt": (False, False),
    "bmad_brainmri": (True, True), "bmad_liverct": (True, True), "bmad_resc": (True, True),
    "bmad_oct17": (True, False), "bmad_chestxray": (True, False), "bmad_his": (False, False),
}


@pytest.mark.parametrize("name", list(REAL_LOOK))
def test_synthetic_counterparts_match_the_real_kind_and_repeat(name):
    gray, has_masks = REAL_LOOK[name]
    spec = get_spec(name)
    a = open_dataset(name, "test", seed=1, n=12)
    assert a.synthetic and a.classes == spec.classes and len(a) == 12 and "(synthetic)" in a.display_name
    assert a[0].image.ndim == (2 if gray else 3)
    assert (a[0].mask is not None) == has_masks
    assert a.checksum == open_dataset(name, "test", seed=1, n=12).checksum
    assert a.checksum != open_dataset(name, "test", seed=2, n=12).checksum
    assert len(open_dataset(name, "train")) == 64  # moderate default


def test_synthetic_ground_truth_is_known():
    kvasir = open_dataset("kvasir_seg", "val", n=8)
    assert all(s.mask.any() for s in kvasir)  # every synthetic image has its polyp, like Kvasir-SEG
    resc = open_dataset("bmad_resc", "test", n=16)
    assert all(s.mask.any() == bool(s.label) for s in resc)  # good: empty mask; Ungood: the lesion's pixels
    train = open_dataset("bmad_resc", "train", n=10)
    assert len(train) == 10 and set(train.labels) == {0}  # BMAD trains on normal images
    brain = open_dataset("brain_mri", "train", n=40)
    assert sorted(Counter(brain.labels).values()) == [10, 10, 10, 10]
