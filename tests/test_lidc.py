"""LIDC loader on a fixture in the public layout, the committed patient split, and checksum handling."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medad.data import open_dataset, registry
from medad.data import checksums
from medad.data.lidc import grader_count, index_entries, load_arrays
from medad.data.splits import read_split_file
from medad.errors import ChecksumError, ConfigError, DataError
from fixtures import write

SPLIT = read_split_file("lidc")
PATIENTS = {"train": SPLIT["train"][:2], "val": SPLIT["val"][:1], "test": SPLIT["test"][:2]}


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def lidc_files(size: int = 16, extra_patient: str | None = None) -> dict[str, bytes]:
    """Two nodules x two slices per patient; grader g marks slice j of nodule k iff g <= j + k."""
    files = {}
    patients = [p for ps in PATIENTS.values() for p in ps] + ([extra_patient] if extra_patient else [])
    for pi, patient in enumerate(patients):
        for k in range(2):
            for j in range(2):
                base = f"LIDC-IDRI-slices/{patient}/nodule-{k}"
                files[f"{base}/images/slice-{j}.png"] = _png(np.full((size, size), 10 * pi + j, np.uint8))
                for g in range(4):
                    mask = np.zeros((size, size), np.uint8)
                    if g <= j + k:
                        mask[4:8, 4 : 8 + g] = 255
                    files[f"{base}/mask-{g}/slice-{j}.png"] = _png(mask)
    return files


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    write(path.parent, files, archive=path.name)
    return path


@pytest.fixture
def lidc_zip(tmp_path, monkeypatch):
    path = write_zip(tmp_path / "lidc-idri-slices.zip", lidc_files())
    entry = dict(registry.manifest()["lidc"], sha256=checksums.sha256_of(path), size=None)  # a fixture, not the published archive
    monkeypatch.setitem(registry.manifest(), "lidc", entry)
    return tmp_path


def test_splits_follow_committed_patient_file(lidc_zip):
    seen = {}
    for split in ("train", "val", "test"):
        ds = open_dataset("lidc", split, lidc_zip)
        assert not ds.synthetic
        assert set(ds.groups) == set(PATIENTS[split])
        assert len(ds) == 4 * len(PATIENTS[split])
        seen[split] = set(ds.groups)
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])


def test_sample_has_four_grader_masks_and_union(lidc_zip):
    ds = open_dataset("lidc", "train", lidc_zip)
    s = ds[3]  # nodule-1 slice-1: graders 0..2 mark it (g <= j + k = 2)
    assert s.image.shape == (16, 16) and s.image.dtype == np.uint8
    assert s.grader_masks.shape == (4, 16, 16)
    assert [bool(m.any()) for m in s.grader_masks] == [True, True, True, False]
    assert np.array_equal(s.mask, s.grader_masks.any(axis=0))
    assert s.group == PATIENTS["train"][0]


def test_zip_and_folder_give_identical_samples(tmp_path):
    files = lidc_files()
    folder = write(tmp_path / "extracted", files)
    zipped = write_zip(tmp_path / "zipped.zip", files)
    from medad.data.archive import Archive
    from medad.data.lidc import index_real

    meta = registry.manifest()["lidc"]
    a = index_real(archive=Archive(folder, "LIDC-IDRI-slices"), split="test", checksum="x", meta=meta)
    b = index_real(archive=Archive(zipped, "LIDC-IDRI-slices"), split="test", checksum="x", meta=meta)
    assert len(a) == len(b) > 0
    for i in range(len(a)):
        assert np.array_equal(a[i].image, b[i].image)
        assert np.array_equal(a[i].grader_masks, b[i].grader_masks)


def test_extracted_folder_is_found_and_marked_unverified(tmp_path):
    write(tmp_path, lidc_files())
    ds = open_dataset("lidc", "val", tmp_path)
    assert ds.checksum.startswith("unverified")
    assert len(ds) == 4


def test_unknown_patient_is_hashed_with_a_warning(tmp_path):
    write(tmp_path, lidc_files(extra_patient="LIDC-IDRI-9999"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        total = sum(len(open_dataset("lidc", s, tmp_path)) for s in ("train", "val", "test"))
    assert total == 4 * 6
    assert any("not in data/splits/lidc.json" in str(w.message) for w in caught)


def test_load_arrays_matches_samples_and_is_cached(lidc_zip, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    ds = open_dataset("lidc", "test", lidc_zip)
    first = load_arrays(ds, progress=False)
    assert first["images"].shape == (8, 16, 16) and first["grader_masks"].shape == (8, 4, 16, 16)
    for i in range(len(ds)):
        assert np.array_equal(first["grader_masks"][i], ds[i].grader_masks)
    monkeypatch.setattr(type(ds), "__getitem__", lambda *a: pytest.fail("cache not used"))
    second = load_arrays(ds, progress=False)
    assert np.array_equal(second["grader_masks"], first["grader_masks"])
    assert list(second["groups"]) == list(first["groups"])
    assert grader_count(first["grader_masks"]).tolist() == [1, 2, 2, 3] * 2


def test_checksum_mismatch_names_file_and_both_hashes(tmp_path, monkeypatch):
    path = write_zip(tmp_path / "lidc-idri-slices.zip", lidc_files())
    monkeypatch.setitem(registry.manifest(), "lidc", dict(registry.manifest()["lidc"], sha256="0" * 64, size=None))
    with pytest.raises(ChecksumError) as err:
        open_dataset("lidc", "train", tmp_path)
    assert str(path) in str(err.value) and "0" * 64 in str(err.value) and checksums.sha256_of(path) in str(err.value)


def test_checksum_verdict_is_cached(lidc_zip, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "fresh-cache"))
    open_dataset("lidc", "train", lidc_zip)
    monkeypatch.setattr(checksums, "sha256_of", lambda *a, **k: pytest.fail("archive hashed twice"))
    open_dataset("lidc", "val", lidc_zip)


def test_missing_mask_is_an_error_naming_the_slice(tmp_path):
    files = lidc_files()
    victim = next(n for n in files if "/mask-2/" in n)
    del files[victim]
    write(tmp_path, files)
    with pytest.raises(DataError, match="lacks grader mask"):
        open_dataset("lidc", "train", tmp_path)


def test_mask_of_wrong_size_is_an_error(tmp_path):
    files = lidc_files()
    victim = f"LIDC-IDRI-slices/{PATIENTS['train'][0]}/nodule-0/mask-0/slice-0.png"
    files[victim] = _png(np.zeros((20, 20), np.uint8))
    write(tmp_path, files)
    ds = open_dataset("lidc", "train", tmp_path)
    with pytest.raises(DataError, match="mask is 20x20 but its image .* is 16x16"):
        ds[0]


def test_corrupt_image_names_the_file(tmp_path):
    files = lidc_files()
    victim = f"LIDC-IDRI-slices/{PATIENTS['test'][0]}/nodule-0/images/slice-0.png"
    files[victim] = b"not a png"
    write(tmp_path, files)
    ds = open_dataset("lidc", "test", tmp_path)
    with pytest.raises(DataError, match="slice-0.png: not a readable image"):
        ds[0]


def test_missing_archive_lists_where_it_was_looked_for(tmp_path):
    with pytest.raises(DataError) as err:
        open_dataset("lidc", "train", tmp_path)
    message = str(err.value)
    assert "lidc-idri-slices.zip" in message and "LIDC-IDRI-slices" in message and "Download" in message


def test_missing_data_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_dataset("lidc", "train", tmp_path / "nowhere")


def test_corrupt_zip(tmp_path, monkeypatch):
    (tmp_path / "lidc-idri-slices.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="truncated.*an incomplete download"):  # smaller than the published archive
        open_dataset("lidc", "train", tmp_path)
    monkeypatch.setitem(registry.manifest(), "lidc", dict(registry.manifest()["lidc"], size=None))
    with pytest.raises(DataError, match="not a readable ZIP"):  # no size to compare: the ZIP itself is checked
        open_dataset("lidc", "train", tmp_path)


def test_unknown_dataset_and_split_list_the_choices():
    with pytest.raises(ConfigError, match="choose one of: .*lidc"):
        open_dataset("lidcc", "train")
    with pytest.raises(ConfigError, match="train, val, test"):
        open_dataset("lidc", "validation")


def test_non_lidc_archive_is_rejected():
    with pytest.raises(DataError, match="LIDC-IDRI-slices layout"):
        index_entries(["LIDC-IDRI-slices/readme.txt"])


def test_committed_split_is_patient_disjoint_and_complete():
    sets = {s: set(SPLIT[s]) for s in ("train", "val", "test")}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert sum(map(len, sets.values())) == 875
    assert SPLIT["counts"] == {s: len(v) for s, v in sets.items()}
    # 70/15/15 of the patients, as the file says
    assert abs(len(sets["train"]) / 875 - SPLIT["fractions"][0]) < 0.01


def test_split_file_regenerates_identically():
    from medad.data.splits import make_group_split

    all_patients = SPLIT["train"] + SPLIT["val"] + SPLIT["test"]
    again = make_group_split(all_patients, tuple(SPLIT["fractions"]), SPLIT["seed"])
    assert again == {s: SPLIT[s] for s in ("train", "val", "test")}
