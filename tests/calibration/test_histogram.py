import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxquant.calibration.histogram import StreamingHistogram, strided_sample


def test_growth_keeps_every_count_and_covers_range():
    rng = np.random.default_rng(0)
    hist = StreamingHistogram(bins=256)
    total = 0
    for scale in (0.1, 1.0, 10.0, 0.5, 100.0):
        x = rng.normal(0, scale, 1000)
        hist.add(x, float(x.min()), float(x.max()))
        total += x.size
        assert hist.edges[0] <= x.min() and hist.edges[-1] > x.max()
    assert hist.counts.sum() == total


@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=50), st.integers(1, 5))
@settings(max_examples=100, deadline=None)
def test_streaming_equals_counts_of_all_values(values, chunks):
    x = np.array(values, np.float64)
    hist = StreamingHistogram(bins=64)
    for part in np.array_split(x, chunks):
        if part.size:
            hist.add(part, float(part.min()), float(part.max()))
    assert hist.counts.sum() == x.size
    # every value falls in a bin whose edges contain it
    edges = hist.edges
    assert edges[0] <= x.min() + 1e-9 and edges[-1] >= x.max() - 1e-9


def test_constant_tensor_has_positive_width():
    hist = StreamingHistogram()
    hist.add(np.full(10, 3.0), 3.0, 3.0)
    assert hist.width > 0 and hist.counts.sum() == 10


def test_strided_sample_caps_size():
    x = np.arange(1_000_000, dtype=np.float32)
    s = strided_sample(x, cap=1000)
    assert 500 <= s.size <= 1000
    assert strided_sample(x[:10], cap=1000).size == 10
