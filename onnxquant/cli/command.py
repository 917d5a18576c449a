"""The command classes every ``onnxquant`` command uses: errors become one line and an exit code.

A typed library error prints ``error: <message>`` and exits with its code; Ctrl-C and SIGTERM
unwind (so nothing is left behind) and exit 130 and 143; a traceback only with ``--debug``. With
``--json``, stdout also gets ``{"error": ..., "exit_code": ...}`` where the command had written no
JSON document yet, so a script that parses stdout always has one.
"""
from __future__ import annotations

import contextlib
import itertools
import signal
import threading
from collections.abc import Iterator
from typing import Any

import click

from onnxquant.cli.output import JSON_WRITTEN, echo_json, one_line
from onnxquant.errors import EXIT_CODES, INTERRUPTED, TERMINATED, OnnxQuantError

# Parameters that name files a command reads, and files it writes (``_refuse_aliasing``).
_MODEL_INPUTS = ("model", "original", "compressed")
_DATA_INPUTS = ("calib_data", "holdout", "recipe_path", "validation_path", "load_stats", "job")
_MODEL_OUTPUTS = ("output",)
_FILE_OUTPUTS = ("save_stats",)


def _refuse_aliasing(params: dict[str, Any]) -> None:
    """Every command: no output may be one of its input files, checked before any work."""
    from onnxquant.outputs import data_files, model_files, model_outputs, refuse_aliasing

    inputs = itertools.chain(
        (f for key in _MODEL_INPUTS if params.get(key) is not None for f in model_files(params[key])),
        (f for key in _DATA_INPUTS if params.get(key) is not None for f in data_files(params[key])))
    outputs = [f for key in _MODEL_OUTPUTS if params.get(key) is not None for f in model_outputs(params[key])]
    outputs += [params[key] for key in _FILE_OUTPUTS if params.get(key) is not None]
    if outputs:
        refuse_aliasing(inputs, outputs)


def exit_codes_epilog() -> str:
    """The exit-code table every command's --help ends with (``\b``: click keeps the lines as they are)."""
    return "\b\nExit codes:\n" + "\n".join(f"  {code:<4d} {meaning}" for code, meaning in EXIT_CODES.items())


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a CI timeout): unwound like Ctrl-C, so nothing is left behind."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While a command runs, SIGTERM raises instead of killing the process at once (the
    previous handler comes back after; only the main thread can set one)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def renamed_args(args: list[str], renamed: dict[str, str]) -> tuple[list[str], list[str]]:
    """``args`` with each old option spelling replaced by its new one (``--old`` and ``--old=V``;
    nothing after ``--``), and one note per old spelling used."""
    out: list[str] = []
    notes: list[str] = []
    rest = iter(args)
    for arg in rest:
        if arg == "--":
            out += [arg, *rest]
            break
        old, eq, value = arg.partition("=")
        new = renamed.get(old)
        if new is None:
            out.append(arg)
            continue
        out.append(new + eq + value)
        note = f"{old} is now {new}; the old spelling works until the next release"
        if note not in notes:
            notes.append(note)
    return out, notes


class Command(click.Command):
    """Typed library errors become one line and their exit code; tracebacks only with --debug.

    ``renamed``: old option spellings and their new ones; the old still work, with a ``note:``
    on stderr (not with -q; never on stdout, so --json stays one JSON document).
    """

    def __init__(self, *args: Any, renamed: dict[str, str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("epilog", exit_codes_epilog())
        super().__init__(*args, **kwargs)
        self.renamed = dict(renamed or {})

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        args, ctx.meta["onnxquant.renamed"] = renamed_args(args, self.renamed)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        if not ctx.params.get("quiet"):
            for note in ctx.meta.get("onnxquant.renamed", []):
                click.echo(f"note: {note}", err=True)
        try:
            _refuse_aliasing(ctx.params)
            with _sigterm_unwinds():
                return super().invoke(ctx)
        except OnnxQuantError as exc:
            if ctx.params.get("debug"):
                raise
            _fail(ctx, one_line(str(exc)), exc.exit_code)
        except _Terminated:
            _fail(ctx, "terminated; nothing was written", TERMINATED)
        except KeyboardInterrupt:
            _fail(ctx, "interrupted; nothing was written", INTERRUPTED)
        except MemoryError:
            _fail(ctx, "out of memory", 1)
        except OSError as exc:  # the system refused a file (full disk, size limit, permissions): exit 2
            if ctx.params.get("debug"):
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(ctx, f"{one_line(where + (exc.strerror or str(exc)))}; nothing was written", 2)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug of ours: still one line, and the way to see more
            if ctx.params.get("debug"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            _fail(ctx, f"internal error ({type(exc).__name__}: {one_line(first)}); --debug shows the traceback; "
                  "please report it", 1)


def _fail(ctx: click.Context, message: str, code: int) -> None:
    """``error: message`` on stderr and exit ``code``; with --json, the error as JSON on stdout too
    (unless the command already wrote its document there, as a failed budget's report)."""
    click.echo(f"error: {message}", err=True)
    if ctx.params.get("as_json") and not ctx.meta.get(JSON_WRITTEN):
        echo_json({"error": message, "exit_code": code})
    ctx.exit(code)


class Group(click.Group):
    """Bad options and arguments are one ``error:`` line with exit 2, like every other error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("epilog", exit_codes_epilog())
        super().__init__(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except click.ClickException as exc:
            click.echo(f"error: {one_line(exc.format_message())}", err=True)
            ctx.exit(exc.exit_code)
