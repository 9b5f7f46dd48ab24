"""Plumbing of the ViP chapter: tables from tidy rows, the reported comparison, two committed runs side by side,
what a committed run lacks ("not run"), the Merge Prompt's attention, two figures."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from medad.reports.common import show_table
from medad.results import format_interval, format_row

METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1"}
# The paper's Pneumonia split (Fang et al. 2024, Sec. 3.1; xiaofang007/ViP DATA/Pneumonia): 9:1 of the official train folder.
PAPER_PNEUMONIA_SPLITS = {"train": 4710, "val": 522, "test": 624}
DATASET_NAMES = {"chest_xray": "chest X-ray (Pneumonia)", "brain_mri": "brain MRI (4 classes)", "derm7pt": "Derm7pt"}
NOT_RUN = "not run"
# Method titles of runs committed before the methods followed OFFICIAL_METHOD_SETTINGS (issue 21) -> method key.
OLDER_TITLES = {"CoOp (16 context + class name)": "coop", "KgCoOp (4 context + class name, λ=8)": "kgcoop"}


def _cells(table: pd.DataFrame, percent: bool = True) -> pd.Series:
    return pd.Series([format_row(r, digits=1, percent=percent) for r in table.to_dict("records")], index=table.index)


def setting_table(rows, setting: str, order: list[str] | None = None) -> pd.DataFrame:
    """One setting as a page-wide table: a row per method (and backbone), a column per dataset and metric, in %.

    Cells read ``value (95% interval) s.d. over seeds`` where the run has them (see Reproducing, "Intervals").
    """
    table = pd.DataFrame(rows)
    table = table[table["setting"] == setting].copy()
    if table.empty:
        return pd.DataFrame()
    table["cell"] = _cells(table)
    table["column"] = [f"{DATASET_NAMES.get(d, d)}: {METRIC_NAMES.get(m, m)}" for d, m in zip(table["dataset"], table["metric"])]
    wide = table.pivot_table(index="method", columns="column", values="cell", aggfunc="first", sort=False).fillna("–")
    wide.columns.name = None
    return wide.rename_axis("method [backbone]").reset_index()  # shown without a pandas index (common.show_table)


def reported_comparison(rows, reported: pd.DataFrame, method_prefix: str = "ViP (CoP + MeP)") -> pd.DataFrame:
    """ViP's numbers here (each backbone and their mean) next to the paper's, per dataset and metric, in %."""
    ours = pd.DataFrame(rows)
    ours = ours[(ours["setting"] == "main") & ours["method"].str.startswith(method_prefix)]
    rep = reported[(reported["setting"] == "main") & reported["method"].str.startswith(method_prefix)]
    out = []
    for (dataset, metric), group in ours.groupby(["dataset", "metric"], sort=False):
        line = {"dataset": DATASET_NAMES.get(dataset, dataset), "metric": METRIC_NAMES.get(metric, metric)}
        for _, r in group.iterrows():
            label = r["method"][len(method_prefix):].strip(" []") or "this run"
            line[f"here: {label}"] = format_row(r, digits=1, percent=True)
        theirs = rep[(rep["dataset"] == dataset) & (rep["metric"] == metric)]
        line["reported (3 CLIP backbones)"] = (format_interval(theirs["value"].iloc[0], digits=1, percent=True)
                                                if len(theirs) else "– (not in the paper)")
        out.append(line)
    for _, r in rep.iterrows():  # datasets the paper has and this run has not (Derm7pt without release_v0)
        if r["dataset"] not in set(ours["dataset"]):
            out.append({"dataset": DATASET_NAMES.get(r["dataset"], r["dataset"]), "metric": METRIC_NAMES.get(r["metric"], r["metric"]),
                        "reported (3 CLIP backbones)": format_interval(r["value"], digits=1, percent=True)})
    return pd.DataFrame(out).fillna("– (not run)")


def value(rows, dataset: str, setting: str, method_prefix: str, metric: str = "accuracy") -> float:
    """One number of a tidy table (first match of a method prefix); NaN when absent."""
    table = pd.DataFrame(rows)
    if table.empty:
        return float("nan")
    hit = table[(table["dataset"] == dataset) & (table["setting"] == setting) & (table["metric"] == metric)
                & table["method"].str.startswith(method_prefix)]
    return float(hit["value"].iloc[0]) if len(hit) else float("nan")


def percent(x: float, digits: int = 1, signed: bool = False) -> str:
    """``0.8123`` -> ``"81.2 %"`` (``"+1.5 points"`` when ``signed``); a number the run lacks -> ``"not run"``."""
    if x is None or not np.isfinite(x):
        return NOT_RUN
    return f"{100 * x:+.{digits}f} points" if signed else f"{100 * x:.{digits}f} %"


def show_setting(rows, setting: str, caption: str):
    """A setting's table under its caption, or one line saying the run did not run it (never an empty table)."""
    from IPython.display import Markdown, display

    table = setting_table(rows, setting)
    display(Markdown(f"**{caption}**" + ("" if len(table) else f": *{NOT_RUN} in this run*")))
    if len(table):
        display(show_table(table, index=False))


