"""What int8 breaks: ``onnxquant sensitivity`` (each layer quantized alone) and ``layer-errors``
(the error each quantized tensor adds)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from onnxquant.agreement import DROP_BY as AGREEMENTS
from onnxquant.cli.command import Command
from onnxquant.cli.options import (
    diagnostic_options,
    image_options,
    output_options,
    preprocess_overrides,
    recovery_options,
    recovery_overrides,
)
from onnxquant.cli.output import emit
from onnxquant.cli.progress import progress
from onnxquant.recipe import load_recipe, recipe_for_target


def sensitivity_table(report: dict[str, Any]) -> str:
    lines = [f"{'drop':>8} {'1-cos':>9} {'SQNR dB':>8}  layer (quantized alone; most damaging first)"]
    for layer in report["layers"]:
        lines.append(f"{layer['drop']:8.4f} {layer['cosine_drop']:9.2e} {layer['sqnr_db']:>8}  {layer['node']} ({layer['op_type']})")
    return "\n".join(lines)


@click.command(cls=Command)
@diagnostic_options
@click.option("--top", type=click.IntRange(min=1), help="Show only the N most damaging layers.")
@click.option("--drop-by", type=click.Choice(AGREEMENTS), default="cosine", show_default=True,
              help="Damage as 1 - mean cosine of each output, or 1 - top-1 agreement of (batch, classes) scores.")
@image_options
@output_options("Print the ranking as JSON.", "No progress bar and no table.")
def sensitivity(model: Path, calib_data: Path, holdout: Path | None, recipe_path: Path | None, target: str | None,
                max_samples: int | None, top: int | None, drop_by: str, as_json: bool, quiet: bool, debug: bool,
                **image: Any) -> None:
    """Quantize each weighted layer of MODEL alone and rank the layers by the damage they do.

    drop: 1 minus the worst output's agreement with fp32 (--drop-by); 1-cos breaks ties.
    """
    from onnxquant.api import sensitivity as run_sensitivity

    recipe = load_recipe(recipe_path, target) if recipe_path else recipe_for_target(target or "cpu")
    recipe = recipe.with_overrides(calibration={"max_samples": max_samples}, preprocess=preprocess_overrides(image))
    with progress(quiet or as_json, "layers") as update:
        ranking = run_sensitivity(model, calib_data, holdout, recipe, progress=update, agreement=drop_by)
    layers = [r.to_dict() for r in ranking][: top or None]
    emit({"model": str(model), "layers": layers}, as_json, quiet, sensitivity_table)


def layer_error_table(report: dict[str, Any]) -> str:
    lines = [f"{'own dB':>8} {'total dB':>9}  tensor (node, op); lowest own SQNR first"]
    for e in report["tensors"]:
        lines.append(f"{e['own_sqnr_db']:>8} {e['sqnr_db']:>9}  {e['tensor']} ({e['node'] or 'graph input'}, {e['op_type']})")
    return "\n".join(lines)


@click.command("layer-errors", cls=Command)
@diagnostic_options
@click.option("--top", type=click.IntRange(min=1), help="Show only the N worst tensors.")
@recovery_options
@image_options
@output_options("Print the table as JSON.", "No table (the exit code tells).")
def layer_errors(model: Path, calib_data: Path, holdout: Path | None, recipe_path: Path | None, target: str | None,
                 max_samples: int | None, top: int | None, as_json: bool, quiet: bool, debug: bool, **options: Any) -> None:
    """Per-layer debugging: the error each quantized tensor of MODEL adds, worst first.

    own dB: SQNR of the noise this tensor adds over its producer's cleanest input (low = this
    layer does the damage); total dB: SQNR accumulated up to it.
    """
    from onnxquant.api import layer_errors as run_layer_errors

    recipe = load_recipe(recipe_path, target) if recipe_path else recipe_for_target(target or "cpu")
    recipe = recipe.with_overrides(calibration={"max_samples": max_samples}, recovery=recovery_overrides(options),
                                   preprocess=preprocess_overrides(options))
    errors = run_layer_errors(model, calib_data, holdout, recipe)
    emit({"model": str(model), "tensors": [e.to_dict() for e in errors][: top or None]}, as_json, quiet, layer_error_table)
