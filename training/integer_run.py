"""Make an integer bundle from a float one: calibrate, fine-tune with the integer network in the
loop (quantization-aware training), export the integer graphs and prove them exact.

    float bundle (ONNX initializers) --calibrate activation steps on training images-->
    IntegerVAE (epoch 0 = post-training quantization) --fine-tune: negative ELBO of the integer
    network (straight-through rounding), checkpoint every epoch--> RUN_DIR/last.pt
    RUN_DIR --integer-export--> encoder.onnx + decoder.onnx (integer contract) + codec.json + model.json

The loss is the negative ELBO as the bundle's coders see it: posterior on its grids (mean
2**-10, log-variance 1/64), z = mean + sigma * eps rounded to 2**-8 (the decoder's int input),
the discretized logistic mixture (:mod:`edgevae.training.likelihood`) on the dequantized decoder
outputs; KL of the grid posterior to N(0, I). A codec source (``distortion_sigma`` > 0 in its
training record) also gets the squared error of ``pixels`` (the integer decoder's image), as its
float training had for the mixture mean.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from edgevae.runtime import contract, manifest as schema
from edgevae.runtime.errors import InputError
from edgevae.runtime.units import bits_per_dim
from edgevae.training import finetune, likelihood
from edgevae.training.integer import (IntegerVAE, check_graphs, decoder_graph, dequantize_mixture,
                                      dequantize_posterior, encoder_graph, latent_indices, round_ste)
from edgevae.training.evaluate import EVALUATION_FILE as EVALUATION
from edgevae.training.model import gaussian_kl
from edgevae.training.finetune import EVAL_BATCH, EVAL_SEED
from edgevae.training.train import CHECKPOINT


@dataclass(frozen=True)
class IntegerConfig:
    """One integer run: the source bundle and how it is calibrated and fine-tuned."""

    source: str = "fashion-mnist"
    epochs: int = 4
    lr: float = 1e-4
    batch_size: int = 128
    calibration_images: int = 4096
    seed: int = 0
    #: Quantile of a channel's float activations that its 255 stands for.
    calibration_quantile: float = 0.9999
    #: Torch threads the run used (float sums, hence the fine-tuned weights, depend on it).
    threads: int = 1

    def command(self, run_dir: str = "RUN_DIR") -> str:
        """The ``edgevae-train integer`` command line of this run."""
        return (f"edgevae-train integer {self.source} --epochs {self.epochs} --lr {self.lr:g} "
                f"--batch-size {self.batch_size} --calibration-images {self.calibration_images} "
                f"--seed {self.seed} --threads {self.threads} --out {run_dir}")


def load_source(source: str) -> tuple[Any, dict[str, Any], IntegerVAE]:
    """The source bundle, its manifest and a (not yet calibrated) IntegerVAE of its float weights."""
    from edgevae.runtime.bundle import read_bundle
    from edgevae.training.denoise import load_bundle_vae

    bundle = read_bundle(source)
    if bundle.manifest.get("arithmetic", contract.ARITHMETIC_FLOAT) != contract.ARITHMETIC_FLOAT:
        raise InputError(f"{bundle.path}: already an integer bundle; start from a float one")
    vae, manifest = load_bundle_vae(source)
    return bundle, manifest, IntegerVAE(vae)


def distortion_sigma(manifest: dict[str, Any]) -> float:
    return float(((manifest.get("training") or {}).get("train_config") or {}).get("distortion_sigma", 0.0))


def loss_terms(model: IntegerVAE, images: torch.Tensor, eps: torch.Tensor, sigma: float = 0.0,
               dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Per-image terms in nats (recon, kl, and with ``sigma`` > 0 the distortion) of the integer
    network, differentiable straight through every rounding; also the integer ``pixels`` image."""
    mean_i, logvar_i = model.encode_indices(images, dtype)
    mean, logvar = dequantize_posterior(mean_i, logvar_i)
    z = mean + torch.exp(0.5 * logvar) * eps.to(dtype)
    low, high = contract.index_range("latents")
    z_i = round_ste(z * (1 << contract.LATENT_INPUT_BITS)).clamp(low, high)
    logit_i, means_i, scale_i = model.decode_indices(z_i, dtype)
    logits, means, log_scales = dequantize_mixture(logit_i, means_i, scale_i)
    recon = -likelihood.log_prob(images, logits, means, log_scales).flatten(1).sum(1)
    kl = gaussian_kl(mean, logvar).sum(1)
    heaviest = means_i.gather(1, logit_i.argmax(dim=1, keepdim=True))[:, 0]
    pixels = (heaviest + contract.MEAN_SUBSTEPS // 2) / contract.MEAN_SUBSTEPS  # differentiable level
    out = {"recon": recon, "kl": kl, "pixels": pixels}
    if sigma > 0:
        out["distortion"] = ((pixels - images.to(dtype)) ** 2).flatten(1).sum(1) / (2 * sigma ** 2)
    return out


@torch.no_grad()
def evaluate(model: IntegerVAE, images: np.ndarray, seed: int = EVAL_SEED, sigma: float = 0.0) -> dict[str, float]:
    """Negative ELBO (one posterior sample per image, seeded), its parts, in bits/dim, and the PSNR
    of ``pixels`` decoded from the posterior mean, over ``images``. torch float32."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(len(images), model.config.latent_dim, generator=gen)
    totals = {"recon": 0.0, "kl": 0.0, "distortion": 0.0}
    sse = []
    for start in range(0, len(images), EVAL_BATCH):
        x = torch.from_numpy(images[start : start + EVAL_BATCH])
        terms = loss_terms(model, x, eps[start : start + EVAL_BATCH], sigma)
        for key in totals:
            if key in terms:
                totals[key] += float(terms[key].double().sum())
        # PSNR of the image decoded from the posterior mean (what the lossy codec's best level approaches)
        mean_i, _ = model.encode_indices(x)
        logit_i, means_i, _ = model.decode_indices(torch.round(mean_i / (1 << (contract.POSTERIOR_MEAN_BITS
                                                                              - contract.LATENT_INPUT_BITS))))
        heaviest = means_i.gather(1, logit_i.argmax(dim=1, keepdim=True))[:, 0]
        pixels = torch.div(heaviest + contract.MEAN_SUBSTEPS // 2, contract.MEAN_SUBSTEPS, rounding_mode="floor")
        sse.append(((pixels.double() - x.double()) ** 2).flatten(1).mean(1))
    dims, n = model.config.pixels, len(images)
    mse = torch.cat(sse).clamp(min=1e-10)
    out = {"nelbo_bpd": bits_per_dim((totals["recon"] + totals["kl"]) / n, dims),
           "recon_bpd": bits_per_dim(totals["recon"] / n, dims), "kl_bpd": bits_per_dim(totals["kl"] / n, dims),
           "psnr_db": float((10 * torch.log10(255.0 ** 2 / mse)).mean())}
    if sigma > 0:
        out["distortion_bpd"] = bits_per_dim(totals["distortion"] / n, dims)
    return out


def _calibration(model: IntegerVAE, train: np.ndarray, config: IntegerConfig) -> None:
    rng = np.random.default_rng(config.seed)
    pick = rng.choice(len(train), size=min(config.calibration_images, len(train)), replace=False)
    images = torch.from_numpy(train[np.sort(pick)])
    gen = torch.Generator().manual_seed(config.seed)
    with torch.no_grad():
        mean, logvar = model.vae.encoder(images)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)
        z = torch.round(z * (1 << contract.LATENT_INPUT_BITS)) / (1 << contract.LATENT_INPUT_BITS)
    model.calibrate(images, z, config.calibration_quantile)


def train_integer(config: IntegerConfig, run_dir: str | Path, data_dir: str | Path | None = None,
                  resume: bool = False, progress: Callable[[int, str], Any] | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Calibrate (epoch 0 = post-training quantization, evaluated and checkpointed), then fine-tune
    ``config.epochs`` epochs, checkpointing and evaluating on the test split after each. With
    ``resume`` continue RUN_DIR's run from its last checkpoint (its own config). Returns the last
    epoch's metrics."""
    from edgevae.training.data import bundle_dataset

    run = Path(run_dir)
    checkpoint = finetune.open_run(run, resume)
    if checkpoint is not None:
        config = IntegerConfig(**checkpoint["config"])
    bundle, manifest, model = load_source(config.source)
    data = bundle_dataset(bundle, data_dir)
    sigma = distortion_sigma(manifest)
    optimizer = torch.optim.Adam(model.vae.parameters(), lr=config.lr)
    rng = np.random.default_rng(config.seed + 1)
    torch.manual_seed(config.seed)
    if checkpoint is None:
        _calibration(model, data.train, config)
        metrics = {"epoch": 0, "kind": "post-training quantization", **evaluate(model, data.test, sigma=sigma),
                   "seconds": 0.0}
        finetune.save(run, model, optimizer, config, metrics, rng, time.time())
        log(f"epoch 0 (post-training quantization): {json.dumps(metrics)}")
    else:
        metrics = finetune.restore(checkpoint, model, optimizer, rng)

    def loss(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        terms = loss_terms(model, x, torch.randn(len(x), model.config.latent_dim), sigma)
        total = (terms["recon"] + terms["kl"] + terms.get("distortion", 0.0)).mean()
        return total, total

    return finetune.train_epochs(run, model, optimizer, config, data.train, rng, metrics, loss,
                                 lambda: evaluate(model, data.test, sigma=sigma), model.vae.parameters(),
                                 "train_loss_bpd", extra={"kind": "quantization-aware fine-tuning"},
                                 progress=progress, log=log)


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], IntegerConfig, Any, dict[str, Any], IntegerVAE]:
    """(checkpoint, config, source bundle, source manifest, model with the run's weights)."""
    run = Path(run_dir)
    if not (run / CHECKPOINT).is_file():
        raise InputError(f"{run / CHECKPOINT}: no checkpoint (is {run} an 'edgevae-train integer' run folder?)")
    checkpoint = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=False)
    config = IntegerConfig(**checkpoint["config"])
    bundle, manifest, model = load_source(config.source)
    model.load_state_dict(checkpoint["model"])
    return checkpoint, config, bundle, manifest, model.eval()


