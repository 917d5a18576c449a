"""Fix a model's symbolic input dims to concrete sizes.

Edge providers compile a graph for one set of shapes (QNN HTP takes no node of a graph with a
dynamic batch), so validation and the ``qnn`` target pin free dims to the samples' shapes.
"""
from __future__ import annotations

from collections.abc import Iterable

import onnx

from onnxquant.errors import CalibrationDataError


def _dims(value: onnx.ValueInfoProto):
    return value.type.tensor_type.shape.dim


def has_free_dims(model: onnx.ModelProto, given: Iterable[str] = ()) -> bool:
    """True when an input dim has no fixed size, once the inputs named in ``given`` are fixed.

    Fixing an input also fixes its named dims wherever else they appear (see
    ``fix_input_shapes``), so those do not count as free.
    """
    given = set(given)
    inputs = [v for v in model.graph.input if v.name not in {i.name for i in model.graph.initializer}]
    named = {d.dim_param for v in inputs if v.name in given for d in _dims(v) if d.dim_param}
    return any(not (d.HasField("dim_value") and d.dim_value > 0) and d.dim_param not in named
               for v in inputs if v.name not in given for d in _dims(v))


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy of ``model`` whose inputs have exactly ``shapes``.

    A named dim (``batch``) fixed on an input is fixed to the same size wherever else it appears
    (other inputs, outputs, value_info), so the graph stays consistent.
    """
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    by_param: dict[str, int] = {}
    inputs = {v.name: v for v in fixed.graph.input}
    for name, shape in shapes.items():
        value = inputs.get(name)
        if value is None:
            raise CalibrationDataError(f"input {name!r} is not an input of the model")
        dims = _dims(value)
        if len(dims) != len(shape):
            raise CalibrationDataError(f"input {name!r} has rank {len(dims)}; got shape {list(shape)}")
        for dim, size in zip(dims, shape):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                if dim.dim_value != size:
                    raise CalibrationDataError(
                        f"input {name!r} has a fixed size {dim.dim_value} where the sample has {size}")
                continue
            if dim.dim_param:
                if by_param.setdefault(dim.dim_param, size) != size:
                    raise CalibrationDataError(
                        f"dim {dim.dim_param!r} is {by_param[dim.dim_param]} in one input and {size} in another")
            dim.Clear()
            dim.dim_value = size
    for value in [*fixed.graph.input, *fixed.graph.output, *fixed.graph.value_info]:
        for dim in _dims(value):
            if dim.dim_param in by_param:
                size = by_param[dim.dim_param]
                dim.Clear()
                dim.dim_value = size
    return fixed


def known_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """The rank of every main-graph tensor whose shape the model records (inputs, outputs, value_info)."""
    graph = model.graph
    return {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.input, *graph.value_info, *graph.output]
            if v.type.tensor_type.HasField("shape")}


def known_elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """The element type (a TensorProto data type; 0 where not a tensor or not recorded) of every
    main-graph value the model records (inputs, outputs, value_info)."""
    graph = model.graph
    return {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
