"""A context likelihood for lossless coding: pixels coded in groups, each conditioned on those before it.

A VAE's decoder gives every pixel an independent distribution given z, so the texture a 28x28
garment has beyond what 32 latent dimensions carry costs full price. Here the image is split into
G interleaved groups (runtime/contract.py PIXEL_GROUP_TILES); group 0 is coded with the decoder's
mixture, and every later group with that mixture refined by a small convolutional network that
sees the pixels of the groups before it:

    z --decoder--> mixture (logits, means, log-scales), every pixel     (group 0 is coded with it)
    mixture, pixels * known, known --context net--> refined mixture   (group g: known = groups < g)

The refinement is additive (zero-initialised, so training starts at the source VAE), and its
receptive field over the known pixels is the network's: 7x7 for three 3x3 layers. Decoding runs
the context net once per group after the first (G - 1 passes), encoding once per group on the
whole image; the latent side, and so bits-back coding of z, is unchanged.

Loss: the negative ELBO of this model, -log p(x|z) summed over the groups plus KL(q(z|x) || N(0, I)),
and ``aux_weight`` times the decoder's own NLL of the pixels after group 0, so decoder.onnx stays a
complete VAE decoder (its mean image is what ``decode`` and ``sample`` show). With ``frozen_vae``
only the context net trains (on z drawn from the frozen posterior) and the bundle keeps the source's
encoder.onnx and decoder.onnx byte for byte: on Fashion-MNIST the net alone gained 0.079 bits/dim
in its first epoch, against 0.005 while the VAE moved under it (BENCHMARKS.md §11).

The VAE starts from a shipped float bundle (weights read from its ONNX initializers, like
denoise.py and integer_run.py); training is resumable from the checkpoint of every epoch.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from edgevae.runtime import contract
from edgevae.runtime.errors import InputError
from edgevae.runtime.units import bits_per_dim
from edgevae.training import finetune, likelihood
from edgevae.training.finetune import EVAL_BATCH, EVAL_SEED
from edgevae.training.train import CHECKPOINT
from edgevae.training.model import VAE, gaussian_kl

#: The context net's learning rate over the VAE's.
CONTEXT_LR_FACTOR = 4.0


@dataclass(frozen=True)
class ContextConfig:
    """What a context run trains: the source bundle, the groups, the net's size and the schedule."""

    source: str = "fashion-mnist"
    groups: int = 4
    #: model.json ``pixel_tile`` (rows of group numbers); None: the default tile of ``groups``.
    tile: tuple[tuple[int, ...], ...] | None = None
    hidden: int = 32
    layers: int = 3
    aux_weight: float = 0.05
    #: Train the context net alone: encoder and decoder stay the source's, byte for byte.
    frozen_vae: bool = False
    epochs: int = 8
    batch_size: int = 128
    lr: float = 5e-4
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.tile is not None:  # a checkpoint's config holds lists
            object.__setattr__(self, "tile", tuple(tuple(row) for row in self.tile))
        contract.pixel_tile(self.groups, self.tile)  # ValueError naming what is wrong
        if self.groups < 2:
            raise ValueError("a context model needs at least 2 pixel groups")
        if self.hidden < 1 or self.layers < 1 or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("hidden, layers, epochs, batch size and learning rate must be positive")

    def command(self, run_dir: str = "RUN_DIR") -> str:
        """The ``edgevae-train context`` command line of this run."""
        tile = f" --tile {contract.tile_text(self.tile)}" if self.tile is not None else ""
        return (f"edgevae-train context {self.source} --groups {self.groups}{tile} --hidden {self.hidden} "
                f"--layers {self.layers} --aux-weight {self.aux_weight:g}{' --frozen-vae' if self.frozen_vae else ''} "
                f"--epochs {self.epochs} "
                f"--batch-size {self.batch_size} --lr {self.lr:g} --seed {self.seed} --threads {self.threads} "
                f"--out {run_dir}")


