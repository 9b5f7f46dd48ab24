"""The one interface every backbone offers: :class:`Backbone`.

A chapter asks for a backbone by registry name (``medad.backbones.load_backbone``)
and then only uses what is defined here:

- ``preprocess`` / ``preprocess_batch``: uint8 images (H, W) or (H, W, 3), or PIL
  images, to the normalised float tensor the image encoder expects;
- ``encode_image(images, levels=..., inserts=...)``: the global embedding and
  the patch tokens of chosen stages (:class:`ImageFeatures`). ``inserts`` maps a
  stage number to a trainable module applied to that stage's output; what the
  module returns replaces the stage output and flows on into the later stages
  (MVFA's residual adapters, Huang et al. CVPR 2024, Sec. 3.2);
- ``project_tokens(tokens, level)``: the fixed map that carries one level's
  patch tokens into the joint image-text space (``None`` where there is none);
- ``tokenize`` / ``token_embeddings`` / ``encode_text`` /
  ``encode_text_with_context``: text features from strings, or from token
  embeddings with learnable context vectors inserted after the start token
  (CoOp, Zhou et al. IJCV 2022, Eq. 2; ViP's Context Prompt, MICCAI 2024);
- ``embed_dim`` (joint space width), ``text_width`` (token embedding width),
  ``logit_scale``, and the provenance attributes ``description``,
  ``weights_source``, ``pretrained``, ``is_standin`` and ``protocol``.

``protocol`` (see :data:`PROTOCOLS`) says how the images reach the network:
``"corrected"`` (default) normalises them with the backbone's own mean/std;
``"official"`` feeds them in [0, 1] without mean/std, as MVFA-AD's data loader
does (``dataset/medical_few.py``: ``Resize`` + ``ToTensor`` only). For CLIP the
protocol also picks the MLP activation (:mod:`.clip_openclip`);
``protocol_description()`` says in words what a backbone's protocol changed.

Stage numbering is 1-based: stage ``s`` is the ``s``-th transformer block of a
ViT, or the ``s``-th stage of a CNN. An inserted module always sees tokens
``(B, T, C)``: for a ViT ``T = 1 + h*w`` with the class token first (the
residual stream as it is); for a CNN ``T = h*w`` in row-major order (the feature
map flattened, and folded back after the module). So one adapter class (e.g.
MVFA's ``Linear -> LeakyReLU -> Linear``) works on every backbone.
"""
from __future__ import annotations

import abc
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from medad.errors import ConfigError


class BackboneWarning(UserWarning):
    """A backbone runs without the weights its name suggests (random init), or as a stand-in."""


@dataclass
class ImageFeatures:
    """What ``encode_image`` returns.

    embedding: (B, D) global image embedding in the joint space (vision-only
               backbones: the pooled feature), not normalised.
    tokens:    one (B, h*w, C_l) tensor per requested level, patch tokens in their
               native width, class token removed, row-major over the grid.
    grids:     the (h, w) patch grid of each level.
    levels:    the stage numbers of ``tokens``.
    cls:       per level, the class token (B, C_l) for ViTs, else None.
    """

    embedding: torch.Tensor
    tokens: list[torch.Tensor] = field(default_factory=list)
    grids: list[tuple[int, int]] = field(default_factory=list)
    levels: tuple[int, ...] = ()
    cls: list[torch.Tensor | None] = field(default_factory=list)

    def token_map(self, i: int) -> torch.Tensor:
        """Level ``i``'s tokens as a feature map (B, C, h, w)."""
        h, w = self.grids[i]
        t = self.tokens[i]
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)


@dataclass
class TextTokens:
    """Tokenised text: ids (n, L) and attention mask (n, L), 1 = real token, 0 = padding."""

    ids: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]

    def to(self, device) -> "TextTokens":
        return TextTokens(self.ids.to(device), self.mask.to(device))


OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# How images (and, for CLIP, the MLP activation) reach a backbone; see the module docstring.
PROTOCOLS = ("corrected", "official")


def check_protocol(protocol, what: str = "protocol") -> str:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{what} must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return protocol


