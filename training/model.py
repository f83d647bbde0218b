"""The VAE: a convolutional encoder for q(z|x), a convolutional decoder for p(x|z).

    uint8 x (N,C,H,W) -> normalize -> Encoder -> mean, logvar (N,D)
    z = mean + exp(logvar / 2) * eps                      (reparameterization)
    z (N,D) -> Decoder -> mixture params (N,3K,C,H,W) -> discretized logistic mixture

The decoder never uses transposed convolution, the slow operator of CPU runtimes. Each level
doubles H and W one of two ways (``ModelConfig.upsample``), with the same FLOPs:

- ``pixel-shuffle``: 3x3 convolution to 4x the channels, then depth-to-space (PixelShuffle).
- ``nearest``: nearest-neighbour resize, then a 3x3 convolution at the doubled size. onnxruntime
  keeps both operators in its blocked (NCHWc) layout, so the graph needs no layout reorders
  around a DepthToSpace: ~1.2-1.3x faster decoder (benchmarks/speed.py), slower in PyTorch.

Every resolution level halves H and W; ``channels[i]`` is the width at level ``i``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from edgevae.training import likelihood

#: Ways a decoder level can double H and W (see the module docstring). Checkpoints and
#: manifests written before the choice existed used the first.
UPSAMPLE_MODES = ("pixel-shuffle", "nearest")


def check_upsample(mode: str) -> None:
    """Raise ValueError naming the choices unless ``mode`` is one of :data:`UPSAMPLE_MODES`."""
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {mode!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes that define a VAE; stored in checkpoints and in the bundle manifest."""

    image_shape: tuple[int, int, int] = (1, 28, 28)
    latent_dim: int = 32
    channels: tuple[int, ...] = (32, 64, 128)
    res_blocks: int = 0  # what edgevae-train train uses by default and every shipped bundle was trained with
    mixture_components: int = 5
    upsample: str = UPSAMPLE_MODES[0]

    def __post_init__(self) -> None:
        c, h, w = self.image_shape
        factor = 2 ** (len(self.channels) - 1)
        if c not in (1, 3):
            raise ValueError(f"image channels must be 1 or 3, got {c}")
        if h % factor or w % factor:
            raise ValueError(f"image height and width must be divisible by {factor}, got {h}x{w}")
        if self.latent_dim < 1 or self.mixture_components < 1:
            raise ValueError("latent_dim and mixture_components must be positive")
        check_upsample(self.upsample)

    @property
    def bottom_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the lowest-resolution feature map."""
        factor = 2 ** (len(self.channels) - 1)
        return self.channels[-1], self.image_shape[1] // factor, self.image_shape[2] // factor

    @property
    def pixels(self) -> int:
        """Number of dimensions of one image (C * H * W), the 'dim' of bits/dim."""
        return math.prod(self.image_shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Inverse of :meth:`to_dict`."""
        return cls(
            image_shape=tuple(data["image_shape"]),
            latent_dim=int(data["latent_dim"]),
            channels=tuple(data["channels"]),
            res_blocks=int(data["res_blocks"]),
            mixture_components=int(data["mixture_components"]),
            upsample=str(data.get("upsample", UPSAMPLE_MODES[0])),
        )


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class Encoder(nn.Module):
    """uint8-valued images (N,C,H,W) -> (mean, logvar), each (N, latent_dim)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        ch = config.channels
        layers: list[nn.Module] = [nn.Conv2d(config.image_shape[0], ch[0], 3, padding=1), nn.ReLU()]
        for level in range(1, len(ch)):
            layers += [nn.Conv2d(ch[level - 1], ch[level], 3, stride=2, padding=1), nn.ReLU()]
            layers += [ResBlock(ch[level]) for _ in range(config.res_blocks)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(math.prod(config.bottom_shape), 2 * config.latent_dim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(likelihood.normalize(images))
        mean, logvar = self.head(h.flatten(1)).chunk(2, dim=1)
        return mean, logvar


class Decoder(nn.Module):
    """Latents (N, latent_dim) -> mixture parameters (N, 3K, C, H, W), normalized domain."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        ch = config.channels
        self.bottom_shape = config.bottom_shape
        self.image_channels = config.image_shape[0]
        self.components = config.mixture_components
        self.project = nn.Sequential(nn.Linear(config.latent_dim, math.prod(self.bottom_shape)), nn.ReLU())
        layers: list[nn.Module] = []
        for level in range(len(ch) - 1, 0, -1):
            layers += [ResBlock(ch[level]) for _ in range(config.res_blocks)]
            if config.upsample == "nearest":
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch[level], ch[level - 1], 3, padding=1)]
            else:
                layers += [nn.Conv2d(ch[level], 4 * ch[level - 1], 3, padding=1), nn.PixelShuffle(2)]
            layers.append(nn.ReLU())
        layers += [
            nn.Conv2d(ch[0], ch[0], 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(ch[0], 3 * self.components * self.image_channels, 1),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        h = self.project(latents).unflatten(1, self.bottom_shape)
        out = self.body(h)
        c, hh, ww = self.image_channels, out.shape[-2], out.shape[-1]
        return out.unflatten(1, (3 * self.components, c)).reshape(-1, 3 * self.components, c, hh, ww)


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) of each dimension, in nats, same shape as ``mean``:
    the analytic KL of a diagonal Gaussian posterior to the standard normal prior (Kingma &
    Welling 2014, appendix B). The one definition for the loss, checks and reports."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


@dataclass
class LossTerms:
    """Per-image terms of the negative ELBO, in nats (shape (N,))."""

    recon: torch.Tensor
    kl: torch.Tensor
    kl_per_dim: torch.Tensor = field(repr=False)
    #: Squared error of the decoder's mean image, summed over pixels, in pixel levels^2.
    sse: torch.Tensor = field(repr=False, default_factory=lambda: torch.zeros(()))


class VAE(nn.Module):
    """Encoder + decoder + the loss of a VAE with a discretized-logistic-mixture likelihood."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (N, C, H, W) -> the posterior q(z|x): mean and log-variance, float32 (N, D)."""
        return self.encoder(images)

    def decode_params(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latents (N, D) -> the likelihood p(x|z): mixture (logits, means, log_scales), each
        (N, K, C, H, W), means and log-scales in the normalized domain (pixel v at v / 127.5 - 1)."""
        return self.split(self.decoder(latents))

    @staticmethod
    def mean_pixels(logits: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """The decoder's image: the mixture's mean in pixel levels, rounded, uint8 (N, C, H, W)."""
        return likelihood.mean_pixels(logits, means).round().to(torch.uint8)

    def mean_image(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (N, D) -> the mean image uint8 (N, C, H, W), what decoder.onnx's ``pixels`` gives."""
        logits, means, _ = self.decode_params(latents)
        return self.mean_pixels(logits, means)

    @staticmethod
    def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """z = mean + sigma * eps, differentiable in mean and logvar (Kingma & Welling 2014).

        ``eps`` (same shape as ``mean``) defaults to fresh N(0, I) noise; the trainer passes its
        own so that the noise of an image does not depend on how many processes share a batch.
        """
        if eps is None:
            eps = torch.randn_like(mean)
        return mean + torch.exp(0.5 * logvar) * eps

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decoder output -> (logits, means, log_scales), each (N, K, C, H, W)."""
        return likelihood.split_params(params, self.config.mixture_components)

    def recon_nll(self, images: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) in nats per image, shape (N,)."""
        return self._nll(images, *self.split(self.decoder(latents)))

    @staticmethod
    def _nll(images: torch.Tensor, logits: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
        return -likelihood.log_prob(images, logits, means, log_scales).flatten(1).sum(1)

    def loss_terms(self, images: torch.Tensor, eps: torch.Tensor | None = None) -> LossTerms:
        """One-sample estimate of reconstruction NLL and the analytic KL to N(0, I).

        ``eps``: the reparameterization noise (N, latent_dim); default fresh N(0, I) noise.
        """
        mean, logvar = self.encoder(images)
        z = self.reparameterize(mean, logvar, eps)
        kl_per_dim = gaussian_kl(mean, logvar)
        logits, means, log_scales = self.split(self.decoder(z))
        error = likelihood.mean_pixels(logits, means) - images.to(torch.float32)
        return LossTerms(recon=self._nll(images, logits, means, log_scales), kl=kl_per_dim.sum(1),
                         kl_per_dim=kl_per_dim, sse=error.pow(2).flatten(1).sum(1))

    def log_weights(self, images: torch.Tensor, k: int) -> torch.Tensor:
        """log p(x, z_i) - log q(z_i | x) for k posterior samples; shape (k, N), in nats."""
        mean, logvar = self.encoder(images)
        std = torch.exp(0.5 * logvar)
        out = []
        for _ in range(k):
            eps = torch.randn_like(mean)
            z = mean + std * eps
            log_q = (-0.5 * eps.pow(2) - 0.5 * logvar - 0.5 * math.log(2 * math.pi)).sum(1)
            log_prior = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(1)
            out.append(-self.recon_nll(images, z) + log_prior - log_q)
        return torch.stack(out)
