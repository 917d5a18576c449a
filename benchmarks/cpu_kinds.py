"""Weights per CPU kind: EfficientNet-Lite0 quantized for each CPU target, measured on this host.

``python -m benchmarks.cpu_kinds [--out build/bench] [--targets cpu-avx2 cpu-vnni]``

Each model runs twice against fp32 on the held-out photos: with onnxruntime's default kernels
(what this host's CPU computes) and with ``session.x64quantprecision=1``, onnxruntime's exact u8u8
path on x86 CPUs whose u8s8 kernels saturate. The exact path sums every product in 32 bits, as VNNI
and ARM64 kernels do, so it stands in for those CPUs on a machine that has neither; on a VNNI or
ARM64 host both rows are the same. No timing: accuracy only.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import onnxruntime as ort

import onnxquant
from benchmarks import metrics
from benchmarks.run import _load
from calibration.build import write_samples
from models.build import build
from onnxquant.host import host_cpu
from onnxquant.recipe import recipe_for_target

MODEL = "efficientnet-lite0"


def _outputs(path: Path, samples: list[dict], exact: bool) -> list:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    if exact:
        options.add_session_config_entry("session.x64quantprecision", "1")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [session.run(None, s)[0] for s in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("build/bench"))
    parser.add_argument("--targets", nargs="*", default=["cpu-avx2", "cpu-vnni"])
    args = parser.parse_args()
    fp32 = build(MODEL, args.out / "models")
    calib, held = args.out / "calib" / MODEL, args.out / "holdout" / MODEL
    for part, folder in (("calib", calib), ("holdout", held)):
        if not folder.exists():
            write_samples(MODEL, part, folder)
    samples = _load(held)
    reference = _outputs(fp32, samples, exact=False)
    print(f"host: {host_cpu().kind} ({host_cpu().describe()}); {len(samples)} held-out samples")
    print("| target | weights | kernels | top-1 agreement | KL |")
    print("|---|---|---|---|---|")
    for target in args.targets:
        out = args.out / "cpu_kinds" / f"{MODEL}.{target}.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        recipe = recipe_for_target(target)
        onnxquant.quantize(fp32, calib, recipe, out)
        bits = "7-bit GEMM" if recipe.quantization.reduce_range else "8-bit"
        for exact, kernels in ((False, "default"), (True, "x64quantprecision=1 (exact)")):
            m = metrics.classifier(reference, _outputs(out, samples, exact))
            print(f"| {target} | {bits} | {kernels} | {m['top1_agreement']:.4f} | {m['kl']:.4f} |")


if __name__ == "__main__":
    main()
