"""The public entry points. The CLI is a thin layer over these."""
from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxquant.body_planner import merge_into, plan_bodies, rewrite_bodies
from onnxquant.calibration.collector import ProgressCallback, collect, make_session
from onnxquant.calibration.feeds import check_feed, input_specs
from onnxquant.calibration.observers import StatsTable, needs_histogram
from onnxquant.calibration.sources import open_for_model
from onnxquant.calibration.stats_io import load_stats, save_stats
from onnxquant.errors import (
    AlreadyQuantizedError,
    CalibrationDataError,
    ModelError,
    QuantizationError,
    UsageError,
)
from onnxquant.float_weights import FLOAT_LAYERS_KEY, WARN_FLOAT_SHARE, float_weighted_nodes, weight_bytes
from onnxquant.fusion_check import FusionCheck, check_fusion
from onnxquant.layer_errors import TensorError, dequantized_names, tensor_errors
from onnxquant.mixed_precision import (
    Holdout,
    LayerSensitivity,
    Metric,
    MixedPrecisionResult,
    measure,
    rank_layers,
    search,
    widen_int4,
)
from onnxquant.model_io import (
    PROTOBUF_LIMIT,
    check_contents,
    check_model,
    file_size,
    has_lazy,
    load_model,
    model_size,
    save_model,
    serialize,
    tensor_array,
)
from onnxquant.npu_planner import select_every_op
from onnxquant.outputs import all_or_nothing, data_files, model_files, model_outputs, refuse_aliasing
from onnxquant.ops import WEIGHTED_OPS
from onnxquant.ops.recurrent import RECURRENT_OPS
from onnxquant.ops.rules import DEFAULT_OP_TYPES, RULES, Kind
from onnxquant.passes.float16 import store_float16
from onnxquant.passes.insert_qdq import insert_qdq
from onnxquant.passes.int4_matmul import eligible as int4_eligible
from onnxquant.passes.int4_matmul import int4_sqnr_db, to_matmul_nbits
from onnxquant.passes.prepare import MIN_QDQ_OPSET, default_opset, prepare_model
from onnxquant.passes.weight_only import quantize_weights_only
from onnxquant.planner import ALREADY_QUANTIZED, NOT_FLOAT, Selection, finalize, node_names, select
from onnxquant.prequantized import compressed_layers, describe
from onnxquant.prune.pipeline import (
    PruneReport,
    prune_model,
    pruning_grams,
    wanda_norms,
    with_amount,
)
from onnxquant.prune.search import search_amount, upper_amount
from onnxquant.prune.storage import compressed_size, store_sparse
from onnxquant.recipe import Recipe
from onnxquant.recovery.pipeline import Reopen, after_plan, before_calibration
from onnxquant.version import __version__
from onnxquant.shapes import fix_input_shapes, has_free_dims
from onnxquant.weight_only_planner import select_weight_only, weight_only_notes

RECIPE_KEY = "onnxquant.recipe"
VERSION_KEY = "onnxquant.version"


@dataclass
class FloatNode:
    name: str
    op_type: str
    reason: str
    weight_bytes: int = 0  # float weight bytes it reads (0: no weight of its own)
    share: float = 0.0  # of the model's weight bytes


@dataclass
class QuantizeResult:
    """What ``quantize`` did, for people (``summary``) and scripts (``to_dict``)."""

    model: onnx.ModelProto
    output_path: Path | None
    size_before: int
    size_after: int
    quantized_nodes: dict[str, int]  # op type -> count
    float_nodes: list[FloatNode]
    samples: int
    seconds: dict[str, float]
    recipe: Recipe
    notes: list[str] = field(default_factory=list)
    mixed_precision: dict[str, Any] | None = None
    size_compressed: int | None = None  # deflated, as in a zip bundle (None over 2 GB)
    pruning: PruneReport | None = None
    # With quantize(diagnostics=True), for reports: the calibration statistics (with
    # histograms) and the float model they were taken on (prepared; same tensor names).
    stats: StatsTable | None = None
    reference: onnx.ModelProto | None = None
    fusion: FusionCheck | None = None  # which quantized layers onnxruntime runs as integer kernels
    warnings: list[str] = field(default_factory=list)
    # layers with int8 weights but no QDQ integer kernel (recurrent, inside bodies) -> why
    weight_only: dict[str, str] = field(default_factory=dict)

    @property
    def float_weight_share(self) -> float:
        return sum(n.share for n in self.float_nodes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output_path) if self.output_path else None,
            "size_before": self.size_before,
            "size_after": self.size_after,
            "size_compressed": self.size_compressed,
            "compression": round(self.size_before / max(self.size_after, 1), 3),
            "quantized_nodes": dict(sorted(self.quantized_nodes.items())),
            "quantized_node_count": sum(self.quantized_nodes.values()),
            "float_nodes": [{**vars(n), "share": round(n.share, 4)} for n in self.float_nodes],
            "float_weight_share": round(self.float_weight_share, 4),
            "fusion": self.fusion.to_dict() if self.fusion is not None else None,
            "warnings": self.warnings,
            "weight_only": dict(self.weight_only),
            "calibration_samples": self.samples,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "notes": self.notes,
            "recipe": self.recipe.to_dict(),
            **({"mixed_precision": self.mixed_precision} if self.mixed_precision is not None else {}),
            **({"pruning": self.pruning.to_dict()} if self.pruning is not None else {}),
        }


