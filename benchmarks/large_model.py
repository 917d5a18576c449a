"""A model over 2 GB, with its weights in external data: quantized in bounded memory?

Builds a stack of MatMul+Relu layers whose float32 weights exceed protobuf's 2 GB limit (one
external data file), then runs ``onnxquant quantize`` on it in a child process and reports its
peak memory, split into anonymous memory (copies the process made) and file-backed pages (the
memory-mapped weights, which the kernel can drop at any time).

``python -m benchmarks.large_model --out build/bench [--layers 9] [--width 4096]``
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def build(folder: Path, layers: int, width: int) -> Path:
    """``layers`` MatMul(width x 4*width) / MatMul(4*width x width) pairs, weights in one data file."""
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / "large.onnx"
    if model_path.exists():
        return model_path
    rng = np.random.default_rng(0)
    nodes, inits, offset = [], [], 0
    x = "x"
    with open(folder / "large.onnx.data", "wb") as data:
        for i in range(layers):
            shape = (width, 4 * width) if i % 2 == 0 else (4 * width, width)
            weight = (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[0])).astype(np.float32)
            data.write(weight.tobytes())
            tensor = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=shape,
                                 data_location=TensorProto.EXTERNAL)
            for key, value in (("location", "large.onnx.data"), ("offset", str(offset)), ("length", str(weight.nbytes))):
                tensor.external_data.add(key=key, value=value)
            offset += weight.nbytes
            inits.append(tensor)
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"))
            nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    out_width = width if layers % 2 == 0 else 4 * width
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, out_width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model_path.write_bytes(model.SerializeToString())
    calib = folder / "calib"
    calib.mkdir(exist_ok=True)
    for i in range(8):
        np.savez(calib / f"s{i}.npz", x=rng.standard_normal((1, width), dtype=np.float32))
    return model_path


def _peak(pid_status: str) -> dict[str, float]:
    fields = {}
    for line in pid_status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(rest.split()[0]) / 1024
    return fields


def sample_peaks(proc: subprocess.Popen, every: float = 0.05) -> dict[str, float]:
    """Peak total (VmHWM), anonymous and file-backed memory of a child, in MB, until it exits."""
    status = Path(f"/proc/{proc.pid}/status")
    peaks = {"VmHWM": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
    while proc.poll() is None:
        try:
            for key, value in _peak(status.read_text()).items():
                peaks[key] = max(peaks[key], value)
        except OSError:
            pass
        time.sleep(every)
    return peaks


def run(model: Path, out: Path) -> dict:
    """Quantize in a child, sampling its anonymous and file-backed memory every 50 ms."""
    cmd = [sys.executable, "-m", "onnxquant", "quantize", str(model), "-o", str(out),
           "--calib-data", str(model.parent / "calib"), "--json"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = sample_peaks(proc)
    stdout, stderr = proc.communicate()
    info = {"seconds": round(time.perf_counter() - started, 1), "exit": proc.returncode,
            "peak_rss_mb": round(peaks["VmHWM"]), "peak_anonymous_mb": round(peaks["RssAnon"]),
            "peak_file_backed_mb": round(peaks["RssFile"])}
    if proc.returncode != 0:
        info["error"] = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    else:
        summary = json.loads(stdout)
        info.update(size_before_mb=round(summary["size_before"] / 2**20), size_after_mb=round(summary["size_after"] / 2**20))
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/bench"))
    parser.add_argument("--layers", type=int, default=9)
    parser.add_argument("--width", type=int, default=4096)
    args = parser.parse_args()
    model = build(args.out / "large", args.layers, args.width)
    data_mb = (model.parent / "large.onnx.data").stat().st_size / 2**20
    info = {"weights_mb": round(data_mb), **run(model, args.out / "large" / "large.int8.onnx")}
    (args.out / "large_model.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
