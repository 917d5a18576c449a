"""The ``validate`` command and the text summary of a validation (also printed by ``compress``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from onnxquant.agreement.text import checks_text, figures_text, kind_text
from onnxquant.calibration.collector import MAX_THREADS
from onnxquant.cli.command import Command
from onnxquant.cli.options import image_options, output_options, preprocess_overrides
from onnxquant.cli.output import emit, size_text
from onnxquant.cli.progress import progress
from onnxquant.errors import UsageError
from onnxquant.providers import PROVIDERS
from onnxquant.recipe import recipe_for_target


def _output_lines(name: str, a: dict[str, Any]) -> list[str]:
    lines = [f"  {name} ({kind_text(a)}): {figures_text(a)}"]
    checks = checks_text(a.get("checks"))
    if checks:
        lines.append("    budgets: " + "; ".join(checks))
    return lines


def _budget_line(report: dict[str, Any]) -> str:
    given = ", ".join(f"{k} {v}" for k, v in report.get("budget", {}).items())
    if report.get("default_budgets", True):
        return "budgets: defaults per output kind" + (f"; given: {given}" if given else "")
    return "budgets: " + (f"given only: {given}" if given else "none (--no-default-budgets): report only")


def validation_summary(report: dict[str, Any]) -> str:
    size = report["size"]
    lines = [
        f"original:   {report['original']} ({size_text(size['original'])})",
        f"compressed: {report['compressed']} ({size_text(size['compressed'])}, {size['ratio']:.2f}x the size)",
        f"samples: {report['samples']}",
        _budget_line(report),
    ]
    for p in report["providers"]:
        if not p["available"]:
            lines.append(f"[{p['ep']}] unavailable: {p['reason']}")
            continue
        c, o = p["compressed"], p["original"]
        if not c["loaded"]:
            lines.append(f"[{p['ep']}] compressed model does not load: {c.get('error')}")
            continue
        place = c.get("placement") or {}
        where = (f"{place.get('nodes_on_ep', 0)} nodes on the provider, {place.get('fallback_nodes', 0)} fell back"
                 if p["ep"] != "cpu" else "on the CPU")
        lat = c.get("latency_ms")
        text = f"[{p['ep']}] {where}"
        if lat:
            text += f"; latency median {lat['median']:.2f} ms, p90 {lat['p90']:.2f} ms"
        if p["latency_ratio"] is not None:
            text += f" ({p['latency_ratio']:.2f}x the original's)"
        elif not o["loaded"]:
            text += "; the original does not run on this provider"
        lines.append(text)
        if p.get("fixed_shapes"):
            lines.append(f"  input shapes fixed to {p['fixed_shapes']}")
        if place.get("fallback_ops"):
            lines.append(f"  fell back: {place['fallback_ops']}")
        for name, a in p["agreement"].items():
            lines += _output_lines(name, a)
        metric = p.get("metric")
        if metric:
            scores = (f"fp32 {metric['fp32']:.4f}, compressed {metric['compressed']:.4f}, drop {metric['drop']:.4f}"
                      if "drop" in metric else "not measured")
            lines.append(f"  metric {metric['name']}: {scores}")
        for note in p.get("notes", []):
            lines.append(f"  note: {note}")
    for failure in report["failures"]:
        lines.append(f"FAIL {failure}")
    lines.append("PASS" if report["passed"] else "not passed")
    return "\n".join(lines)


def budget_options(command: Any) -> Any:
    """Budget flags: each overrides the default of that name for every output that has the metric.

    Each flag is its budget's name (the job's [validate] key, the report's budget key) with dashes.
    """
    options = [
        ("min_top1", "classifier outputs: top-1 agreement with fp32"),
        ("min_top5", "classifier outputs: fp32's top-1 class among int8's top 5"),
        ("max_kl", "classifier outputs: mean KL(fp32 || int8) of the class distributions"),
        ("min_cosine", "mean cosine similarity of every float output"),
        ("min_sqnr_db", "signal-to-quantization-noise ratio in dB"),
        ("max_abs_error", "largest absolute difference of any output value"),
        ("min_channel_cosine", "worst channel's cosine along the feature axis"),
        ("min_channel_sqnr_db", "worst channel's SQNR in dB along the feature axis"),
        ("min_f1", "detection outputs: F1 of int8 detections against fp32's"),
        ("min_recall", "detection outputs: share of fp32 detections int8 finds"),
        ("min_string_agreement", "sequence outputs: decoded strings equal to fp32's"),
        ("max_cer", "sequence outputs: character error rate against fp32's strings"),
        ("min_label_agreement", "label and map outputs: agreement rate"),
        ("min_decision_agreement", "binary outputs: decisions at 0.5 equal to fp32's"),
        ("max_probability_change", "binary outputs: largest absolute probability change"),
        ("max_metric_drop", "--metric: fp32 mean score minus int8 mean score"),
        ("max_latency_ratio", "compressed / original median latency on each provider"),
    ]
    for dest, text in reversed(options):
        command = click.option("--" + dest.replace("_", "-"), dest, type=float, help=f"Budget: {text}.")(command)
    return command


# Old spellings, accepted with a note until the next release.
RENAMED = {"--data": "--holdout", "--min-sqnr": "--min-sqnr-db", "--min-channel-sqnr": "--min-channel-sqnr-db",
           "--no-budgets": "--no-default-budgets"}


def _detection_objectness(value: str) -> bool | None:
    return {"auto": None, "yes": True, "no": False}[value]


@click.command(cls=Command, renamed=RENAMED)
@click.argument("original", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("compressed", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--holdout", type=click.Path(path_type=Path), required=True, help="Folder of held-out .npz samples or images.")
@click.option("--ep", "eps", multiple=True, type=click.Choice(PROVIDERS), help="Execution provider; repeatable (default cpu).")
@budget_options
@click.option("--require-on-ep", is_flag=True, help="Budget: no node but the input/output Q/DQ may fall back to the CPU.")
@click.option("--default-budgets/--no-default-budgets", default=True,
              help="Each output kind's default budgets (default on); off: only the budgets you give (none: report only).")
@click.option("--output-kind", "output_kinds", multiple=True, metavar="NAME=KIND",
              help="Read output NAME as classification|embedding|detection|sequence|regression|labels "
                   "(default: detected from its type and shape); repeatable.")
@click.option("--metric", help="Your score of one sample's outputs, MODULE:FUNCTION (or FILE.py:FUNCTION); "
                               "its mean drop from fp32 is budgeted.")
@click.option("--ctc-blank", type=int, default=None,
              help="Sequence outputs: index of the CTC blank (default: the first or last symbol, whichever is the best one at more steps of the fp32 output).")
@click.option("--detection-score", type=float, default=0.25, show_default=True,
              help="Detection outputs: score a detection needs.")
@click.option("--detection-nms-iou", type=float, default=0.45, show_default=True,
              help="Detection outputs: IoU above which same-class boxes are suppressed.")
@click.option("--detection-objectness", type=click.Choice(["auto", "yes", "no"]), default="auto", show_default=True,
              help="Detection outputs: is column 5 an objectness score (auto: yes when candidates come first).")
@click.option("--max-samples", type=int, help="Use at most this many samples (default: all).")
@click.option("--latency-runs", type=int, default=10, show_default=True, help="Timed runs per model and provider, at least.")
@click.option("--threads", type=click.IntRange(0, MAX_THREADS), help="onnxruntime intra-op threads (default: onnxruntime's choice).")
@image_options
@output_options("Print the report as JSON.", "No progress bar and no report (the exit code tells).")
def validate(original: Path, compressed: Path, holdout: Path, eps: tuple[str, ...], require_on_ep: bool,
             default_budgets: bool, output_kinds: tuple[str, ...], metric: str | None, ctc_blank: int | None,
             detection_score: float, detection_nms_iou: float, detection_objectness: str,
             max_samples: int | None, latency_runs: int, threads: int | None, as_json: bool, quiet: bool,
             debug: bool, **options: Any) -> None:
    """Compare COMPRESSED with ORIGINAL on each execution provider, output by output.

    Each output's kind (classification, embedding, detection, sequence, regression, labels)
    decides its figures and its default budgets (see the README); flags override them.
    """
    from onnxquant.agreement import Budget, DetectionSettings, parse_kind_overrides
    from onnxquant.agreement.budgets import OUTPUT_BUDGETS
    from onnxquant.calibration.preprocess import ImagePreprocess
    from onnxquant.validate import OutputSettings
    from onnxquant.validate import validate as run_validate

    budget_names = (*OUTPUT_BUDGETS, "max_metric_drop", "max_latency_ratio")
    budgets = {name: options.pop(name) for name in budget_names if name in options}
    budget = Budget(**budgets, require_on_ep=require_on_ep, defaults=default_budgets)
    try:
        kinds = parse_kind_overrides(output_kinds)
    except ValueError as exc:
        raise UsageError(f"--output-kind: {exc}") from exc
    settings = OutputSettings(kinds=kinds, ctc_blank=ctc_blank, metric=metric, detection=DetectionSettings(
        score_threshold=detection_score, nms_iou=detection_nms_iou,
        objectness=_detection_objectness(detection_objectness)))
    preprocess: ImagePreprocess = recipe_for_target("cpu").with_overrides(preprocess=preprocess_overrides(options)).preprocess
    with progress(quiet or as_json, "validating") as update:
        report = run_validate(original, compressed, holdout, eps or ("cpu",), budget, preprocess=preprocess,
                              max_samples=max_samples, latency_runs=latency_runs, threads=threads, progress=update,
                              settings=settings)
    emit(report.to_dict(), as_json, quiet, validation_summary)
    error = report.verdict_error()
    if error is not None:
        raise error
