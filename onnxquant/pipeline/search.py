"""Stage ``search``: the recipe that agrees best with fp32, chosen among trials that re-plan one
calibrated model (statistics collected once, with histograms, on the calibration samples not held
out), each scored on the held-out part of the calibration data, never on the user's validation set.

Trials follow ``onnxquant.search.candidates``: the recipe as given, the other range estimators,
bias correction flipped, then the layers nearest the inputs and outputs kept float (chosen only
when that removes a fifth of the drop). The same inputs and trial count give the same choice.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from onnxquant.calibration.sources import SampleSource, every_kth
from onnxquant.errors import CalibrationDataError, QuantizationError
from onnxquant.mixed_precision import Holdout, measure
from onnxquant.model_io import PROTOBUF_LIMIT, serialize
from onnxquant.ops.rules import RULES, Kind
from onnxquant.passes.node_index import NodeIndex
from onnxquant.pipeline.build import build
from onnxquant.pipeline.clock import timed
from onnxquant.pipeline.islands import without_islands
from onnxquant.pipeline.run_data import RunData
from onnxquant.pipeline.state import State
from onnxquant.recipe import Recipe
from onnxquant.search.candidates import FLOAT_LAYERS_MIN_GAIN, Candidate, Rounds
from onnxquant.search.report import SearchReport, Trial, TrialResult

GIVEN = Candidate("as given")
KEPT_FLOAT = "kept float by the recipe search (it cut the drop on held-out calibration samples)"
# A layer-precision candidate keeps at most this many layers float, at most this share of the
# weighted layers, and at most this share of the weight bytes: keeping more is a different,
# mostly float model, or one that is no longer small (EfficientNet-Lite0's classifier is a
# quarter of its weights).
MAX_FLOAT_LAYERS = 8
MAX_FLOAT_SHARE = 0.1
MAX_FLOAT_BYTES_SHARE = 0.1


@dataclass(frozen=True)
class SearchSplit:
    """The run that calibrates on the kept samples, and the held-out samples trials are scored on;
    or, with ``skipped``, why the recipe is used as given (``off``: the recipe turns the search off)."""

    run: RunData
    scored: SampleSource | None = None
    skipped: str | None = None
    off: bool = False

    @property
    def searching(self) -> bool:
        return not self.off and self.skipped is None

    def told(self, state: State) -> State:
        """``state`` with a skipped search said: a note, and the report's reason."""
        if self.off or self.skipped is None:
            return state
        return replace(state, search=SearchReport(skipped=self.skipped)).noted(f"recipe search skipped: {self.skipped}")


def split_for_search(state: State, run: RunData, *, saved_stats: bool, max_drop: float | None) -> SearchSplit:
    """How the calibration data divides for the search (``off`` when the recipe turns it off)."""
    settings = state.recipe.search
    if not settings.enabled:
        return SearchSplit(run, off=True)
    if max_drop is not None:
        return SearchSplit(run, skipped="mixed precision (max_drop) chooses the float layers instead")
    if saved_stats:
        return SearchSplit(run, skipped="it needs calibration data, not only saved statistics")
    if not run.rereadable:
        return SearchSplit(run, skipped="the calibration data can be read only once (a reader)")
    source = run.samples(state.model, state.recipe)
    n = source.length
    if n is None:
        n = sum(1 for _ in source)
    limit = state.recipe.calibration.max_samples
    if n < settings.min_samples or (limit is not None and limit < settings.min_samples):
        have = n if limit is None else min(n, limit)
        return SearchSplit(run, skipped=f"{have} calibration sample(s); it holds every {settings.score_every}th out "
                                        f"for scoring and needs at least {settings.min_samples}")
    counted = replace(source, length=n)
    kept = every_kth(counted, settings.score_every, held_out=False)
    return SearchSplit(replace(run, calib_data=kept), every_kth(counted, settings.score_every, held_out=True))


