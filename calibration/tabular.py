"""Rows of scikit-learn's breast-cancer data for the tabular classifiers: training rows to
calibrate, the held-out rows (never trained on) to check, in batches of 8."""
from __future__ import annotations

import numpy as np


def breast_cancer_samples(part: str, batch: int = 8) -> list[dict[str, np.ndarray]]:
    from models import sklearn_tabular as m

    x, _ = m.breast_cancer()
    rows = x[:m.TRAIN_ROWS] if part == "calib" else x[m.TRAIN_ROWS:]
    return [{m.INPUT_NAME: rows[k:k + batch]} for k in range(0, len(rows) - batch + 1, batch)]
