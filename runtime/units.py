"""Units of reports: nats to bits (per image, per pixel dimension), and coded bytes to bits per pixel.

Training logs, evaluation, variant checks and the denoising encoder's check all report a negative
ELBO in bits per dimension (per pixel value, over the C * H * W values of an image): one conversion,
here, so that the figures of two tools are comparable by construction.
"""

from __future__ import annotations

import math
from typing import TypeVar

#: A float or an array (numpy or torch): the conversion is elementwise.
Number = TypeVar("Number")


def bits(nats: Number) -> Number:
    """``nats`` in bits: nats / ln 2."""
    return nats / math.log(2)


def bits_per_dim(nats: Number, dims: int) -> Number:
    """``nats`` (per image, or summed over images) in bits per pixel dimension: nats / (dims ln 2).

    ``dims`` is the number of pixel values the nats are spread over: C * H * W for one image,
    times the number of images for a sum over images.
    """
    return nats / (dims * math.log(2))


def bits_per_pixel(total_bytes: int, count: int, image_shape: tuple[int, int, int]) -> float:
    """``total_bytes`` of coded data for ``count`` images of ``image_shape`` (C, H, W) in bits per
    pixel value: 8 * bytes / (count * C * H * W), the figure the codec's reports give."""
    c, h, w = image_shape
    return 8 * total_bytes / (count * c * h * w)
