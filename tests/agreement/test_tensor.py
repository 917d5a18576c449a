from __future__ import annotations

import numpy as np

import onnxquant.agreement.tensor as tensor
from onnxquant.agreement.tensor import SampleMemo, TensorAgreement


def _pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """(reference, compressed) maps of 3 channels; the third compressed sample holds a NaN."""
    rng = np.random.default_rng(5)
    pairs = []
    for k in range(5):
        r = rng.normal(size=(1, 3, 6, 7)).astype(np.float32)
        c = (r + rng.normal(scale=0.05, size=r.shape)).astype(np.float32)
        if k == 2:
            c[0, 1, 2, 3] = np.nan
        pairs.append((r, c))
    return pairs


def _figures(agreement: TensorAgreement) -> tuple:
    return (agreement.signal, agreement.noise, agreement.max_abs_error, tuple(agreement.cosines),
            agreement.nonfinite, agreement.channels())


def test_figures_kept_in_a_memo_give_the_same_bits_and_are_computed_once(monkeypatch):
    """Leave-one-out scorings add each sample many times: with a memo its figures are computed
    once, and every subset's agreement is bit for bit the one computed afresh."""
    pairs = _pairs()
    computed: list[int] = []
    real = tensor.SampleFigures.of

    def counting(reference, compressed, axis=None):
        computed.append(1)
        return real(reference, compressed, axis)

    memo = SampleMemo()
    subsets = [range(5), *([i for i in range(5) if i != out] for out in range(5))]
    for subset in subsets:
        fresh, kept = TensorAgreement(), TensorAgreement()
        for i in subset:
            fresh.add(*pairs[i])
        monkeypatch.setattr(tensor.SampleFigures, "of", counting)
        for i in subset:
            kept.add(*pairs[i], memo=memo)
        monkeypatch.setattr(tensor.SampleFigures, "of", real)
        assert _figures(kept) == _figures(fresh)
    assert len(computed) == 5
    assert _figures(kept)[-1] is not None  # (the per-channel figures were compared too)
