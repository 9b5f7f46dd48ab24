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

**Scores.** Zero-shot branch, per level: the patch logits
:math:`z_l(p) = 100\, \hat M_l(p) \hat T^\top \in \mathbb{R}^2` (hats: unit length).
The detection tokens give an image score, the mean over patches of
:math:`\mathrm{softmax}(z_l(p))_{abnormal}`; the segmentation tokens give a map:
the two logit maps are first upsampled to the image size (bilinear, aligned
corners) and the softmax is taken per pixel,
:math:`s^{zero}_l = \mathrm{softmax}(\mathrm{up}(z_l))_{abnormal}`
(official ``test_zero.py`` / ``test_few.py``: ``F.interpolate`` then ``torch.softmax``).
Few-shot branch: a memory bank :math:`\mathcal{B}_l` of the adapted tokens of
the K normal support images, each augmented x11 (the image, 4 rotations, 4
translations, two flips); for a ViT each image contributes its class token as
well as its patch tokens (official ``train_few.py`` stacks all tokens of the
support images; queries are patch tokens only);
:math:`s^{few}_l(p) = \min_{b \in \mathcal{B}_l} 1 - \cos(M_l(p), b)`, computed for all
patches at once as one matrix product, then upsampled. Maps: the sum over
levels. Combination: :math:`S = 0.5\, \bar S^{zero} + 0.5\, \bar S^{few}` where
the bar is a min-max normalisation. MVFA takes the min and max over the TEST
set (transductive, ``normalisation="test"``); the default here takes them from
images seen before testing (support / validation images, ``normalisation="reference"``).
Image scores (:func:`combine`), as the official scripts compute them: datasets
with masks, few-shot: the max of the combined map (``test_few.py``); datasets with
masks, zero-shot: the detection branch, the sum over levels of the mean patch
probability (``test_zero.py``); image-level datasets: the det tokens (zero-shot:
mean patch probability; few-shot: mean of the map), summed over levels.

**Losses.** Per adapted level: binary cross-entropy between the
mean anomaly probability of the det tokens and the image label; where masks
exist, the focal and Dice losses of the official ``loss.py`` between the seg
tokens' two-class probability map (upsampled logits, then softmax) and the mask:
focal with :math:`\gamma = 2`, no class weights and label smoothing
:math:`\epsilon = 10^{-5}`, averaged over pixels (:func:`focal_loss`); Dice on the
abnormal probability with smoothing 1, averaged over images (:func:`dice_loss`).
The official code feeds the mean *probability* into ``BCEWithLogitsLoss``; here it
is a plain BCE on the probability.

**Which adapters learn.** MVFA-AD keeps one Adam (betas 0.5, 0.999; lr 1e-3
few-shot, 1e-4 zero-shot) per adapter family and, on a dataset without masks,
steps only the detection one (``train_few.py``, ``train_zero.py``):
:meth:`MVFA.optimizers` / :class:`AdapterOptimizers`.

**Input protocol.** MVFA-AD feeds CLIP images in [0, 1] without CLIP's
mean/std and builds its MLPs with ``nn.GELU``; both are chosen with the
backbone, ``load_backbone(..., protocol="official" | "corrected")``, and kept as
``backbone.protocol`` (:mod:`medad.backbones.base`).

**Shortcut check.** :func:`blank_boxes` sets fixed regions of every
preprocessed image to black (e.g. the endoscopy frames' overlay box,
``medad.data.endoscopy_ad.OVERLAY_BOXES``) before scoring.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medad.errors import ConfigError

