"""Issue 18/19's classes from models we had not met, on real pretrained weights from packages:
captcha-whisperer's CRNN (its LSTM unrolled into Gemms that share weights, CTC blank last),
Resemblyzer's speaker encoder (three LSTMs over 160 steps), and scikit-learn tree ensembles
(parameters in ai.onnx.ml attributes, no integer form). Timing is left to benchmarks/run.py."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

if any(importlib.util.find_spec(m) is None for m in ("captcha_whisperer", "captcha", "sklearn", "skl2onnx")) \
        or importlib.util.find_spec("resemblyzer") is None:
    pytest.skip("needs the models extra (captcha-whisperer, captcha, Resemblyzer, scikit-learn, skl2onnx)",
                allow_module_level=True)

import onnxquant
from calibration.speech import espeak_available
from calibration.sets import SETS
from models.build import build
from onnxquant import Recipe
from onnxquant.agreement import OutputAgreement

pytestmark = pytest.mark.realmodel
NO_SEARCH = Recipe().with_overrides(search={"enabled": False})


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("more-real")


def _session(model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _outputs(model, held: list[dict], output: int = 0) -> list[np.ndarray]:
    session = _session(model)
    return [session.run(None, feed)[output] for feed in held]


def _agreement(model_path: Path, quantized, held: list[dict]) -> dict:
    agreement = OutputAgreement("out")
    for ref, got in zip(_outputs(model_path, held), _outputs(quantized, held)):
        agreement.add(ref, got)
    return {"kind": agreement.kind, **agreement.metrics()}


def test_captcha_crnn_stores_its_shared_lstm_weights_once_and_reads_the_same_text(work):
    """The traced LSTM's 80 Gemms read 4 matrices: stored once each, the model is under 0.3x
    fp32 (it was 3.6x larger), every layer is an integer kernel, and the strings decoded with
    the detected blank (the last symbol) stay fp32's."""
    path = build("captcha-crnn", work)
    calib, held = SETS["captcha-crnn"]("calib")[:24], SETS["captcha-crnn"]("holdout")[:16]
    result = onnxquant.quantize(path, calib, NO_SEARCH)
    assert result.size_after < 0.3 * path.stat().st_size
    assert result.quantized_nodes.get("Gemm") == 80
    assert result.fusion.integer_layers == result.fusion.quantized_layers >= 100
    m = _agreement(path, result.model, held)
    assert m["kind"] == "sequence" and m["blank"] == 36
    assert m["cer"] <= 0.05 and m["string_agreement"] >= 0.8


def test_speaker_encoder_search_computes_its_lstms_in_float_and_keeps_the_voice(work):
    """DynamicQuantizeLSTM's per-step activations lose the embedding (cosine about 0.8); the
    search's float-compute candidate keeps it at int8's size."""
    if not espeak_available():
        if os.environ.get("ONNXQUANT_EXPECT_ESPEAK"):
            pytest.fail("espeak-ng is missing (apt-get install espeak-ng)")
        pytest.skip("needs Debian's espeak-ng for speech")
    path = build("speaker-encoder", work)
    calib, held = SETS["speaker-encoder"]("calib"), SETS["speaker-encoder"]("holdout")[:24]
    result = onnxquant.quantize(path, calib)
    assert result.search["chosen"].startswith("LSTMs in float")
    assert result.size_after < 0.3 * path.stat().st_size
    m = _agreement(path, result.model, held)
    assert m["kind"] == "embedding" and m["cosine"] >= 0.97
    given = onnxquant.quantize(path, calib, NO_SEARCH)  # DynamicQuantizeLSTM, for the record
    assert _agreement(path, given.model, held)["cosine"] < m["cosine"]


def test_tree_ensembles_are_reported_float_and_the_mlp_beside_them_quantized(work):
    path = build("sklearn-ensemble", work)
    calib, held = SETS["sklearn-ensemble"]("calib"), SETS["sklearn-ensemble"]("holdout")
    result = onnxquant.quantize(path, calib, NO_SEARCH)
    assert result.quantized_nodes == {"MatMul": 3}
    trees = next(f for f in result.float_nodes if f.op_type == "TreeEnsembleClassifier")
    assert "no integer form" in trees.reason and trees.share > 0.1
    labels = [np.array_equal(r, g) for r, g in zip(_outputs(path, held), _outputs(result.model, held))]
    assert np.mean(labels) >= 0.9
    forest = build("sklearn-forest", work)
    alone = onnxquant.quantize(forest, calib, NO_SEARCH)
    assert alone.quantized_nodes == {} and any(w.startswith("nothing was quantized") for w in alone.warnings)
