"""The early-gastric-cancer chapter's experiment: GAIN vs plain classifier, the CA-U-Net ablation, the pipeline.

One entry point, :func:`run_experiment`, called by the chapter notebook (with its ``ChapterRun``'s
opener, state and device) and by the command line::

    nice -n 5 python -m medad.train.egc_experiment --profile long_cpu --data-dir /work/shared/data \\
        --name long-cpu-<date> --threads 1

which writes ``results/egc/<name>/`` (``table.csv``, ``provenance.json``, ``per_image.npz``; no
images, no weights) through the run record. Parameters are validated against the chapter's schema
(``medad/profiles/egc.yml``) first; a rerun with the same name resumes from the run's checkpoints
under equal settings and is refused, naming the setting, under others (``--fresh`` starts afresh).

Side by side on a 2-core CPU: the same command with ``--only classification`` and, in a second
process, ``--only segmentation`` (one thread each) fill the checkpoints of one run; the plain
command then finds every unit finished, restores the selected weights and only evaluates.
``--profile rehearse`` runs the full profile's models at their full size with only the counts
capped, prints each unit's time per training step, and writes nothing under ``results/``.

Protocol (stand-in data: lower-GI endoscopy, not gastric cancer; :mod:`medad.train.egc_data`):

- classification on ``endoscopy_ad``: GAIN (0.9 CE + 0.1 MSE), the plain classifier (CE) and GAIN +
  attention mining on the profile's ImageNet backbone, GAIN and the plain classifier also on each of
  ``extra_archs``; ``seeds`` training seeds each, on cached outputs of the frozen stages, the epoch
  with the best validation (AUC, log-likelihood) kept (:mod:`medad.train.egc_tasks`);
- segmentation on ``kvasir_seg`` (800/100/100): U-Net, +CBAM, +ASPP, CA-U-Net with one budget,
  ``seg_seeds`` each, the epoch with the best validation Dice kept;
- test metrics, shortcut checks, paired differences and the two-stage pipeline with the book's
  interval convention (:mod:`medad.train.egc_evaluation`).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from medad.data.endoscopy_ad import OVERLAY_BOXES  # noqa: F401  (one constant for two chapters' shortcut checks)
from medad.errors import ConfigError
from medad.experiment import cli
from medad.experiment.precision import describe
from medad.experiment.record import RunRecord, RunState
from medad.models.gain import METHODS as CLS_METHODS
from medad.models.gain import build_classifier
from medad.train.egc_data import (CLS_DATASET, PARTS, SEG_DATASET, STANDIN, blank_overlays, blur_lesions, check_parts,
                                  load_data)
from medad.train.egc_evaluation import (CLS_METRICS, LESION_ONLY_METRICS, PAIRED_SETTING, SEG_METHODS, classification_rows,
                                        classifier_scores, evaluate_classifier, evaluate_segmenter, paired_differences,
                                        pipeline_rows, seg_seed_means, segmentation_rows, two_stage)
from medad.train.egc_tasks import CLS_SELECT, SEG_SELECT, epoch_history, train_classifier, train_segmenter, trunk_outputs

CHAPTER = "egc"
ARCH_TITLES = {"effnet-lite0": "EfficientNet-Lite0", "effnet-lite2": "EfficientNet-Lite2", "resnet50": "ResNet-50",
               "vgg16": "VGG-16"}
CODE_FILES = ("medad/models/gain.py", "medad/models/ca_unet.py", "medad/train/egc_data.py", "medad/train/egc_tasks.py",
              "medad/train/egc_evaluation.py", "medad/train/egc_experiment.py", "medad/metrics/segmentation.py",
              "medad/metrics/classification.py", "medad/metrics/bootstrap.py", "medad/experiment/loop.py",
              "medad/experiment/precision.py", f"medad/profiles/{CHAPTER}.yml")

__all__ = ["CHAPTER", "CLS_DATASET", "SEG_DATASET", "STANDIN", "CLS_METHODS", "SEG_METHODS", "CLS_METRICS",
           "LESION_ONLY_METRICS", "PAIRED_SETTING", "PARTS", "run_experiment", "write_committed", "run_long", "main"]


def check_config(cfg) -> None:
    """The one rule the schema cannot say: the backbone comparison's extra backbones are other than ``arch``."""
    if cfg["arch"] in cfg["extra_archs"]:
        raise ConfigError(f"extra_archs must list backbones other than arch {cfg['arch']!r} (the backbone comparison), "
                          f"got {cfg['extra_archs']}")


