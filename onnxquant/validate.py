"""Compressed against original, on each execution provider: agreement, placement, latency, size.

The reference is always the original model on onnxruntime's CPU provider: that is the answer
the user's float model gives today. Each output is read by its kind (``onnxquant.agreement``):
classifier scores by top-1 and KL, detections by F1 against fp32's, CTC sequences by their
decoded strings, labels and maps by agreement; the kind's default budgets apply unless the
user's replace them, and nothing compared (zero samples, a budget no output has) never passes. On each requested provider both models are run: the
compressed one for agreement and placement, the original (where the provider takes it) for
the latency ratio. Samples are streamed; memory does not grow with their number.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxquant.agreement.graph_hints import graph_hints
from onnxquant.agreement import (
    Budget,
    DetectionSettings,
    OutputAgreement,
    add_outputs,
    output_agreements,
    unmeasured_budgets,
)
from onnxquant.agreement.budgets import check, describe
from onnxquant.agreement.tensor import cosine
from onnxquant.calibration.feeds import check_feed, input_specs
from onnxquant.calibration.preprocess import ImagePreprocess
from onnxquant.calibration.sources import open_for_model
from onnxquant.errors import (
    BudgetExceededError,
    CalibrationDataError,
    ExecutionProviderError,
    ModelError,
    OnnxQuantError,
    UsageError,
)
from onnxquant.host import cpu_mismatch, host_cpu
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
    simulated,
)
from onnxquant.recipe import recipe_of
from onnxquant.shapes import fix_input_shapes, has_free_dims

ProgressCallback = Callable[[int, int | None], None]
# Below this cosine to the CPU's fp32 outputs on any sample, the original itself runs differently
# on the provider (fp16 arithmetic stays far above it), and the report says so.
ORIGINAL_DISAGREES_BELOW = 0.99


# A user's metric scores one sample's outputs (name -> value), optionally with its inputs;
# higher is better. Its mean over the samples is compared between fp32 and the compressed model.
SampleMetric = Callable[..., float]


def load_metric(spec: str) -> tuple[str, SampleMetric]:
    """``module:function`` (module importable, or a .py file path) -> the function; UsageError otherwise."""
    module_name, sep, function = spec.rpartition(":")
    if not sep or not module_name or not function:
        raise UsageError(f"metric {spec!r} is not MODULE:FUNCTION")
    try:
        if module_name.endswith(".py"):
            loader_spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if loader_spec is None or loader_spec.loader is None:
                raise ImportError(f"cannot load {module_name}")
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            added = os.getcwd() not in sys.path
            if added:
                sys.path.insert(0, os.getcwd())  # a metric module beside the user, as `python -m` would find it
            try:
                module = importlib.import_module(module_name)
            finally:
                if added:
                    sys.path.remove(os.getcwd())
    except Exception as exc:  # the user's module: any error in it is theirs to see, in one line
        raise UsageError(f"metric {spec!r}: cannot import {module_name}: {exc}") from exc
    fn = getattr(module, function, None)
    if not callable(fn):
        raise UsageError(f"metric {spec!r}: {module_name} has no function {function!r}")
    return spec, fn


def _metric_name(metric: str | SampleMetric) -> str:
    if isinstance(metric, str):
        return metric
    return f"{getattr(metric, '__module__', '?')}:{getattr(metric, '__qualname__', type(metric).__name__)}"


def _takes_inputs(fn: SampleMetric) -> bool:
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    except (TypeError, ValueError):
        return False
    return len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


@dataclass
class MetricAgreement:
    """A user's per-sample score on fp32 and on the compressed outputs: means and their drop."""

    name: str
    fn: SampleMetric
    samples: int = 0
    fp32_sum: float = 0.0
    compressed_sum: float = 0.0
    error: str | None = None

    def score(self, outputs: dict[str, Any], inputs: dict[str, np.ndarray]) -> float | None:
        try:
            value = self.fn(outputs, inputs) if _takes_inputs(self.fn) else self.fn(outputs)
            value = float(value)
        except Exception as exc:  # the user's code failing is reported, not a crash of ours
            self.error = self.error or f"metric {self.name} failed: {type(exc).__name__}: {exc}"
            return None
        if not math.isfinite(value):
            self.error = self.error or f"metric {self.name} returned {value}"
            return None
        return value

    def add(self, reference: float | None, compressed: dict[str, Any], inputs: dict[str, np.ndarray]) -> None:
        got = self.score(compressed, inputs)
        if reference is None or got is None:
            return
        self.samples += 1
        self.fp32_sum += reference
        self.compressed_sum += got

    def to_dict(self, budget: Budget) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "samples": self.samples}
        drop = None
        if self.samples:
            fp32, comp = self.fp32_sum / self.samples, self.compressed_sum / self.samples
            drop = fp32 - comp
            out.update({"fp32": round(fp32, 6), "compressed": round(comp, 6), "drop": round(drop, 6)})
        if self.error:
            out["error"] = self.error
        limit = budget.metric_drop()
        if limit is not None:
            result = check("max_metric_drop", "drop", drop, limit[0], limit[1])
            if result["passed"] is None:
                result["passed"] = False  # a metric that scored nothing cannot pass
            out["checks"] = [result]
        return out


