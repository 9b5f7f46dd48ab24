r"""MVFA: multi-level visual feature adaptation of a vision-language model for medical anomaly detection.

Huang et al., "Adapting Visual-Language Models for Generalizable Anomaly
Detection in Medical Images", CVPR 2024 (official code: MediaBrain-SJTU/MVFA-AD).
Everything here works on any :class:`~medad.backbones.base.Backbone` with a text
encoder: real CLIP ViT-L/14-336 at 240 px (adapters after blocks 6/12/18/24) or
the offline STAND-IN (adapters after four EfficientNet-Lite stages).

**Adapters.** After each adapted stage :math:`l` two
bottleneck adapters, one for segmentation and one for detection, see the
stage's tokens :math:`F_l \in \mathbb{R}^{T \times C_l}`:

.. math::

    M_l^{a} = \sigma(F_l W_{l,1}^{a}), \qquad A_l^{a} = \sigma(M_l^{a} W_{l,2}^{a}), \qquad a \in \{seg, det\}

with :math:`\sigma` the LeakyReLU, :math:`W_{l,1}^a \in \mathbb{R}^{C_l \times d}`,
:math:`W_{l,2}^a \in \mathbb{R}^{d \times C_l}` (no biases) and :math:`d` the
width of the joint image-text space (768 for ViT-L/14). The residual mix flows
into the later stages,

.. math::

    F_l \leftarrow 0.8\, F_l + 0.1\, A_l^{seg} + 0.1\, A_l^{det},

and the middle outputs :math:`M_l^{seg}, M_l^{det}` (one :math:`d`-vector per
patch) are the features compared with text. ``residual=False`` keeps the
stream unchanged and only learns the maps to the joint space: projector-only
alignment, the April-GAN-style ablation ("w/o feature adaptation").

**Text.** A prompt ensemble: 35 templates x 7 normal states and 35 x 5
abnormal states of a per-dataset object name, each sentence embedded and
normalised, averaged per state group and normalised again:
:math:`T = [t_{normal}; t_{abnormal}] \in \mathbb{R}^{2 \times d}`.

**Scores.** Zero-shot branch, per level and patch :math:`p`:
:math:`s^{zero}_l(p) = \mathrm{softmax}(100\, \hat M_l(p) \hat T^\top)_{abnormal}`
(hats: unit length). Few-shot branch: a memory bank :math:`\mathcal{B}_l` of the
adapted patch tokens of the K normal support images, each augmented x11
(the image, 4 rotations, 4 translations, two flips);
:math:`s^{few}_l(p) = \min_{b \in \mathcal{B}_l} 1 - \cos(M_l(p), b)`, computed for all
patches at once as one matrix product. Maps: the sum over levels of the
bilinearly upsampled patch scores. Combination:
:math:`S = 0.5\, \bar S^{zero} + 0.5\, \bar S^{few}` where the bar is a min-max
normalisation. MVFA takes the min and max over the TEST set (transductive,
``normalisation="test"``); the default here takes them from images seen before
testing (support / validation images, ``normalisation="reference"``).
Datasets with masks use the seg adapters and score an image by the max of its
map; image-level datasets use the det adapters (zero-shot: mean over patches;
few-shot: mean of the map).

**Losses.** Per adapted level: binary cross-entropy between the
mean anomaly probability of the det tokens and the image label; where masks
exist, focal + Dice losses (MONAI's) between the seg tokens' two-class map,
upsampled to the mask, and the mask. The official code feeds the mean
*probability* into ``BCEWithLogitsLoss``; here it is a plain BCE on the probability.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medad.errors import ConfigError

MIX = (0.8, 0.1, 0.1)
LOGIT_SCALE = 100.0
NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                 "{} without damage")
ABNORMAL_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
TEMPLATES = (
    "a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.", "a cropped photo of the {}.",
    "a bright photo of a {}.", "a dark photo of the {}.", "a photo of my {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
    "a good photo of the {}.", "a photo of one {}.", "a close-up photo of the {}.", "a photo of a {}.",
    "a low resolution photo of a {}.", "a photo of a large {}.", "a blurry photo of a {}.",
    "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a photo of the small {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "a dark photo of a {}.", "a photo of a cool {}.", "a photo of a small {}.",
    "there is a {} in the scene.", "there is the {} in the scene.", "this is a {} in the scene.",
    "this is the {} in the scene.", "this is one {} in the scene.",
)
# MVFA's object names for its datasets, and ours for the datasets of this book
OBJECT_NAMES = {
    "chest_xray": "Chest X-ray film", "brain_mri": "Brain", "lgg_brain_ad": "Brain", "endoscopy_ad": "colonoscopy image",
    "bmad_brainmri": "Brain", "bmad_liverct": "Liver", "bmad_resc": "retinal OCT", "bmad_oct17": "retinal OCT",
    "bmad_chestxray": "Chest X-ray film", "bmad_his": "histopathological image",
}


# ----------------------------------------------------------------------------- adapters


class BottleneckAdapter(nn.Module):
    """Linear(C -> d) -> LeakyReLU -> Linear(d -> C) -> LeakyReLU, no biases; returns (middle, output)."""

    def __init__(self, width: int, dim: int):
        super().__init__()
        self.down = nn.Linear(width, dim, bias=False)
        self.up = nn.Linear(dim, width, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mid = F.leaky_relu(self.down(x))
        return mid, F.leaky_relu(self.up(mid))


class LevelAdapters(nn.Module):
    """The module inserted after one stage: seg and det adapters, and the residual mix.

    It keeps the two middle outputs of its last call in ``seg_mid`` / ``det_mid``
    (B, T, d), which :class:`MVFA` collects after the forward pass.
    """

    def __init__(self, width: int, dim: int, residual: bool = True, mix: Sequence[float] = MIX):
        super().__init__()
        self.seg = BottleneckAdapter(width, dim)
        self.det = BottleneckAdapter(width, dim)
        self.residual = bool(residual)
        self.mix = tuple(float(m) for m in mix)
        self.seg_mid: torch.Tensor | None = None
        self.det_mid: torch.Tensor | None = None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self.seg_mid, seg_out = self.seg(tokens)
        self.det_mid, det_out = self.det(tokens)
        if not self.residual:
            return tokens
        a, b, c = self.mix
        return a * tokens + b * seg_out + c * det_out


@dataclass
class AdaptedTokens:
    """The adapters' middle outputs per level, class token removed: seg[i], det[i] are (B, h*w, d)."""

    seg: list[torch.Tensor]
    det: list[torch.Tensor]
    grids: list[tuple[int, int]]
    levels: tuple[int, ...]
    embedding: torch.Tensor


