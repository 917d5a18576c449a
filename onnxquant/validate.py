"""Compressed against original, on each execution provider: agreement, placement, latency, size.

The reference is always the original model on onnxruntime's CPU provider: that is the answer
the user's float model gives today. On each requested provider both models are run: the
compressed one for agreement and placement, the original (where the provider takes it) for
the latency ratio. Samples are streamed; memory does not grow with their number.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxquant.agreement import OutputAgreement
from onnxquant.calibration.feeds import check_feed, input_specs
from onnxquant.calibration.preprocess import ImagePreprocess
from onnxquant.calibration.sources import open_for_model
from onnxquant.errors import (
    CalibrationDataError,
    ExecutionProviderError,
    ModelError,
    UsageError,
)
from onnxquant.model_io import (
    PROTOBUF_LIMIT,
    file_size,
    load_model,
    serialize,
)
from onnxquant.providers import (
    NEEDS_STATIC_SHAPES,
    PROVIDERS,
    check_available,
    open_session,
)
from onnxquant.shapes import fix_input_shapes, has_free_dims

ProgressCallback = Callable[[int, int | None], None]


@dataclass(frozen=True)
class Budget:
    """Limits the compressed model must meet on every provider; None means no limit."""

    min_cosine: float | None = None  # mean cosine similarity per float output
    min_top1: float | None = None  # top-1 agreement, for (batch, classes) outputs
    min_sqnr_db: float | None = None
    max_abs_error: float | None = None
    max_latency_ratio: float | None = None  # compressed / original median latency, same provider
    require_on_ep: bool = False  # every node but the input/output boundary runs on the provider

    def __post_init__(self) -> None:
        for name in ("min_cosine", "min_top1"):
            value = getattr(self, name)
            if value is not None and not -1.0 <= value <= 1.0:
                raise UsageError(f"{name.replace('_', '-')} must be between -1 and 1, got {value}")
        for name in ("max_abs_error", "max_latency_ratio"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UsageError(f"{name.replace('_', '-')} must be positive, got {value}")


@dataclass
class ModelRun:
    """One model on one provider."""

    loaded: bool = False
    error: str | None = None
    placement: dict[str, Any] | None = None
    latencies_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"loaded": self.loaded}
        if self.error:
            out["error"] = self.error
        if self.placement is not None:
            out["placement"] = self.placement
        if self.latencies_ms:
            out["latency_ms"] = {"median": round(statistics.median(self.latencies_ms), 3),
                                 "p90": round(_percentile(self.latencies_ms, 90), 3),
                                 "runs": len(self.latencies_ms)}
        return out

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.latencies_ms) if self.latencies_ms else None


@dataclass
class ProviderReport:
    ep: str
    available: bool = True
    unavailable_reason: str | None = None
    fixed_shapes: dict[str, list[int]] | None = None
    original: ModelRun = field(default_factory=ModelRun)
    compressed: ModelRun = field(default_factory=ModelRun)
    outputs: dict[str, OutputAgreement] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def latency_ratio(self) -> float | None:
        a, b = self.compressed.median_ms, self.original.median_ms
        return a / b if a is not None and b else None

    def to_dict(self) -> dict[str, Any]:
        if not self.available:
            return {"ep": self.ep, "available": False, "reason": self.unavailable_reason}
        ratio = self.latency_ratio()
        out: dict[str, Any] = {
            "ep": self.ep, "available": True,
            "original": self.original.to_dict(), "compressed": self.compressed.to_dict(),
            "agreement": {name: a.to_dict() for name, a in self.outputs.items()},
            "latency_ratio": round(ratio, 4) if ratio is not None else None,
            "failures": self.failures,
        }
        if self.fixed_shapes:
            out["fixed_shapes"] = self.fixed_shapes
        return out


@dataclass
class ValidationReport:
    original: str
    compressed: str
    size_original: int
    size_compressed: int
    samples: int
    budget: Budget
    providers: list[ProviderReport]

    @property
    def failures(self) -> list[str]:
        return [f"{p.ep}: {f}" for p in self.providers for f in p.failures]

    @property
    def unavailable(self) -> list[str]:
        return [p.ep for p in self.providers if not p.available]

    @property
    def passed(self) -> bool:
        return not self.failures and not self.unavailable

    def to_dict(self) -> dict[str, Any]:
        return {
            "original": self.original,
            "compressed": self.compressed,
            "size": {"original": self.size_original, "compressed": self.size_compressed,
                     "ratio": round(self.size_compressed / max(self.size_original, 1), 4)},
            "samples": self.samples,
            "budget": {k: v for k, v in vars(self.budget).items() if v not in (None, False)},
            "providers": [p.to_dict() for p in self.providers],
            "failures": self.failures,
            "unavailable": self.unavailable,
            "passed": self.passed,
        }


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def boundary_nodes(model: onnx.ModelProto) -> set[str]:
    """Q nodes that read a graph input and DQ nodes that write a graph output.

    These convert between the application's float tensors and the provider's integer ones; an
    NPU leaves them to the CPU by design, so they do not count as fallback.
    """
    inputs = {i.name for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    return {n.name for n in model.graph.node
            if (n.op_type == "QuantizeLinear" and n.input and n.input[0] in inputs)
            or (n.op_type == "DequantizeLinear" and n.output and n.output[0] in outputs)}


def _session_source(model: onnx.ModelProto, path: Path, fixed: dict[str, tuple[int, ...]] | None) -> bytes | str:
    if not fixed:
        return str(path)
    if model.ByteSize() >= PROTOBUF_LIMIT:
        raise ModelError(f"{path}: fixing input shapes of a model over 2 GB is not supported")
    return serialize(fix_input_shapes(model, fixed))


def _timed_run(session: Any, feed: dict[str, np.ndarray], times: list[float]) -> list[np.ndarray]:
    start = time.perf_counter()
    result = session.run(None, feed)
    times.append((time.perf_counter() - start) * 1000.0)
    return result


class _ProviderRun:
    """Both models' sessions on one provider, fed sample by sample."""

    def __init__(self, report: ProviderReport, original: Any, compressed: Any, shapes: dict[str, tuple[int, ...]] | None):
        self.report, self.original, self.compressed, self.shapes = report, original, compressed, shapes
        self.broken = compressed is None

    def feed(self, index: int, sample: dict[str, np.ndarray], reference: list[np.ndarray], names: list[str]) -> None:
        if self.broken:
            return
        if self.shapes and any(tuple(sample[k].shape) != s for k, s in self.shapes.items()):
            got = {k: list(sample[k].shape) for k in self.shapes}
            self.report.failures.append(
                f"sample {index} has input shapes {got}; this provider runs the fixed shapes "
                f"{ {k: list(s) for k, s in self.shapes.items()} } (give samples of one shape)")
            self.broken = True
            return
        try:
            if index == 0:  # warm-up runs are not timed
                self.compressed.run(None, sample)
                if self.original is not None:
                    self.original.run(None, sample)
            got = _timed_run(self.compressed, sample, self.report.compressed.latencies_ms)
            if self.original is not None:
                _timed_run(self.original, sample, self.report.original.latencies_ms)
        except Exception as exc:  # a provider failing at run time is a finding, not a crash
            self.report.failures.append(f"compressed model failed to run on sample {index}: {str(exc).splitlines()[0]}")
            self.broken = True
            return
        for name, ref, out in zip(names, reference, got):
            self.report.outputs.setdefault(name, OutputAgreement(name)).add(ref, out)

    def extra_latency(self, sample: dict[str, np.ndarray], runs: int) -> None:
        if self.broken:
            return
        for _ in range(max(0, runs - len(self.report.compressed.latencies_ms))):
            _timed_run(self.compressed, sample, self.report.compressed.latencies_ms)
        if self.original is not None:
            for _ in range(max(0, runs - len(self.report.original.latencies_ms))):
                _timed_run(self.original, sample, self.report.original.latencies_ms)


