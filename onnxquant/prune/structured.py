"""Take dead output channels out of the graph, with the matching inputs of their consumers.

A channel whose weights are all zero outputs a constant (its bias). That constant is carried
through the ops between the layer and the next weighted layers (activations, BatchNorm,
per-channel Mul/Add, pooling, depthwise convs) and then folded into their biases, so the
smaller model computes exactly what the pruned one did. Where that cannot be done exactly
(a residual Add or Concat joins the channel to another tensor, a non-zero constant meets zero
padding, the tensor is a graph output...) the channels stay and the report says why.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxquant.model_io import tensor_array
from onnxquant.ops.rules import gemm_is_plain
from onnxquant.passes.node_index import NodeIndex, attributes, clip_bounds
from onnxquant.prune.weights import weight_axes


@dataclass
class ChannelRemoval:
    node: str
    removed: int
    total: int


@dataclass
class StructuredReport:
    removed: list[ChannelRemoval] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # layer -> why its dead channels stayed

    @property
    def channels_removed(self) -> int:
        return sum(r.removed for r in self.removed)

    def to_dict(self) -> dict:
        return {"channels_removed": self.channels_removed, "layers": [vars(r) for r in self.removed],
                "kept": dict(sorted(self.kept.items()))}


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


_UNARY: dict[str, Callable[[np.ndarray, dict], np.ndarray]] = {
    "Relu": lambda v, a: np.maximum(v, 0.0),
    "LeakyRelu": lambda v, a: np.where(v >= 0, v, v * a.get("alpha", 0.01)),
    "Sigmoid": lambda v, a: _sigmoid(v),
    "HardSigmoid": lambda v, a: np.clip(a.get("alpha", 0.2) * v + a.get("beta", 0.5), 0.0, 1.0),
    "HardSwish": lambda v, a: v * np.clip(v / 6.0 + 0.5, 0.0, 1.0),
    "Tanh": lambda v, a: np.tanh(v),
    "Identity": lambda v, a: v,
}
_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}


@dataclass
class _Channels:
    """Dead channels of one tensor and their constant values, as they flow through the graph."""

    tensor: str
    dead: np.ndarray  # channel indices
    values: np.ndarray  # the constant each dead channel holds
    total: int  # channels of the tensor
    rank: int | None  # None: unknown (MatMul outputs); the channel axis is then the last
    axis: int  # channel axis counted from the end (-1: last)
    spatial_one: bool = False  # after global pooling: every spatial dim is 1

    def moved(self, tensor: str, values: np.ndarray | None = None, **changes) -> _Channels:
        fields_ = {**vars(self), "tensor": tensor, **changes}
        if values is not None:
            fields_["values"] = values
        return _Channels(**fields_)

    @property
    def channel_first(self) -> bool:
        """The channel axis is dim 1 (NCHW-style), as BatchNorm, pooling and Conv expect."""
        return self.rank is not None and self.axis == 1 - self.rank

    @property
    def keep(self) -> np.ndarray:
        return np.setdiff1d(np.arange(self.total), self.dead)


class _Blocked(Exception):
    pass


class _Plan:
    """Initializer and node changes for one layer, applied only if the whole trace succeeds."""

    def __init__(self, remover: _Remover) -> None:
        self.remover = remover
        self.arrays: dict[str, np.ndarray] = {}
        self.node_ops: list[Callable[[], None]] = []
        self.touched: list[str] = []

    def array(self, name: str) -> np.ndarray:
        return self.arrays[name] if name in self.arrays else self.remover.array(name)

    def added(self, name: str, contribution: np.ndarray) -> None:
        """``name`` (a bias) plus ``contribution``, element by element."""
        if self.remover.index.uses(name) != 1:
            raise _Blocked(f"constant {name!r} is shared with another node")
        current = self.array(name)
        if current.size != contribution.size:
            raise _Blocked(f"bias {name!r} is broadcast")
        self.arrays[name] = (current + contribution.reshape(current.shape)).astype(current.dtype)

    def sliced(self, name: str, axis: int, keep: np.ndarray) -> None:
        if self.remover.index.uses(name) != 1:
            raise _Blocked(f"constant {name!r} is shared with another node")
        self.arrays[name] = np.take(self.array(name), keep, axis=axis)


def aligned(total: int, count: int, multiple: int) -> int:
    """The most of ``count`` channels that can go while the rest stays a multiple of ``multiple``
    (onnxruntime's blocked NCHWc conv kernels want 8 or 16 channels; an odd count falls back to
    slower kernels, so removing 3 of 96 channels made EfficientNet-Lite0 slower, not faster)."""
    if multiple <= 1:
        return count
    for removed in range(count, -1, -1):
        if (total - removed) % multiple == 0 or removed == 0:
            return removed
    return 0


class _Remover:
    def __init__(self, model: onnx.ModelProto, tolerance: float, multiple: int = 1) -> None:
        self.model = model
        self.multiple = multiple
        self.index = NodeIndex(model.graph)
        self.tolerance = tolerance
        self.cache: dict[str, np.ndarray] = {}
        self.changed: set[str] = set()
        self.new_inits: list[str] = []
        self.touched: list[str] = []

    def array(self, name: str) -> np.ndarray:
        if name not in self.cache:
            self.cache[name] = tensor_array(self.index.inits[name])
        return self.cache[name]

    def const(self, name: str) -> np.ndarray | None:
        return self.array(name) if name in self.index.inits else None

    # -- producers ---------------------------------------------------------------------------
    def dead_channels(self, k: int) -> tuple[_Channels, str, int, str | None] | None:
        """The dead output channels of layer ``k``: (channels, weight, output axis, bias)."""
        node = self.index.nodes[k]
        if len(node.input) < 2 or node.input[1] not in self.index.inits:
            return None
        weight = self.array(node.input[1])
        out_axis = _output_axis(node, weight)
        if out_axis is None:
            return None
        # Conv outputs are NCHW-like (channel dim 1); Gemm outputs (N, C); MatMul outputs have an
        # unknown rank with channels last, and their bias comes later as an Add.
        rank = weight.ndim if node.op_type == "Conv" else 2 if node.op_type == "Gemm" else None
        axis = 1 - weight.ndim if node.op_type == "Conv" else -1
        bias = node.input[2] if node.op_type != "MatMul" and len(node.input) > 2 and node.input[2] else None
        magnitude = np.abs(np.moveaxis(weight, out_axis, 0)).reshape(weight.shape[out_axis], -1).max(axis=1)
        dead = np.flatnonzero(magnitude <= self.tolerance)
        if dead.size == 0:
            return None
        total = weight.shape[out_axis]
        values = np.zeros(dead.size)
        if bias is not None:
            b = self.const(bias)
            if b is None:
                return None
            values = np.broadcast_to(b.astype(np.float64).ravel() if b.size == total else b.ravel()[:1],
                                     (total,))[dead].copy()
        if dead.size == total:  # a layer needs one channel left
            dead, values = dead[:-1], values[:-1]
        keep = aligned(total, int(dead.size), self.multiple)
        dead, values = dead[:keep], values[:keep]
        if dead.size == 0:
            return None
        return _Channels(node.output[0], dead, values, total, rank, axis), node.input[1], out_axis, bias

    def remove(self, k: int) -> tuple[ChannelRemoval | None, str | None]:
        found = self.dead_channels(k)
        if found is None:
            return None, None
        channels, weight, out_axis, bias = found
        node = self.index.nodes[k]
        plan = _Plan(self)
        try:
            plan.sliced(weight, out_axis, channels.keep)
            if bias is not None and self.array(bias).size == channels.total:
                plan.sliced(bias, 0, channels.keep)
            self.follow(channels, plan)
        except _Blocked as why:
            return None, str(why)
        self.commit(plan)
        return ChannelRemoval(node.name, int(channels.dead.size), channels.total), None

    def commit(self, plan: _Plan) -> None:
        self.cache.update(plan.arrays)
        self.changed.update(plan.arrays)
        for op in plan.node_ops:
            op()
        self.touched.extend(plan.touched)

    # -- consumers ---------------------------------------------------------------------------
    def follow(self, ch: _Channels, plan: _Plan) -> None:
        if ch.tensor in self.index.outputs:
            raise _Blocked(f"{ch.tensor!r} is a graph output")
        plan.touched.append(ch.tensor)
        for k in self.index.readers.get(ch.tensor, []):
            self.consume(k, ch, plan)

    def consume(self, k: int, ch: _Channels, plan: _Plan) -> None:
        node = self.index.nodes[k]
        op, attrs = node.op_type, attributes(node)
        reads = sum(1 for i in node.input if i == ch.tensor)
        if op in _BINARY and reads == 1:
            return self.binary(node, ch, plan)
        if node.input[0] != ch.tensor or reads != 1:
            raise _Blocked(f"feeds {op} {node.name!r} in an unsupported position")
        if op in _UNARY:
            return self.follow(ch.moved(node.output[0], _UNARY[op](ch.values, attrs)), plan)
        if op == "Clip":
            bounds = clip_bounds(node, self.index.inits)
            if bounds is None:
                raise _Blocked(f"Clip {node.name!r} has computed bounds")
            lo, hi = (-np.inf if bounds[0] is None else bounds[0]), (np.inf if bounds[1] is None else bounds[1])
            return self.follow(ch.moved(node.output[0], np.clip(ch.values, lo, hi)), plan)
        if op == "BatchNormalization":
            return self.batch_norm(node, ch, plan, attrs)
        if op in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"):
            return self.pool(node, ch, plan, attrs)
        if op in ("Flatten", "Reshape") and ch.spatial_one and ch.channel_first and self.flattens(node, attrs):
            return self.follow(ch.moved(node.output[0], rank=2, axis=-1), plan)
        if op == "Conv":
            return self.conv(k, node, ch, plan, attrs)
        if op == "Gemm":
            return self.gemm(k, node, ch, plan, attrs)
        if op == "MatMul":
            return self.matmul(node, ch, plan)
        if op in ("Concat", "Sum"):
            raise _Blocked(f"joins another tensor at {op} {node.name!r} (residual or concat)")
        raise _Blocked(f"feeds {op} {node.name!r}")

    def flattens(self, node: onnx.NodeProto, attrs: dict) -> bool:
        """(N, C, 1, 1) -> (N, C): Flatten at axis 1, or Reshape to (0 or N, -1)."""
        if node.op_type == "Flatten":
            return attrs.get("axis", 1) == 1
        shape = self.const(node.input[1])
        return shape is not None and shape.size == 2 and int(shape[1]) == -1 and int(shape[0]) >= 0

    def binary(self, node: onnx.NodeProto, ch: _Channels, plan: _Plan) -> None:
        other = next(i for i in node.input if i != ch.tensor)
        c = self.const(other)
        if c is None:
            if node.op_type == "Add":
                raise _Blocked(f"joins another tensor at Add {node.name!r} (residual)")
            raise _Blocked(f"{node.op_type} {node.name!r} with a computed operand")
        if ch.rank is not None and c.ndim > ch.rank:
            raise _Blocked(f"{node.op_type} {node.name!r} broadcasts to a higher rank")
        channel_dim = c.ndim + ch.axis
        per_channel = channel_dim >= 0 and c.shape[channel_dim] == ch.total and ch.total > 1
        if c.size != (ch.total if per_channel else 1):
            raise _Blocked(f"{node.op_type} {node.name!r} has a constant that varies within a channel")
        c_dead = c.astype(np.float64).ravel()[ch.dead] if per_channel else np.full(ch.dead.size, float(c.ravel()[0]))
        fn = _BINARY[node.op_type]
        values = fn(ch.values, c_dead) if node.input[0] == ch.tensor else fn(c_dead, ch.values)
        if per_channel:
            plan.sliced(other, channel_dim, ch.keep)
        self.follow(ch.moved(node.output[0], values), plan)

    def batch_norm(self, node: onnx.NodeProto, ch: _Channels, plan: _Plan, attrs: dict) -> None:
        params = [self.const(n) for n in node.input[1:5]]
        if not ch.channel_first or any(p is None for p in params) or len(node.output) > 1:
            raise _Blocked(f"BatchNormalization {node.name!r} is not a per-channel constant affine")
        scale, bias, mean, var = (p.astype(np.float64).ravel()[ch.dead] for p in params)
        values = scale * (ch.values - mean) / np.sqrt(var + attrs.get("epsilon", 1e-5)) + bias
        for name in node.input[1:5]:
            plan.sliced(name, 0, ch.keep)
        self.follow(ch.moved(node.output[0], values), plan)

    def pool(self, node: onnx.NodeProto, ch: _Channels, plan: _Plan, attrs: dict) -> None:
        if not ch.channel_first or len([o for o in node.output if o]) > 1:
            raise _Blocked(f"{node.op_type} {node.name!r} layout not followed")
        padded = _padded(attrs)
        if (node.op_type == "AveragePool" and padded and attrs.get("count_include_pad", 0)
                and np.any(ch.values != 0)):
            raise _Blocked(f"a non-zero constant channel meets zero padding in {node.name!r}")
        self.follow(ch.moved(node.output[0], spatial_one=ch.spatial_one or node.op_type.startswith("Global")), plan)

    def conv(self, k: int, node: onnx.NodeProto, ch: _Channels, plan: _Plan, attrs: dict) -> None:
        weight_name = node.input[1]
        w = self.const(weight_name) if len(node.input) > 1 else None
        if w is None or not ch.channel_first:
            raise _Blocked(f"Conv {node.name!r} has a computed weight")
        group = attrs.get("group", 1)
        constant = np.any(ch.values != 0)
        if constant and _padded(attrs):
            raise _Blocked(f"a non-zero constant channel meets zero padding in {node.name!r}")
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if group == ch.total and w.shape[0] == ch.total and w.shape[1] == 1:  # depthwise: channel c -> c
            bias = plan.array(bias_name).astype(np.float64) if bias_name else np.zeros(ch.total)
            kernel_sums = w.reshape(ch.total, -1).sum(axis=1).astype(np.float64)
            values = bias[ch.dead] + ch.values * kernel_sums[ch.dead]
            plan.sliced(weight_name, 0, ch.keep)
            if bias_name:
                plan.sliced(bias_name, 0, ch.keep)
            new_group = int(ch.keep.size)
            plan.node_ops.append(lambda: _set_attr(node, "group", new_group))
            return self.follow(ch.moved(node.output[0], values), plan)
        if group != 1:
            raise _Blocked(f"grouped Conv {node.name!r}")
        if constant:  # fold the constant channels' contribution into the bias
            contribution = (w[:, ch.dead].reshape(w.shape[0], ch.dead.size, -1).sum(axis=2).astype(np.float64)
                            @ ch.values)
            self.add_to_bias(k, node, bias_name, contribution, w.dtype, plan)
        plan.sliced(weight_name, 1, ch.keep)

    def gemm(self, k: int, node: onnx.NodeProto, ch: _Channels, plan: _Plan, attrs: dict) -> None:
        w = self.const(node.input[1])
        if w is None or not gemm_is_plain(node) or ch.rank != 2 or ch.axis != -1:
            raise _Blocked(f"Gemm {node.name!r} is not a plain constant-weight Gemm")
        in_axis = 1 if attrs.get("transB", 0) else 0
        if np.any(ch.values != 0):
            rows = np.take(w, ch.dead, axis=in_axis).astype(np.float64)
            contribution = rows.T @ ch.values if in_axis == 0 else rows @ ch.values
            bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
            self.add_to_bias(k, node, bias_name, contribution, w.dtype, plan)
        plan.sliced(node.input[1], in_axis, ch.keep)

    def matmul(self, node: onnx.NodeProto, ch: _Channels, plan: _Plan) -> None:
        w = self.const(node.input[1])
        if w is None or w.ndim != 2 or ch.axis != -1:
            raise _Blocked(f"MatMul {node.name!r} has a computed or batched weight")
        if np.any(ch.values != 0):
            contribution = w[ch.dead].astype(np.float64).T @ ch.values
            reader = self.index.only_reader(node.output[0], "Add")
            add = self.index.nodes[reader] if reader is not None else None
            bias_name = next((i for i in add.input if i != node.output[0]), None) if add is not None else None
            if bias_name is None or self.const(bias_name) is None or self.const(bias_name).size != w.shape[1]:
                raise _Blocked(f"MatMul {node.name!r} has no constant bias Add to take a constant channel")
            plan.added(bias_name, contribution)
        plan.sliced(node.input[1], 0, ch.keep)

    def add_to_bias(self, k: int, node: onnx.NodeProto, bias_name: str | None, contribution: np.ndarray,
                    dtype: np.dtype, plan: _Plan) -> None:
        """Add ``contribution`` to the bias (input 2) of Conv/Gemm ``node``, creating one if absent."""
        if bias_name is None:
            new_name = self.fresh_name(f"{node.name}_bias")
            plan.arrays[new_name] = contribution.astype(dtype)

            def attach() -> None:
                while len(node.input) < 2:
                    node.input.append("")
                node.input.append(new_name)
                self.new_inits.append(new_name)
                self.index.inits[new_name] = numpy_helper.from_array(self.cache[new_name], new_name)
                self.index.readers[new_name] = [k]

            plan.node_ops.append(attach)
            return
        plan.added(bias_name, contribution)

    def fresh_name(self, hint: str) -> str:
        taken = set(self.index.inits) | set(self.index.producer) | {i.name for i in self.model.graph.input}
        name, n = hint, 0
        while name in taken:
            n += 1
            name = f"{hint}_{n}"
        return name

    def write_back(self) -> None:
        graph = self.model.graph
        for k, init in enumerate(graph.initializer):
            if init.name in self.changed:
                graph.initializer[k].CopyFrom(numpy_helper.from_array(self.cache[init.name], init.name))
        for name in self.new_inits:
            graph.initializer.append(numpy_helper.from_array(self.cache[name], name))
        stale = set(self.touched)
        kept = [v for v in graph.value_info if v.name not in stale]
        del graph.value_info[:]
        graph.value_info.extend(kept)


def _padded(attrs: dict) -> bool:
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    return auto_pad in ("SAME_UPPER", "SAME_LOWER") or any(attrs.get("pads", []))


def _set_attr(node: onnx.NodeProto, name: str, value: int) -> None:
    for attr in node.attribute:
        if attr.name == name:
            attr.CopyFrom(helper.make_attribute(name, value))
            return
    node.attribute.append(helper.make_attribute(name, value))


def remove_dead_channels(model: onnx.ModelProto, tolerance: float = 0.0,
                         layers: set[str] | None = None, multiple: int = 1) -> StructuredReport:
    """Remove, in place, every output channel whose weights are all within ``tolerance`` of zero
    (of the layers named in ``layers``, default all), where it can be done exactly, leaving a
    multiple of ``multiple`` channels (some dead channels stay for that)."""
    remover = _Remover(model, tolerance, multiple)
    report = StructuredReport()
    for k, node in enumerate(remover.index.nodes):
        if layers is not None and node.name not in layers:
            continue
        removal, blocked = remover.remove(k)
        if removal is not None:
            report.removed.append(removal)
        elif blocked is not None:
            report.kept[node.name] = blocked
    remover.write_back()
    return report


def removable_layers(model: onnx.ModelProto) -> list[str]:
    """Layers whose output channels could be removed if they were dead (tried on a copy with one
    channel zeroed, bias included): candidates for channel pruning."""
    found = []
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    remover = _Remover(probe, 0.0)
    for k, node in enumerate(remover.index.nodes):
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        if node.input[1] not in remover.index.inits:
            continue
        weight = remover.array(node.input[1])
        out_axis = _output_axis(node, weight)
        if out_axis is None or weight.shape[out_axis] < 2:
            continue
        zeroed = np.moveaxis(weight.copy(), out_axis, 0)
        zeroed[0] = 0
        remover.cache[node.input[1]] = np.moveaxis(zeroed, 0, out_axis)
        found_dead = remover.dead_channels(k)
        if found_dead is not None:
            channels = found_dead[0]
            channels.values = np.zeros_like(channels.values)
            plan = _Plan(remover)
            try:
                remover.follow(channels, plan)
                found.append(node.name)
            except _Blocked:
                pass
        remover.cache[node.input[1]] = weight
    return found


def _output_axis(node: onnx.NodeProto, weight: np.ndarray) -> int | None:
    """The weight's output-channel axis where those channels can be removed (grouped convs: no)."""
    axes = weight_axes(node, weight.shape)
    if axes is None or (node.op_type == "Conv" and attributes(node).get("group", 1) != 1):
        return None
    return axes[1]
