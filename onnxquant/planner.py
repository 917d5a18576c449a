"""Decide what to quantize, as data: a plan the graph rewrite then performs.

Two steps. ``select`` walks the graph in topological order and decides which nodes become
integer kernels (and why the others stay float) and which tensors need statistics. ``finalize``
turns calibration statistics into scales and zero points. Neither touches the graph.
"""
from __future__ import annotations

import re
from collections.abc import Container, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxquant.calibration.observers import StatsTable, estimate_range
from onnxquant.decode_tail import decode_tail_nodes
from onnxquant.signal_front import front_end_nodes
from onnxquant.model_io import tensor_array
from onnxquant.ops.rules import (
    ACTIVATION_FUSERS,
    DEFAULT_OP_TYPES,
    RULES,
    OpRule,
    Kind,
    gemm_is_plain,
    is_depthwise,
    rule_for,
    weight_axis,
)
from onnxquant.passes.gather_rows import row_quantizable
from onnxquant.passes.node_index import attributes
from onnxquant.passes.weight_only import WeightOnly
from onnxquant.qparams import MIN_SCALE, QParams, above, asymmetric, per_channel_absmax, quantize, symmetric
from onnxquant.recipe import NodeSelection, Recipe
from onnxquant.score_tail import REASON as SCORE_TAIL_REASON
from onnxquant.score_tail import score_tail_nodes
from onnxquant.shapes import known_elem_types

FLOAT = onnx.TensorProto.FLOAT
# onnxruntime has u8u8 kernels for these (QLinearConv, QGemm, MatMulInteger(ToFloat), QLinearMatMul)
UINT8_WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
NOT_FLOAT = "input is not a float32 activation"
ALREADY_QUANTIZED = "already quantized (its weight comes through a DequantizeLinear)"


# Why a node whose output is a graph output gets no integer kernel: its output would be requantized.
# A Conv among them still stores its weights int8 (weight_only_planner): float compute, float output.
GRAPH_OUTPUT = "produces a graph output (kept float for accuracy)"


@dataclass
class Selection:
    """Which nodes are quantized and which tensors they need quantized."""

    quantized: dict[str, str] = field(default_factory=dict)  # node name -> op type
    float_nodes: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (op, reason)
    activations: list[str] = field(default_factory=list)  # tensors that get a Q/DQ pair
    owned: set[str] = field(default_factory=set)  # produced by a quantized node: all readers use DQ
    groups: dict[str, str] = field(default_factory=dict)  # tensor -> representative (shared scale)
    # (node, tensor) -> (input index, channel axis or None, reduce range to 7 bits)
    weights: dict[tuple[str, str], tuple[int, int | None, bool]] = field(default_factory=dict)
    constants: dict[tuple[str, str], int] = field(default_factory=dict)  # (node, tensor) -> input index
    biases: dict[tuple[str, str], str] = field(default_factory=dict)  # (node, bias) -> weight tensor
    # tensor -> tensor whose params it takes (a Conv output feeding only a Relu takes the Relu's)
    range_from: dict[str, str] = field(default_factory=dict)
    boundary_outputs: set[str] = field(default_factory=set)  # graph outputs written by a DQ
    uint8_weights: set[str] = field(default_factory=set)  # nodes whose weights are full 8-bit uint8
    # Gather node -> its table, stored 8-bit with a scale per row (CPU: GatherBlockQuantized, float output)
    row_tables: dict[str, str] = field(default_factory=dict)
    # node (qualified name inside bodies) -> weights stored int8 in front of a float kernel
    # (recurrent layers, layers inside If/Loop/Scan bodies); these nodes are also in ``quantized``
    weight_only: dict[str, WeightOnly] = field(default_factory=dict)

    # values inside If/Loop/Scan bodies that the bodies' own plans quantize (body_planner)
    body_observed: list[str] = field(default_factory=list)
    # body nodes (qualified names) whose own plan gives them an int8 weight: ``weights`` holds
    # main-graph nodes only, so the already-quantized check learns of body weights from here
    body_weighted: set[str] = field(default_factory=set)

    @property
    def observed(self) -> list[str]:
        return sorted({*(t for t in self.activations if t not in self.range_from), *self.body_observed})


