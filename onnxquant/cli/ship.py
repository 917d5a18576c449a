"""The shipping commands: ``inspect``, ``package`` and the one-step ``compress``.

Each one parses options, calls the library once, and prints (or, with --json, emits) what it returned.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from onnxquant.cli.command import Command
from onnxquant.cli.options import output_options
from onnxquant.cli.output import echo_json, emit, size_text
from onnxquant.cli.progress import step_progress
from onnxquant.cli.validate import validation_summary
from onnxquant.errors import OnnxQuantError
from onnxquant.ort_format import ORT_LEVELS
from onnxquant.recipe import TARGETS


def _inspection_text(info: dict[str, Any], layers: bool) -> str:
    def shape(v: dict[str, Any]) -> str:
        if v["shape"] is None:  # a sequence or map: no shape to show
            return f"{v['name']} {v['dtype']}"
        return f"{v['name']} {v['dtype']} [{', '.join(str(d) for d in v['shape'])}]"

    deflated = f", {size_text(info['size_deflated'])} deflated" if info["size_deflated"] is not None else ""
    opsets = ", ".join(f"{d} {v}" for d, v in sorted(info["opsets"].items()))
    lines = [f"model: {info['path']} ({size_text(info['size'])}{deflated})",
             f"format: IR {info['ir_version']}, opsets {opsets}"
             + (f", producer {info['producer']}" if info["producer"] else "")
             + (f", made by onnxquant {info['made_by']}" if info["made_by"] else ""),
             "inputs: " + "; ".join(shape(v) for v in info["inputs"]),
             "outputs: " + "; ".join(shape(v) for v in info["outputs"]),
             f"parameters: {info['total_parameters']:,} ("
             + ", ".join(f"{t} {n:,}" for t, n in info["parameters"].items()) + ")"]
    precision = info["precision"]
    if precision:
        lines.append("weighted layers: " + ", ".join(
            f"{p['layers']} {name} ({p['parameters']:,} weights)" for name, p in precision.items()))
    added = info.get("inserted_layers")
    if added:
        lines.append("of these, inserted by onnxquant's rewrites (layers the input model did not have): "
                     + ", ".join(f"{op} {n}" for op, n in added.items()))
    floats = [layer for layer in info["layers"] if layer["precision"] == "float"]
    if floats:
        lines.append(f"float weighted layers: {len(floats)}, {info['float_weight_share']:.1%} of this file's weight bytes")
    if info.get("float_compute"):
        fc = info["float_compute"]
        lines.append(f"float compute: {fc['layers']} layers store int8 weights that onnxruntime folds to float "
                     f"at load, as {fc['reason']}")
    lines.append(f"sparsity: {info['sparsity']:.1%} of layer weights are zero")
    lines.append("ops: " + ", ".join(f"{op} {n}" for op, n in info["op_counts"].items()))
    if layers:
        lines.append(f"{'precision':9s} {'weights':>10s} {'zero':>6s}  layer")
        for layer in info["layers"]:
            lines.append(f"{layer['precision']:9s} {layer['parameters']:10,d} {layer['sparsity']:6.1%}  "
                         f"{layer['op_type']} {layer['node'] or layer['weight']}"
                         + (f"  ({layer['reason']})" if layer.get("reason") else "")
                         + ("  (inserted by onnxquant)" if layer.get("inserted") else ""))
    return "\n".join(lines)


@click.command(cls=Command)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--layers", is_flag=True, help="List every weighted layer: precision, weights, sparsity.")
@output_options("Print everything as JSON (layers included).", None)
def inspect(model: Path, layers: bool, as_json: bool, debug: bool) -> None:
    """Show what MODEL is made of: ops, parameters, quantized/float layers, sparsity, size."""
    from onnxquant.inspect_model import inspect_model

    info = inspect_model(model).to_dict()
    emit(info, as_json, False, lambda d: _inspection_text(d, layers))


def _bundle_text(result: dict[str, Any]) -> str:
    total = sum(f["bytes"] for f in result["files"])
    lines = [f"wrote {result['output']} ({len(result['files'])} files, {size_text(total)})"]
    lines += [f"  {f['name']:28s} {size_text(f['bytes']):>10s}  sha256 {f['sha256'][:16]}" for f in result["files"]]
    if result.get("html"):
        lines.append(f"report: {result['html']}")
    return "\n".join(lines)


@click.command(cls=Command)
@click.argument("compressed", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Bundle to write: NAME.zip, or a new folder.")
@click.option("--validation", "validation_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Report of `onnxquant validate --json` to include (a failed one is refused).")
@click.option("--recipe", "recipe_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Recipe file to keep in the bundle as written (the model carries the resolved one).")
@click.option("--ort-optimization", type=click.Choice(ORT_LEVELS),
              help="Graph optimizations baked into model.ort (default: all for target cpu, basic for NPU targets).")
@click.option("--arm/--any-platform", default=True,
              help="model.ort may hold ARM-only int8 fusions (default), or none, for any platform.")
@click.option("--type-reduction", is_flag=True, help="Operator config with type reduction (smaller reduced builds).")
@output_options("Print the file list as JSON.", "Print nothing (the exit code tells).")
def package(compressed: Path, output: Path, validation_path: Path | None, recipe_path: Path | None,
            ort_optimization: str | None, arm: bool, type_reduction: bool, as_json: bool, quiet: bool,
            debug: bool) -> None:
    """Bundle COMPRESSED for edge deployment: the model, its ORT-format conversion, the operator
    config for a reduced onnxruntime build, report (JSON and HTML), recipe, and a manifest with
    the sha256 of every file. The same inputs give a byte-identical bundle.
    """
    from onnxquant.package import package_files

    result = package_files(compressed, output, validation_path=validation_path, recipe_path=recipe_path,
                           ort_optimization=ort_optimization, arm=arm, type_reduction=type_reduction)
    emit(result.to_dict(), as_json, quiet, _bundle_text)


def _compress_text(result: dict[str, Any]) -> str:
    report = result["report"]
    quantization = report["quantization"]
    lines = [(f"quantized: {quantization['quantized_node_count']} nodes; "
              f"{len(quantization['float_nodes'])} compute nodes left float"
              + (f" ({quantization['float_weight_share']:.1%} of the input model's weight bytes)"
                 if quantization.get("float_weight_share") else ""))]
    fusion = quantization.get("fusion")
    if fusion:
        lines.append(f"integer kernels: {fusion['integer_layers']} of {fusion['quantized_layers']} quantized layers")
    lines += [f"warning: {w}" for w in quantization.get("warnings", [])]
    if quantization.get("pruning"):
        lines.append(f"pruned: {quantization['pruning']['sparsity']:.1%} of prunable weights are zero")
    lines.append(validation_summary(report["validation"]))
    lines.append(_bundle_text(result))
    secs = result["seconds"]
    lines.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in secs.items()))
    return "\n".join(lines)


@click.command(cls=Command)
@click.argument("job", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--target", type=click.Choice(TARGETS), help="Override the job's target.")
@output_options("Print the result and full report as JSON (also on a failed budget).",
                "No progress bars and no summary (errors still print).")
def compress(job: Path, target: str | None, as_json: bool, quiet: bool, debug: bool) -> None:
    """Run the whole pipeline from the job file JOB: load, prune, calibrate, quantize, validate on
    every listed execution provider, package.

    Stops at the first budget that fails (exit 6), writing nothing.
    """
    from onnxquant.compress import compress as run_compress
    from onnxquant.compress import load_job

    spec = load_job(job, target)
    try:
        with step_progress(quiet or as_json) as progress:
            result = run_compress(spec, progress)
    except OnnxQuantError as exc:
        report = getattr(exc, "report", None)
        if as_json and report is not None:
            echo_json({"passed": False, "error": str(exc), "report": report})
        elif report is not None and not quiet:
            click.echo(validation_summary(report["validation"]))
        raise
    emit(result.to_dict(), as_json, quiet, _compress_text)
