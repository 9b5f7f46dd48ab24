"""BMAD, the medical anomaly-detection benchmark of MVFA (Bao et al., 2024; Huang et al., CVPR 2024).

Not redistributed; read from ``bmad.zip`` (top folder ``BMAD``) or an extracted
``BMAD/`` folder, unverified (no checksum in ``data/manifest.yml``). One
dataset is registered per sub-dataset, in the layout MVFA's data loaders read
(``dataset/medical_few.py`` and ``medical_zero.py`` of MediaBrain-SJTU/MVFA-AD,
after its pre-processing of the BMAD release)::

    BMAD/<Sub>_AD/{train,valid,test}/{good,Ungood}/img/<name>
    BMAD/<Sub>_AD/{train,valid,test}/Ungood/anomaly_mask/<name>   (same file name; pixel-level sub-datasets)

- ``bmad_brainmri``: ``Brain_AD``, BraTS2021 MRI slices, gray, masks
- ``bmad_liverct``: ``Liver_AD``, BTCV + LiTS CT slices, gray, masks
- ``bmad_resc``: ``Retina_RESC_AD``, RESC retinal OCT, gray, masks
- ``bmad_oct17``: ``Retina_OCT2017_AD``, OCT2017 retinal OCT, gray, no masks
- ``bmad_chestxray``: ``Chest_AD``, RSNA chest X-rays, gray, no masks
- ``bmad_his``: ``Histopathology_AD``, Camelyon16 patches, RGB, no masks

Classes ``("good", "Ungood")`` -> labels 0 / 1. Splits: ``valid`` is read as
``val`` and ``test`` as ``test``, both with good and Ungood images (MVFA takes
its few-shot support images from ``valid``). ``train`` is ``train/good/img``
only: anomaly detectors train on normal images. MVFA's pre-processed release
has no ``train`` folder (BMAD's own release has ``train/good``); asking for
``train`` without one is a DataError that says so.

Masks. In a pixel-level sub-dataset every Ungood image needs its mask (same
file name under ``anomaly_mask/``; threshold 127) and a good image gets an
all-false mask, as MVFA scores it; the other sub-datasets have no masks
(``Sample.mask`` is None). Groups: ``<vol>_<slice>`` names (BraTS, LiTS, RESC)
-> the volume, ``<CLASS>-<patient>-<k>`` (OCT2017) -> the patient, otherwise
the image itself; prefixed with the folder (``Brain_AD/00124``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

import numpy as np

from medad.data.archive import Archive
from medad.data.base import ArchiveDataset, ArrayDataset, DatasetSpec, Entry
from medad.data.registry import register
from medad.data.synthetic import synthetic_lesion_dataset
from medad.errors import DataError

TOP = "BMAD"
CLASSES = ("good", "Ungood")
FOLDERS = {"train": "train", "val": "valid", "test": "test"}
MASK_THRESHOLD = 127
_GROUP = (
    re.compile(r"^(?P<id>\d+)_\d+$"),  # BraTS / LiTS / RESC: <volume>_<slice>
    re.compile(r"^[A-Za-z]+-(?P<id>\d+)-\d+$"),  # OCT2017: <CLASS>-<patient>-<k>
    re.compile(r"^(?P<id>TCGA_[A-Z0-9]{2}_[A-Z0-9]{4}_\d{8})_\d+$"),  # TCGA (LGG): <patient>_<slice>
)


@dataclass(frozen=True)
class Sub:
    """One dataset in BMAD's layout: ``<top>/<folder>/{train,valid,test}/...`` (``folder`` empty: directly under ``top``)."""

    name: str
    folder: str
    title: str
    modality: str
    pixel_level: bool
    rgb: bool = False
    top: str = TOP

    @property
    def root(self) -> str:
        return f"{self.top}/{self.folder}" if self.folder else self.top

    @property
    def group_prefix(self) -> str:
        return f"{self.folder}/" if self.folder else ""


SUBS = (
    Sub("bmad_brainmri", "Brain_AD", "BMAD BrainMRI (BraTS2021 slices)", "brain MRI", True),
    Sub("bmad_liverct", "Liver_AD", "BMAD LiverCT (BTCV + LiTS slices)", "abdominal CT", True),
    Sub("bmad_resc", "Retina_RESC_AD", "BMAD RESC retinal OCT", "retinal OCT", True),
    Sub("bmad_oct17", "Retina_OCT2017_AD", "BMAD OCT17 retinal OCT (OCT2017)", "retinal OCT", False),
    Sub("bmad_chestxray", "Chest_AD", "BMAD ChestXray (RSNA pneumonia)", "chest X-ray", False),
    Sub("bmad_his", "Histopathology_AD", "BMAD HIS histopathology (Camelyon16)", "histopathology", False, rgb=True),
)


