import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxquant.qparams import (
    MIN_SCALE,
    above,
    asymmetric,
    dequantize,
    per_channel_absmax,
    qrange,
    quantize,
    symmetric,
)

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)


@given(finite, finite)
@settings(max_examples=300, deadline=None)
def test_asymmetric_represents_zero_and_covers_range(a, b):
    lo, hi = min(a, b), max(a, b)
    p = asymmetric(lo, hi, "uint8")
    assert p.scale > 0
    zero = dequantize(quantize(np.zeros(1, np.float32), p), p)
    assert zero[0] == 0.0
    x = np.array([lo, hi], np.float32)
    err = np.abs(dequantize(quantize(x, p), p) - x)
    assert np.all(err <= float(p.scale) * 0.5 + 1e-6 * max(1.0, abs(lo), abs(hi)))


def test_zero_range_never_gives_zero_scale():
    for lo, hi in [(0.0, 0.0), (3.0, 3.0), (-2.0, -2.0)]:
        p = asymmetric(lo, hi)
        assert float(p.scale) >= MIN_SCALE
    p = symmetric(np.zeros(4), "int8", axis=0)
    assert np.all(p.scale > 0)
    assert np.all(quantize(np.zeros((4, 3)), p) == 0)


def test_symmetric_per_channel_roundtrip():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3, 2, 2)).astype(np.float32) * np.arange(1, 6)[:, None, None, None]
    p = symmetric(per_channel_absmax(w, 0), "int8", axis=0)
    assert p.scale.shape == (5,)
    q = quantize(w, p)
    assert q.dtype == np.int8 and q.max() <= 127 and q.min() >= -127
    err = np.abs(dequantize(q, p) - w)
    assert np.all(err <= p.scale[:, None, None, None] / 2 + 1e-7)


def test_reduce_range_is_seven_bits():
    assert qrange("int8", reduce_range=True) == (-64, 63)
    assert qrange("uint8", reduce_range=True) == (0, 127)
    p = symmetric(np.array([1.0]), "int8", axis=0, reduce_range=True)
    assert quantize(np.array([[1.0], [-1.0]]).T, p).tolist() == [[63, -63]]


def test_unsigned_symmetric_zero_point_is_midpoint():
    p = symmetric(np.array([2.0]), "uint8", axis=0)
    assert int(p.zero_point[0]) == 128
    assert dequantize(quantize(np.array([0.0]), p), p)[0] == 0.0


def test_quantize_matches_onnx_rounding_half_to_even():
    p = asymmetric(0.0, 255.0, "uint8")  # scale 1, zero point 0
    assert quantize(np.array([0.5, 1.5, 2.5]), p).tolist() == [0, 2, 2]


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_above_moves_the_zero_point_so_the_lowest_value_is_not_below_the_bound(dtype):
    """A Clip(min=-0.4) output: onnxruntime drops the Clip only if its Q's lowest value is >= -0.4."""
    qmin, _ = qrange(dtype)
    for hi in np.linspace(0.5, 40.0, 200):
        params = asymmetric(-0.4, float(hi), dtype)
        got = above(params, -0.4)
        lowest = np.float32(got.scale * np.float32(qmin - int(got.zero_point)))
        assert lowest >= np.float32(-0.4) and lowest - np.float32(-0.4) < got.scale  # within one step
        assert int(got.zero_point) - int(params.zero_point) in (0, -1) and got.scale == params.scale
    params = asymmetric(0.0, 6.0, dtype)
    assert above(params, 0.0) is params and above(params, 1.0) is params  # (0 stays representable)
