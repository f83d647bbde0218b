"""Learned priors for sampling: fit a density over a bundle's latents, export ``prior.onnx``.

A VAE trained with an N(0, I) prior does not fill N(0, I): its aggregate posterior
q(z) = E_x q(z|x) leaves "holes" that N(0, I) samples fall into, and the decoder turns those
into blurred, half-formed images. Decoding z drawn from q(z) instead gives images close to the
data (see benchmarks/samples.py). A learned prior is a second, small generative model fitted on
the first one's latents z ~ q(z|x) of the training images, which maps standard normal noise u to
such a z:

    images --bundle's encoder.onnx--> q(z|x) --draw z (fresh each epoch)--> fit the prior on z
    u ~ N(0, I) (times a temperature) --prior.onnx--> z --decoder.onnx--> image

Two kinds, one graph contract (``noise`` float32 [batch, noise] -> ``latents`` float32
[batch, latent], :data:`edgevae.runtime.contract.PRIOR`):

- ``flow``: a RealNVP normalizing flow (Dinh et al. 2017, "Density estimation using Real NVP"):
  affine coupling layers whose scale and shift come from MLPs on the other half of z; trained by
  exact maximum likelihood, sampled by running the couplings backwards. noise dim = latent dim.
- ``two-stage``: the two-stage VAE of Dai & Wipf 2019 ("Diagnosing and enhancing VAE models"):
  a second VAE on z with a Gaussian decoder of learned global variance gamma; its decoder mean
  is the map u -> z.

Both standardize z first (per-dimension mean and std of the training latents, stored in the
graph). The fit touches only the bundle's encoder (through ONNX Runtime, so an int8 bundle's
prior is fitted on its own latents); the encoder, decoder and codec tables are not changed, and
the prior graph stays out of the bundle fingerprint that containers record.
"""

from __future__ import annotations

import contextlib
import math
import shlex
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from edgevae.runtime import contract
from edgevae.runtime.bundle import Bundle, read_bundle, sha256_bytes, update_manifest
from edgevae.runtime.errors import ExportError, InputError, OutputError
from edgevae.training.onnxgraph import EXAMPLE_BATCH, PARITY_BATCHES, export_graph, library_versions, metadata_props
from edgevae.training.model import gaussian_kl

#: The kinds of prior ``fit_prior`` can train.
PRIOR_KINDS = ("flow", "two-stage")
#: Latents per optimizer step.
BATCH_SIZE = 512


