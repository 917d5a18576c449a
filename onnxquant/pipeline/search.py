"""Stage ``search``: the recipe that agrees best with fp32, chosen among trials that re-plan one
calibrated model (statistics collected once, with histograms, on the calibration samples not held
out), each scored on the held-out part of the calibration data, never on the user's validation set.

Trials follow ``onnxquant.search.candidates``: the recipe as given, the other range estimators
(and, where percentile ranges won, tighter percentiles), bias correction flipped, the layers
nearest the inputs and outputs kept float, the layers that add the most noise at higher precision
(8-bit uint8 weights on AVX2, else float), float compute on int8 weights where integer kernels are estimated no faster (``onnxquant.search.compute``; these
five chosen only when they remove a fifth of the drop), and last SmoothQuant's other strengths
(each smooths and calibrates again). A trial replaces the best so far only when the held-out samples agree it is
better (``onnxquant.search.noise``: a lower drop alone may be luck). The same inputs and trial
count give the same choice.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx

from onnxquant.agreement.tensor import SampleMemo
from onnxquant.calibration.sources import SampleSource
from onnxquant.errors import CalibrationDataError, QuantizationError
from onnxquant.mixed_precision import Holdout, Measurement, run_holdout, score_outputs
from onnxquant.model_io import model_digest
from onnxquant.ops.rules import RULES, Kind
from onnxquant.passes.node_index import NodeIndex
from onnxquant.pipeline.build import build
from onnxquant.pipeline.calibrate import calibrate as calibrate_stage
from onnxquant.pipeline.clock import timed
from onnxquant.pipeline.float_compute import float_compute
from onnxquant.pipeline.islands import without_islands
from onnxquant.pipeline.plan import plan as plan_stage
from onnxquant.pipeline.run_data import RunData
from onnxquant.pipeline.selection import refuse_already_quantized
from onnxquant.pipeline.smooth import smooth
from onnxquant.pipeline.state import State
from onnxquant.planner import UINT8_WEIGHT_OPS
from onnxquant.recipe import Recipe, SearchSettings
from onnxquant.results import FloatCompute
from onnxquant.search.candidates import FLOAT_COMPUTE, FLOAT_LAYERS_MIN_GAIN, TIGHTER_MIN_GAIN, Candidate, Rounds
from onnxquant.search.compute import conv_mac_share, float_compute_costs_no_speed
from onnxquant.search.noise import FEWEST_TESTABLE, compare, pseudo_values
from onnxquant.search.report import SearchReport, Trial, TrialResult
from onnxquant.search.sensitive import rank_by_added_noise, within_caps
from onnxquant.search.split import one_per_block

GIVEN = Candidate("as given")
CHOSEN = "taken"  # how a trial's ``why`` starts when the search moved to it
KEPT_FLOAT = "kept float by the recipe search (it cut the drop on held-out calibration samples)"
# A layer-precision candidate keeps at most this many layers float, at most this share of the
# weighted layers, and at most this share of the weight bytes: keeping more is a different,
# mostly float model, or one that is no longer small (EfficientNet-Lite0's classifier is a
# quarter of its weights).
MAX_FLOAT_LAYERS = 8
MAX_FLOAT_SHARE = 0.1
MAX_FLOAT_BYTES_SHARE = 0.1
# The sensitivity ranking runs both models with every layer's output fetched on at most this many
# held-out samples (on all 16, it took as long as 3 trials on MiniLM): the order needs few.
RANKING_SAMPLES = 8
# A trial that smooths and calibrates again (SmoothQuant's alpha) counts as this many trials of
# the budget: on MiniLM it took 8-9 s and a re-made float model, a plain trial 3-5 s.
RECALIBRATING_TRIAL_COST = 3
# Learned rounding is tried only when a --search-seconds budget leaves at least this much.
MIN_ADAROUND_SECONDS = 20.0


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

    def unsearched(self, state: State, reference: onnx.ModelProto, run: RunData, why: str, chosen: str) -> State:
        """``state``, chosen before any trial ran (``why``), scored once on the held-out samples
        against ``reference`` (the float model it was made from): the report still says what it costs."""
        drop_by = "fine"  # as the trials score
        held = Holdout.from_samples(reference, self.scored, None, drop_by, run.output_kinds)
        m = score_outputs(run_holdout(state.model, held), held, run.metric)
        report = SearchReport(chosen=chosen, scored_samples=len(held.feeds),
                              calibration_samples=state.stats.samples if state.stats is not None else 0,
                              drop_by="metric" if run.metric is not None else drop_by,
                              planned_trials=state.recipe.search.trials, unsearched=why, drop=float(m.drop),
                              sqnr_db=None if run.metric is not None else float(m.sqnr_db), misses=m.misses)
        return _warned(replace(state, search=report).noted(report.summary()), report)


def float_compute_decided(done: FloatCompute) -> str:
    """Why the search ran no trial where the float-compute stage decided before it."""
    why = "the recipe asks" if done.estimate is None and done.dense is None else "int8 kernels are estimated slower here"
    return f"float compute on int8 weights was decided before it: {why}"


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
    if too_few_samples(n, settings, limit):
        have = n if limit is None else min(n, limit)
        return SearchSplit(run, skipped=f"{have} calibration sample(s); it holds one of every {settings.score_every} out "
                                        f"for scoring and needs at least {settings.min_samples}")
    counted = replace(source, length=n)
    every = held_out_every(n, settings.score_every)
    kept = one_per_block(counted, every, held_out=False)
    return SearchSplit(replace(run, calib_data=kept), one_per_block(counted, every, held_out=True))


def too_few_samples(samples: int, settings: SearchSettings, max_samples: int | None) -> bool:
    """Whether ``samples`` calibration samples (at most ``max_samples`` read) are too few for the
    search to hold some out and score trials on them: it is skipped then."""
    return samples < settings.min_samples or (max_samples is not None and max_samples < settings.min_samples)


def held_out_every(samples: int, score_every: int) -> int:
    """One of every how many samples the search holds out: ``score_every``, or more where that
    would hold out fewer than the noise test can ever pass on (16 samples: one of every 2, 8 held
    out, not 4). Trials calibrate on the rest; the chosen recipe calibrates again on them all."""
    return max(2, min(score_every, samples // FEWEST_TESTABLE))


@timed("search")
def search(handed: list[State], split: SearchSplit, run: RunData, keep_calibrated: bool = False,
           float_model: Callable[[], State] | None = None,
           float_kernels: Callable[[], State] | None = None) -> State:
    """The model for the best recipe found, with the search's report in the state.

    ``handed``: the calibrated state, in a list the search empties, so that it alone holds the
    calibrated model and lets it go before the refit builds the chosen recipe from a new one
    (all-MiniLM-L6-v2: a float model's worth less at the run's peak).
    ``float_model``: the float model before smoothing, made again (smoothing rewrites the model in
    place); without it, no trial changes SmoothQuant's alpha. ``float_kernels``: the float model
    prepared for float kernels (as the ``float_compute`` stage builds on); without it, or without
    the Convs' estimate in the calibrated state, no trial computes in float on int8 weights."""
    calibrated = handed.pop()
    started = time.perf_counter()
    settings = calibrated.recipe.search
    crun = split.run
    drop_by = "fine"  # top-1 on a few dozen samples moves in steps of one sample
    held = Holdout.from_samples(calibrated.model, split.scored, None, drop_by, run.output_kinds)
    first, heads, following = _edge_layers(calibrated)
    rounds = Rounds(calibrated.recipe, first, heads, following)
    report = SearchReport(scored_samples=len(held.feeds), calibration_samples=calibrated.stats.samples,
                          drop_by="metric" if run.metric is not None else drop_by, planned_trials=settings.trials)
    base = calibrated  # the calibrated state later trials plan from (a SmoothQuant trial may replace it)
    results: dict[str, tuple[TrialResult, Recipe, State]] = {}
    built: dict[str, State] = {}  # the best trial's quantized model, for the sensitivity ranking
    digested: list[tuple[State, tuple[str, str]]] = []  # base's digests, made again only when base changes

    def base_digests() -> tuple[str, str]:
        if not digested or digested[0][0] is not base:  # (hashing serializes the whole model)
            digested[:] = [(base, _digests(base))]
        return digested[0][1]

    def attempt(candidate: Candidate, recipe: Recipe) -> TrialResult | None:
        if len(report.trials) >= settings.trials:
            return None
        if report.trials and settings.seconds is not None and time.perf_counter() - started > settings.seconds:
            report.cut_by_time = True
            return None
        # a SmoothQuant trial smooths a float model made for it (smoothing rewrites it in place)
        entry = float_model() if candidate.recalibrates and float_model is not None else base
        # a SmoothQuant trial enters before calibration: no statistics, the float model's digest
        trial = Trial(candidate, recipe.to_dict(), *(("", model_digest(entry.model) or "") if candidate.recalibrates
                                                     else base_digests()))
        result, state, model = _trial(trial, base, recipe, crun, held, run, entry, float_kernels)
        report.trials.append(result)
        results[candidate.name] = (result, candidate.apply(recipe), state)
        if model is not None:
            built[candidate.name] = model
        return result

    # the estimators' trials measure bias correction's inputs in the first trial's pass
    _expect(calibrated, rounds.estimators()[:settings.trials - 1], crun)
    best = attempt(GIVEN, calibrated.recipe)
    best_recipe = calibrated.recipe
    if best is not None:
        best.why = "the recipe as given" if best.error is None else "could not be built"

    def take(candidate: Candidate, recipe: Recipe, gain: float = 0.0, against: TrialResult | None = None,
             of_best: float = 0.0) -> None:
        """Try ``candidate`` on ``recipe``; keep it if it beats the best clearly above the noise of
        the held-out samples (and by ``gain`` of the int8 drop, or ``of_best`` of the best's own
        drop); with ``against``, if it scores below the best and beats ``against`` clearly."""
        nonlocal best, best_recipe, base
        result = attempt(candidate, recipe)
        if result is not None:
            at_most, short = None, None
            if gain:
                at_most = int8_best.drop * (1 - gain)
            elif of_best and best is not None and best.error is None:
                at_most, short = best.drop * (1 - of_best), f"removes less than {of_best:.0%} of {best.name}'s drop"
            result.why = _verdict(result, best, at_most, own_metric=run.metric is not None, against=against,
                                  short=short)
        if result is None or not result.why.startswith(CHOSEN):
            built.pop(candidate.name, None)
            if candidate.name in results:  # a SmoothQuant trial's own calibrated model: not needed
                results[candidate.name] = (*results[candidate.name][:2], base)
            return
        best, best_recipe, base = result, results[candidate.name][1], results[candidate.name][2]
        for name in [n for n in built if n != candidate.name]:
            del built[name]  # only the best model is ranked

    for candidate in rounds.estimators():
        take(candidate, calibrated.recipe)
    # Tighter percentiles refine the estimator just chosen: with 6 held-out samples the test cannot
    # tell two clippings apart (PP-OCRv5's detector: 99.9 better on 5 of 6, p 0.047, held-out
    # cosine 0.957 against 0.916), so each is taken when it clearly beats the recipe as given, as
    # percentile ranges did, and removes TIGHTER_MIN_GAIN of the looser level's drop: clipping more
    # is the riskier choice on inputs the scored samples do not show (the same detector at 99.9
    # instead of 99.99: 15% less drop on its 6 scored pages, page CER +0.0080 against +0.0015 of
    # fp32's on 30 held-out pages, its large text lines lost).
    given = report.trials[0] if report.trials else None
    tighter = rounds.tighter_percentiles(best_recipe)
    _expect(base, tighter[:max(0, settings.trials - len(report.trials))], crun, best_recipe)
    for candidate in tighter:
        take(candidate, best_recipe, against=given, of_best=TIGHTER_MIN_GAIN)
    _expect(base, [], crun)
    for candidate in rounds.bias_correction(best_recipe):
        take(candidate, best_recipe)
    int8_best = best
    # slower than DynamicQuantizeLSTM: chosen only for a clear share of the drop, as float layers
    for candidate in rounds.recurrent_float(best_recipe, _has_lstm(base)):
        take(candidate, best_recipe, FLOAT_LAYERS_MIN_GAIN)
    weighted = _weighted(base)
    allowed = min(MAX_FLOAT_LAYERS, int(MAX_FLOAT_SHARE * len(weighted)))
    sizes = _weight_bytes(base)
    total = sum(sizes.values())
    for candidate in rounds.float_layers():
        kept_bytes = sum(sizes.get(name, 0) for name in candidate.keep_float)
        if len(candidate.keep_float) > allowed or kept_bytes > MAX_FLOAT_BYTES_SHARE * total:
            continue
        take(candidate, best_recipe, FLOAT_LAYERS_MIN_GAIN)
    if best is not None and best.error is None and len(report.trials) < settings.trials:
        before = best_recipe  # the counts are alternatives (nested), not steps: each applies to the same recipe
        floated = [name for name in before.nodes.exclude if name not in calibrated.recipe.nodes.exclude]
        left = MAX_FLOAT_BYTES_SHARE * total - sum(sizes.get(name, 0) for name in floated)
        for candidate in _sensitive_candidates(rounds, base, built.get(best.name), before, held, allowed,
                                               len(floated), sizes, left):
            take(candidate, before, FLOAT_LAYERS_MIN_GAIN)
    built.clear()  # memory: the ranking is done
    # float compute on int8 weights quantizes no activation: no later trial (ranges, rounding) applies to it
    for candidate in rounds.float_compute(best is not None and best.error is None and float_kernels is not None
                                          and _float_compute_costs_no_speed(calibrated)):
        take(candidate, best_recipe, FLOAT_LAYERS_MIN_GAIN)
    integer = best is not None and best.name != FLOAT_COMPUTE
    # last: a trial that smooths and calibrates again costs two to three plain trials
    alphas = rounds.smoothquant_alphas(best_recipe) if integer and float_model is not None and calibrated.smoothed \
        and calibrated.recipe.prune.max_drop is None else []
    needed = len(report.trials) + RECALIBRATING_TRIAL_COST * len(alphas)
    if alphas and needed > settings.trials:
        report.not_tried.append(f"{', '.join(c.name for c in alphas)} (each calibrates again, about "
                                f"{RECALIBRATING_TRIAL_COST} trials' time: --search-trials {needed} tries them)")
        alphas = []
    for candidate in alphas:
        take(candidate, best_recipe)
    # learned rounding costs minutes: only within a wall-clock budget, with half of what is left
    left = None if settings.seconds is None else settings.seconds - (time.perf_counter() - started)
    if left is not None and left >= MIN_ADAROUND_SECONDS and integer and best.error is None:
        for candidate in rounds.learned_rounding(best_recipe, left / 2):
            take(candidate, best_recipe)
    if best is None or best.error is not None:
        raise QuantizationError(f"the recipe as given could not be built: {best.error if best else 'no trial ran'}")
    report.chosen = best.name
    given = calibrated.recipe.nodes
    report.kept_float = [name for name in best_recipe.nodes.exclude if name not in given.exclude]
    report.uint8_weights = [name for name in best_recipe.nodes.uint8_weights if name not in given.uint8_weights]
    if best.name == FLOAT_COMPUTE:
        return _float_compute_chosen(built[FLOAT_COMPUTE], calibrated, report)
    firsts = calibrated.float_layers  # first layers kept float by their estimate (first_layers.py)
    if float_model is not None:  # the refit starts from a new float model: the calibrated one is let go
        del calibrated, held
        base = None
        results.clear()
        digested.clear()
        built.clear()  # (a SmoothQuant or learned-rounding trial's model, taken after the ranking)
    refit = _refit(best_recipe, run, float_model)
    chosen = replace(refit if refit is not None else base, recipe=best_recipe, float_layers=firsts)
    state = without_islands(chosen, run if refit is not None else crun, keep_calibrated=keep_calibrated)
    state = _kept_float_said(state, report.kept_float)
    wide = report.uint8_weights
    if wide:
        state = state.noted(f"{len(wide)} layer(s) given full 8-bit uint8 weights by the recipe search (u8u8 "
                            f"kernels, which do not saturate on AVX2; slower than u8s8): {', '.join(wide)}")
    return _warned(replace(state, search=report).noted(report.summary()), report)


