"""Integer kernels inside If/Loop/Scan bodies: each body is planned and rewritten as a graph of
its own, by the same planner and rewrite as the main graph.

A body reads values of the graphs around it (outer scope); in the body's own model those are
graph inputs, typed where shape inference knows the type. Outer weights the body reads are
planned as the body's own (each body that quantizes one keeps its own int8 copy); values of
unknown type count as not float, so the nodes reading them stay float (their weights may
still be stored int8: ``weight_only_planner``). The statistics of body values come from the
calibration run through extra outputs (``calibration.expose``). A body whose plan has no
weighted integer kernel is left alone: Q/DQ around element-wise ops alone would only cost time.
Accuracy-recovery passes (bias correction, learned rounding) do not run inside bodies.
"""
from __future__ import annotations

import onnx
from onnx import helper

from onnxquant.calibration.observers import StatsTable
from onnxquant.model_io import iter_graphs
from onnxquant.ops.rules import RULES, Kind
from onnxquant.passes.insert_qdq import insert_qdq
from onnxquant.passes.scopes import iter_bodies, name_body_nodes
from onnxquant.passes.weight_only import drop_unread
from onnxquant.planner import NOT_FLOAT, Selection, finalize, select
from onnxquant.recipe import Recipe

FLOAT = onnx.TensorProto.FLOAT
IN_BODY = "inside an If/Loop/Scan body"


def _types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value shape inference can tell, in every graph."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        inferred = model
    types: dict[str, int] = {}
    for graph in iter_graphs(inferred.graph):
        for v in [*graph.input, *graph.output, *graph.value_info]:
            if v.type.tensor_type.elem_type:
                types[v.name] = v.type.tensor_type.elem_type
        for init in graph.initializer:
            types[init.name] = init.data_type
    return types


def _bodies(model: onnx.ModelProto) -> list[tuple[str, onnx.GraphProto, list[onnx.GraphProto]]]:
    """(path, body, enclosing graphs from the main graph down) for every body, outer first."""
    return list(iter_bodies(model.graph))


def _defined(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    for node in graph.node:
        names.update(o for o in node.output if o)
    return names


def _body_model(model: onnx.ModelProto, body: onnx.GraphProto, enclosing: list[onnx.GraphProto],
                types: dict[str, int]) -> tuple[onnx.ModelProto, set[str]]:
    """The body as a model of its own, and the names its planner must treat as not float."""
    own = onnx.ModelProto(ir_version=model.ir_version)
    own.opset_import.extend(model.opset_import)
    own.graph.CopyFrom(body)
    inside = _defined(body)
    read = {i for n in body.node for i in n.input}
    # Outer weights the body's nodes read are copied in, so the planner sees them as weights;
    # the rewrite takes the copies out again (``_restore_scope``).
    outer_inits = {i.name: i for g in enclosing for i in g.initializer if i.name in read and i.name not in inside}
    own.graph.initializer.extend(outer_inits[n] for n in sorted(outer_inits))
    visible = set().union(*(_defined(g) for g in enclosing)) - inside - set(outer_inits)
    for name in sorted(visible):
        own.graph.input.append(helper.make_tensor_value_info(name, types.get(name, 0), None))
    del own.graph.value_info[:]
    own.graph.value_info.extend(helper.make_tensor_value_info(n, types[n], None)
                                for n in sorted(inside) if n in types)
    everything = visible | inside | {o for n in body.node for o in n.output}
    not_float = {n for n in everything if types.get(n) != FLOAT}
    not_float -= {i.name for i in own.graph.initializer}  # weights are seen as initializers
    return own, not_float


def _has_weighted_kernel(sel: Selection) -> bool:
    return any(RULES[op].kind == Kind.WEIGHTED for op in sel.quantized.values() if op in RULES)


def plan_bodies(model: onnx.ModelProto, recipe: Recipe, not_float: set[str] | None,
                per_channel_ok: bool) -> dict[str, Selection]:
    """Body path -> the body's selection (local node names), for bodies worth quantizing."""
    if recipe.every_op:
        return {}  # NPU targets do not run control flow on the accelerator
    name_body_nodes(model.graph)
    bodies = _bodies(model)
    if not bodies:
        return {}
    types = _types(model)
    plans = {}
    for path, body, enclosing in bodies:
        own, body_not_float = _body_model(model, body, enclosing, types)
        sel = select(own, recipe, not_float=body_not_float | (not_float or set()), per_channel_ok=per_channel_ok,
                     body=True)
        # A body some of whose values calibration never saw (an If branch no sample took) stays
        # unplanned: its layers get int8 weights only.
        if _has_weighted_kernel(sel) and not (not_float and set(sel.observed) & not_float):
            plans[path] = sel
    return plans


def merge_into(sel: Selection, plans: dict[str, Selection]) -> None:
    """Report body nodes in the main selection under qualified names; their values get observed."""
    for path, body in plans.items():
        for name, op in body.quantized.items():
            sel.quantized[f"{path}/{name}"] = op
        for name, (op, reason) in body.float_nodes.items():
            sel.float_nodes[f"{path}/{name}"] = (op, reason if reason == NOT_FLOAT else f"{IN_BODY}: {reason}")
        sel.body_observed.extend(body.observed)
        sel.body_weighted.update(f"{path}/{name}" for name, _ in body.weights)


def rewrite_bodies(model: onnx.ModelProto, recipe: Recipe, table: StatsTable, not_float: set[str] | None,
                   per_channel_ok: bool, opset: int) -> int:
    """Quantize the planned bodies of ``model`` in place, deepest first; returns how many."""
    plans = plan_bodies(model, recipe, not_float, per_channel_ok)
    types = _types(model) if plans else {}
    captured: set[str] = set()
    for path in sorted(plans, key=lambda p: (-p.count("/"), p)):
        body, enclosing = next((b, e) for p, b, e in _bodies(model) if p == path)
        own, _ = _body_model(model, body, enclosing, types)
        outer = {i.name for g in enclosing for i in g.initializer}
        rewritten = insert_qdq(own, finalize(own, plans[path], table, recipe), opset, inplace=True)
        inputs, value_info = list(body.input), list(body.value_info)
        body.CopyFrom(rewritten.graph)
        del body.input[:]
        body.input.extend(inputs)
        del body.value_info[:]
        body.value_info.extend(value_info)
        _restore_scope(body, outer)
        captured |= outer
    for graph in iter_graphs(model.graph):  # outer weights now read only through int8 copies
        drop_unread(graph, captured)
    return len(plans)


def _restore_scope(body: onnx.GraphProto, outer: set[str]) -> None:
    """Take out the copies of outer weights: a body may not redefine a name it can see."""
    kept = [i for i in body.initializer if i.name not in outer]
    if len(kept) != len(body.initializer):
        del body.initializer[:]
        body.initializer.extend(kept)
