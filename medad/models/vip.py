r"""ViP: visual-symptom prompts with a Context Prompt and a Merge Prompt (Fang et al., MICCAI 2024).

Every class :math:`c` has :math:`K_c` visual symptoms (short texts,
:mod:`medad.symptoms`). The image encoder and the text encoder :math:`E_t`
stay frozen; the image feature :math:`f` of each image is computed once
(:mod:`medad.features_cache`). What is learnt:

**Context Prompt (CoP)**, Sec. 2.2: :math:`M = 4` context vectors
:math:`V = [v_1, \dots, v_M]`, :math:`v_m \sim \mathcal N(0, 0.02^2)`, shared by
all classes and symptoms, inserted between the start token and the
symptom's word embeddings :math:`w_{c,k}` ("X X X X <symptom>."):

.. math::  t_{c,k} = E_t([\mathrm{SOS}, v_1, \dots, v_M, w_{c,k}, \mathrm{EOS}])

**Merge Prompt (MeP)**, Sec. 2.3: one learnable token :math:`g_c \sim \mathcal N(0, 0.02^2)`
per class is the query of an attention over that class's symptom features
:math:`T_c = [t_{c,1}; \dots; t_{c,K_c}]`, with bias-free projections
:math:`W_q, W_k` (Xavier init, shared by the classes) and no value projection:

.. math::  s_c = g_c + \mathrm{softmax}\!\left(\frac{(g_c W_q)(T_c W_k)^\top}{\sqrt d}\right) T_c

**Logits**, Eq. 3: :math:`\ell_c = \tau \cos(f, s_c)` with CLIP's logit scale
:math:`\tau`; loss: cross-entropy. Training (the official code): SGD, lr
0.002, cosine schedule, one warm-up epoch at 1e-5, batch 32, 50 epochs,
checkpoint chosen on validation (:func:`medad.train.vip_experiment.train_prompts`).

The same class also builds the baselines and ablations the paper compares:
zero-shot with class names or with symptoms (``context=0``), the mean or the
max over symptoms instead of MeP (``aggregate="mean" | "max"``), CoOp
(context + class name; Zhou et al., IJCV 2022) and KgCoOp (CoOp plus
:math:`\lambda \lVert \hat w_c - w_c^{\text{hand}} \rVert^2` pulling the learnt class
text features towards the hand-written prompt's; Yao et al., CVPR 2023).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from medad.errors import ConfigError

AGGREGATES = ("merge", "mean", "max")


class ContextPrompt(nn.Module):
    """M learnable context vectors of the text encoder's token width, N(0, 0.02^2)."""

    def __init__(self, width: int, m: int = 4):
        super().__init__()
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

    texts:      per class, its texts (symptoms, or a single class-name prompt)
    context:    M context vectors (0 = none: the text features are fixed)
    aggregate:  how a class's text features become one score: "merge" (MeP), "mean" or "max"
    hand_texts: per class, one hand-written prompt; with ``kg_weight > 0`` KgCoOp's regulariser pulls the
                learnt class text features towards its features
    """

    def __init__(self, backbone, texts: Sequence[Sequence[str]], *, context: int = 4, aggregate: str = "merge",
                 hand_texts: Sequence[str] | None = None, kg_weight: float = 0.0):
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
        self.tokens = backbone.tokenize([s for t in texts for s in t])
        self.aggregate = aggregate
        self.context = ContextPrompt(backbone.text_width, context) if context else None
        self.merge = MergePrompt(self.n_classes, backbone.embed_dim) if aggregate == "merge" else None
        self.kg_weight = float(kg_weight)
        self.logit_scale = float(backbone.logit_scale)
        self._fixed: torch.Tensor | None = None
        self._hand: torch.Tensor | None = None
        if kg_weight:
            with torch.no_grad():
                self._hand = F.normalize(backbone.encode_text(list(hand_texts)), dim=-1)

    @property
    def backbone(self):
        return self._backbone[0]

    def text_features(self) -> torch.Tensor:
        """(total texts, d) features of all texts, classes one after another."""
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
        """KgCoOp's term: mean over classes of ||normalised learnt class feature - hand-written one||^2 (0 when off)."""
        if not self.kg_weight:
            return feats.new_zeros(())
        learnt = F.normalize(torch.stack([F.normalize(t, dim=-1).mean(0) for t in self.split(feats)]), dim=-1)
        return self.kg_weight * ((learnt - self._hand) ** 2).sum(-1).mean()

    def loss(self, image_features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        feats = self.text_features()
        return F.cross_entropy(self.logits_from(image_features, feats), labels) + self.regulariser(feats)

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
