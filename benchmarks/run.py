"""Side-by-side benchmark: onnxquant vs onnxruntime.quantization on real pretrained models.

``python -m benchmarks.run [--models efficientnet-lite0 minilm ppocr-det sklearn-mlp ...] [--out build/bench]``

For each model: build it from packaged weights (models/), write its calibration and held-out
samples (calibration/), quantize with each tool in its own subprocess (time, peak memory), then
in this one process measure agreement with fp32 on the held-out samples and int8/fp32 latency,
interleaving the models so machine noise hits them alike. For each output, onnxruntime's own
optimized graph says how many quantized layers run as integer kernels (the rest are float
islands that dequantize their weights on every call).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks import metrics, page_cer, tool_venvs
from calibration.build import write_samples
from models.build import BUILDERS, build
from onnxquant.fusion_check import check_fusion
from onnxquant.model_io import file_size

REPO = Path(__file__).resolve().parent.parent
METRIC = {"efficientnet-lite0": metrics.classifier, "efficientnet-lite0-fp16": metrics.classifier,
          "efficientnet-lite0-dynamo": metrics.classifier, "ddddocr-rec": metrics.label_sequences,
          "silero-vad": metrics.speech_probability, "silero-vad-16k": metrics.speech_probability,
          "efficientnet-lite0-fp16-weights": metrics.classifier,
          "minilm": metrics.embedding, "minilm-dynamo": metrics.embedding,
          "minilm-sdpa": metrics.embedding, "minilm-sdpa-static": metrics.embedding,
          "minilm-sdpa-ts": metrics.embedding, "ppocr-det": metrics.probability_map,
          "ppocrv5-det": metrics.probability_map,
          "sklearn-mlp": metrics.probabilities, "sklearn-mlp-partly-int8": metrics.probabilities,
          "ppocr-cls": metrics.probabilities, "ppocr-cls-fp16": metrics.probabilities, "magika": metrics.probabilities,
          "ppocrv5-cls": metrics.probabilities, "mtcnn-onet": metrics.probabilities,
          "ddddocr-det": metrics.character_boxes, "yolo-slider": metrics.slider_gap_boxes,
          # captcha CRNN: CTC logits per time step (top-1: every step's argmax equal, so the same text)
          "captcha-crnn": metrics.classifier, "speaker-encoder": metrics.embedding,
          "sklearn-ensemble": metrics.probabilities, "sklearn-forest": metrics.probabilities,
          "blazeface": metrics.face_boxes, "face-landmark": metrics.landmarks,
          # PP-OCRv5's recogniser: CTC strings decoded greedily (blank 0) against fp32's
          "ppocrv5-rec": metrics.ctc_strings}
HEADLINE = {"efficientnet-lite0": ("top1_agreement", "kl"), "efficientnet-lite0-fp16": ("top1_agreement", "kl"),
            "efficientnet-lite0-dynamo": ("top1_agreement", "kl"),
            "ddddocr-rec": ("sequence_agreement", "step_agreement"),
            "silero-vad": ("decision_agreement", "prob_mae"), "silero-vad-16k": ("decision_agreement", "prob_mae"),
            "efficientnet-lite0-fp16-weights": ("top1_agreement", "kl"),
            "minilm": ("cosine", "cosine_min"), "minilm-dynamo": ("cosine", "cosine_min"),
            "minilm-sdpa": ("cosine", "cosine_min"), "minilm-sdpa-static": ("cosine", "cosine_min"),
            "minilm-sdpa-ts": ("cosine", "cosine_min"),
            "speaker-encoder": ("cosine", "cosine_min"),
            "captcha-crnn": ("top1_agreement", "kl"),
            "ppocr-det": ("mask_iou", "mean_abs_error"), "ppocrv5-det": ("mask_iou", "mean_abs_error"),
            "ddddocr-det": ("f1", "matched_iou"),
            "blazeface": ("f1", "matched_iou"), "face-landmark": ("mean_px_error", "max_px_error"),
            "yolo-slider": ("f1", "matched_iou"), "ppocrv5-rec": ("string_agreement", "cer"),
            **{name: ("top1_agreement", "kl") for name in
               ("sklearn-mlp", "sklearn-mlp-partly-int8", "ppocr-cls", "ppocr-cls-fp16", "magika", "ppocrv5-cls",
                "mtcnn-onet", "sklearn-ensemble", "sklearn-forest")}}
# The output compared with fp32 (default: the first); skl2onnx's first output is the int64 label.
# MTCNN's O-Net: the face/no-face softmax (its other outputs are box and landmark offsets).
OUTPUT = {"sklearn-mlp": "probabilities", "sklearn-mlp-partly-int8": "probabilities", "mtcnn-onet": "softmax_2",
          "sklearn-ensemble": "probabilities", "sklearn-forest": "probabilities", "face-landmark": "conv2d_20"}
# Metrics that read several outputs get each sample's list of them (BlazeFace: boxes and scores).
OUTPUTS = {"blazeface": ["regressors", "classificators"]}
# Models measured in a full OCR pipeline too (benchmarks/page_cer.py): page CER with a real recogniser.
PAGE_CER = {"ppocr-det", "ppocrv5-det"}
# Zoo models measured only when named (--models): the default set stays as long as it was.
ON_REQUEST = {"ppocrv5-det", "ppocrv5-rec"}
# aimet and quark run from their own virtual environments (benchmarks/tool_venvs.py).
TOOLS = ("onnxquant", "onnxquant-as-given", "ort", "ort+pre", "ort-dynamic", "nncf", *tool_venvs.VENV_TOOLS)


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    # Idle worker threads of one session must not spin while the next session is timed.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _load(folder: Path) -> list[dict[str, np.ndarray]]:
    out = []
    for f in sorted(folder.glob("*.npz")):
        with np.load(f) as data:
            out.append({k: data[k] for k in data.files})
    return out


def _latency(sessions: dict[str, ort.InferenceSession], feed: dict, rounds: int, runs: int) -> dict[str, float]:
    """Median latency in ms, rounds interleaved across models."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        for _ in range(3):
            s.run(None, feed)
    for _ in range(rounds):
        for name, s in sessions.items():
            for _ in range(runs):
                t = time.perf_counter()
                s.run(None, feed)
                times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def _batched(feed: dict[str, np.ndarray], batch: int, session: ort.InferenceSession) -> dict[str, np.ndarray] | None:
    """``batch`` copies of one sample stacked on axis 0 (held-out samples may differ in length),
    or None when an input's batch dim is fixed."""
    if batch == 1:
        return feed
    for inp in session.get_inputs():
        if inp.shape and isinstance(inp.shape[0], int) and inp.shape[0] != batch:
            return None
    return {k: np.concatenate([v] * batch, axis=0) for k, v in feed.items()}


