"""A few real pictures that installed packages ship, for sanity checks that need no download.

scikit-learn ships two Flickr photographs (CC BY 2.0, see its
``datasets/images/README.txt``); matplotlib ships a portrait of Grace Hopper
and a clip-art gift box (``mpl-data/sample_data``). Each comes with a short
caption written for the zero-shot check and the ImageNet class a classifier
should see in it (None where ImageNet has no fitting class).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medad.errors import MedadError


@dataclass(frozen=True)
class Photo:
    name: str
    package: str
    relpath: str
    caption: str
    imagenet: str | None
    is_photograph: bool
    credit: str

    @property
    def path(self) -> Path:
        pkg = importlib.import_module(self.package)
        return Path(pkg.__file__).parent / self.relpath

    def load(self) -> np.ndarray:
        """uint8 (H, W, 3); transparency composited on white."""
        from medad.backbones.base import Preprocess

        if not self.path.is_file():
            raise MedadError(f"picture {self.name!r}: {self.path} is missing (is {self.package} installed completely?)")
        from PIL import Image

        with Image.open(self.path) as im:
            return np.asarray(Preprocess.to_pil(im))


PHOTOS = (
    Photo("flower", "sklearn", "datasets/images/flower.jpg", "a photo of a flower", "daisy", True,
          "dahlia; Flickr, vultilion, CC BY 2.0 (scikit-learn)"),
    Photo("temple", "sklearn", "datasets/images/china.jpg", "a photo of a temple", "palace", True,
          "Summer Palace tower, Beijing; Flickr, danielbuechele, CC BY 2.0 (scikit-learn)"),
    Photo("portrait", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "a photo of a person in uniform",
          "military uniform", True, "Grace Hopper, US Navy photograph, public domain (matplotlib)"),
    Photo("gift", "matplotlib", "mpl-data/sample_data/Minduka_Present_Blue_Pack.png", "a photo of a gift box", None, False,
          "clip art of a gift box, Minduka, public domain (matplotlib)"),
)

# Captions of things that are in none of the pictures: the zero-shot check picks among all eight.
DISTRACTORS = ("a photo of a cat", "a photo of a car", "a photo of a dog", "a photo of a ship")


def photos(photographs_only: bool = False) -> list[Photo]:
    return [p for p in PHOTOS if p.is_photograph or not photographs_only]


def captions() -> list[str]:
    return [p.caption for p in PHOTOS] + list(DISTRACTORS)