def validate(
    original: str | os.PathLike,
    compressed: str | os.PathLike,
    data: Any,
    providers: tuple[str, ...] = ("cpu",),
    budget: Budget | None = None,
    *,
    preprocess: ImagePreprocess | None = None,
    max_samples: int | None = None,
    latency_runs: int = 10,
    threads: int | None = None,
    progress: ProgressCallback | None = None,
) -> ValidationReport:
    """Run both models on ``providers`` over ``data`` and measure the compressed one.

    Providers that cannot be loaded are reported as unavailable (never replaced by the CPU).
    Budget misses are listed in ``report.failures``; nothing is raised for them.
    """
    budget = budget or Budget()
    if not providers:
        raise UsageError("no execution provider given")
    unknown = [ep for ep in providers if ep not in PROVIDERS]
    if unknown:
        raise UsageError(f"unknown execution provider(s) {unknown}; choose from {', '.join(PROVIDERS)}")
    if latency_runs < 1:
        raise UsageError("latency runs must be at least 1")
    original_path, compressed_path = Path(original), Path(compressed)
    original_model = load_model(original_path)
    compressed_model = load_model(compressed_path)
    specs = input_specs(original_model)
    c_specs = {s.name: s for s in input_specs(compressed_model)}
    if {s.name for s in specs} != set(c_specs):
        raise ModelError(f"the models take different inputs: {sorted(s.name for s in specs)} and {sorted(c_specs)}")
    out_names = [o.name for o in original_model.graph.output]
    if out_names != [o.name for o in compressed_model.graph.output]:
        raise ModelError("the models have different outputs; validation compares them by name")

    source = open_for_model(original_model, data, preprocess or ImagePreprocess())
    first = next(iter(source), None)
    if first is None:
        raise CalibrationDataError("no validation samples")
    first = check_feed(first, specs, 0)

    reference, _ = open_session(str(original_path), "cpu", threads)
    boundary = boundary_nodes(compressed_model)
    runs: list[_ProviderRun] = []
    reports: list[ProviderReport] = []
    for ep in dict.fromkeys(providers):
        report = ProviderReport(ep)
        reports.append(report)
        try:
            check_available(ep)
        except ExecutionProviderError as exc:
            report.available, report.unavailable_reason = False, str(exc)
            continue
        shapes = None
        if ep in NEEDS_STATIC_SHAPES and (has_free_dims(original_model) or has_free_dims(compressed_model)):
            shapes = {k: tuple(v.shape) for k, v in first.items()}
            report.fixed_shapes = {k: list(v) for k, v in shapes.items()}
        sessions = []
        for which, model, path in (("original", original_model, original_path),
                                   ("compressed", compressed_model, compressed_path)):
            run: ModelRun = getattr(report, which)
            if ep == "cpu" and which == "original":
                session, placement = reference, None
            else:
                try:
                    session, placement = open_session(_session_source(model, path, shapes), ep, threads)
                except ModelError as exc:
                    run.error = str(exc)
                    sessions.append(None)
                    continue
            run.loaded = True
            if placement is not None:
                run.placement = placement.to_dict(boundary if which == "compressed" else boundary_nodes(model))
            sessions.append(session)
        if sessions[1] is None:
            report.failures.append(f"the compressed model does not load ({report.compressed.error})")
        runs.append(_ProviderRun(report, sessions[0], sessions[1], shapes))

    count = 0
    total = min(len(source), max_samples) if max_samples and _has_len(source) else (len(source) if _has_len(source) else None)
    for index, sample in enumerate(source):
        if max_samples is not None and index >= max_samples:
            break
        sample = check_feed(sample, specs, index)
        expected = reference.run(None, sample)
        for run in runs:
            run.feed(index, sample, expected, out_names)
        count += 1
        if progress is not None:
            progress(count, total)
    for run in runs:
        run.extra_latency(first, latency_runs)
        _check_budget(run.report, budget, boundary)

    return ValidationReport(
        original=str(original_path), compressed=str(compressed_path),
        size_original=file_size(original_path, original_model),
        size_compressed=file_size(compressed_path, compressed_model),
        samples=count, budget=budget, providers=reports,
    )