@dataclass(frozen=True)
class PriorConfig:
    """What to fit: the kind, its sizes and the optimisation."""

    kind: str = "flow"
    #: Hidden width of every MLP.
    hidden: int = 128
    #: Coupling layers (flow) or hidden layers per MLP (two-stage).
    layers: int = 16
    epochs: int = 30
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in PRIOR_KINDS:
            raise InputError(f"unknown prior kind {self.kind!r}; choose one of {', '.join(PRIOR_KINDS)}")
        for name in ("hidden", "layers", "epochs"):
            if getattr(self, name) < 1:
                raise InputError(f"prior {name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise InputError(f"prior learning rate must be > 0, got {self.lr}")


def _mlp(inputs: int, hidden: int, outputs: int, depth: int = 2) -> nn.Sequential:
    """``depth`` hidden ReLU layers; the last layer starts at zero so a new coupling is the identity."""
    layers: list[nn.Module] = []
    width = inputs
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    last = nn.Linear(width, outputs)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class Standardize(nn.Module):
    """z <-> (z - mean) / std with per-dimension constants of the training latents."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean

    def log_det(self) -> torch.Tensor:
        """log |d standardized / d z| per vector."""
        return -torch.log(self.std).sum()


class Coupling(nn.Module):
    """One affine coupling: the dimensions where ``mask`` is 1 pass through and set the scale
    and shift of the others. Scales are bounded by ``tanh`` so early training cannot explode."""

    #: Largest |log scale| one coupling may apply.
    MAX_LOG_SCALE = 3.0

    def __init__(self, mask: torch.Tensor, hidden: int) -> None:
        super().__init__()
        dim = int(mask.numel())
        self.register_buffer("mask", mask.float())
        self.net = _mlp(dim, hidden, 2 * dim)

    def _scale_shift(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_scale, shift = self.net(kept).chunk(2, dim=1)
        free = 1 - self.mask
        return self.MAX_LOG_SCALE * torch.tanh(raw_scale / self.MAX_LOG_SCALE) * free, shift * free

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data -> noise direction; returns (y, log |det dy/dx|) per vector."""
        kept = x * self.mask
        log_scale, shift = self._scale_shift(kept)
        return kept + (1 - self.mask) * (x * torch.exp(log_scale) + shift), log_scale.sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Noise -> data direction."""
        kept = y * self.mask
        log_scale, shift = self._scale_shift(kept)
        return kept + (1 - self.mask) * (y - shift) * torch.exp(-log_scale)


class Flow(nn.Module):
    """RealNVP over standardized z: ``layers`` couplings, each pair on a fresh random half split."""

    def __init__(self, dim: int, hidden: int, layers: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        masks = []
        for i in range(layers):
            if i % 2 == 0:
                mask = torch.zeros(dim)
                mask[torch.randperm(dim, generator=generator)[: dim // 2]] = 1
            else:
                mask = 1 - masks[-1]
            masks.append(mask)
        self.couplings = nn.ModuleList(Coupling(m, hidden) for m in masks)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log density of standardized latents x (N, D), nats per vector."""
        log_det = torch.zeros(len(x))
        for coupling in self.couplings:
            x, ld = coupling(x)
            log_det = log_det + ld
        return _normal_log_prob(x) + log_det

    def generate(self, u: torch.Tensor) -> torch.Tensor:
        for coupling in reversed(self.couplings):
            u = coupling.inverse(u)
        return u


class TwoStage(nn.Module):
    """Second-stage VAE of Dai & Wipf 2019 on standardized z: Gaussian decoder N(dec(u), gamma^2 I)
    with one learned gamma, whose shrinking during training is what makes the second stage match
    q(z) (their Section 4)."""

    def __init__(self, dim: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.encoder = _mlp(dim, hidden, 2 * dim, depth=layers)
        self.decoder = _mlp(dim, hidden, dim, depth=layers)
        nn.init.normal_(self.decoder[-1].weight, std=0.01)  # a zero decoder has no gradient to u
        self.log_gamma = nn.Parameter(torch.zeros(()))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """ELBO (a lower bound on the log density), nats per vector, one u sample."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        logvar = logvar.clamp(-12, 6)
        u = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        recon = self.decoder(u)
        gamma2 = torch.exp(2 * self.log_gamma)
        log_lik = -0.5 * (((x - recon) ** 2) / gamma2 + 2 * self.log_gamma + math.log(2 * math.pi)).sum(1)
        kl = gaussian_kl(mean, logvar).sum(1)
        return log_lik - kl

    def generate(self, u: torch.Tensor) -> torch.Tensor:
        return self.decoder(u)


def _normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * (x**2 + math.log(2 * math.pi)).sum(1)


class PriorModel(nn.Module):
    """Standardization + density model: ``log_prob`` of raw latents, ``forward`` noise -> latents."""

    def __init__(self, config: PriorConfig, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        dim = len(mean)
        self.config = config
        self.standardize = Standardize(mean, std)
        self.body = (Flow(dim, config.hidden, config.layers, config.seed) if config.kind == "flow"
                     else TwoStage(dim, config.hidden, min(config.layers, 4)))

    @property
    def noise_dim(self) -> int:
        return int(self.standardize.mean.numel())

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) (flow: exact; two-stage: its ELBO), nats per vector."""
        return self.body.log_prob(self.standardize(z)) + self.standardize.log_det()

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        """The graph ``prior.onnx``: noise (N, noise) -> latents (N, D)."""
        return self.standardize.inverse(self.body.generate(noise))


# -- fitting ------------------------------------------------------------------------------------

@dataclass
class Latents:
    """Posterior moments of a data set's images under a bundle's encoder, float32 (N, D) each."""

    mean: np.ndarray
    logvar: np.ndarray

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One z ~ q(z|x) per image."""
        eps = rng.standard_normal(self.mean.shape, dtype=np.float32)
        return self.mean + np.exp(0.5 * self.logvar) * eps


@dataclass
class FitResult:
    """A fitted prior and what was measured while fitting it."""

    model: PriorModel
    metrics: dict[str, Any] = field(default_factory=dict)


def fit_prior(train: Latents, test: Latents, config: PriorConfig,
              progress: Callable[[int, str], Any] | None = None,
              log: Callable[[str], None] = lambda _: None) -> FitResult:
    """Fit a prior on fresh z ~ q(z|x) of ``train`` every epoch (Adam, one-cycle schedule).

    Test metric: mean negative log density (two-stage: its ELBO bound) of one seeded draw of
    z ~ q(z|x) per test image, in nats per latent dimension, beside N(0, I)'s on the same draws.
    ``progress(total_steps, label)`` must return a context manager yielding an object with
    ``update(n)`` and a writable ``loss`` text (the CLI passes a click progress bar), as in
    :func:`edgevae.training.train.train`.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    dim = train.mean.shape[1]
    # The aggregate posterior's per-dimension moments: mean of the means, variance by the law of
    # total variance (variance of the means + mean posterior variance).
    mu = train.mean.mean(0)
    std = np.sqrt(train.mean.var(0) + np.exp(train.logvar).mean(0)).astype(np.float32)
    model = PriorModel(config, mu, std)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps_per_epoch = math.ceil(len(train.mean) / BATCH_SIZE)
    total = config.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total, pct_start=0.05)
    test_z = torch.from_numpy(test.draw(np.random.default_rng(config.seed + 1)))
    start = time.perf_counter()
    history = []
    with progress(total, f"fitting {config.kind} prior") if progress else contextlib.nullcontext() as bar:
        for epoch in range(config.epochs):
            _epoch(model, optimizer, schedule, train, rng, bar)
            history.append({"epoch": epoch + 1, "test_nll": _test_nll(model, test_z)})
            log(f"epoch {epoch + 1}/{config.epochs}: test {history[-1]['test_nll']:.4f} nats/dim")
    normal = float(-_normal_log_prob(test_z).mean() / dim)
    metrics = {
        "test_nll_nats_per_dim": history[-1]["test_nll"],
        "test_nll_normal_nats_per_dim": normal,
        "test_nll_is": "exact" if config.kind == "flow" else "upper bound (negative ELBO, one sample)",
        "train_seconds": round(time.perf_counter() - start, 1),
        "history": history,
    }
    return FitResult(model.eval(), metrics)


def _epoch(model: PriorModel, optimizer: Any, schedule: Any, train: Latents, rng: np.random.Generator,
           bar: Any) -> None:
    """One pass over a fresh draw z ~ q(z|x) of every training image."""
    model.train()
    z = torch.from_numpy(train.draw(rng))
    for idx in torch.from_numpy(rng.permutation(len(z))).split(BATCH_SIZE):
        loss = -model.log_prob(z[idx]).mean() / z.shape[1]
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        schedule.step()
        if bar is not None:
            bar.loss = f"{float(loss.detach()):.4f} nats/dim"
            bar.update(1)


def _test_nll(model: PriorModel, z: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        torch.manual_seed(0)  # the two-stage bound draws u
        return float(-model.log_prob(z).mean() / z.shape[1])


# -- export -------------------------------------------------------------------------------------

def _validate(model: PriorModel, path: Path, latent_dim: int, seed: int = 0) -> dict[str, Any]:
    """ONNX Runtime against PyTorch: names, then shapes and dtypes, then values."""
    from edgevae.runtime.model import new_session

    spec = contract.PRIOR
    session = new_session(path)
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != (spec.input_names, spec.output_names):
        raise ExportError(f"{spec.file}: names {names} != contract {(spec.input_names, spec.output_names)}")
    rng = np.random.default_rng(seed)
    failures, worst = [], 0.0
    for n in PARITY_BATCHES:
        noise = rng.standard_normal((n, model.noise_dim)).astype(np.float32)
        [got] = session.run(None, {spec.inputs[0].name: noise})
        with torch.inference_mode():
            want = model(torch.from_numpy(noise)).numpy()
        if got.shape != (n, latent_dim) or got.dtype != np.float32:
            failures.append(f"latents at batch {n}: {got.dtype}{list(got.shape)}, contract says float32[{n}, {latent_dim}]")
            continue
        worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - want))))
    tolerance = spec.outputs[0].tolerance
    if not worst <= tolerance:
        failures.append(f"latents: max abs diff {worst:.3g} > {tolerance:g}")
    if failures:
        raise ExportError(f"{spec.file}: export validation failed: " + "; ".join(failures))
    return {"tolerance": tolerance, "batch_sizes": list(PARITY_BATCHES),
            "inputs": "N(0, I) noise", "max_abs_diff": {"latents": worst}}


