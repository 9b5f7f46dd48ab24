"""Visual symptoms: per dataset, a few short descriptions of what each class looks like.

ViP (Fang et al., MICCAI 2024, Sec. 2.1) replaces class names by *visual
symptoms*, descriptions a vision-language model can match (colour, shape,
texture, presence or absence of structures). Here they live in small,
versioned YAML files, ``data/symptoms/<dataset>.yml``, written for this project
from the cited medical literature::

    dataset: chest_xray
    version: 1
    references: [bibtex keys]
    classes:
      NORMAL:    {name: normal chest, references: [...], symptoms: [text, ...]}
      PNEUMONIA: {name: pneumonia, ...}
    ablations:            # optional: the paper's Figure 5, one class's symptoms replaced
      class: PNEUMONIA
      out_of_domain: [...]; non_diagnostic: [...]; antonym: [...]

:func:`load_symptoms` checks a file against the dataset's classes: a class the
dataset does not have, a missing class, or an empty class is a
:class:`~medad.errors.ConfigError` naming the file.

The Visual Symptom Generator (ViP's two-stage procedure) is pluggable:
:func:`generate_symptoms` asks any OpenAI-compatible chat endpoint, configured
by the environment (``MEDAD_LLM_BASE_URL``, ``MEDAD_LLM_MODEL``, optionally
``MEDAD_LLM_API_KEY``), first a text-only question per class and modality,
then an image-grounded one on a 4x4 grid of 16 training images of the class,
and keeps the descriptions both answers share. It writes a file of the same
format with its provenance (model, prompts, date). Without an endpoint it says
so, and the chapter uses the written files.
"""
from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from medad.errors import ConfigError, MedadError
from medad.paths import DATA_MANIFEST_DIR

SYMPTOM_DIR = DATA_MANIFEST_DIR / "symptoms"
ABLATION_KINDS = ("out_of_domain", "non_diagnostic", "antonym")
ENV_URL, ENV_MODEL, ENV_KEY = "MEDAD_LLM_BASE_URL", "MEDAD_LLM_MODEL", "MEDAD_LLM_API_KEY"


@dataclass
class SymptomSet:
    """The visual symptoms of one dataset, classes in the dataset's order."""

    dataset: str
    classes: tuple[str, ...]
    names: dict[str, str]
    symptoms: dict[str, list[str]]
    references: list[str] = field(default_factory=list)
    ablations: dict = field(default_factory=dict)
    version: int = 1
    source: str = ""
    path: Path | None = None

    def per_class(self) -> list[list[str]]:
        return [list(self.symptoms[c]) for c in self.classes]

    def class_names(self) -> list[str]:
        return [self.names[c] for c in self.classes]

    def with_replaced(self, kind: str) -> "SymptomSet":
        """The paper's Figure 5: the ablation class's symptoms replaced by ``kind`` text (ABLATION_KINDS)."""
        if kind not in ABLATION_KINDS:
            raise ConfigError(f"symptom replacement must be one of {', '.join(ABLATION_KINDS)}, got {kind!r}")
        where = self.path or self.dataset
        if not self.ablations or kind not in self.ablations:
            raise ConfigError(f"{where}: no 'ablations: {kind}' texts in this symptom file")
        target = self.ablations["class"]
        return replace(self, symptoms={**self.symptoms, target: list(self.ablations[kind])}, source=f"{self.source} [{kind}]")


