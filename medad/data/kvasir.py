"""Kvasir-SEG polyp segmentation (Jha et al., MMM 2020).

Public layout (``kvasir-seg.zip``, the 800/100/100 split used by several papers)::

    Kvasir-SEG/{train,validation,test}/images/<N>.jpg    RGB endoscopy image
    Kvasir-SEG/{train,validation,test}/masks/<N>.jpg     polyp mask (JPEG, so noisy)

``validation`` is read as medad's ``val``. Classes: ``("polyp",)``: every
image holds at least one polyp (there are no normal images), so every label is
0 and the task is segmentation. An image and its mask are paired by file name
without the extension (``images/7.jpg`` <-> ``masks/7.jpg``; ``masks/7.png``
would do too); masks are thresholded at 127 (JPEG ringing stays out). An image
without a mask, a mask without an image, or a mask whose size differs from its
image's is a DataError. Each image is its own group (the release names no
patients).
"""
from __future__ import annotations

from medad.data.archive import Archive
from medad.data.base import ArchiveDataset, DatasetSpec, Entry
from medad.data.registry import register
from medad.data.synthetic import lesion_counterpart
from medad.errors import DataError

NAME = "kvasir_seg"
TOP = "Kvasir-SEG"
CLASSES = ("polyp",)
FOLDERS = {"train": "train", "val": "validation", "test": "test"}
MASK_THRESHOLD = 127


def _stem(name: str) -> str:
    return name.rsplit("/", 1)[1].rsplit(".", 1)[0]


def index_split(archive: Archive, split: str) -> list[Entry]:
    """Image/mask pairs of one split, sorted by image name."""
    folder = f"{TOP}/{FOLDERS[split]}"
    images = archive.images_in(f"{folder}/images", what="endoscopy images")
    mask_names = archive.images_in(f"{folder}/masks", what="polyp masks")
    masks = {_stem(m): m for m in mask_names}
    if len(masks) < len(mask_names):
        raise DataError(f"{archive.where(folder + '/masks/')}: two masks share a name (e.g. 7.jpg and 7.png); keep one mask per image")
    entries = []
    for image in images:
        mask = masks.pop(_stem(image), None)
        if mask is None:
            raise DataError(f"{archive.where(image)}: image has no mask; expected {folder}/masks/{_stem(image)}.jpg")
        entries.append(Entry(image=image, label=0, masks=(mask,), group=f"{FOLDERS[split]}/{_stem(image)}"))
    if masks:
        orphan = sorted(masks.values())[0]
        raise DataError(f"{archive.where(orphan)}: mask has no image; expected {folder}/images/{_stem(orphan)}.jpg ({len(masks)} such masks)")
    return entries


def index_real(*, archive, split, checksum, meta, seed=0) -> ArchiveDataset:
    return ArchiveDataset(
        name=NAME,
        split=split,
        classes=CLASSES,
        archive=archive,
        entries=index_split(archive, split),
        checksum=checksum,
        citation=meta["citation"],
        image_mode="RGB",
        mask_threshold=MASK_THRESHOLD,
    )


# The synthetic counterpart: RGB 96x96 'endoscopy' images, each with a polyp-like blob and its exact mask.
make_synthetic = lesion_counterpart(NAME, CLASSES, (), size=96, rgb=True, with_masks=True)


SPEC = register(
    DatasetSpec(
        name=NAME,
        title="Kvasir-SEG polyp segmentation",
        splits=("train", "val", "test"),
        classes=CLASSES,
        index_real=index_real,
        make_synthetic=make_synthetic,
        modality="endoscopy",
        tasks=("segmentation", "pixel-level anomaly segmentation"),
    )
)
