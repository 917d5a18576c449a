"""Recurrent layers (LSTM, GRU, RNN): which inputs are weights and how they are laid out.

ONNX stores W as (num_directions, gates * hidden, input) and R as (num_directions, gates *
hidden, hidden): one row per gate and hidden unit. Scales are per row of each direction, so
every gate of every unit gets its own (the gates' ranges differ by an order of magnitude in
trained models).
"""
from __future__ import annotations

import onnx

RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})

# W and R; B (the biases) stays float: it is small and added in float anyway.
RECURRENT_WEIGHT_INPUTS: tuple[int, ...] = (1, 2)

# What a layer with stored-int8 weights but no QDQ integer kernel does.
WEIGHT_ONLY_REASON = "int8 weights without a QDQ integer kernel"


def is_recurrent(node: onnx.NodeProto) -> bool:
    return node.op_type in RECURRENT_OPS and node.domain in ("", "ai.onnx")

