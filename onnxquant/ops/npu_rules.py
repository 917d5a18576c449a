"""Op coverage for NPU targets, where every op runs on integer tensors.

An NPU compiler (QNN HTP) takes a node only as a "node unit": DequantizeLinear on every float
input, QuantizeLinear on every float output. A float op between two quantized ones splits the
graph, and on QNN HTP a float op makes the whole graph fail to compile. So for these targets
every float tensor around a supported op is quantized, and only these inputs are left alone.
"""
from __future__ import annotations

# Ops the QNN execution provider takes in quantized form (onnxruntime QNN EP operator list).
QNN_OPS: frozenset[str] = frozenset({
    "Abs", "Add", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Conv",
    "ConvTranspose", "Cos", "DepthToSpace", "Div", "Elu", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor",
    "Gather", "Gelu", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "HardSigmoid",
    "HardSwish", "InstanceNormalization", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log",
    "LpNormalization", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mul", "Neg", "Not", "Pad", "Pow", "PRelu",
    "ReduceL2", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "Relu", "Reshape", "Resize",
    "Round", "Sigmoid", "Sign", "Sin", "Slice", "Softmax", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub",
    "Tanh", "Tile", "TopK", "Transpose", "Unsqueeze", "Where",
})

# Inputs that are parameters, not data: never quantized (index list per op; others are data).
PARAMETER_INPUTS: dict[str, frozenset[int]] = {
    "Clip": frozenset({1, 2}),
    "Resize": frozenset({1, 2, 3}),
    "Pad": frozenset({1, 2, 3}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Reshape": frozenset({1}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
    "Split": frozenset({1}),
    "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "TopK": frozenset({1}),
    "ReduceSum": frozenset({1}),
    "ReduceMean": frozenset({1}),
    "ReduceMax": frozenset({1}),
    "ReduceMin": frozenset({1}),
    "ReduceProd": frozenset({1}),
    "ReduceL2": frozenset({1}),
    "Where": frozenset({0}),
    "Gather": frozenset({1}),
}

# Data movement: the output keeps the input's scale and zero point (the NPU copies bytes).
SAME_SCALE_OPS: frozenset[str] = frozenset({
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "MaxPool", "GlobalMaxPool", "Gather",
    "Slice", "Split", "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "Pad", "Resize", "ReduceMax", "ReduceMin",
})

# Activations whose output range can be given to their producer's output (negatives clamp away).
CLAMPING_ACTIVATIONS: frozenset[str] = frozenset({"Relu", "Clip"})
