"""fp16 versions of zoo models, converted by onnxconverter-common (fp16 inputs, weights and outputs),
as users get them from converters and model hubs that ship half-precision files."""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path


def convert(source: Path, out_path: Path) -> Path:
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(source))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the float32 number ... will be truncated": tiny weights, expected
        half = float16.convert_float_to_float16(model, keep_io_types=False)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(half, str(out_path))
    return out_path


def ppocr_cls(out_path: Path) -> Path:
    from models import ppocr_cls as m

    return convert(m.source_path(), out_path)


def efficientnet_lite0(out_path: Path) -> Path:
    from models import efficientnet_lite0 as m

    with tempfile.TemporaryDirectory(prefix="onnxquant-models-") as tmp:
        return convert(m.build(Path(tmp) / "fp32.onnx"), out_path)
