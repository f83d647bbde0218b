"""Integer context bundles: a float context bundle's context net made an integer net, on an integer
bundle's encoder and decoder, so its lossless files decode on every engine.

    edgevae-train integer-context   calibrate the float net on the integer decoder's outputs (epoch 0:
                                    post-training quantization), then quantization-aware fine-tuning
                                    (straight-through rounding) with the integer VAE frozen
    edgevae-train integer-context-export   the integer bundle's encoder.onnx and decoder.onnx byte for
                                    byte, the integer context.onnx (checked: ONNX Runtime == int64
                                    reference == torch, exactly), model.json with the float bundle's tile

The frozen VAE runs as its own ONNX graphs (runtime.EdgeVAE), so the z and mixture indices the net
trains on are exactly the ones coding sees; only the context net is in torch.
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

from edgevae.runtime import contract
from edgevae.runtime.errors import InputError
from edgevae.runtime.units import bits_per_dim
from edgevae.training import finetune, likelihood
from edgevae.training.context import ContextNet, group_masks
from edgevae.training.finetune import EVAL_BATCH, EVAL_SEED
from edgevae.training.integer import dequantize_mixture, dequantize_posterior
from edgevae.training.integer_context import IntegerContext, check_context_graph, context_graph
from edgevae.training.train import CHECKPOINT


@dataclass(frozen=True)
class IntegerContextConfig:
    """One integer context run: the two source bundles and how the net is calibrated and fine-tuned."""

    #: A float context bundle: the context net's starting weights, pixel groups and tile.
    context: str = "fashion-mnist-context2"
    #: An integer bundle without groups: the encoder and decoder, kept byte for byte.
    integer: str = "fashion-mnist-exact"
    epochs: int = 3
    lr: float = 2e-4
    batch_size: int = 128
    calibration_images: int = 2048
    #: Quantile of a channel's float activations that its 255 stands for.
    calibration_quantile: float = 0.9999
    seed: int = 0
    #: Torch and ONNX Runtime threads (float sums, hence the fine-tuned weights, depend on them).
    threads: int = 1

    def command(self, run_dir: str = "RUN_DIR") -> str:
        """The ``edgevae-train integer-context`` command line of this run."""
        return (f"edgevae-train integer-context {self.context} --integer {self.integer} --epochs {self.epochs} "
                f"--lr {self.lr:g} --batch-size {self.batch_size} --calibration-images {self.calibration_images} "
                f"--seed {self.seed} --threads {self.threads} --out {run_dir}")


@dataclass
class Sources:
    """The two source bundles, opened and checked against each other."""

    context: Any  # runtime Bundle of the float context bundle
    integer: Any  # runtime Bundle of the integer bundle
    vae: Any  # runtime EdgeVAE of the integer bundle
    net: ContextNet  # the float context net, with the context bundle's weights
    masks: torch.Tensor  # (G, 1, 1, H, W) bool

    @property
    def groups(self) -> int:
        return self.context.pixel_groups


def context_net_of(bundle: Any) -> ContextNet:
    """The float :class:`ContextNet` of a float context bundle, weights read from its context.onnx
    (initializers named ``context.<parameter>`` by the export)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(bundle.graph_bytes(contract.CONTEXT)).graph
    state = {i.name[len("context."):]: torch.from_numpy(numpy_helper.to_array(i).copy())
             for i in graph.initializer if i.name.startswith("context.")}
    convs = sorted(k for k in state if k.startswith("body.") and k.endswith(".weight"))
    if not convs or "head.weight" not in state:
        raise InputError(f"{bundle.path}: {contract.CONTEXT.file} is not a context net of edgevae-train context")
    hidden = state[convs[0]].shape[0]
    net = ContextNet(bundle.components, bundle.image_shape[0], hidden, len(convs))
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise InputError(f"{bundle.path}: {contract.CONTEXT.file}'s weights do not fit a context net: {e}") from None
    return net