@dataclass
class ModelRun:
    """One model on one provider."""

    loaded: bool = False
    error: str | None = None
    placement: dict[str, Any] | None = None
    latencies_ms: list[float] = field(default_factory=list)
    # the original's outputs here against the fp32 reference on the CPU, per sample (providers
    # other than the CPU): a provider that already changes fp32's results is not the compression
    cpu_cosines: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"loaded": self.loaded}
        if self.error:
            out["error"] = self.error
        if self.placement is not None:
            out["placement"] = self.placement
        if self.cpu_cosines:
            out["cosine_to_cpu"] = {"mean": round(float(np.mean(self.cpu_cosines)), 6),
                                    "min": round(min(self.cpu_cosines), 6)}
        if self.latencies_ms:
            out["latency_ms"] = {"median": round(statistics.median(self.latencies_ms), 3),
                                 "p90": round(_percentile(self.latencies_ms, 90), 3),
                                 "runs": len(self.latencies_ms)}
        return out

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.latencies_ms) if self.latencies_ms else None


@dataclass(frozen=True)
class OutputSettings:
    """How outputs are read: kinds the user fixed, detection thresholds, the CTC blank, a metric."""

    kinds: dict[str, str] = field(default_factory=dict)  # output name -> kind (else detected)
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    ctc_blank: int | None = None  # None: detected per output (agreement/sequence.py, detect_blank)
    metric: str | SampleMetric | None = None  # "module:function", or the function itself (Python)

    def __post_init__(self) -> None:
        if self.ctc_blank is not None and (isinstance(self.ctc_blank, bool) or not isinstance(self.ctc_blank, int)
                                           or self.ctc_blank < 0):
            raise UsageError(f"ctc blank must be a whole number at least 0, got {self.ctc_blank!r}")
        d = self.detection
        for name in ("score_threshold", "nms_iou", "match_iou"):
            value = getattr(d, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise UsageError(f"detection {name.replace('_', ' ')} must be between 0 and 1, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"kinds": dict(self.kinds), "detection": self.detection.to_dict(), "ctc_blank": self.ctc_blank,
                "metric": _metric_name(self.metric) if self.metric is not None else None}


@dataclass
class ProviderReport:
    ep: str
    available: bool = True
    unavailable_reason: str | None = None
    fixed_shapes: dict[str, list[int]] | None = None
    original: ModelRun = field(default_factory=ModelRun)
    compressed: ModelRun = field(default_factory=ModelRun)
    outputs: dict[str, OutputAgreement] = field(default_factory=dict)
    metric: MetricAgreement | None = None
    samples: int = 0  # samples compared on this provider
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # default budgets that could not be measured
    budget: Budget = field(default_factory=Budget)

    def latency_ratio(self) -> float | None:
        a, b = self.compressed.median_ms, self.original.median_ms
        return a / b if a is not None and b else None

    def to_dict(self) -> dict[str, Any]:
        if not self.available:
            return {"ep": self.ep, "available": False, "reason": self.unavailable_reason}
        ratio = self.latency_ratio()
        out: dict[str, Any] = {
            "ep": self.ep, "available": True, "samples": self.samples,
            "original": self.original.to_dict(), "compressed": self.compressed.to_dict(),
            "agreement": {name: a.to_dict(self.budget) for name, a in self.outputs.items()},
            "latency_ratio": round(ratio, 4) if ratio is not None else None,
            "failures": self.failures,
            "notes": self.notes,
        }
        if self.metric is not None:
            out["metric"] = self.metric.to_dict(self.budget)
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
    settings: OutputSettings = field(default_factory=OutputSettings)

    @property
    def failures(self) -> list[str]:
        return [f"{p.ep}: {f}" for p in self.providers for f in p.failures]

    @property
    def unavailable(self) -> list[str]:
        return [p.ep for p in self.providers if not p.available]

    @property
    def passed(self) -> bool:
        return not self.failures and not self.unavailable and self.samples > 0

    def verdict_error(self) -> OnnxQuantError | None:
        """The error a failed verdict exits with: a provider that is not available (exit 7) before
        a budget that failed (exit 6); None when every budget holds."""
        if self.unavailable:
            return ExecutionProviderError(f"execution provider(s) not available: {', '.join(self.unavailable)}")
        if self.failures:
            return BudgetExceededError(f"{len(self.failures)} budget check(s) failed; first: {self.failures[0]}")
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "original": self.original,
            "compressed": self.compressed,
            "size": {"original": self.size_original, "compressed": self.size_compressed,
                     "ratio": round(self.size_compressed / max(self.size_original, 1), 4)},
            "samples": self.samples,
            "budget": self.budget.given(),
            "default_budgets": self.budget.defaults,
            "settings": self.settings.to_dict(),
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
        raise ModelError(f"{path}: fixing input shapes of a model over 2 GiB is not supported")
    return serialize(fix_input_shapes(model, fixed))


def _flat_cosine(reference: list[Any], outputs: list[Any]) -> float:
    """Cosine of all float outputs laid end to end (1.0 when both are all zeros)."""
    pairs = [(np.asarray(r, np.float64).ravel(), np.asarray(o, np.float64).ravel()) for r, o in zip(reference, outputs)
             if isinstance(r, np.ndarray) and np.issubdtype(r.dtype, np.floating)]
    if not pairs:
        return 1.0
    return cosine(np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs]))


