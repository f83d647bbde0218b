"""Model bundles shipped with edgevae (package data: encoder.onnx, decoder.onnx, model.json,
codec.json, and prior.onnx where a bundle has a learned sampling prior).

Each bundle here is reproduced by the training command recorded in its ``model.json`` and in
README.md (and its prior, if any, by the ``edgevae-train prior`` command recorded there too).
Which job each is the default for is data too: the ``role`` list of its model.json
(:data:`edgevae.runtime.manifest.ROLES`), read by
:func:`edgevae.runtime.bundle.shipped_bundle_for_role`:

- ``fashion-mnist`` (default): the best float likelihood, with a learned prior for sampling;
- ``fashion-mnist-exact`` (lossless, near-lossless): fashion-mnist as an integer network
  (``edgevae-train integer``: quantization-aware fine-tuning of its weights), whose graphs give the
  same integers on every engine, so its lossless and near-lossless files (container version 3)
  decode in Python, Node, browsers and C alike; it also codes 0.11% smaller than fashion-mnist;
- ``fashion-mnist-codec`` (lossy): trained with a distortion term (more PSNR per byte), 24 latent
  dimensions (fewer coded symbols: the smallest files) and a decoder with a quarter of the FLOPs;
- ``fashion-mnist-codec-hq``: the same distortion training with 32 latent dimensions at full widths,
  for the highest qualities (its best level passes 24 dB), ~1/5 of the codec bundle's speed;
- ``fashion-mnist-denoise`` (denoise): fashion-mnist's decoder, unchanged, with an encoder trained
  on noisy images (Gaussian and salt-and-pepper) to give the posterior of the clean image;
- ``fashion-mnist-codec-exact``: fashion-mnist-codec as an integer network: lossy files that decode
  to the same pixels in every engine (the float codec's differ in a few pixels by a level in
  browsers) for ~1% more bytes and ~0.65x its decoding speed;
- ``fashion-mnist-int8``: fashion-mnist's int8 variant;
- ``fashion-mnist-context``: fashion-mnist's encoder and decoder, byte for byte, with a context graph
  (``edgevae-train context --frozen-vae``): lossless files code the pixels in 4 groups, each after
  the first refined from the groups before it, for the smallest lossless files (float arithmetic:
  they decode in Python only; the lossless role stays with fashion-mnist-exact, which every engine
  decodes); ``fashion-mnist-context2`` the same with the 2x2 block coded in raster order;
- ``fashion-mnist-context2-exact``: fashion-mnist-exact's encoder and decoder, byte for byte, with
  fashion-mnist-context2's context net as an integer net (``edgevae-train integer-context``): the
  context bundle's smaller lossless files (container version 3) on every engine.
"""

from pathlib import Path
from typing import Any

#: Folder holding the shipped bundles.
BUNDLES = Path(__file__).resolve().parent

#: Names kept for code written before roles were data -> the role whose bundle they name.
_ROLE_NAMES = {"DEFAULT_BUNDLE": "default", "DEFAULT_CODEC_BUNDLE": "lossy", "DEFAULT_DENOISE_BUNDLE": "denoise"}

#: The high-quality codec bundle (it holds no role: nothing picks it by default).
HQ_CODEC_BUNDLE = BUNDLES / "fashion-mnist-codec-hq"


def __getattr__(name: str) -> Any:
    """DEFAULT_BUNDLE, DEFAULT_CODEC_BUNDLE, DEFAULT_DENOISE_BUNDLE: the folder of the shipped
    bundle holding that role, looked up in the manifests when first asked for."""
    if name in _ROLE_NAMES:
        from edgevae.runtime.bundle import shipped_bundle_for_role

        return shipped_bundle_for_role(_ROLE_NAMES[name])
    raise AttributeError(f"module 'edgevae.exported' has no attribute {name!r}")
