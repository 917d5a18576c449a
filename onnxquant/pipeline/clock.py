"""Where a library call spends its time: wall and CPU seconds, and the process's peak memory, per stage.

Stage functions are wrapped with ``@timed("name")``; inside a ``stage_clock()`` each call adds its
own time to its stage. A stage that calls others (``search`` builds, ``build`` plans) is charged
only its own part, so the stages' seconds add up to at most the call's total. Outside a clock
the wrapper costs one context-variable read. Timing never changes what a stage computes.
CPU seconds (all threads: onnxruntime's and the sample workers') say what a stage costs on a
machine shared with other work, where wall seconds mostly say how busy the machine was.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

# Every name ``timed`` is given, in pipeline order (the order reports list them in).
# ``gptq``, ``pair_limits`` and ``bias_correction`` run inside ``recover`` (which keeps the rest of
# it); ``score`` (a search trial's model on the held-out samples) and ``rank`` (the sensitivity
# ranking) inside ``search``.
STAGES = ("load", "prepare", "prune", "smooth", "calibrate", "plan", "recover", "gptq", "pair_limits",
          "bias_correction", "rewrite", "fusion_check", "mixed_precision", "search", "score", "rank", "check",
          "float_compute", "compact", "save")


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (``VmHWM``), in MB; None where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass
class StageClock:
    """Wall and CPU seconds per stage (its own, callees excluded), calls per stage, and the process's
    peak memory so far when the stage last ended (never falling: the first stage that reaches the
    final peak is the one that set it)."""

    started: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    peak_mb: dict[str, float] = field(default_factory=dict)
    _peak: float = 0.0
    _open: list[list[float]] = field(default_factory=list)  # [start, start CPU, callees' wall, callees' CPU]

    def total(self) -> float:
        return time.perf_counter() - self.started

    def enter(self) -> None:
        self._open.append([time.perf_counter(), time.process_time(), 0.0, 0.0])

    def leave(self, stage: str) -> None:
        start, start_cpu, inner, inner_cpu = self._open.pop()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        if self._open:
            self._open[-1][2] += elapsed
            self._open[-1][3] += cpu
        self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed - inner
        self.cpu_seconds[stage] = self.cpu_seconds.get(stage, 0.0) + cpu - inner_cpu
        self.calls[stage] = self.calls.get(stage, 0) + 1
        peak = peak_rss_mb()
        if peak is not None:  # (the kernel's mark can read lower after pages are returned: keep the highest seen)
            self._peak = max(self._peak, peak)
            self.peak_mb[stage] = self._peak

    def breakdown(self) -> dict[str, dict[str, float]]:
        """{stage: {"seconds", "cpu_seconds", "calls", "peak_mb"?}} in pipeline order, stages that ran only."""
        return {stage: {"seconds": self.seconds[stage], "cpu_seconds": self.cpu_seconds[stage], "calls": self.calls[stage],
                        **({"peak_mb": self.peak_mb[stage]} if stage in self.peak_mb else {})}
                for stage in STAGES if stage in self.seconds}


_CLOCK: contextvars.ContextVar[StageClock | None] = contextvars.ContextVar("onnxquant_stage_clock", default=None)


@contextlib.contextmanager
def stage_clock() -> Iterator[StageClock]:
    """Time the stages run inside (a nested call, e.g. a library call made by a stage, keeps the outer clock)."""
    outer = _CLOCK.get()
    if outer is not None:
        yield outer
        return
    clock = StageClock()
    token = _CLOCK.set(clock)
    try:
        yield clock
    finally:
        _CLOCK.reset(token)


def timed(stage: str) -> Callable[[F], F]:
    """Charge the wrapped stage function's time to ``stage`` (one of ``STAGES``)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")

    def wrap(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            clock = _CLOCK.get()
            if clock is None:
                return function(*args, **kwargs)
            clock.enter()
            try:
                return function(*args, **kwargs)
            finally:
                clock.leave(stage)
        return wrapper  # type: ignore[return-value]
    return wrap
