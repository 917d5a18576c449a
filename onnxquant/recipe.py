"""What to quantize and how, as one frozen value: from CLI flags, a TOML file, or Python.

A recipe is validated when it is built, so a bad combination fails before any work starts, and
it is written into the output model's metadata so every model says how it was made.
"""
from __future__ import annotations

import json
import os
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from onnxquant.calibration.observers import METHODS
from onnxquant.calibration.preprocess import ImagePreprocess
from onnxquant.errors import UsageError
from onnxquant.host import (
    CPU_KINDS,
    CPU_TARGETS,
    CpuChoice,
    HostCpu,
    cpu_choice,
    target_note,
)
from onnxquant.settings import check_fields, parse_limited

# Where a quantized model keeps the recipe it was made with (metadata_props), as JSON.
RECIPE_KEY = "onnxquant.recipe"

# The stamp holds a recipe's differences from a fixed base table, named by its id under
# STAMP_BASE_KEY, never from this version's defaults: defaults have changed before (search trials
# 8 -> 10, smoothquant_alpha 0.5 -> 0.75, adaround_iterations 400 -> 300, equalize True -> None),
# and a stamp read over the reading version's defaults would then say what its model was not made
# with. A table is never edited: when the defaults drift far from it, add STAMP_BASE_2 and stamp
# against that (readers keep every table). Fields not in the table are always stamped.
STAMP_BASE_KEY = "stamp_base"
STAMP_BASE_1: dict[str, Any] = {  # the defaults of 0.1.0 (session 32), in the stamp's form (_stamp_form)
    "calibration": {"method": "minmax", "percentile": 99.999},
    "nodes": {},
    "preprocess": {"channel_order": "RGB", "dtype": "float32", "layout": "NCHW",
                   "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]},
    "prune": {"channel_multiple": 16, "depthwise": False, "method": "magnitude", "reconstruct": True,
              "remove_dead": True, "scope": "layer", "sparse_storage": False},
    "quantization": {"activation_symmetric": False, "activation_type": "uint8", "int4_block_size": 32,
                     "int4_min_sqnr_db": 18.0, "per_channel": True, "quantize_bias": True, "reduce_range": True,
                     "weight_bits": 8, "weight_type": "int8"},
    "recovery": {"adaround": False, "adaround_iterations": 300, "bias_correction": True, "smoothquant": True,
                 "smoothquant_alpha": 0.75, "smoothquant_fold_only": False},
    "search": {"enabled": True, "min_samples": 16, "score_every": 4, "trials": 10},
    "simplify": True,
    "target": "cpu",
}
STAMP_BASES: dict[int, dict[str, Any]] = {1: STAMP_BASE_1}
STAMP_BASE = 1  # the table new stamps are written against

ACTIVATION_TYPES = ("uint8", "int8", "uint16", "int16")
WEIGHT_TYPES = ("int8", "uint8")


@dataclass(frozen=True)
class CalibrationSettings:
    method: str = "minmax"
    percentile: float = 99.999
    max_samples: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"calibration method {self.method!r} unknown; choose from {', '.join(METHODS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise UsageError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.max_samples is not None and self.max_samples < 1:
            raise UsageError(f"max_samples must be at least 1, got {self.max_samples}")


@dataclass(frozen=True)
class QuantizationSettings:
    activation_type: str = "uint8"
    activation_symmetric: bool = False
    weight_type: str = "int8"
    per_channel: bool = True
    # 7-bit weights for GEMM-based kernels (depthwise convs keep 8 bits): onnxruntime's u8s8
    # kernels on x86 CPUs without VNNI saturate 16-bit intermediate sums with full 8-bit
    # weights (see README, "Why 7-bit weights").
    reduce_range: bool = True
    # Where reduce_range would give 7-bit weights: full 8-bit int8 weights whose same-sign
    # neighbour pairs are limited so that the u8s8 kernels cannot saturate, for layers whose
    # reduction order is known (Conv with one group, Gemm, 2-D MatMul; recovery/pair_limited.py). None (the
    # default, not stamped): on for the CPU target; False: 7-bit weights as before.
    pair_limited_weights: bool | None = None
    quantize_bias: bool = True
    op_types: tuple[str, ...] | None = None  # None: every op type the target fuses
    # 4: MatMul weights whose distribution int4 keeps well become block-wise int4 (MatMulNBits,
    # onnxruntime CPU); with a --max-drop budget, the least sensitive layers first.
    weight_bits: int = 8
    int4_block_size: int = 32
    int4_min_sqnr_db: float = 18.0  # a weight int4 keeps worse than this stays int8
    # Fuse a BERT-like encoder's attention blocks into Attention, quantized as QAttention
    # (README, "Transformer fusion"). None: on for the cpu target, off for the others.
    fuse_transformer: bool | None = None
    # Integer kernels or float compute on int8-stored weights (README, "Slower than fp32 by
    # construction"). None: integer kernels, unless the CPU target's convolutions are estimated
    # to run slower as int8 than fp32 on its CPU kind; True: integer kernels always; False: float
    # compute always (CPU target).
    integer_compute: bool | None = None
    # LSTMs on the CPU target: None/True (not stamped) onnxruntime's DynamicQuantizeLSTM, which
    # quantizes the input and hidden state to uint8 at every time step (fast; the error compounds
    # over long sequences); False: the int8 weights dequantized in front of a float LSTM (fp32's
    # speed, int8's size). The recipe search tries False on models with LSTMs.
    recurrent_integer: bool | None = None

    def __post_init__(self) -> None:
        if self.weight_bits not in (4, 8):
            raise UsageError(f"weight_bits must be 4 or 8, got {self.weight_bits}")
        if self.int4_block_size < 16 or self.int4_block_size & (self.int4_block_size - 1):
            raise UsageError(f"int4_block_size must be a power of two, at least 16, got {self.int4_block_size}")
        if self.activation_type not in ACTIVATION_TYPES:
            raise UsageError(f"activation type {self.activation_type!r} unknown; choose from {', '.join(ACTIVATION_TYPES)}")
        if self.weight_type not in WEIGHT_TYPES:
            raise UsageError(f"weight type {self.weight_type!r} unknown; choose from {', '.join(WEIGHT_TYPES)}")
        if self.activation_symmetric and self.activation_type.startswith("uint"):
            raise UsageError("symmetric activations need a signed type (int8 or int16)")


@dataclass(frozen=True)
class NodeSelection:
    """Patterns: ``op:Conv`` (op type), ``re:<regex>`` (node name regex), or an exact node name."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    # Conv/Gemm/MatMul layers whose weights are full 8-bit uint8 (u8u8 kernels: they widen to 16
    # bits before multiplying, so they do not saturate where u8s8 does; slower). The recipe search
    # gives them to the layers that dominate the error on AVX2 hosts.
    uint8_weights: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        import re

        for pattern in (*self.include, *self.exclude, *self.uint8_weights):
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as exc:
                    raise UsageError(f"bad node pattern {pattern!r}: {exc}") from exc
            elif not pattern or pattern == "op:":
                raise UsageError("empty node pattern")


@dataclass(frozen=True)
class RecoverySettings:
    """Accuracy-recovery passes (see README, "Accuracy recovery"); defaults are the measured best."""

    # Cross-layer equalisation of Conv pairs joined by ReLU-like activations. None: only with
    # per-tensor weights (with per-channel weights it measured no gain: PP-OCR IoU 0.9378 ->
    # 0.9383, EfficientNet-Lite0 KL 0.025 -> 0.030).
    equalize: bool | None = None
    # Magnify the quiet channels of depthwise-Conv inputs from calibration ranges, through their
    # producing Conv (recovery/depthwise_ranges.py). None (not stamped): on with per-channel weights,
    # which take the scale at no cost (PP-LCNet orientation classifier: held-out KL 0.0137 -> 0.0014).
    depthwise_equalize: bool | None = None
    smoothquant: bool = True  # move activation outliers into MatMul weights (LayerNorm producers)
    smoothquant_alpha: float = 0.75  # measured best on MiniLM (0.5: cos 0.985, 0.75: 0.995)
    # True: only where the division folds into a LayerNormalization; False: also insert a Mul.
    smoothquant_fold_only: bool = False
    bias_correction: bool = True  # cancel each layer's mean output shift, per channel
    # Error-compensating rounding (GPTQ) of MatMul/Gemm/Attention weights on token activations.
    # None: on (left out of the stamped recipe, which then says what it said before).
    gptq: bool | None = None
    adaround: bool = False  # learned rounding of weights (slower; numpy only)
    adaround_iterations: int = 300
    adaround_seconds: float | None = None  # time cap; layers past it keep nearest rounding

    def __post_init__(self) -> None:
        if not 0.0 < self.smoothquant_alpha < 1.0:
            raise UsageError(f"smoothquant_alpha must be in (0, 1), got {self.smoothquant_alpha}")
        if self.adaround_iterations < 1:
            raise UsageError(f"adaround_iterations must be at least 1, got {self.adaround_iterations}")
        if self.adaround_seconds is not None and self.adaround_seconds <= 0:
            raise UsageError(f"adaround_seconds must be positive, got {self.adaround_seconds}")


@dataclass(frozen=True)
class SearchSettings:
    """The automatic recipe search (README, "Recipe search"): trials re-plan the calibrated model
    with other range estimators, bias correction on or off, and the dominant layers kept float,
    each scored against fp32 on calibration samples held out from calibration.

    ``trials``: at most this many (the recipe as given is the first); the result depends only on
    the inputs and this count. ``seconds``: an optional wall-clock cap on top; a search it cuts
    says so, since a faster machine would have tried more. ``min_samples``: with fewer
    calibration samples there is too little to hold out, and the recipe is used as given.
    ``score_every``: one of every this many calibration samples is held out for scoring
    (``search.split``); more where that would hold out fewer than 6: the noise test cannot pass
    on fewer.
    """

    enabled: bool = True
    trials: int = 10
    seconds: float | None = None
    min_samples: int = 16  # 8 held out (every 2nd: 4 would be too few for the noise test)
    score_every: int = 4

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise UsageError(f"search trials must be at least 1, got {self.trials}")
        if self.seconds is not None and not 0 < self.seconds < float("inf"):
            raise UsageError(f"search seconds must be a positive number, got {self.seconds}")
        if self.score_every < 2:
            raise UsageError(f"search score_every must be at least 2, got {self.score_every}")
        if self.min_samples < self.score_every:
            raise UsageError(f"search min_samples must be at least score_every ({self.score_every}), "
                             f"got {self.min_samples}")


PRUNE_METHODS = ("magnitude", "wanda")
PRUNE_SCOPES = ("layer", "global")


@dataclass(frozen=True)
class PruneSettings:
    """Zero weights before calibration (see README, "Pruning"); nothing is pruned by default.

    ``sparsity``: the fraction of zeros to reach in each pruned layer (``scope = "global"``: over
    all of them, one magnitude cut). ``threshold``: zero every weight with ``|w| <= threshold``.
    ``pattern``: N:M semi-structured sparsity ("2:4"), N kept of every M along the input dim.
    ``channels``: the fraction of each removable layer's output channels to zero, weakest first;
    ``remove_dead`` then takes every all-zero channel out of the graph (a smaller dense model).
    ``max_drop``: search the largest ``sparsity`` (or ``channels``) that keeps the float pruned
    model within this drop of fp32 on held-out samples; the value given is the upper limit.
    """

    sparsity: float | None = None
    threshold: float | None = None
    scope: str = "layer"
    method: str = "magnitude"  # "wanda": |w| times the input channel's RMS on the calibration data
    pattern: str | None = None
    channels: float | None = None
    remove_dead: bool = True
    # Layers keep a multiple of this many channels: onnxruntime's blocked conv kernels want 8 or
    # 16, and odd counts ran slower than the unpruned model (see README, "Pruning").
    channel_multiple: int = 16
    depthwise: bool = False  # depthwise filters are tiny and sensitive: left alone unless asked
    max_drop: float | None = None
    sparse_storage: bool = False  # float initializers stored sparse where that is smaller
    # Refit the kept weights and biases to the calibration data (needs data; SparseGPT's
    # least-squares step): EfficientNet-Lite0 at 30% sparsity, top-1 agreement 0.41 -> 0.72.
    reconstruct: bool = True

    def __post_init__(self) -> None:
        for name in ("sparsity", "channels"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise UsageError(f"prune {name} must be in [0, 1), got {value}")
        if self.channel_multiple < 1:
            raise UsageError(f"prune channel_multiple must be at least 1, got {self.channel_multiple}")
        if self.threshold is not None and self.threshold < 0:
            raise UsageError(f"prune threshold must be at least 0, got {self.threshold}")
        chosen = [n for n in ("sparsity", "threshold", "pattern") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise UsageError(f"prune: give one of sparsity, threshold and pattern, not {' and '.join(chosen)}")
        if self.scope not in PRUNE_SCOPES:
            raise UsageError(f"prune scope {self.scope!r} unknown; choose from {', '.join(PRUNE_SCOPES)}")
        if self.method not in PRUNE_METHODS:
            raise UsageError(f"prune method {self.method!r} unknown; choose from {', '.join(PRUNE_METHODS)}")
        if self.pattern is not None:
            self.n_m  # noqa: B018 - validates
        if self.max_drop is not None:
            if self.max_drop < 0:
                raise UsageError(f"prune max_drop must be at least 0, got {self.max_drop}")
            if self.threshold is not None or self.pattern is not None:
                raise UsageError("prune max_drop searches sparsity or channels, not a threshold or a pattern")

    @property
    def n_m(self) -> tuple[int, int] | None:
        if self.pattern is None:
            return None
        parts = self.pattern.split(":")
        if len(parts) != 2 or not all(p.isdigit() for p in parts) or not 0 < int(parts[0]) < int(parts[1]):
            raise UsageError(f"prune pattern must be N:M with 0 < N < M (e.g. 2:4), got {self.pattern!r}")
        return int(parts[0]), int(parts[1])

    @property
    def enabled(self) -> bool:
        return (any(v is not None for v in (self.sparsity, self.threshold, self.pattern, self.channels))
                or self.max_drop is not None)


# The runtimes a recipe's ``target`` names. onnxruntime's CPU provider is one runtime for every CPU
# kind: ``cpu`` quantizes for this host, ``cpu-avx2``/``cpu-vnni``/``cpu-arm64`` for a named CPU kind
# (see README, "CPU kinds"); each gives ``target == "cpu"`` and records the kind in ``Recipe.cpu``.
RUNTIMES = ("cpu", "qnn", "openvino")
TARGETS = ("cpu", *CPU_TARGETS, "qnn", "openvino")

# What each runtime wants, applied under the user's own settings (see README, "Targets").
TARGET_PRESETS: dict[str, dict[str, Any]] = {
    # onnxruntime CPU: the defaults above; weight bits then follow the CPU kind (host.CPU_KINDS).
    "cpu": {},
    # QNN HTP: uint8 activations, symmetric 8-bit weights with full range (the NPU multiplies in
    # 32 bits, no saturation), every op quantized, fixed input shapes.
    "qnn": {"activation_type": "uint8", "weight_type": "int8", "per_channel": True, "reduce_range": False},
    # OpenVINO CPU: the same QDQ placement as onnxruntime's CPU; its int8 kernels saturate the
    # same way without VNNI (EfficientNet-Lite0 top-1 agreement 0.63 with 8-bit weights, 0.72 with 7).
    "openvino": {"activation_type": "uint8", "weight_type": "int8", "per_channel": True, "reduce_range": True},
}
# Targets whose compiler wants Q/DQ around every op and graphs with fixed input shapes.
EVERY_OP_TARGETS = frozenset({"qnn"})


def is_cpu_target(target: str) -> bool:
    """A target name (flag, job or recipe key) that runs on onnxruntime's CPU provider."""
    return target == "cpu" or target in CPU_TARGETS


def _check_shapes(shapes: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    checked = {}
    for name, dims in shapes.items():
        if (not isinstance(dims, (list, tuple)) or not dims
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d < 2**31 for d in dims)):
            raise UsageError(f"input shape of {name!r} must be a list of positive integers, got {dims!r}")
        checked[str(name)] = tuple(int(d) for d in dims)
    return checked


@dataclass(frozen=True)
class Recipe:
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    quantization: QuantizationSettings = field(default_factory=QuantizationSettings)
    nodes: NodeSelection = field(default_factory=NodeSelection)
    preprocess: ImagePreprocess = field(default_factory=ImagePreprocess)
    recovery: RecoverySettings = field(default_factory=RecoverySettings)
    prune: PruneSettings = field(default_factory=PruneSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    simplify: bool = True
    target: str = "cpu"
    # Fixed sizes for inputs with free dims, e.g. {"input_ids": (1, 128)}; sorted for stable output.
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    # The CPU kind the weights were chosen for (target cpu, from recipe_for_target); None: not chosen
    # (Recipe() itself: the 7-bit weights that no CPU saturates; the library and the CLI default to
    # recipe_for_target("cpu"), this host's kind).
    cpu: CpuChoice | None = None

    def __post_init__(self) -> None:
        if is_cpu_target(self.target) and self.target != "cpu":
            raise UsageError(f"target {self.target!r} names a CPU kind: build the recipe with "
                             f"recipe_for_target({self.target!r}), which sets its weights")
        if self.target not in RUNTIMES:
            raise UsageError(f"target {self.target!r} unknown; choose from {', '.join(TARGETS)}")
        if self.cpu is not None and self.target != "cpu":
            raise UsageError(f"a CPU kind is for target cpu, not {self.target!r}")
        if self.quantization.integer_compute is False and self.target != "cpu":
            raise UsageError("float compute on int8-stored weights (integer_compute = false) is for target cpu")
        if self.quantization.weight_bits == 4 and self.target != "cpu":
            raise UsageError("4-bit weights are written as onnxruntime's CPU MatMulNBits: use them with target cpu")

    @property
    def every_op(self) -> bool:
        return self.target in EVERY_OP_TARGETS

    @property
    def transformer_fusion(self) -> bool:
        """Whether preparation fuses transformer attention blocks (QAttention is a CPU kernel)."""
        return self.target == "cpu" and self.quantization.fuse_transformer is not False

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self.input_shapes)

    def cpu_note(self, host: HostCpu | None = None, float_compute: bool = False) -> str | None:
        """The summary's line on the CPU kind the weights were chosen for, and why (None: no kind).
        ``float_compute``: the model has no integer kernel left."""
        return target_note(self.target, self.cpu, self.quantization.reduce_range, host, self.quantization.weight_type,
                           float_compute)

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))

    def to_json(self) -> str:
        """The stamp a model carries: the id of a fixed base table (``STAMP_BASE``) and only the
        fields that differ from that table (a field set to None where the table has a value:
        null), with the CPU kind without its reason (which the kind implies). On a tiny model the
        full recipe (1 KB) was a fifth of the file; ``recipe_of`` reads the stamp back whole, over
        the same table, whatever this version's defaults are by then."""
        stamp = _differences(_stamp_form(self.to_dict()), _base(STAMP_BASE))
        return json.dumps({STAMP_BASE_KEY: STAMP_BASE, **stamp}, sort_keys=True, separators=(",", ":"))

    def with_overrides(self, **sections: Any) -> Recipe:
        """A copy with some fields replaced; ``None`` values keep the current setting.

        ``with_overrides(calibration={"method": "mse"}, simplify=False)``
        """
        changes: dict[str, Any] = {}
        for name, values in sections.items():
            if name == "simplify":
                if values is not None:
                    changes[name] = bool(values)
                continue
            if name == "input_shapes":
                if values:
                    changes[name] = tuple(sorted(_check_shapes(dict(values)).items()))
                continue
            if name not in _SECTIONS:
                raise UsageError(f"unknown recipe section {name!r}")
            values = {k: v for k, v in values.items() if v is not None}
            current = getattr(self, name)
            changes[name] = _build(type(current), {**asdict(current), **values}, name)
        return replace(self, **changes)


