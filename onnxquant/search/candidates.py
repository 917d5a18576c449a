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
# Tighter percentiles, each tried against the best so far, once percentile ranges at the default
# (99.999) have beaten the recipe's own estimator: a detector whose activations have rare
# extreme pixels (PP-OCRv5's DB detector: one channel reaches 800 where most stay under 10) loses
# its small channels to ranges stretched to them. 99.5 already clipped too much there. Heavy-tailed
# activations do the same (PP-OCRv5's recogniser: its backbone's output reaches 189 where 99.9% of
# values stay under 57; held-out CER against fp32 0.017 at 99.999, 0.007 at 99.99).
TIGHTER_PERCENTILES = (99.99, 99.9)
# Each tighter level must remove this share of the looser level's drop (pipeline/search.py).
TIGHTER_MIN_GAIN = 0.2
# SmoothQuant migration strengths tried beside the default (0.75): less and more of the
# activations' outliers moved into the weights.
SMOOTHQUANT_ALPHAS = (0.5, 0.9)
SMOOTHING_KEYS = ("smoothquant_alpha",)
# The trial that computes every layer in float on its int8 weights.
FLOAT_COMPUTE = "float compute on int8 weights"
# How many of the most sensitive layers a candidate gives higher precision (within the caps).
SENSITIVE_COUNTS = (1, 3)


@dataclass(frozen=True)
class Candidate:
    """One recipe change: section -> {key: value} overrides, layers kept float, and layers given
    full 8-bit uint8 weights."""

    name: str
    changes: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    keep_float: tuple[str, ...] = ()
    uint8_weights: tuple[str, ...] = ()

    @property
    def recalibrates(self) -> bool:
        """Whether the trial must smooth and calibrate again: SmoothQuant's alpha changes the
        weights and the activation ranges the statistics describe."""
        return any(section == "recovery" and key in SMOOTHING_KEYS for section, values in self.changes
                   for key, _ in values)

    def apply(self, recipe: Recipe) -> Recipe:
        sections = {section: dict(values) for section, values in self.changes}
        changed = recipe.with_overrides(**sections) if sections else recipe
        if self.keep_float:
            exclude = tuple(dict.fromkeys((*changed.nodes.exclude, *self.keep_float)))
            changed = changed.with_overrides(nodes={"exclude": exclude})
        if self.uint8_weights:
            wide = tuple(dict.fromkeys((*changed.nodes.uint8_weights, *self.uint8_weights)))
            changed = changed.with_overrides(nodes={"uint8_weights": wide})
        return changed

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "changes": {s: dict(v) for s, v in self.changes},
                "keep_float": list(self.keep_float), "uint8_weights": list(self.uint8_weights)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        changes = tuple((s, tuple(sorted(v.items()))) for s, v in sorted(data.get("changes", {}).items()))
        return cls(data["name"], changes, tuple(data.get("keep_float", ())), tuple(data.get("uint8_weights", ())))


def change(name: str, section: str, **values: Any) -> Candidate:
    return Candidate(name, ((section, tuple(sorted(values.items()))),))


