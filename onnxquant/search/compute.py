"""Whether the recipe search may try float compute on int8 weights (``integer_compute = false``):
only where it costs neither size nor speed.

Float compute keeps the int8-stored weights (the same size) and runs fp32's graph, so every
activation's quantization error is gone. That costs speed wherever integer kernels are faster than
fp32, so it is tried only where they are not: the quantized Convs are estimated no faster as int8
than in fp32 on the target CPU kind (``conv_cost``), and they do most of the model's multiply-adds
(the estimate covers Convs only; a model whose MatMuls do most of the work keeps its integer
kernels). The ``float_compute`` stage switches by itself only where int8 costs at least 20 us more
and the Convs hold half of the weights; MTCNN's O-Net (its Convs estimated at 1.01x fp32's time,
97% of the multiply-adds, but a third of the weights: its dense head holds the rest) fell between
the two and kept integer kernels with a KL six times quantize_dynamic's. Whether the search takes
the trial is the noise test's to say, as for any trial.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxquant.conv_cost import ConvEstimate, known_shapes, quantized_conv_shapes

# The Convs must do at least this share of the planned layers' multiply-adds for their estimate
# to speak for the model's speed.
MIN_CONV_MAC_SHARE = 0.5
MATRIX_OPS = ("MatMul", "Gemm")


def conv_mac_share(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], planned: set[str]) -> float | None:
    """The planned Convs' multiply-adds over those of every planned Conv/MatMul/Gemm with a weight
    initializer, for inputs of ``shapes``, in the float model; None where shapes cannot tell."""
    known = known_shapes(model, shapes)  # (one shape inference for the Convs and the matrices)
    convs = sum(c.macs for c in quantized_conv_shapes(model, shapes, planned, known))
    inits = {i.name: i for i in model.graph.initializer}
    matrices = [n for n in model.graph.node if n.name in planned and n.op_type in MATRIX_OPS
                and len(n.input) > 1 and n.input[1] in inits]
    others = 0
    if matrices:
        for node in matrices:
            out = known.get(node.output[0])
            if out is None:
                return None
            weight = int(np.prod(inits[node.input[1]].dims, dtype=np.int64))
            others += int(np.prod(out, dtype=np.int64)) * weight // out[-1]  # outputs x reduction length
    total = convs + others
    return convs / total if total else None


def float_compute_costs_no_speed(estimate: ConvEstimate | None, mac_share: float | None) -> bool:
    """Integer kernels are estimated no faster than fp32 (``estimate``) where the Convs do most of
    the work (``mac_share``): float compute loses no speed there."""
    return (estimate is not None and estimate.int8_us >= estimate.fp32_us and mac_share is not None
            and mac_share >= MIN_CONV_MAC_SHARE)