def _has_len(source: Any) -> bool:
    try:
        len(source)
    except TypeError:
        return False
    return True


def _check_budget(report: ProviderReport, budget: Budget, boundary: set[str]) -> None:
    if not report.compressed.loaded:
        return
    for name, agreement in report.outputs.items():
        if not agreement.is_float:
            if agreement.exact < agreement.samples:
                report.failures.append(f"output {name!r}: {agreement.samples - agreement.exact} sample(s) differ")
            continue
        stats = agreement.to_dict()
        if budget.min_cosine is not None and stats["cosine"] < budget.min_cosine:
            report.failures.append(f"output {name!r}: cosine {stats['cosine']:.4f} < {budget.min_cosine}")
        if budget.min_top1 is not None and "top1" in stats and stats["top1"] < budget.min_top1:
            report.failures.append(f"output {name!r}: top-1 agreement {stats['top1']:.4f} < {budget.min_top1}")
        if budget.min_sqnr_db is not None and agreement.sqnr_db < budget.min_sqnr_db:
            report.failures.append(f"output {name!r}: SQNR {agreement.sqnr_db:.2f} dB < {budget.min_sqnr_db} dB")
        if budget.max_abs_error is not None and agreement.max_abs_error > budget.max_abs_error:
            report.failures.append(
                f"output {name!r}: max abs error {agreement.max_abs_error:.4g} > {budget.max_abs_error}")
    ratio = report.latency_ratio()
    if budget.max_latency_ratio is not None:
        if ratio is None:
            report.failures.append("latency ratio unknown (the original does not run on this provider)")
        elif ratio > budget.max_latency_ratio:
            report.failures.append(f"latency ratio {ratio:.3f} > {budget.max_latency_ratio}")
    if budget.require_on_ep and report.ep != "cpu" and report.compressed.placement is not None:
        fallback = report.compressed.placement["fallback_nodes"]
        if fallback:
            ops = report.compressed.placement["fallback_ops"]
            report.failures.append(f"{fallback} node(s) fell back to the CPU: {ops}")
