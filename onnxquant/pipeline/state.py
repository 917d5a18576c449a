"""The run's state: what the stages have decided so far, advanced with ``dataclasses.replace``.

A stage never reassigns a field; it returns a new state. The model inside is a protobuf: a stage
that rewrites it in place (prepare, prune, smooth, and a rewrite told ``inplace``) consumes the
state it was given. Stages after calibration work on a copy by default, so a calibrated state
can be re-entered at ``plan`` as often as a search needs. The statistics table is a cache the
states share: ``plan`` adds tensors a narrower selection needs, and never changes one it has.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from onnxquant.calibration.observers import StatsTable
from onnxquant.conv_cost import ConvEstimate
from onnxquant.fusion_check import FusionCheck
from onnxquant.mixed_precision import MixedPrecisionResult
from onnxquant.passes.prepare import PrepareReport
from onnxquant.planner import QuantPlan, Selection
from onnxquant.prune.pipeline import PruneReport
from onnxquant.recipe import Recipe
from onnxquant.recovery.bias_correction import MeasuredShifts
from onnxquant.recovery.gptq import GptqFactors
from onnxquant.results import FloatCompute, FloatNode
from onnxquant.search.report import SearchReport


@dataclass(frozen=True)
class Saved:
    path: Path | None
    size: int  # bytes on disk (model plus external data)
    deflated: int | None  # as in a zip bundle; None when weights are not in the serialization


@dataclass(frozen=True)
class State:
    model: onnx.ModelProto  # as the last stage left it
    recipe: Recipe  # as the user gave it (stamped into the output)
    source: Path | None = None  # the file the model came from
    size_before: int = 0  # the input's bytes, external data included
    owned: bool = False  # the model is this run's own: stages may rewrite it in place
    # every node and tensor name the input model had: the written model keeps them (stage compact)
    input_names: frozenset[str] | None = None
    # (key, pattern) of the user's node patterns that select a node of the input model: one that
    # selects none of the result was replaced by preparation or a rewrite, not mistyped (stage check)
    input_matched: frozenset[tuple[str, str]] = frozenset()
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # input shapes fixed on loading
    preparation: PrepareReport | None = None
    pruning: PruneReport | None = None
    selection: Selection | None = None  # what is quantized, and what is kept float and why
    weight_bytes: int = 0  # of the float model, before the rewrite replaces its weights
    stats: StatsTable | None = None
    not_float: frozenset[str] = frozenset()  # tensors found not to be float32 while calibrating
    first_sample: dict[str, np.ndarray] | None = None  # for the self-check
    excluded: tuple[str, ...] = ()  # layers a later decision keeps float (mixed precision, float islands)
    int4: frozenset[str] = frozenset()  # MatMul layers given 4-bit weights instead of int8
    plan: QuantPlan | None = None
    fusion: FusionCheck | None = None  # which quantized layers onnxruntime runs as integer kernels
    float_nodes: tuple[FloatNode, ...] | None = None  # the float report (None: not reported, as in prune)
    mixed: MixedPrecisionResult | None = None
    search: SearchReport | None = None  # the recipe search: trials, scores, the choice
    saved: Saved | None = None
    smoothed: bool = False  # SmoothQuant changed the model before calibration (its alpha matters)
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    seconds: Mapping[str, float] = field(default_factory=dict)
    # Bias correction's measurements over the calibration samples, shared like ``stats`` by the
    # states re-entered at ``plan`` (a search's trials): a layer probed once is not probed again.
    measured_shifts: MeasuredShifts | None = None
    gptq_factors: GptqFactors | None = None  # GPTQ's Gram matrices and factors, shared the same way
    # the integer model's convolutions, estimated time in fp32 and int8 (float_compute.py, conv_cost.py)
    conv_estimate: ConvEstimate | None = None
    # int8-stored weights computed in float instead of integer kernels, and why (float_compute.py)
    float_compute: FloatCompute | None = None
    # first-layer Convs kept float as estimated slower as int8, each with why (first_layers.py)
    float_layers: Mapping[str, str] = field(default_factory=dict)

    @property
    def planning_recipe(self) -> Recipe:
        """The recipe the plan follows: the user's, with the later decisions' float and int4 layers excluded."""
        return excluding(self.recipe, [*self.excluded, *sorted(self.int4)])

    def noted(self, *notes: str) -> State:
        return replace(self, notes=(*self.notes, *notes))

    def warned(self, *warnings: str) -> State:
        return replace(self, warnings=(*self.warnings, *warnings))


def excluding(recipe: Recipe, nodes: list[str] | tuple[str, ...]) -> Recipe:
    """``recipe`` with ``nodes`` kept float as well."""
    if not nodes:
        return recipe
    return recipe.with_overrides(nodes={"exclude": (*recipe.nodes.exclude, *nodes)})
