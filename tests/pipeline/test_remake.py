"""The prepared float model kept on disk for the search's refit: the same message at every call,
each call's model its own, without loading and preparing the input again."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

import onnxquant
import onnxquant.api as api
from models.tiny import image_samples, tiny_cnn
from onnxquant.pipeline.remake import remade_from_copy
from onnxquant.pipeline.run_data import RunData


def _bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)


def test_each_call_gives_the_prepared_model_as_it_was_and_its_own():
    run = RunData(calib_data=image_samples(4))
    state = api._pruned(tiny_cnn(), onnxquant.Recipe(), run)
    before = _bytes(state.model)
    made: list[int] = []
    with remade_from_copy(state, lambda: made.append(1)) as again:
        state.model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.zeros(1, np.float32), "changed"))
        first = again()
        assert _bytes(first.model) == before and first.preparation == state.preparation
        first.model.graph.ClearField("node")
        assert _bytes(again().model) == before
    assert made == []  # never made again from the input


def test_a_model_with_weights_outside_its_serialization_is_made_again():
    """(A weight left in its external file would not be in the copy.)"""
    run = RunData(calib_data=image_samples(4))
    state = api._pruned(tiny_cnn(), onnxquant.Recipe(), run)
    weight = state.model.graph.initializer[0]
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="weights.bin")
    marker = object()
    with remade_from_copy(state, lambda: marker) as again:
        assert again() is marker


def test_the_searched_model_is_the_same_bytes_without_loading_and_preparing_again(monkeypatch):
    """quantize() with the search prepares the input once; its model is byte for byte the one of
    a run whose refit loads and prepares the input again."""
    samples = image_samples(32)
    calls: list[int] = []
    real = api._pruned

    def counting(*args, **kwargs):
        if kwargs.get("integer_kernels", True):  # (the float-compute model is another one)
            calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "_pruned", counting)
    kept = onnxquant.quantize(tiny_cnn(), samples)
    assert kept.search["chosen"] and len(calls) == 1

    def made_again(state, make):
        import contextlib
        return contextlib.nullcontext(make)

    monkeypatch.setattr(api, "remade_from_copy", made_again)
    again = onnxquant.quantize(tiny_cnn(), samples)
    assert len(calls) == 3  # (the first run's and the refit's)
    assert _bytes(kept.model) == _bytes(again.model)


def test_the_copy_holds_no_reference_to_the_model_it_was_made_from():
    """The search lets the calibrated model go before its refit makes a new one (memory: a float
    model's worth on all-MiniLM-L6-v2); the context open around it must not keep it alive."""
    import gc
    import weakref

    run = RunData(calib_data=image_samples(4))
    state = api._pruned(tiny_cnn(), onnxquant.Recipe(), run)
    held = weakref.ref(state)  # (a ModelProto takes no weak reference: its state does)
    with remade_from_copy(state, lambda: None) as again:
        del state
        gc.collect()
        assert held() is None
        assert again().model.graph.node
