"""The ViP chapter's methods and their training task on the shared loop (:func:`medad.experiment.loop.fit`).

**Methods** (:data:`METHODS`): every classifier the chapter compares is a
:class:`medad.models.vip.PromptClassifier` built by :func:`build_classifier`; how
the ViP repository runs ViP, CoOp and KgCoOp (context vectors, their start
values, KgCoOp's weight, a method's own learning rate) comes from
:data:`medad.models.vip.OFFICIAL_METHOD_SETTINGS`, never from numbers written here.
:data:`SETTINGS` groups them into the chapter's comparisons (the ``settings``
parameter's choices).

**Training** (:class:`PromptTask`), as Dassl trains ViP and CoOp
(``configs/trainers/ViP/*.yaml``, ``dassl/engine/trainer.py``):

- SGD with momentum 0.9 and weight decay 5e-4 on the prompts only (both encoders are frozen, so the
  image features come from :mod:`medad.features_cache`);
- every epoch is one pass over a fresh permutation of the training images in batches of
  ``batch_size``, the last partial batch dropped (:func:`medad.experiment.schedules.epoch_batches`);
- the learning rate of epoch ``e`` is :func:`medad.experiment.schedules.dassl_warmup_cosine`;
- augmentation: each step reads one of the ``views`` cached augmented views of every image of its
  batch (:meth:`medad.features_cache.CachedViews.draw`, a finite sample of Dassl's
  ``random_resized_crop`` + ``random_flip``); ``views = 0`` trains on the centre crop only;
- validation accuracy on the validation split after every epoch; the weights of the best epoch
  (the earliest among ties) are the ones tested, as ViP's ``best_val`` selection does.

The loop owns precision (fp32 | bf16 autocast; the loss terms are float32), checkpoints, exact
resumption and the refusal of a resume under other settings (:meth:`PromptTask.settings`).
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import torch

from medad.errors import ConfigError
from medad.experiment.checkpoint import fingerprint
from medad.experiment.loop import FitResult, LoopSettings, Task, fit
from medad.experiment.schedules import dassl_warmup_cosine, epoch_batches, steps_per_epoch
from medad.features_cache import CachedFeatures, CachedViews
from medad.metrics.classification import accuracy, macro_f1
from medad.models.vip import OFFICIAL_CLIP_SETTINGS, OFFICIAL_METHOD_SETTINGS, PromptClassifier
from medad.symptoms import SymptomSet

NAME_TEMPLATE = "a {modality} image of {name}"  # the zero-shot prompt with a class name


@dataclass(frozen=True)
class Method:
    """How one compared method builds its classifier and trains.

    texts:    "names" (class names), "symptoms", or "symptoms:<kind>" (one class's symptoms replaced,
              :meth:`medad.symptoms.SymptomSet.with_replaced`)
    official: the :data:`~medad.models.vip.OFFICIAL_METHOD_SETTINGS` entry it follows (context vectors,
              their start values, KgCoOp's weight, its own learning rate); None: fixed texts, nothing learnt
    context:  False leaves the Context Prompt out (the Merge Prompt alone)
    aggregate: None = the official entry's ("merge" for ViP, "mean" for CoOp/KgCoOp)
    augment:  False trains on the centre crop even when the profile caches augmented views
    """

    key: str
    title: str
    texts: str = "symptoms"
    official: str | None = "vip"
    context: bool = True
    aggregate: str | None = None
    trained: bool = True
    probe: bool = False
    augment: bool = True


METHODS = {m.key: m for m in (
    Method("zs_names", "zero-shot, class names", texts="names", official=None, context=False, aggregate="mean", trained=False),
    Method("zs_symptoms", "zero-shot, symptoms (mean)", official=None, context=False, aggregate="mean", trained=False),
    Method("linear_probe", "linear probe", texts="names", official=None, context=False, trained=False, probe=True),
    Method("coop", "CoOp (4 context + class name)", texts="names", official="coop"),
    Method("kgcoop", "KgCoOp (4 context from 'a photo of a' + class name, w=8)", texts="names", official="kgcoop"),
    Method("vip", "ViP (CoP + MeP)"),
    Method("vip_centre_crop", "ViP, centre crop only (no augmentation)", augment=False),
    Method("cop", "+ CoP (mean over symptoms)", aggregate="mean"),
    Method("mep", "+ MeP (no context)", context=False),
    Method("cop_max", "CoP + max over symptoms", aggregate="max"),
    Method("vip_out_of_domain", "ViP, symptoms replaced: out-of-domain", texts="symptoms:out_of_domain"),
    Method("vip_non_diagnostic", "ViP, symptoms replaced: non-diagnostic", texts="symptoms:non_diagnostic"),
    Method("vip_antonym", "ViP, symptoms replaced: antonym-swapped", texts="symptoms:antonym"),
)}
# The chapter's comparisons (the ``settings`` parameter's choices): which methods each one shows.
SETTINGS = {
    "main": ("zs_names", "zs_symptoms", "linear_probe", "coop", "kgcoop", "vip"),
    "augmentation": ("vip", "vip_centre_crop"),
    "ablation": ("zs_symptoms", "cop", "mep", "vip"),
    "aggregation": ("cop", "cop_max", "vip"),
    "knowledge": ("vip", "vip_out_of_domain", "vip_non_diagnostic", "vip_antonym"),
}


def methods_for(settings) -> list[str]:
    """The methods the chosen settings need, each once, in :data:`METHODS` order."""
    return [k for k in METHODS if any(k in SETTINGS[s] for s in settings)]


# ----------------------------------------------------------------------------- building


def class_prompts(symptoms: SymptomSet, modality: str) -> list[str]:
    return [NAME_TEMPLATE.format(modality=modality, name=n) for n in symptoms.class_names()]


def classifier_options(method: Method, n_ctx: int) -> dict:
    """Context vectors, their start phrase, aggregation and KgCoOp weight of ``method`` (ViP's M is ``n_ctx``)."""
    official = OFFICIAL_METHOD_SETTINGS[method.official] if method.official else {}
    context = 0
    if method.context and official:
        context = n_ctx if method.official == "vip" else int(official["context"])
    return {"context": context, "context_init": official.get("context_init") if context else None,
            "aggregate": method.aggregate or official.get("aggregate", "mean"),
            "kg_weight": float(official.get("kg_weight", 0.0)), "hand_template": official.get("hand_template")}


def build_classifier(method: Method, backbone, symptoms: SymptomSet, modality: str, n_ctx: int = 4) -> PromptClassifier:
    """The method's classifier on ``backbone`` (its random start values drawn from torch's global generator)."""
    opts = classifier_options(method, n_ctx)
    if method.texts == "names":
        texts = [[n] for n in symptoms.class_names()] if opts["context"] else [[h] for h in class_prompts(symptoms, modality)]
    else:
        source = symptoms.with_replaced(method.texts.split(":", 1)[1]) if ":" in method.texts else symptoms
        texts = source.per_class()
    hand = [opts["hand_template"].format(name=n) for n in symptoms.class_names()] if opts["kg_weight"] else None
    return PromptClassifier(backbone, texts, context=opts["context"], aggregate=opts["aggregate"],
                            context_init=opts["context_init"], hand_texts=hand, kg_weight=opts["kg_weight"])


def uses_official_clip_settings(backbone_name: str, cfg) -> bool:
    return bool(cfg["official_clip_settings"]) and backbone_name in OFFICIAL_CLIP_SETTINGS


def batch_size_for(backbone_name: str, cfg) -> int:
    """ViP's batch size for a CLIP backbone (configs/trainers/ViP/<backbone>.yaml), else the profile's;
    at most ``batch_cap`` (a rehearsal's cap) when one is set."""
    size = int(OFFICIAL_CLIP_SETTINGS[backbone_name]["batch_size"]) if uses_official_clip_settings(backbone_name, cfg) \
        else int(cfg["batch_size"])
    return min(size, int(cfg["batch_cap"])) if cfg["batch_cap"] else size


def lr_for(method: Method, backbone_name: str, cfg) -> float:
    """A method's own official rate (CoOp in the ViP repository: 0.001), else ViP's rate for the backbone, else ``lr``."""
    own = OFFICIAL_METHOD_SETTINGS[method.official]["lr"] if method.official else None
    if own is not None:
        return float(own)
    if uses_official_clip_settings(backbone_name, cfg):
        return float(OFFICIAL_CLIP_SETTINGS[backbone_name]["lr"])
    return float(cfg["lr"])


# ----------------------------------------------------------------------------- training


@dataclass
class TrainSettings:
    """Dassl's optimisation of a prompt learner (the defaults: ViP's ``vit_b16_ep50.yaml``)."""

    epochs: int = 50
    batch_size: int = 32
    lr: float = 0.002
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 1
    device: str = "cpu"
    precision: str = "fp32"

    def loop(self, steps_per_epoch: int) -> LoopSettings:
        return LoopSettings(steps=self.epochs * steps_per_epoch, seed=self.seed, device=self.device,
                            precision=self.precision, validate_every=0, checkpoint_every=0, log_every=0,
                            select="val_accuracy", mode="max")


class PromptTask(Task):
    """One prompt learner on cached features: ``train`` (centre crops) or ``train`` views (augmented), ``val`` centre crops."""

    def __init__(self, model: PromptClassifier, train: CachedFeatures, val: CachedFeatures, settings: TrainSettings,
                 name: str = "train", method: str = ""):
        if len(val) == 0:
            raise ConfigError(f"{name}: the validation split is empty; the best epoch is chosen on it")
        self.model, self.train, self.val, self.s, self.name, self.method = model, train, val, settings, name, method
        self.labels = torch.as_tensor(train.labels, dtype=torch.long)
        self.val_labels = np.asarray(val.labels)
        self.spe = steps_per_epoch(len(train), settings.batch_size, drop_last=True)
        self.views = torch.Generator().manual_seed(settings.seed)  # which cached view each image shows at each step

    def optimizers(self):
        return [torch.optim.SGD(self.model.trainable(), lr=self.s.lr, momentum=self.s.momentum,
                                weight_decay=self.s.weight_decay)]

    def steps_per_epoch(self) -> int:
        return self.spe

    def epoch_batches(self, epoch: int, rng: np.random.Generator) -> list:
        order = torch.from_numpy(rng.permutation(len(self.train)))
        return [b.numpy() for b in epoch_batches(order, self.s.batch_size, drop_last=True)]

    def loss(self, batch, rng) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(batch, dtype=torch.long)
        if isinstance(self.train, CachedViews):
            features = self.train.draw(index, self.views)
        else:
            features = self.train.features[index]
        return self.model.loss_terms(features.to(self.device), self.labels[index].to(self.device))

    def lr(self, step: int, total_steps: int) -> float:
        epochs = max(1, total_steps // self.spe)
        return dassl_warmup_cosine(min(step // self.spe, epochs - 1), self.s.lr, epochs, self.s.warmup_epochs,
                                   self.s.warmup_lr)

    def validate(self) -> dict:
        pred = predict(self.model, self.val.features)
        return {"val_accuracy": accuracy(self.val_labels, pred)}

    def settings(self) -> dict:
        schedule = {k: v for k, v in asdict(self.s).items() if k not in ("device",)}
        prompts = hashlib.sha256("\n".join(self.model.prompts).encode()).hexdigest()[:16]
        return {"method": self.method, "prompts": prompts, "context": self.model.context is not None and
                int(self.model.context.vectors.shape[0]), "aggregate": self.model.aggregate,
                "kg_weight": self.model.kg_weight, "schedule": schedule,
                "views": self.train.n_views if isinstance(self.train, CachedViews) else 0,
                "train": fingerprint(self.train.features, self.train.labels), "val": fingerprint(self.val.features)}

    def generators(self) -> dict:
        return {"views": self.views}


@torch.no_grad()
def predict(model: PromptClassifier, features: torch.Tensor) -> np.ndarray:
    """Class predictions (float32 logits) of cached features, on the model's encoder's device."""
    return model.predict_logits(features.to(model.backbone.device)).float().argmax(1).cpu().numpy()


def evaluate(model: PromptClassifier, features: torch.Tensor, labels: np.ndarray) -> dict:
    pred = predict(model, features)
    return {"accuracy": accuracy(labels, pred), "macro_f1": macro_f1(labels, pred, model.n_classes), "pred": pred}


def train_method(model: PromptClassifier, train: CachedFeatures, val: CachedFeatures, settings: TrainSettings,
                 checkpoint=None, progress: bool = True, name: str = "train", method: str = "") -> FitResult:
    """Train ``model``'s prompts with :class:`PromptTask`; returns the fit with the best validation epoch's weights."""
    task = PromptTask(model, train, val, settings, name, method)
    return fit(task, settings.loop(task.steps_per_epoch()), checkpoint=checkpoint, progress=progress)


def linear_probe(train: CachedFeatures, val: CachedFeatures, test: CachedFeatures, grid=(0.01, 0.1, 1.0, 10.0, 100.0)) -> dict:
    """Logistic regression on L2-normalised centre-crop features, C chosen on validation accuracy (CoOp's linear probe)."""
    from sklearn.linear_model import LogisticRegression

    def unit(x):
        x = x.numpy().astype(np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    xt, xv, xs = unit(train.features), unit(val.features), unit(test.features)
    best = None
    for c in grid:
        clf = LogisticRegression(C=c, max_iter=2000).fit(xt, train.labels)
        acc = float((clf.predict(xv) == val.labels).mean())
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    return {"pred": best[2].predict(xs), "best_val": best[0], "C": best[1]}


def merge_attention(model: PromptClassifier, symptoms: SymptomSet) -> list[dict]:
    """MeP's attention weight of every symptom of every class (long format); [] without a Merge Prompt."""
    with torch.no_grad():
        _, weights = model.class_representations()
    rows = []
    for c, w in zip(symptoms.classes, weights or []):
        for text, value in zip(symptoms.symptoms[c], w.float().cpu().tolist()):
            rows.append({"class": c, "symptom": text, "weight": float(value)})
    return rows