def _texts(value, where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: expected a non-empty list of symptom texts, got {value!r}")
    bad = [v for v in value if not isinstance(v, str) or not v.strip()]
    if bad:
        raise ConfigError(f"{where}: every symptom must be a non-empty string, got {bad[0]!r}")
    return [v.strip() for v in value]


def symptom_path(dataset: str) -> Path:
    return SYMPTOM_DIR / f"{dataset}.yml"


def symptom_datasets() -> list[str]:
    """Registered datasets that have a symptom file in ``data/symptoms/`` (the ViP chapter's ``datasets`` choices)."""
    from medad.data import list_datasets

    return [d for d in list_datasets() if symptom_path(d).is_file()]


def load_symptoms(source: str | os.PathLike, classes: Sequence[str] | None = None) -> SymptomSet:
    """Read and check a symptom file (a dataset name means ``data/symptoms/<name>.yml``).

    classes: the dataset's classes in label order; defaults to the registered dataset's classes.
    """
    path = Path(source)
    if not path.suffix:
        path = symptom_path(str(source))
    if not path.is_file():
        raise ConfigError(f"{path}: symptom file not found (expected data/symptoms/<dataset>.yml or a path to one)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("classes"), dict) or not data.get("dataset"):
        raise ConfigError(f"{path}: expected a mapping with 'dataset' and 'classes' (class -> name, symptoms)")
    dataset = str(data["dataset"])
    if classes is None:
        from medad.data.registry import get_spec

        classes = get_spec(dataset).classes
    classes = tuple(classes)
    given = data["classes"]
    unknown = [c for c in given if c not in classes]
    if unknown:
        raise ConfigError(f"{path}: class(es) {', '.join(map(str, unknown))} not in dataset {dataset!r}; its classes are {', '.join(classes)}")
    missing = [c for c in classes if c not in given]
    if missing:
        raise ConfigError(f"{path}: no symptoms for class(es) {', '.join(missing)} of dataset {dataset!r}")
    names, symptoms = {}, {}
    for c in classes:
        entry = given[c]
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: class {c!r} must map to {{name, symptoms}}, got {entry!r}")
        symptoms[c] = _texts(entry.get("symptoms"), f"{path}: class {c!r}")
        names[c] = str(entry.get("name") or c)
    ablations = data.get("ablations") or {}
    if ablations:
        if ablations.get("class") not in classes:
            raise ConfigError(f"{path}: ablations.class must be one of {', '.join(classes)}, got {ablations.get('class')!r}")
        for kind in ABLATION_KINDS:
            if kind in ablations:
                ablations[kind] = _texts(ablations[kind], f"{path}: ablations.{kind}")
    return SymptomSet(dataset, classes, names, symptoms, list(data.get("references") or []), ablations,
                      int(data.get("version", 1)), str(data.get("source", "")), path)


def write_symptoms(path: str | os.PathLike, symptoms: SymptomSet, provenance: dict | None = None) -> Path:
    """Write a symptom file in the format :func:`load_symptoms` reads, with a ``provenance`` mapping."""
    path = Path(path)
    body = {"dataset": symptoms.dataset, "version": symptoms.version, "source": symptoms.source,
            "references": symptoms.references,
            "classes": {c: {"name": symptoms.names[c], "symptoms": symptoms.symptoms[c]} for c in symptoms.classes}}
    if provenance:
        body["provenance"] = provenance
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body, sort_keys=False, allow_unicode=True))
    return path


# ---- the Visual Symptom Generator: any OpenAI-compatible chat endpoint -------------------------------------