# -- evaluation of the exported graphs -----------------------------------------------------------

def graph_nelbo(folder: Path, images: np.ndarray, arithmetic: str, seed: int = EVAL_SEED,
                threads: int = 1) -> dict[str, float]:
    """Negative ELBO in bits/dim of a bundle's graphs (ONNX Runtime, ``threads`` threads) on
    ``images``, one seeded posterior sample each (the same noise for a float and an integer
    bundle), the PSNR of ``pixels`` decoded from the posterior mean, and the seconds the encoder and
    decoder (two calls per image: the sample and the mean) took."""
    from edgevae.runtime.model import new_session

    enc = new_session(folder / contract.ENCODER.file, threads=threads)
    dec = new_session(folder / contract.DECODER.file, threads=threads)
    gen = torch.Generator().manual_seed(seed)
    latent = enc.get_outputs()[0].shape[1]
    eps = torch.randn(len(images), latent, generator=gen).numpy().astype(np.float64)
    total, seconds, psnr = 0.0, {"encoder": 0.0, "decoder": 0.0}, []
    for start in range(0, len(images), EVAL_BATCH):
        x = images[start : start + EVAL_BATCH]
        t = time.perf_counter()
        mean, logvar = enc.run(None, {"images": x})
        seconds["encoder"] += time.perf_counter() - t
        if arithmetic == contract.ARITHMETIC_INTEGER:
            mean, logvar = dequantize_posterior(mean.astype(np.float64), logvar.astype(np.float64))
        mean, logvar = mean.astype(np.float64), logvar.astype(np.float64)
        z = mean + np.exp(0.5 * logvar) * eps[start : start + len(x)]
        if arithmetic == contract.ARITHMETIC_INTEGER:
            feed = latent_indices(z).astype(np.int32)
        else:
            feed = z.astype(np.float32)
        t = time.perf_counter()
        _, logits, means, scales = dec.run(None, {"latents": feed})
        seconds["decoder"] += time.perf_counter() - t
        if arithmetic == contract.ARITHMETIC_INTEGER:
            logits, means, scales = dequantize_mixture(logits.astype(np.float64), means.astype(np.float64),
                                                       scales.astype(np.float64))
        params = [torch.from_numpy(np.asarray(p, dtype=np.float64)) for p in (logits, means, scales)]
        # the decoder's image of the posterior mean, for the PSNR
        at_mean = latent_indices(mean).astype(np.int32) if arithmetic == contract.ARITHMETIC_INTEGER else \
            mean.astype(np.float32)
        t = time.perf_counter()
        pixels = dec.run(None, {"latents": at_mean})[0]
        seconds["decoder"] += time.perf_counter() - t
        mse = ((pixels.astype(np.float64) - x) ** 2).reshape(len(x), -1).mean(1)
        psnr.append(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10)))
        recon = -likelihood.log_prob(torch.from_numpy(x), *params).flatten(1).sum(1)
        kl = 0.5 * (mean ** 2 + np.exp(logvar) - 1.0 - logvar)
        total += float(recon.sum()) + float(kl.sum())
    return {"nelbo_bpd": bits_per_dim(total / len(images), int(np.prod(images.shape[1:]))),
            "psnr_db": float(np.concatenate(psnr).mean()),
            "encoder_seconds": round(seconds["encoder"], 3), "decoder_seconds": round(seconds["decoder"], 3)}