@dataclass
class QuantPlan:
    """Every number the rewrite writes: activation params, weight params, per node input."""

    activations: dict[str, QParams]
    weights: dict[tuple[str, str], QParams]  # (node, initializer) -> params
    selection: Selection
    notes: list[str] = field(default_factory=list)
    # (node, initializer) -> the integer weights a pass chose (pair-limited rounding), where they
    # are not the nearest rounding of the float weight, and the scales they were chosen for; the
    # float weight stays the reference
    integers: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def quantized_weight(self, key: tuple[str, str], value: np.ndarray) -> np.ndarray:
        """The integers the rewrite stores for weight ``key`` whose float value is ``value``."""
        if key not in self.integers:
            return quantize(value, self.weights[key])
        ints, made_for = self.integers[key]
        params = self.weights[key]
        if np.array_equal(params.scale, made_for):
            return ints
        # a channel's scale raised later (so that its corrected bias fits int32): the same values
        # on its coarser grid; magnitudes only shrink, so the pass's limits still hold
        ratio = made_for.astype(np.float64) / params.scale.astype(np.float64)
        shape = [1] * ints.ndim
        shape[params.axis if params.axis is not None else 0] = -1
        return np.rint(ints * ratio.reshape(shape)).astype(ints.dtype)


def node_names(model: onnx.ModelProto) -> list[str]:
    """Stable names for every node; unnamed nodes get ``<op>_<index>`` (written back)."""
    seen: set[str] = set()
    names = []
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        while name in seen:
            name = f"{name}_{index}"
        node.name = name
        seen.add(name)
        names.append(name)
    return names


# onnxruntime names a node it fuses after the node it started from: ``<MatMul's name>/MatMulAddFusion``
# (a Gemm written for a MatMul and its bias Add), so a user's original layer name still selects it.
_FUSED_SUFFIX = re.compile(r"/[A-Za-z0-9]*Fusion(_token_\d+)?$")


def _matches(node: onnx.NodeProto, pattern: str) -> bool:
    if pattern.startswith("op:"):
        return node.op_type == pattern[3:]
    if pattern.startswith("re:"):
        return re.search(pattern[3:], node.name) is not None
    return node.name == pattern or _FUSED_SUFFIX.sub("", node.name) == pattern


def unmatched_patterns(model: onnx.ModelProto, nodes: NodeSelection) -> list[tuple[str, str]]:
    """(key, pattern) of each include/exclude/uint8_weights pattern that selects no node of
    ``model`` (If/Loop/Scan bodies by their qualified names): a mistyped or renamed layer name would
    otherwise change nothing in silence."""
    from onnxquant.passes.scopes import iter_scoped_nodes

    named = []
    for scoped in iter_scoped_nodes(model.graph):
        named.append(scoped.node)
        if scoped.in_body:
            named.append(onnx.helper.make_node(scoped.node.op_type, [], [], name=scoped.qualified))
    return _unmatched_among(named, nodes)


def planned_unmatched(selection: Selection, nodes: NodeSelection) -> list[tuple[str, str]]:
    """``unmatched_patterns`` against the model the selection was planned on, by the names and
    op types it decided on (every node it saw is quantized or kept float there): a pattern that
    selected nodes a rewrite then replaced (the CPU's PRelus, made Max after planning) was
    applied, not mistyped."""
    if not (nodes.include or nodes.exclude or nodes.uint8_weights):
        return []
    named = [onnx.helper.make_node(op, [], [], name=name) for name, op in selection.quantized.items()] + \
        [onnx.helper.make_node(op, [], [], name=name) for name, (op, _) in selection.float_nodes.items()]
    return _unmatched_among(named, nodes)


def _unmatched_among(named: list[onnx.NodeProto], nodes: NodeSelection) -> list[tuple[str, str]]:
    keyed = [("include", p) for p in nodes.include] + [("exclude", p) for p in nodes.exclude] + \
        [("uint8_weights", p) for p in nodes.uint8_weights]
    return [(key, pattern) for key, pattern in keyed if not any(_matches(node, pattern) for node in named)]