def _paths(*items: Any) -> Iterator[Path]:
    """The files a command reads from: models with their external data, sample folders' files
    (a generator: expanded only when an output could be one of them)."""
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            path = Path(item)
            yield from (model_files(path) if path.suffix.lower() == ".onnx" or path.is_file() else data_files(path))


def _refuse_aliasing(model: Any, data: Any, holdout: Any, stats: Any, output: Any, save_stats_to: Any) -> None:
    """Before any work: no output may be an input file (or another output)."""
    outputs = [*(model_outputs(output) if output is not None else []), save_stats_to]
    refuse_aliasing(_paths(model, data, holdout, stats), outputs)


def _as_model(model: onnx.ModelProto | str | os.PathLike) -> tuple[onnx.ModelProto, Path | None]:
    if isinstance(model, onnx.ModelProto):
        check_model(model)
        check_contents(model)
        return model, None
    return load_model(model), Path(model)


def _first_sample(source: Any, model: onnx.ModelProto) -> dict[str, np.ndarray] | None:
    for sample in source:
        return check_feed(sample, input_specs(model), 0)
    return None


CHECKER_MAX_BYTES = 256 * 2**20


def _self_check(quantized: bytes | Path, sample: dict[str, np.ndarray] | None,
                model: onnx.ModelProto | None = None) -> None:
    """The result (its bytes, or the file written for it) must load in onnxruntime and give
    finite outputs; it is checked before it is put in place."""
    try:
        if isinstance(quantized, Path):
            # By path, external data beside it is found. A large result is left to onnxruntime's
            # load below, which checks it as well: the checker would hold one more copy of it.
            if quantized.stat().st_size <= CHECKER_MAX_BYTES:
                onnx.checker.check_model(str(quantized))
        elif model is None or not has_lazy(model):
            # (in memory, the checker would look for data files in the working directory)
            onnx.checker.check_model(quantized)
        session = make_session(quantized, weights=None if isinstance(quantized, Path) else model)
    except (onnx.checker.ValidationError, ModelError) as exc:
        raise QuantizationError(f"internal error, result rejected: {str(exc).splitlines()[0]}") from exc
    if sample is None:
        return
    for value, out in zip(session.run(None, sample), session.get_outputs()):
        if np.asarray(value).dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise QuantizationError(f"quantized output {out.name!r} is not finite")


@dataclass
class _Saved:
    path: Path | None
    size: int  # bytes on disk (model plus external data)
    deflated: int | None  # as in a zip bundle; None when weights are not in the serialization


def _check_and_save(model: onnx.ModelProto, output: str | os.PathLike | None,
                    first: dict[str, np.ndarray] | None, notes: list[str]) -> _Saved:
    """Self-check, then put in place atomically.

    With an output, the file is written to a temporary name first and the check loads that file,
    so the serialization is dropped before onnxruntime makes its own copy (large models hold
    one copy fewer). Over 2 GB the check is skipped and ``notes`` say so.
    """
    lazy = has_lazy(model)
    payload = serialize(model) if model.ByteSize() < PROTOBUF_LIMIT else None
    size = len(payload) if payload is not None and not lazy else model_size(model)
    deflated = compressed_size(payload) if payload is not None and not lazy else None
    if payload is None:
        notes.append("model over 2 GB: the onnxruntime self-check was skipped")
        return _Saved(save_model(model, output) if output is not None else None, size, deflated)
    if output is None:
        _self_check(payload, first, model)
        return _Saved(None, size, deflated)
    data = None if lazy else payload
    del payload
    path = save_model(model, output, data, check=lambda written: _self_check(written, first))
    if lazy:  # what was written, data file included
        beside = path.with_name(path.name + ".data")
        size = path.stat().st_size + (beside.stat().st_size if beside.exists() else 0)
    return _Saved(path, size, deflated)


def _stamp(model: onnx.ModelProto, recipe: Recipe) -> None:
    props = [p for p in model.metadata_props if p.key not in (RECIPE_KEY, VERSION_KEY)]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    helper.set_model_props(model, {**{p.key: p.value for p in props}, RECIPE_KEY: recipe.to_json(), VERSION_KEY: __version__})


def calibrate(
    model: onnx.ModelProto | str | os.PathLike,
    data: Any,
    recipe: Recipe | None = None,
    progress: ProgressCallback | None = None,
    histograms: bool | None = None,
) -> StatsTable:
    """Collect activation statistics only (to save them, or to quantize several ways later)."""
    recipe = recipe or Recipe()
    prepared, _, sel, _ = _prepare_and_select(model, recipe, data)
    source = _open(prepared, data, recipe)
    want_hist = needs_histogram(recipe.calibration.method) if histograms is None else histograms
    return collect(prepared, sel.observed, source, want_hist, recipe.calibration.max_samples, progress, _length(source))


def _prepare_and_select(model: onnx.ModelProto | str | os.PathLike, recipe: Recipe, data: Any = None,
                        saved_stats: bool = False, holdout: Any = None, metric: Metric | None = None,
                        agreement: str = "cosine"):
    """Load, prepare and prune (``_load_prepared``), make the first selection and run the
    recovery passes that change activation ranges. Also returns the input's size in bytes."""
    prepared, prep, size_before = _load_prepared(model, recipe, data, holdout, metric, agreement)
    sel = _select(prepared, recipe)
    if before_calibration(prepared, sel, recipe, _reopener(prepared, data, recipe), _unavailable(data), prep.notes,
                          saved_stats):
        node_names(prepared)
        sel = _select(prepared, recipe)
    return prepared, prep, sel, size_before


