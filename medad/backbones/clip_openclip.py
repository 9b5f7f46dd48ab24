"""Real CLIP (Radford et al., ICML 2021) through open_clip, behind :class:`~medad.backbones.base.Backbone`.

The papers' backbones: ViT-L-14-336 (MVFA, run at 240 px: a 17 x 17 patch grid,
the last 2 px unused, position embeddings interpolated by open_clip when the
weights load), and ViP's ViT-L-14-336 at 336 px, ViT-B-16 and RN50x64 (RN50 too). ``encode_image`` re-runs open_clip's
own modules block by block, so that modules can be inserted after any block;
with nothing inserted it returns exactly ``model.encode_image`` (tested).

How intermediate levels reach the joint space (``project_tokens``):
ViT: every block writes the same residual stream, so each level's tokens go
through the final ``ln_post`` and ``proj`` (as WinCLIP / APRIL-GAN do).
RN50: only the last stage has a fixed map, the attention pool's value and
output projections applied per location (MaskCLIP, Zhou et al. ECCV 2022);
earlier stages have none (``None``): a trainable adapter is needed there.

Weights: a pretrained tag (``"openai"``) from a cache or a download, a local
checkpoint file, or ``pretrained=None`` for random weights (tests only).

Protocol (:data:`~medad.backbones.base.PROTOCOLS`): ``"corrected"`` (default)
builds the MLPs of both towers with QuickGELU, the activation OpenAI's CLIP
was trained with (open_clip's ``quick_gelu`` flag of the tag), and normalises
images with CLIP's mean/std. ``"official"`` reproduces MVFA-AD's run: its
``CLIP/clip.py`` rebuilds the 240 px model from the JSON config, which has no
``quick_gelu``, so both towers use ``nn.GELU`` (``CLIP/model.py``:
``QuickGELU if quick_gelu else nn.GELU``), and its data loader feeds images in
[0, 1] without mean/std (``dataset/medical_few.py``). The weights are the same.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from medad.backbones.base import (OPENAI_MEAN, OPENAI_STD, Backbone, ImageFeatures, Preprocess, TextTokens, check_protocol,
                                  warn_random)
from medad.backbones.weights import WeightsNotFound, find_named_file, hf_cached_file, hub_reachable
from medad.errors import ConfigError, MedadError

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def _open_clip():
    from medad.compat.torchvision_ops import ensure_torchvision

    ensure_torchvision()  # open_clip imports torchvision, whose CUDA-linked ops fail on CPU-only torch
    import open_clip

    return open_clip


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.startswith((".", "~")) or value.lower().endswith(WEIGHT_SUFFIXES)


def cached_tag_file(arch: str, tag: str, cache_dir: str | None = None) -> Path | None:
    """The file open_clip would load for ``arch``/``tag`` when it is already on disk (no network)."""
    open_clip = _open_clip()
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    hub = cfg.get("hf_hub", "")
    if hub:
        # 'org/repo/' means the default file name; 'org/repo/file.bin' names it
        repo, filename = (hub[:-1], "") if hub.endswith("/") else os.path.split(hub)
        names = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME] if not filename else [Path(filename).with_suffix(".safetensors").name, filename]
        hit = hf_cached_file(repo, names, cache_dir)
        if hit:
            return hit
    url = cfg.get("url", "")
    if url:
        name = os.path.basename(url)
        local = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / name
        if local.is_file():
            return local
        return find_named_file([name])
    return None


def mlp_activation(model: nn.Module) -> str | None:
    """"QuickGELU" or "nn.GELU": what the transformer MLPs of an open_clip model use (None if neither is found)."""
    QuickGELU = _open_clip().transformer.QuickGELU
    for module in model.modules():
        if isinstance(module, QuickGELU):
            return "QuickGELU"
        if isinstance(module, nn.GELU):
            return "nn.GELU"
    return None


def resolve_clip_weights(name: str, arch: str, default_tag: str, pretrained, cache_dir: str | None = None) -> tuple[str | None, str]:
    """What to pass to open_clip as ``pretrained`` and a sentence saying where the weights come from.

    pretrained: True (the default tag), a tag, a path to a checkpoint, or None/False (random weights).
    Raises WeightsNotFound at once, without open_clip's retry loop, when the tag's file is not
    cached and the hub does not answer.
    """
    open_clip = _open_clip()
    if pretrained in (None, False):
        return None, "random init (pretrained=None)"
    if pretrained is True:
        pretrained = default_tag
    if not isinstance(pretrained, (str, os.PathLike)):
        raise ConfigError(f"pretrained for {name!r} must be True, a pretrained tag, a checkpoint path or None; got {pretrained!r}")
    value = os.fspath(pretrained)
    if os.path.isfile(os.path.expanduser(value)):
        path = os.path.expanduser(value)
        return path, f"local checkpoint {path}"
    if _looks_like_path(value):
        raise ConfigError(f"pretrained={value!r} for {name!r}: no such checkpoint file")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if value not in tags:
        raise ConfigError(f"pretrained tag {value!r} is not known for {arch}; open_clip knows: {', '.join(tags)} "
                          f"(or pass a checkpoint path, or None for random weights)")
    hit = cached_tag_file(arch, value, cache_dir)
    if hit is not None:
        return str(hit), f"open_clip tag {value!r} (cached file {hit})"
    if hub_reachable():
        return value, f"open_clip tag {value!r} (downloaded)"
    cfg = open_clip.get_pretrained_cfg(arch, value)
    file_name = os.path.basename(cfg.get("url", "")) or "open_clip_pytorch_model.bin"
    hub = cfg.get("hf_hub", "").rstrip("/")
    raise WeightsNotFound(
        f"CLIP weights for {name!r} ({arch}, tag {value!r}) are not on this machine and the model hub cannot be "
        f"reached (offline). Supply them in one of these ways:\n"
        f"  1. load_backbone({name!r}, pretrained='/path/to/checkpoint') with a local file "
        f"(OpenAI's {file_name}, or an open_clip .bin/.safetensors);\n"
        f"  2. put {file_name} in a folder named by $MEDAD_WEIGHTS, or in ~/.cache/clip/;\n"
        f"  3. run once with internet access so open_clip caches it"
        + (f" (Hugging Face repo {hub})" if hub else "") + ".\n"
        f"Without CLIP weights use the offline stand-in 'standin-effnet-lite0-minilm' (named as a stand-in in all results), "
        f"or pretrained=None for random weights (tests only)."
    )


def _sequence_first(transformer: nn.Module) -> None:
    """Run a ViT tower's blocks on (tokens, batch, width) tensors: open_clip's own ``batch_first=False`` mode, the
    same arithmetic. Why: torch's attention in batch-first mode works on a transposed view of its input, and on a CPU
    a linear layer on that view of a batch > 1 takes a slow path (one ViT-L block, batch 4, bf16 autocast, one thread:
    20x slower training step, 34x slower inference; ``benchmarks/vit_layout.py``)."""
    blocks = list(transformer.resblocks)
    if not all(isinstance(getattr(b, "attn", None), nn.MultiheadAttention) for b in blocks):
        return  # open_clip's custom attention blocks are batch-first only; leave them as built
    transformer.batch_first = False
    for b in blocks:
        b.attn.batch_first = False


class OpenCLIPBackbone(Backbone):
    """An open_clip CLIP model (ViT or ModifiedResNet image tower) with multi-level features."""

    has_text = True

    def __init__(self, model: nn.Module, *, name: str, arch: str, image_size: int, levels: Sequence[int],
                 weights_source: str, pretrained: bool, description: str, resize: str = "crop"):
        super().__init__()
        open_clip = _open_clip()
        self.model = model
        self.name, self.arch, self.description = name, arch, description
        self.weights_source, self.pretrained = weights_source, pretrained
        self.image_size = image_size
        visual = model.visual
        if isinstance(visual, open_clip.transformer.VisionTransformer):
            self.kind = "vit"
            _sequence_first(visual.transformer)
            self.stage_widths = tuple(visual.transformer.width for _ in visual.transformer.resblocks)
            self._grid = tuple(visual.grid_size)
        elif isinstance(visual, open_clip.modified_resnet.ModifiedResNet):
            self.kind = "resnet"
            self._layers = [visual.layer1, visual.layer2, visual.layer3, visual.layer4]
            self.stage_widths = tuple(layer[-1].bn3.num_features for layer in self._layers)
        else:
            raise ConfigError(f"{arch}: image tower {type(visual).__name__} is not supported (ViT or ModifiedResNet only)")
        self.default_levels = tuple(levels)
        for s in self.default_levels:
            self._check_stage(s, "levels")
        self.embed_dim = int(model.text_projection.shape[1] if isinstance(model.text_projection, torch.Tensor)
                             else model.text_projection.out_features)
        self.text_width = int(model.token_embedding.embedding_dim)
        self.context_length = int(model.context_length)
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        self._preprocess = Preprocess(image_size, cfg.get("mean", OPENAI_MEAN), cfg.get("std", OPENAI_STD), resize)
        self._tokenizer = open_clip.get_tokenizer(arch)
        self.activation = mlp_activation(model)

    # ---- image ------------------------------------------------------------------
    def grid(self, stage: int) -> tuple[int, int]:
        if self.kind == "vit":
            return self._grid
        side = self.image_size // (2 ** (stage + 1))  # layer1 at stride 4 ... layer4 at stride 32
        return (side, side)

    def encode_image(self, images: torch.Tensor, levels: Sequence[int] | None = None,
                     inserts: Mapping[int, Callable] | None = None) -> ImageFeatures:
        images = self._check_images(images)
        levels, inserts = self._resolve_levels_inserts(levels, inserts)
        if self.kind == "vit":
            return self._encode_vit(images, levels, inserts)
        return self._encode_resnet(images, levels, inserts)

    def _encode_vit(self, images, levels, inserts) -> ImageFeatures:
        visual = self.model.visual
        x = visual._embeds(images)  # patchify, class token, position embedding, ln_pre: open_clip's own code
        batch_first = visual.transformer.batch_first
        # every tensor handed to a layer is contiguous: on a CPU a linear layer on a transposed view takes a slow path
        if not batch_first:
            x = x.transpose(0, 1).contiguous()
        taken = {}
        for stage, block in enumerate(visual.transformer.resblocks, start=1):
            x = block(x, attn_mask=None)
            if stage in inserts:
                seq = x if batch_first else x.transpose(0, 1).contiguous()
                out = inserts[stage](seq)
                if out.shape != seq.shape:
                    raise ConfigError(f"module inserted after stage {stage} must return shape {tuple(seq.shape)}, got {tuple(out.shape)}")
                x = out if batch_first else out.transpose(0, 1).contiguous()
            if stage in levels:
                taken[stage] = x if batch_first else x.transpose(0, 1).contiguous()
        if not batch_first:
            x = x.transpose(0, 1)
        pooled, _ = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return ImageFeatures(
            embedding=pooled,
            tokens=[taken[s][:, 1:] for s in levels],
            grids=[self._grid for _ in levels],
            levels=levels,
            cls=[taken[s][:, 0] for s in levels],
        )

    def _encode_resnet(self, images, levels, inserts) -> ImageFeatures:
        from medad.backbones.base import map_to_tokens, run_cnn_stages

        visual = self.model.visual
        x, taken = run_cnn_stages(visual.stem(images), self._layers, levels, inserts)
        return ImageFeatures(
            embedding=visual.attnpool(x),
            tokens=[map_to_tokens(taken[s]) for s in levels],
            grids=[tuple(taken[s].shape[-2:]) for s in levels],
            levels=levels,
            cls=[None for _ in levels],
        )

    def project_tokens(self, tokens: torch.Tensor, level: int) -> torch.Tensor | None:
        level = self._check_stage(level, "project_tokens(level=...)")
        visual = self.model.visual
        if self.kind == "vit":
            out = visual.ln_post(tokens)
            return out @ visual.proj if visual.proj is not None else out
        if level != len(self.stage_widths):
            return None
        pool = visual.attnpool
        pos = pool.positional_embedding[1:].to(tokens.dtype)
        if pos.shape[0] != tokens.shape[1]:
            raise ConfigError(f"{self.name}: last-stage tokens have {tokens.shape[1]} positions, the attention pool expects {pos.shape[0]}")
        return pool.c_proj(pool.v_proj(tokens + pos))

    # ---- text -------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> TextTokens:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ConfigError("tokenize expects a list of strings")
        ids = self._tokenizer(list(texts)).to(self.device)
        return TextTokens(ids=ids, mask=(ids != 0).long())

    def token_embeddings(self, tokens: TextTokens) -> torch.Tensor:
        return self.model.token_embedding(tokens.ids)

    def encode_text(self, texts, normalize: bool = False) -> torch.Tensor:
        tokens = texts if isinstance(texts, TextTokens) else self.tokenize(texts)
        return self.model.encode_text(tokens.ids, normalize=normalize)

    def encode_embedded(self, embeddings: torch.Tensor, mask: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        model = self.model
        if embeddings.ndim != 3 or embeddings.shape[1:] != (self.context_length, self.text_width):
            raise ConfigError(f"embeddings must be (n, {self.context_length}, {self.text_width}) for {self.name}, "
                              f"got {tuple(embeddings.shape)}")
        if model.text_pool_type not in ("argmax", "eos"):
            raise ConfigError(f"{self.arch}: text pooling {model.text_pool_type!r} is not supported here")
        end = mask.long().sum(dim=1) - 1  # the end token is the last real position (CLIP pools there)
        x = embeddings + model.positional_embedding.to(embeddings.dtype)
        x = model.transformer(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), end]
        proj = model.text_projection
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return nn.functional.normalize(x, dim=-1) if normalize else x

    def encode_text_with_context(self, texts, context: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        tokens = texts if isinstance(texts, TextTokens) else self.tokenize(texts)
        n, length = tokens.ids.shape
        emb = self.model.token_embedding(tokens.ids)
        ctx = self._context_batch(context, n).to(emb.dtype)
        m = ctx.shape[1]
        used = int(tokens.mask.sum(dim=1).max())
        if used + m > length:
            raise ConfigError(f"text too long for {m} context vectors: {used} tokens + {m} exceed {length}")
        # [start] ctx_1..ctx_M words [end] pad...: the last M padding positions drop off.
        x = torch.cat([emb[:, :1], ctx, emb[:, 1:length - m]], dim=1)
        mask = torch.cat([tokens.mask[:, :1], tokens.mask.new_ones(n, m), tokens.mask[:, 1:length - m]], dim=1)
        return self.encode_embedded(x, mask, normalize)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())


def build_openclip(name: str, *, arch: str, default_tag: str, native_size: int, image_size: int | None = None,
                   levels: Sequence[int], description: str, pretrained=True, device: str = "cpu", seed: int = 0,
                   quick_gelu: bool | None = None, cache_dir: str | None = None, weights_only: bool = True,
                   resize: str = "crop", protocol: str = "corrected") -> OpenCLIPBackbone:
    """Create the open_clip model, load weights (see :func:`resolve_clip_weights`), wrap it.

    protocol: "corrected" or "official" (module docstring); "official" means nn.GELU, so it
              cannot be combined with ``quick_gelu=True``.
    """
    open_clip = _open_clip()
    protocol = check_protocol(protocol)
    size = int(image_size or native_size)
    if protocol == "official":
        if quick_gelu:
            raise ConfigError(f"{name}: protocol='official' builds the MLPs with nn.GELU as MVFA-AD does; "
                              f"quick_gelu=True contradicts it (leave quick_gelu unset)")
        quick_gelu = False
    source, sentence = resolve_clip_weights(name, arch, default_tag, pretrained, cache_dir)
    if quick_gelu is None:  # OpenAI's CLIP was trained with QuickGELU; the architecture must match its weights
        quick_gelu = bool(open_clip.get_pretrained_cfg(arch, default_tag).get("quick_gelu", False))
    kwargs = dict(force_quick_gelu=quick_gelu, device=device, weights_only=weights_only, cache_dir=cache_dir)
    if size != native_size:
        kwargs["force_image_size"] = size  # open_clip interpolates the position embeddings on load
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # random init repeats exactly with a seed
        try:
            model = open_clip.create_model(arch, pretrained=source, **kwargs)
        except (RuntimeError, OSError) as err:
            if source is None:
                raise
            if os.path.isfile(source):
                raise MedadError(f"{name}: could not load checkpoint {source}: {err}. An OpenAI TorchScript .pt file "
                                 f"needs weights_only=False (only for files you trust).") from err
            raise WeightsNotFound(f"{name}: open_clip could not get weights {source!r}: {err}") from err
    model.eval()
    if source is None:
        warn_random(name, "pretrained=None was asked for")
    backbone = OpenCLIPBackbone(model, name=name, arch=arch, image_size=size, levels=levels, weights_source=sentence,
                                pretrained=source is not None, description=description, resize=resize)
    backbone.apply_input_protocol(protocol)
    return backbone
