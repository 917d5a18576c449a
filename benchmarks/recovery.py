"""Accuracy recovery, algorithm by algorithm, beside onnxruntime.quantization and NNCF.

``python -m benchmarks.recovery [--models ...] [--out build/bench-recovery] [--skip-slow]``

For each real model: plain min-max int8 (every recovery pass off), then each pass alone on
top of it, onnxquant's default, the default with learned rounding, mixed precision against a
stated budget, and the anchors. Every variant is scored on the same held-out samples.
Mixed precision runs twice: searched on the held-out samples (the tool's contract: the budget
holds on ``--holdout``), and searched on the calibration samples, whose held-out score checks
whether the budget carries over to samples the search never saw.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import onnxquant
from benchmarks.run import HEADLINE, METRIC, REPO, _load, _session
from calibration.build import write_samples
from models.build import BUILDERS, build
from onnxquant.recipe import Recipe

OFF = {"bias_correction": False, "smoothquant": False, "equalize": False, "adaround": False}
VARIANTS: dict[str, dict] = {
    "plain min-max": OFF,
    "+ bias correction": {**OFF, "bias_correction": True},
    "+ SmoothQuant": {**OFF, "smoothquant": True},
    "+ equalisation": {**OFF, "equalize": True},
    "+ learned rounding": {**OFF, "adaround": True},
    "default": {},
    "default + learned rounding": {"adaround": True},
}
SLOW = {"+ learned rounding", "default + learned rounding"}
# Budgets for mixed precision, as drops from fp32 agreement (see README, "Accuracy recovery").
# EfficientNet: top-1 agreement; MiniLM: 1 - cosine; PP-OCR: text-mask IoU, a user metric.
BUDGETS = {"efficientnet-lite0": 0.03, "minilm": 0.002, "ppocr-det": 0.03}


def _iou_metric(references: list[np.ndarray]):
    """PP-OCR: text-mask IoU with fp32, as a user metric (fp32 scores 1)."""

    def metric(outputs: list[list[np.ndarray]]) -> float:
        return METRIC["ppocr-det"](references, [o[0] for o in outputs])["mask_iou"]

    return metric


def _anchor(tool: str, fp32: Path, calib: Path, out: Path) -> dict:
    scratch = out.parent / "scratch" / tool
    scratch.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.quantize_one", tool, str(fp32.resolve()), str(calib.resolve()),
                           str(out.resolve())], capture_output=True, text=True, cwd=scratch, env=env, check=False)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"ok": False, "error": (proc.stderr.strip().splitlines() or ["crashed"])[-1]}


def bench_model(name: str, work: Path, skip_slow: bool) -> list[dict]:
    fp32 = build(name, work / "models")
    calib, held = work / "calib" / name, work / "holdout" / name
    for part, folder in (("calib", calib), ("holdout", held)):
        if not folder.exists():
            write_samples(name, part, folder)
    data = _load(held)
    ref_session = _session(fp32, 2)
    ref = [ref_session.run(None, x)[0] for x in data]
    out_dir = work / "quantized"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []

    def score(path: Path) -> dict:
        s = _session(path, 2)
        return METRIC[name]([r for r in ref], [s.run(None, x)[0] for x in data])

    for label, recovery in VARIANTS.items():
        if skip_slow and label in SLOW:
            continue
        out = out_dir / f"{name}.{label.replace(' ', '_').replace('+', 'plus')}.onnx"
        started = time.perf_counter()
        result = onnxquant.quantize(fp32, calib, Recipe().with_overrides(recovery=recovery), out)
        rows.append({"model": name, "variant": label, "seconds": time.perf_counter() - started,
                     "agreement": score(out), "size": out.stat().st_size, "notes": [n for n in result.notes if any(
                         k in n for k in ("bias", "SmoothQuant", "equalisation", "rounding"))]})
        print(f"  {name} {label}: {rows[-1]['agreement']}", file=sys.stderr)

    budget = BUDGETS[name]
    metric = _iou_metric([]) if name == "ppocr-det" else None  # rebuilt per search set below
    agreement = "top1" if name == "efficientnet-lite0" else "cosine"
    # Searched on the held-out set itself (the tool's contract: the budget holds on --holdout),
    # then on the calibration set (does the budget carry over to samples the search never saw?).
    for where, search_set in (("held-out", held), ("calibration", calib)):
        out = out_dir / f"{name}.mixed-{where}.onnx"
        if metric is not None:
            metric = _iou_metric([ref_session.run(None, x)[0] for x in _load(search_set)])
        started = time.perf_counter()
        result = onnxquant.quantize(fp32, calib, output=out, holdout=search_set, max_drop=budget, metric=metric,
                                    agreement=agreement)
        mp = result.mixed_precision or {}
        rows.append({"model": name, "variant": f"mixed precision, budget {budget}, searched on {where}",
                     "seconds": time.perf_counter() - started, "agreement": score(out), "size": out.stat().st_size,
                     "notes": [f"{len(mp.get('float_layers', []))} layers float; drop on the search set {mp.get('drop', 0):.4f}"]})
    if name == "minilm":  # the only one with MatMul weights: 4-bit for the least sensitive layers
        for label, kwargs in (("int4 weights", {}), ("int4 weights, budget 0.01", {"max_drop": 0.01})):
            out = out_dir / f"{name}.{label.split(',')[-1].strip().replace(' ', '_')}.int4.onnx"
            started = time.perf_counter()
            result = onnxquant.quantize(fp32, calib, Recipe().with_overrides(quantization={"weight_bits": 4}), out, **kwargs)
            mp = result.mixed_precision or {}
            rows.append({"model": name, "variant": label, "seconds": time.perf_counter() - started,
                         "agreement": score(out), "size": out.stat().st_size,
                         "notes": [n for n in result.notes if "int4" in n or "mixed" in n]})

    for tool in ("ort", "nncf"):
        out = out_dir / f"{name}.{tool}.onnx"
        info = _anchor(tool, fp32, calib, out)
        row = {"model": name, "variant": f"anchor: {tool}", "seconds": info.get("seconds", 0.0), "notes": []}
        if info.get("ok"):
            row["agreement"] = score(out)
            row["size"] = out.stat().st_size
        else:
            row["error"] = info.get("error", "?")
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | variant | agreement with fp32 (held-out) | MB | seconds | notes |", "|---|---|---|---|---|---|"]
    for row in rows:
        keys = HEADLINE[row["model"]]
        if "agreement" not in row:
            lines.append(f"| {row['model']} | {row['variant']} | failed: {row.get('error')} | | | |")
            continue
        agree = ", ".join(f"{k} {row['agreement'][k]:.4f}" for k in keys)
        lines.append(f"| {row['model']} | {row['variant']} | {agree} | {row['size'] / 1e6:.1f} | {row['seconds']:.1f} "
                     f"| {'; '.join(row['notes'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="*", default=list(BUILDERS), choices=list(BUILDERS))
    parser.add_argument("--out", type=Path, default=Path("build/bench"))
    parser.add_argument("--skip-slow", action="store_true", help="Leave out learned rounding (minutes per model).")
    args = parser.parse_args()
    rows = []
    for name in args.models:
        rows.extend(bench_model(name, args.out, args.skip_slow))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recovery.json").write_text(json.dumps(rows, indent=2))
    table = markdown(rows)
    (args.out / "recovery.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
