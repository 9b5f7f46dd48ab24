"""Build an ambiguous-segmentation model (Probabilistic U-Net or a baseline) by name."""
from __future__ import annotations

import inspect

from torch import nn

from medad.errors import ConfigError
from medad.models.prob_unet import ProbUNet
from medad.models.seg_baselines import DeterministicUNet, DropoutUNet, MHeadsUNet, UNetEnsemble

MODELS: dict[str, type[nn.Module]] = {
    "prob_unet": ProbUNet,
    "unet": DeterministicUNet,
    "dropout_unet": DropoutUNet,
    "unet_ensemble": UNetEnsemble,
    "mheads": MHeadsUNet,
}
TITLES = {
    "prob_unet": "Prob. U-Net",
    "unet": "U-Net (deterministic)",
    "dropout_unet": "Dropout U-Net",
    "unet_ensemble": "U-Net ensemble",
    "mheads": "M-heads",
}


def build_model(name: str, **options) -> nn.Module:
    """``MODELS[name](**options)``, ignoring options the model does not take (one config serves all).

    An unknown name lists the choices; a bad value (e.g. latent_dim=0) raises ConfigError.
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    cls = MODELS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return cls(**{k: v for k, v in options.items() if k in accepted and v is not None})