def _load_prepared(model: onnx.ModelProto | str | os.PathLike, recipe: Recipe, data: Any = None,
                   holdout: Any = None, metric: Metric | None = None, agreement: str = "cosine",
                   progress: ProgressCallback | None = None):
    """Load, fix input shapes if needed, prepare, name nodes and prune if the recipe says so."""
    loaded, source_path = _as_model(model)
    size_before = file_size(source_path, loaded) if source_path else model_size(loaded)
    shapes = _fixed_shapes(loaded, recipe, data)
    if shapes:
        loaded = fix_input_shapes(loaded, shapes)
    # A model loaded here from a file is ours to rewrite; a caller's ModelProto is copied.
    prepared, prep = prepare_model(loaded, simplify=recipe.simplify, owned=source_path is not None or bool(shapes),
                                   gelu=recipe.every_op, integer_gates=_integer_gates(recipe))
    del loaded
    if shapes:
        prep.notes.append("input shapes fixed to " + ", ".join(f"{k} {list(v)}" for k, v in sorted(shapes.items())))
    node_names(prepared)
    if recipe.prune.enabled:
        prep.pruning = _prune_prepared(prepared, recipe, data, holdout, metric, agreement, progress)
        prep.notes.append("pruning: " + prep.pruning.summary())
        prep.notes.extend(f"pruning: {note}" for note in prep.pruning.notes)
    return prepared, prep, size_before


def _prune_prepared(prepared: onnx.ModelProto, recipe: Recipe, data: Any, holdout: Any, metric: Metric | None,
                    agreement: str, progress: ProgressCallback | None = None) -> PruneReport:
    """Prune ``prepared`` in place; with ``max_drop``, at the largest amount within the budget."""
    settings = recipe.prune
    samples = (lambda: _open(prepared, data, recipe)) if _rereadable(data) else None
    max_samples = recipe.calibration.max_samples
    if settings.max_drop is None:
        return prune_model(prepared, settings, samples, max_samples, progress=progress)
    held = _holdout_for(prepared, data, holdout, recipe, agreement)
    rms = wanda_norms(prepared, settings, samples, max_samples)
    grams = pruning_grams(prepared, settings, samples, max_samples)

    def pruned(amount: float) -> tuple[onnx.ModelProto, PruneReport]:
        work = onnx.ModelProto()
        work.CopyFrom(prepared)
        return work, prune_model(work, with_amount(settings, amount), samples, max_samples, rms=rms, grams=grams)

    found = search_amount(pruned, held, settings.max_drop, upper_amount(settings), metric)
    prepared.CopyFrom(found.model)
    found.report.search = found.to_dict()
    return found.report


def _rereadable(data: Any) -> bool:
    return data is not None and not hasattr(data, "get_next")


def _reopener(prepared: onnx.ModelProto, data: Any, recipe: Recipe) -> Reopen | None:
    """A fresh pass over ``data`` for recovery passes, or None when it cannot be read again."""
    if not _rereadable(data):
        return None
    return lambda: _open(prepared, data, recipe)


def _unavailable(data: Any) -> str:
    if data is None:
        return "it needs calibration data, not only saved statistics"
    return "it reads the calibration data again (give a folder or a list, not a one-pass reader)"


def _select(prepared: onnx.ModelProto, recipe: Recipe, not_float: set[str] | None = None) -> Selection:
    per_channel_ok = default_opset(prepared) >= MIN_QDQ_OPSET
    if recipe.every_op:
        sel = select_every_op(prepared, recipe, not_float, per_channel_ok)
    else:
        sel = select(prepared, recipe, not_float=not_float, per_channel_ok=per_channel_ok)
    merge_into(sel, plan_bodies(prepared, recipe, not_float, per_channel_ok))  # integer kernels in bodies
    select_weight_only(prepared, recipe, sel, per_channel_ok)  # recurrent layers, the rest of the bodies
    return sel


def _fixed_shapes(model: onnx.ModelProto, recipe: Recipe, data: Any) -> dict[str, tuple[int, ...]]:
    """The recipe's input shapes; for fixed-shape targets, free dims come from the first sample."""
    shapes = recipe.shapes
    if not recipe.every_op or not has_free_dims(model, given=shapes):
        return shapes
    first = None
    if data is not None and not hasattr(data, "get_next"):  # a reader cannot be read twice
        first = next(iter(open_for_model(model, data, recipe.preprocess)), None)
    if first is None:
        raise UsageError(f"target {recipe.target!r} compiles for fixed input shapes and the model has free dims: "
                         "give --input-shape NAME=D1,D2,... for each input")
    specs = input_specs(model)
    return {**{s.name: tuple(np.asarray(first[s.name]).shape) for s in specs if s.name in first}, **shapes}


def _length(source: Any) -> int | None:
    try:
        return len(source)
    except TypeError:
        return None


def _open(prepared: onnx.ModelProto, data: Any, recipe: Recipe):
    return open_for_model(prepared, data, recipe.preprocess)