def _stamp_form(data: dict[str, Any]) -> dict[str, Any]:
    """``to_dict`` as stamped: no empty lists (they read back as their defaults), and no CPU
    reason (``CpuChoice`` derives it from the kind)."""
    data = _without_empty_lists(data)
    if isinstance(data.get("cpu"), dict):
        data["cpu"] = {k: v for k, v in data["cpu"].items() if k != "reason"}
    return data


def _without_empty_lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_empty_lists(v) for k, v in value.items() if not (isinstance(v, list) and not v)}
    return value


def _differences(value: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``value`` that differ from ``default``, per section (a section with no
    difference is left out); a key of ``default`` that ``value`` lacks (set to None) is null."""
    out: dict[str, Any] = {}
    for key in sorted({*value, *default}):
        here, there = value.get(key), default.get(key)
        if isinstance(here, dict) and isinstance(there, dict):
            inner = _differences(here, there)
            if inner:
                out[key] = inner
        elif here != there:
            out[key] = here
    return out


def _base(number: int) -> dict[str, Any]:
    """A fresh copy of base table ``number`` (the tables themselves are never changed)."""
    return json.loads(json.dumps(STAMP_BASES[number]))


def _over_defaults(stamp: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    """``default`` with ``stamp``'s values over it, section by section; null removes a key
    (``to_dict`` leaves None fields out)."""
    out = dict(default)
    for key, value in stamp.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _over_defaults(value, out[key])
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


_SECTIONS = {
    "calibration": CalibrationSettings,
    "quantization": QuantizationSettings,
    "nodes": NodeSelection,
    "preprocess": ImagePreprocess,
    "recovery": RecoverySettings,
    "prune": PruneSettings,
    "search": SearchSettings,
}


def _build(cls: type, values: dict[str, Any], section: str) -> Any:
    return build_section(cls, values, f"recipe [{section}]")


def build_section(cls: type, values: dict[str, Any], label: str) -> Any:
    """The settings dataclass ``cls`` from one TOML table; unknown keys and bad values are a
    UsageError that starts with ``label`` (``recipe [calibration]``, ``job [validate]``)."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UsageError(f"{label}: unknown key(s) {unknown}; known: {sorted(known)}")
    converted = check_fields(cls, values, label)
    try:
        return cls(**converted)
    except TypeError as exc:
        raise UsageError(f"{label}: {exc}") from exc
    except UsageError as exc:
        if str(exc).startswith(label):
            raise
        raise UsageError(f"{label}: {exc}") from exc


def recipe_for_target(target: str, host: HostCpu | None = None) -> Recipe:
    """The default recipe with ``target``'s preset applied.

    CPU targets choose the weights for a CPU kind: ``cpu`` for this machine (or ``host``, for a
    caller that read another), ``cpu-avx2``/``cpu-vnni``/``cpu-arm64`` for the kind they name.
    """
    if target not in TARGETS:
        raise UsageError(f"target {target!r} unknown; choose from {', '.join(TARGETS)}")
    if is_cpu_target(target):
        choice = cpu_choice(target, host)
        preset = {**TARGET_PRESETS["cpu"], "reduce_range": CPU_KINDS[choice.kind].reduce_range}
        return Recipe(target="cpu", cpu=choice, quantization=QuantizationSettings(**preset))
    return Recipe(target=target, quantization=QuantizationSettings(**TARGET_PRESETS[target]))


_TOP_LEVEL = ("simplify", "target", "input_shapes")


def recipe_from_dict(data: dict[str, Any], target: str | None = None, host: HostCpu | None = None) -> Recipe:
    """A recipe from TOML data: the target's preset first, then the file's settings over it.

    ``target`` (from a command-line flag) wins over the file's own ``target`` key.
    """
    unknown = sorted(set(data) - set(_SECTIONS) - set(_TOP_LEVEL))
    if unknown:
        raise UsageError(f"recipe: unknown section(s) {unknown}; known: {sorted([*_SECTIONS, *_TOP_LEVEL])}")
    chosen = target or data.get("target", "cpu")
    if not isinstance(chosen, str):
        raise UsageError("recipe: target must be a string")
    base = recipe_for_target(chosen, host)
    parts: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        section = data.get(name, {})
        if not isinstance(section, dict):
            raise UsageError(f"recipe: [{name}] must be a table")
        parts[name] = _build(cls, {**asdict(getattr(base, name)), **section}, name)
    simplify = data.get("simplify", True)
    if not isinstance(simplify, bool):
        raise UsageError("recipe: simplify must be true or false")
    shapes = data.get("input_shapes", {})
    if not isinstance(shapes, dict):
        raise UsageError("recipe: [input_shapes] must be a table of name = [dims]")
    return Recipe(simplify=simplify, target=base.target, cpu=base.cpu,
                  input_shapes=tuple(sorted(_check_shapes(shapes).items())), **parts)


def read_toml(path: Path, what: str) -> tuple[str, dict[str, Any]]:
    """The text of the TOML file at ``path`` and its data; a missing or broken file is a UsageError."""
    try:
        text = path.read_text(encoding="utf-8")
        return text, parse_limited(text, tomllib.loads, str(path))
    except FileNotFoundError as exc:
        raise UsageError(f"{path}: {what} file not found") from exc
    except IsADirectoryError as exc:
        raise UsageError(f"{path}: is a folder, not a {what} file") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})") from exc
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the {what} file ({exc.strerror or exc})") from exc