def _expect(calibrated: State, candidates: list[Candidate], crun: RunData, recipe: Recipe | None = None) -> None:
    """Tell bias correction's measurements on ``calibrated`` which activation params the trials
    of ``candidates`` (applied to ``recipe``, default the calibrated one) will plan: the next pass
    over the samples measures their inputs under those too, so those trials run no pass of
    their own (``MeasuredShifts.expected``; planned here on copies, which costs a plan each)."""
    shifts = calibrated.measured_shifts
    if shifts is None:
        return
    expected = []
    for candidate in candidates:
        planned_recipe = candidate.apply(recipe or calibrated.recipe)
        if candidate.recalibrates or not planned_recipe.recovery.bias_correction:
            continue
        try:
            planned = plan_stage(replace(calibrated, recipe=planned_recipe, excluded=(), int4=frozenset()), crun)
        except (CalibrationDataError, QuantizationError):
            continue  # (its trial says why)
        expected.append(dict(planned.plan.activations))
        del planned
    shifts.expected = expected


def _float_compute_costs_no_speed(calibrated: State) -> bool:
    """Whether float compute on int8 weights loses no speed here (``search.compute``)."""
    found = calibrated.conv_estimate
    if found is None or found.int8_us < found.fp32_us or calibrated.first_sample is None:
        return False  # (the multiply-adds need shape inference: only where it can matter)
    shapes = {name: tuple(value.shape) for name, value in calibrated.first_sample.items()}
    try:
        share = conv_mac_share(calibrated.model, shapes, set(calibrated.selection.quantized))
    except onnx.shape_inference.InferenceError:
        return False
    return float_compute_costs_no_speed(found, share)


