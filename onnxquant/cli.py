"""The ``onnxquant`` command: options -> recipe -> library call -> printed summary."""
from __future__ import annotations

import contextlib
import itertools
import json
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from onnxquant import __version__
from onnxquant.calibration.collector import MAX_THREADS, memory_budget, session_threads
from onnxquant.calibration.observers import METHODS
from onnxquant.errors import OnnxQuantError
from onnxquant.agreement import DROP_BY as AGREEMENTS
from onnxquant.recipe import (
    ACTIVATION_TYPES,
    PRUNE_METHODS,
    PRUNE_SCOPES,
    TARGETS,
    WEIGHT_TYPES,
    load_recipe,
    recipe_for_target,
)
from onnxquant.units import parse_size


# Parameters that name files a command reads, and files it writes (``_refuse_aliasing``).
_MODEL_INPUTS = ("model", "original", "compressed")
_DATA_INPUTS = ("calib_data", "holdout", "data", "recipe_path", "validation_path", "load_stats", "job")
_MODEL_OUTPUTS = ("output",)
_FILE_OUTPUTS = ("save_stats",)


def _refuse_aliasing(params: dict[str, Any]) -> None:
    """Every command: no output may be one of its input files, checked before any work."""
    from onnxquant.outputs import data_files, model_files, model_outputs, refuse_aliasing

    inputs = itertools.chain(
        (f for key in _MODEL_INPUTS if params.get(key) is not None for f in model_files(params[key])),
        (f for key in _DATA_INPUTS if params.get(key) is not None for f in data_files(params[key])))
    outputs = [f for key in _MODEL_OUTPUTS if params.get(key) is not None for f in model_outputs(params[key])]
    outputs += [params[key] for key in _FILE_OUTPUTS if params.get(key) is not None]
    if outputs:
        refuse_aliasing(inputs, outputs)


