"""What a run reads besides the model and the recipe, as one object."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxquant.calibration.collector import ProgressCallback, memory_budget, session_threads
from onnxquant.calibration.feeds import check_feed, input_specs
from onnxquant.calibration.sources import SampleSource, open_for_model
from onnxquant.errors import UsageError
from onnxquant.mixed_precision import Holdout, Metric
from onnxquant.recipe import Recipe
from onnxquant.recovery.pipeline import Reopen


@dataclass(frozen=True)
class RunData:
    """The samples and run-time settings of one library call.

    ``calib_data``: a folder of .npz files or images, an iterable of ``{input: array}`` dicts, or
    an onnxruntime ``CalibrationDataReader`` (read once). ``holdout``: samples to measure accuracy
    on (default: ``calib_data``). ``metric``: the user's score of a model's outputs (higher is
    better); ``drop_by``: the agreement kind otherwise ("cosine", "top1"...). ``progress``:
    called with (done, total). ``output_kinds``: output name -> kind, as ``--output-kind`` (how the
    search and mixed precision read those outputs; the rest detected). ``threads``: onnxruntime intra-op threads (None: its default);
    ``max_memory``: bytes of activations one calibration pass may fetch (None: no limit).
    """

    calib_data: Any = None
    holdout: Any = None
    metric: Metric | None = None
    drop_by: str = "cosine"
    progress: ProgressCallback | None = None
    threads: int | None = None
    max_memory: int | None = None
    output_kinds: dict[str, str] | None = None

    def __post_init__(self) -> None:
        # a misspelt kind is a usage error here, where the run is described, not a KeyError mid-search
        if self.output_kinds is not None:
            from onnxquant.agreement import parse_kind_overrides

            try:
                object.__setattr__(self, "output_kinds", parse_kind_overrides(self.output_kinds) or None)
            except ValueError as exc:
                raise UsageError(f"output kinds: {exc}") from exc

    def check_output_kinds(self, model: onnx.ModelProto) -> None:
        """UsageError when a kind is given for an output ``model`` does not have (as validate):
        a misspelt name would otherwise change nothing, silently."""
        names = [o.name for o in model.graph.output]
        unknown = sorted(set(self.output_kinds or {}) - set(names))
        if unknown:
            raise UsageError(f"output kind given for {unknown}, which the model does not have "
                             f"(outputs: {', '.join(names)})")

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Every session opened inside uses ``threads``; calibration keeps within ``max_memory``.
        A setting left None leaves the caller's (an enclosing ``session_threads``/``memory_budget``) as it is."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(session_threads(self.threads))
            if self.max_memory is not None:
                stack.enter_context(memory_budget(self.max_memory))
            yield

    @property
    def rereadable(self) -> bool:
        """The calibration data can be read more than once (not a one-pass onnxruntime reader)."""
        return _rereadable(self.calib_data)

    def samples(self, model: onnx.ModelProto, recipe: Recipe, data: Any = None) -> SampleSource:
        """A pass over ``data`` (default: the calibration data), fitted to ``model``'s inputs."""
        return open_for_model(model, self.calib_data if data is None else data, recipe.preprocess)

    def reopener(self, model: onnx.ModelProto, recipe: Recipe) -> Reopen | None:
        """A fresh pass over the calibration data for recovery passes, or None when it cannot be read again."""
        if not self.rereadable:
            return None
        return lambda: self.samples(model, recipe)

    @property
    def unavailable(self) -> str:
        """Why a pass that reads the calibration data again cannot run."""
        if self.calib_data is None:
            return "it needs calibration data, not only saved statistics"
        return "it reads the calibration data again (give a folder or a list, not a one-pass reader)"

    def first_sample(self, model: onnx.ModelProto, recipe: Recipe) -> dict[str, np.ndarray] | None:
        """The first calibration sample, checked against ``model``'s inputs (for the self-check)."""
        for sample in self.samples(model, recipe):
            return check_feed(sample, input_specs(model), 0)
        return None

    def held_out(self, model: onnx.ModelProto, recipe: Recipe) -> Holdout:
        """The held-out samples and ``model``'s outputs on them, for measuring drops."""
        source = self.holdout if self.holdout is not None else self.calib_data
        if not _rereadable(source):
            raise UsageError("mixed precision and sensitivity need held-out samples that can be read repeatedly "
                             "(a folder or a list)")
        return Holdout.from_samples(model, self.samples(model, recipe, source), recipe.calibration.max_samples,
                                    self.drop_by, self.output_kinds)


def _rereadable(data: Any) -> bool:
    return data is not None and not hasattr(data, "get_next")


def run_data(run: RunData | None, **loose: Any) -> RunData:
    """``run``, or one built from the loose keywords the public functions also take; not both."""
    if run is None:
        return RunData(**loose)
    defaults = {k: getattr(RunData, k) for k in loose}
    given = [k for k, v in loose.items() if (v is not None if defaults[k] is None else v != defaults[k])]
    if given:
        raise UsageError(f"give the run's data either as run= or as keywords, not both ({', '.join(sorted(given))})")
    return run
