"""The loaders on the real archives (MEDAD_DATA): documented counts, pairing on a sample, checksums.

Counts are those of ../shared/data/README.md, except brain Testing: 1,311
images, not the archive's 1,312 files (one is a hidden .ipynb_checkpoints copy;
see medad/data/brain_mri.py). Images are decoded for a few samples only.
"""
from __future__ import annotations

import os
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from medad.data import checksums, open_dataset, registry

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not os.environ.get("MEDAD_DATA"), reason="MEDAD_DATA is not set: real-archive tests need the data directory (../shared/data in CI)"),
]
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def root() -> Path:
    return Path(os.environ["MEDAD_DATA"])


def counts(ds) -> dict[str, int]:
    return {cls: int(n) for cls, n in zip(ds.classes, np.bincount(ds.labels, minlength=len(ds.classes)))}


def test_chest_xray_counts_and_patient_disjoint_val(root):
    train, val, test = (open_dataset("chest_xray", s, root) for s in SPLITS)
    assert counts(test) == {"NORMAL": 234, "PNEUMONIA": 390}
    assert {c: counts(train)[c] + counts(val)[c] for c in train.classes} == {"NORMAL": 1341, "PNEUMONIA": 3875}
    assert 0.08 < len(val) / (len(train) + len(val)) < 0.12  # ViP: 522 of 5,232
    assert not set(train.groups) & set(val.groups)
    for s in (test[0], val[len(val) // 2]):
        assert s.image.shape == (224, 224) and s.image.dtype == np.uint8


def test_kvasir_counts_and_pairing(root):
    for split, n in zip(SPLITS, (800, 100, 100)):
        ds = open_dataset("kvasir_seg", split, root)
        assert len(ds) == n
        for i in (0, n // 2, n - 1):
            s = ds[i]
            assert ds.entries[i].masks == (s.id.replace("/images/", "/masks/"),)
            assert s.image.shape == (352, 352, 3) and s.mask.shape == (352, 352)
            assert 0 < s.mask.mean() < 1  # every Kvasir image holds a polyp, none fills the frame


def test_brain_mri_counts_from_the_archive_listing(root):
    listing = Counter()
    for name in zipfile.ZipFile(root / "brain-tumor-mri.zip").namelist():
        parts = name.split("/")
        if len(parts) == 4 and not name.endswith("/"):  # brain-tumor-mri/<folder>/<class>/<file>: hidden copies sit deeper
            listing[parts[1], parts[2]] += 1
    train, val, test = (open_dataset("brain_mri", s, root) for s in SPLITS)
    assert counts(test) == {c: listing["Testing", c] for c in test.classes}
    assert {c: counts(train)[c] + counts(val)[c] for c in train.classes} == {c: listing["Training", c] for c in train.classes}
    assert len(test) == 1311 and len(train) + len(val) == 1905
    assert all(abs(counts(val)[c] - 0.1 * listing["Training", c]) <= 0.5 for c in val.classes)  # stratified 10 %
    assert test[0].image.shape == (224, 224)


@pytest.mark.parametrize("name", ["chest_xray", "kvasir_seg", "brain_mri", "lidc"])
def test_archive_checksums_verify_and_are_cached(root, name, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path))
    expected = registry.manifest()[name]["sha256"]
    if name == "lidc":  # indexing LIDC is the lead's test_lidc.py; the checksum is the same call open_dataset makes
        archive = registry.locate_archive(name, root)
        assert registry.archive_checksum(archive, name) == expected
    else:
        assert open_dataset(name, "test", root).checksum == expected
    assert (tmp_path / "sha256-verdicts.json").is_file()

    def rehash(path, chunk=0):
        raise AssertionError(f"{path} hashed again despite the cached verdict")

    monkeypatch.setattr(checksums, "sha256_of", rehash)
    assert registry.archive_checksum(registry.locate_archive(name, root), name) == expected
