"""Models onnxquant was never tuned on, built as a new user would get them, with real calibration and
held-out data: ``python -m benchmarks.unseen_hunt.make OUT``. Writes ``OUT/NAME.onnx``,
``OUT/NAME/calib/*.npz`` and ``OUT/NAME/held/*.npz``. Not in ``models/build.py`` on purpose: they
stay unseen (no recipe was tuned on them). Model files are read from installed packages' wheels:

- silero-vad-v6: ``faster-whisper==1.2.1``, ``faster_whisper/assets/silero_vad_v6.onnx`` (windows of
  576 samples, the LSTM runs across windows); data: espeak-ng sentences over noise (calibration/speech.py)
- ddddocr-old: ``ddddocr==1.6.1``, ``ddddocr/common_old.onnx``: the older recogniser, shipped already
  dynamically quantized (ConvInteger) and saved after onnxruntime's optimizer (com.microsoft.nchwc domain);
  data: rendered text lines (calibration/text_lines.py)
- lgbm-wine: ``lightgbm==4.7.0`` fitted on sklearn's wine set, converted by ``onnxmltools==1.16.0``
  with its default ZipMap output; data: held-out wine rows
- tfidf-licenses: a text classifier as skl2onnx writes it, string input: TfidfVectorizer (word
  1-2 grams) + MLPClassifier fitted to tell which license (/usr/share/common-licenses) a sentence
  comes from; data: held-out sentences, as a (batch, 1) string tensor
- mlp-diabetes: a scikit-learn StandardScaler + MLPRegressor pipeline on sklearn's diabetes set
  (regression), converted by skl2onnx; data: held-out rows

Needs, beside the project's test extras (none is a runtime dependency of onnxquant):
``pip install faster-whisper==1.2.1 --no-deps`` (only its asset is read: PyAV is not needed),
``ddddocr==1.6.1``, ``lightgbm==4.7.0``, ``onnxmltools==1.16.0``, ``skl2onnx``, ``scikit-learn``.
``compare.py`` quantizes them with each tool; ``RESULTS.md`` has the measured table.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _write(out: Path, name: str, part: str, samples: list[dict[str, np.ndarray]]) -> None:
    d = out / name / part
    d.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(samples):
        np.savez(d / f"{i:04d}.npz", **s)


def silero_v6(out: Path) -> None:
    import importlib.util

    from calibration.speech import clips

    # located without importing: faster_whisper's import needs PyAV, which the model does not
    spec = importlib.util.find_spec("faster_whisper")
    src = Path(spec.origin).parent / "assets" / "silero_vad_v6.onnx"
    (out / "silero-vad-v6.onnx").write_bytes(src.read_bytes())
    for part, count in (("calib", 24), ("held", 48)):
        samples = []
        for audio in clips(part, count):
            # faster_whisper.vad.get_speech_timestamps: 512-sample windows with 64 samples of context
            n = len(audio) // 512 * 512
            padded = np.concatenate([np.zeros(64, np.float32), audio[:n]])
            frames = np.stack([padded[i:i + 576] for i in range(0, n, 512)])
            zero = np.zeros((1, 1, 128), np.float32)
            samples.append({"input": frames.astype(np.float32), "h": zero, "c": zero})
        _write(out, "silero-vad-v6", part, samples)


def ddddocr_old(out: Path) -> None:
    import ddddocr
    from calibration.text_lines import ddddocr_samples

    src = Path(ddddocr.__file__).parent / "common_old.onnx"
    (out / "ddddocr-old.onnx").write_bytes(src.read_bytes())
    for part in ("calib", "held"):
        _write(out, "ddddocr-old", part, ddddocr_samples(part))


def lgbm_wine(out: Path) -> None:
    import lightgbm
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    x, y = load_wine(return_X_y=True)
    x = x.astype(np.float32)
    xtr, xte, ytr, _ = train_test_split(x, y, test_size=0.4, random_state=0, stratify=y)
    model = lightgbm.LGBMClassifier(n_estimators=60, num_leaves=8, random_state=0, verbose=-1, n_jobs=1).fit(xtr, ytr)
    onx = onnxmltools.convert_lightgbm(model, initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
                                       target_opset=15)
    (out / "lgbm-wine.onnx").write_bytes(onx.SerializeToString())
    _write(out, "lgbm-wine", "calib", [{"input": xtr[i:i + 8]} for i in range(0, len(xtr), 8)])
    _write(out, "lgbm-wine", "held", [{"input": xte[i:i + 8]} for i in range(0, len(xte), 8)])


def mlp_diabetes(out: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_diabetes(return_X_y=True)
    x = x.astype(np.float32)
    xtr, xte, ytr, _ = train_test_split(x, y, test_size=0.4, random_state=0)
    model = make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(64, 32), max_iter=2000, random_state=0)).fit(xtr, ytr)
    onx = to_onnx(model, xtr[:1], target_opset=15)
    (out / "mlp-diabetes.onnx").write_bytes(onx.SerializeToString())
    name = onx.graph.input[0].name
    _write(out, "mlp-diabetes", "calib", [{name: xtr[i:i + 8]} for i in range(0, len(xtr), 8)])
    _write(out, "mlp-diabetes", "held", [{name: xte[i:i + 8]} for i in range(0, len(xte), 8)])


def tfidf_licenses(out: Path) -> None:
    import onnx
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline

    from calibration.sets import LICENSE_DIR, _sentences

    families = ("Apache-2.0", "Artistic", "BSD", "CC0-1.0", "GFDL-1.3", "GPL-2", "GPL-3", "LGPL-2.1", "MPL-2.0")
    text, label = [], []
    for i, name in enumerate(families):
        found = _sentences([LICENSE_DIR / name])
        text += found
        label += [i] * len(found)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(text))
    text, label = [text[i] for i in order], np.array(label)[order]
    cut = len(text) * 2 // 3
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), max_features=3000),
                          MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0)).fit(text[:cut], label[:cut])
    onx = to_onnx(model, initial_types=[("text", StringTensorType([None, 1]))], target_opset=15,
                  options={id(model.steps[-1][1]): {"zipmap": False}})
    for node in onx.graph.node:  # onnxruntime's default, en_US.UTF-8, is not installed on these machines
        if node.op_type == "StringNormalizer":
            node.attribute.append(onnx.helper.make_attribute("locale", "C.UTF-8"))
    (out / "tfidf-licenses.onnx").write_bytes(onx.SerializeToString())
    rows = np.array(text, dtype=object).reshape(-1, 1)
    # np.savez keeps strings as a unicode array: onnxquant reads .npz samples as saved
    _write(out, "tfidf-licenses", "calib", [{"text": rows[i:i + 8].astype(str)} for i in range(0, cut, 8)])
    _write(out, "tfidf-licenses", "held", [{"text": rows[i:i + 8].astype(str)} for i in range(cut, len(text), 8)])


BUILDERS = {"silero-vad-v6": silero_v6, "ddddocr-old": ddddocr_old, "lgbm-wine": lgbm_wine, "mlp-diabetes": mlp_diabetes,
            "tfidf-licenses": tfidf_licenses}


def build_from_argv(builders: dict[str, Callable[[Path], None]]) -> None:
    """``OUT [NAME ...]``: build the named models (default: all of ``builders``) into OUT."""
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name in sys.argv[2:] or builders:
        builders[name](out)
        print(name, "ok")


def main() -> None:
    build_from_argv(BUILDERS)


if __name__ == "__main__":
    main()
