"""Make values computed inside If/Loop/Scan bodies observable: extra outputs, level by level.

onnxruntime returns only main-graph values. A value inside a body becomes an extra output of
that body and of its If/Loop/Scan node, then of the graph around it, up to the main graph:
- If: the branch that computes it outputs it, the other branch an empty float tensor (the
  observers skip empty arrays), so the If node has one more output;
- Loop and Scan: a scan output, which stacks the value of every iteration.
Only float32 values are exposed (an If's branches must agree on the type).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxquant.passes.names import fresh_name
from onnxquant.passes.scopes import iter_scoped_nodes

FLOAT = onnx.TensorProto.FLOAT
_EXPOSABLE = {"If", "Loop", "Scan"}


def body_values(model: onnx.ModelProto) -> dict[str, str]:
    """Tensor name -> path of the body graph that computes it or takes it as an input (bodies only)."""
    out: dict[str, str] = {}
    for scoped in iter_scoped_nodes(model.graph):
        if scoped.in_body:
            for name in scoped.node.output:
                if name:
                    out[name] = scoped.graph_path
        for attr in scoped.node.attribute:
            bodies = [(f"{scoped.qualified}/{attr.name}", attr.g)] if attr.type == onnx.AttributeProto.GRAPH else \
                [(f"{scoped.qualified}/{attr.name}/{k}", g) for k, g in enumerate(attr.graphs)]
            for path, body in bodies:
                for value in body.input:
                    out[value.name] = path
    return out


def expose_body_values(model: onnx.ModelProto, names: list[str]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``model`` whose main graph also outputs ``names`` (body values); returns the copy
    and {main-graph output name: body value name}. Values that cannot be exposed are left out."""
    defined = body_values(model)
    wanted = [n for n in names if n in defined]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    if not wanted:
        return exposed, {}
    # body path -> (control-flow node, attribute name, index in a GRAPHS list or None)
    owners: dict[str, tuple[onnx.NodeProto, str, int | None, str]] = {}
    used: set[str] = set()
    for scoped in iter_scoped_nodes(exposed.graph):
        used.update([*scoped.node.input, *scoped.node.output, scoped.node.name])
        for attr in scoped.node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                owners[f"{scoped.qualified}/{attr.name}"] = (scoped.node, attr.name, None, scoped.graph_path)
            for k, _ in enumerate(attr.graphs):
                owners[f"{scoped.qualified}/{attr.name}/{k}"] = (scoped.node, attr.name, k, scoped.graph_path)

    def fresh(base: str) -> str:
        return fresh_name(used, base)

    mapping: dict[str, str] = {}
    for name in wanted:
        current, path = name, defined[name]
        while path:
            node, attr_name, k, parent = owners[path]
            if node.op_type not in _EXPOSABLE or node.domain not in ("", "ai.onnx"):
                break
            body = _attr_graph(node, attr_name, k)
            if any(i.name == current for i in body.input):  # a formal input (Loop/Scan state): copy it out
                copied = fresh(f"{current}_copy")
                body.node.append(helper.make_node("Identity", [current], [copied], name=fresh(f"{copied}_Identity")))
                current = copied
            body.output.append(helper.make_tensor_value_info(current, FLOAT, None))
            if node.op_type == "If":
                other = _attr_graph(node, "else_branch" if attr_name == "then_branch" else "then_branch", None)
                empty = fresh(f"{current}_empty")
                other.node.append(helper.make_node("Constant", [], [empty], name=fresh(f"{empty}_Constant"),
                                                   value=numpy_helper.from_array(np.zeros((0,), np.float32))))
                other.output.append(helper.make_tensor_value_info(empty, FLOAT, None))
            elif node.op_type == "Scan":
                for key in ("scan_output_axes", "scan_output_directions"):
                    attr = next((a for a in node.attribute if a.name == key), None)
                    if attr is not None:
                        attr.ints.append(0)
            outer = fresh(f"{current}_exposed")
            node.output.append(outer)
            current, path = outer, parent
        else:
            exposed.graph.output.append(helper.make_tensor_value_info(current, FLOAT, None))
            mapping[current] = name
    return exposed, mapping


def _attr_graph(node: onnx.NodeProto, name: str, index: int | None) -> onnx.GraphProto:
    attr = next(a for a in node.attribute if a.name == name)
    return attr.g if index is None else attr.graphs[index]