def quantize(
    model: onnx.ModelProto | str | os.PathLike,
    data: Any = None,
    recipe: Recipe | None = None,
    output: str | os.PathLike | None = None,
    *,
    stats: StatsTable | str | os.PathLike | None = None,
    save_stats_to: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    holdout: Any = None,
    max_drop: float | None = None,
    metric: Metric | None = None,
    agreement: str = "cosine",
    diagnostics: bool = False,
) -> QuantizeResult:
    """Quantize ``model`` to int8 QDQ from calibration ``data`` (or saved ``stats``).

    ``data``: a folder of .npz files or images, an iterable of ``{input: array}`` dicts, or an
    onnxruntime ``CalibrationDataReader``. The input model is never modified; ``output`` is
    written atomically, and only after the result passes its self-check.

    ``max_drop``: automatic mixed precision. The fewest most-sensitive layers stay float so
    that the drop on ``holdout`` (default: the calibration data) is at most ``max_drop``: 1
    minus the worst output's mean cosine with fp32 (``agreement="top1"``: top-1 agreement for
    ``(batch, classes)`` outputs), or, with ``metric``, the fp32 score minus the quantized score.

    ``diagnostics``: also keep histograms and the prepared float model in the result, for reports.
    """
    with all_or_nothing():
        return _quantize(model, data, recipe, output, stats, save_stats_to, progress, holdout, max_drop, metric,
                         agreement, diagnostics)


def _quantize(model: onnx.ModelProto | str | os.PathLike, data: Any, recipe: Recipe | None,
              output: str | os.PathLike | None, stats: StatsTable | str | os.PathLike | None,
              save_stats_to: str | os.PathLike | None, progress: ProgressCallback | None, holdout: Any,
              max_drop: float | None, metric: Metric | None, agreement: str, diagnostics: bool) -> QuantizeResult:
    started = time.perf_counter()
    recipe = recipe or Recipe()
    _refuse_aliasing(model, data, holdout, stats if not isinstance(stats, StatsTable) else None, output, save_stats_to)
    prepared, prep, sel, size_before = _prepare_and_select(model, recipe, data, saved_stats=stats is not None,
                                                           holdout=holdout, metric=metric, agreement=agreement)
    _check_not_already_quantized(prepared, sel, prep.notes)
    total_weight_bytes = weight_bytes(prepared, prep.float16_weights)  # before the rewrite replaces float weights
    t_cal = time.perf_counter()
    first = None
    if stats is not None:
        table = stats if isinstance(stats, StatsTable) else load_stats(stats)
        missing = [t for t in sel.observed if t not in table.tensors]
        if len(missing) == len(sel.observed) and missing:
            raise CalibrationDataError("the statistics file does not match this model (no tensor in common)")
        if needs_histogram(recipe.calibration.method) and any(s.histogram is None for s in table.tensors.values()):
            raise CalibrationDataError(
                f"calibration method {recipe.calibration.method!r} needs histograms; the statistics file has only min/max"
            )
        if data is not None:
            first = _first_sample(_open(prepared, data, recipe), prepared)
    else:
        if data is None:
            raise CalibrationDataError("no calibration data given")
        source = _open(prepared, data, recipe)
        want_hist = needs_histogram(recipe.calibration.method) or save_stats_to is not None or diagnostics
        table = collect(prepared, sel.observed, source, want_hist, recipe.calibration.max_samples, progress, _length(source))
        first = _first_sample(source, prepared) if not hasattr(data, "get_next") else None
    calibration_seconds = time.perf_counter() - t_cal

    # Tensors that turned out not to be float32 (unknown before running) narrow the selection.
    not_float = set(sel.observed) - set(table.tensors)
    mixed = None
    int4, int4_rejected = _int4_candidates(prepared, recipe, not_float)
    kept_int8 = (f"int4 weights: {int4_rejected} MatMul weights kept int8 (int4 would keep them below "
                 f"{recipe.quantization.int4_min_sqnr_db} dB SQNR)")
    int4_notes = [kept_int8] if int4_rejected else []
    islands: list[str] = []
    warnings_early: list[str] = []
    if max_drop is None:
        # prepared is ours; kept intact (one copy more) when a float island may need a second build
        replannable = prepared.ByteSize() < REPLAN_MAX_BYTES
        quantized, sel, build_notes = _build(prepared, recipe, table, not_float, data,
                                             inplace=not (diagnostics or replannable), int4=frozenset(int4))
        fusion = _fusion(quantized, sel, build_notes) if recipe.target == "cpu" else None
        if fusion is not None and fusion.float_islands and not replannable:
            warnings_early.append(f"{len(fusion.float_islands)} quantized layer(s) run as float islands in "
                                  "onnxruntime (dequantized weights on every call); not re-planned: the model "
                                  f"is over {REPLAN_MAX_BYTES // 2**20} MB")
        if fusion is not None and fusion.float_islands and replannable:
            islands = fusion.float_islands
            quantized, sel, build_notes = _build(prepared, _excluding(recipe, islands), table, not_float, data,
                                                 inplace=not diagnostics, int4=frozenset(int4))
            build_notes.append(f"{len(islands)} layer(s) kept float: onnxruntime would not fuse them into "
                               "integer kernels (float islands, slower than fp32)")
            fusion = _fusion(quantized, sel, build_notes)
    else:
        mixed = _mixed_precision(prepared, recipe, table, not_float, data, holdout, max_drop, metric, progress, int4,
                                 agreement)
        kept = f"mixed precision: {len(mixed.float_layers)} layer(s) kept float, drop {mixed.drop:.4f} within budget {max_drop}"
        if recipe.quantization.weight_bits == 4:
            kept += f"; {len(mixed.int4_layers)} of {len(int4)} int4 candidates given 4-bit weights"
        quantized, build_notes = mixed.model, [kept]
        recipe = _excluding(recipe, [*mixed.float_layers, *mixed.int4_layers])  # int8 selection of this model
        sel = _select(prepared, recipe, not_float)
        fusion = _fusion(quantized, sel, build_notes) if recipe.target == "cpu" else None
    build_notes += int4_notes
    if prep.float16_weights:
        kept16 = store_float16(quantized, prep.float16_weights)
        if kept16:
            build_notes.append(f"{kept16} float weight(s) stored in fp16 as in the original")
    for name in islands:
        sel.float_nodes[name] = (sel.float_nodes[name][0], FLOAT_ISLAND)
    # Shape arithmetic (int64 Concat, Gather of shapes...) is not float compute: not reported.
    floats, warnings = _float_report(quantized, sel, total_weight_bytes)
    warnings = [*warnings_early, *warnings]
    if fusion is not None and fusion.round_trips:
        warnings.append(f"{len(fusion.round_trips)} float op(s) run between integer kernels in onnxruntime "
                        f"({fusion.round_trip_summary()}): each pays a dequantize/quantize round trip, so these "
                        "parts may run slower than in fp32")
    _stamp(quantized, recipe)
    _stamp_float_layers(quantized, floats)
    notes = [*prep.notes, *build_notes]
    saved = _check_and_save(quantized, output, first, notes)
    if save_stats_to is not None and stats is None:  # last: a failure before leaves no statistics file
        save_stats(table, save_stats_to)

    if prep.folded_constants:
        notes.append(f"{prep.folded_constants} Constant nodes folded into initializers")
    if prep.folded_affines:
        notes.append(f"{prep.folded_affines} constant Mul/Add folded into Conv weights")
    if prep.fused_hardswish:
        notes.append(f"{prep.fused_hardswish} hard-swish patterns fused")
    if prep.fused_gelu:
        notes.append(f"{prep.fused_gelu} GELU patterns fused into Gelu")
    if prep.gates.total:
        notes.append(f"{prep.gates.total} HardSigmoid gates written as Conv + Clip for integer kernels "
                     f"({prep.gates.folded} folded into their Conv, {prep.gates.depthwise} depthwise 1x1)")
    if prep.affines_as_depthwise:
        notes.append(f"{prep.affines_as_depthwise} constant per-channel Mul/Add written as depthwise 1x1 Conv "
                     "for integer kernels")
    notes.extend(weight_only_notes(sel))
    return QuantizeResult(
        model=quantized,
        output_path=saved.path,
        size_before=size_before,
        size_after=saved.size,
        quantized_nodes=dict(Counter(sel.quantized.values())),
        float_nodes=floats,
        samples=table.samples,
        seconds={"calibration": calibration_seconds, "total": time.perf_counter() - started},
        recipe=recipe,
        notes=notes,
        mixed_precision=mixed.to_dict() if mixed is not None else None,
        size_compressed=saved.deflated,
        pruning=prep.pruning,
        stats=table if diagnostics else None,
        reference=prepared if diagnostics else None,
        fusion=fusion,
        warnings=warnings,
        weight_only={name: w.reason for name, w in sel.weight_only.items()},
    )