def excluded_names(graph: onnx.GraphProto, nodes: NodeSelection) -> set[str]:
    """The names of ``graph``'s nodes (not its bodies') that the user's exclude patterns select:
    rewrites that would replace an op keep these as they are."""
    return {n.name for n in graph.node if any(_matches(n, p) for p in nodes.exclude)}


# why a layer the recipe's (or a later decision's) exclude patterns match stays float
EXCLUDED = "excluded by --exclude"


def _selected_by_user(node: onnx.NodeProto, nodes: NodeSelection) -> str | None:
    """None when the user's include/exclude patterns allow the node, else the reason."""
    if nodes.include and not any(_matches(node, p) for p in nodes.include):
        return "not matched by --include"
    if any(_matches(node, p) for p in nodes.exclude):
        return EXCLUDED
    return None


def is_dequantized(name: str, producer: Mapping[str, onnx.NodeProto], initializers: Container[str]) -> bool:
    """A weight stored quantized: the output of a DequantizeLinear of an initializer."""
    node = producer.get(name)
    return node is not None and node.op_type == "DequantizeLinear" and bool(node.input) and node.input[0] in initializers


class _Graph:
    """Read-only indexes over a graph: producers, consumers, types, initializers."""

    def __init__(self, model: onnx.ModelProto, not_float: set[str] | None = None) -> None:
        graph = model.graph
        self.initializers = {i.name: i for i in graph.initializer}
        self.outputs = {o.name for o in graph.output}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.inputs = {i.name for i in graph.input}
        self.not_float = not_float or set()
        self.types = known_elem_types(model)

    def is_float_activation(self, name: str) -> bool:
        if not name or name in self.initializers:
            return False
        if name in self.not_float:
            return False
        return self.types.get(name, FLOAT) in (FLOAT, 0)  # unknown: observe, decide after calibration

    def is_float_initializer(self, name: str) -> bool:
        init = self.initializers.get(name)
        return init is not None and init.data_type == FLOAT

    def is_dequantized(self, name: str) -> bool:
        """A weight stored quantized: the output of a DequantizeLinear of an initializer."""
        return is_dequantized(name, self.producer, self.initializers)

    def why_not_a_weight(self, name: str, body: bool) -> str:
        """Where a weighted op's weight comes from when it is no float32 initializer, so a user
        can find it: converters pass Loop weights in as carried values (paddle2onnx), compute
        them (Transpose, Cast), or store them in another type."""
        if self.is_dequantized(name):
            return ALREADY_QUANTIZED
        init = self.initializers.get(name)
        if init is not None:
            return f"weight is stored as {onnx.TensorProto.DataType.Name(init.data_type).lower()}, not float32"
        node = self.producer.get(name)
        if node is not None and node.op_type == "DequantizeLinear":
            return ALREADY_QUANTIZED
        if node is not None and node.op_type == "Constant":
            return "weight is a Constant node's value, not an initializer"
        if node is not None:
            return f"weight is the output of a {node.op_type} node, not an initializer"
        if name in self.inputs:
            return ("weight enters the body as an input (a loop-carried value or a value of the enclosing "
                    "graph), not an initializer" if body else "weight is a graph input, not an initializer")
        return "weight is not a float32 initializer"

    def constant_value(self, name: str) -> np.ndarray | None:
        init = self.initializers.get(name)
        return None if init is None else tensor_array(init)


def _uniform(init: onnx.TensorProto) -> bool:
    """Every element of a weight is the same value."""
    if init.data_location == onnx.TensorProto.EXTERNAL or len(init.dims) == 0:
        return False
    value = tensor_array(init)
    return bool(value.size > 0 and np.all(value == value.flat[0]))


def _clip_min(node: onnx.NodeProto, g: _Graph) -> float:
    """A constant Clip's lower bound (-inf where it has none)."""
    if len(node.input) > 1 and node.input[1]:
        value = g.constant_value(node.input[1])
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else -np.inf
    return float(attributes(node).get("min", -np.inf))  # (before opset 11: an attribute)


def _clip_is_constant(node: onnx.NodeProto, g: _Graph) -> bool:
    return all(not name or name in g.initializers for name in node.input[1:])