def _kept_float_said(state: State, kept: list[str]) -> State:
    """The layers the search kept float say so, not that the user's --exclude did."""
    if not kept:
        return state
    sel = state.selection
    why = {**sel.float_nodes, **{name: (sel.float_nodes[name][0], KEPT_FLOAT) for name in kept
                                 if name in sel.float_nodes}}
    return replace(state, selection=replace(sel, float_nodes=why))


def _float_compute_chosen(state: State, calibrated: State, report: SearchReport) -> State:
    """The float-compute trial's model as the result: its note says the Convs' estimate (not "the
    recipe asks") and the search's summary follows."""
    state = _kept_float_said(state, report.kept_float)
    done = FloatCompute(state.float_compute.layers, calibrated.conv_estimate)
    notes = tuple(n for n in state.notes if n != state.float_compute.note())
    return _warned(replace(state, float_compute=done, notes=notes, search=report).noted(done.note(), report.summary()),
                   report)


def _refit(recipe: Recipe, run: RunData, float_model: Callable[[], State] | None) -> State | None:
    """The float model smoothed and calibrated again for the chosen recipe on every sample, the
    held-out quarter included, as ``--no-search`` calibrates: the held-out samples chose the recipe
    and need not be lost to its ranges. On PP-OCRv4's detector the percentile ranges of 18 of its
    24 samples read 0.0029 more page characters wrong than fp32, those of all 24 0.0006
    (benchmarks/page_cer.py). None without a way to make the float model again."""
    if float_model is None:
        return None
    return calibrate_stage(refuse_already_quantized(smooth(replace(float_model(), recipe=recipe), run)), run)


