"""The ViP chapter's experiment: cached features, every method and ablation, seeds, tidy results.

Used by the chapter notebook (quick/full profiles) and by the long CPU run::

    python -m medad.train.vip_experiment --profile long_cpu --data-dir ../shared/data --name long-cpu-<date>

which writes ``results/vip/<name>/`` (table.csv, provenance.json, attention.csv).

Protocol. Image features of every split come once from the frozen image encoder
(:mod:`medad.features_cache`). Each trained method runs for ``epochs`` passes over
the training images with the official optimiser (SGD lr 0.002, momentum 0.9,
weight decay 5e-4, one warm-up epoch at 1e-5, then cosine), is evaluated on the
validation split after every epoch, and the best validation epoch's state is
tested once on the test split. Trained methods run under every seed; their
interval is Student's t over seeds. Zero-shot methods and the linear probe
(C chosen on validation) are deterministic: they run once and their interval
is a percentile bootstrap over test images (grouped by patient).

Settings (the ``setting`` column of the table):

- ``main``: zero-shot with class names, zero-shot with the mean of the symptoms,
  linear probe, CoOp, KgCoOp, ViP (CoP + MeP);
- ``ablation`` (the paper's Table 2): zero-shot with symptoms, + CoP, + MeP, CoP + MeP;
- ``aggregation`` (Figure 5, left): CoP with mean, max, or MeP over symptoms;
- ``knowledge`` (Figure 5, right): ViP with one class's symptoms replaced by
  out-of-domain, true but non-diagnostic, or antonym-swapped text.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medad import provenance
from medad.errors import ConfigError, command_line
from medad.paths import REPO_ROOT
from medad.features_cache import CachedFeatures, split_features
from medad.metrics.classification import accuracy, macro_f1
from medad.models.vip import PromptClassifier
from medad.symptoms import SymptomSet, load_symptoms

CHAPTER = "vip"
NAME_TEMPLATE = "a {modality} image of {name}"


@dataclass(frozen=True)
class Method:
    """How one compared method builds its classifier: texts, context vectors, aggregation, training."""

    key: str
    title: str
    texts: str = "symptoms"     # "names", "symptoms" or "symptoms:<replacement kind>"
    context: int = 0            # context vectors (0: fixed text features)
    aggregate: str = "mean"
    kg_weight: float = 0.0
    trained: bool = True
    probe: bool = False


METHODS = {m.key: m for m in (
    Method("zs_names", "zero-shot, class names", texts="names", trained=False),
    Method("zs_symptoms", "zero-shot, symptoms (mean)", trained=False),
    Method("linear_probe", "linear probe", texts="names", trained=False, probe=True),
    Method("coop", "CoOp (16 context + class name)", texts="names", context=16),
    Method("kgcoop", "KgCoOp (4 context + class name, λ=8)", texts="names", context=4, kg_weight=8.0),
    Method("vip", "ViP (CoP + MeP)", context=4, aggregate="merge"),
    Method("cop", "+ CoP (mean over symptoms)", context=4),
    Method("mep", "+ MeP (no context)", aggregate="merge"),
    Method("cop_max", "CoP + max over symptoms", context=4, aggregate="max"),
    Method("vip_out_of_domain", "ViP, symptoms replaced: out-of-domain", texts="symptoms:out_of_domain", context=4, aggregate="merge"),
    Method("vip_non_diagnostic", "ViP, symptoms replaced: non-diagnostic", texts="symptoms:non_diagnostic", context=4, aggregate="merge"),
    Method("vip_antonym", "ViP, symptoms replaced: antonym-swapped", texts="symptoms:antonym", context=4, aggregate="merge"),
)}
SETTINGS = {
    "main": ("zs_names", "zs_symptoms", "linear_probe", "coop", "kgcoop", "vip"),
    "ablation": ("zs_symptoms", "cop", "mep", "vip"),
    "aggregation": ("cop", "cop_max", "vip"),
    "knowledge": ("vip", "vip_out_of_domain", "vip_non_diagnostic", "vip_antonym"),
}


def methods_for(settings) -> list[str]:
    """The methods the chosen settings need, each once, in a stable order."""
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    return [k for k in METHODS if any(k in SETTINGS[s] for s in settings)]


# ----------------------------------------------------------------------------- building


def class_prompts(symptoms: SymptomSet, modality: str) -> list[str]:
    return [NAME_TEMPLATE.format(modality=modality, name=n) for n in symptoms.class_names()]


def build_classifier(method: Method, backbone, symptoms: SymptomSet, modality: str, n_ctx: int | None = None) -> PromptClassifier:
    """The method's classifier on ``backbone``; ``n_ctx`` overrides ViP's/CoP's M (ablations keep the method's own)."""
    hand = class_prompts(symptoms, modality)
    if method.texts == "names":
        texts = [[h] for h in hand] if not method.context else [[n] for n in symptoms.class_names()]
    else:
        source = symptoms.with_replaced(method.texts.split(":", 1)[1]) if ":" in method.texts else symptoms
        texts = source.per_class()
    context = n_ctx if (n_ctx and method.context == 4 and method.texts != "names") else method.context
    return PromptClassifier(backbone, texts, context=context, aggregate=method.aggregate,
                            hand_texts=hand if method.kg_weight else None, kg_weight=method.kg_weight)


# ----------------------------------------------------------------------------- training


@dataclass
class TrainSettings:
    epochs: int = 50
    batch_size: int = 32
    lr: float = 0.002
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def lr_at(self, epoch: int) -> float:
        """Dassl's schedule, stepped per epoch: constant warm-up, then cosine from ``lr`` over all epochs."""
        if epoch < self.warmup_epochs:
            return self.warmup_lr
        return 0.5 * self.lr * (1 + math.cos(math.pi * epoch / self.epochs))


