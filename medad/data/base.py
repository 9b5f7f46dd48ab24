"""What every dataset looks like to the rest of medad: a sequence of :class:`Sample`.

Real datasets index their archive cheaply (names only) and decode an image when
it is asked for; synthetic ones hold arrays made from a seed. Both expose the
same attributes, so a chapter never needs to know which one it got, and the
provenance always can.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from medad.data.archive import Archive
from medad.data.images import check_same_size, decode_image, decode_mask


@dataclass
class Sample:
    """One image with whatever ground truth its dataset has.

    image:        uint8, (H, W) grayscale or (H, W, 3) RGB
    label:        index into ``dataset.classes`` (None when the dataset has no image labels)
    mask:         bool (H, W) lesion / anomaly mask (for LIDC: the union of the graders)
    grader_masks: bool (G, H, W), one mask per grader (LIDC: G = 4; empty = not marked)
    id:           entry name in the archive, or a synthetic id
    group:        patient or case id; splits never cut a group
    """

    image: np.ndarray
    label: int | None = None
    mask: np.ndarray | None = None
    grader_masks: np.ndarray | None = None
    id: str = ""
    group: str = ""


@dataclass(frozen=True)
class Entry:
    """An archive entry before decoding: the image's name, its mask names and label."""

    image: str
    label: int | None = None
    masks: tuple[str, ...] = ()
    group: str = ""


class Dataset:
    """Base class: name, split, classes and provenance; subclasses implement ``__getitem__``."""

    name: str
    split: str
    classes: tuple[str, ...]
    synthetic: bool
    source: str
    checksum: str
    citation: str

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        raise NotImplementedError

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    @property
    def labels(self) -> np.ndarray:
        """Integer labels of all samples without decoding images (-1 where a sample has none)."""
        raise NotImplementedError

    @property
    def groups(self) -> list[str]:
        raise NotImplementedError

    @property
    def display_name(self) -> str:
        return f"{self.name} (synthetic)" if self.synthetic else self.name

    def provenance(self) -> dict:
        return {
            "dataset": self.name,
            "split": self.split,
            "kind": "synthetic" if self.synthetic else "real",
            "source": self.source,
            "sha256": self.checksum,
            "n": len(self),
        }

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.display_name}/{self.split}: index {index} out of range for {len(self)} samples")
        return index % len(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.display_name} split={self.split} n={len(self)}>"