class ContextNet(nn.Module):
    """(mixture (N, K, C, H, W) x3, pixels (N, C, H, W), known (N, C, H, W)) -> refined mixture."""

    def __init__(self, components: int, channels: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.components, self.channels = components, channels
        params = 3 * components * channels
        body: list[nn.Module] = []
        width = params + 2 * channels
        for _ in range(layers):
            body += [nn.Conv2d(width, hidden, 3, padding=1), nn.ReLU()]
            width = hidden
        self.body = nn.Sequential(*body)
        self.head = nn.Conv2d(hidden, params, 1)
        nn.init.zeros_(self.head.weight)  # start as the identity: the source VAE's likelihood
        nn.init.zeros_(self.head.bias)

    def forward(self, logits: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor,
                pixels: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, k, c, h, w = logits.shape
        known = known.to(torch.float32)
        mixture = torch.cat([logits, means, log_scales], dim=1).reshape(n, 3 * k * c, h, w)
        x = torch.cat([mixture, likelihood.normalize(pixels) * known, known], dim=1)
        delta = self.head(self.body(x)).reshape(n, 3 * k, c, h, w)
        d_logits, d_means, d_scales = delta.split(k, dim=1)
        return (logits + d_logits, (means + d_means).clamp(-1.0, 1.0),
                (log_scales + d_scales).clamp(min=contract.MIN_LOG_SCALE))


def parse_tile(text: str) -> contract.Tile:
    """``--tile`` text (contract.tile_text) as rows of group numbers; ValueError if not numbers."""
    try:
        return tuple(tuple(int(g) for g in row.split(",")) for row in text.split("/"))
    except ValueError:
        raise ValueError(f"--tile {text!r}: rows of group numbers split by '/', the numbers by ',' "
                         "(e.g. 0,1/2,3)") from None


def group_masks(groups: int, height: int, width: int, tile: contract.Tile | None = None) -> torch.Tensor:
    """(G, 1, 1, H, W) bool: where each group's pixels are."""
    ids = torch.tensor(contract.pixel_group_map(groups, height, width, tile))
    return torch.stack([ids == g for g in range(groups)]).reshape(groups, 1, 1, height, width)


class ContextVAE(nn.Module):
    """A VAE whose likelihood is coded in pixel groups, each refined by :class:`ContextNet`."""

    def __init__(self, vae: VAE, groups: int, hidden: int, layers: int, tile: contract.Tile | None = None) -> None:
        super().__init__()
        self.vae = vae
        self.config = vae.config
        self.groups = groups
        c, h, w = vae.config.image_shape
        self.context = ContextNet(vae.config.mixture_components, c, hidden, layers)
        self.register_buffer("masks", group_masks(groups, h, w, tile), persistent=False)

    def group_nll(self, images: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(-log p(x|z) under the grouped likelihood, the decoder's own NLL of groups >= 1), nats (N,)."""
        mixture = self.vae.decode_params(latents)
        own = -likelihood.log_prob(images, *mixture)  # (N, C, H, W)
        n, c, h, w = images.shape
        total = (own * self.masks[0]).flatten(1).sum(1)
        later = (own * ~self.masks[0]).flatten(1).sum(1)
        g_count = self.groups - 1
        # the G - 1 passes in one batch: copy g sees the groups before g
        known = torch.cat([self.masks[:g].any(0).expand(n, c, h, w) for g in range(1, self.groups)])
        refined = self.context(*(t.repeat(g_count, 1, 1, 1, 1) for t in mixture), images.repeat(g_count, 1, 1, 1), known)
        nll = -likelihood.log_prob(images.repeat(g_count, 1, 1, 1), *refined).reshape(g_count, n, c, h, w)
        for g in range(1, self.groups):
            total = total + (nll[g - 1] * self.masks[g]).flatten(1).sum(1)
        return total, later

    def loss_terms(self, images: torch.Tensor, eps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        mean, logvar = self.vae.encoder(images)
        z = self.vae.reparameterize(mean, logvar, eps)
        recon, aux = self.group_nll(images, z)
        return {"recon": recon, "kl": gaussian_kl(mean, logvar).sum(1), "aux": aux}


@torch.inference_mode()
def evaluate(model: ContextVAE, images: np.ndarray, seed: int = EVAL_SEED) -> dict[str, float]:
    """Negative ELBO (bits/dim) of ``images`` under the grouped likelihood, one posterior sample per
    image from a fixed seed, and the source decoder's own NELBO on the same z."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    recon = kl = own = 0.0
    for start in range(0, len(images), EVAL_BATCH):
        x = torch.from_numpy(images[start:start + EVAL_BATCH])
        mean, logvar = model.vae.encoder(x)
        z = model.vae.reparameterize(mean, logvar, torch.randn(mean.shape, generator=generator))
        r, _ = model.group_nll(x, z)
        recon += float(r.sum())
        kl += float(gaussian_kl(mean, logvar).sum())
        own += float(model.vae.recon_nll(x, z).sum())
    n, dims = len(images), model.config.pixels
    return {"nelbo_bpd": bits_per_dim((recon + kl) / n, dims), "kl_bpd": bits_per_dim(kl / n, dims),
            "decoder_only_nelbo_bpd": bits_per_dim((own + kl) / n, dims)}


def build(config: ContextConfig) -> tuple[Any, dict[str, Any], ContextVAE]:
    """The source bundle, its manifest and the ContextVAE that starts from its float weights."""
    from edgevae.runtime.bundle import read_bundle
    from edgevae.training.denoise import load_bundle_vae

    bundle = read_bundle(config.source)
    if bundle.manifest.get("arithmetic", contract.ARITHMETIC_FLOAT) != contract.ARITHMETIC_FLOAT:
        raise InputError(f"{bundle.path}: an integer bundle; start from a float one")
    if bundle.manifest.get("pixel_groups", 1) != 1:
        raise InputError(f"{bundle.path}: already a context bundle; start from a plain VAE")
    vae, manifest = load_bundle_vae(config.source)
    tile, (_, h, w) = contract.pixel_tile(config.groups, config.tile), vae.config.image_shape
    if len(tile) > h or len(tile[0]) > w:
        raise InputError(f"the {len(tile)}x{len(tile[0])} tile does not fit in {bundle.name}'s {h}x{w} images")
    return bundle, manifest, ContextVAE(vae, config.groups, config.hidden, config.layers, config.tile)


def train_context(config: ContextConfig, run_dir: str | Path, data_dir: str | Path | None = None,
                  resume: bool = False, progress: Callable[[int, str], Any] | None = None,
                  log: Callable[[str], None] = print, stop_after: int | None = None) -> dict[str, Any]:
    """Train ``config.epochs`` epochs (evaluated on the test split and checkpointed after each);
    with ``resume`` continue RUN_DIR's run from its last checkpoint, under its own config.
    ``stop_after``: end after that epoch of the schedule (a later ``resume`` goes on from there).
    Returns the last epoch's metrics."""
    from edgevae.training.data import bundle_dataset

    run = Path(run_dir)
    checkpoint = finetune.open_run(run, resume)
    if checkpoint is not None:
        config = ContextConfig(**checkpoint["config"])
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)  # before the context net's initialisation
    bundle, _, model = build(config)
    data = bundle_dataset(bundle, data_dir)
    # the context net starts from scratch, the VAE from a trained bundle: the net learns faster
    groups = [{"params": model.context.parameters(), "lr": CONTEXT_LR_FACTOR * config.lr}]
    if config.frozen_vae:
        model.vae.requires_grad_(False)
    else:
        groups.append({"params": model.vae.parameters(), "lr": config.lr})
    optimizer = torch.optim.Adam(groups)
    rng = np.random.default_rng(config.seed + 1)
    if checkpoint is None:
        metrics = {"epoch": 0, **evaluate(model, data.test), "seconds": 0.0}
        finetune.save(run, model, optimizer, config, metrics, rng, time.time())
        log(f"epoch 0 (the source VAE): {json.dumps(metrics)}")
    else:
        metrics = finetune.restore(checkpoint, model, optimizer, rng)

    def loss(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        terms = model.loss_terms(x, torch.randn(len(x), model.config.latent_dim))
        nelbo = (terms["recon"] + terms["kl"]).mean()
        return (nelbo if config.frozen_vae else nelbo + config.aux_weight * terms["aux"].mean()), nelbo

    return finetune.train_epochs(run, model, optimizer, config, data.train, rng, metrics, loss,
                                 lambda: evaluate(model, data.test), model.parameters(), "train_nelbo_bpd",
                                 label="nelbo", before_epoch=model.vae.eval if config.frozen_vae else None,
                                 stop_after=stop_after, progress=progress, log=log)


# -- export --------------------------------------------------------------------------------------

class ContextGraph(nn.Module):
    """context.onnx: (decoder mixture, pixels, known) -> refined mixture, per contract.CONTEXT."""

    def __init__(self, model: ContextVAE) -> None:
        super().__init__()
        self.context = model.context

    # argument names are the graph's input names (contract.CONTEXT): the exporter keys the batch axis by them
    def forward(self, mixture_logits: torch.Tensor, mixture_means: torch.Tensor, mixture_log_scales: torch.Tensor,
                pixels: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.context(mixture_logits, mixture_means, mixture_log_scales, pixels, known)


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], ContextConfig, Any, dict[str, Any], ContextVAE]:
    """(checkpoint, config, source bundle, source manifest, trained ContextVAE) of a context run."""
    run = Path(run_dir)
    if not (run / CHECKPOINT).is_file():
        raise InputError(f"{run / CHECKPOINT}: no checkpoint (is {run} an edgevae-train context run folder?)")
    checkpoint = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=False)
    config = ContextConfig(**checkpoint["config"])
    source, manifest, model = build(config)
    model.load_state_dict(checkpoint["model"])
    return checkpoint, config, source, manifest, model.eval()


def check_context_parity(model: ContextVAE, folder: Path, images: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Max abs difference between ONNX Runtime's context.onnx and PyTorch, per output, on the
    decoder's mixtures of real images' posterior means, every group's known mask, several batches;
    ExportError beyond the contract's tolerance."""
    from edgevae.runtime.errors import ExportError
    from edgevae.runtime.model import new_session
    from edgevae.training.onnxgraph import PARITY_BATCHES

    spec = contract.CONTEXT
    session = new_session(folder / spec.file)
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != (spec.input_names, spec.output_names):
        raise ExportError(f"{spec.file}: names {names} != contract {(spec.input_names, spec.output_names)}")
    rng = np.random.default_rng(seed)
    c, h, w = model.config.image_shape
    diffs = {name: 0.0 for name in spec.output_names}
    for n in PARITY_BATCHES:
        x = torch.from_numpy(images[rng.choice(len(images), size=n, replace=len(images) < n)])
        with torch.inference_mode():
            mixture = model.vae.decode_params(model.vae.encoder(x)[0])
        for g in range(1, model.groups):
            known = model.masks[:g].any(0).expand(n, c, h, w).to(torch.uint8)
            feeds = [t.numpy() for t in (*mixture, x, known)]
            got = session.run(None, dict(zip(spec.input_names, feeds)))
            with torch.inference_mode():
                want = [t.numpy() for t in model.context(*mixture, x, known)]
            for name, a, b in zip(spec.output_names, got, want):
                diffs[name] = max(diffs[name], float(np.max(np.abs(a.astype(np.float64) - b))))
    worst = {k: v for k, v in diffs.items() if not v <= contract.PARITY_TOLERANCE}
    if worst:
        raise ExportError(f"export validation failed: {spec.file} differs from PyTorch by {worst}")
    return diffs


@torch.inference_mode()
def _mean_image_psnr(model: ContextVAE, images: np.ndarray) -> float:
    from edgevae.runtime.images import psnr

    out = [model.vae.mean_image(model.vae.encoder(torch.from_numpy(images[s:s + EVAL_BATCH]))[0]).numpy()
           for s in range(0, len(images), EVAL_BATCH)]
    return float(psnr(images, np.concatenate(out)).mean())


def export_context(run_dir: str | Path, bundle_dir: str | Path, data_dir: str | Path | None = None,
                   force: bool = False) -> dict[str, Any]:
    """Export a context run as a bundle: encoder.onnx and decoder.onnx (the fine-tuned VAE, checked
    like any export), context.onnx (checked against PyTorch on every group's mask), model.json with
    ``pixel_groups``; no codec tables (a context bundle is for lossless coding). Its evaluation is
    the grouped negative ELBO of the test split, one posterior sample per image."""
    from edgevae.runtime import manifest as schema
    from edgevae.runtime.bundle import sha256_file
    from edgevae.training.data import bundle_dataset
    from edgevae.training.export import DecoderGraph, EncoderGraph, check_parity
    from edgevae.training.onnxgraph import EXAMPLE_BATCH, export_graph, library_versions, metadata_props
    from edgevae.training.staging import check_target, staged_bundle

    checkpoint, config, source, source_manifest, model = load_run(run_dir)
    data = bundle_dataset(source, data_dir)
    target = Path(bundle_dir)
    check_target(target, force)
    manifest = json.loads(json.dumps(source_manifest))
    for key in ("codec", "evaluation", "parity", "novelty", "role", "prior", "variant", "high_quality_levels"):
        manifest.pop(key, None)  # facts about the source's graphs, its lossy codec, or roles the maintainers assign
    manifest["graphs"].pop(contract.PRIOR.key, None)  # fitted on the source encoder's latents
    manifest["name"] = target.name
    manifest["pixel_groups"] = config.groups
    if config.tile is not None:
        manifest["pixel_tile"] = [list(row) for row in config.tile]
    manifest["versions"] = library_versions()
    c, h, w = model.config.image_shape
    dims = contract.dims_of(model.config.image_shape, model.config.latent_dim, model.config.mixture_components)
    for spec in contract.coding_graphs(manifest):
        manifest["graphs"][spec.key] = spec.describe(dims)
    stopped = f" --stop-after {checkpoint['epoch']}" if checkpoint["epoch"] < config.epochs else ""
    manifest["training"] = {
        "command": config.command() + stopped,
        "then": f"edgevae-train context-export RUN_DIR -o {target.as_posix()}",
        "kind": f"context likelihood: {config.groups} pixel groups, the source VAE fine-tuned with a context net",
        "source_bundle": source.name,
        "source_training": source_manifest.get("training", {}).get("command"),
        "model_config": source_manifest["training"]["model_config"],
        "train_config": source_manifest["training"]["train_config"],
        "context_config": asdict(config),
        "data": source_manifest["training"].get("data"),
        "data_fingerprint": source_manifest["training"].get("data_fingerprint"),
        "epochs_trained": checkpoint["epoch"],
        "last_epoch_metrics": checkpoint["metrics"],
    }
    props = metadata_props(manifest)
    mixture = (EXAMPLE_BATCH, model.config.mixture_components, c, h, w)

    def image() -> torch.Tensor:
        return torch.zeros(EXAMPLE_BATCH, c, h, w, dtype=torch.uint8)

    # distinct example tensors: the exporter takes inputs given the same tensor for one input
    context_inputs = (torch.zeros(mixture), torch.zeros(mixture), torch.zeros(mixture), image(), image())
    graphs = ((contract.ENCODER, EncoderGraph(model.vae), image()),
              (contract.DECODER, DecoderGraph(model.vae), torch.zeros(EXAMPLE_BATCH, model.config.latent_dim)),
              (contract.CONTEXT, ContextGraph(model), context_inputs))
    with staged_bundle(target, force) as staging:
        for spec, module, example in graphs:
            if config.frozen_vae and spec is not contract.CONTEXT:  # the source's own files, byte for byte
                shutil.copyfile(source.graph_path(spec), staging / spec.file)
            else:
                export_graph(module, example, spec, staging / spec.file, props)
            manifest["graphs"][spec.key]["sha256"] = sha256_file(staging / spec.file)
        manifest["parity"] = check_parity(model.vae, staging, data.test)
        manifest["parity"]["max_abs_diff"][contract.CONTEXT.key] = check_context_parity(model, staging, data.test)
        started = time.time()
        metrics = evaluate(model, data.test)
        manifest["evaluation"] = {
            "images": len(data.test), "k": 1, "nelbo_bpd": metrics["nelbo_bpd"], "iwae_bpd": metrics["nelbo_bpd"],
            "psnr_db": _mean_image_psnr(model, data.test), "seed": EVAL_SEED,
            "seconds": round(time.time() - started, 1), "data": data.name, "split": "test",
            "method": "PyTorch, one posterior sample per image; k = 1, so iwae_bpd is the negative ELBO; "
                      "psnr_db: decoder.onnx's mean image at the posterior mean (no pixel groups)",
            "kl_bpd": metrics["kl_bpd"], "decoder_only_nelbo_bpd": metrics["decoder_only_nelbo_bpd"],
        }
        (staging / contract.MANIFEST_FILE).write_bytes(schema.to_json(manifest, target / contract.MANIFEST_FILE))
    return manifest