def prior_command(bundle_dir: str, config: PriorConfig) -> str:
    """The ``edgevae-train prior`` command line that fits ``config`` into ``bundle_dir``."""
    return (f"edgevae-train prior {shlex.quote(str(bundle_dir))} --kind {config.kind} --hidden {config.hidden} "
            f"--layers {config.layers} --epochs {config.epochs} --lr {config.lr:g} --seed {config.seed}")


def export_prior(result: FitResult, bundle: Bundle, command: str, fitted_on: dict[str, Any]) -> dict[str, Any]:
    """Write ``prior.onnx`` into ``bundle``'s folder, check it, and record it in model.json.

    The graph is exported and validated in a temporary file first; then prior.onnx and model.json
    are replaced together, all or nothing (:func:`edgevae.runtime.bundle.update_manifest`). The encoder, decoder and codec tables are untouched,
    so the bundle fingerprint is unchanged. Returns the new manifest.
    """
    model, spec = result.model, contract.PRIOR
    dims = contract.dims_of(bundle.image_shape, bundle.latent_dim, bundle.components, noise=model.noise_dim)
    props = {**metadata_props(bundle.manifest), "edgevae.prior_kind": model.config.kind,
             "edgevae.prior_command": command}
    with tempfile.TemporaryDirectory(prefix=".prior-", dir=bundle.path) as tmp:
        staged = Path(tmp) / spec.file
        example = torch.zeros(EXAMPLE_BATCH, model.noise_dim)
        export_graph(model.eval(), example, spec, staged, props)
        parity = _validate(model, staged, bundle.latent_dim)
        graph = staged.read_bytes()
    entry = {**spec.describe(dims), "sha256": sha256_bytes(graph)}
    prior = {
        "kind": model.config.kind,
        "noise_dim": model.noise_dim,
        "description": ("RealNVP flow (Dinh et al. 2017)" if model.config.kind == "flow"
                        else "two-stage VAE decoder (Dai & Wipf 2019)")
                       + " fitted on z ~ q(z|x) of the training images; u ~ N(0, I) -> z",
        "command": command,
        "config": asdict(model.config),
        "fitted_on": fitted_on,
        "metrics": {k: v for k, v in result.metrics.items() if k != "history"},
        "parity": parity,
        "versions": library_versions(),
    }
    return update_manifest(bundle, {f"graphs.{spec.key}": entry, "prior": prior}, files={spec.file: graph}).manifest