def one_line(text: str) -> str:
    """``text`` with control characters escaped: a path holding a newline cannot forge a second line."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a CI timeout): unwound like Ctrl-C, so nothing is left behind."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While a command runs, SIGTERM raises instead of killing the process at once (the
    previous handler comes back after; only the main thread can set one)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Command(click.Command):
    """Typed library errors become one line and their exit code; tracebacks only with --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            _refuse_aliasing(ctx.params)
            with _sigterm_unwinds():
                return super().invoke(ctx)
        except OnnxQuantError as exc:
            if ctx.params.get("debug"):
                raise
            click.echo(f"error: {one_line(str(exc))}", err=True)
            ctx.exit(exc.exit_code)
        except _Terminated:
            click.echo("error: terminated; nothing was written", err=True)
            ctx.exit(143)
        except KeyboardInterrupt:
            click.echo("error: interrupted; nothing was written", err=True)
            ctx.exit(130)
        except MemoryError:
            click.echo("error: out of memory", err=True)
            ctx.exit(1)
        except OSError as exc:  # the system refused a file (full disk, size limit, permissions): exit 2
            if ctx.params.get("debug"):
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"error: {one_line(where + (exc.strerror or str(exc)))}; nothing was written", err=True)
            ctx.exit(2)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug of ours: still one line, and the way to see more
            if ctx.params.get("debug"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            click.echo(f"error: internal error ({type(exc).__name__}: {one_line(first)}); --debug shows the "
                       "traceback; please report it", err=True)
            ctx.exit(1)


def _bar(desc: str, unit: str = "sample") -> tuple[Any, Any]:
    """A tqdm bar on stderr and the library progress callback that drives it."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, file=sys.stderr, leave=False)

    def update(done: int, total: int | None) -> None:
        if total is not None and bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def _show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


@contextlib.contextmanager
def _progress(quiet: bool, desc: str, unit: str = "sample") -> Iterator[Any]:
    """A progress callback for the library: a tqdm bar on a TTY, else None; closed on exit."""
    if not _show_progress(quiet):
        yield None
        return
    bar, update = _bar(desc, unit)
    try:
        yield update
    finally:
        bar.close()


@contextlib.contextmanager
def _step_progress(quiet: bool) -> Iterator[Any]:
    """For multi-step commands: each step gets its own bar, named after the step."""
    if not _show_progress(quiet):
        yield None
        return
    bars: list[Any] = []

    def begin(desc: str) -> Any:
        while bars:
            bars.pop().close()
        bar, update = _bar(desc)
        bars.append(bar)
        return update

    try:
        yield begin
    finally:
        while bars:
            bars.pop().close()


def _emit(summary: dict[str, Any], as_json: bool, quiet: bool, render: Any) -> None:
    """JSON for scripts, ``render(summary)`` for people, nothing when quiet."""
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
    elif not quiet:
        click.echo(render(summary))


def _parse_bytes(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-memory") from None


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def _summary(result: dict[str, Any]) -> str:
    lines = [
        f"wrote {result['output']}",
        f"size: {_size(result['size_before'])} -> {_size(result['size_after'])} ({result['compression']:.2f}x smaller)"
        + (f"; {_size(result['size_compressed'])} compressed" if result.get("size_compressed") else ""),
        f"quantized: {result['quantized_node_count']} nodes ("
        + ", ".join(f"{op} {n}" for op, n in result["quantized_nodes"].items()) + ")",
    ]
    fusion = result.get("fusion")
    if fusion:
        lines.append(f"integer kernels: {fusion['integer_layers']} of {fusion['quantized_layers']} quantized layers "
                     "run as integer kernels in onnxruntime")
    floats = result["float_nodes"]
    if floats:
        by_reason: dict[tuple[str, str], list[float]] = {}
        for node in floats:
            by_reason.setdefault((node["op_type"], node["reason"]), []).append(node.get("share", 0.0))
        lines.append(f"left float: {len(floats)} nodes, {result.get('float_weight_share', 0.0):.1%} of the weight bytes")
        for (op, reason), shares in sorted(by_reason.items(), key=lambda kv: (-sum(kv[1]), -len(kv[1]), kv[0])):
            weights = f" ({sum(shares):.1%} of the weight bytes)" if sum(shares) else ""
            lines.append(f"  {len(shares):4d} {op}: {reason}{weights}")
    for warning in result.get("warnings", []):
        lines.append(f"warning: {warning}")
    for note in result["notes"]:
        lines.append(f"note: {note}")
    secs = result["seconds"]
    lines.append(
        f"calibration: {result['calibration_samples']} samples, {secs['calibration']:.1f} s; total {secs['total']:.1f} s"
    )
    return "\n".join(lines)


class _Group(click.Group):
    """Bad options and arguments are one ``error:`` line with exit 2, like every other error."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except click.ClickException as exc:
            click.echo(f"error: {one_line(exc.format_message())}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Group)
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


def _stacked(options: list[Any], command: Any) -> Any:
    """Apply click option decorators in the order listed (first listed, first in --help)."""
    for option in reversed(options):
        command = option(command)
    return command


def _image_options(command: Any) -> Any:
    """The image pre-processing flags, shared by every command that reads an image folder."""
    options = [
        click.option("--image-size", help="Image samples: crop HEIGHT,WIDTH (default: the model's input shape)."),
        click.option("--image-mean", help="Image samples: per-channel mean in 0..255, e.g. 127,127,127."),
        click.option("--image-std", help="Image samples: per-channel std in 0..255, e.g. 128,128,128."),
        click.option("--image-layout", type=click.Choice(["NCHW", "NHWC"]), help="Image samples: input layout."),
        click.option("--image-resize", type=int, help="Image samples: short side before the centre crop (default crop*256/224)."),
        click.option("--image-channel-order", type=click.Choice(["RGB", "BGR"]), help="Image samples: channel order."),
    ]
    return _stacked(options, command)


def _parse_shapes(specs: tuple[str, ...]) -> dict[str, list[int]] | None:
    shapes = {}
    for spec in specs:
        name, sep, dims = spec.rpartition("=")
        try:
            shapes[name] = [int(d) for d in dims.replace("x", ",").split(",")]
        except ValueError:
            name = ""
        if not sep or not name:
            raise click.BadParameter(f"{spec!r}: expected NAME=D1,D2,..., e.g. input_ids=1,128", param_hint="--input-shape")
    return shapes or None


def _recovery_options(command: Any) -> Any:
    """Accuracy-recovery switches, shared by quantize and sensitivity."""
    options = [
        click.option("--bias-correction/--no-bias-correction", "rc_bias_correction", default=None,
                     help="Cancel each layer's mean output shift (default on)."),
        click.option("--equalize/--no-equalize", "rc_equalize", default=None,
                     help="Cross-layer equalisation of Conv pairs joined by ReLU (default: with --per-tensor only)."),
        click.option("--smoothquant/--no-smoothquant", "rc_smoothquant", default=None,
                     help="Move token-activation outliers into MatMul weights (default on)."),
        click.option("--smoothquant-alpha", "rc_smoothquant_alpha", type=float, help="SmoothQuant migration strength (default 0.75)."),
        click.option("--adaround/--no-adaround", "rc_adaround", default=None,
                     help="Learned rounding of weights, layer by layer (default off: slower)."),
        click.option("--adaround-seconds", "rc_adaround_seconds", type=float,
                     help="Time cap for --adaround; later layers keep nearest rounding."),
    ]
    return _stacked(options, command)


def _prune_options(prefix: str) -> Any:
    """Pruning flags; ``prefix`` ("prune-" inside quantize) keeps them apart from other options."""
    def stack(command: Any) -> Any:
        return _stacked([
            click.option(f"--{prefix}sparsity", "pr_sparsity", type=click.FloatRange(0, 1, max_open=True),
                         help="Zero this fraction of each prunable layer's weights (the weakest first)."),
            click.option(f"--{prefix}threshold", "pr_threshold", type=click.FloatRange(min=0),
                         help="Zero every weight with |w| <= this."),
            click.option(f"--{prefix}pattern", "pr_pattern", help="N:M semi-structured sparsity along the input dim, e.g. 2:4."),
            click.option(f"--{prefix}channels", "pr_channels", type=click.FloatRange(0, 1, max_open=True),
                         help="Zero this fraction of output channels of layers whose channels can be removed, then remove them."),
            click.option(f"--{prefix}method", "pr_method", type=click.Choice(PRUNE_METHODS),
                         help="Weight score: magnitude, or wanda (|w| times input RMS; needs data). Default magnitude."),
            click.option(f"--{prefix}scope", "pr_scope", type=click.Choice(PRUNE_SCOPES),
                         help="Sparsity per layer, or one global cut (default layer)."),
            click.option(f"--{prefix}max-drop", "pr_max_drop", type=click.FloatRange(min=0),
                         help="Search the largest sparsity (up to the value given, default 0.95) whose float model "
                              "stays within this drop of fp32 on held-out samples."),
        ], command)
    return stack


def _prune_overrides(options: dict[str, Any]) -> dict[str, Any]:
    return {key[3:]: options.pop(key) for key in [k for k in options if k.startswith("pr_")]}


def _recovery_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """Pop the ``rc_*`` options (from ``_recovery_options``) into a recipe section."""
    return {key[3:]: options.pop(key) for key in [k for k in options if k.startswith("rc_")]}


def _preprocess_overrides(image: dict[str, Any]) -> dict[str, Any]:
    size = _parse_floats(image.get("image_size"), "--image-size")
    if size is not None and len(size) == 1:
        size = size * 2  # a square crop
    return {  # whole numbers become ints; anything else is refused where the settings are built
        "size": tuple(int(v) if v.is_integer() else v for v in size) if size else None,
        "mean": _parse_floats(image.get("image_mean"), "--image-mean"),
        "std": _parse_floats(image.get("image_std"), "--image-std"),
        "layout": image.get("image_layout"), "resize": image.get("image_resize"),
        "channel_order": image.get("image_channel_order"),
    }


@main.command(cls=_Command)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Quantized model to write.")
@click.option("--calib-data", type=click.Path(path_type=Path), help="Folder of .npz samples (one dict of named inputs each) or images.")
@click.option("--recipe", "recipe_path", type=click.Path(dir_okay=False, path_type=Path), help="TOML recipe; flags override it.")
@click.option("--target", type=click.Choice(TARGETS), help="Runtime to quantize for: its data types and Q/DQ placement (default cpu).")
@click.option("--input-shape", "input_shape", multiple=True, help="Fix an input's free dims: NAME=D1,D2,... Repeatable.")
@click.option("--calibration", type=click.Choice(METHODS), help="Activation range estimator (default minmax).")
@click.option("--percentile", type=float, help="Percentile for --calibration percentile (default 99.999).")
@click.option("--max-samples", type=int, help="Use at most this many calibration samples.")
@click.option("--activation-type", type=click.Choice(ACTIVATION_TYPES), help="Activation type (default uint8).")
@click.option("--symmetric-activations/--asymmetric-activations", default=None, help="Symmetric activations (signed types only).")
@click.option("--weight-type", type=click.Choice(WEIGHT_TYPES), help="Weight type (default int8).")
@click.option("--weight-bits", type=click.Choice(["4", "8"]), help="4: block-wise int4 MatMul weights where their "
              "distribution allows (with --max-drop: least sensitive layers first, within budget). Target cpu.")
@click.option("--int4-block-size", type=int, help="Weights per int4 scale along K (power of two, default 32).")
@click.option("--int4-min-sqnr", type=float, help="A weight int4 keeps below this SQNR in dB stays int8 (default 18).")
@click.option("--per-channel/--per-tensor", default=None, help="Per-channel weight scales (default per-channel).")
@click.option("--reduce-range/--no-reduce-range", default=None, help="7-bit weights in GEMM kernels (default on; see README).")
@click.option("--quantize-bias/--float-bias", default=None, help="int32 biases for Conv/Gemm (default on).")
@click.option("--op-types", help="Comma-separated op types to quantize (default: all supported).")
@click.option("--include", multiple=True, help="Only quantize matching nodes: NAME, op:TYPE or re:REGEX. Repeatable.")
@click.option("--exclude", multiple=True, help="Keep matching nodes float: NAME, op:TYPE or re:REGEX. Repeatable.")
@_image_options
@_recovery_options
@click.option("--max-drop", type=click.FloatRange(min=0), help="Mixed precision: keep the fewest most-sensitive layers float so the "
              "agreement drop on --holdout stays within this (e.g. 0.01).")
@click.option("--holdout", type=click.Path(path_type=Path), help="Held-out samples for --max-drop (default: the calibration data).")
@click.option("--drop-by", type=click.Choice(AGREEMENTS), default="cosine", show_default=True,
              help="What --max-drop measures: 1 - mean cosine of each output, 1 - top-1 agreement of classifier scores, "
                   "or 1 - each output's own figure by its kind (detection F1, string agreement...).")
@_prune_options("prune-")
@click.option("--no-simplify", is_flag=True, default=False, help="Skip graph simplification before quantizing.")
@click.option("--threads", type=click.IntRange(0, MAX_THREADS), help="onnxruntime threads while calibrating (default: its own "
              "choice); the output is the same for any count.")
@click.option("--max-memory", help="Bound the activations calibration holds per run (e.g. 512M, 2G): tensors are "
              "observed in groups, one pass each; the output is the same.")
@click.option("--save-stats", type=click.Path(dir_okay=False, path_type=Path), help="Save calibration statistics (re-quantize later without running the model).")
@click.option("--load-stats", type=click.Path(dir_okay=False, path_type=Path), help="Use saved statistics instead of running calibration.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary (errors still print).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def quantize(model: Path, output: Path, calib_data: Path | None, recipe_path: Path | None, target: str | None,
             input_shape: tuple[str, ...], calibration: str | None,
             percentile: float | None, max_samples: int | None, activation_type: str | None,
             symmetric_activations: bool | None, weight_type: str | None, per_channel: bool | None,
             reduce_range: bool | None, quantize_bias: bool | None, op_types: str | None, include: tuple[str, ...],
             exclude: tuple[str, ...], no_simplify: bool, save_stats: Path | None, load_stats: Path | None, as_json: bool, quiet: bool,
             debug: bool, max_drop: float | None, holdout: Path | None, drop_by: str, weight_bits: str | None,
             int4_block_size: int | None, int4_min_sqnr: float | None, threads: int | None, max_memory: str | None,
             **image: Any) -> None:
    """Quantize MODEL to an int8 QDQ model using calibration data."""
    from onnxquant.api import quantize as run_quantize

    recipe = load_recipe(recipe_path, target) if recipe_path else recipe_for_target(target or "cpu")
    recipe = recipe.with_overrides(
        calibration={"method": calibration, "percentile": percentile, "max_samples": max_samples},
        quantization={
            "activation_type": activation_type, "activation_symmetric": symmetric_activations,
            "weight_type": weight_type, "per_channel": per_channel, "reduce_range": reduce_range,
            "quantize_bias": quantize_bias, "weight_bits": int(weight_bits) if weight_bits else None,
            "int4_block_size": int4_block_size, "int4_min_sqnr_db": int4_min_sqnr,
            "op_types": tuple(t.strip() for t in op_types.split(",") if t.strip()) if op_types else None,
        },
        nodes={"include": include or None, "exclude": exclude or None},
        preprocess=_preprocess_overrides(image),
        input_shapes=_parse_shapes(input_shape),
        recovery=_recovery_overrides(image),
        prune=_prune_overrides(image),
    )
    if no_simplify:
        recipe = recipe.with_overrides(simplify=False)
    if calib_data is None and load_stats is None:
        raise click.UsageError("give --calib-data DIR (or --load-stats FILE)")
    if max_drop is not None and calib_data is None:
        raise click.UsageError("--max-drop needs --calib-data")
    budget = _parse_bytes(max_memory) if max_memory else None
    with _progress(quiet or as_json, "calibrating") as update, session_threads(threads), memory_budget(budget):
        result = run_quantize(model, calib_data, recipe, output, stats=load_stats, save_stats_to=save_stats,
                              progress=update, holdout=holdout, max_drop=max_drop, agreement=drop_by)
    _emit(result.to_dict(), as_json, quiet, _summary)


def _prune_summary(result: dict[str, Any]) -> str:
    lines = [f"wrote {result['output']}",
             f"pruned: {len(result['layers'])} layers, {result['sparsity']:.1%} of their weights zero or removed"]
    structured = result.get("structured") or {}
    if structured.get("channels_removed"):
        lines.append(f"channels removed: {structured['channels_removed']} from {len(structured['layers'])} layers")
    for node, why in (structured.get("kept") or {}).items():
        lines.append(f"  dead channels kept in {node}: {why}")
    if "search" in result:
        found = result["search"]
        lines.append(f"max-drop search: {found['amount']} (drop {found['drop']:.4f} within {found['budget']}, "
                     f"{len(found['trials'])} trials)")
    lines.append(f"size: {_size(result['size_before'])} -> {_size(result['size_after'])}; compressed "
                 f"{_size(result['size_compressed_before'])} -> {_size(result['size_compressed_after'])}")
    lines.append("  sparsity  channels-removed  weights  layer")
    for layer in result["layers"]:
        lines.append(f"  {layer['sparsity']:8.1%}  {layer['channels_removed']:16d}  {layer['weights']:7d}  {layer['node']}")
    skipped: dict[str, int] = {}
    for entry in result["skipped"]:
        skipped[entry["reason"]] = skipped.get(entry["reason"], 0) + 1
    for reason, n in sorted(skipped.items()):
        lines.append(f"not pruned: {n} layers ({reason})")
    lines.extend(f"note: {note}" for note in result["notes"])
    return "\n".join(lines)


@main.command(cls=_Command)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Pruned (float) model to write.")
@click.option("--calib-data", type=click.Path(path_type=Path), help="Samples for --method wanda and --max-drop.")
@click.option("--holdout", type=click.Path(path_type=Path), help="Held-out samples for --max-drop (default: --calib-data).")
@click.option("--recipe", "recipe_path", type=click.Path(dir_okay=False, path_type=Path), help="TOML recipe ([prune]); flags override it.")
@_prune_options("")
@click.option("--keep-dead-channels", is_flag=True, help="Leave all-zero channels in the graph (default: remove them).")
@click.option("--depthwise", is_flag=True, help="Prune depthwise Conv filters too.")
@click.option("--channel-multiple", type=click.IntRange(min=1),
              help="Layers keep a multiple of this many channels (default 16, for onnxruntime's blocked kernels).")
@click.option("--sparse-storage", is_flag=True, help="Store sparse float initializers as ONNX sparse tensors where smaller.")
@click.option("--drop-by", type=click.Choice(AGREEMENTS), default="cosine", show_default=True,
              help="--max-drop measure: output cosine or top-1 agreement with fp32.")
@click.option("--max-samples", type=int, help="Use at most this many samples of each set.")
@_image_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No report (errors still print).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def prune(model: Path, output: Path, calib_data: Path | None, holdout: Path | None, recipe_path: Path | None,
          keep_dead_channels: bool, depthwise: bool, channel_multiple: int | None, sparse_storage: bool, drop_by: str, max_samples: int | None,
          as_json: bool, quiet: bool, debug: bool, **options: Any) -> None:
    """Prune MODEL's weights (and dead channels) to a smaller float model."""
    from onnxquant.api import prune as run_prune

    recipe = load_recipe(recipe_path) if recipe_path else recipe_for_target("cpu")
    settings = _prune_overrides(options)
    settings.update({"remove_dead": False if keep_dead_channels else None, "depthwise": depthwise or None,
                     "channel_multiple": channel_multiple,
                     "sparse_storage": sparse_storage or None})
    recipe = recipe.with_overrides(prune=settings, calibration={"max_samples": max_samples},
                                   preprocess=_preprocess_overrides(options))
    if recipe.prune.max_drop is not None and calib_data is None and holdout is None:
        raise click.UsageError("--max-drop needs --calib-data (or --holdout)")
    with _progress(quiet or as_json, "pruning: refitting layers", unit="layer") as update:
        result = run_prune(model, calib_data, recipe, output, holdout=holdout, agreement=drop_by, progress=update)
    _emit(result.to_dict(), as_json, quiet, _prune_summary)


def _diagnostic_options(command: Any) -> Any:
    """MODEL, the sample sets and the recipe: shared by sensitivity and layer-errors."""
    options = [
        click.argument("model", type=click.Path(dir_okay=False, path_type=Path)),
        click.option("--calib-data", type=click.Path(path_type=Path), required=True,
                     help="Calibration samples (.npz folder or images)."),
        click.option("--holdout", type=click.Path(path_type=Path),
                     help="Held-out samples to measure on (default: the calibration data)."),
        click.option("--recipe", "recipe_path", type=click.Path(dir_okay=False, path_type=Path), help="TOML recipe."),
        click.option("--target", type=click.Choice(TARGETS), help="Runtime to quantize for (default cpu)."),
        click.option("--max-samples", type=int, help="Use at most this many samples of each set."),
    ]
    return _stacked(options, command)


def _sensitivity_table(report: dict[str, Any]) -> str:
    lines = [f"{'drop':>8} {'1-cos':>9} {'SQNR dB':>8}  layer (quantized alone; most damaging first)"]
    for layer in report["layers"]:
        lines.append(f"{layer['drop']:8.4f} {layer['cosine_drop']:9.2e} {layer['sqnr_db']:>8}  {layer['node']} ({layer['op_type']})")
    return "\n".join(lines)


@main.command(cls=_Command)
@_diagnostic_options
@click.option("--top", type=click.IntRange(min=1), help="Show only the N most damaging layers.")
@click.option("--drop-by", type=click.Choice(AGREEMENTS), default="cosine", show_default=True,
              help="Damage as 1 - mean cosine of each output, or 1 - top-1 agreement of (batch, classes) scores.")
@_image_options
@click.option("--json", "as_json", is_flag=True, help="Print the ranking as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no table.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def sensitivity(model: Path, calib_data: Path, holdout: Path | None, recipe_path: Path | None, target: str | None,
                max_samples: int | None, top: int | None, drop_by: str, as_json: bool, quiet: bool, debug: bool,
                **image: Any) -> None:
    """Quantize each weighted layer of MODEL alone and rank the layers by the damage they do.

    drop: 1 minus the worst output's agreement with fp32 (--drop-by); 1-cos breaks ties.
    """
    from onnxquant.api import sensitivity as run_sensitivity

    recipe = load_recipe(recipe_path, target) if recipe_path else recipe_for_target(target or "cpu")
    recipe = recipe.with_overrides(calibration={"max_samples": max_samples}, preprocess=_preprocess_overrides(image))
    with _progress(quiet or as_json, "layers") as update:
        ranking = run_sensitivity(model, calib_data, holdout, recipe, progress=update, agreement=drop_by)
    layers = [r.to_dict() for r in ranking][: top or None]
    _emit({"model": str(model), "layers": layers}, as_json, quiet, _sensitivity_table)


def _layer_error_table(report: dict[str, Any]) -> str:
    lines = [f"{'own dB':>8} {'total dB':>9}  tensor (node, op); lowest own SQNR first"]
    for e in report["tensors"]:
        lines.append(f"{e['own_sqnr_db']:>8} {e['sqnr_db']:>9}  {e['tensor']} ({e['node'] or 'graph input'}, {e['op_type']})")
    return "\n".join(lines)


@main.command("layer-errors", cls=_Command)
@_diagnostic_options
@click.option("--top", type=click.IntRange(min=1), help="Show only the N worst tensors.")
@_recovery_options
@_image_options
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No table (the exit code tells).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def layer_errors(model: Path, calib_data: Path, holdout: Path | None, recipe_path: Path | None, target: str | None,
                 max_samples: int | None, top: int | None, as_json: bool, quiet: bool, debug: bool, **options: Any) -> None:
    """Per-layer debugging: the error each quantized tensor of MODEL adds, worst first.

    own dB: SQNR of the noise this tensor adds over its producer's cleanest input (low = this
    layer does the damage); total dB: SQNR accumulated up to it.
    """
    from onnxquant.api import layer_errors as run_layer_errors

    recipe = load_recipe(recipe_path, target) if recipe_path else recipe_for_target(target or "cpu")
    recipe = recipe.with_overrides(calibration={"max_samples": max_samples}, recovery=_recovery_overrides(options),
                                   preprocess=_preprocess_overrides(options))
    errors = run_layer_errors(model, calib_data, holdout, recipe)
    _emit({"model": str(model), "tensors": [e.to_dict() for e in errors][: top or None]}, as_json, quiet, _layer_error_table)


# The validate command and the shipping commands (inspect, package, compress) register themselves on `main`.
from onnxquant import cli_ship, cli_validate  # noqa: F401, E402

if __name__ == "__main__":
    main()