def method_label(arch: str, method: str, weights_label: str) -> str:
    """How tables name a classifier: 'GAIN (EfficientNet-Lite0, ImageNet)'."""
    return f"{CLS_METHODS[method]} ({ARCH_TITLES[arch]}, {weights_label})"


def classifier_units(cfg) -> list[tuple[str, str, str]]:
    """(unit, arch, method): the profile's backbone with every method first (its models feed the figures and the
    pipeline), then GAIN and the plain classifier on each extra backbone (the backbone comparison)."""
    units = [(method, cfg["arch"], method) for method in cfg["cls_methods"]]
    for arch in cfg["extra_archs"]:
        units += [(f"{arch}-{method}", arch, method) for method in cfg["cls_methods"] if method != "gain-am"]
    return units


def compute_trunks(cfg, arch: str, cls: dict, device: str, progress: bool = True) -> dict:
    """The frozen part's outputs (float32) for every image set the classifiers of ``arch`` see."""
    weights = cfg["weights_file"] if arch == cfg["arch"] and cfg["weights_file"] else True
    probe = build_classifier(arch, "plain", pretrained=weights, image_size=cfg["image_size"],
                             frozen_stages=cfg["frozen_stages"]).to(device)
    test = cls["test"]
    sets = {"train": cls["train"]["images"], "train_flip": cls["train"]["images"][:, :, ::-1],
            "val": cls["val"]["images"], "test": test["images"], "test_blanked": blank_overlays(test["images"]),
            "test_blurred": blur_lesions(test["images"], test["masks"], cfg["blur_sigma"])}
    trunks = {k: trunk_outputs(probe, v, progress=progress, desc=f"trunk {arch} {k}") for k, v in sets.items()}
    return {"trunks": trunks, "weights_label": probe.weights_label, "weights_source": probe.weights_source}


def _unit_record(result, select: str) -> dict:
    return {"seconds": round(result.seconds, 1), "steps": result.steps, "history": epoch_history(result, select),
            "best_epoch": int(round(result.best[select]["epoch"])), "best": result.best[select]["value"]}


def full_profile_steps(full, rehearsal, sizes: dict) -> dict[str, int]:
    """Training steps of the ``full`` profile by fit-name prefix ('gain ', 'ca-unet '), for the rehearsal's projection.

    Split sizes are the ones the rehearsal opened (``sizes[(dataset, split)]``); a profile's image cap applies."""
    def n(dataset: str, cap) -> int:
        have = sizes.get((dataset, "train"), 0)
        return min(have, int(cap)) if cap else have

    cls = math.ceil(n(CLS_DATASET, full["train_images"]) / int(full["cls_batch_size"])) * int(full["cls_epochs"])
    seg = math.ceil(n(SEG_DATASET, full["seg_train_images"]) / int(full["seg_batch_size"])) * int(full["seg_epochs"])
    archs = 1 + len(full["extra_archs"])
    steps = {f"{m} ": cls * len(full["seeds"]) * archs for m in full["cls_methods"]}
    steps.update({f"{v} ": seg * len(full["seg_seeds"]) for v in full["seg_variants"]})
    return steps