def encode_latents(bundle: Bundle, images: np.ndarray, threads: int | None = None) -> Latents:
    """Posterior moments of ``images`` under the bundle's own encoder.onnx (ONNX Runtime)."""
    from edgevae.runtime.model import EdgeVAE

    mean, logvar = EdgeVAE(bundle, threads=threads).encode(images)
    return Latents(mean, logvar)


def add_prior(bundle_dir: str | Path, config: PriorConfig, data_dir: str | Path | None = None,
              force: bool = False, progress: Callable[[int, str], Any] | None = None,
              log: Callable[[str], None] = lambda _: None, command_dir: str | None = None) -> dict[str, Any]:
    """Fit a prior on the training set recorded in ``bundle_dir``'s manifest and export it there.

    Refuses a bundle that already has a prior unless ``force``. ``command_dir`` is how the
    bundle is named in the recorded command (default: as given). Returns the new manifest.
    """
    from edgevae.training.data import bundle_dataset

    bundle = read_bundle(bundle_dir)
    if contract.PRIOR.key in bundle.manifest["graphs"] and not force:
        raise OutputError(f"{bundle.path}: already has a prior ({contract.PRIOR.file}); pass --force to replace it")
    data = bundle_dataset(bundle, data_dir)
    log(f"encoding {len(data.train)} training and {len(data.test)} test images with {bundle.name}'s encoder")
    train, test = encode_latents(bundle, data.train), encode_latents(bundle, data.test)
    result = fit_prior(train, test, config, progress=progress, log=log)
    fitted_on = {"data": data.name, "data_fingerprint": data.fingerprint, "split": "train",
                 "images": len(data.train), "latents": "a fresh z ~ q(z|x) per image and epoch"}
    command = prior_command(command_dir or str(bundle_dir), config)
    return export_prior(result, bundle, command, fitted_on)
