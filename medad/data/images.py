"""Decode images and masks into NumPy arrays, with errors that name the file."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from medad.errors import DataError


def decode_image(data: bytes, name: str, mode: str = "RGB") -> np.ndarray:
    """Decode image bytes to uint8: (H, W) for mode 'L', (H, W, 3) for 'RGB'."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(img.convert(mode), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from exc


def decode_mask(data: bytes, name: str, threshold: int = 127) -> np.ndarray:
    """Decode a mask to bool (H, W): pixels above ``threshold`` are foreground (JPEG masks are noisy)."""
    return decode_image(data, name, mode="L") > threshold


def check_same_size(image: np.ndarray, mask: np.ndarray, image_name: str, mask_name: str) -> None:
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(
            f"{mask_name}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_name} is "
            f"{image.shape[1]}x{image.shape[0]}; a mask must have its image's size"
        )