def _sensitive_candidates(rounds: Rounds, base: State, quantized: State | None, recipe: Recipe, held: Holdout,
                          allowed: int, floated: int, sizes: dict[str, int], max_bytes: float) -> list[Candidate]:
    """The layers of the best model so far that add the most noise, at higher precision: 8-bit
    uint8 weights for those with 7-bit ones (the AVX2 recipe; at most ``allowed``), else float
    (within what the ``floated`` layers already kept float leave of ``allowed`` and ``max_bytes``)."""
    if quantized is None or quantized.selection is None:
        return []
    sel = quantized.selection
    uint8 = _uint8_applies(recipe)
    if uint8:
        layers = [node for (node, _), (_, _, reduce) in sel.weights.items()
                  if reduce and sel.quantized.get(node) in UINT8_WEIGHT_OPS and node not in sel.uint8_weights]
        sizes = {}  # uint8 weights are no larger: only the count is capped
    else:
        layers = [node for node in _weighted(quantized) if node in sizes]
        allowed -= floated
    if not layers or allowed < 1:
        return []
    ranked = timed("rank")(rank_by_added_noise)(base.model, quantized.model, layers, held.feeds[:RANKING_SAMPLES])
    return rounds.sensitive_layers(within_caps(ranked, sizes, allowed, max_bytes), uint8, allowed)


