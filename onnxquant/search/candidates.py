"""Which recipes the search tries, in which order.

A coordinate search: each round changes one choice of the best recipe so far, so the number of
trials grows with the number of choices, not their product. The order is fixed, so the same
inputs always meet the same trials. A choice the user made (a value other than the target's
default) is kept: the search varies only what was left to it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from onnxquant.calibration.observers import METHODS
from onnxquant.recipe import Recipe, recipe_for_target

# Range estimators, in the order they are tried after the recipe's own.
ESTIMATORS = tuple(m for m in ("minmax", "percentile", "entropy", "mse") if m in METHODS)
# A candidate that keeps layers float (slower, larger) must remove at least this share of the
# best int8 recipe's drop to be chosen.
FLOAT_LAYERS_MIN_GAIN = 0.2


@dataclass(frozen=True)
class Candidate:
    """One recipe change: section -> {key: value} overrides, and layers kept float."""

    name: str
    changes: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    keep_float: tuple[str, ...] = ()

    def apply(self, recipe: Recipe) -> Recipe:
        sections = {section: dict(values) for section, values in self.changes}
        changed = recipe.with_overrides(**sections) if sections else recipe
        if self.keep_float:
            changed = changed.with_overrides(nodes={"exclude": (*changed.nodes.exclude, *self.keep_float)})
        return changed

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "changes": {s: dict(v) for s, v in self.changes},
                "keep_float": list(self.keep_float)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        changes = tuple((s, tuple(sorted(v.items()))) for s, v in sorted(data.get("changes", {}).items()))
        return cls(data["name"], changes, tuple(data.get("keep_float", ())))


def change(name: str, section: str, **values: Any) -> Candidate:
    return Candidate(name, ((section, tuple(sorted(values.items()))),))


@dataclass
class Rounds:
    """The rounds of the coordinate search over ``base``; ``first``/``heads``: the weighted layers
    nearest the inputs and the outputs (kept float together in the last round)."""

    base: Recipe
    first: tuple[str, ...] = ()
    heads: tuple[str, ...] = ()
    names: list[str] = field(default_factory=list)

    @property
    def defaults(self) -> Recipe:
        return recipe_for_target(self.base.target)

    def estimators(self) -> list[Candidate]:
        own, default = self.base.calibration, self.defaults.calibration
        if (own.method, own.percentile) != (default.method, default.percentile):
            return []  # the user's estimator
        return [change(method, "calibration", method=method) for method in ESTIMATORS if method != own.method]

    def bias_correction(self, best: Recipe) -> list[Candidate]:
        on = best.recovery.bias_correction
        if on != self.defaults.recovery.bias_correction:
            return []  # the user's choice
        return [change("bias correction " + ("off" if on else "on"), "recovery", bias_correction=not on)]

    def float_layers(self) -> list[Candidate]:
        """The layers nearest the outputs, the inputs, and both, kept float. Not for NPU targets,
        which compile only integer node units (a float layer falls back)."""
        out: list[Candidate] = []
        if self.base.every_op or self.base.nodes.include:
            return out
        if self.heads:
            out.append(Candidate(f"last {len(self.heads)} layer(s) float", keep_float=self.heads))
        if self.first and set(self.first) != set(self.heads):
            out.append(Candidate(f"first {len(self.first)} layer(s) float", keep_float=self.first))
        if self.first and self.heads and set(self.first) - set(self.heads):
            both = tuple(dict.fromkeys((*self.first, *self.heads)))
            out.append(Candidate(f"first and last {len(both)} layer(s) float", keep_float=both))
        return out
