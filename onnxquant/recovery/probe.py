"""Run a model with extra nodes and outputs over samples, one sample at a time.

Recovery passes measure things the model does not output (a layer's input, a channel's mean
error under quantization). They describe the extra nodes as a ``Probe``; the probe is added to
the graph only while it is serialized, so the model itself is left as it was.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxquant.calibration.collector import in_order, make_session, run_fetch, sample_workers
from onnxquant.calibration.feeds import check_feed, input_specs
from onnxquant.errors import CalibrationDataError
from onnxquant.model_io import has_lazy, is_repeated, serialize_extended
from onnxquant.passes.insert_qdq import qdq_domain
from onnxquant.qparams import QParams


@dataclass
class Probe:
    """Extra nodes, initializers and outputs; names are prefixed so they cannot clash."""

    prefix: str
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    _count: int = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{self._count}_{hint}"

    def constant(self, value: np.ndarray, hint: str = "c") -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], hint: str = "", domain: str = "", **attrs) -> str:
        out = self.name(hint or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, domain=domain, **attrs))
        return out

    def reduce(self, op: str, x: str, axes: list[int], opset: int) -> str:
        """``op`` (ReduceMean, ReduceMax...) over ``axes``, keepdims 0, in the form ``opset``
        wants: axes became an input in opset 18."""
        if opset >= 18:
            return self.node(op, [x, self.constant(np.array(axes, np.int64), "axes")], keepdims=0)
        return self.node(op, [x], axes=axes, keepdims=0)

    def fake_quant(self, x: str, params: QParams, opset: int) -> str:
        """QuantizeLinear then DequantizeLinear of ``x`` with ``params``, as the rewrite writes them."""
        attrs = {} if params.axis is None else {"axis": params.axis}
        domain = qdq_domain(params, opset)
        s = self.constant(np.asarray(params.scale, np.float32), "scale")
        z = self.constant(np.asarray(params.zero_point), "zp")
        q = self.node("QuantizeLinear", [x, s, z], "q", domain=domain, **attrs)
        return self.node("DequantizeLinear", [q, s, z], "dq", domain=domain, **attrs)


def _slots(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> list[int]:
    """For each probe node, the index of the last graph node it reads from (-1: none)."""
    position = {out: i for i, node in enumerate(graph.node) for out in node.output}
    slots = []
    for node in nodes:
        slot = max((position.get(name, -1) for name in node.input if name), default=-1)
        slots.append(slot)
        position.update({out: slot for out in node.output})
    return slots


def probe_bytes(model: onnx.ModelProto, probe: Probe) -> bytes:
    """``model`` with the probe's nodes and outputs, serialized; ``model`` is left as it was.

    Each probe node is placed right after the graph node it reads: with onnxruntime's
    priority-based order (``make_session(concurrent_runs=True)``) it then runs as soon as its
    input exists, and the tensor it measures is freed then, not kept until the end of the
    graph (EfficientNet-Lite0's bias correction: 325 -> 298 MB peak)."""
    graph = model.graph
    placed = sorted(zip(_slots(graph, probe.nodes), range(len(probe.nodes))))
    for slot, k in reversed(placed):
        graph.node.insert(slot + 1, probe.nodes[k])
    try:
        pruned = _needed_only(model, probe)
        if pruned is not None:
            return pruned
        return serialize_extended(model, (), probe.initializers, probe.outputs)
    finally:
        for done, (slot, _) in reversed(list(enumerate(placed))):
            del graph.node[slot + 1 + done]


# A probe is cut down to the nodes it depends on only where their weights are at most this share
# of the model's: they are copied into the cut-down model (the whole model is serialized in place).
PRUNE_MAX_WEIGHT_SHARE = 0.5


def _needed_only(model: onnx.ModelProto, probe: Probe) -> bytes | None:
    """The model (probe nodes in place) cut down to the nodes the probe's outputs depend on,
    serialized; None where that would save little (most of the weights are needed), or where the
    cut cannot be told safely (subgraphs may read any outer name; weights left on disk are mapped
    by name). onnxruntime runs every node of a session whatever is fetched, so a probe of a few
    early layers (a search trial that keeps EfficientNet-Lite0's first layers float re-measures
    only those) would otherwise run the whole model on every sample. Each node kept computes the
    same values (no fusions: ``optimize=False``), so what the probe measures does not change. The
    model is left untouched: callers hold its nodes."""
    graph = model.graph
    if has_lazy(model) or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                              for n in graph.node for a in n.attribute):
        return None
    producer = {out: k for k, node in enumerate(graph.node) for out in node.output if out}
    needed: set[int] = set()
    stack = [producer[name] for name in probe.outputs if name in producer]
    while stack:
        k = stack.pop()
        if k not in needed:
            needed.add(k)
            stack.extend(producer[name] for name in graph.node[k].input if name in producer)
    if len(needed) == len(graph.node):
        return None
    read = {name for k in needed for name in graph.node[k].input} | set(probe.outputs)  # (an output may be a weight)
    sizes = {t.name: _elements(t) for t in graph.initializer}
    if sum(v for name, v in sizes.items() if name in read) > PRUNE_MAX_WEIGHT_SHARE * sum(sizes.values()):
        return None
    shell = onnx.ModelProto()
    _copy_fields(model, shell, skip={"graph"})
    _copy_fields(graph, shell.graph, skip={"node", "initializer", "output"})
    shell.graph.node.extend(graph.node[k] for k in sorted(needed))
    shell.graph.initializer.extend(t for t in graph.initializer if t.name in read)
    dropped = set(sizes) - read  # (an older model may list its weights as graph inputs too)
    if dropped and any(i.name in dropped for i in shell.graph.input):
        inputs = [i for i in shell.graph.input if i.name not in dropped]
        del shell.graph.input[:]
        shell.graph.input.extend(inputs)
    return serialize_extended(shell, (), probe.initializers, probe.outputs)