def _uint8_applies(recipe: Recipe) -> bool:
    """Whether the recipe's weights are 7-bit int8 for onnxruntime's CPU u8s8 kernels, so that
    8-bit uint8 weights (u8u8 kernels) are the higher precision that does not saturate."""
    q = recipe.quantization
    return (recipe.target == "cpu" and q.reduce_range and q.weight_type == "int8" and q.activation_type == "uint8"
            and q.weight_bits == 8)


def _trial(trial: Trial, calibrated: State, base: Recipe, crun: RunData, held: Holdout, run: RunData,
           unsmoothed: State | None = None,
           float_kernels: Callable[[], State] | None = None) -> tuple[TrialResult, State, State | None]:
    """Build and score one trial: its result, the calibrated state it planned from, its model.

    A trial that changes SmoothQuant's alpha smooths ``unsmoothed`` (in place: it is spent) and
    calibrates it on the same kept samples; the float-compute trial is the ``float_compute``
    stage's model on ``float_kernels()``; every other trial plans from ``calibrated``."""
    started = time.perf_counter()
    recipe = trial.candidate.apply(base)
    changes: dict[str, Any] = {s: dict(v) for s, v in trial.candidate.changes}
    if trial.candidate.keep_float:
        changes["keep_float"] = list(trial.candidate.keep_float)
    if trial.candidate.uint8_weights:
        changes["uint8_weights"] = list(trial.candidate.uint8_weights)
    if trial.candidate.name == FLOAT_COMPUTE and float_kernels is None:
        # planned from the calibrated state it would come out integer, scored under the float name
        return (TrialResult(trial.candidate.name, changes, 1.0, 1.0, time.perf_counter() - started,
                            "needs the float model prepared for float kernels"), calibrated, None)
    try:
        if trial.candidate.recalibrates:
            assert unsmoothed is not None
            calibrated = calibrate_stage(smooth(replace(unsmoothed, recipe=recipe, float_layers=calibrated.float_layers),
                                                crun), crun, histograms=True)
        if trial.candidate.name == FLOAT_COMPUTE:
            built = float_compute(replace(calibrated, recipe=recipe), float_kernels)
        else:
            built = build(replace(calibrated, recipe=recipe), crun)
    except CalibrationDataError as exc:
        return (TrialResult(trial.candidate.name, changes, 1.0, 1.0, time.perf_counter() - started, str(exc)),
                calibrated, None)
    m, pseudo = _scored(built.model, held, run)
    result = TrialResult(trial.candidate.name, changes, float(m.drop), float(m.cosine_drop),
                         time.perf_counter() - started, pseudo=pseudo, misses=m.misses)
    return result, calibrated, built


