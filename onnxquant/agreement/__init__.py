"""What "agrees with fp32" means, per output kind, shared by validate, mixed precision and search.

One module per kind: tensor (cosine, SQNR, per channel), classification (top-1/5, KL), detection
(YOLO decoding, NMS, matching), heads (raw detection heads: PicoDet/GFL maps, YOLOX grids, decoded
as detections), sequence (greedy CTC), labels (labels and maps), binary (decisions of a yes/no
probability); kinds detects the kind of an output (graph_hints: what its producing nodes say),
budgets holds the limits and their defaults, output ties them together.
"""
from onnxquant.agreement.budgets import DEFAULTS, Budget
from onnxquant.agreement.detection import DetectionSettings
from onnxquant.agreement.kinds import KINDS, detect_kind, detection_pairs, parse_kind_overrides
from onnxquant.agreement.heads import RawHeads, find_raw_heads
from onnxquant.agreement.output import (
    DROP_BY,
    PRIMARY,
    OutputAgreement,
    add_outputs,
    output_agreements,
    unmeasured_budgets,
)

__all__ = ["DEFAULTS", "DROP_BY", "KINDS", "PRIMARY", "Budget", "DetectionSettings", "OutputAgreement", "RawHeads",
           "add_outputs", "detect_kind", "detection_pairs", "find_raw_heads", "output_agreements",
           "parse_kind_overrides", "unmeasured_budgets"]
