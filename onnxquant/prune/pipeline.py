"""One pruning run: choose weights, zero them, take dead channels out, report per layer."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxquant.errors import UsageError
from onnxquant.model_io import tensor_array
from onnxquant.passes.prepare import infer_shapes
from onnxquant.prune.activation_norms import input_rms
from onnxquant.prune.masks import (
    global_masks,
    lowest,
    nm_mask,
    scores,
    sparsity_mask,
    threshold_mask,
)
from onnxquant.prune.reconstruct import input_grams, reconstruct
from onnxquant.prune.structured import (
    StructuredReport,
    aligned,
    removable_layers,
    remove_dead_channels,
)
from onnxquant.prune.weights import PrunableWeight, Skipped, prunable_weights
from onnxquant.recipe import PruneSettings
from onnxquant.recovery.gram import LinearLayer

Samples = Callable[[], Iterable[dict[str, np.ndarray]]]


@dataclass
class LayerSparsity:
    node: str
    op_type: str
    weights: int  # after dead channels were removed
    zeros: int
    channels_removed: int = 0

    @property
    def sparsity(self) -> float:
        return self.zeros / self.weights if self.weights else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "sparsity": round(self.sparsity, 4)}


@dataclass
class PruneReport:
    settings: PruneSettings
    layers: list[LayerSparsity] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    structured: StructuredReport | None = None
    weights_before: int = 0  # prunable weights before channels were removed
    notes: list[str] = field(default_factory=list)
    search: dict[str, Any] | None = None  # the --max-drop trials, when searched

    @property
    def zeros(self) -> int:
        return sum(layer.zeros for layer in self.layers)

    @property
    def sparsity(self) -> float:
        """Zeros plus removed weights, over the prunable weights before pruning."""
        removed = self.weights_before - sum(layer.weights for layer in self.layers)
        return (self.zeros + removed) / self.weights_before if self.weights_before else 0.0

    def summary(self) -> str:
        text = f"{len(self.layers)} layers pruned to {self.sparsity:.1%} sparsity"
        if self.structured is not None and self.structured.channels_removed:
            text += (f"; {self.structured.channels_removed} dead channels removed from "
                     f"{len(self.structured.removed)} layers")
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": {k: v for k, v in vars(self.settings).items() if v is not None},
            "sparsity": round(self.sparsity, 6),
            "layers": [layer.to_dict() for layer in self.layers],
            "skipped": [vars(s) for s in self.skipped],
            "structured": self.structured.to_dict() if self.structured is not None else None,
            **({"search": self.search} if self.search is not None else {}),
        }


def _zero_channels(model: onnx.ModelProto, layers: list[PrunableWeight], fraction: float,
                   arrays: dict[str, np.ndarray], rms: dict[str, np.ndarray], multiple: int) -> int:
    """Zero the weakest ``fraction`` of output channels (weights and bias) of each layer whose
    channels can be taken out of the graph; weakest: the smallest L2 norm of the channel's scores."""
    by_name = {n.name: n for n in model.graph.node}
    removable = set(removable_layers(model))
    zeroed = 0
    for layer in layers:
        if layer.node not in removable:
            continue
        weight = arrays[layer.initializer]
        score = scores(weight, layer, rms.get(layer.node))
        per_channel = np.sqrt((np.moveaxis(score, layer.output_axis, 0) ** 2).reshape(weight.shape[layer.output_axis], -1)
                              .sum(axis=1))
        count = aligned(per_channel.size, min(int(np.floor(fraction * per_channel.size)), per_channel.size - 1),
                        multiple)
        dead = np.flatnonzero(~lowest(per_channel, count))
        if dead.size == 0:
            continue
        moved = np.moveaxis(weight, layer.output_axis, 0).copy()
        moved[dead] = 0
        arrays[layer.initializer] = np.moveaxis(moved, 0, layer.output_axis)
        node = by_name[layer.node]
        if len(node.input) > 2 and node.input[2]:
            bias = arrays.setdefault(node.input[2], _read(model, node.input[2])).copy()
            if bias.size == per_channel.size:
                bias.reshape(-1)[dead] = 0
                arrays[node.input[2]] = bias
        zeroed += dead.size
    return zeroed