def open_sources(config: IntegerContextConfig) -> Sources:
    """Both source bundles, InputError naming the problem if they are not a float context bundle and
    an integer bundle of the same image shape and mixture."""
    from edgevae.runtime.bundle import read_bundle
    from edgevae.runtime.model import EdgeVAE

    context, integer = read_bundle(config.context), read_bundle(config.integer)
    if context.arithmetic != contract.ARITHMETIC_FLOAT or context.pixel_groups == 1:
        raise InputError(f"{context.path}: not a float context bundle (model.json pixel_groups > 1)")
    if integer.arithmetic != contract.ARITHMETIC_INTEGER or integer.pixel_groups != 1:
        raise InputError(f"{integer.path}: not an integer bundle without pixel groups (model.json arithmetic)")
    if (context.image_shape, context.components) != (integer.image_shape, integer.components):
        raise InputError(f"{context.name} codes {context.image_shape} images with {context.components} components, "
                         f"{integer.name} {integer.image_shape} with {integer.components}: they do not fit together")
    _, h, w = context.image_shape
    return Sources(context, integer, EdgeVAE(integer, threads=config.threads), context_net_of(context),
                   group_masks(context.pixel_groups, h, w, context.pixel_tile))


def sample_indices(vae: Any, images: np.ndarray, eps: np.ndarray) -> tuple[tuple[torch.Tensor, ...], np.ndarray]:
    """The integer decoder's mixture indices (float64 tensors) at z = mean + sigma * eps of each
    image's posterior (as coding sees them), and each image's KL(q(z|x) || N(0, I)) in nats."""
    mean_index, logvar_index = vae.encode_indices(images)
    mean, logvar = dequantize_posterior(mean_index.astype(np.float64), logvar_index.astype(np.float64))
    z = mean + np.exp(0.5 * logvar) * eps
    idx = vae.likelihood_indices(vae.latent_indices(z))
    kl = 0.5 * (mean ** 2 + np.exp(logvar) - 1.0 - logvar).sum(1)
    return tuple(torch.from_numpy(a.astype(np.float64)) for a in (idx.logit_index, idx.mean_index,
                                                                  idx.log_scale_index)), kl


