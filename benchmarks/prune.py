"""Pruning on a real model: sparsity against agreement, size and latency, plain and int8.

``python -m benchmarks.prune [--out build/bench] [--sparsities 0.1 0.2 0.3 0.5] [--channels 0.25 0.5]``

EfficientNet-Lite0 from packaged weights. Rows: fp32; onnxquant int8 alone; magnitude pruning
(with reconstruction) at each sparsity, float and then int8; the ``--prune-max-drop`` search;
channel pruning, whose dead channels are removed from the graph (a smaller dense model).
Agreement is against fp32 on held-out photos; latencies are interleaved, one thread.
"""
from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path

import onnxquant
from benchmarks import metrics
from benchmarks.run import _latency, _load, _session
from calibration.build import write_samples
from models.build import build
from onnxquant.recipe import Recipe

MODEL = "efficientnet-lite0"


def _row(label: str, path: Path, extra: dict) -> dict:
    data = path.read_bytes()
    return {"label": label, "path": path, "size": len(data), "compressed": len(zlib.compress(data, 9)), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("build/bench"))
    parser.add_argument("--sparsities", type=float, nargs="*", default=[0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--channels", type=float, nargs="*", default=[0.25, 0.5])
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    work = args.out
    fp32 = build(MODEL, work / "models")
    calib, held = work / "calib" / MODEL, work / "holdout" / MODEL
    for part, folder in (("calib", calib), ("holdout", held)):
        if not folder.exists():
            write_samples(MODEL, part, folder)
    out = work / "pruned"
    out.mkdir(parents=True, exist_ok=True)
    rows = [_row("fp32", fp32, {}), _row("int8", out / "int8.onnx", {
        "seconds": onnxquant.quantize(fp32, calib, output=out / "int8.onnx").seconds["total"]})]
    for s in args.sparsities:
        pruned = onnxquant.prune(fp32, calib, Recipe().with_overrides(prune={"sparsity": s}), out / f"sparse{s}.onnx")
        rows.append(_row(f"pruned {s:.0%} (float)", pruned.output_path, {"seconds": pruned.seconds}))
        result = onnxquant.quantize(fp32, calib, Recipe().with_overrides(prune={"sparsity": s}), out / f"sparse{s}.int8.onnx")
        rows.append(_row(f"pruned {s:.0%} + int8", result.output_path, {"seconds": result.seconds["total"]}))
    searched = onnxquant.quantize(fp32, calib, Recipe().with_overrides(prune={"max_drop": args.max_drop}),
                                  out / "searched.int8.onnx", holdout=held)
    found = searched.pruning.search if searched.pruning else {}
    rows.append(_row(f"max-drop {args.max_drop} search ({found.get('amount', 0):.0%}) + int8", searched.output_path,
                     {"seconds": searched.seconds["total"]}))
    for c in args.channels:
        pruned = onnxquant.prune(fp32, calib, Recipe().with_overrides(prune={"channels": c}), out / f"channels{c}.onnx")
        rows.append(_row(f"channels {c:.0%} removed (float)", pruned.output_path, {
            "seconds": pruned.seconds, "channels_removed": pruned.report.structured.channels_removed}))
    data = _load(held)
    sessions = {row["label"]: _session(row["path"], 1) for row in rows}
    ref = [sessions["fp32"].run(None, x)[0] for x in data]
    for row in rows:
        row["agreement"] = metrics.classifier(ref, [sessions[row["label"]].run(None, x)[0] for x in data])
    latency = _latency(sessions, data[0], args.rounds, 5)
    lines = ["| model | top-1 agreement | KL | size MB | compressed MB | latency vs fp32 | latency vs int8 |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        row["latency_ms"] = latency[row["label"]]
        lines.append(f"| {row['label']} | {row['agreement']['top1_agreement']:.3f} | {row['agreement']['kl']:.4f} "
                     f"| {row['size'] / 1e6:.2f} | {row['compressed'] / 1e6:.2f} | {row['latency_ms'] / latency['fp32']:.2f} "
                     f"| {row['latency_ms'] / latency['int8']:.2f} |")
    table = "\n".join(lines)
    (work / "prune.md").write_text(table + "\n")
    (work / "prune.json").write_text(json.dumps([{k: str(v) if isinstance(v, Path) else v for k, v in row.items()}
                                                 for row in rows], indent=2))
    print(table)


if __name__ == "__main__":
    main()
