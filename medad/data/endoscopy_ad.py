"""Lesion vs normal endoscopy: Kvasir-SEG polyps (abnormal, with masks) + HyperKvasir normal frames.

A composed dataset read from two archives (``kvasir-seg.zip`` and
``hyper-kvasir-normal.zip``; both 352x352 RGB JPEG, resized and saved alike):

- label 1 ``polyp``: Kvasir-SEG's images with their polyp masks, in Kvasir-SEG's
  own 800 / 100 / 100 train / val / test split (:mod:`medad.data.kvasir`);
- label 0 ``normal``: HyperKvasir's normal lower-GI frames of the classes in
  ``NORMAL_CLASSES`` that the archive holds (here cecum and BBPS 2-3: 719),
  with all-false masks, split 70 / 15 / 15 % so that near-identical frames
  stay in one split (:mod:`medad.data.hyperkvasir`,
  :mod:`medad.data.near_duplicates`).

Every split holds both classes, so the dataset serves lesion-vs-normal
classification as it is; anomaly detection trains on ``labels == 0`` of train.
Groups are prefixed by the source (``kvasir_seg:train/7``,
``hyperkvasir_normal:<frame id>``).

Caveats, measured on the archives: Kvasir-SEG's own split has 4 near-duplicate
pairs (same 16x16-thumbnail test as the normal frames), one of them across two
of its splits; it is kept as published. Both sources show the same on-screen
overlays (text at the top left, a black position box at the bottom left), in
different proportions: the data atlas maps them, and a classifier should be
checked for using them instead of the lesion.
"""
from __future__ import annotations

from medad.data import hyperkvasir, kvasir
from medad.data.base import ConcatDataset, DatasetSpec
from medad.data.registry import manifest, register
from medad.data.synthetic import lesion_counterpart

NAME = "endoscopy_ad"
CLASSES = ("normal", "polyp")
NORMAL_CLASSES = ("cecum", "ileum", "retroflex-rectum", "bbps-2-3")  # HyperKvasir's normal lower-GI classes
NORMAL_KEY = "hyperkvasir_normal"
# On-screen overlays of Kvasir-SEG / HyperKvasir frames as (x0, y0, x1, y1) fractions of the frame:
# the text column at the left edge and the scope-position box in the lower-left corner. Shortcut
# checks blank them (the EGC classifier and MVFA chapters).
OVERLAY_BOXES = ((0.0, 0.04, 0.15, 0.62), (0.0, 0.62, 0.34, 1.0))


def index_real(*, archive, split, checksum, meta, seed=0, extra) -> ConcatDataset:
    polyps = kvasir.index_real(archive=archive, split=split, checksum=checksum, meta=meta)
    hk_archive, hk_checksum = extra[NORMAL_KEY]
    frames = hyperkvasir.index_real(archive=hk_archive, split=split, checksum=hk_checksum, meta=manifest()[NORMAL_KEY])
    keep = [i for i, label in enumerate(frames.labels) if frames.classes[label] in NORMAL_CLASSES]
    return ConcatDataset(
        name=NAME, split=split, classes=CLASSES, parts=[(frames.subset(keep), 0), (polyps, 1)],
        citation=f"{meta['citation']} {manifest()[NORMAL_KEY]['citation']}",
    )


# The synthetic counterpart: RGB 96x96 'endoscopy' images, normal without and polyp with a blob and its mask; both in every split.
make_synthetic = lesion_counterpart(NAME, CLASSES, ("normal",), size=96, rgb=True, with_masks=True)


SPEC = register(
    DatasetSpec(
        name=NAME,
        title="Endoscopy lesion vs normal: Kvasir-SEG polyps + HyperKvasir normal frames",
        splits=("train", "val", "test"),
        classes=CLASSES,
        index_real=index_real,
        make_synthetic=make_synthetic,
        modality="endoscopy",
        tasks=("classification", "anomaly classification", "pixel-level anomaly segmentation"),
        archive_key="kvasir_seg",
        extra_archive_keys=(NORMAL_KEY,),
    )
)
