"""captcha-recognizer's YOLO11s-seg slider-gap detector: its decoded output0 (boxes in pixels, one
sigmoid score, 32 mask coefficients) is judged by its boxes, and its decode tail stays float."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from onnxquant.agreement import DetectionSettings, find_raw_heads
from onnxquant.api import quantize
from onnxquant.validate import validate
from tests.conftest import write_npz

pytestmark = pytest.mark.realmodel


@pytest.fixture(scope="module")
def slider(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("captcha_recognizer")
    from models import yolo_slider

    root = tmp_path_factory.mktemp("slider")
    model = yolo_slider.build(root / "slider.onnx")
    calib = write_npz(root / "calib", yolo_slider.samples("calib", 8))
    hold = write_npz(root / "hold", yolo_slider.samples("holdout", 4))
    result = quantize(model, calib, output=root / "int8.onnx")
    return {"model": model, "hold": hold, "int8": root / "int8.onnx", "float_nodes": result.float_nodes}


def test_decoded_output_is_read_as_the_package_reads_it(slider: dict[str, Path]):
    """The same boxes and scores as captcha-recognizer's own post-processing (NMS at 0.7, 0.25)."""
    from captcha_recognizer.slider import Slider

    from models import yolo_slider

    session = ort.InferenceSession(str(slider["model"]), providers=["CPUExecutionProvider"])
    feed = yolo_slider.samples("holdout", 1)[0]
    output0, output1 = session.run(None, feed)
    heads = find_raw_heads({"output0": output0, "output1": output1}, feed)
    assert heads is not None and heads.to_dict()["style"] == "decoded" and heads.classes == 1
    (ours,) = heads.decode({"output0": output0},
                           DetectionSettings(score_threshold=yolo_slider.SCORE_THRESHOLD, nms_iou=yolo_slider.NMS_IOU))
    bgr = np.ascontiguousarray((feed["images"][0].transpose(1, 2, 0) * 255).round().astype(np.uint8)[:, :, ::-1])
    package = Slider()
    package.session = session
    (boxes, _), = package.predict(bgr)
    assert len(ours) == len(boxes) >= 1
    assert np.abs(ours.boxes - boxes[:, :4]).max() < 1.0 and np.abs(ours.scores - boxes[:, 4]).max() < 1e-3


def test_int8_keeps_the_gaps_with_the_decode_tail_float(slider: dict[str, Path]):
    reasons = {f.name: f.reason for f in slider["float_nodes"]}
    for tail in ("/model.23/Concat_3", "/model.23/Concat_4", "/model.23/dfl/conv/Conv", "/model.23/Sigmoid",
                 "/model.23/Mul_2", "/model.23/Concat_6"):
        assert "decode tail" in reasons[tail], tail
    assert "head's last layer" in reasons["/model.23/cv3.0/cv3.0.2/Conv"]
    report = validate(slider["model"], slider["int8"], slider["hold"], latency_runs=1)
    out = report.to_dict()["providers"][0]["agreement"]["output0"]
    assert out["kind"] == "detection" and out["raw_heads"]["style"] == "decoded"
    assert out["detections_fp32"] >= 4 and out["f1"] >= 0.75 and report.passed, report.failures