MIX = (0.8, 0.1, 0.1)
LOGIT_SCALE = 100.0
ADAPTER_FAMILIES = ("seg", "det")
# MVFA-AD's optimiser settings (train_few.py / train_zero.py argument defaults): Adam, these betas, these rates
OFFICIAL_BETAS = (0.5, 0.999)
OFFICIAL_LR = {"few-shot": 1e-3, "zero-shot": 1e-4}
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
    """The adapters' middle outputs per level, class token removed: seg[i], det[i] are (B, h*w, d).

    seg_cls[i], det_cls[i]: the class token's middle output (B, d) for a ViT, None where the
    backbone has no class token (CNNs) or the model does not give it (:class:`FrozenTokens`).
    """

    seg: list[torch.Tensor]
    det: list[torch.Tensor]
    grids: list[tuple[int, int]]
    levels: tuple[int, ...]
    embedding: torch.Tensor
    seg_cls: list[torch.Tensor | None] = field(default_factory=list)
    det_cls: list[torch.Tensor | None] = field(default_factory=list)


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
        seg, det, seg_cls, det_cls = [], [], [], []
        for s, (h, w) in zip(self.levels, feats.grids):
            module = self.adapters[str(s)]
            extra = module.seg_mid.shape[1] - h * w  # 1: a ViT's class token, first; 0: a CNN
            if extra not in (0, 1):
                raise ConfigError(f"level {s}: {module.seg_mid.shape[1]} tokens for a {h}x{w} patch grid")
            seg.append(module.seg_mid[:, extra:])
            det.append(module.det_mid[:, extra:])
            seg_cls.append(module.seg_mid[:, 0] if extra else None)
            det_cls.append(module.det_mid[:, 0] if extra else None)
            module.seg_mid = module.det_mid = None
        return AdaptedTokens(seg, det, list(feats.grids), self.levels, feats.embedding, seg_cls, det_cls)

    def adapter_parameters(self, family: str) -> list[nn.Parameter]:
        """The parameters of every level's ``"seg"`` or ``"det"`` adapter."""
        if family not in ADAPTER_FAMILIES:
            raise ConfigError(f"adapter family must be one of {', '.join(ADAPTER_FAMILIES)}, got {family!r}")
        return [p for s in self.levels for p in getattr(self.adapters[str(s)], family).parameters()]

    def optimizers(self, lr: float, betas: tuple[float, float] = OFFICIAL_BETAS) -> "AdapterOptimizers":
        """MVFA-AD's optimisers: one Adam per adapter family (official lr: :data:`OFFICIAL_LR`)."""
        return AdapterOptimizers(self, lr, betas)


class FrozenTokens(nn.Module):
    """The frozen backbone's own patch tokens in the joint space: the no-adapter baselines (WinCLIP / PatchCore style).

    Same output as :class:`MVFA` (seg = det = the projected tokens), so every scoring function applies;
    no class tokens (a PatchCore bank holds patch features only).
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
    """(B, N): the abnormal probability of each patch (the det branch's image score is its mean)."""
    return patch_logits(tokens, text).softmax(-1)[..., 1]


def upsampled_logits(logits: torch.Tensor, grid: tuple[int, int], size: int | tuple[int, int]) -> torch.Tensor:
    """(B, h*w, 2) patch logits -> (B, 2, H, W), bilinear with aligned corners (official ``F.interpolate`` call)."""
    h, w = grid
    if logits.shape[1] != h * w:
        raise ConfigError(f"{logits.shape[1]} patch logits do not fill a {h}x{w} grid")
    size = (size, size) if isinstance(size, int) else tuple(size)
    maps = logits.transpose(1, 2).reshape(-1, logits.shape[-1], h, w)
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=True)


def zero_shot_map(logits: torch.Tensor, grid: tuple[int, int], size: int) -> torch.Tensor:
    """(B, h*w, 2) patch logits -> (B, size, size) abnormal probability: upsample the logits, THEN softmax.

    The order of the official ``test_zero.py`` and ``test_few.py`` pixel maps; the softmax of
    interpolated logits is not the interpolation of patch softmaxes (tested on a 1 x 2 grid).
    """
    return upsampled_logits(logits, grid, size).softmax(1)[:, 1]


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
    """(B, h*w) patch scores -> (B, size, size), bilinear with aligned corners (the few-shot maps of ``test_few.py``)."""
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
    """Per level, the adapted seg and det tokens of the (augmented) normal support images: (M, d) each.

    ``rows_per_image``: 1 + h*w per level when the class token is kept (a ViT), else h*w.
    """

    seg: list[torch.Tensor]
    det: list[torch.Tensor]
    rows_per_image: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.seg[0].shape[0])


def _device_of(model: nn.Module, images: torch.Tensor) -> torch.device:
    """Where ``model`` runs: its backbone's device (MVFA, FrozenTokens), else that of the images."""
    backbone = getattr(model, "backbone", None)
    return backbone.device if backbone is not None else images.device


def _bank_rows(patches: torch.Tensor, cls: torch.Tensor | None) -> torch.Tensor:
    """(B, N, d) patch tokens and (B, d) class tokens or None -> (B * rows, d), each image's class token first."""
    if cls is not None:
        patches = torch.cat([cls.unsqueeze(1), patches], 1)
    return patches.reshape(-1, patches.shape[-1])