class Preprocess:
    """uint8 image -> normalised (3, S, S) float tensor.

    resize="crop":   shorter side to S (bicubic), then centre crop (CLIP's own transform);
    resize="squash": straight to S x S, aspect ratio not kept (MVFA resizes medical images so).
    Grayscale is repeated over three channels; an alpha channel is composited on white.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], resize: str = "crop"):
        if resize not in ("crop", "squash"):
            raise ConfigError(f"resize must be 'crop' or 'squash', got {resize!r}")
        if not isinstance(size, int) or size < 8:
            raise ConfigError(f"image size must be an integer >= 8, got {size!r}")
        self.size, self.resize = size, resize
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __repr__(self) -> str:
        return f"Preprocess(size={self.size}, resize={self.resize!r}, mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"

    def unnormalised(self) -> "Preprocess":
        """The same resizing with images left in [0, 1] (mean 0, std 1): MVFA-AD's input, ``protocol="official"``."""
        return Preprocess(self.size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), self.resize)

    @staticmethod
    def to_pil(image):
        from PIL import Image

        if isinstance(image, Image.Image):
            pil = image
        else:
            arr = np.asarray(image)
            if arr.dtype != np.uint8:
                raise ConfigError(f"image must be uint8 (H, W) or (H, W, 3), got dtype {arr.dtype}")
            if arr.ndim == 3 and arr.shape[2] == 1:
                arr = arr[:, :, 0]
            if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
                raise ConfigError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
            pil = Image.fromarray(arr)
        if pil.mode in ("RGBA", "LA", "P"):
            rgba = pil.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            pil = Image.alpha_composite(canvas, rgba)
        return pil.convert("RGB")

    def __call__(self, image) -> torch.Tensor:
        from PIL import Image

        pil = self.to_pil(image)
        s = self.size
        if self.resize == "squash":
            pil = pil.resize((s, s), Image.BICUBIC)
        else:
            w, h = pil.size
            # long side as torchvision's Resize(s) computes it (truncated), so crops match CLIP's transform
            size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
            pil = pil.resize(size, Image.BICUBIC)
            w, h = pil.size
            left, top = int(round((w - s) / 2.0)), int(round((h - s) / 2.0))  # torchvision's CenterCrop offsets
            pil = pil.crop((left, top, left + s, top + s))
        x = torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
        return (x - self.mean) / self.std


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, C) -> (B, C, h, w)."""
    h, w = grid
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


def map_to_tokens(fmap: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C)."""
    return fmap.flatten(2).transpose(1, 2)


def apply_insert_to_map(module: Callable, fmap: torch.Tensor) -> torch.Tensor:
    """Run a token-wise inserted module on a CNN feature map and fold the result back."""
    b, c, h, w = fmap.shape
    out = module(map_to_tokens(fmap))
    if out.shape != (b, h * w, c):
        raise ConfigError(f"an inserted module must return tokens of the shape it got ({(b, h * w, c)}), returned {tuple(out.shape)}")
    return tokens_to_map(out, (h, w))


def run_cnn_stages(x: torch.Tensor, stages, levels, inserts) -> tuple[torch.Tensor, dict]:
    """Run CNN stages (numbered from 1) in order, applying inserted modules and keeping the asked-for levels.

    Returns the last feature map and {stage: feature map after its insert} for ``levels``.
    """
    taken = {}
    for stage, block in enumerate(stages, start=1):
        x = block(x)
        if stage in inserts:
            x = apply_insert_to_map(inserts[stage], x)
        if stage in levels:
            taken[stage] = x
    return x, taken


