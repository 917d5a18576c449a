"""The fully static shapes onnx's shape inference declares for a graph's values.

A static-shape export (torch.onnx without dynamic axes) writes its reshape targets as constants of
its one input shape: a pattern check that runs a subgraph on tensors of several shapes cannot run
there, and a rewrite must know the one shape the graph takes. Shape inference runs on a light copy
(large initializers become inputs of their shape; only their dims matter), so a model of many
megabytes is not copied to read its shapes.
"""
from __future__ import annotations

import onnx

SMALL_INITIALIZER = 64  # elements: shape constants stay initializers (inference reads their values)


def skeleton(model: onnx.ModelProto, max_elements: int = 4096) -> onnx.ModelProto:
    """The graph without its large weights: each becomes a typed graph input.

    Shape inference needs the weights' shapes, and the values only of small tensors (shape
    constants). Inferring on the skeleton gives the same shapes without copying the weights
    (``prepare.infer_shapes`` and ``infer_declared_shapes`` both infer on it).
    """
    light = onnx.ModelProto(ir_version=model.ir_version)
    light.opset_import.extend(model.opset_import)
    graph = light.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    for init in model.graph.initializer:
        count = 1
        for d in init.dims:
            count *= d
        if count <= max_elements and init.data_location != onnx.TensorProto.EXTERNAL:
            graph.initializer.append(init)
        else:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return light


def infer_declared_shapes(model: onnx.ModelProto) -> tuple[dict[str, tuple[int, ...]], str | None]:
    """The shape of every main-graph value whose dims shape inference finds all fixed (values with a
    free or unknown dim are absent), and why inference failed (then no shapes), else None."""
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model, SMALL_INITIALIZER))
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
