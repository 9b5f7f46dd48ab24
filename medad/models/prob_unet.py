"""Probabilistic U-Net: a U-Net combined with a conditional VAE (Kohl et al., NeurIPS 2018).

    Kohl, Romera-Paredes, Meyer, De Fauw, Ledsam, Maier-Hein, Eslami, Rezende, Ronneberger.
    "A Probabilistic U-Net for Segmentation of Ambiguous Images", NeurIPS 2018. arXiv:1806.05034.

Model (X image, Y segmentation, z in R^L, L = ``latent_dim`` = 6)::

    prior      P(z | X)    = N(mu_prior(X),    diag(sigma_prior(X)^2))
    posterior  Q(z | X, Y) = N(mu_post(X, Y),  diag(sigma_post(X, Y)^2))
    sample     S = f_comb(f_unet(X), z),  z ~ P(z | X)

The prior and posterior nets are the U-Net's encoder shape (same channels and blocks) fed
with the image (the posterior also with the one-hot mask, shifted by -0.5 as in the official
code), averaged over space, and a 1x1 convolution to (mu, log sigma). ``f_comb`` broadcasts z
over the image, concatenates it with the U-Net's last features and applies three 1x1
convolutions with ReLU and a final 1x1 convolution to the class logits.

Training loss per image (the negative ELBO with weight beta, official code's ``elbo``)::

    L = CE(Y, f_comb(f_unet(X), z_q)) + beta * KL(Q(z | X, Y) || P(z | X)),   z_q ~ Q  (reparameterised)

with the cross-entropy summed over pixels, the KL analytic for diagonal Gaussians::

    KL(Q || P) = sum_l [ log sigma_p - log sigma_q + (sigma_q^2 + (mu_q - mu_p)^2) / (2 sigma_p^2) - 1/2 ]

and both averaged over the batch; beta = 1.

Numerical safety (not in the official code; its PyTorch ports' users report NaN in the KL and
in mu): log sigma and mu pass through a soft bound ``b * tanh(x / b)`` (|log sigma| < 8 by default,
|mu| < 1000), which leaves ordinary values unchanged, keeps gradients everywhere, and keeps
exp(+-2 log sigma) finite in float32 so the KL cannot overflow.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from medad.errors import ConfigError
from medad.models.segmentation_common import (
    check_grader_masks, check_images, init_conv_weights, pixel_ce_sum, random_grader,
)
from medad.models.unet import Encoder, UNet, check_channels


def soft_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    """bound * tanh(x / bound): about x for |x| << bound, never beyond +-bound, smooth gradient."""
    return bound * torch.tanh(x / bound)


@dataclass
class DiagonalGaussian:
    """N(mu, diag(exp(log_sigma)^2)), mu and log_sigma of shape (B, L)."""

    mu: torch.Tensor
    log_sigma: torch.Tensor

    def rsample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(self.mu.shape, generator=generator, device=self.mu.device if generator is None else generator.device)
        return self.mu + eps.to(self.mu.device, self.mu.dtype) * self.log_sigma.exp()

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log density, summed over the latent dimensions: (B,)."""
        var_term = ((z - self.mu) * torch.exp(-self.log_sigma)) ** 2
        return (-0.5 * var_term - self.log_sigma - 0.5 * torch.log(torch.tensor(2 * torch.pi))).sum(-1)


def kl_diagonal(q: DiagonalGaussian, p: DiagonalGaussian) -> torch.Tensor:
    """Analytic KL(q || p) of two diagonal Gaussians, summed over latent dimensions: (B,). Computed in float32."""
    mq, lq, mp, lp = q.mu.float(), q.log_sigma.float(), p.mu.float(), p.log_sigma.float()
    ratio = torch.exp(2 * (lq - lp))  # sigma_q^2 / sigma_p^2, finite because log sigmas are bounded
    mahal = ((mq - mp) * torch.exp(-lp)) ** 2
    return (lp - lq + 0.5 * (ratio + mahal) - 0.5).sum(-1)


class GaussianEncoder(nn.Module):
    """Prior or posterior net: encoder -> spatial mean -> 1x1 conv -> (mu, log sigma), soft-bounded."""

    def __init__(self, in_channels: int, channels: Sequence[int], convs_per_block: int, latent_dim: int,
                 log_sigma_bound: float = 8.0, mu_bound: float = 1000.0):
        super().__init__()
        self.encoder = Encoder(in_channels, channels, convs_per_block)
        self.to_params = nn.Conv2d(channels[-1], 2 * latent_dim, 1)
        self.latent_dim, self.log_sigma_bound, self.mu_bound = latent_dim, log_sigma_bound, mu_bound
        init_conv_weights(self)

    def forward(self, x: torch.Tensor) -> DiagonalGaussian:
        h = self.encoder(x)[-1].mean(dim=(2, 3), keepdim=True)
        params = self.to_params(h).flatten(1).float()
        mu, log_sigma = params[:, : self.latent_dim], params[:, self.latent_dim :]
        return DiagonalGaussian(soft_bound(mu, self.mu_bound), soft_bound(log_sigma, self.log_sigma_bound))


