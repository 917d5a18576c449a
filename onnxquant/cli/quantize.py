"""``onnxquant quantize``: flags -> recipe -> ``onnxquant.api.quantize`` -> summary."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import click

from onnxquant.agreement import DROP_BY as AGREEMENTS
from onnxquant.calibration.collector import MAX_THREADS
from onnxquant.calibration.observers import METHODS
from onnxquant.cli.command import Command
from onnxquant.cli.options import (
    image_options,
    output_options,
    parse_bytes,
    parse_shapes,
    preprocess_overrides,
    prune_options,
    prune_overrides,
    recovery_options,
    recovery_overrides,
)
from onnxquant.cli.output import emit, size_text
from onnxquant.cli.progress import progress
from onnxquant.pipeline.run_data import RunData
from onnxquant.recipe import (
    ACTIVATION_TYPES,
    TARGETS,
    WEIGHT_TYPES,
    Recipe,
    load_recipe,
    recipe_for_target,
)


def _size_change(compression: float) -> str:
    """``3.79x smaller``, or, for a model that grew, ``3.56x larger`` (never "0.28x smaller")."""
    return f"{compression:.2f}x smaller" if compression >= 1 else f"{1 / compression:.2f}x larger"


def quantize_summary(result: dict[str, Any]) -> str:
    lines = [
        f"wrote {result['output']}",
        f"size: {size_text(result['size_before'])} -> {size_text(result['size_after'])} "
        f"({_size_change(result['compression'])})"
        + (f"; {size_text(result['size_compressed'])} compressed" if result.get("size_compressed") else ""),
        f"quantized: {result['quantized_node_count']} nodes"
        + (" (" + ", ".join(f"{op} {n}" for op, n in result["quantized_nodes"].items()) + ")"
           if result["quantized_nodes"] else ""),
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
        lines.append(f"left float: {len(floats)} nodes, {result.get('float_weight_share', 0.0):.1%} of the input model's weight bytes")
        for (op, reason), shares in sorted(by_reason.items(), key=lambda kv: (-sum(kv[1]), -len(kv[1]), kv[0])):
            weights = f" ({sum(shares):.1%} of the input's weight bytes)" if sum(shares) else ""
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


# Old spellings, accepted with a note until the next release.
RENAMED = {"--int4-min-sqnr": "--int4-min-sqnr-db", "--symmetric-activations": "--activation-symmetric",
           "--asymmetric-activations": "--activation-asymmetric"}


@dataclass(frozen=True)
class _LaterStages:
    """What runs the model over the samples again after calibration, as far as the CLI can tell
    before the run: the long-run note names only those stages."""

    recipe: Recipe
    max_drop: float | None
    calib_data: Path | None
    passes: bool  # --max-memory: calibration may make several passes, each counted


def _searches(later: _LaterStages) -> bool:
    """Whether the recipe search will run: not with --max-drop (mixed precision chooses), nor with
    fewer samples than it needs (counted in the folder as the library counts them)."""
    from onnxquant.calibration.sources import open_source
    from onnxquant.errors import CalibrationDataError
    from onnxquant.pipeline.search import too_few_samples  # (lazy: the CLI starts without the pipeline)

    search = later.recipe.search
    if not search.enabled or later.max_drop is not None or later.calib_data is None:
        return False
    try:
        samples = open_source(later.calib_data, ["input"]).length  # (the count only: no sample is read)
    except CalibrationDataError:
        return False
    return samples is not None and not too_few_samples(samples, search, later.recipe.calibration.max_samples)


def _long_run_note(later: _LaterStages, projected: float, pace: float, samples: int) -> str:
    """The line said early when calibration's pace projects a long run: the later stages that run
    the model over the samples again (bias correction, the search's trials, --max-drop's ranking)
    take several times this."""
    search = later.recipe.search
    stages = ["bias correction"] if later.recipe.recovery.bias_correction else []
    tail = ""
    if later.max_drop is not None:
        stages.append("--max-drop's layer ranking and checks")
    elif _searches(later):
        cap = f", capped at {search.seconds:g} s" if search.seconds is not None else ""
        stages.append(f"the recipe search (up to {search.trials} trials{cap})")
        tail = ": --search-seconds S caps the search, --no-search skips it"
    then = (f"; {' and '.join(stages)} run{'s' if len(stages) == 1 else ''} the model again, so quantize may take "
            f"several times that{tail}") if stages else ""
    counted = (f"{pace:.1f} s a sample in each pass, {samples} sample runs over the passes --max-memory needs"
               if later.passes else f"{pace:.1f} s a sample, {samples} samples")
    return f"note: a long run: calibration alone is projected at about {projected:.0f} s ({counted}){then}"


@click.command(cls=Command, renamed=RENAMED)
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
@click.option("--activation-symmetric/--activation-asymmetric", default=None, help="Symmetric activations (signed types only).")
@click.option("--weight-type", type=click.Choice(WEIGHT_TYPES), help="Weight type (default int8).")
@click.option("--weight-bits", type=click.Choice(["4", "8"]), help="4: block-wise int4 MatMul weights where their "
              "distribution allows (with --max-drop: least sensitive layers first, within budget). Target cpu.")
@click.option("--int4-block-size", type=int, help="Weights per int4 scale along K (power of two, default 32).")
@click.option("--int4-min-sqnr-db", type=float, help="A weight int4 keeps below this SQNR in dB stays int8 (default 18).")
@click.option("--per-channel/--per-tensor", default=None, help="Per-channel weight scales (default per-channel).")
@click.option("--reduce-range/--no-reduce-range", default=None, help="7-bit weights in GEMM kernels (default on; see README).")
@click.option("--pair-limited-weights/--no-pair-limited-weights", default=None, help="With --reduce-range: full 8-bit "
              "weights whose neighbour pairs cannot saturate the u8s8 kernels, for 1x1/kxk Conv, Gemm and MatMul "
              "(default on for --target cpu; see README).")
@click.option("--quantize-bias/--float-bias", default=None, help="int32 biases for Conv/Gemm (default on).")
@click.option("--op-types", help="Comma-separated op types to quantize (default: all supported).")
@click.option("--fuse-transformer/--no-fuse-transformer", default=None, help="Fuse BERT-like attention blocks into "
              "onnxruntime's Attention, quantized as QAttention (default: on for --target cpu).")
@click.option("--integer-compute/--float-compute", "integer_compute", default=None, help="Integer kernels even where "
              "they are estimated slower than fp32 on this CPU kind / int8 weights computed in float always "
              "(default: float compute only where integer is estimated slower; see README).")
@click.option("--recurrent-integer/--recurrent-float", "recurrent_integer", default=None, help="LSTMs as onnxruntime's "
              "DynamicQuantizeLSTM (int8 activations every time step) / int8 weights dequantized in front of a float "
              "LSTM, fp32's speed and closer to it (default: integer, and the recipe search tries float).")
@click.option("--include", multiple=True, help="Only quantize matching nodes: NAME, op:TYPE or re:REGEX. Repeatable.")
@click.option("--exclude", multiple=True, help="Keep matching nodes float: NAME, op:TYPE or re:REGEX. Repeatable.")
@image_options
@recovery_options
@click.option("--max-drop", type=click.FloatRange(min=0), help="Mixed precision: keep the fewest most-sensitive layers float so the "
              "agreement drop on --holdout stays within this (e.g. 0.01).")
@click.option("--holdout", type=click.Path(path_type=Path), help="Held-out samples for --max-drop (default: the calibration data).")
@click.option("--drop-by", type=click.Choice(AGREEMENTS), default="cosine", show_default=True,
              help="What --max-drop measures: 1 - mean cosine of each output, 1 - top-1 agreement of classifier scores, "
                   "1 - each output's own figure by its kind (detection F1, string agreement...), or fine: the kind's "
                   "finest figure (exp(-KL) of classifiers, 1 - CER of sequences; what the recipe search uses).")
@click.option("--search/--no-search", "search_enabled", default=None, help="Try other range estimators, bias "
              "correction and float edge layers on held-out calibration samples and keep the best (default on; README: "
              "Recipe search).")
@click.option("--search-trials", type=click.IntRange(min=1), help="At most this many recipe-search trials (default 10).")
@click.option("--search-seconds", type=click.FloatRange(min=0, min_open=True), help="A wall-clock cap on the recipe "
              "search; a search it cuts says so (its choice can then depend on machine speed).")
@click.option("--search-min-samples", type=click.IntRange(min=2), help="Fewer calibration samples: no search (default 16).")
@click.option("--search-score-every", type=click.IntRange(min=2), help="Hold out every Nth calibration sample to score "
              "the trials (default 4).")
@click.option("--output-kind", "output_kinds", multiple=True, metavar="NAME=KIND",
              help="Read output NAME as KIND when scoring the recipe search and --max-drop (as validate's "
                   "--output-kind; default: detected). Repeatable.")
@prune_options("prune-")
@click.option("--no-simplify", is_flag=True, default=False, help="Skip graph simplification before quantizing.")
@click.option("--threads", type=click.IntRange(0, MAX_THREADS), help="onnxruntime threads while calibrating (default: its own "
              "choice); the output is the same for any count.")
@click.option("--max-memory", help="Bound the activations calibration holds per run (e.g. 512M, 2G): tensors are "
              "observed in groups, one pass each; the output is the same.")
@click.option("--save-stats", type=click.Path(dir_okay=False, path_type=Path), help="Save calibration statistics (re-quantize later without running the model).")
@click.option("--load-stats", type=click.Path(dir_okay=False, path_type=Path), help="Use saved statistics instead of running calibration.")
@output_options("Print the summary as JSON.", "No progress bar and no summary (errors still print).")
def quantize(model: Path, output: Path, calib_data: Path | None, recipe_path: Path | None, target: str | None,
             input_shape: tuple[str, ...], calibration: str | None,
             percentile: float | None, max_samples: int | None, activation_type: str | None,
             activation_symmetric: bool | None, weight_type: str | None, per_channel: bool | None,
             reduce_range: bool | None, pair_limited_weights: bool | None, quantize_bias: bool | None,
             op_types: str | None, fuse_transformer: bool | None, integer_compute: bool | None, recurrent_integer: bool | None, include: tuple[str, ...],
             exclude: tuple[str, ...], no_simplify: bool, save_stats: Path | None, load_stats: Path | None, as_json: bool, quiet: bool,
             debug: bool, max_drop: float | None, holdout: Path | None, drop_by: str, weight_bits: str | None,
             int4_block_size: int | None, int4_min_sqnr_db: float | None, threads: int | None, max_memory: str | None,
             search_enabled: bool | None, search_trials: int | None, search_seconds: float | None,
             search_min_samples: int | None, search_score_every: int | None, output_kinds: tuple[str, ...],
             **image: Any) -> None:
    """Quantize MODEL to an int8 QDQ model using calibration data."""
    from onnxquant.api import quantize as run_quantize

    recipe = load_recipe(recipe_path, target) if recipe_path else recipe_for_target(target or "cpu")
    recipe = recipe.with_overrides(
        calibration={"method": calibration, "percentile": percentile, "max_samples": max_samples},
        quantization={
            "activation_type": activation_type, "activation_symmetric": activation_symmetric,
            "weight_type": weight_type, "per_channel": per_channel, "reduce_range": reduce_range,
            "pair_limited_weights": pair_limited_weights,
            "quantize_bias": quantize_bias, "weight_bits": int(weight_bits) if weight_bits else None,
            "int4_block_size": int4_block_size, "int4_min_sqnr_db": int4_min_sqnr_db, "fuse_transformer": fuse_transformer,
            "integer_compute": integer_compute, "recurrent_integer": recurrent_integer,
            "op_types": tuple(t.strip() for t in op_types.split(",") if t.strip()) if op_types else None,
        },
        nodes={"include": include or None, "exclude": exclude or None},
        preprocess=preprocess_overrides(image),
        input_shapes=parse_shapes(input_shape),
        recovery=recovery_overrides(image),
        prune=prune_overrides(image),
        search={"enabled": search_enabled, "trials": search_trials, "seconds": search_seconds,
                "min_samples": search_min_samples, "score_every": search_score_every},
    )
    if no_simplify:
        recipe = recipe.with_overrides(simplify=False)
    if calib_data is None and load_stats is None:
        raise click.UsageError("give --calib-data DIR (or --load-stats FILE)")
    if max_drop is not None and calib_data is None:
        raise click.UsageError("--max-drop needs --calib-data")
    budget = parse_bytes(max_memory) if max_memory else None
    from onnxquant.agreement import parse_kind_overrides

    try:
        kinds = parse_kind_overrides(output_kinds)
    except ValueError as exc:
        raise click.UsageError(f"--output-kind: {exc}") from exc
    later = _LaterStages(recipe, max_drop, calib_data, budget is not None)
    with progress(quiet or as_json, "calibrating", long_note=partial(_long_run_note, later)) as update:
        run = RunData(calib_data=calib_data, holdout=holdout, drop_by=drop_by, progress=update, threads=threads,
                      max_memory=budget, output_kinds=kinds or None)  # the library applies threads and the memory budget
        result = run_quantize(model, recipe=recipe, output=output, stats=load_stats, save_stats_to=save_stats,
                              max_drop=max_drop, run=run)
    emit(result.to_dict(), as_json, quiet, quantize_summary)
