"""Derm7pt seven-point-checklist dermoscopy, ``release_v0`` (Kawahara et al., IEEE JBHI 2019): nevus vs melanoma.

Not redistributed (registration at derm.cs.sfu.ca); read from ``release_v0.zip``
or an extracted ``release_v0/`` folder, unverified. Public layout::

    release_v0/meta/meta.csv                       one row per case: case_num, diagnosis, ..., clinic, derm, ...
    release_v0/meta/{train,valid,test}_indexes.csv column ``indexes``: 0-based rows of meta.csv
    release_v0/images/<derm>                       the dermoscopic image of the row (``derm`` column)

Splits: the release's own ``train`` / ``valid`` / ``test`` indexes (``valid``
-> ``val``). As in ViP (xiaofang007/ViP, ``DATA/Derm7pt/split_skin.json``),
only melanoma and nevus cases are used, grouped as the ``derm7pt`` package's
``Derm7PtDatasetGroupInfrequent`` groups them: *melanoma* = ``melanoma``,
``melanoma (in situ)``, ``melanoma (less than 0.76 mm)``, ``melanoma (0.76
to 1.5 mm)``, ``melanoma (more than 1.5 mm)``, ``melanoma metastasis``;
*nevus* = ``nevus``, ``blue nevus``, ``clark nevus``, ``combined nevus``,
``congenital nevus``, ``dermal nevus``, ``recurrent nevus``, ``reed or spitz
nevus``. Other diagnoses (basal cell carcinoma, seborrheic keratosis,
lentigo, ...) are left out by design. ViP's counts: train 346, val 161, test
320 (101 melanoma, 219 nevus).

Classes: ``("nevus", "melanoma")`` -> 0 / 1, so the malignant class is the
positive one as elsewhere in medad. ViP orders them the other way (melanoma
0, nevus 1); compare by class name, not index. Images are RGB; a case is its
own group (``case<case_num>``). Only the dermoscopic image is read (the
``clinic`` close-up is not used). A missing column, an index outside
meta.csv, or an image named in meta.csv but absent from the archive is a
DataError.
"""
from __future__ import annotations

import io

import pandas as pd

from medad.data.archive import Archive
from medad.data.base import ArchiveDataset, DatasetSpec, Entry
from medad.data.registry import register
from medad.data.synthetic import lesion_counterpart
from medad.errors import DataError

NAME = "derm7pt"
TOP = "release_v0"
CLASSES = ("nevus", "melanoma")
INDEX_FILES = {"train": "train_indexes.csv", "val": "valid_indexes.csv", "test": "test_indexes.csv"}
DIAGNOSIS_CLASS = {
    **{d: "melanoma" for d in (
        "melanoma", "melanoma (in situ)", "melanoma (less than 0.76 mm)", "melanoma (0.76 to 1.5 mm)",
        "melanoma (more than 1.5 mm)", "melanoma metastasis",
    )},
    **{d: "nevus" for d in (
        "nevus", "blue nevus", "clark nevus", "combined nevus", "congenital nevus", "dermal nevus",
        "recurrent nevus", "reed or spitz nevus",
    )},
}


def read_csv(archive: Archive, name: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """A CSV of the release with the columns we need, or a DataError naming the file."""
    try:
        table = pd.read_csv(io.BytesIO(archive.read(name)))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{archive.where(name)}: not a readable CSV ({exc})") from exc
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{archive.where(name)}: no column(s) {', '.join(missing)}; found {', '.join(map(str, table.columns))}")
    return table


def index_split(archive: Archive, split: str) -> list[Entry]:
    """The melanoma and nevus cases of one split, in the order of its index file."""
    meta = read_csv(archive, f"{TOP}/meta/meta.csv", ("case_num", "diagnosis", "derm"))
    index_name = f"{TOP}/meta/{INDEX_FILES[split]}"
    rows = read_csv(archive, index_name, ("indexes",))["indexes"]
    numbers = pd.to_numeric(rows, errors="coerce")
    valid = numbers.notna() & (numbers % 1 == 0) & (numbers >= 0) & (numbers < len(meta))
    if not valid.all():
        raise DataError(f"{archive.where(index_name)}: index {str(rows[~valid].iloc[0])!r} is not a row of meta.csv (0..{len(meta) - 1})")
    present = set(archive.names())
    entries = []
    for i in numbers.astype(int):
        row = meta.iloc[i]
        cls = DIAGNOSIS_CLASS.get(str(row["diagnosis"]).strip().lower())
        if cls is None:
            continue  # not melanoma or nevus: outside the two-class task (see the module docstring)
        image = f"{TOP}/images/{str(row['derm']).strip()}"
        if image not in present:
            raise DataError(f"{archive.where(image)}: missing; meta.csv row {i} (case {row['case_num']}) names it as its dermoscopic image")
        entries.append(Entry(image=image, label=CLASSES.index(cls), group=f"case{row['case_num']}"))
    if not entries:
        raise DataError(f"{archive.where(index_name)}: the {split} split holds no melanoma or nevus case")
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
    )


# The synthetic counterpart: RGB 64x64 'dermoscopy' images: every image has a lesion whose look depends on the class; labels only.
make_synthetic = lesion_counterpart(NAME, CLASSES, (), size=64, rgb=True, with_masks=False)


SPEC = register(
    DatasetSpec(
        name=NAME,
        title="Derm7pt dermoscopy, melanoma vs nevus (release_v0)",
        splits=("train", "val", "test"),
        classes=CLASSES,
        index_real=index_real,
        make_synthetic=make_synthetic,
        modality="dermoscopy",
        tasks=("classification",),
    )
)
