"""First-layer Convs that run slower as int8 than in fp32: kept float.

A Conv that reads a graph input with few channels (the 3-channel stem of an image model) is
often slower as onnxruntime's QLinearConv than in fp32 (``conv_cost.py``: per-pixel and
per-output requantizing work dominates its few multiply-adds). Where the model as a whole keeps
integer kernels (``pipeline/float_compute.py``), such a layer stays float, weights and all: the
next layer reads its output through a QuantizeLinear, as it read the QLinearConv's. Its weights
are a few KB (3 input channels); int8 weights computed in float would save those KB but lose
bias correction, and cost EfficientNet-Lite0 top-1 0.969 -> 0.875 on held-out photos.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import onnx

from onnxquant.conv_cost import layer_times, quantized_conv_shapes
from onnxquant.pipeline.state import State

# Where int8 is estimated this many times the fp32 time (and a floor in microseconds more): the
# cost model's per-model error was up to ~20% (conv_cost.py)
STEM_MARGIN = 1.25
FIRST_LAYERS_NOTE = "first layers kept float, estimated slower as int8"
FIRST_LAYER_REASON = "a first layer estimated slower as int8: "


@dataclass(frozen=True)
class SlowStem:
    """A first-layer Conv estimated clearly slower as int8, and its estimates for one sample."""

    name: str
    int8_us: float
    fp32_us: float
    cpu_kind: str

    @property
    def reason(self) -> str:
        return (f"{FIRST_LAYER_REASON}{self.int8_us / 1e3:.2f} ms int8 vs {self.fp32_us / 1e3:.2f} ms fp32 "
                f"on {self.cpu_kind}")


def slow_stems(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], kind: str, planned: set[str],
               known: dict[str, list[int]], min_extra_us: float) -> list[SlowStem]:
    """Planned Convs that read a graph input (the few-channel stem of an image model) whose
    estimated int8 time is at least ``STEM_MARGIN`` times their fp32 time and ``min_extra_us``
    more, graph order. Only first layers: kept float, they cost no Q/DQ round trip (their input
    is float already, and one QuantizeLinear after them is what the next layer's input needs
    anyway); a layer inside the integer graph would add a DequantizeLinear in front as well, and
    the estimates say a quarter to half of PP-OCRv4 det's and EfficientNet-Lite0's depthwise layers
    are slower as int8 alone, which Q/DQ round trips would undo."""
    inputs = {i.name for i in model.graph.input} - {i.name for i in model.graph.initializer}
    firsts = {n.name for n in model.graph.node if n.op_type == "Conv" and n.name in planned and n.input
              and n.input[0] in inputs}
    if not firsts:
        return []
    layers = quantized_conv_shapes(model, shapes, planned & firsts, known)
    return [SlowStem(name, int8 / 1e3, fp32 / 1e3, kind) for name, fp32, int8 in layer_times(layers, kind)
            if int8 - fp32 >= min_extra_us * 1e3 and int8 >= STEM_MARGIN * fp32]


def first_layers_said(state: State) -> State:
    """``state`` with one note naming the first layers kept float for speed in its final selection
    (a search trial or mixed precision may have kept one float for its own reason)."""
    notes = tuple(note for note in state.notes if not note.startswith(FIRST_LAYERS_NOTE))
    sel = state.selection
    done = [name for name in state.float_layers
            if sel is not None and sel.float_nodes.get(name, ("", ""))[1] == state.float_layers[name]]
    if done:
        each = ", ".join(f"{name} ({state.float_layers[name].removeprefix(FIRST_LAYER_REASON)})" for name in done)
        notes = (*notes, f"{FIRST_LAYERS_NOTE}: {each}")
    return replace(state, notes=notes)
