"""Which Gemm C operands are a per-output-channel bias, and that bias as a vector.

Gemm broadcasts C to (M, N) unidirectionally: a (1, N) or (N,) C, or a single value, is added to
every row, so it is a bias of the N output channels. A (M, 1) or (M, N) C differs row by row (a
per-row bias): flattened it would be read as a channel bias wherever its size happens to be N,
which it is not. One rule, shared by the passes that read a Gemm's C as a bias.
"""
from __future__ import annotations

import numpy as np


def channel_bias(c: np.ndarray, n: int) -> np.ndarray | None:
    """``c`` as the (n,) vector added to every output row, or None if it is not one
    (shape (n,), (1, n), or a single value, expanded)."""
    if c.ndim == 1 and c.shape[0] == n:
        return c
    if c.size == 1:
        return np.full(n, c.reshape(()), dtype=c.dtype)
    if c.shape == (1, n):
        return c.reshape(n)
    return None