@dataclass
class Rounds:
    """The rounds of the coordinate search over ``base``; ``first``/``heads``: the weighted layers
    nearest the inputs and the outputs (kept float together in the last round); ``following``:
    the weighted layers right after the first ones."""

    base: Recipe
    first: tuple[str, ...] = ()
    heads: tuple[str, ...] = ()
    following: tuple[str, ...] = ()
    names: list[str] = field(default_factory=list)

    @property
    def defaults(self) -> Recipe:
        return recipe_for_target(self.base.target)

    def estimators(self) -> list[Candidate]:
        own, default = self.base.calibration, self.defaults.calibration
        if (own.method, own.percentile) != (default.method, default.percentile):
            return []  # the user's estimator
        return [change(method, "calibration", method=method) for method in ESTIMATORS if method != own.method]

    def tighter_percentiles(self, best: Recipe) -> list[Candidate]:
        """``TIGHTER_PERCENTILES``, when the search chose percentile ranges at the default itself
        (not the user's estimator or percentile)."""
        own, default = self.base.calibration, self.defaults.calibration
        if (own.method, own.percentile) != (default.method, default.percentile):
            return []
        if (best.calibration.method, best.calibration.percentile) != ("percentile", default.percentile):
            return []
        return [change(f"percentile {p}", "calibration", method="percentile", percentile=p) for p in TIGHTER_PERCENTILES]

    def bias_correction(self, best: Recipe) -> list[Candidate]:
        on = best.recovery.bias_correction
        if on != self.defaults.recovery.bias_correction:
            return []  # the user's choice
        return [change("bias correction " + ("off" if on else "on"), "recovery", bias_correction=not on)]

    def recurrent_float(self, best: Recipe, has_lstm: bool) -> list[Candidate]:
        """LSTMs computed in float from their int8 weights, for a CPU recipe that left them to
        DynamicQuantizeLSTM: its per-step uint8 activations compound over long sequences
        (Resemblyzer's speaker encoder, 160 steps: embedding cosine 0.81 against 0.99)."""
        if not has_lstm or best.target != "cpu" or best.quantization.recurrent_integer is not None:
            return []  # no LSTM, another target, or the user's choice
        return [change("LSTMs in float from int8 weights (fp32 speed)", "quantization", recurrent_integer=False)]

    def smoothquant_alphas(self, best: Recipe) -> list[Candidate]:
        """Other SmoothQuant strengths, for a recipe that smooths with the default one."""
        own = best.recovery
        if not own.smoothquant or own.smoothquant_alpha != self.defaults.recovery.smoothquant_alpha:
            return []  # off, or the user's alpha
        return [change(f"SmoothQuant alpha {a}", "recovery", smoothquant_alpha=a) for a in SMOOTHQUANT_ALPHAS]

    def learned_rounding(self, best: Recipe, seconds: float) -> list[Candidate]:
        """Learned rounding of the weights, capped at ``seconds`` (layers past it keep nearest
        rounding); not when the recipe has it on already."""
        if best.recovery.adaround:
            return []
        return [change("learned rounding", "recovery", adaround=True, adaround_seconds=round(seconds, 1))]

    def sensitive_layers(self, ranked: list[str], uint8: bool, allowed: int) -> list[Candidate]:
        """The ``k`` layers that add the most error (``ranked``, worst first) at higher precision:
        full 8-bit uint8 weights where the recipe's are 7-bit for an AVX2 host (``uint8``), else
        float (not for NPU targets, as ``float_layers``). At most ``allowed`` layers."""
        if not uint8 and (self.base.every_op or self.base.nodes.include):
            return []
        out, seen = [], set()
        for k in SENSITIVE_COUNTS:
            chosen = tuple(ranked[:min(k, allowed)])
            if not chosen or chosen in seen:
                continue
            seen.add(chosen)
            if uint8:
                out.append(Candidate(f"{len(chosen)} most sensitive layer(s) 8-bit uint8", uint8_weights=chosen))
            else:
                out.append(Candidate(f"{len(chosen)} most sensitive layer(s) float", keep_float=chosen))
        return out

    def float_compute(self, costs_no_speed: bool) -> list[Candidate]:
        """Every layer's int8 weights computed in float (no activation quantized, the same size),
        where that loses no speed (``search.compute``); not where the recipe chose the kernels,
        and for the CPU target only."""
        if not costs_no_speed or self.base.target != "cpu" or self.base.quantization.integer_compute is not None:
            return []
        return [change(FLOAT_COMPUTE, "quantization", integer_compute=False)]

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
        if self.first and self.following:
            # the first layer's output stays float too (EfficientNet-Lite0's stem and first
            # depthwise Conv: held-out KL 0.0074 -> 0.0041 here)
            deeper = tuple(dict.fromkeys((*self.first, *self.following)))
            out.append(Candidate(f"first {len(deeper)} layer(s) float (two deep)", keep_float=deeper))
        return out
