"""The ``onnxquant`` command: options -> recipe -> library call -> printed summary."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from onnxquant import __version__
from onnxquant.calibration.observers import METHODS
from onnxquant.errors import OnnxQuantError
from onnxquant.recipe import ACTIVATION_TYPES, WEIGHT_TYPES, Recipe, load_recipe


class _Command(click.Command):
    """Typed library errors become one line and their exit code; tracebacks only with --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OnnxQuantError as exc:
            if ctx.params.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted; nothing was written", err=True)
            ctx.exit(130)
        except MemoryError:
            click.echo("error: out of memory", err=True)
            ctx.exit(1)


def _progress(quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None, None
    from tqdm import tqdm

    bar = tqdm(desc="calibrating", unit="sample", file=sys.stderr, leave=False)

    def update(done: int, total: int | None) -> None:
        if total is not None and bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def _summary(result: dict[str, Any]) -> str:
    lines = [
        f"wrote {result['output']}",
        f"size: {_size(result['size_before'])} -> {_size(result['size_after'])} ({result['compression']:.2f}x smaller)",
        f"quantized: {result['quantized_node_count']} nodes ("
        + ", ".join(f"{op} {n}" for op, n in result["quantized_nodes"].items()) + ")",
    ]
    floats = result["float_nodes"]
    if floats:
        by_reason: dict[tuple[str, str], int] = {}
        for node in floats:
            key = (node["op_type"], node["reason"])
            by_reason[key] = by_reason.get(key, 0) + 1
        lines.append(f"left float: {len(floats)} nodes")
        for (op, reason), n in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {n:4d} {op}: {reason}")
    for note in result["notes"]:
        lines.append(f"note: {note}")
    secs = result["seconds"]
    lines.append(
        f"calibration: {result['calibration_samples']} samples, {secs['calibration']:.1f} s; total {secs['total']:.1f} s"
    )
    return "\n".join(lines)


@click.group()
@click.version_option(__version__, prog_name="onnxquant")
def main() -> None:
    """Post-training int8 quantization for ONNX models."""


def _parse_floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise click.BadParameter(f"{what} must be comma-separated numbers, e.g. 127,127,127") from exc
    return values


@main.command(cls=_Command)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Quantized model to write.")
@click.option("--calib-data", type=click.Path(path_type=Path), help="Folder of .npz samples (one dict of named inputs each) or images.")
@click.option("--recipe", "recipe_path", type=click.Path(dir_okay=False, path_type=Path), help="TOML recipe; flags override it.")
@click.option("--calibration", type=click.Choice(METHODS), help="Activation range estimator (default minmax).")
@click.option("--percentile", type=float, help="Percentile for --calibration percentile (default 99.999).")
@click.option("--max-samples", type=int, help="Use at most this many calibration samples.")
@click.option("--activation-type", type=click.Choice(ACTIVATION_TYPES), help="Activation type (default uint8).")
@click.option("--symmetric-activations/--asymmetric-activations", default=None, help="Symmetric activations (signed types only).")
@click.option("--weight-type", type=click.Choice(WEIGHT_TYPES), help="Weight type (default int8).")
@click.option("--per-channel/--per-tensor", default=None, help="Per-channel weight scales (default per-channel).")
@click.option("--reduce-range/--no-reduce-range", default=None, help="7-bit weights in GEMM kernels (default on; see README).")
@click.option("--quantize-bias/--float-bias", default=None, help="int32 biases for Conv/Gemm (default on).")
@click.option("--op-types", help="Comma-separated op types to quantize (default: all supported).")
@click.option("--include", multiple=True, help="Only quantize matching nodes: NAME, op:TYPE or re:REGEX. Repeatable.")
@click.option("--exclude", multiple=True, help="Keep matching nodes float: NAME, op:TYPE or re:REGEX. Repeatable.")
@click.option("--image-size", help="Image calibration: crop HEIGHT,WIDTH (default: the model's input shape).")
@click.option("--image-mean", help="Image calibration: per-channel mean in 0..255, e.g. 127,127,127.")
@click.option("--image-std", help="Image calibration: per-channel std in 0..255, e.g. 128,128,128.")
@click.option("--image-layout", type=click.Choice(["NCHW", "NHWC"]), help="Image calibration: input layout.")
@click.option("--image-resize", type=int, help="Image calibration: short side before the centre crop (default crop*256/224).")
@click.option("--image-channel-order", type=click.Choice(["RGB", "BGR"]), help="Image calibration: channel order.")
@click.option("--no-simplify", is_flag=True, default=False, help="Skip graph simplification before quantizing.")
@click.option("--save-stats", type=click.Path(dir_okay=False, path_type=Path), help="Save calibration statistics (re-quantize later without running the model).")
@click.option("--load-stats", type=click.Path(dir_okay=False, path_type=Path), help="Use saved statistics instead of running calibration.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary (errors still print).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def quantize(model: Path, output: Path, calib_data: Path | None, recipe_path: Path | None, calibration: str | None,
             percentile: float | None, max_samples: int | None, activation_type: str | None,
             symmetric_activations: bool | None, weight_type: str | None, per_channel: bool | None,
             reduce_range: bool | None, quantize_bias: bool | None, op_types: str | None, include: tuple[str, ...],
             exclude: tuple[str, ...], image_size: str | None, image_mean: str | None, image_std: str | None,
             image_layout: str | None, image_resize: int | None, image_channel_order: str | None,
             no_simplify: bool, save_stats: Path | None, load_stats: Path | None, as_json: bool, quiet: bool,
             debug: bool) -> None:
    """Quantize MODEL to an int8 QDQ model using calibration data."""
    from onnxquant.api import quantize as run_quantize

    recipe = load_recipe(recipe_path) if recipe_path else Recipe()
    size = _parse_floats(image_size, "--image-size")
    recipe = recipe.with_overrides(
        calibration={"method": calibration, "percentile": percentile, "max_samples": max_samples},
        quantization={
            "activation_type": activation_type, "activation_symmetric": symmetric_activations,
            "weight_type": weight_type, "per_channel": per_channel, "reduce_range": reduce_range,
            "quantize_bias": quantize_bias,
            "op_types": tuple(t.strip() for t in op_types.split(",") if t.strip()) if op_types else None,
        },
        nodes={"include": include or None, "exclude": exclude or None},
        preprocess={
            "size": tuple(int(v) for v in size) if size else None,
            "mean": _parse_floats(image_mean, "--image-mean"), "std": _parse_floats(image_std, "--image-std"),
            "layout": image_layout, "resize": image_resize, "channel_order": image_channel_order,
        },
    )
    if no_simplify:
        recipe = recipe.with_overrides(simplify=False)
    if calib_data is None and load_stats is None:
        raise click.UsageError("give --calib-data DIR (or --load-stats FILE)")
    update, bar = _progress(quiet or as_json)
    try:
        result = run_quantize(model, calib_data, recipe, output, stats=load_stats, save_stats_to=save_stats, progress=update)
    finally:
        if bar is not None:
            bar.close()
    summary = result.to_dict()
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
    elif not quiet:
        click.echo(_summary(summary))


if __name__ == "__main__":
    main()
