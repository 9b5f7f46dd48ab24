"""Checks that a backbone's weights are what they claim, on the real pictures of :mod:`.photos`.

- :func:`imagenet_top`: the ImageNet classes a classifier backbone sees in each picture
  (a wrong weight mapping gives nonsense here, with near-uniform probabilities);
- :func:`caption_matching`: zero-shot, each picture against eight captions (its own
  among them) by cosine between image and text embeddings.
"""
from __future__ import annotations

import torch

from medad.backbones import photos as photo_mod


@torch.no_grad()
def imagenet_top(backbone, pictures=None, k: int = 3) -> list[dict]:
    """Top-``k`` ImageNet classes and probabilities per picture (backbones with ``classify``)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    pictures = list(pictures or photo_mod.photos())
    x = backbone.preprocess_batch([p.load() for p in pictures])
    prob = backbone.classify(x).softmax(-1)
    rows = []
    for p, pr in zip(pictures, prob):
        val, idx = pr.topk(k)
        rows.append({"picture": p.name, "expected": p.imagenet,
                     "top": [(info.index_to_description(int(i)).split(",")[0], float(v)) for v, i in zip(val, idx)]})
    return rows


@torch.no_grad()
def caption_matching(backbone, pictures=None, captions=None) -> dict:
    """Cosine of every picture with every caption; which caption each picture picks.

    Returns {"pictures", "captions", "similarity" (P x C list), "picked", "correct" (list of bool),
    "n_correct", "n"} where a picture's own caption is ``picture.caption``.
    """
    pictures = list(pictures or photo_mod.photos())
    captions = list(captions or photo_mod.captions())
    img = backbone.encode_image(backbone.preprocess_batch([p.load() for p in pictures]), levels=()).embedding
    txt = backbone.encode_text(captions)
    sim = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    picked = [captions[int(i)] for i in sim.argmax(1)]
    correct = [pk == p.caption for pk, p in zip(picked, pictures)]
    return {"pictures": [p.name for p in pictures], "captions": captions, "similarity": sim.tolist(),
            "picked": picked, "correct": correct, "n_correct": int(sum(correct)), "n": len(pictures)}