def split_sizes(provenance: dict, dataset: str) -> dict:
    """Images of each split a committed run used for ``dataset`` (``n_used``; older runs: split sizes and the
    profile's ``train_images``); {} when the run has no such dataset."""
    items = [d for d in provenance.get("data", []) if d.get("dataset") == dataset]
    sizes = {d["split"]: int(d.get("n_used", d.get("n", 0))) for d in items}
    older = provenance.get("config") or {}
    if sizes and "n_used" not in items[0] and older.get("train_images"):
        sizes["train"] = min(sizes.get("train", 0), int(older["train_images"]))
    return sizes


def count_text(n) -> str:
    """``4683`` -> ``"4 683"`` (a narrow no-break space: glued text with a comma would be read as a tuple), or "not run"."""
    return f"{n:,}".replace(",", "\u202f") if n else NOT_RUN


def method_key(title: str) -> str | None:
    """The method key of a table title (its ``[backbone]`` tag left out), also for older runs' titles."""
    from medad.train.vip_task import METHODS

    base = title.rsplit(" [", 1)[0]
    by_title = {m.title: k for k, m in METHODS.items()}
    return by_title.get(base) or OLDER_TITLES.get(base)


def compare_runs(runs: dict, setting: str = "main", metric: str = "accuracy") -> pd.DataFrame:
    """Two (or more) committed runs side by side: a row per dataset and method (first backbone of each run),
    a column per run, in % with the book's interval; "not run" where a run lacks the number."""
    from medad.train.vip_task import METHODS, SETTINGS

    cells: dict[tuple, dict] = {}
    for label, rows in runs.items():
        table = pd.DataFrame(rows)
        table = table[(table["setting"] == setting) & (table["metric"] == metric)
                      & ~table["method"].str.contains(r"\[mean of", regex=True)]
        first = table["method"].str.extract(r"\[(.*)\]$")[0]
        table = table[first == (first.iloc[0] if len(first) else None)]
        for r in table.to_dict("records"):
            key = method_key(r["method"])
            if key is not None:
                cells.setdefault((r["dataset"], key), {})[label] = format_row(r, digits=1, percent=True)
    order = {k: i for i, k in enumerate(SETTINGS.get(setting, ()))}
    out = [{"dataset": DATASET_NAMES.get(d, d), "method": METHODS[k].title.split(" (")[0],
            **{label: found.get(label, NOT_RUN) for label in runs}}
           for (d, k), found in sorted(cells.items(), key=lambda item: (list(DATASET_NAMES).index(item[0][0])
                                                                         if item[0][0] in DATASET_NAMES else 9,
                                                                         order.get(item[0][1], 99)))]
    return pd.DataFrame(out)


def knowledge_finding(rows, datasets=("chest_xray", "brain_mri"), margin: float = 0.02) -> dict:
    """Does ViP need its symptoms? Per dataset: ViP's accuracy minus the best and the mean of its three
    wrong-knowledge variants, and the Merge Prompt alone (+ MeP, no context) minus the Context Prompt alone.

    ``verdict``: "learnt class tokens" when on every dataset run, wrong symptoms cost less than ``margin``
    (or gain) on average, else "symptom knowledge".
    """
    variants = ("ViP, symptoms replaced: out-of-domain", "ViP, symptoms replaced: non-diagnostic",
                "ViP, symptoms replaced: antonym")
    out = {}
    for d in datasets:
        vip = value(rows, d, "knowledge", "ViP (CoP + MeP)")
        wrong = [value(rows, d, "knowledge", v) for v in variants]
        wrong = [w for w in wrong if np.isfinite(w)]
        if not np.isfinite(vip) or not wrong:
            continue
        out[d] = {"vip": vip, "wrong_mean": float(np.mean(wrong)), "wrong_best": float(np.max(wrong)),
                  "mep_minus_cop": value(rows, d, "ablation", "+ MeP") - value(rows, d, "ablation", "+ CoP")}
    gaps = [v["vip"] - v["wrong_mean"] for v in out.values()]
    verdict = None if not gaps else ("learnt class tokens" if max(gaps) < margin else "symptom knowledge")
    return {"per_dataset": out, "verdict": verdict}


