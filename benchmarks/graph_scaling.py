"""How each quantize stage grows with graph size: 1k, 10k and 50k-node chains, timed per stage.

The graph is a chain of small blocks that exercise the graph passes: Conv, a constant
per-channel Mul after it (affine folding), Relu, and every fourth block a residual Add. Each
stage is timed on its own and the growth per doubling of the node count is printed:
2.0 is linear, 4.0 quadratic. A pass whose growth is well above 2 has a scan per node.

``python -m benchmarks.graph_scaling [--sizes 1000 10000 50000] [--stages ...]``
"""
from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np
import onnx

from models.tiny import conv_chain, conv_chain_samples


def samples(count: int = 2) -> list[dict[str, np.ndarray]]:
    return conv_chain_samples(count)


def stages(nodes: int, whole: bool) -> dict[str, float]:
    """Seconds of each stage on a ``nodes``-node chain (the same calls ``quantize`` makes)."""
    from onnxquant.calibration.collector import collect
    from onnxquant.passes.insert_qdq import insert_qdq
    from onnxquant.passes.prepare import default_opset, prepare_model
    from onnxquant.planner import finalize, node_names, select
    from onnxquant.recipe import Recipe
    from onnxquant.recovery.pipeline import after_plan

    recipe = Recipe()
    model = conv_chain(nodes)
    seconds: dict[str, float] = {}

    def timed(name: str, call: Callable[[], object]) -> object:
        started = time.perf_counter()
        result = call()
        seconds[name] = time.perf_counter() - started
        return result

    # Simplification is onnxruntime's own optimizer: timed apart from our passes.
    prepared, _ = timed("prepare (our passes)", lambda: prepare_model(model, simplify=False))
    from onnxquant.passes.fold_affine import fold_affine_into_conv

    timed("fold affine", lambda: fold_affine_into_conv(prepared))
    timed("name nodes", lambda: node_names(prepared))
    sel = timed("select", lambda: select(prepared, recipe, per_channel_ok=True))
    table = timed("calibrate", lambda: collect(prepared, sel.observed, samples(), False, None))
    plan = timed("plan", lambda: finalize(prepared, sel, table, recipe))
    timed("bias correction", lambda: after_plan(prepared, plan, recipe, samples, ""))
    timed("insert Q/DQ", lambda: insert_qdq(prepared, plan, default_opset(prepared), inplace=True))
    timed("onnxruntime load (theirs)", lambda: _ort_load(model))
    if whole:
        timed("quantize() end to end", lambda: _whole(model))
    return seconds


def _ort_load(model: onnx.ModelProto) -> None:
    """onnxruntime's own session creation of the float model, without graph optimizations: a
    cost every run pays (calibration, probes, self-check) and that we do not control."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _whole(model: onnx.ModelProto) -> None:
    """``quantize`` as the command runs it (simplify, bias correction, self-check, atomic save)."""
    import tempfile
    from pathlib import Path

    from onnxquant.api import quantize

    with tempfile.TemporaryDirectory() as tmp:
        quantize(model, samples(), output=Path(tmp) / "q.onnx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--whole-up-to", type=int, default=10000,
                        help="time quantize() end to end only up to this many nodes (onnxruntime's own "
                             "session creation grows faster than linearly and dominates beyond)")
    args = parser.parse_args()
    results = {n: stages(n, n <= args.whole_up_to) for n in args.sizes}
    names = list(results[args.sizes[0]])
    header = f"{'stage':26s}" + "".join(f"{n:>10d} n" for n in args.sizes) + "   growth per doubling"
    print(header)
    for name in names:
        sizes = [n for n in args.sizes if name in results[n]]
        times = [results[n][name] for n in sizes]
        growth = []
        for (n1, t1), (n2, t2) in zip(zip(sizes, times), zip(sizes[1:], times[1:])):
            growth.append((max(t2, 1e-6) / max(t1, 1e-6)) ** (1 / math.log2(n2 / n1)))
        print(f"{name:26s}" + "".join(f"{t:10.3f} s" for t in times) + " " * 12 * (len(args.sizes) - len(times)) + "   "
              + ", ".join(f"{g:.2f}" for g in growth))
    print("(2.00 per doubling is linear, 4.00 quadratic)")


if __name__ == "__main__":
    main()
