"""What ``quantize`` and ``prune`` return: for people (``summary``) and scripts (``to_dict``)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from onnxquant.calibration.observers import StatsTable
from onnxquant.conv_cost import ConvEstimate
from onnxquant.dense_cost import DenseEstimate
from onnxquant.fusion_check import FusionCheck
from onnxquant.host import CPU_KINDS
from onnxquant.prune.pipeline import PruneReport
from onnxquant.recipe import Recipe


@dataclass
class FloatNode:
    name: str
    op_type: str
    reason: str
    weight_bytes: int = 0  # float weight bytes it reads (0: no weight of its own)
    share: float = 0.0  # of the model's weight bytes


FLOAT_COMPUTE_KEY = "onnxquant.float_compute"  # model metadata: why the weights are int8 and the compute float


@dataclass(frozen=True)
class FloatCompute:
    """Why a model's int8 weights are computed in float, for the summary, ``--json`` and the metadata."""

    layers: int  # weighted layers whose weights are stored int8 and folded to float
    estimate: ConvEstimate | None  # the integer model's convolutions (None: the recipe asked, not estimated)
    # where small MatMul/Gemm layers decided (dense_cost.py), their estimated extra time as int8
    dense: DenseEstimate | None = None

    @property
    def extra_us(self) -> float | None:
        """Where small MatMul/Gemm layers decided: their estimated extra int8 time a sample, the
        convolutions' difference counted in (what the decision compared with zero)."""
        if self.dense is None:
            return None
        convs = self.estimate.int8_us - self.estimate.fp32_us if self.estimate is not None else 0.0
        return self.dense.extra_us + convs

    @property
    def reason(self) -> str:
        extra = self.extra_us
        if self.dense is not None and extra is not None:
            amount = f"{extra:.1f} us" if extra >= 0.05 else "under 0.1 us"
            return (f"int8 kernels estimated {amount} a sample slower than fp32 on "
                    f"{CPU_KINDS[self.dense.cpu_kind].label} ({self.dense.layers} small MatMul/Gemm layers, where "
                    "onnxruntime's per-call int8 work outweighs what int8 saves)")
        if self.estimate is None:
            return "the recipe asks for float compute (integer_compute = false)"
        return (f"int8 kernels estimated at {self.estimate.ratio:.2f}x fp32's convolution time on "
                f"{CPU_KINDS[self.estimate.cpu_kind].label}")

    def note(self) -> str:
        return (f"float compute: {self.layers} layers keep int8 weights but compute in float (onnxruntime folds "
                f"them back to float when it loads the model), as {self.reason}; --integer-compute keeps "
                "integer kernels")

    def to_dict(self) -> dict[str, Any]:
        found = self.estimate
        kind = self.dense.cpu_kind if self.dense is not None else found.cpu_kind if found is not None else None
        return {"layers": self.layers, "reason": self.reason, "cpu_kind": kind,
                "estimated_int8_over_fp32": round(found.ratio, 3) if found is not None and self.dense is None else None,
                **({"estimated_dense_extra_us": round(self.dense.extra_us, 2),
                    "estimated_int8_extra_us": round(self.extra_us or 0.0, 2)} if self.dense is not None else {})}

    def metadata(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))



@dataclass
class QuantizeResult:
    """What ``quantize`` did, for people (``summary``) and scripts (``to_dict``)."""

    model: onnx.ModelProto
    output_path: Path | None
    size_before: int
    size_after: int
    quantized_nodes: dict[str, int]  # op type -> count
    float_nodes: list[FloatNode]
    samples: int
    seconds: dict[str, float]
    recipe: Recipe
    notes: list[str] = field(default_factory=list)
    mixed_precision: dict[str, Any] | None = None
    search: dict[str, Any] | None = None  # the recipe search: trials, scores, the choice (or why skipped)
    size_compressed: int | None = None  # deflated, as in a zip bundle (None over 2 GB)
    pruning: PruneReport | None = None
    # With quantize(diagnostics=True), for reports: the calibration statistics (with
    # histograms) and the float model they were taken on (prepared; same tensor names).
    stats: StatsTable | None = None
    reference: onnx.ModelProto | None = None
    fusion: FusionCheck | None = None  # which quantized layers onnxruntime runs as integer kernels
    warnings: list[str] = field(default_factory=list)
    # layers with int8 weights but no QDQ integer kernel (recurrent, inside bodies) -> why
    weight_only: dict[str, str] = field(default_factory=dict)
    # stage -> {"seconds": its own wall time, "cpu_seconds", "calls", "peak_mb": the process's peak RSS
    # when it last ended}, in pipeline order (onnxquant.pipeline.clock); the stages' seconds sum to at most the total
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    # int8-stored weights computed in float, and why (pipeline/float_compute.py); None: integer kernels
    float_compute: dict[str, Any] | None = None

    @property
    def float_weight_share(self) -> float:
        return sum(n.share for n in self.float_nodes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output_path) if self.output_path else None,
            "size_before": self.size_before,
            "size_after": self.size_after,
            "size_compressed": self.size_compressed,
            "compression": round(self.size_before / max(self.size_after, 1), 3),
            "quantized_nodes": dict(sorted(self.quantized_nodes.items())),
            "quantized_node_count": sum(self.quantized_nodes.values()),
            "float_nodes": [{**vars(n), "share": round(n.share, 4)} for n in self.float_nodes],
            "float_weight_share": round(self.float_weight_share, 4),
            "fusion": self.fusion.to_dict() if self.fusion is not None else None,
            "warnings": self.warnings,
            "weight_only": dict(self.weight_only),
            "calibration_samples": self.samples,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "stages": {stage: {k: round(v, 3) for k, v in info.items()} for stage, info in self.stages.items()},
            "notes": self.notes,
            "recipe": self.recipe.to_dict(),
            **({"float_compute": self.float_compute} if self.float_compute is not None else {}),
            **({"mixed_precision": self.mixed_precision} if self.mixed_precision is not None else {}),
            **({"search": self.search} if self.search is not None else {}),
            **({"pruning": self.pruning.to_dict()} if self.pruning is not None else {}),
        }


@dataclass
class PruneResult:
    """What ``prune`` did: per-layer sparsity, removed channels, sizes plain and compressed."""

    model: onnx.ModelProto
    output_path: Path | None
    report: PruneReport
    size_before: int
    size_after: int
    compressed_before: int
    compressed_after: int
    sparse_initializers: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output_path) if self.output_path else None,
            "size_before": self.size_before,
            "size_after": self.size_after,
            "size_compressed_before": self.compressed_before,
            "size_compressed_after": self.compressed_after,
            "sparse_initializers": self.sparse_initializers,
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
            **self.report.to_dict(),
        }