@torch.no_grad()
def build_memory_bank(model: nn.Module, images: torch.Tensor, batch: int = 16, class_token: bool = True,
                      precision: str = "fp32", channels_last: bool = False) -> MemoryBank:
    """Run ``model`` on normal support images (already augmented) and stack their tokens per level.

    class_token: keep each image's class token among the rows where the model gives one (a ViT), as
                 official ``train_few.py`` does (its bank stacks every token); queries stay patch tokens only.
    precision:   the network's arithmetic (as :func:`branch_scores`); the bank is stored in float32.
    """
    from medad.experiment.precision import as_input, autocast

    if len(images) == 0:
        raise ConfigError("the memory bank needs at least one normal support image")
    seg, det, rows = None, None, []
    device = _device_of(model, images)
    for i in range(0, len(images), batch):
        with autocast(device, precision):
            out = model(as_input(images[i:i + batch].to(device), channels_last))
        out.seg, out.det = [full_precision(t) for t in out.seg], [full_precision(t) for t in out.det]
        out.seg_cls = [None if c is None else full_precision(c) for c in out.seg_cls]
        out.det_cls = [None if c is None else full_precision(c) for c in out.det_cls]
        n = len(out.seg)
        seg_cls = out.seg_cls if class_token and out.seg_cls else [None] * n
        det_cls = out.det_cls if class_token and out.det_cls else [None] * n
        flat_s = [_bank_rows(t, c) for t, c in zip(out.seg, seg_cls)]
        flat_d = [_bank_rows(t, c) for t, c in zip(out.det, det_cls)]
        rows = [t.shape[1] + (c is not None) for t, c in zip(out.seg, seg_cls)]
        seg = flat_s if seg is None else [torch.cat([a, b]) for a, b in zip(seg, flat_s)]
        det = flat_d if det is None else [torch.cat([a, b]) for a, b in zip(det, flat_d)]
    return MemoryBank(seg, det, rows)


@torch.no_grad()
def branch_scores(model: nn.Module, images: torch.Tensor, text: torch.Tensor, bank: MemoryBank | None,
                  map_size: int, batch: int = 16, seg_few: bool = True, det_few: bool = True,
                  precision: str = "fp32", channels_last: bool = False) -> BranchScores:
    """Zero- and few-shot scores of every image at every level (see :class:`BranchScores`).

    Zero-shot maps upsample the logits and then take the softmax (:func:`zero_shot_map`);
    few-shot maps upsample the patch distances. ``seg_few`` / ``det_few`` False skip that
    few-shot branch (left NaN): image-level datasets need only the det branch, and the
    memory bank is most of the cost. ``precision="bf16"`` runs the network (backbone and
    adapters) under bfloat16 autocast; the scores are always computed in float32 from
    its tokens cast up.
    """
    from medad.experiment.precision import as_input, autocast

    device = _device_of(model, images)  # images may wait on the CPU; each batch goes to the model's device
    text = full_precision(text.to(device))
    parts = []
    for i in range(0, len(images), batch):
        with autocast(device, precision):
            out = model(as_input(images[i:i + batch].to(device), channels_last))
        b = len(out.seg[0])
        sz, sf, dz, df = [], [], [], []
        for li, grid in enumerate(out.grids):
            seg, det = full_precision(out.seg[li]), full_precision(out.det[li])
            sz.append(zero_shot_map(patch_logits(seg, text), grid, map_size))
            dz.append(zero_shot_patch_scores(det, text).mean(1))
            if bank is not None and seg_few:
                sf.append(upsample(memory_bank_scores(seg, bank.seg[li]), grid, map_size))
            else:
                sf.append(torch.full((b, map_size, map_size), float("nan"), device=device))
            if bank is not None and det_few:
                df.append(upsample(memory_bank_scores(det, bank.det[li]), grid, map_size).mean((1, 2)))
            else:
                df.append(torch.full((b,), float("nan"), device=device))
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
# How a masked dataset's zero-shot image is scored: "det" = official test_zero.py (its image score);
# "map_max" = the max of the zero-shot map (medad's rule before it followed the official one)
ZERO_SHOT_IMAGE = ("det", "map_max")


@dataclass
class Combined:
    """Final scores of a test set: image scores (B,), anomaly maps (B, S, S) or None, and the det branch's own
    image score (NaN for a masked dataset whose det few-shot scores were skipped)."""

    image: np.ndarray
    maps: np.ndarray | None
    det_image: np.ndarray


