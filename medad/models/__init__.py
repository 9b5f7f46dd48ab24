"""The papers' networks. Ambiguous segmentation (Probabilistic U-Net and its baselines):
:mod:`medad.models.unet`, :mod:`medad.models.prob_unet`, :mod:`medad.models.seg_baselines`;
build one by name with :func:`medad.models.ambiguous.build_model`."""
