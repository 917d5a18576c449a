"""The ``onnxquant`` command line: one module per command group, each command
options -> recipe -> one library call -> printed summary.

``quantize``, ``prune``, ``diagnose`` (sensitivity, layer-errors), ``validate`` and ``ship``
(inspect, package, compress) define the commands; ``options``, ``output``, ``progress`` and
``command`` hold what they share. This module only gathers them under ``main``.
"""
from __future__ import annotations

import click

from onnxquant.version import __version__
from onnxquant.cli import diagnose, prune, quantize, ship, validate
from onnxquant.cli.command import Group


@click.group(cls=Group)
@click.version_option(__version__, prog_name="onnxquant")
def main() -> None:
    """Post-training int8 quantization for ONNX models."""


for _command in (quantize.quantize, prune.prune, diagnose.sensitivity, diagnose.layer_errors, validate.validate,
                 ship.inspect, ship.package, ship.compress):
    main.add_command(_command)

__all__ = ["main"]
