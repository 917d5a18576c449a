"""Error-compensating rounding of transformer weights (GPTQ, Frantar et al., 2022), numpy only.

Nearest rounding treats every weight alone. GPTQ quantizes a layer's weight one input channel
at a time and spreads each channel's rounding error over the channels not yet quantized, as the
inverse of the input's Gram matrix ``H = X X^T`` says, so that ``||(W~ - W) X||`` stays small:
the error of one weight is cancelled by its correlated neighbours. The scales stay those of the
plan; only the integers change, so the model's size and kernels do not.

It runs on MatMul, Gemm and Attention weights whose input is a token activation (rank >= 3,
as SmoothQuant): on all-MiniLM-L6-v2 with 7-bit weights it halves most layers' weight error.
Layers whose input has rank 2 (a CNN's classifier) and unsigned weights are left alone. The
result of a layer is kept only where it reconstructs the calibration inputs better than nearest
rounding. Cost: one pass over the calibration samples and one Cholesky per layer.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxquant.model_io import is_lazy, model_digest, tensor_array, uncached_key
from onnxquant.passes.node_index import NodeIndex, attributes
from onnxquant.planner import QuantPlan
from onnxquant.qparams import qrange
from onnxquant.recovery.blas import one_blas_thread
from onnxquant.recovery.probe import Probe, run_probe
from onnxquant.shapes import known_ranks
from onnxquant.pipeline.clock import timed

GPTQ_OPS = ("MatMul", "Gemm", "Attention")
_DAMP = 0.01  # added to H's diagonal, as a share of its mean (the paper's value)
_CHUNK = 2048  # token rows per Gram product
_BLOCK = 128  # input channels updated one by one before the rest is updated at once


@dataclass
class _Layer:
    node: str
    weight: str
    x: str
    transposed: bool  # weight stored (out, in) [Gemm transB]
    scale: np.ndarray  # per output column, or one value
    qmax: int


@dataclass
class GptqFactors:
    """What GPTQ worked out on one float model and these samples, for the calls after the first:
    a recipe search re-plans one calibrated model many times, and its trials that change only
    activation ranges, bias correction or the float layers round each weight the same. The Gram
    matrices and factors are not kept (all-MiniLM-L6-v2: 128 MB, held through bias correction
    and the whole search): a weight whose scales change (no trial of the search does that to a
    signed weight) makes its input's pass again, which gives the same bits."""

    source: Any = None  # the calibration data (compared by identity)
    context: str = ""  # and what else fits the samples to the model
    # (model, layer, weight, scales, qmax) -> (integers as int8, or None where nearest was as good; gain dB)
    rounded: dict[tuple, tuple[np.ndarray | None, float]] = field(default_factory=dict)
    # (model, input, max_samples) of the inputs the samples showed not to be token activations
    not_tokens: set[tuple] = field(default_factory=set)

    def over(self, source: Any, context: str) -> GptqFactors:
        """This cache, emptied first when the samples are not those it was filled from."""
        if source is not self.source or context != self.context:
            self.source, self.context = source, context
            self.rounded.clear()
            self.not_tokens.clear()
        return self


class FloatWeights(Mapping[str, np.ndarray]):
    """Weight name -> its float value before a pass overwrote it: a copy, or, where another model
    still holds the very same tensor (the calibrated model a trial's plan copied), read from
    there when asked. all-MiniLM-L6-v2: 85 MB of copies fewer while bias correction runs."""

    def __init__(self) -> None:
        self.copies: dict[str, np.ndarray] = {}
        self.kept: dict[str, onnx.TensorProto] = {}

    def keep(self, name: str, value: np.ndarray, tensor: onnx.TensorProto, source: dict[str, onnx.TensorProto]) -> None:
        """``value`` (read from ``tensor``) as the original of ``name``: by reference where
        ``source`` holds a tensor with the same bytes, else as a copy."""
        held = source.get(name)
        if held is not None and not is_lazy(tensor) and held.SerializeToString() == tensor.SerializeToString():
            self.kept[name] = held
        else:
            self.copies[name] = value

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.copies:
            return self.copies[name]
        return tensor_array(self.kept[name])

    def __iter__(self) -> Iterator[str]:
        return iter([*self.copies, *self.kept])

    def __len__(self) -> int:
        return len(self.copies) + len(self.kept)


@dataclass
class GptqReport:
    improved: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # nearest rounding was as good
    gain_db: dict[str, float] = field(default_factory=dict)  # reconstruction gain per improved layer
    # weight name -> its float value before this pass overwrote it (bias correction's reference)
    originals: FloatWeights = field(default_factory=FloatWeights)


