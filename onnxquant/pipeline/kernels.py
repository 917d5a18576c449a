"""onnxruntime's view of a quantized model: which quantized layers became integer kernels."""
from __future__ import annotations

from dataclasses import replace

from onnxquant.fusion_check import check_fusion
from onnxquant.model_io import has_lazy, serialize_below_limit
from onnxquant.pipeline.clock import timed
from onnxquant.pipeline.state import State


@timed("fusion_check")
def check_kernels(state: State) -> State:
    """The state with its fusion check, or with a note saying why onnxruntime could not tell."""
    quantized = state.model
    payload = None if has_lazy(quantized) else serialize_below_limit(quantized)
    if payload is None:
        return replace(state, fusion=None).noted("fusion self-check skipped: weights in external data or over 2 GB")
    try:
        # (layers given int8 weights only are float kernels on purpose, each with its reason)
        ours = set(state.selection.quantized) - set(state.selection.weight_only)
        found = check_fusion(quantized, payload, only=ours)
    except Exception as exc:  # onnxruntime's own refusal; the self-check that follows reports it
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        return replace(state, fusion=None).noted(f"fusion self-check skipped: {why}")
    return replace(state, fusion=found)