# (threads, batch): one thread and every core, batch 1 and batch 8, on the CPU provider.
SETTINGS = ((1, 1), (1, 8), (0, 1), (0, 8))


def _setting_key(threads: int, batch: int) -> str:
    return f"t{threads or 'all'}_b{batch}"


def _latencies(paths: dict[str, Path], data: list[dict[str, np.ndarray]], rounds: int) -> dict[str, dict[str, float]]:
    """Median ms per tool for each (threads, batch) setting; 0 threads means every core."""
    out: dict[str, dict[str, float]] = {}
    for threads, batch in SETTINGS:
        sessions = {k: _session(p, threads or (os.cpu_count() or 1)) for k, p in paths.items()}
        feed = _batched(data[0], batch, sessions["fp32"])
        if feed is None:
            continue
        out[_setting_key(threads, batch)] = _latency(sessions, feed, rounds, 5 if batch == 1 else 2)
    return out


def bench_model(name: str, work: Path, threads: int, rounds: int, tools: tuple[str, ...] = TOOLS,
                venvs: Path = tool_venvs.DEFAULT_ROOT) -> dict:
    fp32 = build(name, work / "models")
    calib, held = work / "calib" / name, work / "holdout" / name
    if not calib.exists():
        write_samples(name, "calib", calib)
    if not held.exists():
        write_samples(name, "holdout", held)
    # (with its external data: torch.onnx's dynamo exports keep their weights beside the model)
    fp32_size = file_size(fp32, onnx.load(str(fp32), load_external_data=False))
    row: dict = {"model": name, "fp32_size": fp32_size, "calib_samples": len(list(calib.glob("*.npz"))),
                 "holdout_samples": len(list(held.glob("*.npz"))), "tools": {}}
    outputs: dict[str, Path] = {}
    for tool in tools:
        out = work / "quantized" / f"{name}.{tool}.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        # onnxruntime.quantization leaves temporary files in the working directory: give each
        # tool a scratch one, with the repository on the import path.
        scratch = work / "scratch" / tool
        scratch.mkdir(parents=True, exist_ok=True)
        if tool in tool_venvs.VENV_TOOLS:
            info = tool_venvs.run_tool(tool, fp32.resolve(), calib.resolve(), out.resolve(), scratch, venvs)
        else:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
            proc = subprocess.run([sys.executable, "-m", "benchmarks.quantize_one", tool, str(fp32.resolve()),
                                   str(calib.resolve()), str(out.resolve())],
                                  capture_output=True, text=True, cwd=scratch, env=env)
            info = tool_venvs.parse_output(proc.returncode, proc.stdout, proc.stderr)
        if info.get("ok"):
            try:
                _session(out, threads)
                outputs[tool] = out
                info["size"] = out.stat().st_size
                info["fusion"] = check_fusion(onnx.load(str(out))).to_dict()
            except Exception as exc:
                info["ok"] = False
                info["error"] = f"output does not load in onnxruntime: {str(exc).splitlines()[0][:200]}"
        row["tools"][tool] = info
    data = _load(held)
    sessions = {"fp32": _session(fp32, threads), **{t: _session(p, threads) for t, p in outputs.items()}}
    wanted = OUTPUTS.get(name) or ([OUTPUT[name]] if name in OUTPUT else None)

    def outputs_of(session: ort.InferenceSession, x: dict[str, np.ndarray]):
        values = [v.astype(np.float32) for v in session.run(wanted, x)]
        return values if name in OUTPUTS else values[0]

    ref = [outputs_of(sessions["fp32"], x) for x in data]
    for tool in outputs:
        got = [outputs_of(sessions[tool], x) for x in data]
        row["tools"][tool]["agreement"] = METRIC[name](ref, got)
    if name in PAGE_CER:
        row["page_cer"] = page_cer.bench(fp32, outputs, work, threads, model=name)
    lat = _latency(sessions, data[0], rounds, 5)
    row["fp32_latency_ms"] = lat["fp32"]
    for tool in outputs:
        row["tools"][tool]["latency_ms"] = lat[tool]
        row["tools"][tool]["latency_ratio"] = lat[tool] / lat["fp32"]
    del sessions
    settings = _latencies({"fp32": fp32, **outputs}, data, rounds)
    row["fp32_latency_ms_by_setting"] = {k: v["fp32"] for k, v in settings.items()}
    for tool in outputs:
        row["tools"][tool]["latency_ratio_by_setting"] = {k: v[tool] / v["fp32"] for k, v in settings.items()}
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        ("| model | tool | agreement with fp32 (held-out) | size MB (fp32 → int8) | size ratio | quantize s | peak MB "
         "| latency int8/fp32 | int8/fp32 t1 b1, t1 b8, tall b1, tall b8 | integer kernels |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        keys = HEADLINE[row["model"]]
        for tool, info in row["tools"].items():
            if not info.get("ok") or "agreement" not in info:
                lines.append(f"| {row['model']} | {tool} | failed: {info.get('error', '?')} | | | | | | | |")
                continue
            agree = ", ".join(f"{k} {info['agreement'][k]:.4f}" for k in keys)
            fusion = info.get("fusion") or {}
            kernels = f"{fusion['integer_layers']} of {fusion['quantized_layers']}" if fusion else ""
            by_setting = info.get("latency_ratio_by_setting", {})
            grid = ", ".join(f"{by_setting[_setting_key(t, b)]:.2f}" if _setting_key(t, b) in by_setting else "n/a"
                             for t, b in SETTINGS)
            lines.append(
                f"| {row['model']} | {tool} | {agree} | {row['fp32_size'] / 1e6:.2f} → {info['size'] / 1e6:.2f} "
                f"| {info['size'] / row['fp32_size']:.3f} | {info['seconds']:.1f} | {info['peak_rss_mb']:.0f} "
                f"| {info['latency_ratio']:.2f} | {grid} | {kernels} |"
            )
    return "\n".join(lines)


def _failed(row: dict) -> dict[str, str]:
    return {tool: info.get("error", "?") for tool, info in row["tools"].items() if tool not in row.get("page_cer", {})}


def stages_markdown(rows: list[dict]) -> str:
    """onnxquant's own time per pipeline stage (wall s / CPU s, peak MB when it ended), for each
    onnxquant tool that ran: where its quantize time goes (``QuantizeResult.stages``)."""
    lines = ["| model | tool | quantize s (library) | stages: wall s / CPU s / peak MB |", "|---|---|---|---|"]
    for row in rows:
        for tool, info in row["tools"].items():
            if info.get("stages"):
                told = ", ".join(f"{name} {v['seconds']:.1f}/{v['cpu_seconds']:.1f}/{v.get('peak_mb', 0):.0f}"
                                 for name, v in info["stages"].items() if v["seconds"] >= 0.05)
                trials = (info.get("search") or {}).get("trial_seconds")
                told += f"; search trials (build and score, s): {', '.join(f'{t:.1f}' for t in trials)}" if trials else ""
                lines.append(f"| {row['model']} | {tool} | {info['seconds']:.1f} ({info['library_seconds']:.1f}) | {told} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="*", default=[m for m in BUILDERS if m not in ON_REQUEST],
                        choices=list(BUILDERS))
    parser.add_argument("--out", type=Path, default=Path("build/bench"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--tools", nargs="*", default=list(TOOLS), choices=list(TOOLS))
    parser.add_argument("--no-tool-venvs", action="store_true",
                        help="skip the tools that need their own virtual environment (aimet, quark)")
    parser.add_argument("--venvs", type=Path, default=tool_venvs.DEFAULT_ROOT,
                        help="where the tool venvs are made and reused")
    args = parser.parse_args()
    tools = tuple(t for t in args.tools if not (args.no_tool_venvs and t in tool_venvs.VENV_TOOLS))
    rows = []
    for name in args.models:
        rows.append(bench_model(name, args.out, args.threads, args.rounds, tools, args.venvs))
        print(f"done {name}", file=sys.stderr)
        for tool, info in rows[-1]["tools"].items():
            if info.get("fusion"):
                fusion = info["fusion"]
                print(f"{name} {tool}: {fusion['integer_layers']} of {fusion['quantized_layers']} quantized layers "
                      "run as integer kernels", file=sys.stderr)
        args.out.mkdir(parents=True, exist_ok=True)
        # after each model: a long run stopped part way keeps the models it finished
        (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    stages = stages_markdown(rows)
    table = "\n".join([markdown(rows), "", *tool_venvs.configs(rows)]) + (f"\n\n{stages}" if stages else "")
    table += "".join(f"\n\n{page_cer.markdown(row['model'], row['page_cer'], _failed(row))}" for row in rows if "page_cer" in row)
    (args.out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
