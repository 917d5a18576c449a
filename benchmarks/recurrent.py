"""Recurrent and control-flow models against onnxruntime.quantization and NNCF: size, agreement
with fp32, latency ratio on the CPU provider.

``python -m benchmarks.recurrent [--work build/bench-recurrent] [--models ...] [--tools ...]``
(run under ``flock /tmp/onnxquant-bench.lock`` on a shared machine).

- ddddocr-rec (Conv + bidirectional LSTM text recogniser): string agreement, the share of
  held-out text lines whose greedy CTC decode equals fp32's.
- silero-vad (every layer inside If branches) and silero-vad-16k (Convs in the main graph, LSTMs
  inside If): speech decisions (probability > 0.5) that equal
  fp32's, per chunk, streaming held-out clips with each model carrying its own state, at 16 kHz
  and at 8 kHz (the other branch; silero-vad only); and the mean |probability difference|.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.quantize_one import NpzReader, run_nncf
from benchmarks.run import _load
from calibration.build import write_samples
from models.build import build


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def quantize_with(tool: str, model: Path, calib: Path, out: Path) -> None:
    if tool.startswith("onnxquant"):
        import onnxquant
        from onnxquant import Recipe

        method = tool.partition("-")[2] or "minmax"  # onnxquant-percentile: another range estimator
        onnxquant.quantize(model, calib, Recipe().with_overrides(calibration={"method": method}), output=out)
    elif tool == "ort-dynamic":
        from onnxruntime.quantization import quantize_dynamic

        quantize_dynamic(str(model), str(out))
    elif tool == "ort-static":
        from onnxruntime.quantization import QuantFormat, quantize_static

        quantize_static(str(model), str(out), NpzReader(str(calib)), quant_format=QuantFormat.QDQ, per_channel=True)
    elif tool == "nncf":
        run_nncf(str(model), str(calib), str(out))
    else:
        raise ValueError(tool)


def ocr_agreement(ref: ort.InferenceSession, got: ort.InferenceSession, held: list[dict]) -> dict[str, float]:
    from models.ddddocr_rec import ctc_greedy

    same = [ctc_greedy(ref.run(None, f)[0]) == ctc_greedy(got.run(None, f)[0]) for f in held]
    return {"string_agreement": float(np.mean(same))}


def vad_agreement(ref: ort.InferenceSession, got: ort.InferenceSession, clips: list[np.ndarray],
                  rates: tuple[int, ...] = (16000, 8000)) -> dict[str, float]:
    from models.silero_vad import stream

    out = {}
    for rate in rates:
        decisions, diffs = [], []
        for audio in clips:
            audio = audio if rate == 16000 else audio[::2]
            a, _ = stream(ref, audio, rate)
            b, _ = stream(got, audio, rate)
            decisions.append((a > 0.5) == (b > 0.5))
            diffs.append(np.abs(a - b))
        out[f"decision_agreement_{rate // 1000}k"] = float(np.mean(np.concatenate(decisions)))
        out[f"prob_mae_{rate // 1000}k"] = float(np.mean(np.concatenate(diffs)))
    return out


def latency_ratio(ref: ort.InferenceSession, got: ort.InferenceSession, feeds: list[dict], rounds: int = 15) -> float:
    """Median time of a pass over ``feeds``, int8 over fp32, rounds interleaved."""
    times = {"ref": [], "got": []}
    for _ in range(rounds):
        for key, session in (("ref", ref), ("got", got)):
            start = time.perf_counter()
            for feed in feeds:
                session.run(None, feed)
            times[key].append(time.perf_counter() - start)
    return statistics.median(times["got"]) / statistics.median(times["ref"])


def bench(name: str, tools: list[str], work: Path) -> list[dict]:
    model = build(name, work / "models")
    calib = write_samples(name, "calib", work / "calib" / name)
    ref = _session(model)
    if name == "ddddocr-rec":
        held = _load(write_samples(name, "holdout", work / "held" / name))
        agree = lambda s: ocr_agreement(ref, s, held)  # noqa: E731
        timing = held[:8]
    else:
        from calibration.speech import clips
        from models.silero_vad import feeds

        held_clips = clips("holdout", 8)
        rates = (16000,) if name == "silero-vad-16k" else (16000, 8000)
        agree = lambda s: vad_agreement(ref, s, held_clips, rates)  # noqa: E731
        timing = [{**f, "state": np.zeros((2, 1, 128), np.float32)} for f in list(feeds(held_clips[0]))[:100]]
    rows = []
    for tool in tools:
        out = work / f"{name}.{tool}.onnx"
        row: dict = {"model": name, "tool": tool}
        try:
            start = time.perf_counter()
            quantize_with(tool, model, calib, out)
            row["seconds"] = round(time.perf_counter() - start, 1)
            session = _session(out)
        except Exception as exc:  # a tool that crashes or writes a model that does not load is a result
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            rows.append(row)
            continue
        row["size_ratio"] = round(out.stat().st_size / model.stat().st_size, 3)
        try:
            row.update({k: round(v, 4) for k, v in agree(session).items()})
            row["latency_ratio"] = round(latency_ratio(ref, session, timing), 3)
        except Exception as exc:
            row["error"] = f"runs but fails: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("build/bench-recurrent"))
    parser.add_argument("--models", default="ddddocr-rec,silero-vad,silero-vad-16k")
    parser.add_argument("--tools", default="onnxquant,onnxquant-percentile,ort-dynamic,ort-static,nncf")
    args = parser.parse_args()
    for name in args.models.split(","):
        for row in bench(name, args.tools.split(","), args.work):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