def select(model: onnx.ModelProto, recipe: Recipe, not_float: set[str] | None = None,
           per_channel_ok: bool = True, body: bool = False) -> Selection:
    """Decide which nodes become integer kernels.

    ``not_float`` names tensors that calibration found not to be float32 (types that shape
    inference could not tell beforehand); nodes reading them stay float. ``body``: ``model`` wraps
    an If/Loop/Scan body, whose outputs are carried state or per-step values, not a model's scores.
    """
    g = _Graph(model, not_float)
    op_types = set(recipe.quantization.op_types or DEFAULT_OP_TYPES)
    sel = Selection()
    int8_outputs: set[str] = set()  # outputs that will be int8 (for neighbours' decisions)
    fused_inputs: set[str] = set()  # producer outputs absorbed by a following Relu/Clip
    parent: dict[str, str] = {}

    def find(t: str) -> str:
        while parent.get(t, t) != t:
            t = parent[t]
        return t

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    def stay_float(node: onnx.NodeProto, reason: str) -> None:
        sel.float_nodes[node.name] = (node.op_type, reason)

    # kept float by what they compute
    structural = {**({} if body else score_tail_nodes(model)), **front_end_nodes(model), **decode_tail_nodes(model)}

    for node in model.graph.node:
        rule = rule_for(node)
        if rule is None or node.op_type not in op_types:
            stay_float(node, "op type not quantized" if rule is None else "op type not in the recipe's op_types")
            continue
        reason = _selected_by_user(node, recipe.nodes) or structural.get(node.name)
        if reason:
            stay_float(node, reason)
            continue
        reason = _attention_unsupported(node, g, recipe) if node.op_type == "Attention" else None
        if reason:
            stay_float(node, reason)
            continue
        data = [i for i in (node.input if rule.kind == Kind.CONCAT else [node.input[k] for k in rule.data_inputs if k < len(node.input)]) if i]
        if rule.kind == Kind.GATHER:
            # An embedding table: stored 8-bit, looked up in 8 bits (onnxruntime drops the
            # DQ/Q pair around Gather when both share one scale), dequantized after.
            if not g.is_float_initializer(node.input[0]) or node.output[0] in g.outputs:
                stay_float(node, "Gather data is not a float32 table" if node.output[0] not in g.outputs
                           else GRAPH_OUTPUT)
                continue
            sel.quantized[node.name] = node.op_type
            if recipe.target == "cpu" and row_quantizable(node, g.initializers[node.input[0]]):
                sel.row_tables[node.name] = node.input[0]  # one scale per row; its output is float
                continue
            sel.constants[(node.name, node.input[0])] = 0
            union(node.input[0], node.output[0])
            int8_outputs.add(node.output[0])
            sel.owned.add(node.output[0])
            continue
        act = [t for t in data if t not in g.initializers]
        if not act or not all(g.is_float_activation(t) for t in act):
            stay_float(node, NOT_FLOAT)
            continue
        if any(o in g.outputs for o in node.output) and not rule.float_output_ok:
            stay_float(node, GRAPH_OUTPUT)
            continue
        weight_ok = True
        if rule.kind == Kind.WEIGHTED:
            if node.op_type == "Gemm" and not gemm_is_plain(node):
                stay_float(node, "Gemm with alpha/beta/transA is not fused")
                continue
            w = node.input[rule.weight_input] if len(node.input) > rule.weight_input else ""
            if node.op_type == "MatMul" and not g.is_float_initializer(w):
                if g.is_dequantized(w):
                    stay_float(node, ALREADY_QUANTIZED)
                    continue
                if g.is_float_activation(w):
                    rule = RULES["MatMul"]  # activation x activation: both sides are activations
                    act = [node.input[0], w]
                    weight_ok = False
                else:
                    stay_float(node, "MatMul weight is not float32")
                    continue
            elif not g.is_float_initializer(w):
                stay_float(node, g.why_not_a_weight(w, body))
                continue
        elif rule.kind == Kind.FUSED_ACTIVATION:
            if node.op_type == "Clip" and not _clip_is_constant(node, g):
                stay_float(node, "Clip bounds are not constant")
                continue
            src = node.input[0]
            producer = g.producer.get(src)
            if (producer is not None and producer.name in sel.quantized and producer.op_type in ACTIVATION_FUSERS
                    and len(g.consumers.get(src, [])) == 1 and src not in g.outputs and src in int8_outputs):
                fused_inputs.add(src)
                int8_outputs.discard(src)
            elif src not in int8_outputs:
                stay_float(node, "input is not int8 (nothing to fuse with)")
                continue
        elif rule.kind in (Kind.BINARY, Kind.CONCAT):
            consts = [t for t in data if t in g.initializers]
            if rule.kind == Kind.BINARY and (consts or len(act) < 2):
                stay_float(node, "has a constant operand (kept float: no fused kernel gain)")
                continue
            if not all(t in int8_outputs for t in act):
                stay_float(node, "not all inputs are int8")
                continue
        elif rule.kind in (Kind.SHARED, Kind.UNARY):
            if node.input[0] not in int8_outputs:
                stay_float(node, "input is not int8")
                continue
            if node.op_type == "Pad" and not _pads_with_zero(node, g):
                stay_float(node, "pads with a value other than 0 (not exact at the input's scale)")
                continue

        sel.quantized[node.name] = node.op_type
        for t in act:
            if t not in fused_inputs:
                sel.activations.append(t)
        if rule.kind == Kind.WEIGHTED and weight_ok:
            w = node.input[rule.weight_input]
            shape = tuple(g.initializers[w].dims)
            axis = weight_axis(node, len(shape)) if per_channel_ok and recipe.quantization.per_channel else None
            if axis is not None and is_depthwise(node, shape) and int(np.prod(shape[1:])) == 1 \
                    and _uniform(g.initializers[w]):
                axis = None  # one value everywhere (a HardSigmoid written as a Conv): one scale is exact, and smaller
            reduce = recipe.quantization.reduce_range and not is_depthwise(node, shape)
            if node.op_type in UINT8_WEIGHT_OPS and any(_matches(node, p) for p in recipe.nodes.uint8_weights):
                sel.uint8_weights.add(node.name)
                reduce = False
            sel.weights[(node.name, w)] = (rule.weight_input, axis, reduce)
            b = node.input[rule.bias_input] if rule.bias_input is not None and len(node.input) > rule.bias_input else ""
            if b and recipe.quantization.quantize_bias and g.is_float_initializer(b) and len(g.initializers[b].dims) == 1:
                sel.biases[(node.name, b)] = w
        if rule.kind == Kind.CONCAT:
            for t in data:
                if t in g.initializers:
                    sel.constants[(node.name, t)] = list(node.input).index(t)
        for out in _planned_outputs(node, rule):
            if out not in g.outputs:
                int8_outputs.add(out)
                sel.owned.add(out)
            if rule.kind in (Kind.SHARED, Kind.CONCAT):
                for t in act:
                    union(t, out)
                for t in data:
                    if t in g.initializers:
                        union(t, out)

    _decide_outputs(model, sel, g, fused_inputs)
    seen: set[str] = set()
    sel.activations = [t for t in sel.activations if not (t in seen or seen.add(t))]
    sel.owned &= set(sel.activations)
    for t in [*sel.activations, *(k[1] for k in sel.constants)]:
        sel.groups[t] = find(t)
    return sel