def _integer_gates(recipe: Recipe) -> bool:
    """HardSigmoid becomes Conv + Clip only where that makes integer kernels: the CPU target,
    with Conv and Mul quantized (onnxruntime has no integer HardSigmoid)."""
    return recipe.target == "cpu" and {"Conv", "Mul"} <= set(recipe.quantization.op_types or DEFAULT_OP_TYPES)


# A float island is re-planned as float; a second build needs the prepared model intact, which
# costs a copy of it: above this size, islands are reported, not re-planned.
REPLAN_MAX_BYTES = 512 * 2**20
FLOAT_ISLAND = "onnxruntime would not fuse it (float island)"


def _check_not_already_quantized(prepared: onnx.ModelProto, sel: Selection, notes: list[str]) -> None:
    """Stop with one line when an already-quantized model has nothing float left to compress."""
    done = compressed_layers(prepared)
    if not done:
        return
    if not any(RULES[op].kind == Kind.WEIGHTED for op in sel.quantized.values()):
        raise AlreadyQuantizedError(f"the model is already quantized ({describe(done)}) and has no float "
                                    "weighted layer left that onnxquant can quantize")
    notes.append(f"already quantized: {describe(done)}; the float remainder is quantized")


def _fusion(quantized: onnx.ModelProto, sel: Selection, notes: list[str]) -> FusionCheck | None:
    """onnxruntime's view of which quantized layers became integer kernels (None when it cannot tell)."""
    if quantized.ByteSize() >= PROTOBUF_LIMIT or has_lazy(quantized):
        notes.append("fusion self-check skipped: weights in external data or over 2 GB")
        return None
    try:
        return check_fusion(quantized, serialize(quantized), only=set(sel.quantized))
    except Exception as exc:  # onnxruntime's own refusal; the self-check that follows reports it
        notes.append(f"fusion self-check skipped: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}")
        return None


