"""Chest X-ray pneumonia images (Kermany et al., Cell 2018), NORMAL vs PNEUMONIA.

Public layout (Mendeley release, ``chest_xray.zip``)::

    chest_xray/{train,test}/{NORMAL,PNEUMONIA}/<name>.jpeg

Classes: ``("NORMAL", "PNEUMONIA")`` -> labels 0 / 1 (NORMAL is the normal class).
Images are decoded as grayscale (H, W): the X-rays are gray even where the
JPEG is stored as RGB. Hidden entries (``.DS_Store``, ``.ipynb_checkpoints/``)
are not images of the dataset and are left out; any other file in a class
folder, or a class folder without images, is an error.

Patients. A patient can have several images, so ``Sample.group`` is the
patient, parsed from the file name:

- ``person1_bacteria_1.jpeg``, ``person447_virus_921_1.jpeg`` -> ``person1``,
  ``person447``: bacterial and viral images of one person number are taken as
  one patient (808 train persons have both; merging two people costs a little
  balance, splitting one would leak);
- ``IM-0001-0001.jpeg``, ``IM-0011-0001-0002.jpeg`` -> ``IM-0001``, ``IM-0011``;
- ``NORMAL2-IM-1427-0001.jpeg`` -> ``NORMAL2-IM-1427``: a second numbering
  series, kept apart from ``IM-`` (328 ids occur in both; nothing says they
  are the same people);
- the later release's ``NORMAL-1003233-0001.jpeg`` / ``BACTERIA-...`` /
  ``VIRUS-...`` -> ``1003233``.

Person numbers look per split (test's ``person1`` has viral images 6-13,
train's ``person1`` bacterial images 1-2), so groups are prefixed with the
official split: ``train/person1``.

Splits. ``test`` is the official test folder (624 images: 234 / 390). The
official 16-image ``val`` folder is absent from this archive, so ``val`` is a
seeded carve-out of the official ``train`` folder: 10 % of its *patients*
(:func:`medad.data.splits.grouped_carve_out` with the ``seed`` of
``open_dataset``, default 0), so that no patient sits in both train and val.
The ViP paper carved 9:1 from train by image (4,710 / 522) and kept the 624
test images; ours is the same proportion by patient, so its image counts come
close without matching: with seed 0, train 4,683 (1,208 / 3,475) and val 533
(133 / 400) images, 2,561 and 285 patients.
"""
from __future__ import annotations

import re

from medad.data.archive import Archive
from medad.data.base import ArchiveDataset, DatasetSpec, Entry
from medad.data.registry import register
from medad.data.splits import carve, grouped_carve_out
from medad.data.synthetic import lesion_counterpart
from medad.errors import DataError

NAME = "chest_xray"
TOP = "chest_xray"
CLASSES = ("NORMAL", "PNEUMONIA")
VAL_FRACTION = 0.1
_PATIENT = (
    re.compile(r"^(?P<id>person\d+)_(?:bacteria|virus)_\d+(?:_\d+)?$"),
    re.compile(r"^(?P<id>(?:NORMAL\d+-)?IM-\d+)-\d+(?:-\d+)?$"),
    re.compile(r"^(?:NORMAL|BACTERIA|VIRUS)-(?P<id>\d+)-\d+$"),
)


def patient_id(file_name: str) -> str | None:
    """The patient of an image from its file name (see the module docstring); None if the name is not Kermany's."""
    stem = file_name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    for pattern in _PATIENT:
        m = pattern.match(stem)
        if m:
            return m["id"]
    return None


def index_folder(archive: Archive, folder: str) -> list[Entry]:
    """Entries of one official split folder (``train`` or ``test``), both classes, sorted by name."""
    entries = []
    for label, cls in enumerate(CLASSES):
        for name in archive.images_in(f"{TOP}/{folder}/{cls}", what=f"{cls} X-rays"):
            patient = patient_id(name)
            if patient is None:  # a guessed group could put one patient in train and val
                raise DataError(
                    f"{archive.where(name)}: cannot tell the patient from the file name; expected Kermany's naming: "
                    "person<N>_bacteria_<k>, person<N>_virus_<k>, [NORMAL2-]IM-<id>-<k> or NORMAL|BACTERIA|VIRUS-<id>-<k>"
                )
            entries.append(Entry(image=name, label=label, group=f"{folder}/{patient}"))
    return entries


def index_real(*, archive, split, checksum, meta, seed=0) -> ArchiveDataset:
    if split == "test":
        entries = index_folder(archive, "test")
    else:
        train = index_folder(archive, "train")
        entries = carve(train, split, grouped_carve_out([e.group for e in train], VAL_FRACTION, seed))
    return ArchiveDataset(
        name=NAME,
        split=split,
        classes=CLASSES,
        archive=archive,
        entries=entries,
        checksum=checksum,
        citation=meta["citation"],
        image_mode="L",
    )


# The synthetic counterpart: gray 64x64 'X-rays': NORMAL without a lesion, PNEUMONIA with blobs; labels only, like the real data.
make_synthetic = lesion_counterpart(NAME, CLASSES, ("NORMAL",), size=64, rgb=False, with_masks=False)


SPEC = register(
    DatasetSpec(
        name=NAME,
        title="Chest X-ray pneumonia (Kermany et al.)",
        splits=("train", "val", "test"),
        classes=CLASSES,
        index_real=index_real,
        make_synthetic=make_synthetic,
        modality="chest X-ray",
        tasks=("classification", "anomaly classification"),
    )
)
