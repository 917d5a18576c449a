"""Time chains of MatMul + Add + Relu layers, fp32 against onnxquant's int8 (integer kernels), to
fit ``onnxquant/dense_cost.py``'s figures for this machine's CPU kind.

``python -m benchmarks.dense_chains [--widths 16 64 128 256 512 1024] [--rows 1 8] [--rounds 5]``

One thread, batch ``rows``; each (width, rows) pair's fp32 and int8 sessions are timed
interleaved, best of ``rounds`` rounds of the median of 200 runs. Prints one line per pair
(fp32 us, int8 us, ratio) and the CPU kind; run under ``flock /tmp/onnxquant-bench.lock``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort

import onnxquant
from models.tiny import dense_chain
from onnxquant.host import host_cpu


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _median_us(session: ort.InferenceSession, feed: dict[str, np.ndarray], runs: int = 200) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def measure(width: int, rows: int, rounds: int) -> tuple[float, float]:
    """(fp32 us, int8 us) of a 3-layer chain of ``width`` at batch ``rows``."""
    model = dense_chain(width)
    rng = np.random.default_rng(1)
    samples = [{"x": rng.standard_normal((1, 10)).astype(np.float32)} for _ in range(8)]
    recipe = onnxquant.Recipe().with_overrides(quantization={"integer_compute": True}, search={"enabled": False})
    int8 = onnxquant.quantize(model, samples, recipe).model
    sessions = (_session(model), _session(int8))
    feed = {"x": rng.standard_normal((rows, 10)).astype(np.float32)}
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, session in enumerate(sessions):
            best[i] = min(best[i], _median_us(session, feed))
    return best[0], best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 64, 128, 256, 512, 1024])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"CPU kind: {host_cpu().kind} ({host_cpu().describe()}), onnxruntime {ort.__version__}")
    for rows in args.rows:
        for width in args.widths:
            fp32, int8 = measure(width, rows, args.rounds)
            print(f"width {width:5d} rows {rows:2d}: fp32 {fp32:8.1f} us  int8 {int8:8.1f} us  ratio {int8 / fp32:.2f}")


if __name__ == "__main__":
    main()