class BMADDataset(ArchiveDataset):
    """An ArchiveDataset whose normal images get an all-false mask in pixel-level sub-datasets."""

    pixel_level = False

    def __getitem__(self, index: int):
        sample = super().__getitem__(index)
        if self.pixel_level and sample.mask is None:
            sample.mask = np.zeros(sample.image.shape[:2], bool)  # good image: no anomalous pixel
        return sample


def group_of(sub: Sub, name: str) -> str:
    stem = name.rsplit("/", 1)[1].rsplit(".", 1)[0]
    for pattern in _GROUP:
        m = pattern.match(stem)
        if m:
            return f"{sub.group_prefix}{m['id']}"
    return f"{sub.group_prefix}{stem}"


def index_split(archive: Archive, sub: Sub, split: str) -> list[Entry]:
    """Good then Ungood images of one split (train: good only), each Ungood one with its mask where the sub-dataset has masks."""
    base = f"{sub.root}/{FOLDERS[split]}"
    if split == "train" and not any(n.startswith(base + "/") for n in archive.names()):
        raise DataError(
            f"{archive.where(base + '/good/img/')}: not found. MVFA's pre-processed {sub.folder or sub.top} has only valid/ and test/ "
            "(its few-shot normals come from valid/); use split='val', or add BMAD's own train/good images there."
        )
    present = set(archive.names())
    entries = []
    for label, cls in enumerate(CLASSES[:1] if split == "train" else CLASSES):
        for image in archive.images_in(f"{base}/{cls}/img", what=f"{cls} images"):
            masks = ()
            if sub.pixel_level and cls == "Ungood":
                mask = f"{base}/Ungood/anomaly_mask/{image.rsplit('/', 1)[1]}"
                if mask not in present:
                    raise DataError(f"{archive.where(image)}: Ungood image has no mask; expected {mask} ({sub.name} is pixel-level)")
                masks = (mask,)
            entries.append(Entry(image=image, label=label, masks=masks, group=group_of(sub, image)))
    return entries


def index_real(*, archive, split, checksum, meta, seed=0, sub: Sub) -> BMADDataset:
    ds = BMADDataset(
        name=sub.name,
        split=split,
        classes=CLASSES,
        archive=archive,
        entries=index_split(archive, sub, split),
        checksum=checksum,
        citation=meta["citation"],
        image_mode="RGB" if sub.rgb else "L",
        mask_threshold=MASK_THRESHOLD,
    )
    ds.pixel_level = sub.pixel_level
    return ds


def make_synthetic(split: str, seed: int = 0, n: int | None = None, *, sub: Sub):
    """64x64 images, good without and Ungood with lesions (masks where the sub-dataset has them); train is good only."""
    n = 64 if n is None else n
    ds = synthetic_lesion_dataset(
        name=sub.name, split=split, seed=seed, n=2 * n if split == "train" else n, classes=CLASSES,
        normal_classes=("good",), size=64, rgb=sub.rgb, with_masks=sub.pixel_level,
    )
    if split != "train":
        return ds
    keep = ds.labels == 0  # labels are balanced, so exactly n of the 2n are good
    return ArrayDataset(
        name=ds.name, split=split, classes=CLASSES, images=ds.images[keep], labels=ds.labels[keep],
        masks=None if ds.masks is None else ds.masks[keep], synthetic=True,
        source=f"{ds.source}, good images only", citation=ds.citation,
    )


def spec_for(sub: Sub, archive_key: str) -> DatasetSpec:
    """The registry entry of a dataset in BMAD's layout, read from the archive ``archive_key`` of data/manifest.yml."""
    return DatasetSpec(
        name=sub.name,
        title=sub.title,
        splits=("train", "val", "test"),
        classes=CLASSES,
        index_real=partial(index_real, sub=sub),
        make_synthetic=partial(make_synthetic, sub=sub),
        modality=sub.modality,
        tasks=("anomaly classification", "pixel-level anomaly segmentation") if sub.pixel_level else ("anomaly classification",),
        archive_key=archive_key,
    )


SPECS = {sub.name: register(spec_for(sub, "bmad")) for sub in SUBS}
