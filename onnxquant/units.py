"""Sizes as people write them (``512M``, ``2G``) and as the library counts them (bytes)."""
from __future__ import annotations

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int) -> int:
    """``512M``, ``2G``, ``1.5GB``, ``2GiB``, ``800000`` -> bytes (powers of 1024)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        raw = str(text).strip().upper().removesuffix("IB").removesuffix("B")
        unit = raw[-1] if raw and raw[-1] in _UNITS else ""
        try:
            value = float(raw[: len(raw) - len(unit)])
        except ValueError:
            raise ValueError(f"{text!r} is not a size like 512M or 2G") from None
    if not 0 < value < float(1 << 62) / _UNITS[unit]:  # also refuses nan and inf
        raise ValueError(f"{text!r}: a size must be a positive finite number of bytes")
    size = int(value * _UNITS[unit])
    if size < 1:
        raise ValueError(f"{text!r}: a size must be at least one byte")
    return size