class ArchiveDataset(Dataset):
    """A real dataset: entries indexed from an archive, decoded on access."""

    def __init__(
        self,
        *,
        name: str,
        split: str,
        classes: Sequence[str],
        archive: Archive,
        entries: Sequence[Entry],
        checksum: str,
        citation: str,
        image_mode: str = "RGB",
        mask_threshold: int = 127,
        grader_masks: bool = False,
    ):
        self.name, self.split, self.classes = name, split, tuple(classes)
        self.archive = archive
        self.entries = list(entries)
        self.synthetic = False
        self.source = str(archive.path)
        self.checksum = checksum
        self.citation = citation
        self.image_mode = image_mode
        self.mask_threshold = mask_threshold
        self.has_grader_masks = grader_masks

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Sample:
        entry = self.entries[self._check_index(index)]
        image = decode_image(self.archive.read(entry.image), self._where(entry.image), self.image_mode)
        masks = []
        for mask_name in entry.masks:
            mask = decode_mask(self.archive.read(mask_name), self._where(mask_name), self.mask_threshold)
            check_same_size(image, mask, self._where(entry.image), self._where(mask_name))
            masks.append(mask)
        sample = Sample(image=image, label=entry.label, id=entry.image, group=entry.group)
        if masks:
            stack = np.stack(masks)
            sample.mask = stack.any(axis=0)
            if self.has_grader_masks:
                sample.grader_masks = stack
        return sample

    def _where(self, name: str) -> str:
        return f"{self.archive.path}:{name}" if self.archive.is_zip else str(self.archive.path / name)

    @property
    def labels(self) -> np.ndarray:
        return np.array([-1 if e.label is None else e.label for e in self.entries], dtype=np.int64)

    @property
    def groups(self) -> list[str]:
        return [e.group for e in self.entries]

    def subset(self, indices: Sequence[int]) -> "ArchiveDataset":
        """The same dataset restricted to ``indices`` (for quick profiles and few-shot picks)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.entries = [self.entries[i] for i in indices]
        return clone


class ArrayDataset(Dataset):
    """A dataset held in memory as arrays: synthetic data, or a decoded real split."""

    def __init__(
        self,
        *,
        name: str,
        split: str,
        classes: Sequence[str],
        images: np.ndarray,
        labels: np.ndarray | None = None,
        masks: np.ndarray | None = None,
        grader_masks: np.ndarray | None = None,
        groups: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        synthetic: bool = True,
        source: str = "",
        checksum: str = "",
        citation: str = "",
        extras: dict | None = None,
    ):
        n = len(images)
        for what, arr in (("labels", labels), ("masks", masks), ("grader_masks", grader_masks), ("groups", groups), ("ids", ids)):
            if arr is not None and len(arr) != n:
                raise ValueError(f"ArrayDataset {name}: {what} has {len(arr)} items, images has {n}")
        self.name, self.split, self.classes = name, split, tuple(classes)
        self.images, self._labels, self.masks, self.grader_masks = images, labels, masks, grader_masks
        self._groups = list(groups) if groups is not None else [f"{name}-{i}" for i in range(n)]
        self._ids = list(ids) if ids is not None else [f"{name}/{split}/{i}" for i in range(n)]
        self.synthetic = synthetic
        self.source = source
        self.checksum = checksum or array_digest(images, masks, grader_masks, labels)
        self.citation = citation
        self.extras = extras or {}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        i = self._check_index(index)
        grader = None if self.grader_masks is None else self.grader_masks[i]
        mask = self.masks[i] if self.masks is not None else (grader.any(axis=0) if grader is not None else None)
        label = None if self._labels is None or self._labels[i] < 0 else int(self._labels[i])
        return Sample(image=self.images[i], label=label, mask=mask, grader_masks=grader, id=self._ids[i], group=self._groups[i])

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            return np.full(len(self), -1, dtype=np.int64)
        return np.asarray(self._labels, dtype=np.int64)

    @property
    def groups(self) -> list[str]:
        return list(self._groups)


class ConcatDataset(Dataset):
    """Datasets joined end to end under one name and class list (e.g. polyps from one archive, normal frames from another).

    ``parts`` pairs each dataset with the label its samples get here; a sample
    without a mask gets an all-false one, so every sample of a composed
    anomaly dataset has a mask. Groups are prefixed with the part's dataset
    name, so two parts never share a group by accident.
    """

    def __init__(self, *, name: str, split: str, classes: Sequence[str], parts: Sequence[tuple[Dataset, int]], citation: str):
        self.name, self.split, self.classes = name, split, tuple(classes)
        self.parts = list(parts)
        self._index = [(k, i) for k, (ds, _) in enumerate(self.parts) for i in range(len(ds))]
        self.synthetic = any(ds.synthetic for ds, _ in self.parts)
        self.source = " + ".join(ds.source for ds, _ in self.parts)
        self.checksum = " + ".join(ds.checksum for ds, _ in self.parts)
        self.citation = citation

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> Sample:
        k, i = self._index[self._check_index(index)]
        part, label = self.parts[k]
        s = part[i]
        mask = s.mask if s.mask is not None else np.zeros(s.image.shape[:2], bool)
        return Sample(image=s.image, label=label, mask=mask, id=s.id, group=f"{part.name}:{s.group}")

    @property
    def labels(self) -> np.ndarray:
        return np.array([self.parts[k][1] for k, _ in self._index], dtype=np.int64)

    @property
    def groups(self) -> list[str]:
        part_groups = [ds.groups for ds, _ in self.parts]
        return [f"{self.parts[k][0].name}:{part_groups[k][i]}" for k, i in self._index]

    def subset(self, indices: Sequence[int]) -> "ConcatDataset":
        """The same dataset restricted to ``indices``."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._index = [self._index[i] for i in indices]
        return clone


def array_digest(*arrays: np.ndarray | None) -> str:
    """SHA-256 over the arrays' bytes: the 'checksum' of data made in memory."""
    digest = hashlib.sha256()
    for arr in arrays:
        if arr is not None:
            digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class DatasetSpec:
    """A registry entry: how to index the real archive and how to make the synthetic counterpart."""

    name: str
    title: str
    splits: tuple[str, ...]
    classes: tuple[str, ...]
    index_real: Callable[..., "Dataset"]  # (archive, split, checksum, manifest, seed) -> Dataset
    make_synthetic: Callable[..., "Dataset"]  # (split, seed, n) -> Dataset
    modality: str = ""
    tasks: tuple[str, ...] = field(default_factory=tuple)
    archive_key: str = ""  # its entry in data/manifest.yml when not ``name`` (BMAD's sub-datasets share "bmad")
    extra_archive_keys: tuple[str, ...] = ()  # further archives a composed dataset reads (index_real gets ``extra``)

    @property
    def manifest_key(self) -> str:
        return self.archive_key or self.name

    @property
    def archive_keys(self) -> tuple[str, ...]:
        """Every data/manifest.yml entry this dataset reads: its own archive first."""
        return (self.manifest_key, *self.extra_archive_keys)
