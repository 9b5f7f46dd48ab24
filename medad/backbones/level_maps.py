r"""Fixed 1x1 maps that carry a CNN's intermediate levels into its final feature space.

For the stand-in, the joint image-text space is the space of the pooled final
features (the classifier's input), and the final feature map's tokens already
live there. An earlier stage has another width (e.g. 40 or 112 channels), so
each is given one linear 1x1 map :math:`M_l`, fitted once by ridge regression
(closed form, :func:`medad.backbones.devise.fit_ridge`) to predict the final
feature map from the stage's own features at the same place:

.. math::

    \min_{M_l} \sum_{v, p} \lVert [\bar z_l(v, p), 1] M_l - z_L(v, p) \rVert^2 + \lambda \lVert M_l \rVert^2

where :math:`z_L(v, p)` is the final map of view :math:`v` at grid cell
:math:`p` and :math:`\bar z_l(v, p)` is stage :math:`l`'s map average-pooled
to the final grid. The views are seeded random crops and flips of the real
pictures that installed packages ship (:mod:`.photos`), so the fit needs no
download; it is deterministic and takes seconds. Applied at the stage's own
resolution, :math:`M_l` gives finer-grained tokens in the final space. The
fraction of variance explained on held-out views (``r2``) is recorded with
the map, so one can see how much of the final features each level predicts.
"""
from __future__ import annotations

import numpy as np
import torch

from medad.backbones import devise

N_VIEWS = 96
LAMBDA = 1.0


def training_views(images: list[np.ndarray], preprocess, n_views: int = N_VIEWS, seed: int = 0) -> torch.Tensor:
    """Seeded random-resized crops (30-100 % of the side) and flips of ``images``, preprocessed."""
    rng = np.random.default_rng(seed)
    views = []
    for v in range(n_views):
        img = images[v % len(images)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.3, 1.0))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = img[top:top + side, left:left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        views.append(preprocess(np.ascontiguousarray(crop)))
    return torch.stack(views)


@torch.no_grad()
def fit_level_maps(backbone, images: list[np.ndarray], stages, seed: int = 0, lam: float = LAMBDA,
                   n_views: int = N_VIEWS) -> dict:
    """{stage: {"A": (C_l + 1, D) map, "r2": held-out R^2}} for each stage in ``stages``; the last stage maps by identity."""
    last = len(backbone.stage_widths)
    views = training_views(images, backbone.preprocess, n_views=n_views, seed=seed)
    wanted = sorted(set(stages) | {last})
    feats = backbone.encode_image(views, levels=wanted, inserts={})
    final = feats.token_map(wanted.index(last))  # (V, D, h, w)
    y = final.permute(0, 2, 3, 1).reshape(len(views), -1, final.shape[1]).double().numpy()
    n_val = max(1, len(views) // 6)  # the last sixth of the views checks the fit
    yt, yv = y[:-n_val].reshape(-1, y.shape[-1]), y[-n_val:].reshape(-1, y.shape[-1])
    out = {}
    for i, stage in enumerate(wanted):
        if stage == last:
            continue
        pooled = torch.nn.functional.adaptive_avg_pool2d(feats.token_map(i), final.shape[-2:])
        x = pooled.permute(0, 2, 3, 1).reshape(len(views), -1, pooled.shape[1]).double().numpy()
        xt = np.hstack([x[:-n_val].reshape(-1, x.shape[-1]), np.ones((len(yt), 1))])
        xv = np.hstack([x[-n_val:].reshape(-1, x.shape[-1]), np.ones((len(yv), 1))])
        # normal equations of the training and the checking views; the final map uses both
        g_t, c_t, g_v, c_v = xt.T @ xt, xt.T @ yt, xv.T @ xv, xv.T @ yv
        check = devise.ridge_from_stats(g_t, c_t, lam)
        r2 = 1.0 - ((xv @ check - yv) ** 2).sum() / ((yv - yt.mean(0)) ** 2).sum()
        a = devise.ridge_from_stats(g_t + g_v, c_t + c_v, lam)
        out[int(stage)] = {"A": torch.from_numpy(a).float(), "r2": float(r2)}
    return out