def export_integer(run_dir: str | Path, bundle_dir: str | Path, data_dir: str | Path | None = None,
                   force: bool = False, step_factors: Sequence[float] | None = None,
                   name: str | None = None) -> dict[str, Any]:
    """Export an integer run as a bundle: integer graphs built from the int64 network, checked
    (bounds, contract names/dtypes/shapes, ONNX Runtime == int64 reference == torch, exactly),
    codec tables fitted on the integer encoder's (dequantized) outputs when the source has them,
    evaluation on the test split (graph negative ELBO, and the source's on the same noise)."""
    from edgevae.runtime.bundle import sha256_file
    from edgevae.runtime.quality import quality_levels
    from edgevae.runtime.tables import bundle_levels
    from edgevae.training.codec_tables import write_codec_tables
    from edgevae.training.data import bundle_dataset
    from edgevae.training.onnxgraph import library_versions, metadata_props, save_checked
    from edgevae.training.staging import check_target, staged_bundle

    checkpoint, config, source, source_manifest, model = load_run(run_dir)
    network = model.network()
    data = bundle_dataset(source, data_dir)
    target = Path(bundle_dir)
    check_target(target, force)
    manifest = json.loads(json.dumps(source_manifest))
    for key in ("codec", "evaluation", "parity", "novelty", "role", "prior", "variant"):
        manifest.pop(key, None)  # facts about the float graphs (or roles the maintainers assign)
    manifest["graphs"].pop(contract.PRIOR.key, None)  # a float prior cannot feed an integer decoder
    manifest["name"] = name or target.name
    manifest["arithmetic"] = contract.ARITHMETIC_INTEGER
    manifest["versions"] = library_versions()
    dims = contract.dims_of(model.config.image_shape, model.config.latent_dim, model.config.mixture_components)
    for spec in contract.graphs_for(contract.ARITHMETIC_INTEGER):
        manifest["graphs"][spec.key] = spec.describe(dims)
    metrics = checkpoint["metrics"]
    manifest["training"] = {
        "command": config.command(),
        "then": f"edgevae-train integer-export RUN_DIR -o {Path(bundle_dir).as_posix()}"
                + (f" --step-factors {','.join(f'{f:g}' for f in step_factors)}" if step_factors else ""),
        "kind": "integer network: post-training quantization of the source's float weights"
                + (", then quantization-aware fine-tuning" if config.epochs else ""),
        "source_bundle": source.name,
        "source_training": source_manifest.get("training", {}).get("command"),
        "model_config": source_manifest["training"]["model_config"],
        "train_config": source_manifest["training"]["train_config"],
        "integer_config": asdict(config),
        "data": source_manifest["training"].get("data"),
        "data_fingerprint": source_manifest["training"].get("data_fingerprint"),
        "epochs_trained": checkpoint["epoch"],
        "last_epoch_metrics": metrics,
        "layers": [{"name": layer.name, "shift": [int(layer.shift.min()), int(layer.shift.max())],
                    "worst_partial_sum": int(layer.worst_sums().max())} for layer in network.layers()],
    }
    props = metadata_props(manifest)
    props["edgevae.arithmetic"] = contract.ARITHMETIC_INTEGER
    with staged_bundle(target, force) as staging:
        for spec, build in ((contract.INTEGER_ENCODER, encoder_graph), (contract.INTEGER_DECODER, decoder_graph)):
            save_checked(build(network, props), staging / spec.file)
            manifest["graphs"][spec.key]["sha256"] = sha256_file(staging / spec.file)
        manifest["parity"] = check_graphs(network, staging, data.test, model=model)
        if "codec" in source_manifest:
            levels = quality_levels(step_factors, bundle_levels(source))
            _write_integer_codec_tables(staging, manifest, data.train, data.name, levels)
        started = time.time()
        ours = graph_nelbo(staging, data.test, contract.ARITHMETIC_INTEGER)
        theirs = graph_nelbo(source.path, data.test, contract.ARITHMETIC_FLOAT)
        manifest["evaluation"] = {
            "images": len(data.test), "k": 1, "nelbo_bpd": ours["nelbo_bpd"], "iwae_bpd": ours["nelbo_bpd"],
            "psnr_db": ours["psnr_db"], "seed": EVAL_SEED, "seconds": round(time.time() - started, 1),
            "data": data.name, "split": "test",
            "method": "one posterior sample per image through the exported graphs (ONNX Runtime, 1 thread); "
                      "k = 1, so iwae_bpd is the negative ELBO; psnr_db: pixels decoded from the posterior mean",
            "source_nelbo_bpd": theirs["nelbo_bpd"], "source_psnr_db": theirs["psnr_db"],
            "seconds_one_thread": {"integer": {k: ours[k] for k in ("encoder_seconds", "decoder_seconds")},
                                   "source_float": {k: theirs[k] for k in ("encoder_seconds", "decoder_seconds")}},
        }
        data_json = schema.to_json(manifest, target / contract.MANIFEST_FILE)
        (staging / contract.MANIFEST_FILE).write_bytes(data_json)
    return manifest