def run_experiment(cfg, opener, state: RunState | None = None, device: str = "cpu", progress: bool = True,
                   parts=PARTS) -> dict:
    """Everything the chapter reports: tidy rows, per-seed numbers, what the figures need, each unit's timing.

    ``opener(name, split)`` opens (and records) a dataset; ``state.checkpoint(key)`` is where a unit keeps its
    checkpoint (``state=None``: no checkpoints). ``parts`` limits the work to the classifiers or the segmenters
    (the two-stage pipeline needs both).
    """
    check_config(cfg)
    parts = check_parts(parts)
    data = load_data(cfg, opener, parts, progress)
    checkpoint = (lambda key: state.checkpoint(key)) if state is not None else (lambda key: None)
    units: dict[str, dict] = {}
    evaluations: dict[str, tuple[str, list[dict]]] = {}
    keep: dict[str, dict] = {}
    weights: dict[str, str] = {}
    rows: list[dict] = []
    if "classification" in parts:
        test = data["cls"]["test"]
        for arch in [cfg["arch"], *cfg["extra_archs"]]:
            cached = compute_trunks(cfg, arch, data["cls"], device, progress)
            weights[arch] = cached["weights_source"]
            for unit, _, method in (u for u in classifier_units(cfg) if u[1] == arch):
                label = method_label(arch, method, cached["weights_label"])
                for seed in cfg["seeds"]:
                    key = f"cls-{unit}-seed{seed}"
                    result = train_classifier(cfg, arch, method, seed, data["cls"], cached["trunks"], checkpoint(key),
                                              device, progress, name=f"{unit} seed {seed}")
                    evaluation = evaluate_classifier(result.model, test, cached["trunks"], cfg["attention_threshold"])
                    evaluations.setdefault(unit, (label, []))[1].append(evaluation)
                    units[key] = _unit_record(result, CLS_SELECT)
                    if arch == cfg["arch"] and seed == cfg["seeds"][0]:
                        keep[method] = {"model": result.model, **evaluation}
        rows += classification_rows(evaluations, test, cfg["bootstrap"], cfg["seed"])
    seg_scores: dict[str, list[dict]] = {}
    seg_models = {}
    if "segmentation" in parts:
        seg_test = data["seg"]["test"]
        for variant in cfg["seg_variants"]:
            for seed in cfg["seg_seeds"]:
                key = f"seg-{variant}-seed{seed}"
                result = train_segmenter(cfg, variant, seed, data["seg"], checkpoint(key), device, progress)
                seg_scores.setdefault(variant, []).append(evaluate_segmenter(result.model, seg_test, cfg["seg_size"]))
                units[key] = _unit_record(result, SEG_SELECT)
                if seed == cfg["seg_seeds"][0]:
                    seg_models[variant] = result.model
        rows += segmentation_rows(seg_scores, seg_test, cfg["bootstrap"], cfg["seed"])
        rows += paired_differences(seg_scores, seg_test["groups"], "unet", cfg["bootstrap"], cfg["seed"])
    pipeline = None
    if "gain" in keep and seg_models:
        variant = "ca-unet" if "ca-unet" in seg_models else cfg["seg_variants"][-1]
        pipeline = two_stage(keep["gain"]["prob"], seg_models[variant], data["cls"]["test"], cfg["seg_size"])
        rows += pipeline_rows(pipeline, data["cls"]["test"], f"GAIN then {SEG_METHODS[variant]} (first seeds)",
                              cfg["bootstrap"], cfg["seed"])
    return {"rows": rows, "per_seed": {u: [classifier_scores(e) for e in evs] for u, (_, evs) in evaluations.items()},
            "evaluations": evaluations, "seg_per_seed": seg_scores, "keep": keep, "seg_models": seg_models,
            "pipeline": pipeline, "data": data, "weights": weights,
            "weights_source": weights.get(cfg["arch"], ""), "units": units,
            "timing": {k: u["seconds"] for k, u in units.items()},
            "histories": {k: u["history"] for k, u in units.items()}, "config": cfg, "parts": parts}


# ----------------------------------------------------------------------------- the committed run


def schedule_text(cfg) -> str:
    """The run's schedule in a few words (printed next to the run's name in the book)."""
    extra = "".join(f" (also {a})" for a in cfg["extra_archs"])
    return (f"{len(cfg['seeds'])} seeds x {cfg['cls_epochs']} epochs per classifier{extra} at {cfg['image_size']} px, "
            f"first {cfg['frozen_stages']} stages frozen; {len(cfg['seg_seeds'])} seed(s) x {cfg['seg_epochs']} epochs "
            f"per segmenter at {cfg['seg_size']} px; {describe(cfg['precision'], cfg['channels_last'])}")


