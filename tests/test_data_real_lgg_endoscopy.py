"""lgg_brain_ad, hyperkvasir_normal and endoscopy_ad on the real archives (MEDAD_DATA), with the data README's counts."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from medad.data import near_duplicates, open_dataset, registry

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not os.environ.get("MEDAD_DATA"), reason="MEDAD_DATA is not set: real-archive tests need the data directory (../shared/data in CI)"),
]
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def root() -> Path:
    return Path(os.environ["MEDAD_DATA"])


def counts(ds) -> tuple[int, ...]:
    return tuple(int(n) for n in np.bincount(ds.labels, minlength=len(ds.classes)))


def test_lgg_counts_patients_and_mask_pairing(root):
    splits = {s: open_dataset("lgg_brain_ad", s, root) for s in SPLITS}
    assert {s: counts(ds) for s, ds in splits.items()} == {"train": (159, 0), "val": (73, 28), "test": (161, 99)}
    patients = {s: set(ds.groups) for s, ds in splits.items()}
    assert [len(patients[s]) for s in SPLITS] == [8, 3, 9]
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"] or patients["val"] & patients["test"])
    assert all(g.startswith("TCGA_") and len(g.split("_")) == 4 for g in set().union(*patients.values()))
    masks_in_archive = {n for n in zipfile.ZipFile(root / "lgg-brain-ad.zip").namelist() if "/anomaly_mask/" in n}
    paired = set()
    for ds in splits.values():
        for e in ds.entries:
            if e.label == 1:
                assert e.masks == (e.image.replace("/img/", "/anomaly_mask/"),)
                paired |= set(e.masks)
            else:
                assert e.masks == ()
    assert paired == masks_in_archive and len(paired) == 127  # every Ungood slice has its mask, every mask its slice
    test = splits["test"]
    bad, good = test[int(np.flatnonzero(test.labels == 1)[0])], test[0]
    assert bad.image.shape == (256, 256) and bad.image.dtype == np.uint8 and bad.mask.any()
    assert good.mask.shape == (256, 256) and not good.mask.any()


def test_hyperkvasir_counts_and_the_readme_near_duplicates(root):
    splits = {s: open_dataset("hyperkvasir_normal", s, root) for s in SPLITS}
    assert splits["train"].classes == ("cecum", "bbps-2-3")
    assert tuple(sum(np.array(counts(ds)) for ds in splits.values())) == (400, 319)
    names = [e.image for s in SPLITS for e in splits[s].entries]
    assert len(set(names)) == 719
    pairs = near_duplicates.archive_pairs(splits["train"].archive, names)
    assert len(pairs) == 90 and len({i for p in pairs for i in p}) == 138  # the data README's count at 4 gray levels
    split_of = [s for s in SPLITS for _ in splits[s].entries]
    assert all(split_of[i] == split_of[j] for i, j in pairs)  # no near-duplicate straddles two splits
    assert [len(splits[s]) for s in SPLITS] == [494, 118, 107]


def test_endoscopy_ad_counts_and_no_near_duplicate_across_splits(root):
    splits = {s: open_dataset("endoscopy_ad", s, root) for s in SPLITS}
    assert {s: counts(ds) for s, ds in splits.items()} == {"train": (494, 800), "val": (118, 100), "test": (107, 100)}
    groups = {s: set(ds.groups) for s, ds in splits.items()}
    assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"] or groups["val"] & groups["test"])
    test = splits["test"]
    normal, polyp = test[0], test[len(test) - 1]
    assert normal.label == 0 and normal.image.shape == (352, 352, 3) and not normal.mask.any()
    assert polyp.label == 1 and polyp.mask.shape == (352, 352) and 0 < polyp.mask.mean() < 1
    shas = test.checksum.split(" + ")
    assert shas == [registry.manifest()["hyperkvasir_normal"]["sha256"], registry.manifest()["kvasir_seg"]["sha256"]]


@pytest.mark.parametrize("name", ["lgg_brain_ad", "hyperkvasir_normal"])
def test_new_archives_verify_against_the_manifest(root, name):
    status = registry.archive_status(name, root)
    assert status.state == "verified" and status.checksum == registry.manifest()[name]["sha256"]
    assert (root / registry.manifest()[name]["archive"]).stat().st_size == registry.manifest()[name]["size"]
