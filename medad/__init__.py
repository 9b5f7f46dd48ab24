"""medad: a reproducible research compendium for medical image analysis.

One small package that re-implements four papers and feeds the book:

- :mod:`medad.data`        datasets (real archives and their synthetic counterparts)
- :mod:`medad.backbones`   CLIP and offline vision-language stand-ins
- :mod:`medad.models`      the papers' networks (Probabilistic U-Net and baselines, ...)
- :mod:`medad.metrics`     evaluation (GED, IoU, AUC, ...)
- :mod:`medad.pipeline`    executes the chapters and builds the book
"""
__version__ = "0.1.0"
