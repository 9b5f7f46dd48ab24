"""Datasets: real archives (ZIP or extracted folder) and their synthetic counterparts.

``open_dataset(name, split, data_dir)`` is the way in; ``list_datasets()`` names the choices.
Importing this package registers every loader below.
"""
from medad.data.base import ArchiveDataset, ArrayDataset, Dataset, Sample
from medad.data.registry import (
    archive_status, available_real, dataset_status, get_spec, list_datasets, manifest, open_dataset, resolve_data_dir,
)

# Each import registers one dataset.
from medad.data import lidc  # noqa: E402,F401
from medad.data import chest_xray  # noqa: E402,F401
from medad.data import kvasir  # noqa: E402,F401
from medad.data import brain_mri  # noqa: E402,F401
from medad.data import bmad  # noqa: E402,F401
from medad.data import derm7pt  # noqa: E402,F401
from medad.data import lgg  # noqa: E402,F401
from medad.data import hyperkvasir  # noqa: E402,F401
from medad.data import endoscopy_ad  # noqa: E402,F401

__all__ = [
    "ArchiveDataset", "ArrayDataset", "Dataset", "Sample",
    "archive_status", "available_real", "dataset_status", "get_spec", "list_datasets", "manifest", "open_dataset", "resolve_data_dir",
]
