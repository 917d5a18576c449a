import numpy as np
import pytest

from onnxquant.calibration.histogram import StreamingHistogram
from onnxquant.calibration.observers import StatsTable, TensorStats, estimate_range
from onnxquant.calibration.stats_io import load_stats, save_stats
from onnxquant.errors import CalibrationDataError


def test_roundtrip_keeps_ranges_for_every_method(tmp_path):
    table = StatsTable(model_digest="abc", samples=3)
    for name in ("a/b:0", "c"):
        s = TensorStats(histogram=StreamingHistogram())
        s.update(np.random.default_rng(len(name)).normal(size=5000).astype(np.float32))
        table.tensors[name] = s
    path = save_stats(table, tmp_path / "stats.npz")
    back = load_stats(path)
    assert back.samples == 3 and back.model_digest == "abc"
    for name, s in table.tensors.items():
        for method in ("minmax", "percentile", "entropy", "mse"):
            assert estimate_range(back.tensors[name], method) == estimate_range(s, method)


def test_garbage_file_is_refused(tmp_path):
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CalibrationDataError, match="cannot read"):
        load_stats(bad)