def evaluate(model: PromptClassifier, features: torch.Tensor, labels: np.ndarray) -> dict:
    pred = model.predict_logits(features).argmax(1).numpy()
    return {"accuracy": accuracy(labels, pred), "macro_f1": macro_f1(labels, pred, model.n_classes), "pred": pred}


def train_prompts(model: PromptClassifier, train: CachedFeatures, val: CachedFeatures, settings: TrainSettings,
                  seed: int, checkpoint: Path | None = None, progress: bool = True, desc: str = "") -> dict:
    """Train ``model``'s prompts on cached features; keep the state of the best validation epoch.

    Resumes from ``checkpoint`` (written after every epoch) when it exists. Returns the history
    (val accuracy per epoch), the best epoch and its validation accuracy; ``model`` ends in the best state.
    """
    from tqdm import tqdm

    params = model.trainable()
    opt = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    y = torch.as_tensor(train.labels, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    state = {"epoch": 0, "best_val": -1.0, "best_epoch": -1, "history": [], "best_state": None}
    if checkpoint is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        gen.set_state(saved["gen"])
        state = saved["state"]
    bar = tqdm(total=settings.epochs, initial=state["epoch"], desc=desc or "epochs", disable=not progress, leave=False)
    for epoch in range(state["epoch"], settings.epochs):
        for group in opt.param_groups:
            group["lr"] = settings.lr_at(epoch)
        order = torch.randperm(len(y), generator=gen)
        for lo in range(0, len(order), settings.batch_size):
            idx = order[lo:lo + settings.batch_size]
            loss = model.loss(train.features[idx], y[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss became {loss.item()} at epoch {epoch}; lower the learning rate")
            opt.zero_grad()
            loss.backward()
            opt.step()
        val_acc = evaluate(model, val.features, val.labels)["accuracy"]
        state["history"].append(val_acc)
        if val_acc > state["best_val"]:
            state.update(best_val=val_acc, best_epoch=epoch + 1,
                         best_state={k: v.detach().clone() for k, v in model.state_dict().items()})
        state["epoch"] = epoch + 1
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "state": state}, tmp)
            tmp.replace(checkpoint)
        bar.update(1)
    bar.close()
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    return {"history": state["history"], "best_epoch": state["best_epoch"], "best_val": state["best_val"]}


def linear_probe(train: CachedFeatures, val: CachedFeatures, test: CachedFeatures, grid=(0.01, 0.1, 1.0, 10.0, 100.0)) -> dict:
    """Logistic regression on L2-normalised features, C chosen on validation accuracy (CoOp's linear probe)."""
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


# ----------------------------------------------------------------------------- one dataset x backbone


def run_method(key: str, backbone, symptoms: SymptomSet, modality: str, feats: dict[str, CachedFeatures],
               settings: TrainSettings, seed: int, n_ctx: int = 4, checkpoint: Path | None = None,
               progress: bool = True) -> tuple[dict, PromptClassifier | None]:
    """One method under one seed: test predictions and validation summary (and the model, when there is one)."""
    method = METHODS[key]
    test = feats["test"]
    if method.probe:
        out = linear_probe(feats["train"], feats["val"], test)
        model = None
    else:
        torch.manual_seed(seed)
        model = build_classifier(method, backbone, symptoms, modality, n_ctx)
        out = {}
        if method.trained:
            out.update(train_prompts(model, feats["train"], feats["val"], settings, seed, checkpoint, progress,
                                     desc=f"{key} seed {seed}"))
        out["pred"] = evaluate(model, test.features, test.labels)["pred"]
        if not method.trained:
            out["best_val"] = evaluate(model, feats["val"].features, feats["val"].labels)["accuracy"]
    pred = np.asarray(out["pred"])
    n_classes = len(symptoms.classes)
    record = {"method": key, "seed": seed, "accuracy": accuracy(test.labels, pred),
              "macro_f1": macro_f1(test.labels, pred, n_classes), "pred": pred.tolist(),
              **{k: v for k, v in out.items() if k != "pred"}}
    return record, model


def merge_attention(model: PromptClassifier, symptoms: SymptomSet) -> list[dict]:
    """MeP's attention weight of every symptom of every class (long format)."""
    with torch.no_grad():
        _, weights = model.class_representations()
    rows = []
    for c, w in zip(symptoms.classes, weights or []):
        for text, value in zip(symptoms.symptoms[c], w.tolist()):
            rows.append({"class": c, "symptom": text, "weight": float(value)})
    return rows


# ----------------------------------------------------------------------------- tables


def table_rows(dataset: str, backbone_name: str, records: list[dict], labels: np.ndarray, groups, settings,
               n_boot: int = 1000) -> list[dict]:
    """Tidy rows (medad.results) for one dataset and backbone: every setting's methods, accuracy and macro-F1."""
    from medad.metrics.bootstrap import bootstrap_ci
    from medad.results import row, rows_over_seeds

    rows = []
    by_method: dict[str, list[dict]] = {}
    for r in records:
        by_method.setdefault(r["method"], []).append(r)
    for setting in settings:
        for key in SETTINGS[setting]:
            if key not in by_method:
                continue
            runs = sorted(by_method[key], key=lambda r: r["seed"])
            method = f"{METHODS[key].title} [{backbone_name}]"
            for metric in ("accuracy", "macro_f1"):
                if METHODS[key].trained:
                    rows.append(rows_over_seeds(dataset, setting, method, metric, [r[metric] for r in runs], len(labels)))
                else:
                    pred = np.asarray(runs[0]["pred"])
                    if metric == "accuracy":
                        est = bootstrap_ci((pred == labels).astype(float), groups, n_boot=n_boot, seed=0)[0]
                        rows.append(row(dataset, setting, method, metric, est.mean, est.low, est.high, 1, len(labels)))
                    else:
                        low, high = bootstrap_metric(labels, pred, groups, n_boot)
                        rows.append(row(dataset, setting, method, metric, runs[0][metric], low, high, 1, len(labels)))
    return rows


def bootstrap_metric(labels: np.ndarray, pred: np.ndarray, groups, n_boot: int = 1000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float]:
    """Percentile interval of macro-F1 over patient-resampled test sets (macro-F1 is not a mean over images)."""
    groups = np.asarray(groups)
    uniq, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    n_classes = int(max(labels.max(), pred.max())) + 1
    values = []
    for _ in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])
        values.append(macro_f1(labels[idx], pred[idx], n_classes))
    alpha = (1 - level) / 2
    return tuple(float(v) for v in np.quantile(values, [alpha, 1 - alpha]))


