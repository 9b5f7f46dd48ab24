"""Classification metrics shared by the chapters: accuracy, precision, recall, specificity, F1, ROC AUC.

Binary metrics treat class 1 as positive (lesion, abnormal). Macro-F1 is the
unweighted mean of the per-class F1 (ViP's metric). Every function checks its
inputs and raises ConfigError with what was expected, rather than returning NaN
silently; AUC of a set with one class only is undefined and raises too.
"""
from __future__ import annotations

import numpy as np

from medad.errors import ConfigError


def _labels(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if len(y_true) != len(y_pred) or len(y_true) == 0:
        raise ConfigError(f"need as many predictions as labels (> 0), got {len(y_pred)} predictions for {len(y_true)} labels")
    return y_true.astype(int), y_pred.astype(int)


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = _labels(y_true, y_pred)
    return float((y_true == y_pred).mean())


def macro_f1(y_true, y_pred, n_classes: int | None = None) -> float:
    """Mean over classes of 2TP / (2TP + FP + FN); a class absent from labels and predictions is skipped."""
    from sklearn.metrics import f1_score

    y_true, y_pred = _labels(y_true, y_pred)
    labels = np.arange(n_classes) if n_classes else np.union1d(y_true, y_pred)
    return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def binary_report(y_true, y_pred, scores=None) -> dict:
    """Accuracy, precision, recall (sensitivity), specificity, F1 and (with scores) ROC AUC of a binary task."""
    y_true, y_pred = _labels(y_true, y_pred)
    if not set(np.unique(np.concatenate([y_true, y_pred]))) <= {0, 1}:
        raise ConfigError("binary_report needs labels and predictions in {0, 1}")
    tp = int(((y_pred == 1) & (y_true == 1)).sum())
    tn = int(((y_pred == 0) & (y_true == 0)).sum())
    fp = int(((y_pred == 1) & (y_true == 0)).sum())
    fn = int(((y_pred == 0) & (y_true == 1)).sum())
    out = {
        "accuracy": (tp + tn) / len(y_true),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "specificity": tn / (tn + fp) if tn + fp else 0.0,
    }
    out["f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    if scores is not None:
        out["auc"] = roc_auc(y_true, scores)
    return out


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve of scores that rank class 1 above class 0 (ties count half)."""
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true).ravel().astype(int)
    scores = np.asarray(scores, dtype=float).ravel()
    if len(y_true) != len(scores):
        raise ConfigError(f"need one score per label, got {len(scores)} scores for {len(y_true)} labels")
    if len(np.unique(y_true)) < 2:
        raise ConfigError("ROC AUC needs both classes among the labels; this set has only one")
    if not np.isfinite(scores).all():
        raise ConfigError(f"ROC AUC got {int((~np.isfinite(scores)).sum())} non-finite scores")
    return float(roc_auc_score(y_true, scores))
