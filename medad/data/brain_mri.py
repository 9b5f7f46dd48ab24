"""Brain Tumor MRI (Nickparvar, Kaggle 2021): no tumour vs three tumour types.

Public layout (``brain-tumor-mri.zip``)::

    brain-tumor-mri/{Training,Testing}/{notumor,glioma,meningioma,pituitary}/<name>.jpg

Classes: ``("notumor", "glioma", "meningioma", "pituitary")`` -> labels 0..3;
``notumor`` is the normal class (anomaly classification: label > 0 is
abnormal). Images are decoded as grayscale (H, W): the MRIs are gray whatever
mode the JPEG was saved in. The dataset names no patients, so every image is
its own group.

Hidden entries are left out: the archive we have holds one,
``Testing/meningioma/.ipynb_checkpoints/Te-me_0011-checkpoint.jpg``, a
notebook editor's copy of ``Te-me_0011.jpg``; without it ``Testing`` has 1,311
images (the dataset's own count), not the 1,312 files of the archive. Any other
non-image file in a class folder is an error.

Splits. ``test`` is the dataset's ``Testing`` folder. The dataset has no
validation split, so ``val`` is a seeded, stratified carve-out of
``Training``: 10 % of each class (:func:`medad.data.splits.stratified_carve_out`
with the ``seed`` of ``open_dataset``, default 0); ``train`` is the rest:
1,714 / 191 images of the 1,905 (val: 53 / 44 / 45 / 49 in class order).

Known caveat of the source (not corrected here): in the archive we have, 99
``Testing`` images are byte-identical to a ``Training`` image (e.g.
``Te-me_0011.jpg`` and ``Tr-me_0198.jpg``), and ``Training`` holds 28 more
duplicate copies, some of which the carve-out can split between train and
val; test scores on this dataset are therefore somewhat optimistic.
"""
from __future__ import annotations

from medad.data.archive import Archive
from medad.data.base import ArchiveDataset, DatasetSpec, Entry
from medad.data.registry import register
from medad.data.splits import carve, stratified_carve_out
from medad.data.synthetic import lesion_counterpart

NAME = "brain_mri"
TOP = "brain-tumor-mri"
CLASSES = ("notumor", "glioma", "meningioma", "pituitary")
VAL_FRACTION = 0.1


def index_folder(archive: Archive, folder: str) -> list[Entry]:
    """Entries of ``Training`` or ``Testing``, all four classes, sorted by name."""
    entries = []
    for label, cls in enumerate(CLASSES):
        for name in archive.images_in(f"{TOP}/{folder}/{cls}", what=f"{cls} MRI slices"):
            entries.append(Entry(image=name, label=label, group=name.rsplit("/", 1)[1].rsplit(".", 1)[0]))
    return entries


def index_real(*, archive, split, checksum, meta, seed=0) -> ArchiveDataset:
    if split == "test":
        entries = index_folder(archive, "Testing")
    else:
        training = index_folder(archive, "Training")
        entries = carve(training, split, stratified_carve_out([e.label for e in training], VAL_FRACTION, seed))
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


# The synthetic counterpart: gray 64x64 'MRI slices': notumor without a lesion, each tumour class with its own blobs; labels only.
make_synthetic = lesion_counterpart(NAME, CLASSES, ("notumor",), size=64, rgb=False, with_masks=False)


SPEC = register(
    DatasetSpec(
        name=NAME,
        title="Brain Tumor MRI (Nickparvar)",
        splits=("train", "val", "test"),
        classes=CLASSES,
        index_real=index_real,
        make_synthetic=make_synthetic,
        modality="brain MRI",
        tasks=("classification", "anomaly classification"),
    )
)