@timed("score")
def _scored(model: onnx.ModelProto, held: Holdout, run: RunData) -> tuple[Measurement, tuple[float, ...]]:
    """A trial's model on the held-out samples: its measurement and per-sample values."""
    outputs = run_holdout(model, held)
    memo = SampleMemo()  # (the whole scoring's per-sample figures serve the leave-one-out ones)
    m = score_outputs(outputs, held, run.metric, memo=memo)
    return m, pseudo_values(outputs, held, float(m.drop), run.metric, memo)


def _warned(state: State, report: SearchReport) -> State:
    """``state`` with the report's warning, if the chosen model misses validate's default budgets."""
    warning = report.warning()
    return state.warned(warning) if warning else state


def _run_trial(trial: Trial, calibrated: State, base: Recipe, crun: RunData, held: Holdout,
               run: RunData, unsmoothed: State | None = None,
               float_kernels: Callable[[], State] | None = None) -> TrialResult:
    """Build and score one trial; only the trial and the state it enters go into its result."""
    return _trial(trial, calibrated, base, crun, held, run, unsmoothed, float_kernels)[0]


def _better(a: TrialResult, b: TrialResult | None) -> bool:
    """Lower drop first, then lower cosine drop; an equal trial never replaces an earlier one."""
    return b is None or b.error is not None or a.key() < b.key()