def _pads_with_zero(node: onnx.NodeProto, g: _Graph) -> bool:
    """A Pad whose new values are copies of its input (edge, reflect) or a constant 0 (the default)."""
    if attributes(node).get("mode", b"constant") not in (b"constant", "constant"):
        return True
    if len(node.input) < 3 or not node.input[2]:
        return float(attributes(node).get("value", 0.0)) == 0.0  # opset < 11 keeps it as an attribute
    value = g.initializers.get(node.input[2])
    return value is not None and not tensor_array(value).any()


def _attention_unsupported(node: onnx.NodeProto, g: _Graph, recipe: Recipe) -> str | None:
    """Why a fused Attention cannot become onnxruntime's QAttention, or None when it can."""
    q = recipe.quantization
    if recipe.target != "cpu":
        return "Attention is quantized as QAttention, for the CPU target only"
    if q.activation_type != "uint8" or q.weight_type != "int8":
        return "QAttention takes uint8 activations and int8 weights"
    if any(a.name == "qkv_hidden_sizes" for a in node.attribute) or any(node.input[4:]):
        return "QAttention has no qkv_hidden_sizes, past state or attention bias"
    if len(node.input) < 3 or not g.is_float_initializer(node.input[2]) or not g.is_float_initializer(node.input[1]):
        return "Attention weight or bias is not a float32 initializer"
    return None


