"""plan -> recover -> rewrite from a calibrated state: the suffix of the pipeline that mixed
precision, the float-island re-plan and sensitivity re-run per trial, without calibrating again."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from onnxquant.model_io import repacked
from onnxquant.pipeline.plan import plan
from onnxquant.pipeline.recover import recover
from onnxquant.pipeline.rewrite import rewrite
from onnxquant.pipeline.run_data import RunData
from onnxquant.pipeline.state import State


def build(calibrated: State, run: RunData, *, excluded: Iterable[str] = (), int4: Iterable[str] = (),
          inplace: bool = False, recovery: bool = True) -> State:
    """The quantized model with ``excluded`` layers kept float and ``int4`` MatMul layers given
    4-bit weights. ``inplace``: rewrite the calibrated model itself (it is then spent);
    ``recovery``: run the recovery passes (off for quick per-layer trials)."""
    state = plan(replace(calibrated, excluded=tuple(excluded), int4=frozenset(int4)), run, inplace)
    if recovery:
        state = recover(state, run, None if inplace else calibrated.model)
    built = rewrite(state)
    del state
    # the planned copy is this build's own: the float weights it dropped are given back (the
    # calibrated model of an in-place build stays with whoever holds it)
    return built if inplace else replace(built, model=repacked(built.model))
