"""The fully static shapes onnx's shape inference declares for a graph's values.

A static-shape export (torch.onnx without dynamic axes) writes its reshape targets as constants of
its one input shape: a pattern check that runs a subgraph on tensors of several shapes cannot run
there, and a rewrite must know the one shape the graph takes. Shape inference runs on a light copy
(large initializers become inputs of their shape; only their dims matter), so a model of many
megabytes is not copied to read its shapes.
"""
from __future__ import annotations

import onnx
from onnx import helper

SMALL_INITIALIZER = 64  # elements: shape constants stay initializers (inference reads their values)


def _light(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    small, large = [], []
    for init in graph.initializer:
        count = 1
        for d in init.dims:
            count *= d
        (small if count <= SMALL_INITIALIZER else large).append(init)
    inputs = [*graph.input, *(helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in large)]
    light = helper.make_graph(list(graph.node), graph.name, inputs, list(graph.output), initializer=small)
    return helper.make_model(light, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def infer_declared_shapes(model: onnx.ModelProto) -> tuple[dict[str, tuple[int, ...]], str | None]:
    """The shape of every main-graph value whose dims shape inference finds all fixed (values with a
    free or unknown dim are absent), and why inference failed (then no shapes), else None."""
    try:
        inferred = onnx.shape_inference.infer_shapes(_light(model))
    except Exception as error:  # a graph onnx cannot infer (custom ops, bad types): no declared shapes
        first = (str(error).strip().splitlines() or [""])[0][:160]
        return {}, f"{type(error).__name__}: {first}" if first else type(error).__name__
    out: dict[str, tuple[int, ...]] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = tensor_type.shape.dim
        if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            out[value.name] = tuple(int(d.dim_value) for d in dims)
    return out, None


def declared_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """``infer_declared_shapes``' shapes; empty if inference fails."""
    return infer_declared_shapes(model)[0]


def static_inputs(model: onnx.ModelProto) -> bool:
    """Every graph input (initializers aside) declares all its dims fixed: a static-shape export,
    on which the static-shape passes would apply had inference declared its shapes."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    return bool(inputs) and all(
        i.type.tensor_type.HasField("shape")
        and all(d.HasField("dim_value") and d.dim_value > 0 for d in i.type.tensor_type.shape.dim)
        for i in inputs)