def _float_report(quantized: onnx.ModelProto, sel: Selection, total_bytes: int) -> tuple[list[FloatNode], list[str]]:
    """Every node left float that is worth telling (compute ops with a reason, and every node of any
    op type, subgraphs included, that reads a float weight), with its share of the weight bytes;
    a warning when more than WARN_FLOAT_SHARE of the weight bytes stays float."""
    weighted = {w.node: w for w in float_weighted_nodes(quantized)}
    floats: list[FloatNode] = []
    for name, (op, reason) in sel.float_nodes.items():
        if reason == ALREADY_QUANTIZED:
            continue
        w = weighted.pop(name, None)
        if w is not None or (op in _INTERESTING and reason != NOT_FLOAT) or "excluded" in reason or "include" in reason:
            size = w.weight_bytes if w is not None else 0
            floats.append(FloatNode(name, op, reason, size, size / total_bytes if total_bytes else 0.0))
    for w in weighted.values():  # not planned at all: inside If/Loop/Scan bodies, or a quantized node's extra input
        if w.node in sel.quantized or not w.weight_bytes:
            continue
        reason = "inside an If/Loop/Scan body (subgraphs are not quantized)" if w.in_subgraph else "op type not quantized"
        floats.append(FloatNode(w.node, w.op_type, reason, w.weight_bytes, w.weight_bytes / total_bytes if total_bytes else 0.0))
    share = sum(n.share for n in floats)
    warnings = []
    if share > WARN_FLOAT_SHARE:
        top = sorted({n.op_type for n in floats if n.share}, key=lambda op: -sum(n.share for n in floats if n.op_type == op))
        warnings.append(f"{share:.0%} of the weight bytes stay float ({', '.join(top[:4])}): see 'left float'")
    return floats, warnings


def _stamp_float_layers(model: onnx.ModelProto, floats: list[FloatNode]) -> None:
    """The float weighted layers and why, in the model's metadata, for ``inspect``."""
    import json

    entries = [{"node": n.name, "op_type": n.op_type, "reason": n.reason} for n in floats if n.weight_bytes]
    props = {p.key: p.value for p in model.metadata_props if p.key != FLOAT_LAYERS_KEY}
    if entries:
        props[FLOAT_LAYERS_KEY] = json.dumps(entries, sort_keys=True)
    del model.metadata_props[:]
    helper.set_model_props(model, props)


@dataclass
class PruneResult:
    """What ``prune`` did: per-layer sparsity, removed channels, sizes plain and compressed."""

    model: onnx.ModelProto
    output_path: Path | None
    report: PruneReport
    size_before: int
    size_after: int
    compressed_before: int
    compressed_after: int
    sparse_initializers: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output_path) if self.output_path else None,
            "size_before": self.size_before,
            "size_after": self.size_after,
            "size_compressed_before": self.compressed_before,
            "size_compressed_after": self.compressed_after,
            "sparse_initializers": self.sparse_initializers,
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
            **self.report.to_dict(),
        }


def prune(
    model: onnx.ModelProto | str | os.PathLike,
    data: Any = None,
    recipe: Recipe | None = None,
    output: str | os.PathLike | None = None,
    *,
    holdout: Any = None,
    metric: Metric | None = None,
    agreement: str = "cosine",
    progress: ProgressCallback | None = None,
) -> PruneResult:
    """Prune ``model`` as ``recipe.prune`` says and return a float model (prepared as for
    quantization: BatchNorm folded, constants folded), written atomically to ``output``.

    ``data`` is needed for Wanda scores and for ``max_drop`` (held-out samples default to it).
    ``progress``: called with (layers refit, layers) while the pruned layers are refit.
    """
    with all_or_nothing():
        return _prune(model, data, recipe, output, holdout, metric, agreement, progress)


def _prune(model: onnx.ModelProto | str | os.PathLike, data: Any, recipe: Recipe | None,
           output: str | os.PathLike | None, holdout: Any, metric: Metric | None, agreement: str,
           progress: ProgressCallback | None) -> PruneResult:
    started = time.perf_counter()
    recipe = recipe or Recipe()
    _refuse_aliasing(model, data, holdout, None, output, None)
    if not recipe.prune.enabled:
        raise UsageError("nothing to prune: give a sparsity, a threshold, a pattern (2:4) or a channel fraction")
    original_bytes = Path(model).read_bytes() if not isinstance(model, onnx.ModelProto) else None
    pruned, prep, size_before = _load_prepared(model, recipe, data, holdout, metric, agreement, progress)
    if original_bytes is None:
        original_bytes = serialize(model) if model.ByteSize() < PROTOBUF_LIMIT else b""
    sparse = store_sparse(pruned) if recipe.prune.sparse_storage else 0
    _stamp(pruned, recipe)
    notes = [n for n in prep.notes if n != "pruning: " + prep.pruning.summary()]  # the report says it
    first = _first_sample(_open(pruned, data, recipe), pruned) if _rereadable(data) else None
    saved = _check_and_save(pruned, output, first, notes)
    if sparse:
        notes.append(f"{sparse} initializers stored sparse")
    return PruneResult(pruned, saved.path, prep.pruning, size_before, saved.size,
                       compressed_size(original_bytes), saved.deflated or 0,
                       sparse, time.perf_counter() - started, notes)


