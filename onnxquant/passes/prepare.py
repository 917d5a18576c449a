"""Make an exported model ready to quantize: fold, upgrade, simplify, infer shapes.

Each step is what users otherwise do by hand before onnxruntime.quantization: Constant-node
weights become initializers, opsets older than 13 are upgraded (per-channel QDQ needs an
``axis`` on DequantizeLinear), and onnxruntime's BASIC optimizer folds constant subgraphs, Pad
into Conv and BatchNorm into Conv, with standard ops only, so the result stays portable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper, version_converter

from onnxquant.errors import ModelError
from onnxquant.outputs import scratch
from onnxquant.model_io import has_lazy, iter_graphs, read_in_if_small, serialize, serialize_below_limit
from onnxquant.passes.canonicalize import canonicalize
from onnxquant.passes.convtranspose_as_conv import convtranspose_as_conv
from onnxquant.passes.declared_shapes import skeleton
from onnxquant.passes.float16 import has_float16_interface, widen_float16
from onnxquant.passes.fold_affine import fold_affine_into_conv
from onnxquant.passes.fold_constants import fold_constant_nodes
from onnxquant.passes.fuse_gelu import MS_DOMAIN, fuse_gelu
from onnxquant.passes.fuse_hardswish import fuse_hardswish
from onnxquant.passes.affine_as_depthwise import rewrite_affines
from onnxquant.passes.hardsigmoid_as_conv import GateRewrite, rewrite_hardsigmoid
from onnxquant.passes.node_annotations import drop_node_annotations
from onnxquant.passes.transformer_fusion import TransformerFusion, fuse_transformer

MIN_QDQ_OPSET = 13


@dataclass
class PrepareReport:
    folded_constants: int = 0
    folded_affines: int = 0
    fused_hardswish: int = 0
    fused_gelu: int = 0
    gates: GateRewrite = field(default_factory=GateRewrite)  # HardSigmoid written as Conv + Clip
    affines_as_depthwise: int = 0  # constant x * c + d between activations written as a depthwise Conv
    convtransposes_as_conv: int = 0  # kernel == stride ConvTranspose written as 1x1 Conv + pixel shuffle
    transformer: TransformerFusion = field(default_factory=TransformerFusion)  # attention blocks fused
    float16_weights: set[str] = field(default_factory=set)  # initializers that were fp16 (an fp16 model)
    opset_from: int = 0
    opset_to: int = 0
    simplified: bool = False
    node_annotation_bytes: int = 0  # node metadata and doc strings dropped (passes/node_annotations.py)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what was declined that a user would expect done
    pruning: Any = None  # the PruneReport, when the recipe prunes (set by the api after preparing)


# Node annotations dropped are said in a note from this many bytes on.
NOTED_ANNOTATION_BYTES = 16 * 1024


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def _convert(model: onnx.ModelProto, target: int) -> onnx.ModelProto | str:
    """The model at opset ``target``, or the reason the version converter gave up."""
    try:
        upgraded = version_converter.convert_version(model, target)
        # The converter keeps an old IR version; the new opset needs its own at least.
        minimum = onnx.helper.find_min_ir_version_for(list(upgraded.opset_import), ignore_unknown=True)
        upgraded.ir_version = max(upgraded.ir_version, minimum)
        onnx.checker.check_model(upgraded)
    except Exception as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return upgraded


def _upgrade_opset(model: onnx.ModelProto, report: PrepareReport) -> onnx.ModelProto:
    version = default_opset(model)
    report.opset_from = report.opset_to = version
    if version >= MIN_QDQ_OPSET:
        return model
    upgraded = _convert(model, MIN_QDQ_OPSET)
    if isinstance(upgraded, str):
        report.notes.append(
            f"opset {version} could not be upgraded to {MIN_QDQ_OPSET} ({upgraded}): weights are quantized per-tensor"
        )
        return model
    report.opset_to = MIN_QDQ_OPSET
    report.notes.append(f"opset upgraded from {version} to {MIN_QDQ_OPSET} for per-channel QDQ")
    return upgraded


def _drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """IR<4 exporters list weights as graph inputs too; they are constants, not inputs."""
    names = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in names]
    if len(inputs) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(inputs)
    # Below IR 4 every initializer must also be an input: the model now says IR 4 at least.
    model.ir_version = max(model.ir_version, 4)


# A sparse initializer is made dense to be quantized; one that would be larger than this is refused.
MAX_DENSE_BYTES = 4 * 2**30


def densify_sparse_initializers(model: onnx.ModelProto) -> int:
    """Sparse initializers (``prune --sparse-storage`` writes them) become ordinary dense ones:
    every pass reads initializers. Returns how many; malformed ones are a ModelError."""
    graph = model.graph
    count = len(graph.sparse_initializer)
    for sparse in graph.sparse_initializer:
        name = sparse.values.name
        dims = tuple(int(d) for d in sparse.dims)
        try:
            values = numpy_helper.to_array(sparse.values).reshape(-1)
            indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
        except Exception as exc:
            raise ModelError(f"sparse initializer {name!r} cannot be read ({str(exc).splitlines()[0] if str(exc) else exc})") from exc
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise ModelError(f"sparse initializer {name!r} has NaN or Inf")
        total = math.prod(dims)
        if any(d < 0 for d in dims) or total * values.itemsize > MAX_DENSE_BYTES:
            raise ModelError(f"sparse initializer {name!r} has an impossible shape {list(dims)}")
        if indices.ndim == 2 and indices.shape[1:] == (len(dims),) and len(dims) > 0:
            if (indices < 0).any() or (indices >= np.asarray(dims)).any():
                raise ModelError(f"sparse initializer {name!r} has indices outside its shape")
            flat = np.ravel_multi_index(tuple(indices.T), dims) if len(indices) else indices.reshape(-1)
        elif indices.ndim == 1:
            flat = indices
        else:
            raise ModelError(f"sparse initializer {name!r} has indices of shape {list(indices.shape)}")
        if flat.shape[0] != values.shape[0] or (flat.size and (flat.min() < 0 or flat.max() >= total)):
            raise ModelError(f"sparse initializer {name!r} has indices that do not match its values or shape")
        dense = np.zeros(total, dtype=values.dtype)
        dense[flat] = values
        graph.initializer.append(numpy_helper.from_array(dense.reshape(dims), name))
    del graph.sparse_initializer[:]
    return count


def _used_domains(model: onnx.ModelProto) -> set[str]:
    domains = set()
    for graph in iter_graphs(model.graph):
        for node in graph.node:
            domains.add(node.domain if node.domain != "ai.onnx" else "")
    return domains


def _simplify(model: onnx.ModelProto, report: PrepareReport, serialized: list[bytes] | None = None) -> onnx.ModelProto:
    """Run onnxruntime's BASIC (standard-op only) graph optimizer offline (models under 2 GB).
    ``serialized``: ``[serialize(model)]``, taken out of the list once written."""
    import onnxruntime as ort
    with scratch() as tmp:
        out = Path(tmp) / "simplified.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(out)
        options.log_severity_level = 3
        source = Path(tmp) / "source.onnx"
        source.write_bytes(serialized.pop() if serialized else serialize(model))  # from a file, the bytes are not alive beside the session
        try:
            ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"onnxruntime cannot load the model: {str(exc).strip().splitlines()[0]}") from exc
        # ``model`` is prepare_model's own working copy: its weights are dead from here on, so
        # free them before the simplified copy is read (one copy of a large model, not two).
        del model.graph.initializer[:]
        simplified = onnx.load_model(str(out))
    # The optimizer declares every domain it knows; keep only those the graph uses.
    used = _used_domains(simplified)
    kept = [o for o in simplified.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del simplified.opset_import[:]
    simplified.opset_import.extend(kept)
    simplified.producer_name, simplified.producer_version = model.producer_name, model.producer_version
    del simplified.metadata_props[:]
    simplified.metadata_props.extend(model.metadata_props)
    report.simplified = True
    return simplified


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape and type inference where onnx can do it, recorded as value_info in ``model``."""
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False)
    except Exception:
        return model
    known = {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input}
    del model.graph.value_info[:]
    model.graph.value_info.extend(v for v in inferred.graph.value_info if v.name not in known)
    return model


