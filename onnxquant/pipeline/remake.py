"""The prepared float model again, for the recipe search's refit and SmoothQuant trials, without
loading and preparing the input again.

Smoothing rewrites the float model in place, so the search's refit (and each SmoothQuant-alpha
trial) needs a fresh one; load -> prepare -> prune made it again each time (all-MiniLM-L6-v2:
1.4 s of load and prepare, shape inference and the transformer fusion included). The prepared
model is the same every time, so it is serialized once to a scratch file before anything
rewrites it, and each call parses it again: the same message, on disk (not in memory) between
calls.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import onnx

from onnxquant.model_io import iter_tensors, serialize_below_limit
from onnxquant.outputs import scratch
from onnxquant.pipeline.state import State


@contextlib.contextmanager
def remade_from_copy(state: State, make: Callable[[], State]) -> Iterator[Callable[[], State]]:
    """A function giving ``state`` (as ``make`` gives it: the prepared float model) with a model
    of its own at each call, kept on disk while the context lasts. Where the model keeps weights
    outside its serialization (external data) or cannot be serialized (the protobuf limit), or
    the scratch folder cannot take it, ``make`` itself."""
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in iter_tensors(state.model))
    data = None if external else serialize_below_limit(state.model)
    template = replace(state, model=onnx.ModelProto())
    del state  # (this frame lives as long as the context: it must not hold the model, which the search lets go)
    if data is None:
        yield make
        return
    with scratch() as folder:
        path = Path(folder) / "prepared.onnx"
        try:
            path.write_bytes(data)
        except OSError:
            path = None
        del data

        def again() -> State:
            if path is None:
                return make()
            model = onnx.ModelProto()
            model.ParseFromString(path.read_bytes())
            return replace(template, model=model)

        yield again