def _excluding(recipe: Recipe, nodes: Sequence[str]) -> Recipe:
    if not nodes:
        return recipe
    return recipe.with_overrides(nodes={"exclude": (*recipe.nodes.exclude, *nodes)})


def _ensure_stats(prepared: onnx.ModelProto, sel: Selection, table: StatsTable, data: Any, recipe: Recipe) -> bool:
    """Observe tensors a narrower selection needs that the full one did not (a Conv's own output
    when its Relu stays float). False when they cannot be observed."""
    missing = [t for t in sel.observed if t not in table.tensors]
    if not missing:
        return True
    if not _rereadable(data):
        return False
    extra = collect(prepared, missing, _open(prepared, data, recipe), needs_histogram(recipe.calibration.method),
                    recipe.calibration.max_samples)
    table.tensors.update(extra.tensors)
    return all(t in table.tensors for t in sel.observed)


def _build(prepared: onnx.ModelProto, recipe: Recipe, table: StatsTable, not_float: set[str], data: Any,
           inplace: bool, recover: bool = True, int4: frozenset[str] = frozenset()
           ) -> tuple[onnx.ModelProto, Selection, list[str]]:
    """Plan, recover and rewrite: the quantized model for ``recipe`` from calibrated ``table``.

    With ``inplace`` false, ``prepared`` is left as it was (recovery passes change weights).
    ``int4``: MatMul nodes that get 4-bit block-wise weights (float activations) instead of int8.
    """
    recipe = _excluding(recipe, sorted(int4))
    work = prepared
    if not inplace:
        work = onnx.ModelProto()
        work.CopyFrom(prepared)
    sel = _select(work, recipe, not_float)
    if not _ensure_stats(work, sel, table, data, recipe):
        raise CalibrationDataError("this selection needs statistics of tensors that were not observed")
    plan = finalize(work, sel, table, recipe)
    notes = [*plan.notes, *(after_plan(work, plan, recipe, _reopener(work, data, recipe), _unavailable(data))
                            if recover else [])]
    quantized = insert_qdq(work, plan, default_opset(work), inplace=True)
    rewrite_bodies(quantized, recipe, table, not_float, default_opset(work) >= MIN_QDQ_OPSET, default_opset(work))
    # On the CPU, onnxruntime's DynamicQuantizeLSTM multiplies the int8 weights directly; the
    # other targets get a DequantizeLinear in front of a standard LSTM.
    quantize_weights_only(quantized, sel.weight_only, recipe.quantization.weight_type, default_opset(quantized),
                          dynamic_lstm=recipe.target == "cpu", reduce_range=recipe.quantization.reduce_range)
    if int4:
        replaced = to_matmul_nbits(quantized, set(int4), recipe.quantization.int4_block_size)
        notes.append(f"int4 weights: {replaced} MatMul layers as MatMulNBits "
                     f"(block {recipe.quantization.int4_block_size}, float activations)")
    return quantized, sel, notes


def _weighted_units(prepared: onnx.ModelProto, sel: Selection) -> list[tuple[str, str]]:
    """Quantized Conv/Gemm/MatMul-like nodes, in graph order: the units mixed precision moves."""
    return [(n.name, n.op_type) for n in prepared.graph.node
            if n.name in sel.quantized and n.op_type in RULES and RULES[n.op_type].kind == Kind.WEIGHTED]


def _rank(prepared: onnx.ModelProto, recipe: Recipe, table: StatsTable, not_float: set[str], data: Any,
          holdout: Holdout, metric: Metric | None, progress: ProgressCallback | None) -> list[LayerSensitivity]:
    sel = _select(prepared, recipe, not_float)

    def alone(node: str) -> onnx.ModelProto | None:
        solo = recipe.with_overrides(nodes={"include": (node,)})
        try:
            model, solo_sel, _ = _build(prepared, solo, table, not_float, data, inplace=False, recover=False)
        except CalibrationDataError:
            return None
        return model if solo_sel.quantized else None

    return rank_layers(_weighted_units(prepared, sel), alone, holdout, metric,
                       (lambda done, total: progress(done, total)) if progress else None)


def _holdout_for(prepared: onnx.ModelProto, data: Any, holdout: Any, recipe: Recipe, agreement: str) -> Holdout:
    source = holdout if holdout is not None else data
    if not _rereadable(source):
        raise UsageError("mixed precision and sensitivity need held-out samples that can be read repeatedly "
                         "(a folder or a list)")
    return Holdout.from_samples(prepared, _open(prepared, source, recipe), recipe.calibration.max_samples, agreement)