class Backbone(nn.Module, abc.ABC):
    """Base class of every registered backbone (see the module docstring)."""

    name: str = ""
    description: str = ""
    weights_source: str = ""
    pretrained: bool = False
    is_standin: bool = False
    protocol: str = "corrected"
    activation: str | None = None  # the transformer MLP's activation where the protocol can switch it (CLIP), else None
    has_text: bool = False
    embed_dim: int = 0
    text_width: int = 0
    context_length: int = 0
    image_size: int = 224
    stage_widths: tuple[int, ...] = ()
    default_levels: tuple[int, ...] = ()

    def __init__(self):
        super().__init__()
        self.inserted = nn.ModuleDict()
        self._preprocess: Preprocess | None = None
        self.frozen = False

    # ---- provenance -------------------------------------------------------------
    def info(self) -> dict:
        """A one-row summary for tables: name, kind, weights, widths."""
        return {
            "name": self.name,
            "stand-in": self.is_standin,
            "pretrained": self.pretrained,
            "text encoder": self.has_text,
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
            "stages": len(self.stage_widths),
            "default levels": list(self.default_levels),
            "weights": self.weights_source,
            "protocol": self.protocol,
            "description": self.description,
        }

    def protocol_description(self) -> str:
        """One sentence: how images (and the activation, where there is one to switch) reach this backbone."""
        if self.protocol == "official":
            text = "official (MVFA-AD): images in [0, 1] without mean/std normalisation"
            if self.activation is None:
                return text + "; this network has no GELU to switch (its input is all that changes)"
            return text + f"; MLP activation {self.activation}, as MVFA-AD builds the model"
        mean, std = self.preprocess.mean.flatten().tolist(), self.preprocess.std.flatten().tolist()
        text = (f"corrected: images normalised with the backbone's mean {[round(m, 4) for m in mean]} "
                f"and std {[round(v, 4) for v in std]}")
        return text if self.activation is None else text + f"; MLP activation {self.activation}, as the weights were trained"

    def apply_input_protocol(self, protocol: str) -> None:
        """Set ``protocol``; "official" leaves images in [0, 1] (see :meth:`Preprocess.unnormalised`).

        Only the preprocessing changes here: fitted parts (a stand-in's DeViSE and level maps) stay
        those of the correctly normalised network, as MVFA-AD's pretrained weights did.
        """
        protocol = check_protocol(protocol)
        if self.protocol == "official" and protocol != "official":
            raise ConfigError(f"backbone {self.name!r} already runs the official protocol; load it again for {protocol!r}")
        if protocol == "official" and self.protocol != "official":
            self._preprocess = self._preprocess.unnormalised()
        self.protocol = protocol

    def __repr__(self) -> str:
        flag = " STAND-IN" if self.is_standin else ""
        return f"<{type(self).__name__} {self.name}{flag} embed_dim={self.embed_dim} weights={self.weights_source!r}>"

    # ---- freezing ---------------------------------------------------------------
    def freeze(self) -> "Backbone":
        """No gradients for the backbone's own weights, and eval mode (BN statistics, dropout) kept.

        Modules in ``self.inserted`` and modules passed as ``inserts`` stay trainable.
        """
        for name, p in self.named_parameters():
            if not name.startswith("inserted."):
                p.requires_grad_(False)
        self.frozen = True
        return self.train(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            # A frozen backbone stays in eval mode; only inserted modules follow ``mode``.
            for name, child in self.named_children():
                if name != "inserted":
                    child.train(False)
        return self

    # ---- images -----------------------------------------------------------------
    @property
    def preprocess(self) -> Preprocess:
        return self._preprocess

    def preprocess_batch(self, images: Sequence) -> torch.Tensor:
        """A list of uint8 images (or PIL images) -> (B, 3, S, S) on the backbone's device."""
        if len(images) == 0:
            raise ConfigError("preprocess_batch needs at least one image")
        return torch.stack([self.preprocess(im) for im in images]).to(self.device)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def insert(self, stage: int, module: nn.Module) -> None:
        """Keep ``module`` after ``stage`` for every later ``encode_image`` call (trainable, saved with the backbone)."""
        self._check_stage(stage, "insert(stage=...)")
        self.inserted[str(stage)] = module

    def _check_stage(self, stage, what: str) -> int:
        n = len(self.stage_widths)
        if isinstance(stage, bool) or not isinstance(stage, (int, np.integer)) or not 1 <= int(stage) <= n:
            raise ConfigError(f"{what}: stage must be an integer in 1..{n} for backbone {self.name!r}, got {stage!r}")
        return int(stage)

    def _resolve_levels_inserts(self, levels, inserts) -> tuple[tuple[int, ...], dict[int, Callable]]:
        levels = self.default_levels if levels is None else tuple(levels)
        levels = tuple(self._check_stage(s, "encode_image(levels=...)") for s in levels)
        chosen: Mapping = self.inserted if inserts is None else inserts
        resolved = {self._check_stage(int(k), "encode_image(inserts=...)"): m for k, m in chosen.items()}
        return levels, resolved

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ConfigError(f"encode_image expects a float tensor (B, 3, H, W) from preprocess_batch, got {shape}")
        return images

    @abc.abstractmethod
    def encode_image(self, images: torch.Tensor, levels: Sequence[int] | None = None,
                     inserts: Mapping[int, Callable] | None = None) -> ImageFeatures:
        """Global embedding and the patch tokens of ``levels`` (default ``default_levels``)."""

    def project_tokens(self, tokens: torch.Tensor, level: int) -> torch.Tensor | None:
        """Level ``level``'s tokens (B, N, C_l) in the joint space (B, N, embed_dim); None where no fixed map exists."""
        return None

    # ---- text -------------------------------------------------------------------
    def _no_text(self, what: str):
        raise ConfigError(f"backbone {self.name!r} is vision-only and has no {what}; choose one with a text encoder "
                          f"(medad.backbones.list_backbones(text=True))")

    def tokenize(self, texts: Sequence[str]) -> TextTokens:
        self._no_text("tokenizer")

    def token_embeddings(self, tokens: TextTokens) -> torch.Tensor:
        """Word embeddings (n, L, text_width) of ``tokens`` (no position embedding added)."""
        self._no_text("token embeddings")

    def encode_text(self, texts, normalize: bool = False) -> torch.Tensor:
        """Strings (or TextTokens) -> (n, embed_dim) text embeddings in the joint space."""
        self._no_text("text encoder")

    def encode_embedded(self, embeddings: torch.Tensor, mask: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """The text encoder on ready-made input embeddings (n, L, text_width) with mask (n, L) -> (n, embed_dim).

        ``embeddings`` replace the word embeddings of a tokenised text (start and end tokens included;
        position embeddings are added inside). ``mask`` marks the real positions, 1 up to and including
        the end token. ``token_embeddings(tokens)`` with ``tokens.mask`` gives back ``encode_text``.
        """
        self._no_text("text encoder")

    def encode_text_with_context(self, texts, context: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """CoOp: ``[start] ctx_1 .. ctx_M <tokens of text> [end]`` through the frozen text encoder.

        context: (M, text_width) shared by all texts, or (n, M, text_width) one set per text.
        Gradients flow into ``context``.
        """
        self._no_text("text encoder")

    @property
    def logit_scale(self) -> float:
        """The temperature that multiplies cosine similarities (CLIP: exp of the learnt scale, 100 for OpenAI's)."""
        return 100.0

    def similarity(self, image_embedding: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        """logit_scale * cosine similarity, (B, n)."""
        a = nn.functional.normalize(image_embedding, dim=-1)
        b = nn.functional.normalize(text_embedding, dim=-1)
        return self.logit_scale * a @ b.T

    def _context_batch(self, context: torch.Tensor, n: int) -> torch.Tensor:
        if not isinstance(context, torch.Tensor) or context.ndim not in (2, 3) or context.shape[-1] != self.text_width:
            shape = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
            raise ConfigError(f"context must be a tensor (M, {self.text_width}) or (n_texts, M, {self.text_width}), got {shape}")
        if context.ndim == 2:
            return context.unsqueeze(0).expand(n, -1, -1)
        if context.shape[0] != n:
            raise ConfigError(f"context has {context.shape[0]} sets of vectors but there are {n} texts")
        return context


def warn_random(name: str, why: str) -> None:
    warnings.warn(f"backbone {name!r} runs with RANDOM weights: {why}. Its features mean nothing; "
                  f"results from it are not those of the pretrained model.", BackboneWarning, stacklevel=3)
