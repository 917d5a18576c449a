"""Progress bars on stderr, on a terminal only, driven by the library's progress callbacks; and,
on any stderr, one early line when the pace of the first stage says the run will be long."""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

# A first pass over the samples projected at this many seconds or more gets its note: the stages
# after calibration run the model over the samples again (dnsmos, 1.1 MB: calibration 46 s of a
# 242 s quantize), so the whole run takes several times this.
LONG_SECONDS = 20.0


class PaceWatch:
    """Called like a progress callback: from the second sample on, projects the pass's time from
    its pace; the first projection of at least ``LONG_SECONDS`` makes ``note(projected seconds,
    seconds a sample, samples)`` a line for ``say`` (once). It watches the first pass only: the
    same callback is reused by later stages (the search's re-calibrations, the ``--max-drop``
    ranking), each counting again from 1, so a pass that reaches its total ends the watch, and a
    count that goes backwards starts it again (a pass's pace is never measured from another
    pass's start: that charged the whole gap between them to one sample). ``clock``: for tests."""

    def __init__(self, note: Callable[[float, float, int], str], say: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.note, self.say, self.clock = note, say, clock
        self.first: tuple[int, float] | None = None
        self.last = 0  # the latest count seen
        self.told = False  # said, or the first pass is over: nothing more to watch

    def __call__(self, done: int, total: int | None) -> None:
        if self.told or total is None or done < 1:
            return
        now = self.clock()
        if self.first is None or done < self.last:
            self.first, self.last = (done, now), done  # (the first sample's time includes the session's start)
        elif done > self.last:
            self.last = done
            counted, started = self.first
            pace = (now - started) / (done - counted)
            projected = pace * total
            if projected >= LONG_SECONDS:
                self.told = True
                self.say(self.note(projected, pace, total))
        if done >= total:
            self.told = True


def _bar(desc: str, unit: str = "sample") -> tuple[Any, Any]:
    """A tqdm bar on stderr and the library progress callback that drives it."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, file=sys.stderr, leave=False)

    def update(done: int, total: int | None) -> None:
        if total is not None and bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def _show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


@contextlib.contextmanager
def progress(quiet: bool, desc: str, unit: str = "sample",
             long_note: Callable[[float, float, int], str] | None = None) -> Iterator[Any]:
    """A progress callback for the library: a tqdm bar on a TTY, else None; closed on exit.
    ``long_note``: unless quiet, also a ``PaceWatch`` that prints its line on stderr (above the
    bar on a TTY), so a long run says so early, piped or not."""
    watch = None
    if long_note is not None and not quiet:
        watch = PaceWatch(long_note, lambda line: _say(line, bar))
    bar = None
    if not _show_progress(quiet):
        yield watch
        return
    bar, update = _bar(desc, unit)

    def both(done: int, total: int | None) -> None:
        update(done, total)
        if watch is not None:
            watch(done, total)

    try:
        yield both
    finally:
        bar.close()


def _say(line: str, bar: Any) -> None:
    if bar is not None:
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def step_progress(quiet: bool) -> Iterator[Any]:
    """For multi-step commands: each step gets its own bar, named after the step."""
    if not _show_progress(quiet):
        yield None
        return
    bars: list[Any] = []

    def begin(desc: str) -> Any:
        while bars:
            bars.pop().close()
        bar, update = _bar(desc)
        bars.append(bar)
        return update

    try:
        yield begin
    finally:
        while bars:
            bars.pop().close()