def _mixed_precision(prepared: onnx.ModelProto, recipe: Recipe, table: StatsTable, not_float: set[str], data: Any,
                     holdout: Any, max_drop: float, metric: Metric | None,
                     progress: ProgressCallback | None, int4: list[str], agreement: str) -> MixedPrecisionResult:
    """int8 with the fewest float layers that meets ``max_drop``; then, given ``int4``
    candidates, as many of the least sensitive as the budget allows get 4-bit weights."""
    if not 0 <= max_drop < float("inf"):  # also nan
        raise UsageError(f"max_drop must be a finite number at least 0, got {max_drop}")
    held = _holdout_for(prepared, data, holdout, recipe, agreement)
    full_model, _, _ = _build(prepared, recipe, table, not_float, data, inplace=False)
    full = (full_model, measure(full_model, held, metric))
    ranking: list[LayerSensitivity] = []
    if full[1].drop > max_drop or int4:
        ranking = _rank(prepared, recipe, table, not_float, data, held, metric, progress)

    def build(excluded: tuple[str, ...]) -> onnx.ModelProto:
        return _build(prepared, _excluding(recipe, excluded), table, not_float, data, inplace=False)[0]

    result = search(build, ranking if full[1].drop > max_drop else [], held, max_drop, metric, full)
    result.ranking = ranking
    if not int4:
        return result
    floats = set(result.float_layers)
    order = {s.node: (s.drop, s.cosine_drop, k) for k, s in enumerate(ranking)}
    candidates = sorted((n for n in int4 if n not in floats and n in order), key=lambda n: order[n])

    def build4(chosen: tuple[str, ...]) -> onnx.ModelProto:
        return _build(prepared, _excluding(recipe, result.float_layers), table, not_float, data, inplace=False,
                      int4=frozenset(chosen))[0]

    return widen_int4(build4, candidates, held, max_drop, metric, result)


def _int4_candidates(prepared: onnx.ModelProto, recipe: Recipe, not_float: set[str]) -> tuple[list[str], int]:
    """MatMul layers whose weight int4 keeps well enough (graph order), and how many it would not."""
    q = recipe.quantization
    if q.weight_bits != 4:
        return [], 0
    sel = _select(prepared, recipe, not_float)
    inits = {i.name: i for i in prepared.graph.initializer}
    chosen, rejected = [], 0
    for node in prepared.graph.node:
        if node.name not in sel.quantized or node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        weight = tensor_array(inits[node.input[1]])
        if not int4_eligible(weight.shape, q.int4_block_size):
            continue
        if int4_sqnr_db(weight, q.int4_block_size) >= q.int4_min_sqnr_db:
            chosen.append(node.name)
        else:
            rejected += 1
    return chosen, rejected


def _calibrated(model: onnx.ModelProto | str | os.PathLike, data: Any, recipe: Recipe,
                what: str) -> tuple[onnx.ModelProto, StatsTable, set[str]]:
    """Prepared model, its statistics and its non-float tensors, for the diagnostic commands."""
    if not _rereadable(data):
        raise CalibrationDataError(f"{what} needs calibration data (a folder or a list)")
    prepared, _, sel, _ = _prepare_and_select(model, recipe, data)
    table = collect(prepared, sel.observed, _open(prepared, data, recipe), needs_histogram(recipe.calibration.method),
                    recipe.calibration.max_samples)
    return prepared, table, set(sel.observed) - set(table.tensors)


def layer_errors(
    model: onnx.ModelProto | str | os.PathLike,
    data: Any,
    holdout: Any = None,
    recipe: Recipe | None = None,
) -> list[TensorError]:
    """Quantize as ``quantize`` would, then compare every quantized tensor with its float value
    on ``holdout`` (default: the calibration data); the tensors that add most error first."""
    recipe = recipe or Recipe()
    prepared, table, not_float = _calibrated(model, data, recipe, "layer errors")
    quantized, sel, _ = _build(prepared, recipe, table, not_float, data, inplace=False)
    by_name = {n.name: n for n in prepared.graph.node}
    tensors = [*sel.activations, *(by_name[node].output[0] for node, _ in sel.weights)]
    source = holdout if holdout is not None else data
    return tensor_errors(prepared, quantized, tensors, _open(prepared, source, recipe), recipe.calibration.max_samples)


def sensitivity(
    model: onnx.ModelProto | str | os.PathLike,
    data: Any,
    holdout: Any = None,
    recipe: Recipe | None = None,
    metric: Metric | None = None,
    progress: ProgressCallback | None = None,
    agreement: str = "cosine",
) -> list[LayerSensitivity]:
    """Each weighted layer quantized alone, measured against fp32 on ``holdout`` (default: the
    calibration data); most damaging first."""
    recipe = recipe or Recipe()
    prepared, table, not_float = _calibrated(model, data, recipe, "sensitivity")
    held = _holdout_for(prepared, data, holdout, recipe, agreement)
    return _rank(prepared, recipe, table, not_float, data, held, metric, progress)


# Float nodes worth telling the user about: compute-heavy ops that stayed float.
_INTERESTING = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Concat", "GlobalAveragePool",
                "AveragePool", "MaxPool", "Sigmoid", "LeakyRelu", "Resize", "Relu", "Clip", *RECURRENT_OPS}


def diagnose(result: QuantizeResult, data: Any, max_samples: int | None = None,
             progress: ProgressCallback | None = None) -> list[TensorError]:
    """Per-tensor error of a ``quantize(..., diagnostics=True)`` result on ``data``, worst first:
    every quantized activation and every weighted layer's output."""
    if result.reference is None:
        raise UsageError("diagnose needs the result of quantize(..., diagnostics=True)")
    reference, quantized = result.reference, result.model
    tensors = [*dequantized_names(quantized), *(n.output[0] for n in reference.graph.node if n.op_type in WEIGHTED_OPS)]
    produced = {o for n in reference.graph.node for o in n.output} | {i.name for i in reference.graph.input}
    tensors = [t for t in dict.fromkeys(tensors) if t in produced]
    return tensor_errors(reference, quantized, tensors, _open(reference, data, result.recipe), max_samples, progress)