class MVFA(nn.Module):
    """Residual adapters on a frozen backbone with a text encoder (see the module docstring).

    Only the adapters are parameters of this module (its ``state_dict`` is the checkpoint);
    the backbone is kept beside it, frozen.
    """

    def __init__(self, backbone, levels: Sequence[int] | None = None, residual: bool = True, seed: int = 0):
        super().__init__()
        if not getattr(backbone, "has_text", False):
            raise ConfigError(f"MVFA needs a backbone with a text encoder; {getattr(backbone, 'name', backbone)!r} has none")
        levels = tuple(backbone.default_levels if levels is None else levels)
        if len(levels) == 0:
            raise ConfigError("MVFA needs at least one adapted level")
        levels = tuple(backbone._check_stage(s, "MVFA(levels=...)") for s in levels)
        self.__dict__["backbone"] = backbone  # not a submodule: its weights are frozen and not checkpointed
        self.levels = levels
        self.residual = residual
        self.dim = int(backbone.embed_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.adapters = nn.ModuleDict({str(s): LevelAdapters(backbone.stage_widths[s - 1], self.dim, residual)
                                           for s in levels})
        self.to(backbone.device)

    def forward(self, images: torch.Tensor) -> AdaptedTokens:
        feats = self.backbone.encode_image(images, levels=self.levels,
                                           inserts={s: self.adapters[str(s)] for s in self.levels})
        seg, det = [], []
        for s, (h, w) in zip(self.levels, feats.grids):
            module = self.adapters[str(s)]
            seg.append(module.seg_mid[:, -h * w:])  # a ViT's class token comes first: drop it
            det.append(module.det_mid[:, -h * w:])
            module.seg_mid = module.det_mid = None
        return AdaptedTokens(seg, det, list(feats.grids), self.levels, feats.embedding)


class FrozenTokens(nn.Module):
    """The frozen backbone's own patch tokens in the joint space: the no-adapter baselines (WinCLIP / PatchCore style).

    Same output as :class:`MVFA` (seg = det = the projected tokens), so every scoring function applies.
    """

    def __init__(self, backbone, levels: Sequence[int] | None = None):
        super().__init__()
        self.__dict__["backbone"] = backbone
        self.levels = tuple(backbone.default_levels if levels is None else levels)
        for s in self.levels:
            backbone._check_stage(s, "FrozenTokens(levels=...)")

    def forward(self, images: torch.Tensor) -> AdaptedTokens:
        feats = self.backbone.encode_image(images, levels=self.levels, inserts={})
        toks = []
        for s, t in zip(self.levels, feats.tokens):
            p = self.backbone.project_tokens(t, s)
            if p is None:
                raise ConfigError(f"backbone {self.backbone.name!r} has no fixed map from level {s} to the joint space")
            toks.append(p)
        return AdaptedTokens(toks, toks, list(feats.grids), self.levels, feats.embedding)


# ----------------------------------------------------------------------------- text


def prompt_sentences(object_name: str) -> tuple[list[str], list[str]]:
    """MVFA's prompt ensemble for one object: (245 normal sentences, 175 abnormal sentences)."""
    if not isinstance(object_name, str) or not object_name.strip():
        raise ConfigError(f"object name must be a non-empty string, got {object_name!r}")
    return ([t.format(s.format(object_name)) for s in NORMAL_STATES for t in TEMPLATES],
            [t.format(s.format(object_name)) for s in ABNORMAL_STATES for t in TEMPLATES])


def object_name(dataset: str) -> str:
    if dataset not in OBJECT_NAMES:
        raise ConfigError(f"no MVFA object name for dataset {dataset!r}; known: {', '.join(OBJECT_NAMES)}")
    return OBJECT_NAMES[dataset]


@torch.no_grad()
def text_matrix(backbone, object_name: str, batch: int = 128) -> torch.Tensor:
    """(2, d): the normalised mean of the normalised sentence embeddings, normal row first."""
    rows = []
    for sentences in prompt_sentences(object_name):
        emb = torch.cat([backbone.encode_text(sentences[i:i + batch], normalize=True)
                         for i in range(0, len(sentences), batch)])
        rows.append(F.normalize(emb.mean(0), dim=0))
    return torch.stack(rows)


# ----------------------------------------------------------------------------- scores


def patch_logits(tokens: torch.Tensor, text: torch.Tensor, scale: float = LOGIT_SCALE) -> torch.Tensor:
    """(B, N, d) tokens, (2, d) text -> (B, N, 2) logits ``scale * cos``."""
    return scale * F.normalize(tokens, dim=-1) @ F.normalize(text, dim=-1).T


def zero_shot_patch_scores(tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(B, N): the abnormal probability of each patch."""
    return patch_logits(tokens, text).softmax(-1)[..., 1]


def memory_bank_scores(query: torch.Tensor, bank: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """min over the bank of 1 - cos, for every query token: (B, N, d) x (M, d) -> (B, N).

    One matrix product per chunk of queries (chunks only bound the (chunk x M) similarity matrix).
    """
    if bank.ndim != 2 or bank.shape[0] == 0:
        raise ConfigError(f"memory bank must be a non-empty (M, d) matrix, got shape {tuple(bank.shape)}")
    if query.shape[-1] != bank.shape[1]:
        raise ConfigError(f"query tokens have width {query.shape[-1]}, the memory bank {bank.shape[1]}")
    q = F.normalize(query.reshape(-1, query.shape[-1]), dim=-1)
    b = F.normalize(bank, dim=-1)
    best = torch.cat([(q[i:i + chunk] @ b.T).amax(1) for i in range(0, len(q), chunk)])
    return (1.0 - best).reshape(query.shape[:-1])


def memory_bank_scores_loop(query: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """The same as :func:`memory_bank_scores` one patch at a time (the reference for tests and the benchmark)."""
    b = F.normalize(bank, dim=-1)
    flat = query.reshape(-1, query.shape[-1])
    out = torch.empty(len(flat))
    for i, t in enumerate(flat):
        out[i] = 1.0 - (b @ F.normalize(t, dim=0)).max()
    return out.reshape(query.shape[:-1])


def upsample(scores: torch.Tensor, grid: tuple[int, int], size: int) -> torch.Tensor:
    """(B, h*w) patch scores -> (B, size, size), bilinear with aligned corners (as MVFA)."""
    h, w = grid
    return F.interpolate(scores.reshape(-1, 1, h, w), size=(size, size), mode="bilinear", align_corners=True)[:, 0]


@dataclass
class BranchScores:
    """Per image and level, both branches (numpy, float32).

    seg_zero, seg_few: (B, L, S, S) maps from the seg tokens;
    det_zero, det_few: (B, L) image scores from the det tokens (mean over patches / of the map).
    Few-shot entries are NaN when no memory bank was given.
    """

    seg_zero: np.ndarray
    seg_few: np.ndarray
    det_zero: np.ndarray
    det_few: np.ndarray

    @staticmethod
    def concat(parts: Sequence["BranchScores"]) -> "BranchScores":
        return BranchScores(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                              ("seg_zero", "seg_few", "det_zero", "det_few")))

    def take(self, index) -> "BranchScores":
        return BranchScores(self.seg_zero[index], self.seg_few[index], self.det_zero[index], self.det_few[index])

    def levels(self, which: Sequence[int]) -> "BranchScores":
        """Only the levels at positions ``which`` (the single-level ablation)."""
        w = list(which)
        return BranchScores(self.seg_zero[:, w], self.seg_few[:, w], self.det_zero[:, w], self.det_few[:, w])


@dataclass
class MemoryBank:
    """Per level, the adapted seg and det patch tokens of the (augmented) normal support images."""

    seg: list[torch.Tensor]
    det: list[torch.Tensor]

    @property
    def size(self) -> int:
        return int(self.seg[0].shape[0])


@torch.no_grad()
def build_memory_bank(model: nn.Module, images: torch.Tensor, batch: int = 16) -> MemoryBank:
    """Run ``model`` on normal support images (already augmented) and stack their patch tokens per level."""
    if len(images) == 0:
        raise ConfigError("the memory bank needs at least one normal support image")
    seg, det = None, None
    for i in range(0, len(images), batch):
        out = model(images[i:i + batch])
        flat_s = [t.reshape(-1, t.shape[-1]) for t in out.seg]
        flat_d = [t.reshape(-1, t.shape[-1]) for t in out.det]
        seg = flat_s if seg is None else [torch.cat([a, b]) for a, b in zip(seg, flat_s)]
        det = flat_d if det is None else [torch.cat([a, b]) for a, b in zip(det, flat_d)]
    return MemoryBank(seg, det)


@torch.no_grad()
def branch_scores(model: nn.Module, images: torch.Tensor, text: torch.Tensor, bank: MemoryBank | None,
                  map_size: int, batch: int = 16, seg_few: bool = True, det_few: bool = True) -> BranchScores:
    """Zero- and few-shot scores of every image at every level (see :class:`BranchScores`).

    ``seg_few`` / ``det_few`` False skip that few-shot branch (left NaN): image-level datasets
    need only the det branch, and the memory bank is most of the cost.
    """
    parts = []
    for i in range(0, len(images), batch):
        out = model(images[i:i + batch])
        b = len(out.seg[0])
        sz, sf, dz, df = [], [], [], []
        for li, grid in enumerate(out.grids):
            sz.append(upsample(zero_shot_patch_scores(out.seg[li], text), grid, map_size))
            dz.append(zero_shot_patch_scores(out.det[li], text).mean(1))
            if bank is not None and seg_few:
                sf.append(upsample(memory_bank_scores(out.seg[li], bank.seg[li]), grid, map_size))
            else:
                sf.append(torch.full((b, map_size, map_size), float("nan")))
            if bank is not None and det_few:
                df.append(upsample(memory_bank_scores(out.det[li], bank.det[li]), grid, map_size).mean((1, 2)))
            else:
                df.append(torch.full((b,), float("nan")))
        parts.append(BranchScores(*(torch.stack(x, 1).float().cpu().numpy() for x in (sz, sf, dz, df))))
    return BranchScores.concat(parts)


# ----------------------------------------------------------------------------- combination


def minmax(values: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite values; a constant or empty input gives a unit range so nothing divides by zero."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (0.0, 1.0)
    lo, hi = float(v.min()), float(v.max())
    return (lo, hi if hi > lo else lo + 1.0)


def normalise(values: np.ndarray, stats: tuple[float, float]) -> np.ndarray:
    lo, hi = stats
    return (np.asarray(values, dtype=np.float64) - lo) / (hi - lo)


BRANCHES = ("zero", "few", "both")
NORMALISATIONS = ("reference", "test")


@dataclass
class Combined:
    """Final scores of a test set: image scores (B,), anomaly maps (B, S, S) or None, and the det branch's own image score."""

    image: np.ndarray
    maps: np.ndarray | None
    det_image: np.ndarray


def combine(test: BranchScores, reference: BranchScores | None, pixel_level: bool, branch: str = "both",
            normalisation: str = "reference") -> Combined:
    """MVFA's 0.5 / 0.5 combination of the min-max normalised branches.

    test:          scores of the test images
    reference:     scores of images seen before testing (support / validation); their min and max
                   normalise each branch when ``normalisation="reference"`` (the default here)
    pixel_level:   masked datasets: maps from the seg tokens, image score = max of the map
    branch:        "zero", "few" or "both"
    normalisation: "reference" or "test" (MVFA's transductive min-max over the test set)
    """
    if branch not in BRANCHES:
        raise ConfigError(f"branch must be one of {', '.join(BRANCHES)}, got {branch!r}")
    if normalisation not in NORMALISATIONS:
        raise ConfigError(f"normalisation must be one of {', '.join(NORMALISATIONS)}, got {normalisation!r}")
    if normalisation == "reference" and reference is None:
        raise ConfigError("normalisation='reference' needs the scores of reference (support / validation) images")
    stats_from = test if normalisation == "test" else reference

    def mix(attr_zero: str, attr_few: str, reduce) -> np.ndarray:
        zero = reduce(getattr(test, attr_zero))
        few = reduce(getattr(test, attr_few))
        if branch == "zero":
            return zero
        if not np.isfinite(few).all():
            raise ConfigError("few-shot scores are missing (no memory bank): use branch='zero'")
        if branch == "few":
            return few
        ref_zero, ref_few = reduce(getattr(stats_from, attr_zero)), reduce(getattr(stats_from, attr_few))
        return 0.5 * normalise(zero, minmax(ref_zero)) + 0.5 * normalise(few, minmax(ref_few))

    level_sum = lambda x: x.sum(1)  # noqa: E731  (the sum over levels, as MVFA)
    det_image = mix("det_zero", "det_few", level_sum)
    if not pixel_level:
        return Combined(det_image, None, det_image)
    maps = mix("seg_zero", "seg_few", level_sum)
    return Combined(maps.reshape(len(maps), -1).max(1), maps, det_image)


# ----------------------------------------------------------------------------- losses


class MVFALoss(nn.Module):
    """Sum over levels of BCE(mean det anomaly probability, label) and, with masks, focal + Dice on the seg map."""

    def __init__(self):
        super().__init__()
        from medad.compat.torchvision_ops import ensure_torchvision

        ensure_torchvision()  # MONAI imports torchvision
        from monai.losses import DiceLoss, FocalLoss

        self.focal = FocalLoss(to_onehot_y=True, use_softmax=True)
        self.dice = DiceLoss(to_onehot_y=True, softmax=True, include_background=False)

    def forward(self, out: AdaptedTokens, text: torch.Tensor, labels: torch.Tensor,
                masks: torch.Tensor | None = None) -> torch.Tensor:
        """labels (B,) in {0, 1}; masks (B, S, S) in {0, 1} or None (image-level data: no pixel loss)."""
        loss = torch.zeros((), device=labels.device)
        y = labels.float()
        for li, grid in enumerate(out.grids):
            prob = zero_shot_patch_scores(out.det[li], text).mean(1).clamp(1e-6, 1 - 1e-6)
            loss = loss + F.binary_cross_entropy(prob, y)
            if masks is not None:
                h, w = grid
                logits = patch_logits(out.seg[li], text).transpose(1, 2).reshape(-1, 2, h, w)
                logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=True)
                target = masks.unsqueeze(1).float()
                loss = loss + self.focal(logits, target) + self.dice(logits, target)
        return loss


# ----------------------------------------------------------------------------- MVFA's x11 augmentation


def _affine(x: torch.Tensor, theta: torch.Tensor, mode: str) -> torch.Tensor:
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="reflection", align_corners=False)