def _elements(tensor: onnx.TensorProto) -> int:
    count = 1
    for d in tensor.dims:
        count *= d
    return count


def _copy_fields(source: Any, target: Any, skip: set[str]) -> None:
    """Every set field of ``source`` but ``skip`` into ``target`` (a message of the same type)."""
    for fd, value in source.ListFields():
        if fd.name in skip:
            continue
        if is_repeated(fd):
            getattr(target, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(target, fd.name).CopyFrom(value)
        else:
            setattr(target, fd.name, value)


def run_probe(
    model: onnx.ModelProto,
    probe: Probe,
    samples: Iterable[dict[str, np.ndarray]],
    max_samples: int | None = None,
    reduce: Callable[[dict[str, np.ndarray]], Any] | None = None,
) -> Iterator[Any]:
    """Yield the probe's outputs for each sample, in sample order (a few samples' worth of
    memory at a time). Samples run in parallel on one-thread sessions (``in_order``), so the
    values, and every sum the caller makes of them, do not depend on the thread count.
    ``reduce``: applied to each sample's outputs where they were computed (in parallel, so
    large fetched tensors are summarised before the next samples run).
    The probe's initializers are released once serialized (the probe is spent), before
    onnxruntime makes its own copy of them."""
    def serialized() -> bytes:
        data = probe_bytes(model, probe)
        probe.initializers.clear()  # (bias correction's fake-quantized weights: a model's worth of bytes)
        return data

    session = make_session(serialized, threads=1, optimize=False, weights=model, concurrent_runs=True)
    specs = input_specs(model)

    def run(index: int, raw: dict[str, np.ndarray]) -> Any:
        feed = check_feed(raw, specs, index)
        try:
            values = dict(zip(probe.outputs, run_fetch(session, probe.outputs, feed)))
        except Exception as exc:
            raise CalibrationDataError(f"sample {index}: onnxruntime failed: {str(exc).strip().splitlines()[0]}") from exc
        return reduce(values) if reduce is not None else values

    yield from in_order(run, samples, max_samples, sample_workers())