@timed("search")
def search(calibrated: State, split: SearchSplit, run: RunData, keep_calibrated: bool = False) -> State:
    """The model for the best recipe found, with the search's report in the state."""
    started = time.perf_counter()
    settings = calibrated.recipe.search
    crun = split.run
    drop_by = "fine"  # top-1 on a few dozen samples moves in steps of one sample
    held = Holdout.from_samples(calibrated.model, split.scored, None, drop_by)
    first, heads = _edge_layers(calibrated)
    rounds = Rounds(calibrated.recipe, first, heads)
    digests = _digests(calibrated)
    report = SearchReport(scored_samples=len(held.feeds), calibration_samples=calibrated.stats.samples,
                          drop_by="metric" if run.metric is not None else drop_by, planned_trials=settings.trials)
    results: dict[str, tuple[TrialResult, Recipe]] = {}

    def attempt(candidate: Candidate, base: Recipe) -> TrialResult | None:
        if len(report.trials) >= settings.trials:
            return None
        if report.trials and settings.seconds is not None and time.perf_counter() - started > settings.seconds:
            report.cut_by_time = True
            return None
        trial = Trial(candidate, base.to_dict(), *digests)
        result = _run_trial(trial, calibrated, base, crun, held, run)
        report.trials.append(result)
        results[candidate.name] = (result, candidate.apply(base))
        return result

    best = attempt(GIVEN, calibrated.recipe)
    best_recipe = calibrated.recipe
    for candidate in rounds.estimators():
        result = attempt(candidate, calibrated.recipe)
        if result is not None and result.error is None and _better(result, best):
            best, best_recipe = result, results[candidate.name][1]
    for candidate in rounds.bias_correction(best_recipe):
        result = attempt(candidate, best_recipe)
        if result is not None and result.error is None and _better(result, best):
            best, best_recipe = result, results[candidate.name][1]
    int8_best = best
    allowed = min(MAX_FLOAT_LAYERS, int(MAX_FLOAT_SHARE * len(_weighted(calibrated))))
    sizes = _weight_bytes(calibrated)
    total = sum(sizes.values())
    for candidate in rounds.float_layers():
        kept_bytes = sum(sizes.get(name, 0) for name in candidate.keep_float)
        if len(candidate.keep_float) > allowed or kept_bytes > MAX_FLOAT_BYTES_SHARE * total:
            continue
        result = attempt(candidate, best_recipe)
        if (result is not None and result.error is None and int8_best is not None and _better(result, best)
                and result.drop <= int8_best.drop * (1 - FLOAT_LAYERS_MIN_GAIN)):
            best, best_recipe = result, results[candidate.name][1]
    if best is None or best.error is not None:
        raise QuantizationError(f"the recipe as given could not be built: {best.error if best else 'no trial ran'}")
    report.chosen = best.name
    chosen = replace(calibrated, recipe=best_recipe)
    state = without_islands(chosen, crun, keep_calibrated=keep_calibrated)
    kept = results[best.name][0].changes.get("keep_float", []) if best.name in results else []
    if kept:  # say why they are float: not the user's --exclude
        sel = state.selection
        why = {**sel.float_nodes, **{name: (sel.float_nodes[name][0], KEPT_FLOAT) for name in kept
                                     if name in sel.float_nodes}}
        state = replace(state, selection=replace(sel, float_nodes=why))
    return replace(state, search=report).noted(report.summary())


def _run_trial(trial: Trial, calibrated: State, base: Recipe, crun: RunData, held: Holdout,
               run: RunData) -> TrialResult:
    """Build and score one trial; only the trial and the calibrated state go into its result."""
    started = time.perf_counter()
    recipe = trial.candidate.apply(base)
    changes: dict[str, Any] = {s: dict(v) for s, v in trial.candidate.changes}
    if trial.candidate.keep_float:
        changes["keep_float"] = list(trial.candidate.keep_float)
    try:
        built = build(replace(calibrated, recipe=recipe), crun)
    except CalibrationDataError as exc:
        return TrialResult(trial.candidate.name, changes, 1.0, 1.0, time.perf_counter() - started, str(exc))
    m = measure(built.model, held, run.metric)
    return TrialResult(trial.candidate.name, changes, float(m.drop), float(m.cosine_drop),
                       time.perf_counter() - started)


def _better(a: TrialResult, b: TrialResult | None) -> bool:
    """Lower drop first, then lower cosine drop; an equal trial never replaces an earlier one."""
    return b is None or b.error is not None or a.key() < b.key()


def _weighted(state: State) -> set[str]:
    sel = state.selection
    return {name for name, op in sel.quantized.items() if op in RULES and RULES[op].kind == Kind.WEIGHTED}


def _weight_bytes(state: State) -> dict[str, int]:
    """The float weight bytes of each quantized weighted layer."""
    inits = {i.name: i for i in state.model.graph.initializer}
    sizes = {}
    for (node, weight), _ in state.selection.weights.items():
        init = inits.get(weight)
        if init is not None:
            sizes[node] = sizes.get(node, 0) + 4 * int(np.prod(init.dims, dtype=np.int64))
    return sizes


def _edge_layers(state: State) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The weighted layers reached from the graph inputs, and those reaching the graph outputs,
    without passing another weighted layer (first layers; heads), in graph order."""
    graph = state.model.graph
    weighted = _weighted(state)
    index = NodeIndex(graph)

    def walk(starts: list[str], forward: bool) -> tuple[str, ...]:
        found, seen, stack = set(), set(), list(starts)
        while stack:
            name = stack.pop()
            steps = index.readers.get(name, []) if forward else [index.producer[name]] if name in index.producer else []
            for k in steps:
                if k in seen:
                    continue
                seen.add(k)
                node = index.nodes[k]
                if node.name in weighted:
                    found.add(k)
                else:
                    stack.extend(node.output if forward else [i for i in node.input if i])
        return tuple(index.nodes[k].name for k in sorted(found))

    first = walk([i.name for i in graph.input if i.name not in index.inits], forward=True)
    heads = walk([o.name for o in graph.output], forward=False)
    return first, heads


def _digests(state: State) -> tuple[str, str]:
    """sha256 of the statistics and of the calibrated model: what a trial plans from."""
    stats = hashlib.sha256()
    for name in sorted(state.stats.tensors):
        s = state.stats.tensors[name]
        stats.update(json.dumps([name, s.min, s.max, s.count, s.masked]).encode())
        if s.histogram is not None:
            stats.update(np.float64([s.histogram.origin, s.histogram.width]).tobytes())
            stats.update(s.histogram.counts.tobytes())
    model = state.model
    digest = hashlib.sha256(serialize(model)).hexdigest() if model.ByteSize() < PROTOBUF_LIMIT else ""
    return stats.hexdigest(), digest
