import math
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import numpy_helper

from models.tiny import image_samples, tiny_cnn
from onnxquant.api import layer_errors
from onnxquant.cli import main


def _cnn_with_a_bad_layer() -> onnx.ModelProto:
    """tiny_cnn whose first conv has a huge weight per output channel on an input channel that
    is almost zero: the float output barely depends on it, but per-channel int8 scales then
    round every other weight to zero, so conv1 alone does the damage."""
    model = tiny_cnn()
    init = next(i for i in model.graph.initializer if i.name == "w1")
    w = numpy_helper.to_array(init).copy()
    w[:, 0, 1, 1] = 1000.0
    init.CopyFrom(numpy_helper.from_array(w, "w1"))
    return model


def _samples(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    out = image_samples(n, seed=seed)
    for s in out:
        s["x"][:, 0] *= 1e-5
    return out


def test_the_damaging_layer_comes_first():
    errors = layer_errors(_cnn_with_a_bad_layer(), _samples(8, 0), _samples(4, 3))
    assert errors[0].node == "conv1"
    assert errors[0].own_sqnr_db < min(e.own_sqnr_db for e in errors[1:])
    assert {"x", "c1", "c2", "c3", "s", "logits"} <= {e.tensor for e in errors}
    assert all(not math.isnan(e.sqnr_db) for e in errors)


def test_layer_errors_cli_json(cnn_path: Path, npz_dir: Path):
    result = CliRunner().invoke(main, ["layer-errors", str(cnn_path), "--calib-data", str(npz_dir), "--json", "--top", "3"])
    assert result.exit_code == 0, result.output
    import json

    tensors = json.loads(result.output)["tensors"]
    assert len(tensors) == 3
    own = [t["own_sqnr_db"] for t in tensors]
    assert own == sorted(own, key=lambda v: np.inf if v == "inf" else v)
