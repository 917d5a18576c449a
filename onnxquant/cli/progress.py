"""Progress bars on stderr, on a terminal only, driven by the library's progress callbacks."""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any


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
def progress(quiet: bool, desc: str, unit: str = "sample") -> Iterator[Any]:
    """A progress callback for the library: a tqdm bar on a TTY, else None; closed on exit."""
    if not _show_progress(quiet):
        yield None
        return
    bar, update = _bar(desc, unit)
    try:
        yield update
    finally:
        bar.close()


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
