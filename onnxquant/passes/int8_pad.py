"""Pass ``int8_pad``: a zero Pad between a DequantizeLinear and a QuantizeLinear of the same
scale and zero point pads the integer tensor instead (with the zero point), so no float island.

TF-Lite models pad channels before a residual Add (BlazeFace's ``channel_padding``) and split
spatial padding from strided Convs. The planner gives such a Pad its input's scale
(``ops/rules.py``: Pad is SHARED), but onnxruntime's QDQ optimisations drop no Q/DQ pair around
a Pad: each stays a float op that dequantizes and quantizes its tensor again. Padding the int8
tensor with its zero point is exact (Q(DQ(x)) = x, and a padded 0 quantizes to the zero point),
and onnxruntime's Pad kernel takes int8 and uint8.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxquant.graphs import iter_graphs
from onnxquant.model_io import tensor_array
from onnxquant.passes.names import fresh_name, names_in_use

PAD_INPUTS_OPSET = 11  # pads and the constant value became inputs


def _scalar_params(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple[bytes, bytes, int] | None:
    """(scale bytes, zero point bytes, zero point type) of a per-tensor Q/DQ, else None."""
    if len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
        return None
    scale, zero = tensor_array(inits[node.input[1]]), tensor_array(inits[node.input[2]])
    if scale.size != 1 or zero.size != 1:
        return None
    return scale.astype(np.float32).tobytes(), zero.tobytes(), inits[node.input[2]].data_type


def pad_integers(model: onnx.ModelProto) -> int:
    """Rewrite every ``DQ -> Pad (0) -> Q`` of one scale in the main graph (in place); returns how many."""
    graph = model.graph
    if max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0) < PAD_INPUTS_OPSET:
        return 0
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    # names If/Loop/Scan bodies read from this graph: such a value has readers the counts above miss
    outputs = {o.name for o in graph.output} | _read_in_bodies(graph)
    used = names_in_use(graph)
    dropped: set[int] = set()
    new_inits = []
    replacing: dict[int, onnx.NodeProto] = {}  # id of a Pad -> the Pad of integers that takes its place
    for pad in graph.node:
        if pad.op_type != "Pad" or pad.domain not in ("", "ai.onnx") or pad.output[0] in outputs:
            continue
        dq = producer.get(pad.input[0])
        after = readers.get(pad.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(after) != 1 or after[0].op_type != "QuantizeLinear":
            continue
        q = after[0]
        params = _scalar_params(dq, inits)
        if params is None or params != _scalar_params(q, inits):
            continue
        if len(pad.input) > 2 and pad.input[2] and (pad.input[2] not in inits or tensor_array(inits[pad.input[2]]).any()):
            continue
        zero = numpy_helper.from_array(tensor_array(inits[dq.input[2]]).reshape(()),
                                       fresh_name(used, f"{pad.name}_zero_point"))
        new_inits.append(zero)
        inputs = [dq.input[0], pad.input[1] if len(pad.input) > 1 else "", zero.name, *pad.input[3:]]
        replacement = helper.make_node("Pad", inputs, [q.output[0]], name=fresh_name(used, f"{pad.name}_int8"),
                                       domain=pad.domain, **{a.name: helper.get_attribute_value(a) for a in pad.attribute})
        replacing[id(pad)] = replacement
        dropped.add(id(q))
        if len(readers.get(dq.output[0], [])) == 1 and dq.output[0] not in outputs:
            dropped.add(id(dq))
    if replacing:
        kept = [replacing.get(id(n), n) for n in graph.node if id(n) not in dropped]
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(new_inits)
    return len(replacing)


def _read_in_bodies(graph: onnx.GraphProto) -> set[str]:
    """Every name a node inside any body nested in ``graph`` reads (outer-scope values among them)."""
    bodies = [g for g in iter_graphs(graph) if g is not graph]
    return {i for body in bodies for n in body.node for i in n.input}