def _decide_outputs(model: onnx.ModelProto, sel: Selection, g: _Graph, fused: set[str]) -> None:
    """Quantize each quantized node's output where fusion needs it or an int8 reader exists."""
    for node in model.graph.node:
        if node.name not in sel.quantized:
            continue
        rule = RULES[node.op_type]
        for out in _planned_outputs(node, rule):
            if out in fused or out in g.outputs:
                continue
            readers = g.consumers.get(out, [])
            int8_reader = any(r.name in sel.quantized for r in readers)
            if not rule.float_output_ok or int8_reader:
                sel.activations.append(out)
                if any(sel.float_nodes.get(r.name, ("", ""))[1] == SCORE_TAIL_REASON for r in readers):
                    sel.owned.discard(out)  # a score tail reads the unclipped float value
            else:
                sel.owned.discard(out)


def _planned_outputs(node: onnx.NodeProto, rule: OpRule) -> list[str]:
    """The outputs a quantized node gives int8: every output of a Split, else the first."""
    return [o for o in node.output if o] if rule.every_output else [node.output[0]]


def _activation_params(lo: float, hi: float, recipe: Recipe) -> QParams:
    q = recipe.quantization
    if q.activation_symmetric:
        return symmetric(max(abs(lo), abs(hi)), q.activation_type)  # type: ignore[arg-type]
    return asymmetric(lo, hi, q.activation_type)  # type: ignore[arg-type]


def _lift_clip_groups(
    model: onnx.ModelProto,
    g: _Graph,
    sel: Selection,
    activations: dict[str, QParams],
    group_range: dict[str, tuple[float, float]],
) -> None:
    """Lift the zero point of a quantized Clip's scale group so its Q cannot reach below the Clip's
    lower bound (onnxruntime then drops the Clip). Only where the whole group's range already sits
    within one step of that bound: a group shared with a Concat's other inputs may hold negatives
    the lift would wipe out."""
    for node in model.graph.node:
        if node.op_type != "Clip" or node.name not in sel.quantized or node.output[0] not in activations:
            continue
        low = _clip_min(node, g)
        root = sel.groups.get(node.output[0], node.output[0])
        scale = float(activations[node.output[0]].scale)
        if group_range.get(root, (low, 0.0))[0] < low - scale:
            continue
        for t in [t for t in activations if sel.groups.get(t, t) == root]:
            activations[t] = above(activations[t], low)


