"""Model bundles shipped with edgevae (package data: encoder.onnx, decoder.onnx, model.json,
codec.json, and prior.onnx where a bundle has a learned sampling prior).

Each bundle here is reproduced by the training command recorded in its ``model.json`` and in
README.md (and its prior, if any, by the ``edgevae-train prior`` command recorded there too).
"""

from pathlib import Path

#: Folder holding the shipped bundles.
BUNDLES = Path(__file__).resolve().parent

#: The default bundle :func:`edgevae.runtime.load` uses when given no path.
DEFAULT_BUNDLE = BUNDLES / "fashion-mnist"

#: The bundle ``edgevae compress`` uses for lossy coding when given no --model: trained with a
#: distortion term (more PSNR per byte than DEFAULT_BUNDLE), 24 latent dimensions (fewer coded
#: symbols: the smallest files) and a decoder with a quarter of the FLOPs (faster decompression).
#: Lossless coding keeps DEFAULT_BUNDLE, the better likelihood.
DEFAULT_CODEC_BUNDLE = BUNDLES / "fashion-mnist-codec"

#: An extra lossy-codec bundle for the highest qualities: the same distortion training with 32
#: latent dimensions at the default bundle's full widths. More PSNR from ~20 bytes per image up
#: (its best level passes 24 dB) for a decoder with 4x the FLOPs: ~1/5 of
#: DEFAULT_CODEC_BUNDLE's decompression speed.
HQ_CODEC_BUNDLE = BUNDLES / "fashion-mnist-codec-hq"

#: The bundle ``edgevae denoise`` uses when given no --model: DEFAULT_BUNDLE's decoder, unchanged,
#: with an encoder trained on noisy images (Gaussian and salt-and-pepper) to give the posterior
#: of the clean image (training/denoise.py).
DEFAULT_DENOISE_BUNDLE = BUNDLES / "fashion-mnist-denoise"
