"""MiniLM quantized with and without transformer fusion, timed in one run against fp32.

``python -m benchmarks.transformer_fusion [--out build/bench] [--rounds 10]``

Both int8 models come from the same calibration samples: one from the exported graph as it is
(``fuse_transformer = false``), one from the graph whose attention blocks were fused first
(``prepare_model(transformer=True)``: Attention, written as QAttention). Prints cosine to fp32 on
the held-out sentences and int8/fp32 latency at 1 thread and every core, batch 1 and 8
(interleaved, like benchmarks/run.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx

import onnxquant
from benchmarks import metrics
from benchmarks.run import SETTINGS, _latencies, _load, _session, _setting_key
from calibration.build import write_samples
from models.build import build
from onnxquant.passes.prepare import prepare_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("build/bench"))
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    fp32 = build("minilm", args.out / "models")
    calib, held = args.out / "calib" / "minilm", args.out / "holdout" / "minilm"
    for kind, folder in (("calib", calib), ("holdout", held)):
        if not folder.exists():
            write_samples("minilm", kind, folder)
    unfused = onnxquant.Recipe().with_overrides(quantization={"fuse_transformer": False})
    paths = {"fp32": fp32, "unfused": args.out / "quantized" / "minilm.unfused.onnx",
             "fused": args.out / "quantized" / "minilm.fused.onnx"}
    paths["unfused"].parent.mkdir(parents=True, exist_ok=True)
    onnxquant.quantize(fp32, calib, unfused, output=paths["unfused"])
    fused, _ = prepare_model(onnx.load(str(fp32)), transformer=True)
    onnxquant.quantize(fused, calib, output=paths["fused"])

    data = _load(held)
    ref_session = _session(fp32, 1)
    ref = [ref_session.run(None, x)[0] for x in data]
    settings = _latencies(paths, data, args.rounds)
    print("| MiniLM int8 | cosine, cosine_min | int8/fp32 " + ", ".join(_setting_key(t, b) for t, b in SETTINGS) + " |")
    print("|---|---|---|")
    for name in ("unfused", "fused"):
        session = _session(paths[name], 1)
        agree = metrics.embedding(ref, [session.run(None, x)[0].astype(np.float32) for x in data])
        grid = ", ".join(f"{v[name] / v['fp32']:.2f}" for v in settings.values())
        print(f"| {name} | {agree['cosine']:.4f}, {agree['cosine_min']:.4f} | {grid} |")


if __name__ == "__main__":
    main()