def combine(test: BranchScores, reference: BranchScores | None, pixel_level: bool, branch: str = "both",
            normalisation: str = "reference", zero_shot_image: str = "det") -> Combined:
    """MVFA's 0.5 / 0.5 combination of the min-max normalised branches.

    test:            scores of the test images
    reference:       scores of images seen before testing (support / validation); their min and max
                     normalise each branch when ``normalisation="reference"`` (the default here)
    pixel_level:     masked datasets: maps from the seg tokens; image score = max of the map, except
                     for ``branch="zero"`` (see ``zero_shot_image``)
    branch:          "zero", "few" or "both"
    normalisation:   "reference" or "test" (MVFA's transductive min-max over the test set)
    zero_shot_image: masked datasets, ``branch="zero"``: "det" (default; official ``test_zero.py``: the
                     det branch, sum over levels of the mean patch probability) or "map_max" (max of the map)
    """
    if branch not in BRANCHES:
        raise ConfigError(f"branch must be one of {', '.join(BRANCHES)}, got {branch!r}")
    if normalisation not in NORMALISATIONS:
        raise ConfigError(f"normalisation must be one of {', '.join(NORMALISATIONS)}, got {normalisation!r}")
    if zero_shot_image not in ZERO_SHOT_IMAGE:
        raise ConfigError(f"zero_shot_image must be one of {', '.join(ZERO_SHOT_IMAGE)}, got {zero_shot_image!r}")
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
    if not pixel_level:
        det_image = mix("det_zero", "det_few", level_sum)
        return Combined(det_image, None, det_image)
    maps = mix("seg_zero", "seg_few", level_sum)
    if branch != "zero" and not np.isfinite(test.det_few).all():
        # the official few-shot run never scores the det tokens of a masked dataset: not needed here either
        det_image = np.full(len(maps), np.nan)
    else:
        det_image = mix("det_zero", "det_few", level_sum)
    if branch == "zero" and zero_shot_image == "det":
        return Combined(det_image, maps, det_image)
    return Combined(maps.reshape(len(maps), -1).max(1), maps, det_image)


# ----------------------------------------------------------------------------- losses


def _check_map_and_mask(prob: torch.Tensor, target: torch.Tensor, what: str) -> None:
    if prob.shape[0] != target.shape[0] or prob.shape[-2:] != target.shape[-2:]:
        raise ConfigError(f"{what}: probability map {tuple(prob.shape)} and mask {tuple(target.shape)} "
                          f"must have the same batch size and height x width")


def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    r"""The focal term of official ``loss.py`` (``FocalLoss()`` defaults: gamma 2, no class weights).

    probs (B, C, H, W): class probabilities (already a softmax); target (B, H, W) class indices.
    With the one-hot target clamped to :math:`[\epsilon / (C - 1), 1 - \epsilon]`,
    :math:`p_t = \sum_c \tilde y_c p_c + \epsilon` and the loss is the mean over ALL pixels of
    :math:`-(1 - p_t)^\gamma \log p_t` (no average over classes).
    """
    _check_map_and_mask(probs, target, "focal_loss")
    classes = probs.shape[1]
    onehot = F.one_hot(target.long(), classes).movedim(-1, 1).to(probs.dtype)
    onehot = onehot.clamp(smooth / (classes - 1), 1.0 - smooth)
    pt = (onehot * probs).sum(1) + smooth
    return (-(1.0 - pt).pow(gamma) * pt.log()).mean()


def dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    r"""The Dice term of official ``loss.py`` (``BinaryDiceLoss``) on the abnormal probability (B, H, W).

    Per image :math:`1 - (2 \sum p m + s) / (\sum p + \sum m + s)` with :math:`s = 1`, averaged over images.
    """
    _check_map_and_mask(prob, target, "dice_loss")
    p, m = prob.reshape(len(prob), -1), target.reshape(len(target), -1).to(prob.dtype)
    return 1.0 - ((2.0 * (p * m).sum(1) + smooth) / (p.sum(1) + m.sum(1) + smooth)).mean()


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is a 16-bit float (bf16 autocast output); float32 and float64 stay as they are."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class MVFALoss(nn.Module):
    """Sum over levels of BCE(mean det anomaly probability, label) and, with masks, focal + Dice on the seg map.

    The seg map is the softmax of the upsampled logits (official order); focal and Dice are
    :func:`focal_loss` and :func:`dice_loss`, the official ``loss.py`` terms.
    """

    def forward(self, out: AdaptedTokens, text: torch.Tensor, labels: torch.Tensor,
                masks: torch.Tensor | None = None) -> torch.Tensor:
        """labels (B,) in {0, 1}; masks (B, S, S) in {0, 1} or None (image-level data: no pixel loss).

        Computed in float32 even inside a bfloat16 autocast region: the tokens are cast up and
        autocast is switched off for the logits, softmax and losses.
        """
        text = full_precision(text)
        loss = torch.zeros((), device=labels.device, dtype=text.dtype)
        with torch.autocast(labels.device.type, enabled=False):
            for li, grid in enumerate(out.grids):
                prob = zero_shot_patch_scores(full_precision(out.det[li]), text).mean(1).clamp(1e-6, 1 - 1e-6)
                loss = loss + F.binary_cross_entropy(prob, labels.to(prob.dtype))
                if masks is not None:
                    target = (masks > 0.5).long()
                    logits = patch_logits(full_precision(out.seg[li]), text)
                    probs = upsampled_logits(logits, grid, tuple(masks.shape[-2:])).softmax(1)
                    loss = loss + focal_loss(probs, target) + dice_loss(probs[:, 1], target)
        return loss


