"""What ``edgevae-train``'s commands print after the work: the lines describing an evaluation, an
export (parity per graph, a variant's check), fitted codec tables, a learned prior, a denoising
bundle and a novelty threshold, read from the records the library returns (manifest sections).

Each function returns the lines; the command line echoes them. Reading those records for people
happens here, not in the CLI.
"""

from __future__ import annotations

from typing import Any


def evaluation(metrics: dict[str, Any], k: int) -> list[str]:
    """``evaluate``: images, negative ELBO and IWAE bound (bits/dim), reconstruction PSNR, aligned."""
    rows = [("images", f"{metrics['images']}"),
            ("negative ELBO", f"{metrics['nelbo_bpd']:.4f} bits/dim"),
            (f"IWAE bound (k={k})", f"{metrics['iwae_bpd']:.4f} bits/dim"),
            ("reconstruction PSNR", f"{metrics['psnr_db']:.2f} dB")]
    width = max(len(r[0]) for r in rows)
    return [f"{name:<{width}}  {value}" for name, value in rows]


def export(manifest: dict[str, Any], bundle_dir: str, precision: str) -> list[str]:
    """``export``: what was written, the largest ONNX Runtime vs PyTorch difference per output, and
    for an int8/fp16 variant its PSNR and negative ELBO against the fp32 graphs."""
    parity = manifest["parity"]
    lines = [f"wrote {bundle_dir}: encoder.onnx, decoder.onnx, model.json ({manifest['precision']})"]
    for graph, outputs in parity["max_abs_diff"].items():
        diffs = ", ".join(f"{name} {value:.2e}" for name, value in outputs.items())
        lines.append(f"parity {graph}: {diffs} (tolerance {parity['tolerance']:.0e})")
    if "variant" in manifest:
        check = manifest["variant"]["check"]
        lines.append(f"{precision} vs fp32 graphs on {check['images']} test images: "
                     f"PSNR {check[precision]['psnr_db']:.2f} dB (fp32 {check['fp32']['psnr_db']:.2f}), "
                     f"negative ELBO {check[precision]['nelbo_bpd']:.4f} bits/dim (fp32 {check['fp32']['nelbo_bpd']:.4f})")
    return lines


def codec_tables(tables: dict[str, Any], bundle_dir: str) -> list[str]:
    """``codec-tables``: the training images fitted on and each level's ideal bytes per image."""
    return [f"wrote {bundle_dir}/codec.json: fitted on {tables['fitted_on']['images']} training images"] + [
        f"  {q['name']:<10} step x{q['step_factor']:<5g} {q['train_bits_per_image'] / 8:6.2f} bytes/image "
        f"(ideal, training set)" for q in tables["qualities"]]


def prior(manifest: dict[str, Any], bundle_dir: str) -> list[str]:
    """``prior``: the prior written, its test-latent likelihood against N(0, I), its parity."""
    entry = manifest["prior"]
    metrics, parity = entry["metrics"], entry["parity"]
    return [f"wrote {bundle_dir}/prior.onnx ({entry['kind']}, {entry['noise_dim']}-d noise) and model.json",
            f"test latents: {metrics['test_nll_nats_per_dim']:.4f} nats/dim under the prior "
            f"({metrics['test_nll_is']}), {metrics['test_nll_normal_nats_per_dim']:.4f} under N(0, I)",
            f"parity prior: latents {parity['max_abs_diff']['latents']:.2e} (tolerance {parity['tolerance']:.0e})"]


def denoise_bundle(manifest: dict[str, Any], bundle_dir: str) -> list[str]:
    """``denoise-export``: the files written, where the decoder came from, the worst parity per graph."""
    diffs = ", ".join(f"{g}: {max(o.values()):.2e}" for g, o in manifest["parity"]["max_abs_diff"].items())
    return [f"wrote {bundle_dir}: encoder.onnx (new), decoder.onnx (from {manifest['training']['source_bundle']}), "
            f"model.json; parity {diffs}"]


def novelty_threshold(entry: dict[str, Any], bundle_dir: str) -> list[str]:
    """``novelty-threshold``: the threshold recorded and what it was taken over."""
    return [f"wrote {bundle_dir}/model.json: novelty threshold {entry['threshold']:.4f} "
            f"({entry['percentile']:g}th percentile of {entry['images']} training images, median "
            f"{entry['novelty_median']:.4f})"]
