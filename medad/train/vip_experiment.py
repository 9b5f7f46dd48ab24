"""The ViP chapter's experiment: one entry point for the notebook and the command line.

    nice -n 5 python -m medad.train.vip_experiment --profile long_cpu --data-dir ../shared/data \
        --name long-cpu-<date> --threads 1 [--datasets derm7pt] [--finished-only]

writes ``results/vip/<name>/`` (table.csv, provenance.json, attention.csv, predictions.npz) through
:class:`medad.experiment.record.RunRecord`. A rerun with the same name resumes (finished units are
kept, an interrupted one continues from its last epoch) under the same settings and is refused
under others; ``--finished-only`` tabulates what has finished and trains nothing.

Protocol (:func:`run_experiment`). Each dataset's three splits are opened once through the run's
opener, subset as the profile says (seeded, stratified) and recorded with the subset used. Image
features come once from the frozen image encoder (:mod:`medad.features_cache`): centre crops of
every split, and ``views`` seeded augmented views per training image for the trained methods.
A *unit* is one method under one training seed on one dataset and backbone (:func:`plan`: the
main comparison first, then the other settings seed by seed); each trained unit is a
:class:`medad.train.vip_task.PromptTask` fitted by the shared loop, selected on validation
accuracy and tested once. Zero-shot methods and the linear probe are deterministic and run once.
Tidy rows come from every seed's per-image test predictions (:func:`medad.results.rows_from_predictions`:
a 95% percentile bootstrap over test images, patients where the dataset has them; the seeds'
spread in ``seed_sd``).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medad.errors import ConfigError
from medad.experiment import cli
from medad.experiment.record import RunRecord, RunState
from medad.features_cache import CachedFeatures, augmented_views, image_features, subset_of
from medad.metrics.classification import accuracy, macro_f1
from medad.train.vip_task import (
    METHODS, SETTINGS, TrainSettings, batch_size_for, build_classifier, linear_probe, lr_for, merge_attention,
    methods_for, predict, train_method, uses_official_clip_settings,
)

CHAPTER = "vip"
SPLITS = ("train", "val", "test")
CODE_FILES = ("medad/models/vip.py", "medad/train/vip_task.py", "medad/train/vip_experiment.py",
              "medad/features_cache.py", "medad/symptoms.py", "medad/experiment/loop.py",
              "medad/experiment/schedules.py", "medad/experiment/precision.py", f"medad/profiles/{CHAPTER}.yml",
              "data/symptoms/chest_xray.yml", "data/symptoms/brain_mri.yml", "data/symptoms/derm7pt.yml")


# ----------------------------------------------------------------------------- what runs


@dataclass(frozen=True)
class Unit:
    """One method under one training seed on one dataset and backbone."""

    dataset: str
    backbone: str
    method: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.backbone}/{self.method}/seed{self.seed}"


def check_limits(cfg) -> dict:
    """``limits``: per backbone of ``backbones``, the datasets and settings (of the profile's) that it runs."""
    limits = cfg["limits"] or {}
    for bb, lim in limits.items():
        if bb not in cfg["backbones"] or not isinstance(lim, dict) or set(lim) - {"datasets", "settings"}:
            raise ConfigError(f"limits.{bb}: expected a backbone of `backbones` ({', '.join(cfg['backbones'])}) mapped to "
                              f"{{datasets: [...], settings: [...]}}, got {lim!r}")
        for key in ("datasets", "settings"):
            extra = set(lim.get(key, [])) - set(cfg[key])
            if extra:
                raise ConfigError(f"limits.{bb}.{key}: {', '.join(sorted(extra))} not in the run's {key} ({', '.join(cfg[key])})")
    if "augmentation" in cfg["settings"] and not cfg["views"]:
        raise ConfigError("the 'augmentation' setting compares augmented views with the centre crop: it needs views >= 1")
    return limits


def settings_of(cfg, backbone: str, dataset: str) -> list[str]:
    """The settings a backbone runs on a dataset (all of the profile's unless ``limits`` says otherwise)."""
    lim = check_limits(cfg).get(backbone, {})
    if dataset not in lim.get("datasets", cfg["datasets"]):
        return []
    return [s for s in cfg["settings"] if s in lim.get("settings", cfg["settings"])]


def seeds_of(cfg, setting: str) -> list[int]:
    """Training seeds of a setting: ``seeds`` for the main comparison, ``ablation_seeds`` for the others."""
    return [int(s) for s in (cfg["seeds"] if setting == "main" else cfg["ablation_seeds"])]


def plan(cfg) -> list[Unit]:
    """Every unit of ``cfg``, each once, in the order it runs: per backbone, the main comparison first, seed by
    seed; then the other settings seed by seed (each seed: every other setting in the profile's order), so
    that a run cut short has whole seeds of the main comparison and then of every other setting. A
    deterministic method (zero-shot, linear probe) is one unit, under the first seed that needs it."""
    units: list[Unit] = []

    def add(dataset: str, bb: str, key: str, seed: int) -> None:
        known = any((u.dataset, u.backbone, u.method) == (dataset, bb, key) for u in units)
        if (METHODS[key].trained and Unit(dataset, bb, key, seed) not in units) or not known:
            units.append(Unit(dataset, bb, key, seed))

    for bb in cfg["backbones"]:
        for seed in seeds_of(cfg, "main"):
            for dataset in cfg["datasets"]:
                if "main" in settings_of(cfg, bb, dataset):
                    for key in SETTINGS["main"]:
                        add(dataset, bb, key, seed)
        for seed in seeds_of(cfg, "ablation"):
            for dataset in cfg["datasets"]:
                for setting in settings_of(cfg, bb, dataset):
                    if setting != "main":
                        for key in SETTINGS[setting]:
                            add(dataset, bb, key, seed)
    return units


# ----------------------------------------------------------------------------- data and features


@dataclass
class Splits:
    """One dataset's three splits (the subsets the run uses), opened once through the run's opener."""

    dataset: str
    parts: dict  # split -> dataset object of the subset used
    names: dict  # split -> subset name of the feature cache ("all", "n192-s0")

    @property
    def classes(self) -> tuple:
        return tuple(self.parts["test"].classes)

    def test_labels(self) -> np.ndarray:
        return np.asarray(self.parts["test"].labels)

    def test_groups(self) -> np.ndarray:
        return np.asarray(self.parts["test"].groups)


def open_splits(cfg, opener, dataset: str) -> Splits:
    parts, names = {}, {}
    for split in SPLITS:
        ds = opener(dataset, split)
        cap = cfg[f"{split}_images"]
        parts[split], names[split] = subset_of(ds, cap, subset_seed=0)
        how = "all" if names[split] == "all" else f"stratified subset of {len(parts[split])} (seed 0)"
        opener.note_subset(ds, len(parts[split]), how)
    return Splits(dataset, parts, names)


@dataclass
class PairFeatures:
    """Cached features of one dataset on one backbone, computed (or read from the cache) when first asked for."""

    backbone: object
    splits: Splits
    views: int
    view_seed: int
    progress: bool = True
    _centre: dict = field(default_factory=dict)
    _views: CachedFeatures | None = None

    def centre(self, split: str) -> CachedFeatures:
        if split not in self._centre:
            self._centre[split] = image_features(self.backbone, self.splits.parts[split], subset=self.splits.names[split],
                                                 progress=self.progress)
        return self._centre[split]

    def train_views(self) -> CachedFeatures:
        """``views`` augmented views per training image (the centre crop when ``views`` is 0)."""
        if not self.views:
            return self.centre("train")
        if self._views is None:
            self._views = augmented_views(self.backbone, self.splits.parts["train"], n_views=self.views, seed=self.view_seed,
                                          subset=self.splits.names["train"], progress=self.progress)
        return self._views


def load_backbone_for(name: str, cfg, device: str = "cpu"):
    """A registered backbone; CLIP with ``weights`` (None: the default tag, on disk; 'random': random weights,
    for a rehearsal). Real CLIP without weights is a clear WeightsNotFound, never a silent random model."""
    import warnings

    from medad.backbones import get_spec, load_backbone

    opts = {}
    if get_spec(name).family == "clip":
        weights = cfg["weights"]
        opts["pretrained"] = None if weights == "random" else (weights or True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stand-in's and random CLIP's notices: both are named in every label
        return load_backbone(name, device=device, **opts)


# ----------------------------------------------------------------------------- one unit


def train_settings(cfg, unit: Unit, device: str) -> TrainSettings:
    method = METHODS[unit.method]
    return TrainSettings(epochs=int(cfg["epochs"]), batch_size=batch_size_for(unit.backbone, cfg),
                         lr=lr_for(method, unit.backbone, cfg), warmup_epochs=int(cfg["warmup_epochs"]),
                         warmup_lr=float(cfg["warmup_lr"]), momentum=float(cfg["momentum"]),
                         weight_decay=float(cfg["weight_decay"]), seed=unit.seed, device=device, precision=cfg["precision"])


def run_unit(cfg, unit: Unit, feats: PairFeatures, symptoms, modality: str, device: str, state: RunState,
             progress: bool = True, models: dict | None = None) -> dict:
    """One unit: its test predictions and what the table and the chapter say about it (a JSON-able dict)."""
    method = METHODS[unit.method]
    test, val = feats.centre("test"), feats.centre("val")
    out = {"method": unit.method, "seed": unit.seed}
    if method.probe:
        probe = linear_probe(feats.centre("train"), val, test)
        out.update(pred=probe["pred"], best_val=probe["best_val"], C=probe["C"])
    else:
        torch.manual_seed(unit.seed)  # the prompts' random start values
        model = build_classifier(method, feats.backbone, symptoms, modality, int(cfg["n_ctx"]))
        if method.trained:
            train = feats.train_views() if method.augment else feats.centre("train")
            settings = train_settings(cfg, unit, device)
            fitted = train_method(model, train, val, settings, state.checkpoint(unit.key), progress,
                                  name=f"{unit.dataset} {unit.method} seed {unit.seed}", method=unit.method)
            spe = fitted.steps / max(fitted.epochs, 1e-9)
            out.update(best_val=fitted.best["val_accuracy"]["value"], best_epoch=round(fitted.best_step / spe),
                       epochs=round(fitted.epochs, 3), steps=fitted.steps, steps_per_epoch=round(spe),
                       seconds=round(fitted.seconds, 1), stopped_by=fitted.stopped_by, lr=settings.lr,
                       batch_size=settings.batch_size, views=getattr(train, "n_views", 0),
                       val_history=[v["val_accuracy"] for v in fitted.validations],
                       final_loss=fitted.history[-1]["loss"] if fitted.history else None)
            if unit.method == "vip":
                out["attention"] = merge_attention(model, symptoms)
        else:
            out["best_val"] = accuracy(val.labels, predict(model, val.features))
        out["pred"] = predict(model, test.features)
        if models is not None:
            models[unit] = model
    pred = np.asarray(out["pred"])
    out["pred"] = pred.tolist()
    out["accuracy"] = accuracy(test.labels, pred)
    out["macro_f1"] = macro_f1(test.labels, pred, len(symptoms.classes))
    return out


# ----------------------------------------------------------------------------- the experiment


def figure_unit(units: list[Unit], dataset: str, backbone: str) -> Unit | None:
    """The unit whose trained ViP the chapter's figures show: the first main seed's ViP on ``dataset`` and ``backbone``."""
    hits = [u for u in units if (u.dataset, u.backbone, u.method) == (dataset, backbone, "vip")]
    return hits[0] if hits else None


def full_profile_steps(full, rehearsal, sizes: dict) -> dict[str, int]:
    """Training steps of the ``full`` profile by fit-name prefix ('chest_xray vip'), for the rehearsal's projection:
    every trained unit of :func:`plan`, ``epochs`` over the training split (as the rehearsal opened it, or the
    profile's cap) in the backbone's batches, the last partial batch dropped. Feature caching is not counted."""
    steps: dict[str, int] = {}
    for unit in plan(full):
        if not METHODS[unit.method].trained:
            continue
        have = sizes.get((unit.dataset, "train"), 0)
        n = min(have, int(full["train_images"])) if full["train_images"] else have
        key = f"{unit.dataset} {unit.method}"
        steps[key] = steps.get(key, 0) + int(full["epochs"]) * (n // batch_size_for(unit.backbone, full))
    return steps


def run_experiment(cfg, opener, state: RunState | None = None, device: str = "cpu", progress: bool = True,
                   finished_only: bool = False, log=print, backbones: dict | None = None,
                   keep_models: bool = False) -> dict:
    """Every unit of :func:`plan` (finished units are read from ``state``), then the tidy rows.

    ``opener``: the run's :class:`~medad.experiment.record.RecordingOpener` (a notebook's ``run.opener``);
    ``finished_only``: train nothing, tabulate the finished units (a run cut short); ``backbones``: name ->
    an already loaded backbone (tests); ``keep_models``: also return the trained ViP of the figures'
    unit per dataset and backbone (restored from its checkpoint when it finished earlier).

    Returns ``rows`` (tidy), ``attention`` (MeP weights of ViP per seed), ``units`` ({(dataset, backbone):
    finished unit results}), ``splits`` (per dataset), ``features`` ({(dataset, backbone): PairFeatures}),
    ``models`` and the counts ``planned`` and ``finished``.
    """
    from medad.data.registry import get_spec
    from medad.symptoms import load_symptoms

    state = state if state is not None else RunState(None)
    units = plan(cfg)
    if not units:
        raise ConfigError(f"vip: nothing to run for datasets {cfg['datasets']}, backbones {cfg['backbones']} and "
                          f"settings {cfg['settings']} (see limits)")
    splits = {d: open_splits(cfg, opener, d) for d in dict.fromkeys(u.dataset for u in units)}
    symptoms = {d: load_symptoms((cfg["symptom_files"] or {}).get(d, d), s.classes) for d, s in splits.items()}
    loaded = dict(backbones or {})
    features: dict[tuple, PairFeatures] = {}
    models: dict[Unit, object] = {}

    def pair(dataset: str, bb: str) -> PairFeatures:
        if bb not in loaded:
            loaded[bb] = load_backbone_for(bb, cfg, device)
        if (dataset, bb) not in features:
            features[(dataset, bb)] = PairFeatures(loaded[bb], splits[dataset], int(cfg["views"]), int(cfg["view_seed"]),
                                                   progress)
        return features[(dataset, bb)]

    figure = {figure_unit(units, d, b) for d in splits for b in cfg["backbones"]} - {None}
    for unit in units:
        if state.done(unit.key) or finished_only:
            continue
        feats = pair(unit.dataset, unit.backbone)
        result = state.unit(unit.key, lambda: run_unit(cfg, unit, feats, symptoms[unit.dataset],
                                                       get_spec(unit.dataset).modality, device, state, progress,
                                                       models if unit in figure and keep_models else None),
                            keep_checkpoint=unit in figure)
        log(f"{unit.key}: accuracy {result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f}"
            + (f" ({result['seconds']} s)" if "seconds" in result else ""))
    if keep_models:  # a figure unit that finished in an earlier invocation: its checkpoint restores it (no training)
        for unit in figure - set(models):
            ckpt = state.checkpoint(unit.key)
            if ckpt is not None and ckpt.is_file():
                feats = pair(unit.dataset, unit.backbone)
                torch.manual_seed(unit.seed)
                model = build_classifier(METHODS["vip"], feats.backbone, symptoms[unit.dataset],
                                         get_spec(unit.dataset).modality, int(cfg["n_ctx"]))
                train_method(model, feats.train_views(), feats.centre("val"), train_settings(cfg, unit, device), ckpt,
                             progress=False, method="vip")
                models[unit] = model
    done = {}
    for unit in units:
        if state.done(unit.key):
            done.setdefault((unit.dataset, unit.backbone), []).append(state.get(unit.key))
    rows = table_rows(cfg, done, splits)
    attention = [{"dataset": d, "backbone": b, "seed": r["seed"], **a}
                 for (d, b), recs in done.items() for r in recs for a in r.get("attention", [])]
    return {"rows": rows, "attention": attention, "units": done, "splits": splits, "features": features,
            "models": {(u.dataset, u.backbone): m for u, m in models.items()}, "planned": len(units),
            "finished": sum(len(r) for r in done.values()), "plan": units}


# ----------------------------------------------------------------------------- tables


def statistics(n_classes: int) -> dict:
    """The chapter's metrics as statistics of (labels, predictions) for the bootstrap."""
    return {"accuracy": accuracy, "macro_f1": lambda y, p: macro_f1(y, p, n_classes)}


def table_rows(cfg, done: dict, splits: dict) -> list[dict]:
    """Tidy rows: every setting's methods on every dataset and backbone, accuracy and macro-F1, in the book's
    interval convention (every seed's per-image predictions; patients as the resampling unit where known)."""
    from medad.results import rows_from_predictions

    rows, cache = [], {}
    for (dataset, bb), recs in done.items():
        labels, groups = splits[dataset].test_labels(), splits[dataset].test_groups()
        stats = statistics(len(splits[dataset].classes))
        by_method: dict[str, dict[int, dict]] = {}
        for r in recs:
            by_method.setdefault(r["method"], {})[int(r["seed"])] = r
        for setting in settings_of(cfg, bb, dataset):
            for key in SETTINGS[setting]:
                runs = by_method.get(key, {})
                chosen = ([runs[s] for s in seeds_of(cfg, setting) if s in runs] if METHODS[key].trained
                          else list(runs.values())[:1])
                if not chosen:
                    continue
                title = f"{METHODS[key].title} [{bb}]"
                for metric, stat in stats.items():
                    memo = (dataset, bb, key, tuple(r["seed"] for r in chosen), metric)
                    if memo not in cache:
                        cache[memo] = rows_from_predictions(dataset, setting, title, metric, stat,
                                                            [(labels, np.asarray(r["pred"])) for r in chosen],
                                                            groups=groups, n_boot=int(cfg["n_boot"]), seed=0)
                    rows.append({**cache[memo], "setting": setting})
    if len({bb for _, bb in done}) > 1:
        rows += average_over_backbones(rows)
    return rows


def average_over_backbones(rows: list[dict]) -> list[dict]:
    """The paper's presentation: each method's value averaged over backbones ("mean of N backbones"), no interval."""
    import pandas as pd

    from medad.results import row

    table = pd.DataFrame(rows)
    table["base"] = table["method"].str.replace(r" \[.*\]$", "", regex=True)
    out = []
    for (dataset, setting, base, metric), g in table.groupby(["dataset", "setting", "base", "metric"], sort=False):
        if len(g) > 1:
            out.append(row(dataset, setting, f"{base} [mean of {len(g)} backbones]", metric, g["value"].mean(),
                           seeds=int(g["seeds"].min()), n=int(g["n"].iloc[0])))
    return out


# ----------------------------------------------------------------------------- the committed run


def schedule_text(cfg, out: dict, threads: int) -> str:
    """A few words on how long and how big the run was, from its own numbers."""
    from medad.experiment.precision import describe

    sizes = ", ".join(f"{d} {len(s.parts['train']):,}" for d, s in out["splits"].items())
    every = all(s.names["train"] == "all" for s in out["splits"].values())
    batches = sorted({batch_size_for(b, cfg) for b in cfg["backbones"]})
    clip = [b for b in cfg["backbones"] if uses_official_clip_settings(b, cfg)]
    text = (f"{cfg['epochs']} epochs over {'every training image' if every else 'a stratified training subset'} ({sizes}), "
            f"batch {'/'.join(map(str, batches))}{' (official per CLIP backbone)' if clip else ''}, last partial batch "
            f"dropped, SGD (ViP and KgCoOp {cfg['lr']:g}{', CLIP: official' if clip else ''}; CoOp "
            f"{lr_for(METHODS['coop'], 'none', cfg):g}), Dassl warm-up + cosine; "
            + (f"{cfg['views']} cached augmented views per training image" if cfg["views"] else "centre crops only")
            + f"; seeds {', '.join(map(str, cfg['seeds']))}"
            + (f" (other settings {', '.join(map(str, cfg['ablation_seeds']))})" if cfg["ablation_seeds"] != cfg["seeds"] else "")
            + f"; {', '.join(cfg['backbones'])}; {describe(cfg['precision'], False)}; {threads} CPU thread(s)")
    if out["finished"] < out["planned"]:
        text += f"; PARTIAL: {out['finished']} of {out['planned']} units finished"
    return text


def write_committed(record: RunRecord, out: dict) -> Path:
    """The run's folder: table.csv and provenance.json (RunRecord.write), attention.csv, predictions.npz."""
    import pandas as pd

    from medad.experiment.precision import describe

    if not out["rows"]:
        raise ConfigError(f"run vip/{record.name}: no unit has finished yet, so there is nothing to tabulate; "
                          "run it without --finished-only first")
    cfg = record.config

    def predictions(path: Path) -> None:
        arrays = {}
        for (dataset, bb), recs in out["units"].items():
            arrays[f"{dataset}/labels"] = out["splits"][dataset].test_labels()
            arrays[f"{dataset}/groups"] = out["splits"][dataset].test_groups().astype(str)
            for r in recs:
                arrays[f"{dataset}/{bb}/{r['method']}/seed{r['seed']}"] = np.asarray(r["pred"], dtype=np.int16)
        np.savez_compressed(path, **arrays)

    files = {"attention.csv": lambda p: pd.DataFrame(out["attention"]).to_csv(p, index=False, float_format="%.5g"),
             "predictions.npz": predictions}
    training = {f"{d}/{b}/{r['method']}/seed{r['seed']}": {k: r[k] for k in ("best_epoch", "epochs", "steps",
                                                                            "steps_per_epoch", "seconds", "lr",
                                                                            "batch_size", "views", "best_val")}
                for (d, b), recs in out["units"].items() for r in recs if "steps" in r}
    extra = {"training_seeds": {"main": seeds_of(cfg, "main"), "other settings": seeds_of(cfg, "ablation")},
             "units": {"planned": out["planned"], "finished": out["finished"]}, "training": training}
    return record.write(out["rows"], schedule_text(cfg, out, record.threads), precision=describe(cfg["precision"], False),
                        extra=extra, files=files)


def main(argv=None) -> None:
    ap = cli.parser(CHAPTER, "Train and evaluate the ViP chapter's methods; write results/vip/<name>/", datasets=True,
                    finished_only=True)
    ns = ap.parse_args(argv)
    record = cli.make_record(CHAPTER, ns, code_files=CODE_FILES)
    out = run_experiment(record.config, record.opener, record.state, record.device, progress=True,
                         finished_only=ns.finished_only)
    print(f"results written to {write_committed(record, out)}")


main = cli.main_for(CHAPTER, main, on_interrupt="finished units and checkpoints are kept; to resume, rerun")


if __name__ == "__main__":
    sys.exit(main())