def augment_x11(images: torch.Tensor, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MVFA's few-shot augmentation: each image, 4 rotations (±π/8, ±π/16), 4 diagonal shifts (±0.1 of the
    half-width), a horizontal and a vertical flip -> 11 x B images (grouped by transform), masks alike."""
    if images.ndim != 4:
        raise ConfigError(f"augment_x11 expects images (B, C, H, W), got shape {tuple(images.shape)}")
    thetas = []
    for a in (-np.pi / 8, -np.pi / 16, np.pi / 16, np.pi / 8):
        c, s = float(np.cos(a)), float(np.sin(a))
        thetas.append([[c, -s, 0.0], [s, c, 0.0]])
    for tx, ty in ((0.1, 0.1), (-0.1, 0.1), (-0.1, -0.1), (0.1, -0.1)):
        thetas.append([[1.0, 0.0, tx], [0.0, 1.0, ty]])
    out_i, out_m = [images], [masks]
    m4 = None if masks is None else masks.unsqueeze(1).float()
    for th in thetas:
        t = torch.tensor(th, dtype=images.dtype, device=images.device).unsqueeze(0)
        out_i.append(_affine(images, t, "bilinear"))
        if masks is not None:
            out_m.append(_affine(m4, t.to(m4.dtype), "bilinear")[:, 0] > 0.5)
    out_i += [images.flip(-1), images.flip(-2)]
    if masks is not None:
        out_m += [masks.flip(-1), masks.flip(-2)]
    return torch.cat(out_i), (None if masks is None else torch.cat([m.bool() for m in out_m]))
