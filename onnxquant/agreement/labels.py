"""Labels and maps: outputs that are not float tensors (class ids, strings, ZipMap dicts).

onnxruntime returns a scikit-learn converter's ZipMap output as a Python list of dicts
(one per row: label -> probability). Labels agree when they are equal; a map row agrees when
its best key is the fp32 row's best key, and each key's values are compared as well.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def is_map_rows(value: Any) -> bool:
    """A list of dicts, as onnxruntime returns a sequence of maps (ZipMap)."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) > 0 \
        and all(isinstance(row, Mapping) for row in value)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except (TypeError, ValueError):
        return a == b


def _best_key(row: Mapping[Any, Any]) -> Any:
    """The key with the largest value (the first in key order on ties)."""
    return max(sorted(row, key=str), key=lambda k: row[k]) if row else None


@dataclass
class LabelAgreement:
    """Running agreement rate of labels (element by element) or of map rows (best key), plus
    per key: the largest absolute difference (numeric values) or the agreement rate."""

    items: int = 0
    equal: int = 0
    mismatched_shapes: int = 0
    key_diff: dict[str, float] = field(default_factory=dict)  # numeric maps: max |fp32 - int8| per key
    key_equal: dict[str, int] = field(default_factory=dict)  # per key: rows where the values are equal
    key_rows: dict[str, int] = field(default_factory=dict)

    def add(self, reference: Any, compressed: Any) -> None:
        if is_map_rows(reference):
            self._add_maps(reference, compressed)
            return
        if isinstance(reference, (list, tuple)):  # a sequence of tensors: each item equal or not
            others = compressed if isinstance(compressed, (list, tuple)) and len(compressed) == len(reference) else None
            if others is None:
                self.mismatched_shapes += 1
                self.items += max(len(reference), 1)
                return
            self.items += len(reference)
            self.equal += sum(int(_same(a, b)) for a, b in zip(reference, others))
            return
        r, c = np.asarray(reference), np.asarray(compressed)
        if r.shape != c.shape:
            self.mismatched_shapes += 1
            self.items += max(r.size, 1)
            return
        self.items += r.size
        self.equal += int((r == c).sum())

    def _add_maps(self, reference: Sequence[Mapping[Any, Any]], compressed: Any) -> None:
        if not is_map_rows(compressed) or len(compressed) != len(reference):
            self.mismatched_shapes += 1
            self.items += len(reference)
            return
        for ref, comp in zip(reference, compressed):
            self.items += 1
            self.equal += int(set(ref) == set(comp) and _best_key(ref) == _best_key(comp))
            for key, value in ref.items():
                name = str(key)
                other = comp.get(key)
                self.key_rows[name] = self.key_rows.get(name, 0) + 1
                self.key_equal[name] = self.key_equal.get(name, 0) + int(other == value)
                if isinstance(value, (int, float)) and isinstance(other, (int, float)):
                    self.key_diff[name] = max(self.key_diff.get(name, 0.0), abs(float(value) - float(other)))

    def metrics(self) -> dict[str, Any]:
        if not self.items:
            return {}
        out: dict[str, Any] = {"label_agreement": self.equal / self.items, "labels": self.items}
        if self.key_rows:
            out["per_key"] = {k: ({"max_abs_error": round(self.key_diff[k], 6)} if k in self.key_diff
                                  else {"agreement": self.key_equal[k] / self.key_rows[k]})
                              for k in sorted(self.key_rows)}
        return out