def attention_table(attention: pd.DataFrame) -> pd.DataFrame:
    """MeP's attention weights per class, against uniform weights: a table, since a bar chart of near-equal bars says nothing.

    One row per (dataset, backbone, class): K symptoms, the smallest and largest weight over
    symptoms and seeds next to the uniform weight 1/K, the largest distance from uniform, and the
    symptom with the largest mean weight (meaningful only where that distance is not tiny).
    """
    keys = [k for k in ("dataset", "backbone") if k in attention.columns]
    rows = []
    for key, part in attention.groupby(keys + ["class"], sort=False):
        key = key if isinstance(key, tuple) else (key,)
        k = part["symptom"].nunique()
        mean = part.groupby("symptom", sort=False)["weight"].mean()
        data = dict(zip(keys, key))
        rows.append({"data": ", ".join([DATASET_NAMES.get(data.get("dataset"), data.get("dataset", ""))]
                                       + ([data["backbone"]] if "backbone" in data else [])),
                     "class": key[-1], "K": k,
                     "weights, min–max (1/K)": f"{part['weight'].min():.4f}–{part['weight'].max():.4f} ({1 / k:.4f})",
                     "largest |weight − 1/K|": float((part["weight"] - 1 / k).abs().max()),
                     "most weighted symptom": _short_text(str(mean.idxmax()), 40)})
    return pd.DataFrame(rows)


@torch.no_grad()
def symptom_similarity_table(model, features: torch.Tensor, labels: np.ndarray, symptoms) -> pd.DataFrame:
    """Mean cosine of test images with each (context-prompted) symptom, by true class and right/wrong prediction."""
    sims = model.symptom_similarities(features).numpy()
    pred = model.predict_logits(features).argmax(1).numpy()
    texts = [(c, s) for c in symptoms.classes for s in symptoms.symptoms[c]]
    rows = []
    for true in range(len(symptoms.classes)):
        for right in (True, False):
            sel = (labels == true) & ((pred == labels) == right)
            if not sel.any():
                continue
            for j, (c, s) in enumerate(texts):
                rows.append({"true class": symptoms.classes[true], "prediction": "right" if right else "wrong", "n": int(sel.sum()),
                             "symptom class": c, "symptom": s, "similarity": float(sims[sel, j].mean())})
    return pd.DataFrame(rows)


def symptom_similarity_figure(table: pd.DataFrame, title: str):
    """The paper's case study as a heat map: symptoms (rows) against groups of test images (columns)."""
    import textwrap

    from medad.reports import style

    table = table.assign(group=[f"{t}, {p} (n={n})" for t, p, n in zip(table["true class"], table["prediction"], table["n"])],
                         label=[_short_text(f"[{c}] {s}", 40) for c, s in zip(table["symptom class"], table["symptom"])])
    grid = table.pivot_table(index="label", columns="group", values="similarity", sort=False)
    centred = grid.sub(grid.mean(axis=1), axis=0)  # per symptom: which image groups match it more than average
    fig, ax = style.subplots(height=0.3 * grid.shape[0] + 2.4, layout="constrained")
    lim = float(np.nanmax(np.abs(centred.values))) or 1.0
    im = ax.imshow(centred.values, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_yticks(range(grid.shape[0]), grid.index)
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=35, ha="right", rotation_mode="anchor")
    ax.set_xlabel("test images: true class, prediction")
    fig.colorbar(im, ax=ax, label="cosine minus the\nsymptom's mean")
    ax.set_title(textwrap.fill(title, 45))
    return fig


def _short_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@torch.no_grad()
def embedding_figure(model, features: torch.Tensor, labels: np.ndarray, class_names, title: str, seed: int = 0):
    """t-SNE of unit image features together with the class representations s_c (stars).

    Text and image features of a joint space sit apart (the "modality gap"), so every s_c would land
    on one far-away spot; the s_c are shifted by the difference of the two modalities' means first.
    """
    import textwrap

    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    from medad.reports import style

    reps, _ = model.class_representations()
    images, texts = F.normalize(features, dim=-1), F.normalize(reps, dim=-1)
    texts = texts - texts.mean(0) + images.mean(0)
    points = torch.cat([images, texts]).numpy()
    perplexity = float(min(30, max(5, (len(points) - 1) // 4)))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, metric="cosine").fit_transform(points)
    img, cls = xy[: len(features)], xy[len(features):]
    fig, ax = style.subplots(height=5.2, layout="constrained")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for c, name in enumerate(class_names):
        ax.scatter(*img[labels == c].T, s=10, alpha=0.5, color=colours[c % len(colours)], label=f"images: {name}")
        ax.scatter(*cls[c], s=260, marker="*", edgecolor="black", color=colours[c % len(colours)], label=f"s_c: {name}")
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_xlabel("t-SNE 1 (no unit)")
    ax.set_ylabel("t-SNE 2 (no unit)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2,
               markerscale=1.0)
    ax.set_title(textwrap.fill(title, 70))
    return fig