def average_over_backbones(rows: list[dict]) -> list[dict]:
    """The paper's presentation: each method's value averaged over backbones ("mean of backbones"), no interval."""
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


# ----------------------------------------------------------------------------- the whole experiment


def load_features(backbone, dataset: str, data_dir, cfg: dict, progress: bool = True) -> dict[str, CachedFeatures]:
    caps = {"train": cfg.get("train_images"), "val": cfg.get("val_images"), "test": cfg.get("test_images")}
    return {s: split_features(backbone, dataset, s, data_dir, max_images=caps[s], progress=progress) for s in ("train", "val", "test")}


def test_groups(dataset: str, data_dir, feats: CachedFeatures) -> list[str]:
    """Patient groups of the cached test images, in their order (for the bootstrap)."""
    from medad.data import open_dataset
    from medad.features_cache import dataset_ids

    ds = open_dataset(dataset, "test", data_dir)
    group_of = dict(zip(dataset_ids(ds), ds.groups))
    return [group_of[i] for i in feats.ids]


def settings_from(cfg: dict) -> TrainSettings:
    return TrainSettings(epochs=int(cfg["epochs"]), batch_size=int(cfg["batch_size"]), lr=float(cfg["lr"]),
                         warmup_epochs=int(cfg["warmup_epochs"]), warmup_lr=float(cfg["warmup_lr"]),
                         momentum=float(cfg["momentum"]), weight_decay=float(cfg["weight_decay"]))