def _write_integer_codec_tables(folder: Path, manifest: dict[str, Any], train: np.ndarray, data_name: str,
                                levels: Any) -> None:
    """codec.json fitted on the integer encoder's outputs (dequantized to mean and log-variance),
    as :func:`edgevae.training.codec_tables.write_codec_tables` does for float encoders."""
    from edgevae.runtime.bundle import sha256_bytes
    from edgevae.runtime.container import TABLES_FILE
    from edgevae.runtime.model import new_session
    from edgevae.runtime.tables import fit_tables

    session = new_session(folder / contract.ENCODER.file)
    means, logvars = [], []
    for start in range(0, len(train), 1000):
        m, v = session.run(None, {"images": train[start : start + 1000]})
        m, v = dequantize_posterior(m.astype(np.float64), v.astype(np.float64))
        means.append(m)
        logvars.append(v)
    tables = fit_tables(np.concatenate(means), np.concatenate(logvars), levels=levels,
                        source={"data": data_name, "split": "train"})
    content = (json.dumps(tables, separators=(",", ":")) + "\n").encode()
    (folder / TABLES_FILE).write_bytes(content)
    manifest["codec"] = {"file": TABLES_FILE, "sha256": sha256_bytes(content),
                         "qualities": [q["name"] for q in tables["qualities"]],
                         "default_quality": tables["default_quality"]}