def _timed_run(session: Any, feed: dict[str, np.ndarray], times: list[float]) -> list[np.ndarray]:
    start = time.perf_counter()
    result = session.run(None, feed)
    times.append((time.perf_counter() - start) * 1000.0)
    return result


class _ProviderRun:
    """Both models' sessions on one provider, fed sample by sample."""

    def __init__(self, report: ProviderReport, original: Any, compressed: Any,
                 shapes: dict[str, tuple[int, ...]] | None, settings: OutputSettings,
                 metric: tuple[str, SampleMetric] | None, original_is_reference: bool = False,
                 hints: dict[str, str] | None = None):
        self.report, self.original, self.compressed, self.shapes = report, original, compressed, shapes
        # the CPU provider's original session is the reference, which has just run each sample
        # (untimed) when it is timed: the compressed one runs it untimed too (see ``feed``)
        self.original_is_reference = original_is_reference
        self.settings = settings
        self.hints = hints or {}  # graph_hints of the original model
        self.broken = compressed is None
        if metric is not None:
            report.metric = MetricAgreement(*metric)

    def _start(self, names: list[str], reference: list[Any], sample: dict[str, np.ndarray]) -> None:
        """One agreement per output; boxes/scores pairs and raw detection heads found from the
        first fp32 outputs (and the sample's image size)."""
        self.report.outputs.update(output_agreements(
            names, reference, sample, kinds=self.settings.kinds, detection=self.settings.detection,
            ctc_blank=self.settings.ctc_blank, hints=self.hints))

    def feed(self, index: int, sample: dict[str, np.ndarray], reference: list[Any], names: list[str],
             reference_score: float | None) -> None:
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
            # A model run a second time on a sample finds it warm (input, caches, allocations): 20-30% faster
            # on a sub-millisecond model, so timing the reference's repeat against the compressed model's
            # first run made a model timed against itself read 1.2-1.3x. Both are timed on a repeat where
            # the original is the reference, and each goes first on every other sample (the second of a
            # pair finds the input warm).
            if index == 0:  # warm-up runs are not timed
                self.compressed.run(None, sample)
                if self.original is not None:
                    self.original.run(None, sample)
            elif self.original_is_reference:
                self.compressed.run(None, sample)
            original = None
            original_first = index % 2 == 1
            if self.original is not None and original_first:
                original = _timed_run(self.original, sample, self.report.original.latencies_ms)
            got = _timed_run(self.compressed, sample, self.report.compressed.latencies_ms)
            if self.original is not None and not original_first:
                original = _timed_run(self.original, sample, self.report.original.latencies_ms)
            if original is not None and self.report.ep != "cpu":
                self.report.original.cpu_cosines.append(_flat_cosine(reference, original))
        except Exception as exc:  # a provider failing at run time is a finding, not a crash
            self.report.failures.append(f"compressed model failed to run on sample {index}: {str(exc).splitlines()[0]}")
            self.broken = True
            return
        if not self.report.outputs:
            self._start(names, reference, sample)
        add_outputs(self.report.outputs, names, reference, got, sample)
        if self.report.metric is not None:
            self.report.metric.add(reference_score, dict(zip(names, got)), sample)
        self.report.samples += 1

    def extra_latency(self, sample: dict[str, np.ndarray], runs: int) -> None:
        if self.broken:
            return
        # interleaved, each model first every other time (see ``feed``): a neighbour's load and the
        # warm second run fall on both alike
        models = [(self.compressed, self.report.compressed.latencies_ms)]
        if self.original is not None:
            models.append((self.original, self.report.original.latencies_ms))
        turn = 0
        while any(len(times) < runs for _, times in models):
            for session, times in (models if turn % 2 == 0 else models[::-1]):
                if len(times) < runs:
                    _timed_run(session, sample, times)
            turn += 1