def plan(cfg: dict) -> list[tuple[str, str, str, int]]:
    """The (dataset, backbone, method, seed) runs of ``cfg``: per backbone, the main comparison first.

    ``limits`` (optional) restricts a backbone to some datasets and settings; ``ablation_seeds`` (optional) are
    the seeds of the methods that only the ablation settings need (default: ``seeds``).
    """
    limits = cfg.get("limits") or {}
    main_first = []
    for bb in cfg["backbones"]:  # the first backbone's every setting before the next backbone's
        name = bb if isinstance(bb, str) else bb.name
        lim = limits.get(name, {})
        for phase in ("main", "rest"):
            for dataset in cfg["datasets"]:
                if dataset not in lim.get("datasets", cfg["datasets"]):
                    continue
                keys = methods_for([s for s in cfg["settings"] if s in lim.get("settings", cfg["settings"])])
                for key in keys:
                    in_main = "main" in cfg["settings"] and key in SETTINGS["main"]
                    if (phase == "main") != in_main:
                        continue
                    seeds = cfg["seeds"] if in_main else cfg.get("ablation_seeds") or cfg["seeds"]
                    for seed in (seeds if METHODS[key].trained else seeds[:1]):
                        main_first.append((dataset, name, key, int(seed)))
    return main_first


def run_experiment(cfg: dict, data_dir, state_dir: Path, progress: bool = True, log=print, finished_only: bool = False) -> dict:
    """Every run of :func:`plan`; each finished run is saved in ``state_dir`` (JSON) and skipped on resume.

    finished_only: tabulate the runs already finished in ``state_dir`` and run nothing (a run cut short).

    Returns {"rows": tidy rows, "attention": MeP weights of ViP per seed, "records": {(dataset, backbone): runs}}.
    """
    from medad.backbones import load_backbone
    from medad.data.registry import get_spec

    settings = settings_from(cfg)
    state_dir.mkdir(parents=True, exist_ok=True)
    given = {bb.name: bb for bb in cfg["backbones"] if not isinstance(bb, str)}  # instances: tests' tiny backbones
    backbones, feats, symptoms, records = {}, {}, {}, {}
    for dataset, bb_name, key, seed in plan(cfg):
        combo = (dataset, bb_name)
        records.setdefault(combo, [])
        done = state_dir / f"{dataset}__{bb_name}__{key}__{seed}.json"
        if done.is_file():
            records[combo].append(json.loads(done.read_text()))
            continue
        if finished_only:
            continue
        if bb_name not in backbones:
            backbones[bb_name] = given.get(bb_name) or load_backbone(bb_name)
        if dataset not in symptoms:
            symptoms[dataset] = load_symptoms(cfg.get("symptom_files", {}).get(dataset, dataset), get_spec(dataset).classes)
        if combo not in feats:
            feats[combo] = load_features(backbones[bb_name], dataset, data_dir, cfg, progress)
        t0 = time.perf_counter()
        ckpt = state_dir / "checkpoints" / f"{done.stem}.pt"
        rec, model = run_method(key, backbones[bb_name], symptoms[dataset], get_spec(dataset).modality, feats[combo],
                                settings, seed, int(cfg["n_ctx"]), ckpt, progress)
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        if key == "vip" and model is not None:
            rec["attention"] = merge_attention(model, symptoms[dataset])
        done.write_text(json.dumps(rec, default=float))
        ckpt.unlink(missing_ok=True)
        records[combo].append(rec)
        log(f"{dataset} {bb_name} {key} seed {seed}: acc {rec['accuracy']:.3f} f1 {rec['macro_f1']:.3f} ({rec['seconds']} s)")
    all_rows, attention = [], []
    for (dataset, bb_name), recs in records.items():
        if not recs:  # nothing finished for this pair (finished_only)
            continue
        for rec in recs:
            for a in rec.get("attention", []):
                attention.append({"dataset": dataset, "backbone": bb_name, "seed": rec["seed"], **a})
        test = load_test_labels(dataset, bb_name, data_dir, cfg, backbones, given, feats)
        groups = test_groups(dataset, data_dir, test)
        lim = (cfg.get("limits") or {}).get(bb_name, {})
        chosen = [s for s in cfg["settings"] if s in lim.get("settings", cfg["settings"])]
        for setting in chosen:
            seeds = cfg["seeds"] if setting == "main" else (cfg.get("ablation_seeds") or cfg["seeds"])
            kept = [r for r in recs if r["seed"] in seeds or not METHODS[r["method"]].trained]
            all_rows += table_rows(dataset, bb_name, kept, test.labels, groups, [setting], int(cfg["n_boot"]))
    if len({b for _, b in records}) > 1:
        all_rows += average_over_backbones(all_rows)
    return {"rows": all_rows, "attention": attention, "records": records}


