"""One ONNX graph file of a bundle: export a torch module with the torch.export-based exporter
(dynamic batch axis, the contract's names), stamp the manifest's key facts into its metadata, save
it as one self-contained file and check it. Export, precision variants, the learned prior and the
denoising encoder all write their graphs through here; each checks its own parity.
"""

from __future__ import annotations

import json
import logging
import platform
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgevae.runtime import contract
from edgevae.runtime.errors import ExportError

#: Batch sizes parity checks run at; 1 guards against torch.export specializing the batch.
PARITY_BATCHES = (1, 7, 64)
#: Batch used as the export example; must not be 0 or 1 (torch.export would specialize it).
EXAMPLE_BATCH = 4


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("edgevae", "torch", "onnx", "onnxscript", "onnxruntime", "numpy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def _run_exporter(module: nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...], spec: contract.GraphSpec,
                  batch: Any) -> Any:
    examples = example if isinstance(example, tuple) else (example,)
    return torch.onnx.export(
        module.eval(),
        examples,
        dynamo=True,
        input_names=spec.input_names,
        output_names=spec.output_names,
        # every input shares the one batch axis
        dynamic_shapes={name: {0: batch} for name in spec.input_names},
        opset_version=contract.OPSET,
        optimize=True,
        verbose=False,
    )


def export_graph(module: nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...], spec: contract.GraphSpec,
                 path: Path, props: dict[str, str]) -> None:
    """Export ``module`` (inputs like ``example``, a tuple for several) as the graph ``spec`` describes to ``path``,
    with ``props`` as its metadata (see :func:`metadata_props`). ExportError if nothing comes out."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    # The exporter logs optional-operator notes (e.g. torchvision absent) that are not problems.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = _run_exporter(module, example, spec, batch)
    if program is None:
        raise ExportError(f"{spec.file}: the exporter returned no program")
    proto = program.model_proto
    set_metadata_props(proto, props)
    proto.doc_string = f"edgevae {spec.key}: see model.json and README 'ONNX contract'"
    save_checked(proto, path)


def set_metadata_props(proto: Any, props: dict[str, str]) -> None:
    """Replace an ONNX model's ``metadata_props`` with ``props``."""
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def save_checked(proto: Any, path: Path) -> None:
    """Save as one self-contained .onnx file (weights inside: the runtime refuses external data,
    which the dynamo exporter would otherwise use), then ``onnx.checker``'s full check."""
    import onnx

    onnx.save_model(proto, str(path), save_as_external_data=False)
    onnx.checker.check_model(str(path), full_check=True)


def metadata_props(manifest: dict[str, Any]) -> dict[str, str]:
    """The key facts of the manifest that also travel inside each ONNX file."""
    return {
        "edgevae.format": contract.MANIFEST_FORMAT,
        "edgevae.format_version": str(contract.MANIFEST_VERSION),
        "edgevae.image_shape": json.dumps(manifest["image"]["shape"]),
        "edgevae.pixel_range": json.dumps(manifest["image"]["pixel_range"]),
        "edgevae.latent_dim": str(manifest["latent"]["dim"]),
        "edgevae.likelihood": json.dumps(manifest["likelihood"]),
        "edgevae.precision": manifest["precision"],
        "edgevae.training_command": manifest["training"]["command"],
    }
