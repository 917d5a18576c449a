"""fp16 versions of zoo models, as users get them from converters and model hubs that ship
half-precision files: converted by onnxconverter-common (fp16 inputs, weights and outputs), or
with only the weights stored fp16 behind Casts (float32 inputs, outputs and compute)."""
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


def store_weights_float16(source: Path, out_path: Path) -> Path:
    """A float32 model whose float weights are stored fp16, each read through a ``Cast`` to float32
    (float32 inputs, outputs and compute): what TF-Lite's fp16 post-training quantization and
    mixed-precision exporters write to halve a file without changing its interface."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or np.prod(init.dims) < 2:
            continue  # scalars (constants of the arithmetic) stay float32, as converters leave them
        value = numpy_helper.to_array(init)
        half = f"{init.name}_fp16"
        casts.append(helper.make_node("Cast", [half], [init.name], name=f"{init.name}_dequantize", to=onnx.TensorProto.FLOAT))
        init.CopyFrom(numpy_helper.from_array(value.astype(np.float16), half))
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return out_path


def efficientnet_lite0_weights_fp16(out_path: Path) -> Path:
    from models import efficientnet_lite0 as m

    with tempfile.TemporaryDirectory(prefix="onnxquant-models-") as tmp:
        return store_weights_float16(m.build(Path(tmp) / "fp32.onnx"), out_path)
