"""edgevae's torch-free runtime: load a bundle, then sample, encode, decode, reconstruct.

    >>> import edgevae.runtime as ev
    >>> model = ev.load()                  # the shipped Fashion-MNIST model
    >>> images = model.sample(16, seed=0)  # uint8 (16, 1, 28, 28)
    >>> codec = ev.open_codec("lossy")     # the shipped codec bundle (or "lossless": exact pixels)
    >>> images = codec.decompress(codec.compress(images, quality="balanced"))
    >>> codec = ev.open_codec("near-lossless", max_error=4)   # every pixel within 4 levels
    >>> ev.codec_for_container(data).decompress(data)   # the shipped bundle that made ``data``
    >>> clean = ev.denoise(ev.load("fashion-mnist-denoise"), noisy, sigma=50)
    >>> scores = ev.score(model, images)   # bits/dim and novelty per image

Names are imported on first use (PEP 562), so ``edgevae --help`` and other light commands
do not pay for numpy and onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgevae.runtime.errors import BundleError, ContainerError, EdgeVAEError, InputError, OutputError

#: Public name -> module that defines it.
_LAZY = {
    "load": "edgevae.runtime.model",
    "EdgeVAE": "edgevae.runtime.model",
    "MixtureParams": "edgevae.runtime.likelihood",
    "MixtureIndices": "edgevae.runtime.likelihood",
    "Codec": "edgevae.runtime.codec",
    "LosslessCodec": "edgevae.runtime.codec",
    "NearLosslessCodec": "edgevae.runtime.codec",
    "ContainerInfo": "edgevae.runtime.codec",
    "open_codec": "edgevae.runtime.selection",
    "codec_for_container": "edgevae.runtime.selection",
    "denoise": "edgevae.runtime.denoising",
    "score": "edgevae.runtime.novelty",
    "Scores": "edgevae.runtime.novelty",
}

__all__ = ["EdgeVAEError", "InputError", "OutputError", "BundleError", "ContainerError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgevae.runtime' has no attribute {name!r}")
