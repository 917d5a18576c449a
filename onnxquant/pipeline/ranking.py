"""Sensitivity: each weighted layer quantized alone from the calibrated state, measured against
fp32 on the held-out samples; most damaging first."""
from __future__ import annotations

from dataclasses import replace

import onnx

from onnxquant.errors import CalibrationDataError
from onnxquant.mixed_precision import Holdout, LayerSensitivity, rank_layers
from onnxquant.ops.rules import RULES, Kind
from onnxquant.pipeline.build import build
from onnxquant.pipeline.run_data import RunData
from onnxquant.pipeline.selection import select_nodes
from onnxquant.pipeline.state import State


def rank(calibrated: State, run: RunData, holdout: Holdout) -> list[LayerSensitivity]:
    """Every quantized Conv/Gemm/MatMul-like layer, ranked by the drop it causes alone."""
    prepared, recipe = calibrated.model, calibrated.recipe
    sel = select_nodes(prepared, recipe, set(calibrated.not_float))
    units = [(n.name, n.op_type) for n in prepared.graph.node
             if n.name in sel.quantized and n.op_type in RULES and RULES[n.op_type].kind == Kind.WEIGHTED]

    def alone(node: str) -> onnx.ModelProto | None:
        solo = replace(calibrated, recipe=recipe.with_overrides(nodes={"include": (node,)}))
        try:
            state = build(solo, run, recovery=False)
        except CalibrationDataError:
            return None
        return state.model if state.selection.quantized else None

    progress = run.progress
    return rank_layers(units, alone, holdout, run.metric, (lambda done, total: progress(done, total)) if progress else None)
