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
from typing import Any

import numpy as np

from edgevae.runtime import contract
from edgevae.runtime.bundle import Bundle, read_bundle
from edgevae.runtime.errors import BundleError, InputError
from edgevae.runtime.likelihood import MixtureIndices, MixtureParams, log_interval_probability, log_likelihood

#: Images or latents per session call; bounds peak memory on huge inputs.
CHUNK = 1024

#: ``prior=`` choices of :meth:`EdgeVAE.sample`: the bundle's learned prior, or N(0, I).
PRIORS = ("learned", "normal")


def integer(value: Any, what: str, minimum: int | None = 0) -> int:
    """``value`` as an int if it is an integer (a Python or numpy int, not a bool) >= ``minimum``
    (None: any); InputError otherwise, so 2.5 or "3" is refused instead of rounded or a TypeError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{what} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise InputError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def _number(value: Any, what: str) -> float:
    """``value`` as a finite float >= 0; InputError otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or value < 0:
        raise InputError(f"{what} must be a finite number >= 0, got {value!r}")
    return float(value)


def _array(value: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as e:  # ragged nested lists and the like
        raise InputError(f"{what} must be an array ({_first_line(e)})") from None


#: ONNX Runtime's element type names for the contract's dtypes.
_ORT_TYPES = {"uint8": "tensor(uint8)", "float32": "tensor(float)", "int32": "tensor(int32)"}


def new_session(graph: bytes | str | os.PathLike[str], where: str | None = None, threads: int | None = None,
                optimize: bool = True) -> Any:
    """An ONNX Runtime CPU session of a graph: the one place every package creates sessions.

    ``graph`` is the graph's bytes (the runtime passes the bytes it verified, never re-reading
    the file by name) or a path (the exporter's checks of a file it just wrote). ``threads``
    sets the intra-op threads (None: ONNX Runtime's choice: one per core); ``optimize=False``
    skips graph optimization (faster to create, for small graphs). A graph ONNX Runtime cannot
    load raises BundleError naming ``where`` (default: the path); running out of memory,
    MemoryError.
    """
    import onnxruntime as ort

    if where is None:
        where = "graph" if isinstance(graph, bytes) else str(graph)
    if not isinstance(graph, bytes):
        graph = os.fspath(graph)

    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initializers etc. are not the user's business
    try:
        return ort.InferenceSession(graph, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped exceptions for bad graphs
        if _out_of_memory(e):
            raise MemoryError from None
        raise BundleError(f"{where}: ONNX Runtime cannot load this graph ({_first_line(e)})") from None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or "bad_alloc" in text or "bad allocation" in text \
        or "failed to allocate" in text or "out of memory" in text


def _check_session(session: Any, spec: contract.GraphSpec, dims: dict[str, int], where: str) -> None:
    """BundleError unless the graph's own inputs and outputs are the contract's: names, element
    types and shapes (fixed dimensions equal to the manifest's, the batch dimension free)."""
    found = (session.get_inputs(), session.get_outputs())
    names = ([i.name for i in found[0]], [o.name for o in found[1]])
    if names != (spec.input_names, spec.output_names):
        raise BundleError(f"{where}: inputs/outputs {names} do not follow the edgevae contract")
    for tensors, expected in zip(found, (spec.inputs, spec.outputs)):
        for tensor, want in zip(tensors, expected):
            shape = want.resolve(dims)
            fixed = [d if isinstance(d, int) else None for d in tensor.shape]
            if (tensor.type != _ORT_TYPES[want.dtype] or len(tensor.shape) != len(shape)
                    or any(w != contract.BATCH and f != w for f, w in zip(fixed, shape))
                    or isinstance(tensor.shape[0], int)):
                raise BundleError(f"{where}: {tensor.name} is {tensor.type} {list(tensor.shape)}, the manifest "
                                  f"says {want.dtype} {shape}")


def _run(session: Any, outputs: list[str] | None, feeds: dict[str, np.ndarray], where: str) -> list[np.ndarray]:
    """``session.run`` with ONNX Runtime's failures typed: out of memory -> MemoryError, anything
    else (a graph that does not compute what its signature says) -> BundleError."""
    try:
        return session.run(outputs, feeds)
    except Exception as e:
        if _out_of_memory(e):
            raise MemoryError from None
        raise BundleError(f"{where}: ONNX Runtime failed running this graph ({_first_line(e)})") from None


class EdgeVAE:
    """A loaded bundle: encode, decode, sample, reconstruct and interpolate images.

    An integer bundle (model.json ``"arithmetic": "integer"``, contract.INTEGER_ENCODER/DECODER)
    keeps the same float API: :meth:`encode` returns mean_index / 2**10 and -24 + logvar_index / 64,
    :meth:`decode` and :meth:`likelihood` take float latents z as the indices floor(z * 256 + 0.5)
    (binary64, clamped to +-2048) and return the graph's pixels and its indices as floats. The
    lossless coders use the integers themselves: :meth:`encode_indices`, :meth:`likelihood_indices`.
    """

    def __init__(self, bundle: Bundle, threads: int | None = None) -> None:
        self.bundle = bundle
        self.image_shape = bundle.image_shape
        self.latent_dim = bundle.latent_dim
        self.arithmetic = bundle.arithmetic
        try:
            self._enc, self._dec = contract.graphs_for(self.arithmetic)
        except ValueError as e:
            raise BundleError(f"{bundle.path}: {e}") from None
        self._dims = contract.dims_of(bundle.image_shape, bundle.latent_dim, bundle.components)
        self._encoder = new_session(bundle.graph_bytes(self._enc), self._where(self._enc), threads)
        self._decoder = new_session(bundle.graph_bytes(self._dec), self._where(self._dec), threads)
        for spec, session in ((self._enc, self._encoder), (self._dec, self._decoder)):
            _check_session(session, spec, self._dims, self._where(spec))
        self.pixel_groups, self.pixel_tile = bundle.pixel_groups, bundle.pixel_tile
        self._context: Any = None
        self._ctx = contract.context_graph_for(self.arithmetic)
        if self.pixel_groups > 1:
            self._context = new_session(bundle.graph_bytes(self._ctx), self._where(self._ctx), threads)
            _check_session(self._context, self._ctx, self._dims, self._where(self._ctx))
        self._threads = threads
        self._prior: Any = None  # the learned prior's session, created on first use
        self._prior_lock = threading.Lock()

    def _where(self, spec: contract.GraphSpec) -> str:
        return str(self.bundle.graph_path(spec))

    def _outputs(self, spec: contract.GraphSpec, names: list[str], values: list[np.ndarray], batch: int) -> None:
        """BundleError unless the graph's results have the shapes the contract promises."""
        for name, value in zip(names, values):
            want = next(t for t in spec.outputs if t.name == name)
            shape = [batch if d == contract.BATCH else d for d in want.resolve(self._dims)]
            if list(value.shape) != shape:
                raise BundleError(f"{self._where(spec)}: gave {name} of shape {list(value.shape)}, "
                                  f"its signature says {shape}")

    @property
    def integer(self) -> bool:
        """True for an integer bundle: its graphs' outputs are the coders' grid indices, and lossless
        coding uses the exact table set (docs/FORMAT.md §7)."""
        return self.arithmetic == contract.ARITHMETIC_INTEGER

    def __repr__(self) -> str:
        return f"EdgeVAE({str(self.bundle.path)!r}, image_shape={self.image_shape}, latent_dim={self.latent_dim})"

    # -- validation -------------------------------------------------------------------------

    def check_images(self, images: np.ndarray) -> np.ndarray:
        """Validate images as uint8 (N, C, H, W) of the model's shape; returns them batched.

        A single (C, H, W) image becomes a batch of one. Integer arrays with values in
        0..255 are accepted and converted; anything else raises InputError.
        """
        array = _array(images, "images")
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or tuple(array.shape[1:]) != self.image_shape:
            raise InputError(f"images must have shape (N, {', '.join(map(str, self.image_shape))}), got {array.shape}")
        if array.dtype != np.uint8:
            if not np.issubdtype(array.dtype, np.integer) or array.size and (array.min() < 0 or array.max() > 255):
                raise InputError(f"images must be uint8 pixels 0..255, got dtype {array.dtype}")
            array = array.astype(np.uint8)
        return np.ascontiguousarray(array)

    def _latent_batch(self, latents: np.ndarray) -> np.ndarray:
        """Latents as an (N, D) array (a single (D,) vector becomes a batch of one); InputError otherwise."""
        array = _array(latents, "latents")
        if array.ndim == 1:
            array = array[None]
        if array.ndim != 2 or array.shape[1] != self.latent_dim:
            raise InputError(f"latents must have shape (N, {self.latent_dim}), got {array.shape}")
        return array

    def check_latents(self, latents: np.ndarray) -> np.ndarray:
        """Validate latents as finite float32 (N, D); a single (D,) vector becomes a batch of one."""
        array = self._latent_batch(latents)
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise InputError(f"latents must be floating point, got dtype {array.dtype}")
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(array).all():
            raise InputError("latents contain NaN or Inf")
        return array

    # -- graphs -------------------------------------------------------------------------------

    def _run_encoder(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = self.check_images(images)
        means, logvars = [], []
        spec = self._enc
        for start in range(0, len(batch), CHUNK):
            chunk = batch[start : start + CHUNK]
            mean, logvar = _run(self._encoder, None, {spec.inputs[0].name: chunk}, self._where(spec))
            self._outputs(spec, spec.output_names, [mean, logvar], len(chunk))
            means.append(mean)
            logvars.append(logvar)
        if not means:
            dtype = np.int32 if self.integer else np.float32
            return np.zeros((0, self.latent_dim), dtype), np.zeros((0, self.latent_dim), dtype)
        return np.concatenate(means), np.concatenate(logvars)

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior q(z|x) of each image: (mean, logvar), float32 (N, D) each."""
        if not self.integer:
            return self._run_encoder(images)
        mean, logvar = self.encode_indices(images)
        lo = contract.LOGVAR_RANGE[0]
        return ((mean.astype(np.float64) / (1 << contract.POSTERIOR_MEAN_BITS)).astype(np.float32),
                (lo + logvar.astype(np.float64) / (1 << contract.LOGVAR_BITS)).astype(np.float32))

    def encode_indices(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """An integer bundle's posterior as its grid indices, int32 (N, D) each: mean_index
        (mean = i / 2**10) and logvar_index (log-variance = -24 + i / 64), clamped to the contract's
        ranges (docs/FORMAT.md §7.1). BundleError for a float bundle."""
        self._require_integer("encode_indices")
        mean, logvar = self._run_encoder(images)
        return (np.clip(mean, *contract.index_range("mean_index")).astype(np.int32),
                np.clip(logvar, *contract.index_range("logvar_index")).astype(np.int32))

    def _require_integer(self, what: str) -> None:
        if not self.integer:
            raise BundleError(f"{self.bundle.name}: {what} needs an integer bundle (model.json \"arithmetic\": \"integer\")")

    def latent_indices(self, latents: np.ndarray) -> np.ndarray:
        """Float latents (N, D) as an integer decoder's input: floor(z * 256 + 0.5) in binary64,
        clamped to +-2048, int32 (N, D)."""
        z = self.check_latents(latents).astype(np.float64)
        index = np.floor(z * (1 << contract.LATENT_INPUT_BITS) + 0.5)
        return np.clip(index, *contract.index_range("latents")).astype(np.int32)

    def check_latent_indices(self, latents: np.ndarray) -> np.ndarray:
        """Validate integer latents (N, D) for an integer decoder: int32, clamped to +-2048."""
        array = self._latent_batch(latents)
        if not np.issubdtype(array.dtype, np.integer):
            raise InputError(f"latent indices must be integers, got dtype {array.dtype}")
        return np.ascontiguousarray(np.clip(array, *contract.index_range("latents")), dtype=np.int32)

    def _run_decoder(self, latents: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
        """Run the decoder on latents already in its input type (float32, or int32 indices)."""
        z = latents
        spec = self._dec
        parts: list[list[np.ndarray]] = [[] for _ in outputs]
        where = self._where(spec)
        for start in range(0, len(z), CHUNK):
            chunk = z[start : start + CHUNK]
            values = _run(self._decoder, outputs, {spec.inputs[0].name: chunk}, where)
            self._outputs(spec, outputs, values, len(chunk))
            for part, value in zip(parts, values):
                part.append(value)
        if not len(z):
            empty = np.zeros((1, self.latent_dim), z.dtype)
            values = _run(self._decoder, outputs, {spec.inputs[0].name: empty}, where)
            self._outputs(spec, outputs, values, 1)
            return [value[:0] for value in values]
        return [np.concatenate(part) for part in parts]

    def _decoder_input(self, latents: np.ndarray) -> np.ndarray:
        return self.latent_indices(latents) if self.integer else self.check_latents(latents)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Images for latents (N, D): the decoder's mean pixels, uint8 (N, C, H, W)."""
        return self._run_decoder(self._decoder_input(latents), self._dec.output_names[:1])[0]  # pixels

    def decode_indices(self, latents: np.ndarray) -> np.ndarray:
        """An integer decoder's pixels uint8 (N, C, H, W) for int32 latent indices (N, D) (z * 256)."""
        self._require_integer("decode_indices")
        return self._run_decoder(self.check_latent_indices(latents), self._dec.output_names[:1])[0]

    def likelihood(self, latents: np.ndarray) -> MixtureParams:
        """The decoder's discretized-logistic-mixture parameters for latents (N, D) (normalized domain)."""
        if self.integer:
            return self.likelihood_indices(self.latent_indices(latents)).params()
        # mixture_logits, mixture_means, mixture_log_scales: the outputs after pixels
        logits, means, log_scales = self._run_decoder(self.check_latents(latents), self._dec.output_names[1:])
        return MixtureParams(logits, means, log_scales)

    def likelihood_indices(self, latents: np.ndarray) -> MixtureIndices:
        """An integer decoder's mixture as grid indices, int32 (N, K, C, H, W) each, clamped to the
        contract's ranges, for int32 latent indices (N, D) (docs/FORMAT.md §7.1)."""
        self._require_integer("likelihood_indices")
        return MixtureIndices.clamped(*self._run_decoder(self.check_latent_indices(latents), self._dec.output_names[1:]))

    def context_likelihood(self, params: MixtureParams, pixels: np.ndarray, known: np.ndarray) -> MixtureParams:
        """A context bundle's mixture refined by the pixels known so far (contract.CONTEXT):
        ``params`` the decoder's (N, K, C, H, W) mixture, ``pixels`` uint8 (N, C, H, W) and ``known``
        (N, C, H, W) or broadcastable, nonzero where ``pixels`` holds a decoded pixel. For an
        integer bundle, ``params`` are the decoder's dequantized indices (:meth:`likelihood`)."""
        if self.integer:
            indices = MixtureIndices.of(params)
            return self.context_likelihood_indices(indices, pixels, known).params()
        return MixtureParams(*self._run_context((params.logits, params.means, params.log_scales), pixels, known))

    def context_likelihood_indices(self, indices: MixtureIndices, pixels: np.ndarray,
                                   known: np.ndarray) -> MixtureIndices:
        """An integer context bundle's context graph (contract.INTEGER_CONTEXT): the decoder's
        mixture indices refined by the pixels known so far, as indices on the same grids."""
        self._require_integer("context_likelihood_indices")
        feeds = tuple(np.ascontiguousarray(a, dtype=np.int32)
                      for a in (indices.logit_index, indices.mean_index, indices.log_scale_index))
        return MixtureIndices.clamped(*self._run_context(feeds, pixels, known))

    def _run_context(self, mixture: tuple[np.ndarray, np.ndarray, np.ndarray], pixels: np.ndarray,
                     known: np.ndarray) -> tuple[np.ndarray, ...]:
        """The context graph's three outputs for the decoder's mixture (as the graph takes it)."""
        if self._context is None:
            raise InputError(f"{self.bundle.name} has no pixel groups (no {self._ctx.file})")
        n = len(pixels)
        where = self._where(self._ctx)
        shape = (n, *self.image_shape)
        known = np.broadcast_to(np.asarray(known) != 0, shape).astype(np.uint8)
        pixels = np.ascontiguousarray(np.where(known, pixels, 0), dtype=np.uint8)  # unknown pixels never matter
        feeds = (*mixture, pixels, known)
        parts = []
        for start in range(0, n, CHUNK):  # bounds peak memory, as for the decoder
            chunk = dict(zip(self._ctx.input_names, (a[start:start + CHUNK] for a in feeds)))
            parts.append(_run(self._context, None, chunk, where))
            self._outputs(self._ctx, self._ctx.output_names, parts[-1], len(chunk["pixels"]))
        if not parts:
            return tuple(a[:0] for a in mixture)
        return tuple(np.concatenate(values) for values in zip(*parts))

    def log_likelihood(self, images: np.ndarray, latents: np.ndarray) -> np.ndarray:
        """log p(x|z) in nats per image, float64 (N,), of uint8 images (N, C, H, W) at latents (N, D):
        under the decoder's mixture, or for a context bundle each pixel group under the context
        graph's mixture given the groups before it (what lossless coding costs)."""
        images = self.check_images(images)
        if self.pixel_groups == 1:
            return log_likelihood(images, self.likelihood(latents))
        return self.group_log_likelihoods(images, latents).sum(axis=1)

    def group_log_likelihoods(self, images: np.ndarray, latents: np.ndarray,
                              context: bool = True) -> np.ndarray:
        """Each pixel group's share of :meth:`log_likelihood`, nats, float64 (N, G): group g's pixels
        under the context graph's mixture given groups 0..g-1 (group 0: the decoder's); with
        ``context=False`` every group under the decoder's mixture (what the context net buys is
        the difference). One column for a bundle without groups."""
        images = self.check_images(images)
        params = self.likelihood(latents)
        ids = np.array(contract.pixel_group_map(self.pixel_groups, *self.image_shape[1:], self.pixel_tile))
        out = np.zeros((len(images), self.pixel_groups))
        for g in range(self.pixel_groups):
            group = params if g == 0 or not context else self.context_likelihood(params, images, (ids < g)[None, None])
            per_pixel = log_interval_probability(images, images, group)
            out[:, g] = per_pixel[:, :, ids == g].reshape(len(images), -1).sum(axis=1)
        return out

    def _prior_session(self) -> Any:
        """The learned prior's session, checked (sha256, then names and shapes) and created once."""
        with self._prior_lock:
            if self._prior is None:
                spec = contract.PRIOR
                # Graph optimization would double the session's creation time (~0.12 s against
                # ~0.06 s for the shipped 290-node flow: a third of a cold `sample -n 1`) to save
                # ~4 ms per 1,024 latents, a small fraction of the decoder's time on them.
                where = self._where(spec)
                session = new_session(self.bundle.optional_graph_bytes(spec), where, self._threads, optimize=False)
                dims = {**self._dims, "noise": self.bundle.prior_noise_dim}
                _check_session(session, spec, dims, where)
                self._prior = session
            return self._prior

    @property
    def sessions(self) -> dict[str, Any]:
        """The ONNX Runtime sessions made so far, by graph key: ``encoder`` and ``decoder`` (and a
        context bundle's ``context``), and ``prior`` once the learned prior was first sampled (it is
        created on first use)."""
        made = {self._enc.key: self._encoder, self._dec.key: self._decoder}
        if self._context is not None:
            made[self._ctx.key] = self._context
        return made if self._prior is None else {**made, contract.PRIOR.key: self._prior}

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
        n = integer(n, "number of samples")
        seed = None if seed is None else integer(seed, "seed")
        temperature = _number(temperature, "temperature")
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
        where = self._where(contract.PRIOR)
        parts = []
        for start in range(0, n, CHUNK):
            chunk = u[start : start + CHUNK]
            parts += _run(session, None, {contract.PRIOR.input_names[0]: chunk}, where)
            self._outputs(contract.PRIOR, contract.PRIOR.output_names, parts[-1:], len(chunk))
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
        steps = integer(steps, "interpolation steps", minimum=None)
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