def grouped_nll(model: IntegerContext, masks: torch.Tensor, images: torch.Tensor,
                indices: tuple[torch.Tensor, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """-log p(x|z) in nats (N,) coded in pixel groups: group 0 under the decoder's indices, group g
    under the integer context net's given groups < g (all G - 1 passes in one batch)."""
    n, (c, h, w), g_count = len(images), images.shape[1:], len(masks) - 1
    idx = tuple(t.to(dtype) for t in indices)

    def nll(parts: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
        return -likelihood.log_prob(x, *(p.to(torch.float32) for p in dequantize_mixture(*parts)))

    total = (nll(idx, images) * masks[0]).flatten(1).sum(1)
    known = torch.cat([masks[:g].any(0).expand(n, c, h, w) for g in range(1, len(masks))]).to(dtype)
    x = images.repeat(g_count, 1, 1, 1)
    refined = model(*(t.repeat(g_count, 1, 1, 1, 1) for t in idx), x.to(dtype), known)
    per_group = nll(refined, x).reshape(g_count, n, c, h, w)
    for g in range(1, len(masks)):
        total = total + (per_group[g - 1] * masks[g]).flatten(1).sum(1)
    return total


@torch.inference_mode()
def evaluate(model: IntegerContext, sources: Sources, images: np.ndarray, seed: int = EVAL_SEED) -> dict[str, float]:
    """Negative ELBO (bits/dim) of ``images`` coded in groups with the integer net, one posterior
    sample per image from a fixed seed, and the integer decoder's own on the same z."""
    model.eval()
    eps = torch.randn(len(images), sources.vae.latent_dim, generator=torch.Generator().manual_seed(seed))
    recon = own = kl = 0.0
    for start in range(0, len(images), EVAL_BATCH):
        x = images[start:start + EVAL_BATCH]
        idx, k = sample_indices(sources.vae, x, eps[start:start + len(x)].numpy().astype(np.float64))
        xt = torch.from_numpy(x)
        recon += float(grouped_nll(model, sources.masks, xt, idx).sum())
        own += float(-likelihood.log_prob(xt, *(p.to(torch.float32) for p in dequantize_mixture(*idx))).sum())
        kl += float(k.sum())
    n, dims = len(images), int(np.prod(images.shape[1:]))
    return {"nelbo_bpd": bits_per_dim((recon + kl) / n, dims), "kl_bpd": bits_per_dim(kl / n, dims),
            "decoder_only_nelbo_bpd": bits_per_dim((own + kl) / n, dims)}


def _calibrate(model: IntegerContext, sources: Sources, train: np.ndarray, config: IntegerContextConfig) -> None:
    """Calibrate on ``calibration_images`` training images, each under one group's mask in turn."""
    rng = np.random.default_rng(config.seed)
    pick = np.sort(rng.choice(len(train), size=min(config.calibration_images, len(train)), replace=False))
    x = train[pick]
    idx, _ = sample_indices(sources.vae, x, rng.standard_normal((len(x), sources.vae.latent_dim)))
    n, (c, h, w) = len(x), x.shape[1:]
    known = torch.stack([sources.masks[:1 + i % (sources.groups - 1)].any(0)[0] for i in range(n)])
    model.calibrate(*idx, torch.from_numpy(x).to(torch.float64), known.expand(n, c, h, w).to(torch.float64),
                    config.calibration_quantile)


def train_integer_context(config: IntegerContextConfig, run_dir: str | Path, data_dir: str | Path | None = None,
                          resume: bool = False, progress: Callable[[int, str], Any] | None = None,
                          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Calibrate (epoch 0, evaluated and checkpointed), then fine-tune ``config.epochs`` epochs with
    straight-through rounding, evaluating on the test split and checkpointing after each. With
    ``resume`` continue RUN_DIR's run from its last checkpoint (its own config)."""
    from edgevae.training.data import bundle_dataset

    run = Path(run_dir)
    checkpoint = finetune.open_run(run, resume)
    if checkpoint is not None:
        config = IntegerContextConfig(**checkpoint["config"])
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    sources = open_sources(config)
    data = bundle_dataset(sources.context, data_dir)
    model = IntegerContext(sources.net)
    optimizer = torch.optim.Adam(model.net.parameters(), lr=config.lr)
    rng = np.random.default_rng(config.seed + 1)
    if checkpoint is None:
        _calibrate(model, sources, data.train, config)
        metrics = {"epoch": 0, "kind": "post-training quantization", **evaluate(model, sources, data.test),
                   "seconds": 0.0}
        finetune.save(run, model, optimizer, config, metrics, rng, time.time())
        log(f"epoch 0 (post-training quantization): {json.dumps(metrics)}")
    else:
        metrics = finetune.restore(checkpoint, model, optimizer, rng)

    def loss(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eps = torch.randn(len(x), sources.vae.latent_dim).numpy().astype(np.float64)
        idx, kl = sample_indices(sources.vae, x.numpy(), eps)
        nelbo = (grouped_nll(model, sources.masks, x, idx) + torch.from_numpy(kl).to(torch.float32)).mean()
        return nelbo, nelbo

    return finetune.train_epochs(run, model, optimizer, config, data.train, rng, metrics, loss,
                                 lambda: evaluate(model, sources, data.test), model.net.parameters(),
                                 "train_nelbo_bpd", extra={"kind": "quantization-aware fine-tuning"},
                                 label="nelbo", progress=progress, log=log)


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], IntegerContextConfig, Sources, IntegerContext]:
    """(checkpoint, config, sources, model with the run's weights and scales)."""
    run = Path(run_dir)
    if not (run / CHECKPOINT).is_file():
        raise InputError(f"{run / CHECKPOINT}: no checkpoint (is {run} an 'edgevae-train integer-context' run folder?)")
    checkpoint = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=False)
    config = IntegerContextConfig(**checkpoint["config"])
    sources = open_sources(config)
    model = IntegerContext(sources.net)
    model.load_state_dict(checkpoint["model"])
    return checkpoint, config, sources, model.eval()


def _parity_batches(sources: Sources, images: np.ndarray, seed: int) -> list[tuple[np.ndarray, ...]]:
    """Real inputs of the context graph: the decoder's indices at posterior samples of test images,
    under each group's mask, at batch sizes 1, 7 and 64."""
    rng = np.random.default_rng(seed)
    out = []
    for n in (1, 7, 64):
        x = images[rng.choice(len(images), size=n, replace=len(images) < n)]
        idx, _ = sample_indices(sources.vae, x, rng.standard_normal((n, sources.vae.latent_dim)))
        for g in range(1, sources.groups):
            known = np.broadcast_to(sources.masks[:g].any(0).numpy().astype(np.uint8), x.shape)
            out.append((*(t.numpy().astype(np.int32) for t in idx), x, np.ascontiguousarray(known)))
    return out


def graph_nelbo(folder: Path, images: np.ndarray, seed: int = EVAL_SEED, threads: int = 1) -> dict[str, float]:
    """Negative ELBO in bits/dim of a context bundle's graphs through the runtime (what lossless
    coding costs before the coder's overhead), one seeded posterior sample per image."""
    from edgevae.runtime.model import load

    vae = load(folder, threads=threads)
    eps = torch.randn(len(images), vae.latent_dim, generator=torch.Generator().manual_seed(seed)).numpy()
    total = 0.0
    for start in range(0, len(images), EVAL_BATCH):
        x = images[start:start + EVAL_BATCH]
        mean_index, logvar_index = vae.encode_indices(x)
        mean, logvar = dequantize_posterior(mean_index.astype(np.float64), logvar_index.astype(np.float64))
        z = mean + np.exp(0.5 * logvar) * eps[start:start + len(x)].astype(np.float64)
        total += float(-vae.log_likelihood(x, z).sum() + 0.5 * (mean ** 2 + np.exp(logvar) - 1.0 - logvar).sum())
    return {"nelbo_bpd": bits_per_dim(total / len(images), int(np.prod(images.shape[1:])))}


def export_integer_context(run_dir: str | Path, bundle_dir: str | Path, data_dir: str | Path | None = None,
                           force: bool = False) -> dict[str, Any]:
    """Export an integer context run as a bundle (see the module's docstring); its evaluation is the
    grouped negative ELBO of the test split through the exported graphs, one sample per image."""
    from edgevae.runtime import manifest as schema
    from edgevae.runtime.bundle import sha256_file
    from edgevae.training.data import bundle_dataset
    from edgevae.training.onnxgraph import library_versions, metadata_props, save_checked
    from edgevae.training.staging import check_target, staged_bundle

    checkpoint, config, sources, model = load_run(run_dir)
    net = model.network()
    data = bundle_dataset(sources.context, data_dir)
    target = Path(bundle_dir)
    check_target(target, force)
    manifest = json.loads(json.dumps(sources.integer.manifest))
    for key in ("codec", "evaluation", "parity", "novelty", "role", "prior", "variant", "high_quality_levels"):
        manifest.pop(key, None)  # facts about the source's graphs, its lossy codec, or roles the maintainers assign
    manifest["name"] = target.name
    manifest["pixel_groups"] = sources.groups
    if "pixel_tile" in sources.context.manifest:
        manifest["pixel_tile"] = sources.context.manifest["pixel_tile"]
    manifest["versions"] = library_versions()
    dims = contract.dims_of(sources.integer.image_shape, sources.integer.latent_dim, sources.integer.components)
    for spec in contract.coding_graphs(manifest):
        manifest["graphs"][spec.key] = spec.describe(dims)
    source_training = sources.integer.manifest.get("training", {})
    manifest["training"] = {
        "command": config.command(),
        "then": f"edgevae-train integer-context-export RUN_DIR -o {target.as_posix()}",
        "kind": f"integer context net: {sources.context.name}'s context net quantized on {sources.integer.name}'s "
                "integer decoder, then quantization-aware fine-tuning",
        "source_bundle": sources.integer.name,
        "source_training": source_training.get("command"),
        "context_bundle": sources.context.name,
        "context_training": sources.context.manifest.get("training", {}).get("command"),
        "model_config": source_training.get("model_config"),
        "integer_context_config": asdict(config),
        "data": source_training.get("data"),
        "data_fingerprint": source_training.get("data_fingerprint"),
        "epochs_trained": checkpoint["epoch"],
        "last_epoch_metrics": checkpoint["metrics"],
        "layers": [{"name": layer.name, "shift": [int(layer.shift.min()), int(layer.shift.max())],
                    "worst_partial_sum": int(layer.worst_sums().max())} for layer in net.layers],
    }
    props = metadata_props(manifest)
    props["edgevae.arithmetic"] = contract.ARITHMETIC_INTEGER
    with staged_bundle(target, force) as staging:
        for spec in contract.graphs_for(contract.ARITHMETIC_INTEGER):  # the integer bundle's own files
            shutil.copyfile(sources.integer.graph_path(spec), staging / spec.file)
            manifest["graphs"][spec.key]["sha256"] = sha256_file(staging / spec.file)
        spec = contract.INTEGER_CONTEXT
        save_checked(context_graph(net, dims, props), staging / spec.file)
        manifest["graphs"][spec.key]["sha256"] = sha256_file(staging / spec.file)
        manifest["parity"] = {"source_graphs": f"{sources.integer.name}'s encoder.onnx and decoder.onnx, byte for byte",
                              spec.key: check_context_graph(net, staging / spec.file, dims,
                                                            _parity_batches(sources, data.test, EVAL_SEED), model)}
        source_eval = sources.integer.manifest.get("evaluation", {})
        manifest["evaluation"] = {
            "images": len(data.test), "k": 1, "nelbo_bpd": checkpoint["metrics"]["nelbo_bpd"],
            "iwae_bpd": checkpoint["metrics"]["nelbo_bpd"],
            # the decoder is the integer bundle's, so is the image of the posterior mean
            "psnr_db": source_eval.get("psnr_db"), "seed": EVAL_SEED, "seconds": 0.0, "data": data.name,
            "split": "test", "method": "the run's torch evaluation (replaced below by the graphs')",
        }
        # written first so that the runtime loads the staged bundle for the graphs' evaluation
        (staging / contract.MANIFEST_FILE).write_bytes(schema.to_json(manifest, target / contract.MANIFEST_FILE))
        started = time.time()
        ours = graph_nelbo(staging, data.test)
        manifest["evaluation"].update({
            "nelbo_bpd": ours["nelbo_bpd"], "iwae_bpd": ours["nelbo_bpd"], "seconds": round(time.time() - started, 1),
            "method": "one posterior sample per image through the exported graphs and the runtime's grouped "
                      "likelihood (ONNX Runtime, 1 thread); k = 1, so iwae_bpd is the negative ELBO; psnr_db: "
                      "the integer decoder's image of the posterior mean (no pixel groups)",
            "source_nelbo_bpd": source_eval.get("nelbo_bpd"),
            "context_bundle_nelbo_bpd": sources.context.manifest.get("evaluation", {}).get("nelbo_bpd"),
        })
        (staging / contract.MANIFEST_FILE).write_bytes(schema.to_json(manifest, target / contract.MANIFEST_FILE))
    return manifest