def finalize(model: onnx.ModelProto, sel: Selection, stats: StatsTable, recipe: Recipe) -> QuantPlan:
    """Turn statistics into scales: shared groups take the union of their members' ranges."""
    g = _Graph(model)
    cal = recipe.calibration
    levels = float(2 ** (8 if recipe.quantization.activation_type.endswith("8") else 16) - 1)
    ranges: dict[str, tuple[float, float]] = {}
    for t in sel.observed:
        s = stats.tensors.get(t)
        if s is not None:
            ranges[t] = estimate_range(s, cal.method, percentile=cal.percentile, levels=levels)
    for (_, t) in sel.constants:
        value = g.constant_value(t)
        ranges[t] = (float(value.min()), float(value.max())) if value is not None and value.size else (0.0, 0.0)
    group_range: dict[str, tuple[float, float]] = {}
    for t, (lo, hi) in ranges.items():
        root = sel.groups.get(t, t)
        old = group_range.get(root, (lo, hi))
        group_range[root] = (min(old[0], lo), max(old[1], hi))
    activations = {t: _activation_params(*group_range[sel.groups.get(t, t)], recipe) for t in sel.observed}
    if not recipe.quantization.activation_symmetric:  # a symmetric recipe keeps its zero points
        _lift_clip_groups(model, g, sel, activations, group_range)
    for t, src in sel.range_from.items():
        activations[t] = activations[src]
    notes: list[str] = []
    weights: dict[tuple[str, str], QParams] = {}
    q = recipe.quantization
    for (node, w), (_, axis, reduce) in sel.weights.items():
        value = g.constant_value(w)
        absmax = per_channel_absmax(value, axis) if axis is not None else np.abs(value).max(initial=0.0)
        dtype = "uint8" if node in sel.uint8_weights else q.weight_type
        weights[(node, w)] = symmetric(absmax, dtype, axis, reduce)  # type: ignore[arg-type]
    for (node, t), _ in sel.constants.items():
        weights[(node, t)] = activations[t] if t in activations else _activation_params(*group_range[sel.groups.get(t, t)], recipe)
    by_node = {n.name: n for n in model.graph.node}
    for (node, b), w in sel.biases.items():
        x = by_node[node].input[0]
        if x not in activations:
            continue
        bias = g.constant_value(b).astype(np.float64)
        params = _bias_params(bias, activations[x], weights[(node, w)])
        if params is None:
            notes.append(f"{node}: bias does not match the weight's channels; kept float")
            continue
        weights[(node, w)], weights[(node, b)] = params
    return QuantPlan(activations, weights, sel, notes)


# Headroom under int32 so accumulations of bias plus products do not overflow.
_BIAS_LIMIT = float(2**31 - 1) / 4


def _bias_params(bias: np.ndarray, x: QParams, w: QParams) -> tuple[QParams, QParams] | None:
    """int32 bias params (scale = input scale x weight scale), raising weight scales if needed.

    A channel whose weights are all near zero (common after batch-norm folding) gets a tiny
    weight scale, and its bias would overflow int32 at ``x_scale * w_scale`` (or that product
    would underflow float32). Such channels get the smallest weight scale that makes the bias
    fit, which costs nothing: their weights are near zero anyway.
    """
    x_scale = float(x.scale)
    w_scale = w.scale.astype(np.float64)
    if w_scale.ndim == 1 and w_scale.shape[0] != bias.shape[0]:
        return None
    needed = np.abs(bias) / (x_scale * _BIAS_LIMIT)
    # nor may the bias scale underflow: a dead channel's weight scale (MIN_SCALE) times a small
    # input scale is a float32 subnormal or zero, and a bias over a zero scale is -inf or NaN
    needed = np.maximum(needed, MIN_SCALE / x_scale)
    if w_scale.ndim == 0:
        needed = np.max(needed, initial=0.0)
    new_w_scale = np.maximum(w_scale, needed).astype(np.float32)
    w_new = QParams(new_w_scale, w.zero_point, w.dtype, w.axis)
    scale = (x_scale * new_w_scale.astype(np.float64)).astype(np.float32)
    if scale.ndim == 0:  # per-tensor weight: one bias scale too (a vector would repeat it per channel)
        return w_new, QParams(scale, np.zeros((), np.int32), "int32", None)
    return w_new, QParams(scale, np.zeros(bias.shape, np.int32), "int32", 0)


def refresh_bias_params(model: onnx.ModelProto, plan: QuantPlan, node: str, bias: str, *, x: str | None = None,
                        value: np.ndarray | None = None) -> None:
    """Recompute one bias's int32 params after a recovery pass changed its float values.

    ``x`` (the node's input) and ``value`` (the new bias), when the caller has them, spare two
    scans of the graph (a pass over every bias stays linear)."""
    weight = plan.selection.biases[(node, bias)]
    if x is None:
        x = next(n.input[0] for n in model.graph.node if n.name == node)
    if value is None:
        value = next(tensor_array(i) for i in model.graph.initializer if i.name == bias)
    params = _bias_params(value.astype(np.float64), plan.activations[x], plan.weights[(node, weight)])
    if params is not None:
        plan.weights[(node, weight)], plan.weights[(node, bias)] = params