class FComb(nn.Module):
    """f_comb: [U-Net features, broadcast z] -> ``num_1x1_convs`` x (1x1 conv, ReLU) -> 1x1 conv to logits."""

    def __init__(self, feature_channels: int, latent_dim: int, num_classes: int, num_1x1_convs: int = 3):
        super().__init__()
        if num_1x1_convs < 1:
            raise ConfigError(f"num_1x1_convs must be >= 1, got {num_1x1_convs}")
        layers: list[nn.Module] = []
        prev = feature_channels + latent_dim
        for _ in range(num_1x1_convs):
            layers += [nn.Conv2d(prev, feature_channels, 1), nn.ReLU(inplace=True)]
            prev = feature_channels
        layers.append(nn.Conv2d(prev, num_classes, 1))
        self.net = nn.Sequential(*layers)
        init_conv_weights(self)

    def forward(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        zmap = z.to(features.dtype)[:, :, None, None].expand(-1, -1, *features.shape[-2:])
        return self.net(torch.cat([features, zmap], dim=1))

    @torch.no_grad()
    def foreground_many(self, features: torch.Tensor, zs: torch.Tensor, max_elements: int = 2**24) -> torch.Tensor:
        """Foreground masks for many latents at once: features (B, C, H, W), zs (B, n, L) -> bool (B, n, H, W).

        Same result as ``forward`` per latent, computed faster for sampling: the first layer's
        feature part is computed once (only z's part changes between samples), and the 1x1
        convolutions become matrix products on channels-last pixels.
        """
        convs = [m for m in self.net if isinstance(m, nn.Conv2d)]
        b, c, h, w = features.shape
        n = zs.shape[1]
        pixels = features.permute(0, 2, 3, 1).reshape(b, 1, h * w, c)
        w0 = convs[0].weight.flatten(1)
        base = pixels @ w0[:, :c].T + convs[0].bias  # (B, 1, HW, C') shared by all samples
        shift = zs.to(features.dtype) @ w0[:, c:].T  # (B, n, C')
        per = max(1, max_elements // max(1, b * h * w * w0.shape[0]))
        out = []
        for start in range(0, n, per):
            x = torch.relu(base + shift[:, start : start + per, None, :])
            for conv in convs[1:-1]:
                x = torch.relu(x @ conv.weight.flatten(1).T + conv.bias)
            logits = x @ convs[-1].weight.flatten(1).T + convs[-1].bias  # (B, k, HW, classes)
            # argmax > 0 (ties go to background, like torch.argmax)
            out.append(logits[..., 1:].amax(-1) > logits[..., 0])
        return torch.cat(out, dim=1).reshape(b, n, h, w)


class ProbUNet(nn.Module):
    """Probabilistic U-Net (see the module docstring for the equations).

    loss(images, grader_masks) trains on one randomly chosen grader's mask per image;
    sample(images, n) draws n segmentations per image from the prior.
    """

    kind = "prob_unet"

    def __init__(self, in_channels: int = 1, num_classes: int = 2, channels: Sequence[int] = (32, 64, 128, 192),
                 convs_per_block: int = 3, latent_dim: int = 6, num_1x1_convs: int = 3, beta: float = 1.0,
                 log_sigma_bound: float = 8.0):
        super().__init__()
        channels = check_channels(channels, convs_per_block)
        if int(latent_dim) != latent_dim or latent_dim < 1:
            raise ConfigError(f"latent_dim must be an integer >= 1, got {latent_dim!r}")
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2 (background + foreground), got {num_classes}")
        if beta < 0 or log_sigma_bound <= 0:
            raise ConfigError(f"need beta >= 0 and log_sigma_bound > 0, got beta={beta}, log_sigma_bound={log_sigma_bound}")
        self.in_channels, self.num_classes, self.latent_dim, self.beta = in_channels, num_classes, int(latent_dim), float(beta)
        self.levels = len(channels)
        self.unet = UNet(in_channels, channels, convs_per_block)
        self.prior = GaussianEncoder(in_channels, channels, convs_per_block, self.latent_dim, log_sigma_bound)
        self.posterior = GaussianEncoder(in_channels + num_classes, channels, convs_per_block, self.latent_dim, log_sigma_bound)
        self.f_comb = FComb(self.unet.out_channels, self.latent_dim, num_classes, num_1x1_convs)

    def posterior_input(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        onehot = nn.functional.one_hot(target, self.num_classes).permute(0, 3, 1, 2).to(images.dtype)
        return torch.cat([images, onehot - 0.5], dim=1)

    def elbo_terms(self, images: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """Per-image reconstruction CE (summed over pixels) and KL, for a given target (B, H, W) long."""
        check_images(images, self.in_channels)
        features = self.unet(images)
        q = self.posterior(self.posterior_input(images, target))
        p = self.prior(images)
        z = q.rsample(generator)
        logits = self.f_comb(features, z)
        return {"rec": pixel_ce_sum(logits, target), "kl": kl_diagonal(q, p), "logits": logits}

    def loss(self, images: torch.Tensor, grader_masks: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """Batch loss = mean(CE_sum + beta * KL) with one random grader's mask per image."""
        check_grader_masks(grader_masks, images)
        target = random_grader(grader_masks, generator)
        terms = self.elbo_terms(images, target, generator)
        rec, kl = terms["rec"].mean(), terms["kl"].mean()
        return {"loss": rec + self.beta * kl, "rec": rec.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def sample(self, images: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n prior samples per image: bool (B, n, H, W) (foreground = argmax is class 1 or above).

        The U-Net and the prior run once; only f_comb runs per sample, as in the paper.
        """
        check_images(images, self.in_channels)
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        features = self.unet(images)
        p = self.prior(images)
        zs = torch.stack([p.rsample(generator) for _ in range(n)], dim=1)  # (B, n, L)
        return self.f_comb.foreground_many(features, zs)
