"""Options shared by several commands, and the parsers that turn their text into recipe values."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from onnxquant.recipe import PRUNE_METHODS, PRUNE_SCOPES, TARGETS
from onnxquant.units import parse_size

Decorator = Callable[[Any], Any]


def stacked(options: list[Decorator], command: Any) -> Any:
    """Apply click option decorators in the order listed (first listed, first in --help)."""
    for option in reversed(options):
        command = option(command)
    return command


def parse_floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise click.BadParameter(f"{what} must be comma-separated numbers, e.g. 127,127,127") from exc
    return values


def parse_bytes(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-memory") from None


def parse_shapes(specs: tuple[str, ...]) -> dict[str, list[int]] | None:
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


def image_options(command: Any) -> Any:
    """The image pre-processing flags, shared by every command that reads an image folder."""
    options = [
        click.option("--image-size", help="Image samples: crop HEIGHT,WIDTH (default: the model's input shape)."),
        click.option("--image-mean", help="Image samples: per-channel mean in 0..255, e.g. 127,127,127."),
        click.option("--image-std", help="Image samples: per-channel std in 0..255, e.g. 128,128,128."),
        click.option("--image-layout", type=click.Choice(["NCHW", "NHWC"]), help="Image samples: input layout."),
        click.option("--image-resize", type=int, help="Image samples: short side before the centre crop (default crop*256/224)."),
        click.option("--image-channel-order", type=click.Choice(["RGB", "BGR"]), help="Image samples: channel order."),
    ]
    return stacked(options, command)


def preprocess_overrides(image: dict[str, Any]) -> dict[str, Any]:
    """The recipe's [preprocess] section from the ``image_*`` options (popped from ``image``)."""
    size = parse_floats(image.pop("image_size", None), "--image-size")
    if size is not None and len(size) == 1:
        size = size * 2  # a square crop
    return {  # whole numbers become ints; anything else is refused where the settings are built
        "size": tuple(int(v) if v.is_integer() else v for v in size) if size else None,
        "mean": parse_floats(image.pop("image_mean", None), "--image-mean"),
        "std": parse_floats(image.pop("image_std", None), "--image-std"),
        "layout": image.pop("image_layout", None), "resize": image.pop("image_resize", None),
        "channel_order": image.pop("image_channel_order", None),
    }


def recovery_options(command: Any) -> Any:
    """Accuracy-recovery switches, shared by quantize and layer-errors."""
    options = [
        click.option("--bias-correction/--no-bias-correction", "rc_bias_correction", default=None,
                     help="Cancel each layer's mean output shift (default on)."),
        click.option("--equalize/--no-equalize", "rc_equalize", default=None,
                     help="Cross-layer equalisation of Conv pairs joined by ReLU (default: with --per-tensor only)."),
        click.option("--depthwise-equalize/--no-depthwise-equalize", "rc_depthwise_equalize", default=None,
                     help="Even the channel ranges of depthwise-Conv inputs from calibration data, through "
                          "their producing Conv (default: with per-channel weights)."),
        click.option("--smoothquant/--no-smoothquant", "rc_smoothquant", default=None,
                     help="Move token-activation outliers into MatMul weights (default on)."),
        click.option("--smoothquant-alpha", "rc_smoothquant_alpha", type=float, help="SmoothQuant migration strength (default 0.75)."),
        click.option("--gptq/--no-gptq", "rc_gptq", default=None,
                     help="GPTQ rounding of MatMul/Attention weights on token activations (default on)."),
        click.option("--adaround/--no-adaround", "rc_adaround", default=None,
                     help="Learned rounding of weights, layer by layer (default off: slower)."),
        click.option("--adaround-seconds", "rc_adaround_seconds", type=float,
                     help="Time cap for --adaround; later layers keep nearest rounding."),
    ]
    return stacked(options, command)


def recovery_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """Pop the ``rc_*`` options (from ``recovery_options``) into a recipe section."""
    return {key[3:]: options.pop(key) for key in [k for k in options if k.startswith("rc_")]}


def prune_options(prefix: str) -> Decorator:
    """Pruning flags; ``prefix`` ("prune-" inside quantize) keeps them apart from other options."""
    def stack(command: Any) -> Any:
        return stacked([
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


def prune_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """Pop the ``pr_*`` options (from ``prune_options``) into a recipe section."""
    return {key[3:]: options.pop(key) for key in [k for k in options if k.startswith("pr_")]}


def diagnostic_options(command: Any) -> Any:
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
    return stacked(options, command)


def output_options(json_help: str, quiet_help: str | None) -> Decorator:
    """--json, -q (unless ``quiet_help`` is None) and --debug: every command ends with these."""
    def stack(command: Any) -> Any:
        options = [click.option("--json", "as_json", is_flag=True, help=json_help)]
        if quiet_help is not None:
            options.append(click.option("-q", "--quiet", is_flag=True, help=quiet_help))
        options.append(click.option("--debug", is_flag=True, help="Show tracebacks."))
        return stacked(options, command)
    return stack
