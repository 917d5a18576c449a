"""Which calibration samples the recipe search holds out for scoring: one of every block of
``every`` consecutive samples, at a position that moves from block to block.

Holding out every ``every``-th sample by position aliases with data laid out in a period: MTCNN
O-Net's calibration crops come face, non-face, non-face, face, ... so every 4th one was a face,
and all 33 held-out samples were faces the net is sure of (KL 4e-6 against fp32, where the
benchmark's mixed held-out crops read 5e-4): the search scored its trials where int8 costs
almost nothing. Held out this way, they mix both kinds (KL 3e-4). One sample per block keeps the
held-out part spread over the whole order, as before; its place in the block comes from a fixed
hash of the block's number, so no period in the order can line up with it, and the same data
always splits the same way on every machine.
"""
from __future__ import annotations

from collections.abc import Iterator

from onnxquant.calibration.sources import Sample, SampleSource

_MASK = 2**64 - 1


def held_out_position(block: int, every: int) -> int:
    """The position (0 .. every - 1) of the held-out sample inside block ``block``: splitmix64's
    finaliser of the block number, whose consecutive outputs look independent (a multiplicative
    hash alone repeats a pattern every few blocks)."""
    z = (block + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return (z ^ (z >> 31)) % every


def is_held_out(index: int, every: int, length: int | None) -> bool:
    """Whether sample ``index`` is held out: one per full block of ``every`` (a last, partial
    block is kept whole, as the held-out count is ``length // every``)."""
    block, position = divmod(index, every)
    if length is not None and block >= length // every:
        return False
    return position == held_out_position(block, every)


def one_per_block(source: SampleSource, every: int, held_out: bool) -> SampleSource:
    """The held-out samples of ``source`` (``held_out``), or all the others, in order. The
    source's length must be known: it decides whether the last block is full."""
    length = source.length

    def generate() -> Iterator[Sample]:
        return (sample for i, sample in enumerate(source) if is_held_out(i, every, length) == held_out)

    count = None if length is None else (length // every if held_out else length - length // every)
    part = "held out" if held_out else "kept"
    return SampleSource(generate, count, f"one of every {every} samples {part} of {source.description}",
                        source.rereadable)