def _layers(model: onnx.ModelProto, plan: QuantPlan) -> list[_Layer]:
    """Eligible layers; those whose input shape inference knows to be rank 2 are left out here,
    the others are checked on the samples (``_accumulate``)."""
    index = NodeIndex(model.graph)
    ranks = known_ranks(model)
    by_name = {n.name: n for n in index.nodes}
    layers = []
    for (name, w), (_, axis, reduce) in sorted(plan.selection.weights.items()):
        node = by_name[name]
        params = plan.weights.get((name, w))
        if (node.op_type not in GPTQ_OPS or params is None or node.input[0] not in plan.activations
                or w not in index.inits or index.uses(w) != 1 or len(index.inits[w].dims) != 2
                or ranks.get(node.input[0], 3) < 3):
            continue
        qmin, qmax = qrange(params.dtype, reduce)
        if qmin >= 0:
            continue  # unsigned weights (zero point 128): not handled here
        transposed = node.op_type == "Gemm" and bool(attributes(node).get("transB", 0))
        if node.op_type == "Gemm" and any(attributes(node).get(k, d) != d for k, d in
                                          (("alpha", 1.0), ("beta", 1.0), ("transA", 0))):
            continue
        out_axis = 0 if transposed else 1
        scale = np.asarray(params.scale, np.float64)
        if scale.ndim == 1 and (params.axis != out_axis or scale.shape[0] != index.inits[w].dims[out_axis]):
            continue  # scales not per output column
        layers.append(_Layer(name, w, node.input[0], transposed, scale, qmax))
    return layers


def _grams(model: onnx.ModelProto, inputs: list[str], samples: Iterable[dict[str, np.ndarray]],
           max_samples: int | None) -> dict[str, np.ndarray]:
    """Each input's mean Gram matrix ``X X^T / rows``; inputs that are not token activations are left out.

    Token rows are gathered into chunks of ``_CHUNK`` and multiplied in float32, one large
    product per chunk (a sentence is a few dozen tokens: per-sample products were several times slower);
    the chunks' products are summed in float64."""
    probe = Probe(prefix="_oq_gptq")
    probe.outputs.extend(sorted(set(inputs)))
    low_rank: set[str] = set()
    grams: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    pending: dict[str, list[np.ndarray]] = {}

    def flush(x: str) -> None:
        rows = np.concatenate(pending.pop(x))
        counts[x] = counts.get(x, 0) + rows.shape[0]
        product = (rows.T @ rows).astype(np.float64)
        del rows
        if x in grams:
            grams[x] += product  # (in place: no third K x K float64 array while they add)
        else:
            grams[x] = product

    for values in run_probe(model, probe, samples, max_samples):
        for x, value in values.items():
            if value.ndim < 3:
                low_rank.add(x)
                continue
            pending.setdefault(x, []).append(value.reshape(-1, value.shape[-1]).astype(np.float32))
            if sum(len(r) for r in pending[x]) >= _CHUNK:
                flush(x)
    for x in list(pending):
        flush(x)
    # one float64 sum at a time becomes float32 and is let go (all-MiniLM-L6-v2: 113 MB of float64
    # sums beside their float32 means, otherwise)
    means = {}
    for x in list(grams):
        gram = grams.pop(x)
        if x not in low_rank:
            means[x] = (gram / max(counts[x], 1)).astype(np.float32)
        del gram
    return means


