"""Make an exported model ready to quantize: fold, upgrade, simplify, infer shapes.

Each step is what users otherwise do by hand before onnxruntime.quantization: Constant-node
weights become initializers, opsets older than 13 are upgraded (per-channel QDQ needs an
``axis`` on DequantizeLinear), and onnxruntime's BASIC optimizer folds constant subgraphs, Pad
into Conv and BatchNorm into Conv, with standard ops only, so the result stays portable.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import version_converter

from onnxquant.errors import ModelError
from onnxquant.model_io import PROTOBUF_LIMIT, serialize
from onnxquant.passes.fold_affine import fold_affine_into_conv
from onnxquant.passes.fold_constants import fold_constant_nodes
from onnxquant.passes.fuse_hardswish import fuse_hardswish

MIN_QDQ_OPSET = 13


@dataclass
class PrepareReport:
    folded_constants: int = 0
    folded_affines: int = 0
    fused_hardswish: int = 0
    opset_from: int = 0
    opset_to: int = 0
    simplified: bool = False
    notes: list[str] = field(default_factory=list)


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def _upgrade_opset(model: onnx.ModelProto, report: PrepareReport) -> onnx.ModelProto:
    version = default_opset(model)
    report.opset_from = report.opset_to = version
    if version >= MIN_QDQ_OPSET:
        return model
    try:
        upgraded = version_converter.convert_version(model, MIN_QDQ_OPSET)
        onnx.checker.check_model(upgraded)
    except Exception as exc:
        report.notes.append(
            f"opset {version} could not be upgraded to {MIN_QDQ_OPSET} ({str(exc).splitlines()[0]}): "
            "weights are quantized per-tensor"
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


def _used_domains(model: onnx.ModelProto) -> set[str]:
    from onnxquant.model_io import _iter_graphs

    domains = set()
    for graph in _iter_graphs(model.graph):
        for node in graph.node:
            domains.add(node.domain if node.domain != "ai.onnx" else "")
    return domains


def _simplify(model: onnx.ModelProto, report: PrepareReport) -> onnx.ModelProto:
    """Run onnxruntime's BASIC (standard-op only) graph optimizer offline (models under 2 GB)."""
    import onnxruntime as ort
    with tempfile.TemporaryDirectory(prefix="onnxquant-") as tmp:
        out = Path(tmp) / "simplified.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(out)
        options.log_severity_level = 3
        try:
            ort.InferenceSession(serialize(model), options, providers=["CPUExecutionProvider"])
            simplified = onnx.load_model(str(out))
        except Exception as exc:
            raise ModelError(f"onnxruntime cannot load the model: {str(exc).strip().splitlines()[0]}") from exc
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
    """Shape and type inference where onnx can do it; the model unchanged where it cannot."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        return model


def prepare_model(model: onnx.ModelProto, simplify: bool = True) -> tuple[onnx.ModelProto, PrepareReport]:
    """Return a prepared copy of ``model`` (the input is never modified) and what was done."""
    report = PrepareReport()
    work = onnx.ModelProto()
    work.CopyFrom(model)
    report.folded_constants = fold_constant_nodes(work)
    _drop_initializer_inputs(work)
    work = _upgrade_opset(work, report)
    small = work.ByteSize() < PROTOBUF_LIMIT  # in-memory tools stop at protobuf's limit
    if simplify and small:
        work = _simplify(work, report)
    elif simplify:
        report.notes.append("model over 2 GB: onnxruntime graph simplification skipped")
    if simplify:
        report.folded_affines = fold_affine_into_conv(work)
        report.fused_hardswish = fuse_hardswish(work, default_opset(work))
    if small:
        work = infer_shapes(work)
    return work, report
