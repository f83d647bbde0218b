"""The runtime model: two ONNX Runtime sessions behind a small numpy API.

    images uint8 (N,C,H,W) --encode--> mean, logvar (N,D) --decode(mean)--> uint8 (N,C,H,W)
    sample: z = temperature * eps, eps ~ N(0, I) drawn by numpy from a seed --decode--> images

No random operator lives in the graphs: all noise is drawn here with numpy, so the same seed
gives the same pixels. Sessions are created once; ``InferenceSession.run`` is thread-safe,
so one model object may serve many threads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgevae.runtime import contract
from edgevae.runtime.bundle import Bundle, read_bundle
from edgevae.runtime.errors import BundleError, InputError

#: Images or latents per session call; bounds peak memory on huge inputs.
CHUNK = 1024


@dataclass(frozen=True)
class MixtureParams:
    """Decoder likelihood parameters, each float32 (N, K, C, H, W).

    Means and log-scales are in the normalized domain where pixel value v sits at
    v / 127.5 - 1 (see :mod:`edgevae.runtime.contract`).
    """

    logits: np.ndarray
    means: np.ndarray
    log_scales: np.ndarray


def _session(path: str, threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initializers etc. are not the user's business
    try:
        return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped exceptions for bad graphs
        raise BundleError(f"{path}: ONNX Runtime cannot load this graph ({str(e).splitlines()[0]})") from None


class EdgeVAE:
    """A loaded bundle: encode, decode, sample, reconstruct and interpolate images."""

    def __init__(self, bundle: Bundle, threads: int | None = None) -> None:
        self.bundle = bundle
        self.image_shape = bundle.image_shape
        self.latent_dim = bundle.latent_dim
        self._encoder = _session(str(bundle.graph_path(contract.ENCODER)), threads)
        self._decoder = _session(str(bundle.graph_path(contract.DECODER)), threads)
        for spec, session in ((contract.ENCODER, self._encoder), (contract.DECODER, self._decoder)):
            names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
            if names != (spec.input_names, spec.output_names):
                raise BundleError(f"{spec.file}: inputs/outputs {names} do not follow the edgevae contract")

    def __repr__(self) -> str:
        return f"EdgeVAE({str(self.bundle.path)!r}, image_shape={self.image_shape}, latent_dim={self.latent_dim})"

    # -- validation -------------------------------------------------------------------------

    def check_images(self, images: np.ndarray) -> np.ndarray:
        """Validate images as uint8 (N, C, H, W) of the model's shape; returns them batched.

        A single (C, H, W) image becomes a batch of one. Integer arrays with values in
        0..255 are accepted and converted; anything else raises InputError.
        """
        array = np.asarray(images)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or tuple(array.shape[1:]) != self.image_shape:
            raise InputError(f"images must have shape (N, {', '.join(map(str, self.image_shape))}), got {array.shape}")
        if array.dtype != np.uint8:
            if not np.issubdtype(array.dtype, np.integer) or array.size and (array.min() < 0 or array.max() > 255):
                raise InputError(f"images must be uint8 pixels 0..255, got dtype {array.dtype}")
            array = array.astype(np.uint8)
        return np.ascontiguousarray(array)

    def check_latents(self, latents: np.ndarray) -> np.ndarray:
        """Validate latents as finite float32 (N, D); a single (D,) vector becomes a batch of one."""
        array = np.asarray(latents)
        if array.ndim == 1:
            array = array[None]
        if array.ndim != 2 or array.shape[1] != self.latent_dim:
            raise InputError(f"latents must have shape (N, {self.latent_dim}), got {array.shape}")
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise InputError(f"latents must be floating point, got dtype {array.dtype}")
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(array).all():
            raise InputError("latents contain NaN or Inf")
        return array

    # -- graphs -------------------------------------------------------------------------------

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior q(z|x) of each image: (mean, logvar), float32 (N, D) each."""
        batch = self.check_images(images)
        means, logvars = [], []
        for start in range(0, len(batch), CHUNK):
            mean, logvar = self._encoder.run(None, {"images": batch[start : start + CHUNK]})
            means.append(mean)
            logvars.append(logvar)
        if not means:
            return np.zeros((0, self.latent_dim), np.float32), np.zeros((0, self.latent_dim), np.float32)
        return np.concatenate(means), np.concatenate(logvars)

    def _run_decoder(self, latents: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
        z = self.check_latents(latents)
        parts: list[list[np.ndarray]] = [[] for _ in outputs]
        for start in range(0, len(z), CHUNK):
            for part, value in zip(parts, self._decoder.run(outputs, {"latents": z[start : start + CHUNK]})):
                part.append(value)
        if not len(z):
            return [self._decoder.run(outputs, {"latents": np.zeros((1, self.latent_dim), np.float32)})[i][:0]
                    for i in range(len(outputs))]
        return [np.concatenate(part) for part in parts]

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Images for latents (N, D): the decoder's mean pixels, uint8 (N, C, H, W)."""
        return self._run_decoder(latents, ["pixels"])[0]

    def likelihood(self, latents: np.ndarray) -> MixtureParams:
        """The decoder's discretized-logistic-mixture parameters for latents (N, D) (normalized domain)."""
        logits, means, log_scales = self._run_decoder(
            latents, ["mixture_logits", "mixture_means", "mixture_log_scales"]
        )
        return MixtureParams(logits, means, log_scales)

    # -- conveniences -------------------------------------------------------------------------

    def sample(self, n: int, temperature: float = 1.0, seed: int | None = None) -> np.ndarray:
        """``n`` new images decoded from z = temperature * eps, eps ~ N(0, I) seeded by ``seed``."""
        if n < 0:
            raise InputError(f"number of samples must be >= 0, got {n}")
        if seed is not None and seed < 0:
            raise InputError(f"seed must be >= 0, got {seed}")
        if not np.isfinite(temperature) or temperature < 0:
            raise InputError(f"temperature must be a finite number >= 0, got {temperature}")
        eps = np.random.default_rng(seed).standard_normal((n, self.latent_dim), dtype=np.float32)
        return self.decode(eps * np.float32(temperature))

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """Encode to the posterior mean and decode again: uint8 (N, C, H, W)."""
        mean, _ = self.encode(images)
        return self.decode(mean)

    def interpolate(self, a: np.ndarray, b: np.ndarray, steps: int = 8) -> np.ndarray:
        """``steps`` images blending image ``a`` into image ``b`` (both (C, H, W)) in latent space.

        The first and last images are the reconstructions of ``a`` and ``b``; latents between
        are evenly spaced on the straight line joining their posterior means.
        """
        if steps < 2:
            raise InputError(f"interpolation needs at least 2 steps, got {steps}")
        pair = np.concatenate([self.check_images(a), self.check_images(b)])
        if len(pair) != 2:
            raise InputError("interpolate takes exactly one image for each end")
        mean, _ = self.encode(pair)
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
        return self.decode((1 - t) * mean[0] + t * mean[1])

    # -- applications (each in its own module) ------------------------------------------------

    def denoise(self, images: np.ndarray, sigma: float | None = None, noise: str = "gaussian",
                amount: float | None = None, samples: int = 1, refine: int | None = None,
                seed: int = 0) -> np.ndarray:
        """Denoised copies of uint8 images (N, C, H, W) (or one (C, H, W)): uint8 (N, C, H, W).

        ``noise="gaussian"``: ``sigma`` is the noise std in pixel levels (None: estimated per
        image). ``noise="salt-pepper"``: ``amount`` is the fraction of replaced pixels (None:
        estimated). Each pixel becomes its posterior mean E[v | y, z] (see
        :mod:`edgevae.runtime.denoise`); ``refine`` passes re-encode the estimate (default 0),
        ``samples`` > 1 averages over latent draws.
        """
        from edgevae.runtime.denoise import DEFAULT_REFINE, denoise, noise_level

        return denoise(self, images, noise_level(noise, sigma, amount), noise, samples=samples,
                       refine=DEFAULT_REFINE if refine is None else refine, seed=seed)[0]

    def score(self, images: np.ndarray, samples: int | None = None, seed: int = 0) -> Any:
        """:class:`edgevae.runtime.novelty.Scores` of uint8 images (N, C, H, W): per image
        ``bits_per_dim`` (negative ELBO, ``samples`` Monte Carlo draws, default 4) and ``novelty``
        (higher = less like the training data), plus the bundle's threshold if it has one."""
        from edgevae.runtime.novelty import DEFAULT_SAMPLES, score

        return score(self, images, samples=DEFAULT_SAMPLES if samples is None else samples, seed=seed)


def load(path: str | os.PathLike[str] | None = None, threads: int | None = None) -> EdgeVAE:
    """Load a bundle folder (``None``: ``$EDGEVAE_MODEL`` or the shipped default model).

    Verifies the manifest and the sha256 of both ONNX files before creating the sessions.
    ``threads`` sets ONNX Runtime's intra-op threads (default: its own choice).
    """
    return EdgeVAE(read_bundle(path), threads=threads)
