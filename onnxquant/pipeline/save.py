"""Stage ``save``: the result stamped (recipe, version, float layers), checked in onnxruntime,
then put in place atomically."""
from __future__ import annotations

import concurrent.futures
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxquant.calibration.collector import make_session
from onnxquant.errors import ModelError, QuantizationError
from onnxquant.float_weights import FLOAT_LAYERS_KEY
from onnxquant.model_io import (
    has_lazy,
    model_size,
    save_model,
    serialize_below_limit,
)
from onnxquant.pipeline.clock import timed
from onnxquant.pipeline.state import Saved, State
from onnxquant.prune.storage import compressed_size
from onnxquant.recipe import RECIPE_KEY
from onnxquant.results import FLOAT_COMPUTE_KEY, FloatNode
from onnxquant.search.report import SEARCH_KEY
from onnxquant.version import __version__

VERSION_KEY = "onnxquant.version"
CHECKER_MAX_BYTES = 256 * 2**20
# Up to this size, the result's serialization stays alive while the self-check runs (to be deflated meanwhile).
DEFLATE_ALONGSIDE_MAX_BYTES = 64 * 2**20


@timed("save")
def save(state: State, output: str | os.PathLike | None) -> State:
    """The state with what was saved (no file without ``output``; the check runs all the same).

    With an output, the file is written to a temporary name first and the check loads that file,
    so the serialization is dropped before onnxruntime makes its own copy (large models hold
    one copy fewer). Over 2 GB the check is skipped and a note says so.
    """
    model, first = state.model, state.first_sample
    _stamp(model, state)
    lazy = has_lazy(model)
    payload = serialize_below_limit(model)  # (None over 2 GB)
    size = len(payload) if payload is not None and not lazy else model_size(model)
    if payload is None:
        state = state.noted("model over 2 GB: the onnxruntime self-check was skipped")
        return replace(state, saved=Saved(save_model(model, output) if output is not None else None, size, None))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # zlib lets go of the GIL: the deflated size is measured while onnxruntime checks the result
        deflating = None if lazy else pool.submit(compressed_size, payload)
        if deflating is not None and len(payload) > DEFLATE_ALONGSIDE_MAX_BYTES:
            deflating.result()  # a large serialization is still dropped before onnxruntime makes its own copy
        if output is None:
            _self_check(payload, first, model)
            path = None
        else:
            data = None if lazy else payload
            del payload
            path = save_model(model, output, data, check=lambda written: _self_check(written, first))
            if lazy:  # what was written, data file included
                beside = path.with_name(path.name + ".data")
                size = path.stat().st_size + (beside.stat().st_size if beside.exists() else 0)
        deflated = deflating.result() if deflating is not None else None
    return replace(state, saved=Saved(path, size, deflated))


def _stamp(model: onnx.ModelProto, state: State) -> None:
    """The recipe and version in the model's metadata; with a float report, the float weighted
    layers and why, for ``inspect``."""
    props = [p for p in model.metadata_props if p.key not in (RECIPE_KEY, VERSION_KEY)]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    helper.set_model_props(model, {**{p.key: p.value for p in props}, RECIPE_KEY: state.recipe.to_json(),
                                   VERSION_KEY: __version__})
    if state.float_nodes is not None:
        _stamp_float_layers(model, state.float_nodes)
    if state.float_compute is not None:
        props = {p.key: p.value for p in model.metadata_props}
        del model.metadata_props[:]
        helper.set_model_props(model, {**props, FLOAT_COMPUTE_KEY: state.float_compute.metadata()})
    if state.search is not None and state.search.skipped is None:
        props = {p.key: p.value for p in model.metadata_props}
        del model.metadata_props[:]
        helper.set_model_props(model, {**props, SEARCH_KEY: state.search.metadata()})


def _stamp_float_layers(model: onnx.ModelProto, floats: tuple[FloatNode, ...]) -> None:
    entries = [{"node": n.name, "op_type": n.op_type, "reason": n.reason} for n in floats if n.weight_bytes]
    props = {p.key: p.value for p in model.metadata_props if p.key != FLOAT_LAYERS_KEY}
    if entries:
        props[FLOAT_LAYERS_KEY] = json.dumps(entries, sort_keys=True)
    del model.metadata_props[:]
    helper.set_model_props(model, props)


def _self_check(quantized: bytes | Path, sample: dict[str, np.ndarray] | None,
                model: onnx.ModelProto | None = None) -> None:
    """The result (its bytes, or the file written for it) must load in onnxruntime and give
    finite outputs; it is checked before it is put in place."""
    try:
        if isinstance(quantized, Path):
            # By path, external data beside it is found. A large result is left to onnxruntime's
            # load below, which checks it as well: the checker would hold one more copy of it.
            if quantized.stat().st_size <= CHECKER_MAX_BYTES:
                onnx.checker.check_model(str(quantized))
        elif model is None or not has_lazy(model):
            # (in memory, the checker would look for data files in the working directory)
            onnx.checker.check_model(quantized)
        session = make_session(quantized, weights=None if isinstance(quantized, Path) else model)
    except (onnx.checker.ValidationError, ModelError) as exc:
        raise QuantizationError(f"internal error, result rejected: {str(exc).splitlines()[0]}") from exc
    if sample is None:
        return
    for value, out in zip(session.run(None, sample), session.get_outputs()):
        if np.asarray(value).dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise QuantizationError(f"quantized output {out.name!r} is not finite")
