"""Evaluation metrics: generalized energy distance and matched IoU for sets of masks (:mod:`medad.metrics.ged`),
patient-level bootstrap confidence intervals (:mod:`medad.metrics.bootstrap`)."""
