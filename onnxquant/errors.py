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


class InputShapeError(CalibrationDataError):
    """A sample's input has another shape than the model (or its fixed-shape target) takes."""


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


INTERRUPTED = 130  # Ctrl-C
TERMINATED = 143  # SIGTERM

# Every exit code of every command, in one place: each command's --help and the README's table
# (tests/test_errors.py checks both) are made from it.
EXIT_CODES: dict[int, str] = {
    0: "success (validate: every budget holds; compress: bundle written)",
    OnnxQuantError.exit_code: 'other error; "internal error" is a bug of ours (--debug shows it)',
    UsageError.exit_code: "bad flags, recipe or job file; or an output that cannot be written",
    ModelError.exit_code: "unreadable, invalid or unsafe model",
    CalibrationDataError.exit_code: "bad calibration or held-out data",
    QuantizationError.exit_code: "the result failed its self-check",
    BudgetExceededError.exit_code: "a budget failed (validate, --max-drop, a failed validation to package)",
    ExecutionProviderError.exit_code: "an execution provider asked for is not available here",
    AlreadyQuantizedError.exit_code: "the model is already quantized: no float layer is left to quantize",
    INTERRUPTED: "interrupted (Ctrl-C); nothing was written",
    TERMINATED: "terminated (SIGTERM); nothing was written",
}
