"""Tiny datasets in each public layout, for the loader tests (a helper module, not a conftest).

Each ``*_files()`` returns ``{entry name: bytes}``: the archive's entries,
named as inside the real ZIP (``chest_xray/train/NORMAL/IM-0001-0001.jpeg``).
``write(root, files, archive)`` lays them out as the ZIP ``root/<archive>`` or,
with ``archive=None``, as the extracted folder under ``root``; the same dict
gives both, so ZIP and folder must give identical samples. To make bad input,
edit the dict before writing: ``corrupt(files, name)``, ``resize(files, name, size)``,
or delete an entry.

Every image has its own pixels (seeded by its name), so a mix-up of two files
shows in the tests.
"""
from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ARCHIVES = {  # data/manifest.yml's archive names
    "chest_xray": "chest_xray.zip",
    "kvasir_seg": "kvasir-seg.zip",
    "brain_mri": "brain-tumor-mri.zip",
    "bmad": "bmad.zip",
    "derm7pt": "release_v0.zip",
    "lgg_brain_ad": "lgg-brain-ad.zip",
    "hyperkvasir_normal": "hyper-kvasir-normal.zip",
}
MASK_BOX = (4, 12, 6, 16)  # rows 4:12, cols 6:16 of every fixture mask are foreground


# ----------------------------------------------------------------------------- images


def pixels(name: str, size=(16, 20), rgb: bool = False) -> np.ndarray:
    """Smooth, name-seeded uint8 pixels (smooth so that JPEG keeps them close), (H, W) or (H, W, 3)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    h, w = size
    base = rng.uniform(40, 200) + 30 * np.sin(np.arange(w) / rng.uniform(2, 5))[None, :] + np.arange(h)[:, None]
    image = np.clip(base, 0, 255).astype(np.uint8)
    return np.stack([image, image // 2 + 20, 255 - image], axis=-1) if rgb else image


def encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def image_bytes(name: str, size=(16, 20), rgb: bool = False) -> bytes:
    """An image in the format its name says (.png, else JPEG)."""
    return encode(pixels(name, size, rgb), "PNG" if name.lower().endswith(".png") else "JPEG")


def mask_bytes(name: str, size=(16, 20)) -> bytes:
    """A 0/255 mask with MASK_BOX set, as PNG or (noisy) JPEG by its name."""
    mask = np.zeros(size, np.uint8)
    r0, r1, c0, c1 = MASK_BOX
    mask[r0:r1, c0:c1] = 255
    return encode(mask, "PNG" if name.lower().endswith(".png") else "JPEG")


def corrupt(files: dict[str, bytes], name: str) -> None:
    """Replace an entry by bytes no image decoder reads."""
    files[name] = b"this is not an image"


def resize(files: dict[str, bytes], name: str, size=(9, 7)) -> None:
    """Replace a mask by one of another size."""
    files[name] = mask_bytes(name, size)


# ----------------------------------------------------------------------------- writing


def write(root: Path, files: dict[str, bytes], archive: str | None = None) -> Path:
    """Write ``files`` as the ZIP ``root/archive`` (stored, like the real ones) or, archive=None, as folders under root.

    Returns ``root``, the data directory to hand to ``open_dataset``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if archive:
        with zipfile.ZipFile(root / archive, "w", zipfile.ZIP_STORED) as zf:
            for name, data in files.items():
                zf.writestr(name, data)
    else:
        for name, data in files.items():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return root


# ----------------------------------------------------------------------------- layouts


def chest_xray_files() -> dict[str, bytes]:
    """Kermany's layout: 10 NORMAL + 10 PNEUMONIA patients in train (1-3 images each), 2 + 2 in test.

    Names follow every real pattern: IM-<id>-<k>, IM-<id>-<k>-<j>, NORMAL2-IM-<id>-<k>
    (NORMAL2-IM-0001 is not IM-0001), person<N>_bacteria_<k>, person<N>_virus_<k>[_<j>].
    Test reuses person numbers of train, as the real archive does (numbering is per split).
    """
    names = []
    for p in range(1, 7):
        names += [f"train/NORMAL/IM-{p:04d}-0001.jpeg"] + ([f"train/NORMAL/IM-{p:04d}-0001-0002.jpeg"] if p % 2 else [])
    for p in range(1, 5):
        names += [f"train/NORMAL/NORMAL2-IM-{p:04d}-0001.jpeg"]
    k = 0
    for p in range(1, 11):
        for kind in ("bacteria", "virus")[: 1 + p % 2]:
            k += 1
            names.append(f"train/PNEUMONIA/person{p}_{kind}_{k}.jpeg")
    names += ["train/PNEUMONIA/person4_virus_99_1.jpeg"]
    names += ["test/NORMAL/IM-0101-0001.jpeg", "test/NORMAL/NORMAL2-IM-0102-0001.jpeg"]
    names += ["test/PNEUMONIA/person1_virus_6.jpeg", "test/PNEUMONIA/person2_bacteria_3.jpeg"]
    files = {f"chest_xray/{n}": image_bytes(n) for n in names}
    files["chest_xray/train/NORMAL/.DS_Store"] = b"\x00Bud1"  # OS litter: must be ignored
    return files