def validate(
    original: str | os.PathLike,
    compressed: str | os.PathLike,
    holdout: Any,
    providers: tuple[str, ...] = ("cpu",),
    budget: Budget | None = None,
    *,
    preprocess: ImagePreprocess | None = None,
    max_samples: int | None = None,
    latency_runs: int = 10,
    threads: int | None = None,
    progress: ProgressCallback | None = None,
    settings: OutputSettings | None = None,
) -> ValidationReport:
    """Run both models on ``providers`` over every sample of ``holdout`` (at most ``max_samples``)
    and measure the compressed one against the original, output by output, by its kind.

    Providers that cannot be loaded are reported as unavailable (never replaced by the CPU).
    Budget misses are listed in ``report.failures``; nothing is raised for them. Without a
    ``budget``, each output kind's default budgets apply (``Budget(defaults=False)``: none).
    """
    budget = budget or Budget()
    settings = settings or OutputSettings()
    if not providers:
        raise UsageError("no execution provider given")
    unknown = [ep for ep in providers if ep not in PROVIDERS]
    if unknown:
        raise UsageError(f"unknown execution provider(s) {unknown}; choose from {', '.join(PROVIDERS)}")
    if latency_runs < 1:
        raise UsageError("latency runs must be at least 1")
    if max_samples is not None and (isinstance(max_samples, bool) or max_samples < 1):
        raise UsageError(f"max samples must be at least 1, got {max_samples} (a verdict needs samples to compare)")
    metric = None
    if isinstance(settings.metric, str):
        metric = load_metric(settings.metric)
    elif settings.metric is not None:
        if not callable(settings.metric):
            raise UsageError(f"metric must be MODULE:FUNCTION or a function, got {settings.metric!r}")
        metric = (_metric_name(settings.metric), settings.metric)
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
    unknown_outputs = sorted(set(settings.kinds) - set(out_names))
    if unknown_outputs:
        raise UsageError(f"output kind given for {unknown_outputs}, which the model does not have "
                         f"(outputs: {', '.join(out_names)})")

    hints = graph_hints(original_model)
    source = open_for_model(original_model, holdout, preprocess or ImagePreprocess())
    first = next(iter(source), None)
    if first is None:
        raise CalibrationDataError("no validation samples")
    first = check_feed(first, specs, 0)

    reference, _ = open_session(str(original_path), "cpu", threads)
    boundary = boundary_nodes(compressed_model)
    # Full 8-bit weights measured on a CPU whose u8s8 kernels saturate (or the reverse) say little
    # about the CPU the model was made for: the CPU provider's report says so.
    cpu_note = cpu_mismatch(recipe_of(compressed_model), host_cpu())
    runs: list[_ProviderRun] = []
    reports: list[ProviderReport] = []
    for ep in dict.fromkeys(providers):
        report = ProviderReport(ep, budget=budget)
        reports.append(report)
        if ep == "cpu" and cpu_note:
            report.notes.append(cpu_note)
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
                fp16 = bool(sessions) and bool(report.original.placement and report.original.placement.get("htp_fp16"))
                try:
                    session, placement = open_session(_session_source(model, path, shapes), ep, threads, fp16)
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
        runs.append(_ProviderRun(report, sessions[0], sessions[1], shapes, settings, metric,
                                 original_is_reference=sessions[0] is reference, hints=hints))

    count = 0
    total = min(len(source), max_samples) if max_samples and _has_len(source) else (len(source) if _has_len(source) else None)
    scorer = MetricAgreement(*metric) if metric is not None else None
    for index, sample in enumerate(source):
        if max_samples is not None and index >= max_samples:
            break
        sample = check_feed(sample, specs, index)
        expected = reference.run(None, sample)
        reference_score = scorer.score(dict(zip(out_names, expected)), sample) if scorer is not None else None
        for run in runs:
            run.feed(index, sample, expected, out_names, reference_score)
        count += 1
        if progress is not None:
            progress(count, total)
    for run in runs:
        run.extra_latency(first, latency_runs)
        if scorer is not None and scorer.error and run.report.metric is not None:
            run.report.metric.error = run.report.metric.error or f"on fp32: {scorer.error}"
        _check_budget(run.report, budget, boundary)

    return ValidationReport(
        original=str(original_path), compressed=str(compressed_path),
        size_original=file_size(original_path, original_model),
        size_compressed=file_size(compressed_path, compressed_model),
        samples=count, budget=budget, providers=reports, settings=settings,
    )


