"""What the commands print: one-line messages, sizes in binary units, JSON or text summaries."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click


def one_line(text: str) -> str:
    """``text`` with control characters escaped: a path holding a newline cannot forge a second line."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


JSON_WRITTEN = "onnxquant.json_written"


def echo_json(document: dict[str, Any]) -> None:
    """``document`` on stdout, remembered so that a failure after it adds no second document."""
    click.echo(json.dumps(document, indent=2, sort_keys=True))
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[JSON_WRITTEN] = True


def emit(summary: dict[str, Any], as_json: bool, quiet: bool, render: Callable[[dict[str, Any]], str]) -> None:
    """JSON for scripts, ``render(summary)`` for people, nothing when quiet."""
    if as_json:
        echo_json(summary)
    elif not quiet:
        click.echo(render(summary))


def size_text(n: float) -> str:
    """Bytes as people read them: B, KiB, MiB, GiB (powers of 1024, one decimal)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)
