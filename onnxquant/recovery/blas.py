"""numpy's BLAS on one thread, around small dense linear algebra.

Why: OpenBLAS's threaded LAPACK (``np.linalg.inv`` of a 1536x1536 Gram matrix) gives other bits
on 2 threads than on 1, so a factor computed with numpy's default threads depends on the
machine's core count; and on a shared machine its threads spin against each other (a 384x384
factor: 0.13 s on one thread, 2.7 s on two, in a loaded micro-benchmark). One thread makes the
result the same on every machine and is faster for these sizes.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from threadpoolctl import threadpool_limits


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """numpy's BLAS (and its LAPACK) limited to one thread while the block runs; onnxruntime's
    own thread pools are not BLAS and keep their threads."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield
