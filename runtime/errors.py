"""Typed exceptions of edgevae. Library code raises these; only the CLIs turn them into
one-line messages with exit code 2."""

from __future__ import annotations


class EdgeVAEError(Exception):
    """Base class: every error edgevae raises on purpose is one of these."""


class InputError(EdgeVAEError):
    """A user-supplied input (file, array, argument) is missing, unreadable or malformed."""


class OutputError(EdgeVAEError):
    """An output cannot be written (unwritable place, or it exists and overwrite was not asked)."""


class BundleError(EdgeVAEError):
    """A model bundle is missing, partial, tampered with, or of an unsupported version."""


class ContainerError(InputError):
    """A compressed container (.evz) is damaged, truncated, of another format version, or was
    made by a different model."""


class DataError(EdgeVAEError):
    """A training data set cannot be found or read."""


class ExportError(EdgeVAEError):
    """An ONNX export failed validation (names, shapes or numerical parity)."""