def load_recipe(path: str | os.PathLike, target: str | None = None, host: HostCpu | None = None) -> Recipe:
    return recipe_from_dict(read_toml(Path(path), "recipe")[1], target, host)


def recipe_of(model: Any) -> dict[str, Any] | None:
    """The recipe onnxquant stamped into ``model`` (an onnx.ModelProto), whole: a stamp naming a
    base table (``Recipe.to_json``) holds only what differs from it and is read over it; one
    without (an older full stamp) reads back as it is. The CPU kind's reason is told again.
    None: no stamp, not a JSON object, or a base table this version does not know (a later
    version's: what it left out cannot be told)."""
    text = next((p.value for p in model.metadata_props if p.key == RECIPE_KEY), None)
    if text is None:
        return None
    try:
        stamp = parse_limited(text, json.loads, "the model's recipe")
    except (ValueError, UsageError):  # JSONDecodeError is a ValueError; too deep is a UsageError
        return None
    if not isinstance(stamp, dict):
        return None
    recipe = stamp
    if STAMP_BASE_KEY in stamp:
        number = stamp.pop(STAMP_BASE_KEY)
        if type(number) is not int or number not in STAMP_BASES:  # (not bool: True == 1)
            return None
        recipe = _over_defaults(stamp, _base(number))
    cpu = recipe.get("cpu")
    kind = cpu.get("kind") if isinstance(cpu, dict) else None
    if isinstance(cpu, dict) and "reason" not in cpu and isinstance(kind, str) and kind in CPU_KINDS:  # metadata: any JSON
        recipe["cpu"] = {**cpu, "reason": CPU_KINDS[kind].reason}
    return recipe