BRAIN_CLASSES = ("notumor", "glioma", "meningioma", "pituitary")


def brain_mri_files(per_class_train: int = 10, per_class_test: int = 2) -> dict[str, bytes]:
    """Nickparvar's layout, plus a hidden .ipynb_checkpoints copy (as in the real archive) that must be ignored."""
    files = {}
    for cls in BRAIN_CLASSES:
        for i in range(per_class_train):
            name = f"brain-tumor-mri/Training/{cls}/Tr-{cls[:2]}_{i:04d}.jpg"
            files[name] = image_bytes(name, (16, 16))
        for i in range(per_class_test):
            name = f"brain-tumor-mri/Testing/{cls}/Te-{cls[:2]}_{i:04d}.jpg"
            files[name] = image_bytes(name, (16, 16))
    files["brain-tumor-mri/Testing/meningioma/.ipynb_checkpoints/Te-me_0000-checkpoint.jpg"] = image_bytes("x.jpg", (16, 16))
    return files


KVASIR_COUNTS = {"train": 4, "validation": 2, "test": 2}


def kvasir_files() -> dict[str, bytes]:
    """Kvasir-SEG's layout: RGB JPEG images and JPEG masks with the same names; 4/2/2 images."""
    files = {}
    for folder, n in KVASIR_COUNTS.items():
        for i in range(n):
            image = f"Kvasir-SEG/{folder}/images/{i}.jpg"
            files[image] = image_bytes(image, rgb=True)
            files[f"Kvasir-SEG/{folder}/masks/{i}.jpg"] = mask_bytes(f"{i}.jpg")
    return files


BMAD_FOLDERS = {  # registry name -> (folder, has masks, RGB, file-name pattern of the real sub-dataset)
    "bmad_brainmri": ("Brain_AD", True, False, "{:05d}_60.png"),
    "bmad_liverct": ("Liver_AD", True, False, "{}_360.png"),
    "bmad_resc": ("Retina_RESC_AD", True, False, "{}_8.png"),
    "bmad_oct17": ("Retina_OCT2017_AD", False, False, "DME-{}-1.jpeg"),
    "bmad_chestxray": ("Chest_AD", False, False, "Normal-ff{:06x}.png"),
    "bmad_his": ("Histopathology_AD", False, True, "{}.png"),
}
BMAD_COUNTS = {"valid": (2, 3), "test": (3, 2)}  # (good, Ungood) per split; train/good has 3 when written


def bmad_files(subs=tuple(BMAD_FOLDERS), with_train: bool = True) -> dict[str, bytes]:
    """MVFA's layout of BMAD: BMAD/<Sub>_AD/<split>/{good,Ungood}/img/, Ungood/anomaly_mask/ for pixel-level subs.

    MVFA's own release has no train/; ``with_train`` adds BMAD's train/good images under train/good/img/.
    """
    files = {}
    for sub in subs:
        folder, has_masks, rgb, pattern = BMAD_FOLDERS[sub]
        splits = dict(BMAD_COUNTS, **({"train": (3, 0)} if with_train else {}))
        k = 0
        for split, (n_good, n_bad) in splits.items():
            for cls, n in (("good", n_good), ("Ungood", n_bad)):
                for _ in range(n):
                    k += 1
                    file, base = pattern.format(100 + k), f"BMAD/{folder}/{split}/{cls}"
                    files[f"{base}/img/{file}"] = image_bytes(f"{base}/{file}", rgb=rgb)
                    if has_masks and cls == "Ungood":
                        files[f"{base}/anomaly_mask/{file}"] = mask_bytes(file)
    return files


DERM_ROWS = [  # (case_num, diagnosis, split) of the fixture's meta.csv, in row order
    (1, "basal cell carcinoma", "train"),
    (2, "melanoma", "train"),
    (3, "clark nevus", "train"),
    (4, "melanoma (in situ)", "train"),
    (5, "seborrheic keratosis", "train"),
    (6, "reed or spitz nevus", "train"),
    (7, "blue nevus", "valid"),
    (8, "melanoma (more than 1.5 mm)", "valid"),
    (9, "lentigo", "valid"),
    (10, "dermal nevus", "test"),
    (11, "melanoma metastasis", "test"),
    (12, "congenital nevus", "test"),
    (13, "melanoma (0.76 to 1.5 mm)", "test"),
]
DERM_COUNTS = {"train": (2, 2), "val": (1, 1), "test": (2, 2)}  # (nevus, melanoma): BCC, SK, lentigo left out