def _verdict(result: TrialResult, best: TrialResult | None, at_most: float | None,
             own_metric: bool = False, against: TrialResult | None = None, short: str | None = None) -> str:
    """Why the search moves to ``result`` (the text starts with ``CHOSEN``) or not: it failed, it
    is no better than ``best``, its drop is above ``at_most`` (a layer-precision trial must remove
    a fifth of the int8 drop), or its gain is within the noise of the held-out samples (over
    ``against`` where given, else over ``best``)."""
    if result.error is not None:
        return "could not be built"
    if best is None or best.error is not None:
        return f"{CHOSEN}: the first trial that could be built"
    if not _better(result, best):
        return f"no better than {best.name}"
    if at_most is not None and result.drop > at_most:
        return short or f"removes less than {FLOAT_LAYERS_MIN_GAIN:.0%} of the int8 drop"
    ref = against if against is not None and against.error is None else best
    gain = compare(result.drop, result.pseudo, ref.drop, ref.pseudo)

    def said(why: str) -> str:
        """Judged against another trial than the best, the figures are that trial's: say so."""
        return f"{CHOSEN} over {best.name}" + (f" (against {ref.name}: {why})" if ref is not best else f": {why}")

    if gain.clear:
        return said(str(gain))
    if not own_metric and gain.removes_most_of_a_large(ref.drop):
        return said(f"removes {gain.gain / ref.drop:.0%} of a drop of {ref.drop:.3g} ({gain})")
    return f"gain over {ref.name} within noise ({gain})"


def _has_lstm(state: State) -> bool:
    """Whether the plan gives int8 weights to an LSTM (DynamicQuantizeLSTM on the CPU target)."""
    sel = state.selection
    return any(sel.quantized.get(name) == "LSTM" for name in sel.weight_only)


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


def _edge_layers(state: State) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The weighted layers reached from the graph inputs, and those reaching the graph outputs,
    without passing another weighted layer (first layers; heads), in graph order; and the
    weighted layers reached in the same way from the first layers' outputs (the next ones)."""
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
    by_name = {node.name: node for node in graph.node}
    following = walk([o for name in first for o in by_name[name].output], forward=True)
    return first, heads, tuple(name for name in following if name not in first)


def _digests(state: State) -> tuple[str, str]:
    """sha256 of the statistics and of the calibrated model: what a trial plans from."""
    stats = hashlib.sha256()
    for name in sorted(state.stats.tensors):
        s = state.stats.tensors[name]
        stats.update(json.dumps([name, s.min, s.max, s.count, s.masked]).encode())
        if s.histogram is not None:
            stats.update(np.float64([s.histogram.origin, s.histogram.width]).tobytes())
            stats.update(s.histogram.counts.tobytes())
    return stats.hexdigest(), model_digest(state.model) or ""