def save_per_image(path: Path, out: dict) -> None:
    """Every seed's per-image test arrays behind the table (small): the intervals can be recomputed from them."""
    arrays = {}
    test = out["data"]["cls"].get("test")
    if test is not None:
        arrays.update(cls_labels=test["labels"], cls_groups=test["groups"].astype(str))
    for unit, (_, evaluations) in out["evaluations"].items():
        for k, e in enumerate(evaluations):
            arrays[f"cls_{unit}_seed{k}_lesion_index"] = e["lesion_index"]
            for name in ("prob", "pred_blanked", "prob_blurred", "attention_iou", "pointing_game"):
                arrays[f"cls_{unit}_seed{k}_{name}"] = np.asarray(e[name], dtype=np.float32)
    for variant, runs in out["seg_per_seed"].items():
        for k, r in enumerate(runs):
            for metric, values in r.items():
                arrays[f"seg_{variant}_seed{k}_{metric}"] = np.asarray(values, dtype=np.float32)
    if out["pipeline"] is not None:
        for name in ("two_stage_dice_lesion", "two_stage_normal_flagged"):
            arrays[f"pipeline_{name}"] = out["pipeline"][name].astype(np.float32)
    np.savez_compressed(path, **arrays)


def write_committed(record: RunRecord, out: dict) -> Path:
    """The run's folder through the run record: table.csv, provenance.json (one schema), per_image.npz."""
    cfg = out["config"]
    extra = {"weights": out["weights"], "timing_seconds": out["timing"],
             "steps": {k: u["steps"] for k, u in out["units"].items()},
             "best_epoch": {k: u["best_epoch"] for k, u in out["units"].items()}, "per_seed": out["per_seed"],
             "seg_per_seed": seg_seed_means(out["seg_per_seed"]), "histories": out["histories"]}
    return record.write(out["rows"], schedule_text(cfg), precision=describe(cfg["precision"], cfg["channels_last"]),
                        extra=extra, files={"per_image.npz": lambda p: save_per_image(p, out)})


def step_times(out: dict) -> list[str]:
    """One line per trained unit: steps, training seconds and seconds per step (what a rehearsal prints)."""
    return [f"{key}: {u['steps']} steps, {u['seconds']:.1f} s, {u['seconds'] / max(u['steps'], 1):.2f} s/step"
            for key, u in out["units"].items()]


def run_long(record: RunRecord, parts=PARTS) -> Path | None:
    """The command line's run: train and evaluate ``parts``; write the results folder when both parts ran.

    A part run (``--only``) fills the run's checkpoints and records its compute seconds; a rehearsal
    prints the time per training step. Neither writes under ``results/``.
    """
    parts = check_parts(parts)
    out = run_experiment(record.config, record.opener, record.state, record.device, progress=True, parts=parts)
    if record.kind == "rehearsal" or parts != PARTS:
        record.note_invocation()
        print("\n".join(step_times(out)))
        if record.kind == "rehearsal":
            print(f"rehearsal of profile {record.profile!r}: {record.seconds():.0f} s in all; nothing written under results/")
        return None
    return write_committed(record, out)


def main(argv=None) -> None:
    ap = cli.parser(CHAPTER, "Train and evaluate the early-gastric-cancer chapter's models; write results/egc/<name>/")
    ap.add_argument("--only", choices=PARTS, default=None,
                    help="train only this part into the run's checkpoints and write no results (run one process per "
                         "part side by side, then the command without --only evaluates everything)")
    ns = ap.parse_args(argv)
    record = cli.make_record(CHAPTER, ns, code_files=CODE_FILES)
    folder = run_long(record, (ns.only,) if ns.only else PARTS)
    if folder is not None:
        print(f"results written to {folder}")
    elif ns.only:
        print(f"the {ns.only} part is in the run's checkpoints ({record.state.folder}); rerun without --only to evaluate")


main = cli.main_for(CHAPTER, main, on_interrupt="finished units and checkpoints are kept; to resume, rerun the same command")


if __name__ == "__main__":
    sys.exit(main())
