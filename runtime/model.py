"""The runtime model: two ONNX Runtime sessions behind a small numpy API.

    images uint8 (N,C,H,W) --encode--> mean, logvar (N,D) --decode(mean)--> uint8 (N,C,H,W)
    sample: u = temperature * eps, eps ~ N(0, I) drawn by numpy from a seed
            --prior.onnx (if the bundle has a learned prior; else z = u)--> z --decode--> images

No random operator lives in the graphs: all noise is drawn here with numpy, so the same seed
gives the same pixels. Sessions are created once; ``InferenceSession.run`` is thread-safe,
so one model object may serve many threads.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgevae.runtime import contract
from edgevae.runtime.bundle import Bundle, read_bundle
from edgevae.runtime.errors import BundleError, InputError

#: Images or latents per session call; bounds peak memory on huge inputs.
CHUNK = 1024

#: ``prior=`` choices of :meth:`EdgeVAE.sample`: the bundle's learned prior, or N(0, I).
PRIORS = ("learned", "normal")


@dataclass(frozen=True)
class MixtureParams:
    """Decoder likelihood parameters, each float32 (N, K, C, H, W).

    Means and log-scales are in the normalized domain where pixel value v sits at
    v / 127.5 - 1 (see :mod:`edgevae.runtime.contract`).
    """

    logits: np.ndarray
    means: np.ndarray
    log_scales: np.ndarray


def _session(path: str, threads: int | None, optimize: bool = True) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
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
        self._threads = threads
        self._prior: Any = None  # the learned prior's session, created on first use
        self._prior_lock = threading.Lock()

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

    def _prior_session(self) -> Any:
        """The learned prior's session, checked (sha256, then names and shapes) and created once."""
        with self._prior_lock:
            if self._prior is None:
                spec = contract.PRIOR
                # Graph optimization would double the session's creation time (~0.12 s against
                # ~0.06 s for the shipped 290-node flow: a third of a cold `sample -n 1`) to save
                # ~4 ms per 1,024 latents, a small fraction of the decoder's time on them.
                session = _session(str(self.bundle.optional_graph_path(spec)), self._threads, optimize=False)
                names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
                if names != (spec.input_names, spec.output_names):
                    raise BundleError(f"{spec.file}: inputs/outputs {names} do not follow the edgevae contract")
                shapes = (session.get_inputs()[0].shape[1], session.get_outputs()[0].shape[1])
                if shapes != (self.bundle.prior_noise_dim, self.latent_dim):
                    raise BundleError(
                        f"{spec.file}: maps {shapes[0]}-d noise to {shapes[1]}-d latents, model.json says "
                        f"{self.bundle.prior_noise_dim}-d noise to {self.latent_dim}-d latents")
                self._prior = session
            return self._prior

    # -- conveniences -------------------------------------------------------------------------

    @property
    def prior(self) -> str:
        """What :meth:`sample` draws from by default: ``learned`` (the bundle has prior.onnx) or ``normal``."""
        return "learned" if self.bundle.prior_kind is not None else "normal"

    def sample_latents(self, n: int, temperature: float = 1.0, seed: int | None = None,
                       prior: str | None = None) -> np.ndarray:
        """``n`` latents float32 (n, D): u = temperature * eps, eps ~ N(0, I) seeded by ``seed``,
        then z = u (``prior="normal"``) or z = prior.onnx(u) (``"learned"``; default when the
        bundle has a learned prior)."""
        if n < 0:
            raise InputError(f"number of samples must be >= 0, got {n}")
        if seed is not None and seed < 0:
            raise InputError(f"seed must be >= 0, got {seed}")
        if not np.isfinite(temperature) or temperature < 0:
            raise InputError(f"temperature must be a finite number >= 0, got {temperature}")
        prior = self.prior if prior is None else prior
        if prior not in PRIORS:
            raise InputError(f"prior must be one of {', '.join(PRIORS)}, got {prior!r}")
        if prior == "normal":
            eps = np.random.default_rng(seed).standard_normal((n, self.latent_dim), dtype=np.float32)
            return eps * np.float32(temperature)
        if self.bundle.prior_kind is None:
            raise InputError(f"{self.bundle.name} has no learned prior ({contract.PRIOR.file}); "
                             "sample from N(0, I) instead (prior 'normal') or fit one with 'edgevae-train prior'")
        session = self._prior_session()
        eps = np.random.default_rng(seed).standard_normal((n, self.bundle.prior_noise_dim), dtype=np.float32)
        u = eps * np.float32(temperature)
        parts = [session.run(None, {"noise": u[start : start + CHUNK]})[0] for start in range(0, n, CHUNK)]
        return np.concatenate(parts) if parts else np.zeros((0, self.latent_dim), np.float32)

    def sample(self, n: int, temperature: float = 1.0, seed: int | None = None, prior: str | None = None) -> np.ndarray:
        """``n`` new images uint8 (n, C, H, W) decoded from :meth:`sample_latents` (same arguments):
        the bundle's learned prior when it has one, else N(0, I); ``prior`` picks one explicitly."""
        return self.decode(self.sample_latents(n, temperature=temperature, seed=seed, prior=prior))

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


def load(path: str | os.PathLike[str] | None = None, threads: int | None = None) -> EdgeVAE:
    """Load a bundle folder (``None``: ``$EDGEVAE_MODEL`` or the shipped default model).

    Verifies the manifest and the sha256 of both ONNX files before creating the sessions.
    ``threads`` sets ONNX Runtime's intra-op threads (default: its own choice).
    """
    return EdgeVAE(read_bundle(path), threads=threads)