def factor(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The order GPTQ quantizes input channels in (most energy first) and the upper Cholesky
    factor of the damped, reordered ``H^-1``: row i says how channel i's error moves the later ones."""
    k = gram.shape[0]
    h = gram.astype(np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices(k)] += _DAMP * float(np.mean(np.diag(h)))
    order = np.argsort(-np.diag(h), kind="stable")
    h = h[np.ix_(order, order)]
    return order, np.linalg.cholesky(np.linalg.inv(h)).T


def gptq_round(w: np.ndarray, scale: np.ndarray, order: np.ndarray, hinv: np.ndarray, qmax: int) -> np.ndarray:
    """Integers for ``w`` (input channels x output columns) at the given column ``scale``,
    channel by channel in ``order``, each channel's error spread over the later ones."""
    k = w.shape[0]
    work = w[order].astype(np.float64)
    scale = np.broadcast_to(scale, (w.shape[1],))
    q = np.zeros_like(work)
    for start in range(0, k, _BLOCK):  # within a block row by row; onto later blocks in one product
        end = min(start + _BLOCK, k)
        block = work[start:end]
        errors = np.zeros_like(block)
        for i in range(end - start):
            row = start + i
            q[row] = np.clip(np.rint(block[i] / scale), -qmax, qmax)
            errors[i] = (block[i] - q[row] * scale) / hinv[row, row]
            block[i + 1:] -= np.outer(hinv[row, row + 1:end], errors[i])
        work[end:] -= hinv[start:end, end:].T @ errors
    out = np.empty_like(q)
    out[order] = q
    return out


def _error(w: np.ndarray, q: np.ndarray, scale: np.ndarray, gram: np.ndarray) -> float:
    delta = (q * scale - w).astype(np.float32)
    return float(np.sum((gram @ delta) * delta))


@timed("gptq")
def gptq(model: onnx.ModelProto, plan: QuantPlan, samples: Iterable[dict[str, np.ndarray]],
         max_samples: int | None = None, factors: GptqFactors | None = None,
         float_source: onnx.ModelProto | None = None) -> GptqReport:
    """Round every eligible weight of ``model`` (in place) to GPTQ's integers, written as exact
    multiples of their planned scales so the rewrite stores those integers. ``factors``: Gram
    matrices and factors computed before for this float model and these samples. ``float_source``:
    a model left as it is while the report is used (the calibrated model ``model`` is a copy of),
    whose weights the report's originals refer to where they are the same. numpy's BLAS runs on
    one thread here (``recovery.blas``): the factors' bits then do not depend on the core count."""
    with one_blas_thread():
        return _gptq(model, plan, samples, max_samples, factors, float_source)


def _gptq(model: onnx.ModelProto, plan: QuantPlan, samples: Iterable[dict[str, np.ndarray]],
          max_samples: int | None, factors: GptqFactors | None,
          float_source: onnx.ModelProto | None) -> GptqReport:
    report = GptqReport()
    layers = _layers(model, plan)
    if not layers:
        return report
    model_key = model_digest(model)
    if model_key is None or factors is None:  # unhashable: nothing kept that no later call could find
        factors, model_key = GptqFactors(), model_key or uncached_key()
    key = {layer.x: (model_key, layer.x, max_samples) for layer in layers}

    def done(layer: _Layer) -> tuple:
        return model_key, layer.node, layer.weight, np.asarray(layer.scale).tobytes(), layer.qmax

    inits = {i.name: i for i in model.graph.initializer}
    todo = [layer for layer in layers if done(layer) not in factors.rounded and key[layer.x] not in factors.not_tokens]
    missing = sorted({layer.x for layer in todo})
    if missing:
        grams = _grams(model, missing, samples, max_samples)
        factors.not_tokens.update(key[x] for x in missing if x not in grams)
        for x in missing:  # one input's factor alive at a time, let go once its layers are rounded
            gram = grams.pop(x, None)
            if gram is None:
                continue
            order, hinv = factor(gram)
            hinv = hinv.astype(np.float32)
            for layer in (layer for layer in todo if layer.x == x):
                stored = tensor_array(inits[layer.weight])
                w = (stored.T if layer.transposed else stored).astype(np.float64)
                factors.rounded[done(layer)] = _round_layer(w, layer, gram, order, hinv)
                del stored, w
            del gram, order, hinv
    source = {i.name: i for i in float_source.graph.initializer} if float_source is not None else {}
    for layer in layers:
        if key[layer.x] in factors.not_tokens:
            continue  # not a token activation
        stored = tensor_array(inits[layer.weight])
        q, gain = factors.rounded[done(layer)]
        if q is None:
            report.unchanged.append(layer.node)
            continue
        value = q.astype(np.float64) * layer.scale
        value = (value.T if layer.transposed else value).astype(np.float32)
        # (its own array, or a copy-on-write map of the file, or the same tensor in ``float_source``)
        report.originals.keep(layer.weight, stored, inits[layer.weight], source)
        del stored
        inits[layer.weight].CopyFrom(numpy_helper.from_array(value, layer.weight))
        report.improved.append(layer.node)
        report.gain_db[layer.node] = gain
    return report


def _round_layer(w: np.ndarray, layer: _Layer, gram: np.ndarray, order: np.ndarray,
                 hinv: np.ndarray) -> tuple[np.ndarray | None, float]:
    """GPTQ's integers for one layer (None where they reconstruct no better than nearest
    rounding) and the reconstruction gain in dB."""
    nearest = np.clip(np.rint(w / layer.scale), -layer.qmax, layer.qmax)
    rounded = gptq_round(w, layer.scale, order, hinv, layer.qmax)
    before = _error(w, nearest, layer.scale, gram)
    after = _error(w, rounded, layer.scale, gram)
    if not after < before:
        return None, 0.0
    return rounded.astype(np.int8), float(10 * np.log10(before / after)) if after > 0 else float("inf")