def prepare_model(model: onnx.ModelProto, simplify: bool = True, owned: bool = False,
                  gelu: bool = False, integer_gates: bool = False,
                  transformer: bool = False, integer_upsampling: bool = False) -> tuple[onnx.ModelProto, PrepareReport]:
    """Return a prepared model and what was done.

    ``model`` is copied first unless ``owned`` says the caller hands it over (it was just
    loaded from a file): a large model then exists once, not twice. ``gelu`` fuses exact-GELU
    patterns into one op (for NPU targets, which lack a quantized Erf). ``integer_gates`` writes
    HardSigmoid/HardSwish as Conv + Clip (onnxruntime's CPU provider has no integer HardSigmoid)
    and constant per-channel affines between activations as depthwise Convs. ``transformer``
    fuses a BERT-like encoder's attention blocks into onnxruntime's Attention (for the CPU
    target, which runs it as QAttention); other models are left as they are.
    ``integer_upsampling`` writes a ConvTranspose whose kernel equals its stride as a 1x1 Conv
    and a DepthToSpace (onnxruntime's CPU provider has no integer ConvTranspose).
    """
    report = PrepareReport()
    if owned:
        work = model
    else:
        work = onnx.ModelProto()
        work.CopyFrom(model)
    densify_sparse_initializers(work)
    report.node_annotation_bytes = drop_node_annotations(work)
    if report.node_annotation_bytes >= NOTED_ANNOTATION_BYTES:
        report.notes.append(f"{report.node_annotation_bytes / 1024:.0f} KiB of node metadata and doc strings dropped "
                            "(the exporter's debugging annotations: stack traces, module names; not read at run time)")
    report.folded_constants = fold_constant_nodes(work)
    _drop_initializer_inputs(work)
    float16_interface = has_float16_interface(work)
    report.float16_weights = widen_float16(work)
    if report.float16_weights and float16_interface:
        report.notes.append("fp16 model: quantized on an fp32 copy of its inside; fp16 inputs and outputs kept")
    elif report.float16_weights:
        report.notes.append(f"{len(report.float16_weights)} fp16 initializers behind float32 inputs and outputs (Casts to "
                            "float32 or an fp16 inside): quantized on an fp32 copy of the inside; weights left float "
                            "are stored fp16 again")
    work = _upgrade_opset(work, report)
    read_in_if_small(work)  # (a small model with external data is prepared as a one-file one is)
    lazy = has_lazy(work)
    # in-memory tools stop at protobuf's limit (one serialization says it, and the optimizer reads it)
    payload = None if lazy or not (simplify or transformer) else serialize_below_limit(work)
    small = payload is not None  # (not needed, and not known, when neither tool runs)
    if simplify and small and not lazy:
        held, payload = [payload], None  # (the optimizer's input file alone holds it while its session runs)
        work = _simplify(work, report, held)
    elif simplify:
        report.notes.append("weights in external data: onnxruntime graph simplification skipped" if lazy
                            else "model over 2 GB: onnxruntime graph simplification skipped")
    payload = None
    if simplify:
        report.folded_affines = fold_affine_into_conv(work)
        report.fused_hardswish = fuse_hardswish(work, default_opset(work))
    if transformer and small and not lazy:
        work, report.transformer = fuse_transformer(work)
        if report.transformer.note():
            report.notes.append(report.transformer.note())
        if report.transformer.warning():
            report.warnings.append(report.transformer.warning())
    if gelu:
        report.fused_gelu = fuse_gelu(work.graph, default_opset(work))
        if report.fused_gelu and default_opset(work) < 20 and not any(o.domain == MS_DOMAIN for o in work.opset_import):
            work.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    if integer_upsampling:  # (after fold_affine: a BatchNormalization after it is in its weights)
        report.convtransposes_as_conv = convtranspose_as_conv(work)
    work = infer_shapes(work)
    if integer_gates:
        report.gates = rewrite_hardsigmoid(work, default_opset(work))
        report.affines_as_depthwise = rewrite_affines(work)
        if report.affines_as_depthwise:  # a constant Mul/Add right after a BN made a depthwise Conv folds into it
            report.folded_affines += fold_affine_into_conv(work)
        if report.gates.total or report.gates.hardswish_split or report.affines_as_depthwise:
            work = infer_shapes(work)
    quirks = canonicalize(work)
    report.notes.extend(quirks.notes())
    if quirks.left_matmuls or quirks.gemm_transposes or quirks.global_means:
        work = infer_shapes(work)  # the new Transpose and pooled outputs
    return work, report