def _has_len(source: Any) -> bool:
    try:
        len(source)
    except TypeError:
        return False
    return True


def _check_budget(report: ProviderReport, budget: Budget, boundary: set[str]) -> None:
    """Turn every check into a failure line or a note; nothing compared is never a pass."""
    if not report.compressed.loaded:
        return
    if report.samples == 0:
        if not report.failures:
            report.failures.append("no sample was compared: a verdict needs at least one")
        return
    for name, agreement in report.outputs.items():
        if agreement.kind_hint:
            report.notes.append(f"output {name!r}: {agreement.kind_hint}")
        for c in agreement.checks(budget):
            if c["passed"] is False:
                report.failures.append(f"output {name!r} ({agreement.kind}): {describe(c)}")
            elif c["passed"] is None:
                report.notes.append(f"output {name!r} ({agreement.kind}): default budget {c['budget']} not "
                                    f"checked: {_unmeasured_reason(agreement, c['metric'])}")
    report.failures.extend(unmeasured_budgets(list(report.outputs.values()), budget))
    if report.metric is not None:
        data = report.metric.to_dict(budget)
        if report.metric.error:
            report.failures.append(report.metric.error)
        for c in data.get("checks", []):
            if c["passed"] is False:
                report.failures.append(f"metric {report.metric.name}: {describe(c)}")
    ratio = report.latency_ratio()
    if simulated(report.ep):
        report.notes.append(f"{report.ep} ran on the HTP simulator of this x86-64 host: its latency is the "
                            "simulator's, not a device's")
    if budget.max_latency_ratio is not None:
        if simulated(report.ep):
            report.failures.append(f"latency budget not checked: {report.ep} ran on the HTP simulator here, "
                                   "whose timing says nothing of a device's (measure latency on the device)")
        elif ratio is None:
            report.failures.append("latency ratio unknown (the original does not run on this provider)")
        elif ratio > budget.max_latency_ratio:
            report.failures.append(f"latency ratio {ratio:.3f} > {budget.max_latency_ratio}")
    original = report.original.cpu_cosines
    if original and min(original) < ORIGINAL_DISAGREES_BELOW:
        report.notes.append(f"the original fp32 model already disagrees with itself on the CPU here (cosine "
                            f"{np.mean(original):.4f} on average, {min(original):.4f} at worst, over {len(original)} "
                            f"samples): {report.ep}'s own results differ, not only the compression's")
    if (report.compressed.placement or {}).get("htp_fp16"):
        report.notes.append("QNN's HTP compiled this graph's float ops (such as LSTM, which onnxruntime's QNN EP does "
                            "not run in int8) only in fp16 precision: enable_htp_fp16_precision=1 in the QNN provider "
                            "options (devices default to it; this run also set soc_model=60)")
    if budget.require_on_ep and report.ep != "cpu" and report.compressed.placement is not None:
        fallback = report.compressed.placement["fallback_nodes"]
        if fallback:
            ops = report.compressed.placement["fallback_ops"]
            report.failures.append(f"{fallback} node(s) fell back to the CPU: {ops}")


def _unmeasured_reason(agreement: OutputAgreement, metric: str) -> str:
    if agreement.kind == "detection" and metric in ("f1", "recall"):
        return "the original model made no detection on these samples (give samples with objects)"
    return f"{metric} could not be measured on this output"
