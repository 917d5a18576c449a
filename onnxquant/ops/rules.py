"""How each op type takes part in quantization, written for onnxruntime's QDQ fusions.

onnxruntime's CPU provider turns ``DQ -> op -> Q`` groups into integer kernels (QLinearConv,
QLinearMatMul, QGemm, QLinearAdd, ...), and drops Q/DQ pairs around data-movement ops when the
scales on both sides are equal. The kinds below say what a node needs for that to happen.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import onnx

from onnxquant.passes.node_index import attributes


class Kind(enum.Enum):
    WEIGHTED = "weighted"  # Conv, ConvTranspose, Gemm, MatMul: per-channel weights, int32 bias
    ACTIVATION_MATMUL = "activation_matmul"  # MatMul of two activations (attention)
    FUSED_ACTIVATION = "fused_activation"  # Relu/Clip: absorbed by the producer's output Q
    BINARY = "binary"  # Add, Mul: QLinearAdd/QLinearMul when both sides are already int8
    CONCAT = "concat"  # inputs and output share one scale
    SHARED = "shared"  # data movement: output shares the input's scale (Q/DQ dropped)
    UNARY = "unary"  # pools, Sigmoid, LeakyRelu: own output scale
    GATHER = "gather"  # embedding lookup: the table is stored 8-bit, the output shares its scale


@dataclass(frozen=True)
class OpRule:
    kind: Kind
    data_inputs: tuple[int, ...] = (0,)  # the float inputs that are quantized
    weight_input: int | None = None
    bias_input: int | None = None
    float_output_ok: bool = False  # the fused kernel may keep a float output (MatMul, Gemm)
    every_output: bool = False  # all outputs share the input's scale (Split), not only the first


RULES: dict[str, OpRule] = {
    "Conv": OpRule(Kind.WEIGHTED, (0,), weight_input=1, bias_input=2),
    "ConvTranspose": OpRule(Kind.WEIGHTED, (0,), weight_input=1, bias_input=2),
    "Gemm": OpRule(Kind.WEIGHTED, (0,), weight_input=1, bias_input=2, float_output_ok=True),
    "MatMul": OpRule(Kind.WEIGHTED, (0,), weight_input=1, float_output_ok=True),
    "Relu": OpRule(Kind.FUSED_ACTIVATION),
    "Clip": OpRule(Kind.FUSED_ACTIVATION),
    "Add": OpRule(Kind.BINARY, (0, 1)),
    "Mul": OpRule(Kind.BINARY, (0, 1)),
    "Concat": OpRule(Kind.CONCAT, ()),  # every input
    "MaxPool": OpRule(Kind.SHARED),
    "Reshape": OpRule(Kind.SHARED),
    "Transpose": OpRule(Kind.SHARED),
    "Squeeze": OpRule(Kind.SHARED),
    "Unsqueeze": OpRule(Kind.SHARED),
    "Flatten": OpRule(Kind.SHARED),
    "Resize": OpRule(Kind.SHARED),
    # (passes/convtranspose_as_conv.py writes a kernel == stride ConvTranspose as Conv + DepthToSpace)
    "DepthToSpace": OpRule(Kind.SHARED),
    # zero padding (TF-Lite's channel padding before a residual Add, a Pad split from its Conv):
    # zeros are exact at any scale, so the output shares the input's (planner: constant 0 only)
    "Pad": OpRule(Kind.SHARED),
    # onnxruntime's SplitReplaceWithQuant: DQ -> Split -> Q on every output, all with one scale,
    # becomes a Split of the int8 data (YOLOv8's C2f blocks split every Conv output).
    "Split": OpRule(Kind.SHARED, every_output=True),
    "Gather": OpRule(Kind.GATHER),
    "GlobalAveragePool": OpRule(Kind.UNARY),
    "AveragePool": OpRule(Kind.UNARY),
    "Sigmoid": OpRule(Kind.UNARY),
    "LeakyRelu": OpRule(Kind.UNARY),
    # onnxruntime's fused self-attention (passes/transformer_fusion.py). It has no QDQ fusion:
    # the rewrite writes it as QAttention (passes/qattention.py), CPU target only, int8 weights
    # per column of the packed (hidden, 3 * hidden) Q/K/V weight, the bias float.
    "Attention": OpRule(Kind.WEIGHTED, (0,), weight_input=1, float_output_ok=True),
}

MS_DOMAIN = "com.microsoft"
# Entries of RULES that name com.microsoft ops; every other entry is a standard ONNX op.
MS_DOMAIN_OPS = frozenset({"Attention"})


def rule_for(node: onnx.NodeProto) -> OpRule | None:
    """The node's rule, when its op type and domain match one (ONNX has its own Attention)."""
    wanted = MS_DOMAIN if node.op_type in MS_DOMAIN_OPS else ""
    domain = "" if node.domain == "ai.onnx" else node.domain
    return RULES.get(node.op_type) if domain == wanted else None

# Producers whose int8 kernel can absorb a following Relu/Clip into its output quantization
# (QLinearLeakyRelu too: onnxruntime drops a Clip whose output Q cannot leave its bounds).
ACTIVATION_FUSERS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "LeakyRelu"}

DEFAULT_OP_TYPES: tuple[str, ...] = tuple(sorted(RULES))


def weight_axis(node: onnx.NodeProto, weight_rank: int) -> int | None:
    """Axis of the output channels in the weight, or None where per-channel is not valid."""
    attrs = attributes(node)
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        # Weight is (C_in, C_out/group, ...): axis 1 names output channels only when group == 1.
        return 1 if attrs.get("group", 1) == 1 else None
    if node.op_type == "Gemm":
        return 0 if attrs.get("transB", 0) else 1
    if node.op_type in ("MatMul", "Attention"):
        return weight_rank - 1 if weight_rank == 2 else None
    return None


def is_depthwise(node: onnx.NodeProto, weight_shape: tuple[int, ...]) -> bool:
    """A Conv with one input channel per group: onnxruntime runs it in a kernel that accumulates
    in 32 bits, so it does not suffer the u8s8 16-bit saturation that GEMM-based kernels do."""
    attrs = attributes(node)
    return node.op_type == "Conv" and attrs.get("group", 1) > 1 and len(weight_shape) > 1 and weight_shape[1] == 1


def gemm_is_plain(node: onnx.NodeProto) -> bool:
    """QGemm needs alpha == beta == 1 and an untransposed activation."""
    attrs = attributes(node)
    return attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
