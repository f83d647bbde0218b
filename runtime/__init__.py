"""edgevae's torch-free runtime: load a bundle, then sample, encode, decode, reconstruct.

    >>> import edgevae.runtime as ev
    >>> model = ev.load()                  # the shipped Fashion-MNIST model
    >>> images = model.sample(16, seed=0)  # uint8 (16, 1, 28, 28)
"""

from edgevae.runtime.errors import BundleError, EdgeVAEError, InputError, OutputError
from edgevae.runtime.model import EdgeVAE, MixtureParams, load

__all__ = ["load", "EdgeVAE", "MixtureParams", "EdgeVAEError", "InputError", "OutputError", "BundleError"]
