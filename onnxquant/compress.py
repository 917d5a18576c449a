"""The one-step pipeline: a job file in, a validated edge bundle out.

load -> prune -> calibrate -> quantize -> measure -> validate on each listed provider -> package.
It stops at the first budget that fails (BudgetExceededError, carrying the report so far) and
then writes nothing: a bundle exists only for a model that met every budget.

The job file is a recipe (see ``onnxquant.recipe``) with the job's own keys added::

    model = "net.onnx"          # paths are relative to the job file
    calib_data = "calib"
    holdout = "holdout"         # default: calib_data
    output = "net-bundle.zip"   # .zip, or a folder
    max_drop = 0.01             # optional: mixed precision (see quantize)
    [validate]                  # budgets: each output kind's defaults, and these over them
    providers = ["cpu", "qnn"]
    min_top1 = 0.85
    [package]
    ort_optimization = "all"
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from onnxquant.agreement import DROP_BY as AGREEMENTS
from onnxquant.agreement import Budget, DetectionSettings, parse_kind_overrides
from onnxquant.calibration.collector import MAX_THREADS, memory_budget, session_threads
from onnxquant.errors import BudgetExceededError, ExecutionProviderError, UsageError
from onnxquant.outputs import scratch
from onnxquant.ort_format import ORT_LEVELS
from onnxquant.providers import PROVIDERS
from onnxquant.recipe import Recipe, build_section, read_toml, recipe_from_dict
from onnxquant.units import parse_size
from onnxquant.validate import OutputSettings, ProgressCallback, ValidationReport, load_metric

# Per-layer error (a diagnosis for the report, not the verdict) reads at most this many held-out
# samples unless [validate] max_samples says otherwise; validation itself reads them all.
LAYER_ERROR_SAMPLES = 64

# Called at the start of each step with its description; returns the step's progress callback.
StepProgress = Callable[[str], ProgressCallback | None]


@dataclass(frozen=True)
class ValidateSettings:
    """The job's [validate] table: providers, budgets (as ``onnxquant validate``'s flags), output reading."""

    providers: tuple[str, ...] = ("cpu",)
    min_top1: float | None = None
    min_top5: float | None = None
    max_kl: float | None = None
    min_cosine: float | None = None
    min_sqnr_db: float | None = None
    max_abs_error: float | None = None
    min_channel_cosine: float | None = None
    min_channel_sqnr_db: float | None = None
    min_f1: float | None = None
    min_recall: float | None = None
    min_string_agreement: float | None = None
    max_cer: float | None = None
    min_label_agreement: float | None = None
    min_decision_agreement: float | None = None
    max_probability_change: float | None = None
    max_metric_drop: float | None = None
    max_latency_ratio: float | None = None
    require_on_ep: bool = False
    default_budgets: bool = True  # false: only the budgets written here are checked
    output_kinds: dict[str, str] | None = None  # output name -> kind, as --output-kind
    metric: str | None = None  # "module:function", as --metric
    ctc_blank: int | None = None  # None: detected per output
    detection_score: float = 0.25
    detection_nms_iou: float = 0.45
    detection_objectness: bool | None = None
    latency_runs: int = 10
    max_samples: int | None = None  # None: every held-out sample
    threads: int | None = None

    def __post_init__(self) -> None:
        if not self.providers:
            raise UsageError("job [validate]: providers must list at least one execution provider")
        unknown = [p for p in self.providers if p not in PROVIDERS]
        if unknown:
            raise UsageError(f"job [validate]: unknown provider(s) {unknown}; choose from {', '.join(PROVIDERS)}")
        if isinstance(self.latency_runs, bool) or not isinstance(self.latency_runs, int) or self.latency_runs < 1:
            raise UsageError("job [validate]: latency_runs must be a whole number at least 1")
        if self.max_samples is not None and (isinstance(self.max_samples, bool) or not isinstance(self.max_samples, int)
                                             or self.max_samples < 1):
            raise UsageError("job [validate]: max_samples must be a whole number at least 1 "
                             "(a verdict needs samples to compare)")
        if self.metric is not None and not isinstance(self.metric, str):
            raise UsageError("job [validate]: metric must be \"module:function\"")
        if self.detection_objectness is not None and not isinstance(self.detection_objectness, bool):
            raise UsageError("job [validate]: detection_objectness must be true or false")
        try:
            self.budget()  # every budget value checked once, where budgets are built
            self.output_settings()
            if self.metric is not None:
                load_metric(self.metric)  # a metric that cannot be imported fails before anything runs
        except UsageError as exc:
            raise UsageError(f"job [validate]: {exc}") from exc

    def budget(self) -> Budget:
        names = [f.name for f in fields(Budget) if f.name not in ("defaults",)]
        return Budget(**{name: getattr(self, name) for name in names}, defaults=self.default_budgets)

    def output_settings(self) -> OutputSettings:
        if self.output_kinds is not None and not isinstance(self.output_kinds, dict):
            raise UsageError("output_kinds must be a table of output name = kind")
        try:
            kinds = parse_kind_overrides(self.output_kinds)
        except ValueError as exc:
            raise UsageError(f"output_kinds: {exc}") from exc
        return OutputSettings(kinds=kinds, ctc_blank=self.ctc_blank, metric=self.metric, detection=DetectionSettings(
            score_threshold=self.detection_score, nms_iou=self.detection_nms_iou, objectness=self.detection_objectness))


@dataclass(frozen=True)
class PackageSettings:
    ort_optimization: str | None = None  # None: "all" for target cpu, "basic" for NPU targets
    arm: bool = True
    type_reduction: bool = False
    html_beside: bool = True  # also write BUNDLE.report.html next to a .zip bundle

    def __post_init__(self) -> None:
        if self.ort_optimization is not None and self.ort_optimization not in ORT_LEVELS:
            raise UsageError(f"job [package]: ort_optimization {self.ort_optimization!r} unknown; "
                             f"choose from {', '.join(ORT_LEVELS)}")


@dataclass(frozen=True)
class CompressJob:
    model: Path
    calib_data: Path
    output: Path
    recipe: Recipe = field(default_factory=Recipe)
    holdout: Path | None = None
    max_drop: float | None = None
    drop_by: str = "cosine"
    validate: ValidateSettings = field(default_factory=ValidateSettings)
    package: PackageSettings = field(default_factory=PackageSettings)
    layer_errors: bool = True  # measure per-layer error for the report (one pass over the holdout)
    text: str | None = None  # the job file as written, kept in the bundle
    threads: int | None = None  # onnxruntime threads while calibrating (outputs do not depend on it)
    max_memory: int | None = None  # bytes of activations calibration may hold per run
    source: Path | None = None  # the job file itself (an input no output may overwrite)

    @property
    def html(self) -> Path | None:
        """The HTML report written beside a .zip bundle."""
        if self.package.html_beside and self.output.suffix.lower() == ".zip":
            return self.output.with_name(self.output.stem + ".report.html")
        return None


_JOB_KEYS = ("model", "calib_data", "holdout", "output", "max_drop", "drop_by", "layer_errors", "threads", "max_memory")
_JOB_SECTIONS = {"validate": ValidateSettings, "package": PackageSettings}


def _section(cls: type, values: Any, name: str) -> Any:
    if not isinstance(values, dict):
        raise UsageError(f"job: [{name}] must be a table")
    return build_section(cls, values, f"job [{name}]")


def job_from_dict(data: dict[str, Any], base_dir: Path, text: str | None = None,
                  target: str | None = None) -> CompressJob:
    """A job from parsed TOML; relative paths are taken from ``base_dir``."""
    for key in ("model", "calib_data", "output"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise UsageError(f"job: {key} = \"PATH\" is required")

    def path(key: str) -> Path | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise UsageError(f"job: {key} must be a path string")
        return Path(os.path.normpath(base_dir / value))

    recipe = recipe_from_dict({k: v for k, v in data.items() if k not in _JOB_KEYS and k not in _JOB_SECTIONS}, target)
    max_drop = data.get("max_drop")
    if max_drop is not None and (isinstance(max_drop, bool) or not isinstance(max_drop, (int, float))
                                 or not 0 <= max_drop < float("inf")):
        raise UsageError("job: max_drop must be a finite number at least 0")
    drop_by = data.get("drop_by", "cosine")
    if drop_by not in AGREEMENTS:
        raise UsageError(f"job: drop_by must be one of {', '.join(AGREEMENTS)}")
    layer_errors = data.get("layer_errors", True)
    if not isinstance(layer_errors, bool):
        raise UsageError("job: layer_errors must be true or false")
    threads = data.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                or not 0 <= threads <= MAX_THREADS):
        raise UsageError(f"job: threads must be a whole number in 0..{MAX_THREADS}")
    max_memory = data.get("max_memory")
    if max_memory is not None:
        if isinstance(max_memory, bool) or not isinstance(max_memory, (str, int)):
            raise UsageError("job: max_memory must be a size like \"512M\" or a number of bytes")
        try:
            max_memory = parse_size(max_memory)
        except ValueError as exc:
            raise UsageError(f"job: max_memory: {exc}") from exc
    return CompressJob(
        model=path("model"), calib_data=path("calib_data"), output=path("output"), recipe=recipe,
        holdout=path("holdout"), max_drop=float(max_drop) if max_drop is not None else None, drop_by=drop_by,
        validate=_section(ValidateSettings, data.get("validate", {}), "validate"),
        package=_section(PackageSettings, data.get("package", {}), "package"),
        layer_errors=layer_errors, text=text, threads=threads, max_memory=max_memory)


def load_job(path: str | os.PathLike, target: str | None = None) -> CompressJob:
    path = Path(path)
    text, data = read_toml(path, "job")
    return replace(job_from_dict(data, path.parent, text, target), source=path)


@dataclass
class CompressResult:
    output: Path
    report: dict[str, Any]
    files: list[dict[str, Any]]
    html: Path | None
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        validation = self.report["validation"]
        return {"output": str(self.output), "html": str(self.html) if self.html else None, "files": self.files,
                "passed": validation["passed"], "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
                "report": self.report}


class _Steps:
    def __init__(self, progress: StepProgress | None) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self._name: str | None = None
        self._started = 0.0

    def begin(self, name: str, description: str) -> ProgressCallback | None:
        self.end()
        self._name, self._started = name, time.perf_counter()
        return self.progress(description) if self.progress is not None else None

    def end(self) -> None:
        if self._name is not None:
            self.seconds[self._name] = self.seconds.get(self._name, 0.0) + time.perf_counter() - self._started
            self._name = None


def compress(job: CompressJob, progress: StepProgress | None = None) -> CompressResult:
    """Run ``job`` end to end; the bundle is written only when every budget holds."""
    from onnxquant.outputs import all_or_nothing, data_files, model_files, refuse_aliasing

    def inputs() -> Iterator[Path | None]:
        yield job.source
        yield from model_files(job.model)
        yield from data_files(job.calib_data)
        if job.holdout:
            yield from data_files(job.holdout)

    refuse_aliasing(inputs(), [job.output, job.html])
    with session_threads(job.threads), memory_budget(job.max_memory), all_or_nothing():
        return _compress(job, progress)


def _compress(job: CompressJob, progress: StepProgress | None) -> CompressResult:
    from onnxquant.api import diagnose, quantize
    from onnxquant.inspect_model import inspect_model
    from onnxquant.model_io import write_atomic
    from onnxquant.package import package
    from onnxquant.report.build import activation_report, build_report
    from onnxquant.report.html import render_html
    from onnxquant.pipeline.run_data import RunData

    steps = _Steps(progress)
    holdout = job.holdout or job.calib_data
    with scratch() as tmp:
        compressed = Path(tmp) / f"{job.model.stem}.int8.onnx"
        update = steps.begin("quantize", "pruning and calibrating" if job.recipe.prune.enabled else "calibrating")
        run = RunData(calib_data=job.calib_data, holdout=job.holdout, drop_by=job.drop_by, progress=update,
                      output_kinds=job.validate.output_settings().kinds or None)  # the search reads outputs as validate
        result = quantize(job.model, recipe=job.recipe, output=compressed, max_drop=job.max_drop, diagnostics=True,
                          run=run)
        errors = None
        if job.layer_errors:
            update = steps.begin("measure", "measuring per-layer error")
            errors = [e.to_dict() for e in diagnose(result, holdout, job.validate.max_samples or LAYER_ERROR_SAMPLES, update)]
        activations = activation_report(result.stats, result.model, result.reference)
        result.stats = result.reference = None  # free the float copy before validation sessions open
        validation = _validate_each(job, compressed, holdout, steps)
        steps.end()
        report = build_report(inspect_model(compressed), result.model, compressed.name,
                              original=inspect_model(job.model), quantization=result.to_dict(),
                              validation=validation.to_dict(), layer_errors=errors, activations=activations)
        failures, unavailable = validation.failures, validation.unavailable
        if unavailable:
            raise _failed(ExecutionProviderError(f"execution provider(s) not available: {', '.join(unavailable)}; "
                                                 "nothing was written"), report)
        if failures:
            raise _failed(BudgetExceededError(f"budget failed: {failures[0]}; nothing was written"), report)
        steps.begin("package", "packaging")
        bundle = package(compressed, job.output, report=report, recipe_text=job.text,
                         ort_optimization=job.package.ort_optimization, arm=job.package.arm,
                         type_reduction=job.package.type_reduction)
        html = job.html
        if html is not None:  # a failure here takes the bundle back too (one all-or-nothing)
            write_atomic(html, render_html(report).encode("utf-8"))
        steps.end()
    return CompressResult(output=job.output, report=report, files=bundle.files, html=html, seconds=steps.seconds)


def _failed(error: Exception, report: dict[str, Any]) -> Exception:
    error.report = report  # type: ignore[attr-defined]  # for --json and Python callers
    return error


def _validate_each(job: CompressJob, compressed: Path, holdout: Path, steps: _Steps) -> ValidationReport:
    """Validate provider by provider, in the listed order, stopping at the first that fails."""
    from onnxquant.validate import validate

    settings, budget = job.validate, job.validate.budget()
    merged: ValidationReport | None = None
    for ep in dict.fromkeys(settings.providers):
        update = steps.begin("validate", f"validating on {ep}")
        report = validate(job.model, compressed, holdout, (ep,), budget, preprocess=job.recipe.preprocess,
                          max_samples=settings.max_samples, latency_runs=settings.latency_runs,
                          threads=settings.threads, progress=update, settings=settings.output_settings())
        if merged is None:
            merged = report
        else:
            merged.providers.extend(report.providers)
        if not report.passed:
            break
    assert merged is not None  # providers is never empty (checked in ValidateSettings)
    return merged
