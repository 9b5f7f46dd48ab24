"""HyperKvasir labeled images (Borgli et al., Sci. Data 2020), read in HyperKvasir's own folder layout.

Public layout (``labeled-images`` of the HyperKvasir release)::

    hyper-kvasir/labeled-images/<tract>/<category>/<class>/<image id>.jpg
    e.g. hyper-kvasir/labeled-images/lower-gi-tract/anatomical-landmarks/cecum/<id>.jpg

Every class folder present is a class (``Dataset.classes``: the class folder
names, in the order of their full paths), so the full release gives all of
its upper- and lower-GI classes. ``hyper-kvasir-normal.zip`` holds two, both
normal colon mucosa: ``cecum`` (400, label 0) and ``bbps-2-3`` (319, label 1),
352x352 RGB JPEG. Labels only: ``Sample.mask`` is None.

Splits. HyperKvasir names no patient or video, and consecutive frames of one
examination are near-copies, so the images are first grouped by
:mod:`medad.data.near_duplicates` (16x16 thumbnails closer than 4 gray levels,
connected components; 90 pairs / 138 images in this archive) and the groups
are then cut 70 / 15 / 15 % into train / val / test with
:func:`medad.data.splits.make_group_split` and the fixed seed ``SPLIT_SEED``
(a fixed split, like Kvasir-SEG's; the ``seed`` of ``open_dataset`` does not
move it). ``Sample.group`` is the file id of the group's first image (its own
id for an image without near-copies).
"""
from __future__ import annotations

import re

from medad.data.archive import Archive
from medad.data.base import ArchiveDataset, DatasetSpec, Entry
from medad.data.near_duplicates import archive_pairs, components
from medad.data.registry import register
from medad.data.splits import make_group_split
from medad.data.synthetic import lesion_counterpart
from medad.errors import DataError

NAME = "hyperkvasir_normal"
TOP = "hyper-kvasir"
LABELED = f"{TOP}/labeled-images"
CLASSES = ("cecum", "bbps-2-3")  # the classes of hyper-kvasir-normal.zip; the full release has more
FRACTIONS = (0.7, 0.15, 0.15)
SPLIT_SEED = 0
_IN_CLASS = re.compile(rf"^(?P<folder>{re.escape(LABELED)}/[^/.][^/]*/[^/.][^/]*/(?P<cls>[^/.][^/]*))/[^/]+$")


def class_folders(archive: Archive) -> list[str]:
    """``labeled-images/<tract>/<category>/<class>`` folders in the archive, sorted by path."""
    folders = sorted({m["folder"] for m in map(_IN_CLASS.match, archive.names()) if m})
    if not folders:
        raise DataError(
            f"{archive.where(LABELED + '/')}: no class folders found; expected HyperKvasir's layout "
            f"{LABELED}/<tract>/<category>/<class>/<image>.jpg"
        )
    return folders


def index_all(archive: Archive) -> tuple[tuple[str, ...], list[Entry]]:
    """(classes, entries of every image) with near-duplicate groups, before splitting."""
    folders = class_folders(archive)
    classes = tuple(f.rsplit("/", 1)[1] for f in folders)
    if len(set(classes)) < len(classes):
        raise DataError(f"{archive.where(LABELED + '/')}: two class folders share a name ({', '.join(folders)})")
    images, labels = [], []
    for label, folder in enumerate(folders):
        found = archive.images_in(folder, what=f"{classes[label]} endoscopy images")
        images += found
        labels += [label] * len(found)
    root = components(len(images), archive_pairs(archive, images))
    stems = [name.rsplit("/", 1)[1].rsplit(".", 1)[0] for name in images]
    entries = [Entry(image=img, label=lab, group=stems[r]) for img, lab, r in zip(images, labels, root)]
    return classes, entries


def split_entries(entries: list[Entry], split: str) -> list[Entry]:
    """The entries of one split: whole near-duplicate groups, cut by FRACTIONS with SPLIT_SEED."""
    chosen = set(make_group_split([e.group for e in entries], FRACTIONS, SPLIT_SEED)[split])
    return [e for e in entries if e.group in chosen]


def index_real(*, archive, split, checksum, meta, seed=0) -> ArchiveDataset:
    classes, entries = index_all(archive)
    return ArchiveDataset(
        name=NAME,
        split=split,
        classes=classes,
        archive=archive,
        entries=split_entries(entries, split),
        checksum=checksum,
        citation=meta["citation"],
        image_mode="RGB",
    )


# The synthetic counterpart: RGB 96x96 'mucosa' images without lesions, two normal classes; labels only.
make_synthetic = lesion_counterpart(NAME, CLASSES, CLASSES, size=96, rgb=True, with_masks=False)


SPEC = register(
    DatasetSpec(
        name=NAME,
        title="HyperKvasir labeled images (here: normal lower-GI, cecum and BBPS 2-3)",
        splits=("train", "val", "test"),
        classes=CLASSES,
        index_real=index_real,
        make_synthetic=make_synthetic,
        modality="endoscopy",
        tasks=("classification", "normal class for anomaly detection"),
    )
)
