"""Calibration peak memory against the number of samples: 10, 100 and 1000, side by side.

Each (tool, count) runs in its own process (``benchmarks.quantize_one``), whose peak RSS is
read from /proc; a run past ``--limit-gb`` or ``--timeout`` is stopped and reported as such.
The samples are EfficientNet-Lite0's real calibration photos, repeated with flips and shifts
to reach 1000 (deterministic).

``python -m benchmarks.memory --out build/bench [--counts 10 100 1000] [--tools ...]``
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOOLS = ("onnxquant", "onnxquant-entropy", "ort", "ort-entropy")


def sample_folder(source: Path, count: int, out: Path) -> Path:
    """``count`` samples made from the real ones: flipped and rolled copies after the originals."""
    folder = out / f"samples-{count}"
    if folder.is_dir() and len(list(folder.glob("*.npz"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    originals = [dict(np.load(p)) for p in sorted(source.glob("*.npz"))]
    for i in range(count):
        base = originals[i % len(originals)]
        variant = i // len(originals)
        sample = {}
        for name, value in base.items():
            if variant % 2:
                value = value[..., ::-1]
            if variant:
                value = np.roll(value, 7 * variant, axis=-2)
            sample[name] = np.ascontiguousarray(value)
        np.savez(folder / f"s{i:04d}.npz", **sample)
    return folder


def _run(tool: str, model: Path, data: Path, limit_gb: float, timeout: float) -> dict:
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "benchmarks.quantize_one", tool, str(model), str(data), f"{tmp}/out.onnx"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        handle, peak, started, stopped = psutil.Process(proc.pid), 0.0, time.perf_counter(), None
        while proc.poll() is None:
            try:
                peak = max(peak, handle.memory_info().rss / 2**20)
            except psutil.Error:
                pass
            if peak > limit_gb * 1024:
                stopped = f"over {limit_gb:g} GB"
            elif time.perf_counter() - started > timeout:
                stopped = f"over {timeout:g} s"
            if stopped:
                proc.kill()
                proc.wait()
                return {"tool": tool, "ok": False, "error": stopped, "peak_rss_mb": peak}
            time.sleep(0.05)
        out = proc.stdout.read().strip().splitlines() if proc.stdout else []
    info = json.loads(out[-1]) if out else {"tool": tool, "ok": False, "error": f"exit {proc.returncode}"}
    info["peak_rss_mb"] = max(info.get("peak_rss_mb", 0.0), peak)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/bench"))
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    parser.add_argument("--limit-gb", type=float, default=12.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()

    from models.build import build

    args.out.mkdir(parents=True, exist_ok=True)
    model = build("efficientnet-lite0", args.out / "models")
    from calibration.build import write_samples

    source = write_samples("efficientnet-lite0", "calib", args.out / "memory" / "source")
    rows = []
    for count in args.counts:
        data = sample_folder(source, count, args.out / "memory")
        for tool in args.tools:
            info = _run(tool, model, data, args.limit_gb, args.timeout)
            info["samples"] = count
            rows.append(info)
            print(json.dumps(info), flush=True)
    (args.out / "memory.json").write_text(json.dumps(rows, indent=2))
    (args.out / "memory.md").write_text(_table(rows, args.counts, args.tools))
    print(_table(rows, args.counts, args.tools))


def _table(rows: list[dict], counts: list[int], tools: list[str]) -> str:
    lines = ["| tool | " + " | ".join(f"{c} samples" for c in counts) + f" | {counts[-1]} / {counts[0]} |",
             "|---" * (len(counts) + 2) + "|"]
    for tool in tools:
        cells, peaks = [], []
        for count in counts:
            row = next(r for r in rows if r["tool"] == tool and r["samples"] == count)
            peaks.append(row["peak_rss_mb"] if row.get("ok") else None)
            cells.append(f"{row['peak_rss_mb']:.0f} MB, {row.get('seconds', 0):.0f} s" if row.get("ok")
                         else f"failed ({row.get('error', '')[:60]}) at {row['peak_rss_mb']:.0f} MB")
        ratio = f"{peaks[-1] / peaks[0]:.2f}x" if peaks[0] and peaks[-1] else "n/a"
        lines.append(f"| {tool} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
