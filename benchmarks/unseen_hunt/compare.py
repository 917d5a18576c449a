"""Each tool side by side on the unseen-hunt models (``benchmarks/unseen_hunt/make.py``), as a new
user would run them, to find what onnxquant gets wrong on models it was never tuned on.

``onnxquant`` is the CLI (``onnxquant quantize MODEL -o OUT --calib-data DIR --json``, defaults),
so its exit code and summary are what a user sees; ``ort`` (quantize_static), ``ort-dynamic``
(quantize_dynamic) and ``nncf`` run through ``benchmarks.quantize_one``. Each output is compared
with fp32 on the held-out samples by onnxquant's validate (agreement only), and timed here: one
onnxruntime thread, best of 5 interleaved rounds of the median of ``RUNS`` runs over 8 held-out
samples (validate's own latency, 20 runs, moves by 20-40% on sub-millisecond models); fewer runs
(at least 3) where 50 would take more than about a second a round.
usage: ``python -m benchmarks.unseen_hunt.compare MODELS_DIR OUT_DIR [NAME ...]``; run it under
``flock /tmp/onnxquant-bench.lock`` (it times), or with ``--no-latency`` (sizes and agreement only)
while others time.
"""
from __future__ import annotations

import glob
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from onnxquant.validate import Budget, validate

TOOLS = ("onnxquant", "ort", "ort-dynamic", "nncf")
FIGURES = ("f1", "top1", "label_agreement", "strings_equal", "cer", "kl", "cosine", "sqnr_db", "channel_cosine_min")
RUNS = 50


def _samples(folder: Path, count: int = 8) -> list[dict[str, np.ndarray]]:
    """The first ``count`` held-out samples as onnxruntime feeds (text as object arrays)."""
    out = []
    for f in sorted(glob.glob(f"{folder}/*.npz"))[:count]:
        with np.load(f) as z:
            out.append({k: z[k].astype(object) if z[k].dtype.kind in "US" else z[k] for k in z.files})
    return out


def latency_ratio(fp32: Path, q: Path, held: Path, runs: int = RUNS) -> tuple[float, float]:
    """fp32's time per sample (ms) and int8's over fp32's: interleaved rounds, so a neighbour's
    load hits both models alike; the best round of each is kept."""
    import onnxruntime as ort

    def session(path: Path) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def median(s: ort.InferenceSession, n: int) -> float:
        times = []
        for _ in range(n):
            for x in feeds:
                t = time.perf_counter()
                s.run(None, x)
                times.append(time.perf_counter() - t)
        return statistics.median(times)

    ort.set_default_logger_severity(3)  # the converters' fixed output dims warn on every batched run
    feeds = _samples(held)
    a, b = session(fp32), session(q)
    warm = median(a, 3), median(b, 3)
    # about a second a round per model: 50 runs of a 90 ms model would take half an hour
    runs = max(3, min(runs, int(1.0 / (len(feeds) * max(warm)))))
    ta, tb = [], []
    for _ in range(5):
        ta.append(median(a, runs))
        tb.append(median(b, runs))
    return min(ta) * 1e3, min(tb) / min(ta)


def quantize(models: Path, out: Path, name: str, tool: str) -> tuple[Path | None, str]:
    """Run ``tool``; the output path (None when it failed) and what the user was told."""
    model, calib, q = models / f"{name}.onnx", models / name / "calib", out / f"{name}.{tool}.onnx"
    q.unlink(missing_ok=True)
    if tool == "onnxquant":
        p = subprocess.run([sys.executable, "-m", "onnxquant", "quantize", str(model), "-o", str(q), "--calib-data",
                            str(calib), "--json"], capture_output=True, text=True)
        if p.returncode != 0:
            return None, f"exit {p.returncode}: {(p.stderr.strip().splitlines() or ['?'])[-1][:160]}"
        summary = json.loads(p.stdout)
        told = [w.split(":")[0][:70] for w in summary["warnings"]]
        return q, f"exit 0, {len(summary['warnings'])} warning(s)" + (f" ({'; '.join(told)})" if told else "")
    p = subprocess.run([sys.executable, "-m", "benchmarks.quantize_one", tool, str(model), str(calib), str(q)],
                       capture_output=True, text=True)
    last = (p.stdout.strip().splitlines() or [""])[-1]
    try:
        info = json.loads(last)
    except json.JSONDecodeError:
        info = {"ok": False, "error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    if not info.get("ok") or not q.exists():
        return None, f"failed: {str(info.get('error'))[:160]}"
    return q, "ok"


def row(models: Path, out: Path, name: str, tool: str, timed: bool = True) -> str:
    model, held = models / f"{name}.onnx", models / name / "held"
    q, told = quantize(models, out, name, tool)
    if q is None:
        return told
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    try:
        rep = validate(model, q, held, ("cpu",), Budget(), latency_runs=1, threads=1).to_dict()
    except Exception as e:  # a tool's output that onnxruntime cannot run is a result too
        return f"{told} | validate failed: {str(e)[:140]}"
    prov = rep["providers"][0]
    if not prov["agreement"]:  # (a model onnxruntime cannot load has no figures; say why)
        return f"{told} | {'; '.join(str(f) for f in prov['failures'])[:200]}"
    figs = []
    for o, a in prov["agreement"].items():
        figs.append(o[:14] + " " + " ".join(f"{k} {a[k]:.4g}" for k in FIGURES if isinstance(a.get(k), (int, float))))
    fp32_ms, ratio = latency_ratio(model, q, held) if timed else (float("nan"), float("nan"))
    size = os.path.getsize(q) / os.path.getsize(model)
    return (f"{told} | size {size:.3f} | int8/fp32 {ratio:.2f} (fp32 {fp32_ms:.3f} ms) | "
            f"pass {not prov['failures']} | " + "; ".join(figs))


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--no-latency"]
    models, out = Path(args[0]), Path(args[1])
    out.mkdir(parents=True, exist_ok=True)
    names = args[2:] or sorted(p.stem for p in models.glob("*.onnx"))
    for name in names:
        for tool in TOOLS:
            print(f"{name} | {tool} | {row(models, out, name, tool, '--no-latency' not in sys.argv)}", flush=True)


if __name__ == "__main__":
    main()