# ----------------------------------------------------------------------------- which adapters learn


class AdapterOptimizers:
    """MVFA-AD's two Adams, one over the seg adapters and one over the det adapters.

    Official ``train_few.py`` and ``train_zero.py`` (``seg_optimizer`` / ``det_optimizer``): on a batch with masks
    both step; on an image-level batch only the det optimiser steps (the seg adapters still get
    gradients through the residual stream, but they are never applied). Adam keeps its state per
    parameter, so the seg adapters' moments and step count advance only on batches with masks.
    Use: ``opt.zero_grad(); loss.backward(); opt.step(pixel_level)``.
    """

    def __init__(self, model: "MVFA", lr: float, betas: tuple[float, float] = OFFICIAL_BETAS):
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ConfigError(f"lr must be a positive number (MVFA-AD: {OFFICIAL_LR}), got {lr!r}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {betas!r}")
        self.lr, self.betas = float(lr), tuple(float(b) for b in betas)
        self.seg = torch.optim.Adam(model.adapter_parameters("seg"), lr=self.lr, betas=self.betas)
        self.det = torch.optim.Adam(model.adapter_parameters("det"), lr=self.lr, betas=self.betas)

    def to_step(self, pixel_level: bool) -> list[torch.optim.Optimizer]:
        """The optimisers to step after a batch of a dataset with masks (both) or without (det only)."""
        return [self.seg, self.det] if pixel_level else [self.det]

    def zero_grad(self) -> None:
        self.seg.zero_grad(set_to_none=True)
        self.det.zero_grad(set_to_none=True)

    def step(self, pixel_level: bool) -> None:
        for opt in self.to_step(pixel_level):
            opt.step()

    def state_dict(self) -> dict:
        return {"seg": self.seg.state_dict(), "det": self.det.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or set(state) != {"seg", "det"}:
            raise ConfigError("an AdapterOptimizers state must be the dict of its state_dict(): keys 'seg' and 'det'")
        self.seg.load_state_dict(state["seg"])
        self.det.load_state_dict(state["det"])


# ----------------------------------------------------------------------------- shortcut check


def blank_boxes(images: torch.Tensor, boxes: Sequence[Sequence[float]], backbone) -> torch.Tensor:
    """A copy of preprocessed images (B, 3, S, S) with each box set to black as ``backbone`` preprocesses it.

    boxes: (x0, y0, x1, y1) fractions of the frame, e.g. ``medad.data.endoscopy_ad.OVERLAY_BOXES``; a box
    covers rows ``floor(y0 S)`` to ``ceil(y1 S)`` and columns alike. Fractions of the frame are fractions
    of the input only when the backbone squashes frames to S x S (``resize="squash"``), so a cropping
    backbone is refused. Black is 0 under ``protocol="official"`` and ``-mean / std`` otherwise.
    """
    import math

    pre = backbone.preprocess
    if pre.resize != "squash":
        raise ConfigError(f"blank_boxes: boxes are fractions of the frame, but backbone {backbone.name!r} crops "
                          f"(resize={pre.resize!r}); load it with resize='squash'")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"blank_boxes expects preprocessed images (B, 3, H, W), got "
                          f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    black = pre(np.zeros((8, 8, 3), np.uint8))[:, 0, 0].to(images.device, images.dtype)
    out = images.clone()
    h, w = images.shape[-2:]
    for box in boxes:
        if len(box) != 4 or not all(0.0 <= v <= 1.0 for v in box) or not (box[0] < box[2] and box[1] < box[3]):
            raise ConfigError(f"blank_boxes: a box must be (x0, y0, x1, y1) fractions with x0 < x1, y0 < y1, got {box!r}")
        x0, y0, x1, y1 = box
        out[:, :, int(y0 * h): math.ceil(y1 * h), int(x0 * w): math.ceil(x1 * w)] = black.view(3, 1, 1)
    return out


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
