"""Typed errors with a user-facing message and an exit code.

The library raises these; the CLI prints ``error: <message>`` on one line and exits with
``exit_code``. A traceback reaches the user only under ``--debug``.
"""
from __future__ import annotations


class OnnxQuantError(Exception):
    """Base class: something the user can act on."""

    exit_code = 1


class UsageError(OnnxQuantError):
    """Bad settings or a recipe that contradicts itself."""

    exit_code = 2


class ModelError(OnnxQuantError):
    """The model file cannot be read, is malformed, or is unsafe to load."""

    exit_code = 3


class CalibrationDataError(OnnxQuantError):
    """Calibration data is missing, mismatched with the model's inputs, or not finite."""

    exit_code = 4


class QuantizationError(OnnxQuantError):
    """The rewrite produced a model that fails its own self-check."""

    exit_code = 5


class BudgetExceededError(OnnxQuantError):
    """Validation ran, and the compressed model misses a budget the user set."""

    exit_code = 6


class ExecutionProviderError(OnnxQuantError):
    """An execution provider was asked for and cannot be loaded here (never silently replaced)."""

    exit_code = 7


class AlreadyQuantizedError(OnnxQuantError):
    """The model is already quantized and has no float layer left to compress."""

    exit_code = 8
