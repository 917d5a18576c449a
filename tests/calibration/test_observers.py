import numpy as np
import pytest

from onnxquant.calibration.histogram import StreamingHistogram
from onnxquant.calibration.observers import METHODS, TensorStats, estimate_range


def stats_of(x: np.ndarray, chunks: int = 10) -> TensorStats:
    s = TensorStats(histogram=StreamingHistogram())
    for part in np.array_split(x, chunks):
        s.update(part)
    return s


@pytest.fixture(scope="module")
def gaussian():
    return stats_of(np.random.default_rng(0).normal(size=200_000).astype(np.float32))


def test_minmax_is_exact(gaussian):
    assert estimate_range(gaussian, "minmax") == (gaussian.min, gaussian.max)


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_clipping_methods_clip_gaussian_tails_but_not_too_much(gaussian, method):
    lo, hi = estimate_range(gaussian, method)
    assert gaussian.min <= lo < -2.0 and 2.0 < hi <= gaussian.max
    assert (lo, hi) != (gaussian.min, gaussian.max)


@pytest.mark.parametrize("method", METHODS)
def test_relu6_output_keeps_zero_and_top(method):
    x = np.clip(np.random.default_rng(1).normal(1, 2, 100_000), 0, 6).astype(np.float32)
    lo, hi = estimate_range(stats_of(x), method)
    assert lo == 0.0
    assert hi > 5.0  # a spike of clipped values at 6 must not be thrown away


@pytest.mark.parametrize("method", METHODS)
def test_constant_tensor(method):
    lo, hi = estimate_range(stats_of(np.full(1000, 2.5, np.float32), 2), method)
    assert np.isfinite(lo) and np.isfinite(hi) and hi >= lo


def test_nan_is_refused():
    with pytest.raises(FloatingPointError):
        TensorStats().update(np.array([1.0, np.nan], np.float32))


def test_streaming_minmax_memory_is_constant():
    s = TensorStats(histogram=StreamingHistogram())
    before = s.histogram.counts.nbytes
    for i in range(50):
        s.update(np.random.default_rng(i).normal(size=10_000).astype(np.float32))
    assert s.histogram.counts.nbytes == before
    assert s.count == 500_000


def test_mask_sentinels_stay_out_of_the_range():
    """An attention mask of finfo.min must not stretch the range over every real value."""
    from onnxquant.calibration.observers import MASK_GAP

    stats = TensorStats()
    values = np.array([-1.0, 2.0, 3.0, np.finfo(np.float32).min, -np.inf], np.float32)
    stats.update(values)
    assert (stats.min, stats.max, stats.masked) == (-1.0, 3.0, 2)
    lo, hi = estimate_range(stats, "minmax")
    assert hi == 3.0 and lo == 3.0 - MASK_GAP  # masked positions saturate far below the maximum
    only_mask = TensorStats()
    only_mask.update(np.array([np.finfo(np.float32).min], np.float32))
    assert estimate_range(only_mask, "minmax") == (-MASK_GAP, 0.0)
