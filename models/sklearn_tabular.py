"""Tabular classifiers on scikit-learn's bundled breast-cancer data (569 real biopsies, 30
features), converted by skl2onnx as a user of classic ML would ship them.

- ``build_ensemble``: StandardScaler, then a soft vote of a gradient-boosted tree ensemble and an
  MLP. The MLP's MatMuls quantize; the trees (ai.onnx.ml TreeEnsembleClassifier, thresholds and
  leaf values held as float attributes) have no integer form in ONNX and must be reported float.
- ``build_forest``: a random forest alone: nothing in it can be quantized.

Both have skl2onnx's two outputs: the int64 ``label`` and the ``probabilities``. Training is
deterministic (fixed seeds, fixed split): the same model on every build.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

TRAIN_ROWS = 400  # rows 0..399 train (and calibrate); 400.. are held out
INPUT_NAME = "X"


def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    return x.astype(np.float32), y


def _save(estimator, out_path: Path) -> Path:
    import onnx
    from skl2onnx import to_onnx

    x, y = breast_cancer()
    estimator.fit(x[:TRAIN_ROWS], y[:TRAIN_ROWS])
    model = to_onnx(estimator, x[:1], options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3})
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return out_path


def build_ensemble(out_path: Path) -> Path:
    from sklearn.ensemble import GradientBoostingClassifier, VotingClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    vote = VotingClassifier([("trees", GradientBoostingClassifier(random_state=0)),
                             ("mlp", MLPClassifier((128, 64), max_iter=500, random_state=0))],
                            voting="soft", flatten_transform=False)
    return _save(make_pipeline(StandardScaler(), vote), out_path)


def build_forest(out_path: Path) -> Path:
    from sklearn.ensemble import RandomForestClassifier

    return _save(RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0), out_path)
