"""Fresh tensor and node names: the one rule every rewrite uses, so generated names read alike."""
from __future__ import annotations


def fresh_name(used: set[str], base: str) -> str:
    """``base``, else ``base_2``, ``base_3``...: the first not in ``used``; it is added to ``used``."""
    name, k = base, 1
    while name in used:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name
