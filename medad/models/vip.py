r"""ViP: visual-symptom prompts with a Context Prompt and a Merge Prompt (Fang et al., MICCAI 2024).

Every class :math:`c` has :math:`K_c` visual symptoms (short texts,
:mod:`medad.symptoms`). The image encoder and the text encoder :math:`E_t`
stay frozen; the image feature :math:`f` of each image is computed once
(:mod:`medad.features_cache`). What is learnt:

**Context Prompt (CoP)**, Sec. 2.2: :math:`M = 4` context vectors
:math:`V = [v_1, \dots, v_M]`, :math:`v_m \sim \mathcal N(0, 0.02^2)`, shared by
all classes and symptoms, inserted between the start token and the
symptom's word embeddings :math:`w_{c,k}`; every text ends with a period, as
the official prompt "X X X X <symptom>." does (``trainers/ViP.py``,
``PromptLearner.__init__``, xiaofang007/ViP; see :func:`prompt_text`):

.. math::  t_{c,k} = E_t([\mathrm{SOS}, v_1, \dots, v_M, w_{c,k}, ".", \mathrm{EOS}])

**Merge Prompt (MeP)**, Sec. 2.3: one learnable token :math:`g_c \sim \mathcal N(0, 0.02^2)`
per class is the query of an attention over that class's symptom features
:math:`T_c = [t_{c,1}; \dots; t_{c,K_c}]`, with bias-free projections
:math:`W_q, W_k` (Xavier init, shared by the classes) and no value projection:

.. math::  s_c = g_c + \mathrm{softmax}\!\left(\frac{(g_c W_q)(T_c W_k)^\top}{\sqrt d}\right) T_c

**Logits**, Eq. 3: :math:`\ell_c = \tau \cos(f, s_c)` with CLIP's logit scale
:math:`\tau`; loss: cross-entropy. The official training settings per CLIP
backbone are in :data:`OFFICIAL_CLIP_SETTINGS`, the learning-rate rule in
:func:`medad.experiment.schedules.dassl_warmup_cosine`.

The same class also builds the baselines and ablations the paper compares:
zero-shot with class names or with symptoms (``context=0``), the mean or the
max over symptoms instead of MeP (``aggregate="mean" | "max"``), CoOp
(context + "<class name>."; Zhou et al., IJCV 2022) and KgCoOp (CoOp with the
context initialised from "a photo of a" and the term
:math:`w\,(1 - \frac1C \sum_c \cos(\hat w_c, w_c^{\text{hand}}))` pulling the
learnt class text features towards a hand-written prompt's; Yao et al., CVPR
2023, :func:`kgcoop_term`). How the ViP repository runs each method is in
:data:`OFFICIAL_METHOD_SETTINGS`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from medad.errors import ConfigError

AGGREGATES = ("merge", "mean", "max")
PROMPT_END = "."

# How the official code runs each method (read at xiaofang007/ViP ea4532c unless said otherwise).
# context: M context vectors; context_init: phrase whose token embeddings start the context (None: N(0, 0.02^2));
# kg_weight: KgCoOp's w; lr: None = the backbone's ViP learning rate (OFFICIAL_CLIP_SETTINGS).
OFFICIAL_METHOD_SETTINGS: dict[str, dict] = {
    "vip": {"context": 4, "context_init": None, "aggregate": "merge", "kg_weight": 0.0, "lr": None,
            "source": "scripts/ViP/main_*.sh (NCTX=4), trainers/ViP.py (random N(0, 0.02) context, '<symptom>.')"},
    "coop": {"context": 4, "context_init": None, "aggregate": "mean", "kg_weight": 0.0, "lr": 0.001,
             "source": "scripts/CoOp/main_derm.sh (NCTX=4, CSC=False, CTP=end, configs rn50x64/vit_b16/vit_L14_336_ep50), "
                       "trainers/coop.py ('X X X X <name>.'); lr 0.001 as issue 21 reports from the ViP repository's "
                       "CoOp configs, which this project's index does not hold (configs/trainers/CoOp/ is absent at "
                       "c2440e2); the repository's other baseline configs that it holds (CoCoOp rn50x64_ep50 and "
                       "vit_L14_336_ep50, VPT vit_b16_ep50) all set OPTIM.LR 0.001 (upstream KaiyangZhou/CoOp "
                       "vit_b16_ep50.yaml has 0.002)"},
    "kgcoop": {"context": 4, "context_init": "a photo of a", "aggregate": "mean", "kg_weight": 8.0, "lr": None,
               "hand_template": "a photo of a {name}.",
               "source": "htyao89/KgCoOp: trainers/kgcoop.py (context from 'a photo of a' when CTX_INIT is set, "
                         "term 1 - mean cos, hand prompts 'a photo of a {}.' for ImageNet-like datasets), "
                         "configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml (CTX_INIT: True), "
                         "scripts/base2new_train.sh (WEIGHT=8.0). The ViP repository holds no KgCoOp trainer."},
}

# ViP's per-backbone training settings (configs/trainers/ViP/<cfg>.yaml, run by scripts/ViP/main_*.sh), keyed by
# medad backbone name; image_size is the input size the config asserts equals CLIP's own resolution.
# Shared by all three: SGD, 50 epochs, cosine, 1 warm-up epoch at a constant 1e-5, random_resized_crop + flip.
OFFICIAL_CLIP_SETTINGS: dict[str, dict] = {
    "clip-rn50x64": {"batch_size": 8, "lr": 0.001, "image_size": 448, "config": "configs/trainers/ViP/rn50x64_ep50.yaml"},
    "clip-vit-l-14-336-native": {"batch_size": 16, "lr": 0.002, "image_size": 336,
                                 "config": "configs/trainers/ViP/vit_L14_336_ep50.yaml"},
    "clip-vit-b-16": {"batch_size": 32, "lr": 0.002, "image_size": 224, "config": "configs/trainers/ViP/vit_b16_ep50.yaml"},
}
OFFICIAL_SCHEDULE = {"epochs": 50, "warmup_epochs": 1, "warmup_lr": 1e-5, "optimizer": "sgd",
                     "scheduler": "cosine", "augmentation": ("random_resized_crop", "random_flip")}


def text_backbones() -> list[str]:
    """Registered backbones with a text encoder: the ones a prompt learner can use (the schema's choices)."""
    from medad.backbones import list_backbones

    return list_backbones(text=True)


def prompt_text(text: str) -> str:
    """``text`` as the official prompt builders tokenise it: ending with one period.

    ViP's ``PromptLearner`` builds ``prefix + " " + symptom + "."`` and CoOp's ``prefix + " " + name + "."``;
    a text that already ends with a period keeps just that one.
    """
    text = text.strip()
    return text if text.endswith(PROMPT_END) else text + PROMPT_END


def kgcoop_term(learnt: torch.Tensor, hand: torch.Tensor, weight: float) -> torch.Tensor:
    """KgCoOp's regulariser: ``weight * (1 - mean over classes of cos(learnt_c, hand_c))``.

    learnt, hand: (C, d) class text features (normalised inside). htyao89/KgCoOp ``trainers/kgcoop.py``
    computes ``1 - mean(CosineSimilarity(dim=1, eps=1e-7)(learnt, hand))`` in ``CustomCLIP.forward`` and adds
    it times ``TRAINER.COOP.W`` (8.0 in its scripts) to the cross-entropy.
    """
    if learnt.shape != hand.shape or learnt.ndim != 2:
        raise ConfigError(f"KgCoOp needs learnt and hand-written class features of one shape (C, d), got "
                          f"{tuple(learnt.shape)} and {tuple(hand.shape)}")
    cos = F.cosine_similarity(F.normalize(learnt, dim=-1), F.normalize(hand, dim=-1), dim=1, eps=1e-7)
    return weight * (1.0 - cos.mean())


def phrase_embeddings(backbone, phrase: str) -> torch.Tensor:
    """(n_tokens, text_width) word embeddings of ``phrase``, start and end tokens left out (CoOp's ``ctx_init``).

    CoOp and KgCoOp take as many positions as the phrase has space-separated words; that is the same thing
    whenever every word is one token, as each word of "a photo of a" is for CLIP's and for MiniLM's vocabulary.
    """
    if not isinstance(phrase, str) or not phrase.strip():
        raise ConfigError(f"context_init must be a non-empty phrase, got {phrase!r}")
    tokens = backbone.tokenize([phrase.strip()])
    n = int(tokens.mask[0].sum()) - 2  # real positions minus the start and end tokens
    if n < 1:
        raise ConfigError(f"context_init {phrase!r} has no tokens between the start and end tokens")
    with torch.no_grad():
        return backbone.token_embeddings(tokens)[0, 1:1 + n].detach().clone().float()


class ContextPrompt(nn.Module):
    """M learnable context vectors of the text encoder's token width: N(0, 0.02^2), or given start values."""

    def __init__(self, width: int, m: int = 4, init: torch.Tensor | None = None):
        super().__init__()
        if init is not None:
            if init.ndim != 2 or init.shape[1] != width:
                raise ConfigError(f"context start values must be (M, {width}), got {tuple(init.shape)}")
            self.vectors = nn.Parameter(init.clone())
            return
        if m < 1:
            raise ConfigError(f"the Context Prompt needs at least one vector, got M={m}")
        self.vectors = nn.Parameter(torch.randn(m, width) * 0.02)


class MergePrompt(nn.Module):
    """s_c = g_c + softmax((g_c W_q)(T_c W_k)^T / sqrt(d)) T_c, one query token g_c per class."""

    def __init__(self, n_classes: int, dim: int):
        super().__init__()
        self.dim = dim
        self.tokens = nn.Parameter(torch.randn(n_classes, dim) * 0.02)
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_normal_(self.q.weight)
        nn.init.xavier_normal_(self.k.weight)

    def forward(self, per_class: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Symptom features (K_c, d) per class -> class representations (C, d) and attention weights (K_c,) per class."""
        reps, weights = [], []
        for c, t in enumerate(per_class):
            g = self.tokens[c]
            attn = torch.softmax(self.k(t) @ self.q(g) / self.dim ** 0.5, dim=0)
            reps.append(g + attn @ t)
            weights.append(attn)
        return torch.stack(reps), weights


class PromptClassifier(nn.Module):
    """Classifies cached image features by their similarity to learnt (or fixed) class text representations.

    texts:        per class, its texts (symptoms, or a single class name); each is tokenised as
                  :func:`prompt_text` makes it, with a final period
    context:      M context vectors (0 = none: the text features are fixed)
    context_init: a phrase (KgCoOp: "a photo of a") whose token embeddings are the context's start values;
                  ``context`` must equal its number of tokens (CoOp's ``ctx_init`` sets M so)
    aggregate:    how a class's text features become one score: "merge" (MeP), "mean" or "max"
    hand_texts:   per class, one hand-written prompt (tokenised with a final period too); with
                  ``kg_weight > 0`` :func:`kgcoop_term` pulls the learnt class text features towards its features
    kg_weight:    KgCoOp's weight w (the official scripts: 8.0)
    """

    def __init__(self, backbone, texts: Sequence[Sequence[str]], *, context: int = 4, aggregate: str = "merge",
                 hand_texts: Sequence[str] | None = None, kg_weight: float = 0.0, context_init: str | None = None):
        super().__init__()
        if aggregate not in AGGREGATES:
            raise ConfigError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
        if not texts or any(len(t) == 0 for t in texts):
            raise ConfigError("every class needs at least one text")
        if kg_weight and (hand_texts is None or len(hand_texts) != len(texts)):
            raise ConfigError("kg_weight > 0 needs one hand-written prompt per class (hand_texts)")
        self._backbone = [backbone]  # a plain reference: the frozen encoder is not part of this model's state
        self.n_classes = len(texts)
        self.texts = [list(t) for t in texts]
        self.bounds = torch.tensor([0] + [len(t) for t in texts]).cumsum(0).tolist()
        self.prompts = [prompt_text(s) for t in texts for s in t]
        self.tokens = backbone.tokenize(self.prompts)
        self.aggregate = aggregate
        init = None
        if context_init is not None:
            init = phrase_embeddings(backbone, context_init)
            if context != len(init):
                raise ConfigError(f"context={context} but context_init {context_init!r} has {len(init)} tokens; "
                                  f"pass context={len(init)}")
        self.context = ContextPrompt(backbone.text_width, context, init) if context else None
        self.merge = MergePrompt(self.n_classes, backbone.embed_dim) if aggregate == "merge" else None
        self.kg_weight = float(kg_weight)
        self.logit_scale = float(backbone.logit_scale)
        self._fixed: torch.Tensor | None = None
        self._hand: torch.Tensor | None = None
        if kg_weight:
            with torch.no_grad():
                self._hand = F.normalize(backbone.encode_text([prompt_text(h) for h in hand_texts]), dim=-1)

    @property
    def backbone(self):
        return self._backbone[0]

    def text_features(self) -> torch.Tensor:
        """(total texts, d) features of all texts, classes one after another."""
        if self.tokens.ids.device != self.backbone.device:  # the tokens follow the (frozen) encoder's device
            self.tokens = self.tokens.to(self.backbone.device)
        if self.context is not None:
            return self.backbone.encode_text_with_context(self.tokens, self.context.vectors)
        if self._fixed is None:
            with torch.no_grad():
                self._fixed = self.backbone.encode_text(self.tokens)
        return self._fixed

    def split(self, feats: torch.Tensor) -> list[torch.Tensor]:
        return [feats[a:b] for a, b in zip(self.bounds[:-1], self.bounds[1:])]

    def class_representations(self, feats: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """(C, d) class representations s_c and MeP's attention weights (None unless aggregate == "merge")."""
        per_class = self.split(self.text_features() if feats is None else feats)
        if self.merge is not None:
            return self.merge(per_class)
        return torch.stack([F.normalize(t, dim=-1).mean(0) for t in per_class]), None

    def logits_from(self, image_features: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        f = F.normalize(image_features, dim=-1)
        if self.aggregate == "max":
            sims = f @ F.normalize(feats, dim=-1).T
            return self.logit_scale * torch.stack([s.max(dim=0).values for s in self.split(sims.T)], dim=1)
        reps, _ = self.class_representations(feats)
        return self.logit_scale * f @ F.normalize(reps, dim=-1).T

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """Eq. 3: logits (B, C) = logit_scale * cos(f, s_c)."""
        return self.logits_from(image_features, self.text_features())

    def regulariser(self, feats: torch.Tensor) -> torch.Tensor:
        """KgCoOp's term (:func:`kgcoop_term`) on the learnt class text features; 0 when ``kg_weight`` is 0.

        A class with several texts contributes the mean of their normalised features (KgCoOp has one per class).
        """
        if not self.kg_weight:
            return feats.new_zeros(())
        learnt = torch.stack([F.normalize(t, dim=-1).mean(0) for t in self.split(feats)])
        return kgcoop_term(learnt, self._hand, self.kg_weight)

    def loss_terms(self, image_features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"loss": ce + kg, "ce": cross-entropy of Eq. 3's logits, "kg": KgCoOp's term (0 without it)}``.

        Both terms are computed in float32 (``.float()``), also under bf16 autocast.
        """
        feats = self.text_features()
        ce = F.cross_entropy(self.logits_from(image_features, feats).float(), labels)
        kg = self.regulariser(feats).float()
        return {"loss": ce + kg, "ce": ce, "kg": kg}

    def loss(self, image_features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss_terms(image_features, labels)["loss"]

    @torch.no_grad()
    def predict_logits(self, image_features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        feats = self.text_features()  # once for all batches
        return torch.cat([self.logits_from(image_features[i:i + batch_size], feats)
                          for i in range(0, len(image_features), batch_size)])

    @torch.no_grad()
    def symptom_similarities(self, image_features: torch.Tensor) -> torch.Tensor:
        """Cosine of each image with each (context-prompted) symptom text: (B, total texts)."""
        return F.normalize(image_features, dim=-1) @ F.normalize(self.text_features(), dim=-1).T

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