def derm_files(rows=DERM_ROWS) -> dict[str, bytes]:
    """Derm7pt release_v0: meta/meta.csv, meta/{train,valid,test}_indexes.csv and the dermoscopic images."""
    lines = ["case_num,diagnosis,seven_point_score,pigment_network,level_of_diagnostic_difficulty,clinic,derm,notes"]
    files = {}
    for case, diagnosis, _ in rows:
        derm, clinic = f"Fxx/Fxl{case:03d}.jpg", f"Fxx/Fxc{case:03d}.jpg"
        lines.append(f'{case},{diagnosis},1,absent,low,{clinic},{derm},""')
        files[f"release_v0/images/{derm}"] = image_bytes(derm, rgb=True)
    files["release_v0/meta/meta.csv"] = ("\n".join(lines) + "\n").encode()
    for split in ("train", "valid", "test"):
        index = [str(i) for i, row in enumerate(rows) if row[2] == split]
        files[f"release_v0/meta/{split}_indexes.csv"] = ("indexes\n" + "\n".join(index) + "\n").encode()
    return files


LGG_PATIENTS = {  # split folder -> (patient, good slices, tumour slices); train holds good slices only
    "train": [("TCGA_CS_4941_19960909", 3, 0), ("TCGA_DU_5849_19950405", 2, 0)],
    "valid": [("TCGA_HT_7860_19960513", 2, 1)],
    "test": [("TCGA_FG_6692_20020606", 2, 2), ("TCGA_CS_6186_20000601", 1, 1)],
}


def lgg_files() -> dict[str, bytes]:
    """lgg-brain-ad's layout (BMAD's, under its own top folder): gray PNG slices named <PATIENT>_<n>, masks for Ungood."""
    files = {"lgg-brain-ad/README.txt": b"LGG FLAIR slices in the BMAD layout (fixture)"}
    for split, patients in LGG_PATIENTS.items():
        for patient, n_good, n_bad in patients:
            for k in range(n_good + n_bad):
                cls = "good" if k < n_good else "Ungood"
                file, base = f"{patient}_{k + 1}.png", f"lgg-brain-ad/{split}/{cls}"
                files[f"{base}/img/{file}"] = image_bytes(f"{base}/{file}")
                if cls == "Ungood":
                    files[f"{base}/anomaly_mask/{file}"] = mask_bytes(file)
    return files


HK_CLASSES = {  # HyperKvasir labeled-images folders -> images; an upper-GI class too, as the full release has
    "lower-gi-tract/anatomical-landmarks/cecum": 12,
    "lower-gi-tract/quality-of-mucosal-views/bbps-2-3": 10,
    "upper-gi-tract/anatomical-landmarks/pylorus": 4,
}
HK_NEAR_COPY = ("cecum/ffff0000-copy.jpg", "cecum/0000aaaa-0000.jpg")  # the copy (first) repeats the original's pixels


def frame_pixels(name: str, size: int = 32) -> np.ndarray:
    """RGB pixels of an 8x8 name-seeded block pattern: two frames differ by far more than the near-duplicate threshold."""
    blocks = np.random.default_rng(zlib.crc32(name.encode())).uniform(30, 225, (8, 8, 3))
    return np.kron(blocks, np.ones((size // 8, size // 8, 1))).astype(np.uint8)


def hyperkvasir_files() -> dict[str, bytes]:
    """HyperKvasir's layout hyper-kvasir/labeled-images/<tract>/<category>/<class>/<id>.jpg (RGB JPEG, 32x32).

    Every image has its own pixels except one near-copy pair (``HK_NEAR_COPY``):
    the copy is the original re-encoded with a little noise, as consecutive
    frames of one examination are. A hidden .DS_Store must be ignored.
    """
    files = {}
    for c, (folder, n) in enumerate(HK_CLASSES.items()):
        for i in range(n):
            name = f"hyper-kvasir/labeled-images/{folder}/{c:02d}{i:02x}aaaa-{i:04d}.jpg"  # ids unique across classes, as HyperKvasir's
            files[name] = encode(frame_pixels(name), "JPEG")
    original = "hyper-kvasir/labeled-images/lower-gi-tract/anatomical-landmarks/" + HK_NEAR_COPY[1]
    noisy = frame_pixels(original).astype(int) + np.random.default_rng(0).integers(-2, 3, (32, 32, 3))
    files[original.replace(HK_NEAR_COPY[1], HK_NEAR_COPY[0])] = encode(np.clip(noisy, 0, 255).astype(np.uint8), "JPEG")
    files["hyper-kvasir/labeled-images/lower-gi-tract/anatomical-landmarks/cecum/.DS_Store"] = b"\x00Bud1"
    files["hyper-kvasir/labeled-images/image-labels.csv"] = b"Video file,Finding\n"  # the release's label file: not a class
    return files
