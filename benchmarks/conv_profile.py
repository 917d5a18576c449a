"""Per-convolution int8 vs fp32 time from onnxruntime's profiler, beside conv_cost's estimate.

``python -m benchmarks.conv_profile MODEL CALIB_DIR [--batch 1] [--runs 30] [--json OUT]``

Quantizes MODEL twice with onnxquant (``--no-search``): with integer kernels (QDQ, fused by
onnxruntime into QLinearConv) and with float compute (the same prepared graph, fp32 kernels).
Both run on one thread on the first calibration sample (stacked to ``--batch``); each Conv's
kernel time is read from the profiler and set beside ``onnxquant.conv_cost``'s estimate for the
same layer, per layer and per kind (depthwise k x k, pointwise, dense k x k). Run it under the
benchmark lock: it times things.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxquant.conv_cost import COSTS, ConvShape, quantized_conv_shapes

# onnxruntime fuses these into the Conv before them and names the fused kernel after their output
_FUSED_AFTER_CONV = {"Relu", "Clip", "HardSigmoid", "Sigmoid", "LeakyRelu", "Tanh", "Add", "Sum"}


def _profile(path: Path, feed: dict[str, np.ndarray], runs: int) -> tuple[dict[str, float], dict[str, str]]:
    """Median microseconds per run of each kernel (by onnxruntime's node name), one thread, and
    each kernel's op type."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    durations: dict[str, list[float]] = defaultdict(list)
    ops: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            durations[name].append(float(e["dur"]))
            ops[name] = e["args"].get("op_name", "")
    return {name: float(np.median(d)) for name, d in durations.items()}, ops


def _fp32_names(model: onnx.ModelProto) -> dict[str, str]:
    """onnxruntime's kernel names (an output of the Conv or of the activation fused into it,
    ``_nchwc`` added) -> the Conv's node name."""
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for i in node.input:
            consumers[i].append(node)
    out = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        tensor = node.output[0]
        for _ in range(3):
            out[tensor] = out[tensor + "_nchwc"] = node.name
            nxt = consumers.get(tensor, [])
            if len(nxt) != 1 or nxt[0].op_type not in _FUSED_AFTER_CONV:
                break
            tensor = nxt[0].output[0]
        out[node.name] = node.name
    return out


def _kind(layer: ConvShape, weight: list[int]) -> str:
    k = "x".join(str(d) for d in weight[2:])
    if layer.depthwise:
        return f"depthwise {k}"
    return "pointwise" if all(d == 1 for d in weight[2:]) else f"dense {k}"


def profile_model(model: Path, calib: Path, batch: int = 1, runs: int = 30, cpu_kind: str = "avx2") -> dict:
    import onnxquant

    with np.load(sorted(calib.glob("*.npz"))[0]) as data:
        feed = {k: np.concatenate([data[k]] * batch, axis=0) for k in data.files}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for label, integer in (("int8", True), ("fp32", False)):
            paths[label] = Path(tmp) / f"{label}.onnx"
            recipe = onnxquant.Recipe().with_overrides(search={"enabled": False},
                                                       quantization={"integer_compute": integer})
            onnxquant.quantize(str(model), str(calib), recipe, output=str(paths[label]))
        int8_model, fp32_model = onnx.load(str(paths["int8"])), onnx.load(str(paths["fp32"]))
        profiled = {label: _profile(p, feed, runs) for label, p in paths.items()}
    measured = {label: times for label, (times, _) in profiled.items()}
    ops = {label: kinds for label, (_, kinds) in profiled.items()}
    shapes = {k: tuple(v.shape) for k, v in feed.items()}
    layers = {layer.name: layer for layer in quantized_conv_shapes(int8_model, shapes)}
    producer = {o: n for n in int8_model.graph.node for o in n.output}
    inits = {i.name: list(i.dims) for i in int8_model.graph.initializer}
    weights = {}
    for node in int8_model.graph.node:
        if node.name in layers:
            weights[node.name] = inits[producer[node.input[1]].input[0]]
    int8_time: dict[str, float] = defaultdict(float)
    for name, us in measured["int8"].items():
        if ops["int8"].get(name) == "QLinearConv":
            int8_time[re.sub(r"_token_\d+$", "", name)] += us
    fp32_names = _fp32_names(fp32_model)
    fp32_time: dict[str, float] = defaultdict(float)
    for name, us in measured["fp32"].items():
        if ops["fp32"].get(name) in ("Conv", "FusedConv"):
            fp32_time[fp32_names.get(name, name)] += us
    fp32_cost, int8_cost = COSTS[cpu_kind]
    rows = []
    for name, layer in layers.items():
        rows.append({"name": name, "kind": _kind(layer, weights[name]), "pixels": layer.pixels,
                     "channels": layer.outputs // max(layer.pixels, 1), "in_channels": weights[name][1],
                     "kernel": weights[name][2:], "macs": layer.macs, "depthwise": layer.depthwise,
                     "int8_us": int8_time.get(name), "fp32_us": fp32_time.get(name),
                     "est_int8_us": int8_cost.nanoseconds(layer) / 1e3, "est_fp32_us": fp32_cost.nanoseconds(layer) / 1e3})
    by_op = {label: _by_op(measured[label], ops[label]) for label in measured}
    return {"model": str(model), "batch": batch, "layers": rows, "by_op_us": by_op,
            "total_us": {label: sum(v for v in measured[label].values()) for label in measured}}


def _by_op(times: dict[str, float], ops: dict[str, str]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for name, us in times.items():
        out[ops.get(name, "?")] += us
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def summary(result: dict) -> str:
    """Per kind: layers, measured int8/fp32 and estimated int8/fp32; then the whole model."""
    kinds: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0, 0.0])
    for row in result["layers"]:
        if row["int8_us"] is None:
            continue
        k = kinds[row["kind"] + ("" if row["fp32_us"] is not None else " (int8 only)")]
        k[0] += 1
        k[1] += row["int8_us"]
        k[2] += row["fp32_us"] or 0.0
        k[3] += row["est_int8_us"]
        k[4] += row["est_fp32_us"]
    lines = [f"{result['model']} batch {result['batch']}",
             "| kind | layers | int8 us | fp32 us | measured int8/fp32 | estimated int8/fp32 |", "|---|---|---|---|---|---|"]
    for kind, (n, i8, f32, ei8, ef32) in sorted(kinds.items()):
        ratio = f"{i8 / f32:.2f}" if f32 else "-"
        lines.append(f"| {kind} | {n} | {i8:.0f} | {f32:.0f} | {ratio} | {ei8 / ef32:.2f} |")
    tot = result["total_us"]
    convs = [r for r in result["layers"] if r["int8_us"] is not None]
    lines.append(f"all kernels: int8 {tot['int8']:.0f} us, fp32 {tot['fp32']:.0f} us, ratio {tot['int8'] / tot['fp32']:.2f}; "
                 f"convs estimated int8/fp32 {sum(r['est_int8_us'] for r in convs) / sum(r['est_fp32_us'] for r in convs):.2f}")
    for label in ("int8", "fp32"):
        top = ", ".join(f"{op} {us:.0f}" for op, us in list(result["by_op_us"][label].items())[:8])
        lines.append(f"{label} by op (us): {top}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("calib", type=Path)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = profile_model(args.model, args.calib, args.batch, args.runs)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(summary(result))


if __name__ == "__main__":
    sys.exit(main())