def _read(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(tensor_array(i) for i in model.graph.initializer if i.name == name)


def _masks(settings: PruneSettings, layers: list[PrunableWeight], arrays: dict[str, np.ndarray],
           rms: dict[str, np.ndarray], notes: list[str]) -> dict[str, np.ndarray]:
    layer_scores = {layer.initializer: scores(arrays[layer.initializer], layer, rms.get(layer.node))
                    for layer in layers}
    if settings.threshold is not None:
        return {layer.initializer: threshold_mask(arrays[layer.initializer], settings.threshold) for layer in layers}
    if settings.n_m is not None:
        n, m = settings.n_m
        masks, uneven = {}, 0
        for layer in layers:
            mask = nm_mask(layer_scores[layer.initializer], layer.input_axis, n, m)
            if mask is None:
                uneven += 1
            else:
                masks[layer.initializer] = mask
        if uneven:
            notes.append(f"{settings.pattern} sparsity: {uneven} layers left dense (input size not a multiple of {m})")
        return masks
    if settings.sparsity:
        if settings.scope == "global":
            return global_masks(layer_scores, settings.sparsity)
        return {name: sparsity_mask(score, settings.sparsity) for name, score in layer_scores.items()}
    return {}


def prune_model(model: onnx.ModelProto, settings: PruneSettings, samples: Samples | None = None,
                max_samples: int | None = None, selected: set[str] | None = None,
                rms: dict[str, np.ndarray] | None = None, grams: dict[str, LinearLayer] | None = None,
                progress: Callable[[int, int | None], None] | None = None) -> PruneReport:
    """Prune ``model`` in place as ``settings`` say and report each layer's sparsity.

    ``samples`` (a fresh pass over the calibration data) is needed for Wanda scores only.
    ``selected``: the layers that may be pruned (default: every prunable layer). ``rms``: Wanda
    norms computed earlier (``wanda_norms``) and ``grams`` (``input_grams``): a search computes
    them once. Without samples (or grams) the kept weights are not refit.
    """
    layers, skipped = prunable_weights(model, settings.depthwise, selected)
    report = PruneReport(settings, skipped=skipped, weights_before=sum(layer.size for layer in layers))
    if rms is None:
        rms = wanda_norms(model, settings, samples, max_samples, selected)
    if grams is None and settings.reconstruct and samples is not None:
        grams = input_grams(model, layers, samples(), max_samples)  # before any weight changes
    inits = {i.name: i for i in model.graph.initializer}
    arrays = {layer.initializer: tensor_array(inits[layer.initializer]) for layer in layers}
    before = {name: array for name, array in arrays.items()}
    if settings.channels:
        zeroed = _zero_channels(model, layers, settings.channels, arrays, rms, settings.channel_multiple)
        report.notes.append(f"channel pruning: {zeroed} output channels zeroed")
    for name, mask in _masks(settings, layers, arrays, rms, report.notes).items():
        arrays[name] = np.where(mask, arrays[name], np.zeros((), arrays[name].dtype))
    changed = False
    for k, init in enumerate(model.graph.initializer):
        if init.name in arrays and arrays[init.name] is not before.get(init.name):
            model.graph.initializer[k].CopyFrom(numpy_helper.from_array(arrays[init.name], init.name))
            changed = True
    if settings.reconstruct and grams and changed:
        refit = reconstruct(model, layers, before, grams, progress)
        report.notes.append(f"reconstruction: {refit} layers refit to the calibration data")
    if settings.remove_dead:
        report.structured = remove_dead_channels(model, layers={layer.node for layer in layers},
                                                 multiple=settings.channel_multiple)
        if report.structured.channels_removed:
            infer_shapes(model)  # the removed channels changed shapes along the way
    removed = {r.node: r.removed for r in (report.structured.removed if report.structured else [])}
    inits = {i.name: i for i in model.graph.initializer}
    for layer in layers:
        weight = tensor_array(inits[layer.initializer])
        report.layers.append(LayerSparsity(layer.node, layer.op_type, int(weight.size),
                                           int(weight.size - np.count_nonzero(weight)), removed.get(layer.node, 0)))
    return report


def with_amount(settings: PruneSettings, amount: float) -> PruneSettings:
    """``settings`` with the searched quantity (sparsity, else channels) set to ``amount``."""
    if settings.sparsity is not None or settings.channels is None:
        return replace(settings, sparsity=amount, max_drop=None)
    return replace(settings, channels=amount, max_drop=None)


def wanda_norms(model: onnx.ModelProto, settings: PruneSettings, samples: Samples | None,
                max_samples: int | None = None, selected: set[str] | None = None) -> dict[str, np.ndarray]:
    """Input RMS per prunable layer when ``settings`` ask for Wanda scores, else nothing."""
    if settings.method != "wanda" or settings.threshold is not None:
        return {}
    if samples is None:
        raise UsageError("Wanda pruning needs calibration data (activation norms)")
    layers, _ = prunable_weights(model, settings.depthwise, selected)
    return input_rms(model, layers, samples(), max_samples)


def pruning_grams(model: onnx.ModelProto, settings: PruneSettings, samples: Samples | None,
                  max_samples: int | None = None) -> dict[str, LinearLayer] | None:
    """Input Gram matrices for reconstruction, when asked for and data is there."""
    if not settings.reconstruct or samples is None:
        return None
    layers, _ = prunable_weights(model, settings.depthwise)
    return input_grams(model, layers, samples(), max_samples)