def time_graphs(folders: dict[str, Path], images: np.ndarray, batch: int = 64, repeats: int = 7,
                threads: int = 1) -> dict[str, dict[str, float]]:
    """Milliseconds per image of each bundle's encoder and decoder (ONNX Runtime, ``threads``
    threads, ``batch`` images per call), the bundles timed in turn ``repeats`` times and the best
    of each kept, so that a float and an integer bundle see the same machine load. Decoders get
    the posterior means of ``images`` (int latents for integer bundles)."""
    from edgevae.runtime.model import new_session

    sessions, feeds = {}, {}
    x = images[:batch]
    for name, folder in folders.items():
        arithmetic = json.loads((Path(folder) / contract.MANIFEST_FILE).read_text()).get(
            "arithmetic", contract.ARITHMETIC_FLOAT)
        enc = new_session(Path(folder) / contract.ENCODER.file, threads=threads)
        dec = new_session(Path(folder) / contract.DECODER.file, threads=threads)
        mean = enc.run(None, {"images": x})[0]
        if arithmetic == contract.ARITHMETIC_INTEGER:
            latents = latent_indices(dequantize_posterior(mean.astype(np.float64), 0.0)[0]).astype(np.int32)
        else:
            latents = mean.astype(np.float32)
        sessions[name], feeds[name] = (enc, dec), ({"images": x}, {"latents": latents})
    best = {name: {"encoder_ms_per_image": math.inf, "decoder_ms_per_image": math.inf} for name in folders}
    for _ in range(repeats):
        for name in folders:
            for session, feed, key in zip(sessions[name], feeds[name], ("encoder_ms_per_image", "decoder_ms_per_image")):
                session.run(None, feed)  # warm
                t = time.perf_counter()
                session.run(None, feed)
                best[name][key] = min(best[name][key], (time.perf_counter() - t) * 1000 / len(x))
    return {name: {k: round(v, 4) for k, v in d.items()} for name, d in best.items()}
