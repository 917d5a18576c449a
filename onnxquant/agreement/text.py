"""One output's figures and checks in words, for the text summary and the HTML report alike.

Reads the JSON form (``OutputAgreement.to_dict``), which may come from a file: any value of
any type prints as text and never raises.
"""
from __future__ import annotations

from typing import Any

from onnxquant.agreement.budgets import describe

# How each figure is printed, in the order printed.
FIGURES = (
    ("top1", "top-1", "{:.4f}"), ("top5", "top-5", "{:.4f}"), ("kl", "KL", "{:.4f}"),
    ("f1", "F1", "{:.4f}"), ("recall", "recall", "{:.4f}"), ("precision", "precision", "{:.4f}"),
    ("detections_fp32", "fp32 detections", "{}"), ("detections", "detections", "{}"),
    ("matched_iou", "matched IoU", "{:.3f}"), ("lost_score_median", "lost boxes' median fp32 score", "{:.3f}"),
    ("score_agreement", "score agreement", "{:.4f}"),
    ("string_agreement", "strings equal", "{:.4f}"), ("cer", "CER", "{:.4f}"),
    ("label_agreement", "agreement", "{:.4f}"),
    ("decision_agreement", "decisions equal", "{:.4f}"), ("decisions", "of", "{}"),
    ("max_probability_change", "max probability change", "{:.4f}"),
    ("mean_probability_change", "mean", "{:.4f}"),
    ("cosine", "cosine", "{:.4f}"), ("cosine_min", "min", "{:.4f}"), ("sqnr_db", "SQNR", "{:.1f} dB"),
    ("max_abs_error", "max abs error", "{:.4g}"),
    ("channel_cosine_min", "worst channel cosine", "{:.4f}"), ("channel_sqnr_db_min", "worst channel SQNR", "{:.1f} dB"),
    ("mismatched_samples", "samples of another shape", "{}"),
)
VERDICT = {True: "ok", False: "FAILED", None: "not checked"}


def figure(value: Any, fmt: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return fmt.format(value)
    return str(value)


def figures_text(agreement: Any) -> str:
    """'top-1 0.8750, KL 0.0254, cosine 0.9896, ...' for one output."""
    if not isinstance(agreement, dict):
        return str(agreement)
    return ", ".join(f"{label} {figure(agreement[key], fmt)}" for key, label, fmt in FIGURES if key in agreement)


def kind_text(agreement: Any) -> str:
    """'detection', or what the detections were decoded from: 'detection, raw gfl heads, strides
    8/16/32/64', 'detection, decoded with out0'."""
    if not isinstance(agreement, dict):
        return "?"
    kind = str(agreement.get("kind"))
    heads = agreement.get("raw_heads")
    if isinstance(heads, dict):
        strides = heads.get("strides")
        shown = "/".join(str(s) for s in strides) if isinstance(strides, list) else str(strides)
        if heads.get("style") == "decoded":
            return f"{kind}, decoded YOLO output, {heads.get('classes')} class(es), strides {shown}"
        return f"{kind}, raw {heads.get('style')} heads, strides {shown}"
    if agreement.get("decoded_with") is not None:
        return f"{kind}, decoded with {agreement.get('decoded_with')}"
    return kind


def checks_text(checks: Any) -> list[str]:
    """Each check as 'top1 0.875 >= 0.6 (default) ok'."""
    if not isinstance(checks, list):
        return [] if checks is None else [str(checks)]
    out = []
    for c in checks:
        verdict = VERDICT.get(c.get("passed"), str(c.get("passed"))) if isinstance(c, dict) else ""
        out.append(f"{describe(c)} {verdict}".strip())
    return out