@dataclass(frozen=True)
class LLMEndpoint:
    """Where to send chat requests: ``<base_url>/chat/completions`` with ``model`` (and a bearer key if given)."""

    base_url: str
    model: str
    api_key: str = ""
    timeout: float = 60.0

    @classmethod
    def from_env(cls) -> "LLMEndpoint | None":
        """The endpoint the environment configures, or None when ``MEDAD_LLM_BASE_URL`` is unset."""
        url = os.environ.get(ENV_URL, "").strip()
        if not url:
            return None
        model = os.environ.get(ENV_MODEL, "").strip()
        if not model:
            raise ConfigError(f"{ENV_URL} is set but {ENV_MODEL} is not: name the chat model the endpoint serves")
        return cls(url.rstrip("/"), model, os.environ.get(ENV_KEY, ""))

    def chat(self, content) -> str:
        """One user message (a string, or OpenAI content parts) -> the assistant's text."""
        body = json.dumps({"model": self.model, "temperature": 0,
                           "messages": [{"role": "user", "content": content}]}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = f"{self.base_url}/chat/completions"
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read().decode())
        except urllib.error.HTTPError as exc:
            raise MedadError(f"LLM endpoint {url} answered HTTP {exc.code} ({exc.reason}); check {ENV_URL}, {ENV_MODEL} and {ENV_KEY}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise MedadError(f"LLM endpoint {url} is unreachable ({reason}); set {ENV_URL} to a running "
                             f"OpenAI-compatible server, or unset it to use the written symptom files") from exc
        except json.JSONDecodeError as exc:
            raise MedadError(f"LLM endpoint {url} did not answer JSON ({exc})") from exc
        try:
            return str(reply["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError) as exc:
            raise MedadError(f"LLM endpoint {url}: expected an OpenAI chat completion (choices[0].message.content), got {str(reply)[:200]}") from exc


TEXT_PROMPT = ("List {k} short visual features that a radiologist or dermatologist would see in a {modality} image "
               "of {name}. Describe only what is visible (brightness, colour, shape, texture, presence or absence of "
               "structures), one feature per line, at most 12 words each, no numbering, no explanations.")
IMAGE_PROMPT = ("These 16 {modality} images all show {name}. Below is a list of candidate visual features. Repeat, "
                "word for word and one per line, only the features that you can actually see in these images.\n{candidates}")


def parse_lines(text: str) -> list[str]:
    """One description per line, bullets, numbering and quotes removed, duplicates dropped."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s*", "", line).strip().strip('"').strip().rstrip(".").strip()
        if line and line.lower() not in {o.lower() for o in out}:
            out.append(line)
    return out


def image_grid(images: Sequence[np.ndarray], cells: int = 4, size: int = 128) -> bytes:
    """``cells`` x ``cells`` uint8 images (resized to ``size`` px) as one PNG."""
    from PIL import Image

    from medad.backbones.base import Preprocess

    if len(images) < cells * cells:
        raise ConfigError(f"the image-grounded step needs {cells * cells} images per class, got {len(images)}")
    grid = Image.new("RGB", (cells * size, cells * size))
    for i, im in enumerate(images[: cells * cells]):
        grid.paste(Preprocess.to_pil(im).resize((size, size)), ((i % cells) * size, (i // cells) * size))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue()


def _normalised(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def two_stage(endpoint: LLMEndpoint, name: str, modality: str, images: Sequence[np.ndarray], k: int = 8) -> tuple[list[str], dict]:
    """ViP's generator for one class: text-only candidates, kept where the image-grounded answer repeats them."""
    text_prompt = TEXT_PROMPT.format(k=k, modality=modality, name=name)
    candidates = parse_lines(endpoint.chat(text_prompt))
    if not candidates:
        raise MedadError(f"LLM endpoint {endpoint.base_url}: the text-only answer for {name!r} held no descriptions")
    image_prompt = IMAGE_PROMPT.format(modality=modality, name=name, candidates="\n".join(candidates))
    url = "data:image/png;base64," + base64.b64encode(image_grid(images)).decode()
    seen = {_normalised(t) for t in parse_lines(endpoint.chat([{"type": "text", "text": image_prompt},
                                                               {"type": "image_url", "image_url": {"url": url}}]))}
    kept = [c for c in candidates if _normalised(c) in seen]
    return kept, {"text_prompt": text_prompt, "image_prompt": image_prompt, "candidates": candidates}


def generate_symptoms(dataset: str, images_by_class: dict[str, Sequence[np.ndarray]], out_path: str | os.PathLike,
                      names: dict[str, str] | None = None, modality: str | None = None,
                      endpoint: LLMEndpoint | None = None, k: int = 8) -> SymptomSet:
    """Run the two-stage generator for every class of ``dataset`` and write a symptom file with its provenance.

    images_by_class: 16 training images (uint8) per class name; names: readable class names
    (default: those of the written file); endpoint: default :meth:`LLMEndpoint.from_env`.
    """
    endpoint = endpoint or LLMEndpoint.from_env()
    if endpoint is None:
        raise ConfigError(f"no LLM endpoint configured: set {ENV_URL} and {ENV_MODEL} (and {ENV_KEY} if the server "
                          f"needs one) to generate symptoms; otherwise use the written files in {SYMPTOM_DIR}")
    from medad.data.registry import get_spec

    spec = get_spec(dataset)
    if names is None:
        names = load_symptoms(dataset).names if symptom_path(dataset).is_file() else {c: c for c in spec.classes}
    modality = modality or spec.modality
    symptoms, prompts = {}, {}
    for c in spec.classes:
        if c not in images_by_class:
            raise ConfigError(f"generate_symptoms: no training images given for class {c!r} of {dataset!r}")
        kept, prompts[c] = two_stage(endpoint, names[c], modality, images_by_class[c], k)
        if not kept:
            raise MedadError(f"LLM endpoint {endpoint.base_url}: no description of {names[c]!r} survived the image-grounded step")
        symptoms[c] = kept
    result = SymptomSet(dataset, tuple(spec.classes), dict(names), symptoms, source=f"generated by {endpoint.model}")
    provenance = {"model": endpoint.model, "endpoint": endpoint.base_url,
                  "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  "procedure": "ViP two-stage: text-only query, then image-grounded refinement on 16 training images; intersection",
                  "prompts": prompts}
    result.path = write_symptoms(out_path, result, provenance)
    return result