def load_test_labels(dataset, bb_name, data_dir, cfg, backbones, given, feats) -> CachedFeatures:
    """The test split's cached features (labels and ids) of one dataset and backbone, loading only what is missing."""
    from medad.backbones import load_backbone

    if (dataset, bb_name) in feats:
        return feats[(dataset, bb_name)]["test"]
    if bb_name not in backbones:
        backbones[bb_name] = given.get(bb_name) or load_backbone(bb_name)
    return split_features(backbones[bb_name], dataset, "test", data_dir, max_images=cfg.get("test_images"), progress=False)


# ----------------------------------------------------------------------------- CLI


def code_digest() -> str:
    """SHA-256 of the files that decide this chapter's numbers."""
    symptoms = sorted((REPO_ROOT / "data" / "symptoms").glob("*.yml"))
    return provenance.files_digest(["medad/models/vip.py", "medad/train/vip_experiment.py", "medad/features_cache.py",
                                    "medad/symptoms.py", "medad/profiles/vip.yml", *symptoms])


def profile_config(profile: str) -> dict:
    import medad.profiles as profiles

    return profiles.resolve_named(CHAPTER, profile)  # validated against the schema in the YAML


def run_long(profile: str, data_dir, name: str, threads: int, root: Path, state_root: Path,
             finished_only: bool = False) -> Path:
    import pandas as pd

    from medad import provenance
    from medad.data import open_dataset
    from medad.results import write_run
    from medad.runtime import device_description

    torch.set_num_threads(threads)
    cfg = profile_config(profile)
    started, t0, digest, commit = provenance.now_utc(), time.perf_counter(), code_digest(), provenance.git_commit()
    out = run_experiment(cfg, data_dir, state_root / name, finished_only=finished_only)
    n_done, n_planned = sum(len(r) for r in out["records"].values()), len(plan(cfg))
    if n_done < n_planned:
        cfg["schedule"] += f"; PARTIAL: {n_done} of {n_planned} runs finished"
    data = [open_dataset(d, s, data_dir).provenance() for d in cfg["datasets"] for s in ("train", "val", "test")]
    prov = {"kind": "long-cpu", "schedule": cfg["schedule"], "profile": profile, "commit": commit,
            "code_sha256": digest, "device": device_description("cpu"), "threads": threads,
            "backbones": cfg["backbones"], "seeds": cfg["seeds"], "data": data, "config": cfg,
            "started": started, "finished": provenance.now_utc(), "seconds": round(time.perf_counter() - t0, 1),
            "command": f"python -m medad.train.vip_experiment --profile {profile} --name {name} --threads {threads}"}
    folder = write_run(CHAPTER, name, out["rows"], prov, root)
    pd.DataFrame(out["attention"]).to_csv(folder / "attention.csv", index=False, float_format="%.5g")
    return folder


@command_line("python -m medad.train.vip_experiment", on_interrupt="finished units are kept; to resume, rerun")
def main(argv=None) -> None:
    from medad.paths import REPO_ROOT, RESULTS_DIR

    ap = argparse.ArgumentParser(description="Train and evaluate the ViP chapter's methods; write results/vip/<name>/")
    ap.add_argument("--profile", default="long_cpu", help="a mapping in medad/profiles/vip.yml (long_cpu, full, quick)")
    ap.add_argument("--data-dir", default=None, help="folder with the archives (default: $MEDAD_DATA; none -> synthetic)")
    ap.add_argument("--name", required=True, help="run name: results/vip/<name>/")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--state", default=str(REPO_ROOT / "runs" / "vip-state"),
                    help="per-run results and checkpoints (not committed); a rerun with the same name resumes")
    ap.add_argument("--finished-only", action="store_true",
                    help="write the table from the runs already finished (a run cut short); train nothing")
    args = ap.parse_args(argv)
    folder = run_long(args.profile, args.data_dir, args.name, args.threads, RESULTS_DIR, Path(args.state), args.finished_only)
    print(f"results written to {folder}")


if __name__ == "__main__":
    raise SystemExit(main())
