"""Regenerate the README's sample outputs from real runs of the commands it shows.

``python -m benchmarks.readme_samples`` runs, from the repository root, the command of each
section listed in ``SAMPLES`` exactly as the README's ``bash`` block writes it (``python -m
models.example && onnxquant ...``; setup steps before the last ``&&`` run once, quietly), and
writes what the last command printed into the first plain fenced block after it, followed by a
line naming the CPU (``lscpu``'s model name) and the date. Everything but timings, latencies and
the hashes of files that hold them (the report) is the same from run to run on one CPU kind.
Run it under ``flock /tmp/onnxquant-bench.lock`` on a shared machine: ``compress`` times models.
"""
from __future__ import annotations

import argparse
import datetime
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# README section headings whose sample output is regenerated.
SAMPLES = ("## Quantize the shipped example", "## Ship it: one command to a validated edge bundle")
STAMP = "Printed by `python -m benchmarks.readme_samples`"
_FENCE = re.compile(r"^```(\w*)$")


def _blocks(lines: list[str], start: int) -> list[tuple[str, int, int]]:
    """The fenced blocks from line ``start`` to the next ``## `` heading: (language, first, last)
    with ``first`` and ``last`` the fence lines."""
    blocks, opened = [], None
    for i in range(start + 1, len(lines)):
        if opened is None and lines[i].startswith("## "):
            break
        match = _FENCE.match(lines[i])
        if match and opened is None:
            opened = (match.group(1), i)
        elif lines[i] == "```" and opened is not None:
            blocks.append((opened[0], opened[1], i))
            opened = None
    return blocks


def _section(lines: list[str], heading: str) -> int:
    try:
        return lines.index(heading)
    except ValueError:
        raise SystemExit(f"README has no section {heading!r}") from None


def section_command(readme: str, heading: str) -> str:
    """The shell line of the first ``bash`` block of section ``heading``."""
    lines = readme.split("\n")
    start = _section(lines, heading)
    for language, first, last in _blocks(lines, start):
        if language == "bash":
            return " ".join(line.rstrip("\\").strip() for line in lines[first + 1:last])
    raise SystemExit(f"README section {heading!r} has no bash block")


def replace_sample(readme: str, heading: str, output: str, stamp: str) -> str:
    """``readme`` with the first plain fenced block after section ``heading``'s bash block holding
    ``output``, and ``stamp`` on the line after it (replacing an earlier stamp there)."""
    lines = readme.split("\n")
    start = _section(lines, heading)
    blocks = _blocks(lines, start)
    after_bash = [b for i, b in enumerate(blocks) if b[0] == "" and any(p[0] == "bash" for p in blocks[:i])]
    if not after_bash:
        raise SystemExit(f"README section {heading!r} has no sample block after its bash block")
    _, first, last = after_bash[0]
    end = last + 1
    if end < len(lines) and lines[end].startswith(STAMP):
        end += 1
    body = output.rstrip("\n").split("\n")
    return "\n".join(lines[: first + 1] + body + ["```", stamp] + lines[end:])


def cpu_name() -> str:
    """``lscpu``'s model name and whether the CPU has VNNI (int8 results differ with it)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = ""
    found = re.search(r"^Model name:\s*(.+)$", text, flags=re.MULTILINE)
    flags = re.search(r"^Flags:\s*(.+)$", text, flags=re.MULTILINE)
    vnni = sorted({f for f in (flags.group(1).split() if flags else []) if f in ("avx512_vnni", "avx_vnni")})
    name = found.group(1).strip() if found else "an unknown CPU"
    return f"{name} ({', '.join(vnni) if vnni else 'no VNNI'})"


def _argv(step: str) -> list[str]:
    """One ``&&`` step of a README line as this interpreter runs it (``python`` and ``onnxquant``)."""
    words = shlex.split(step)
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    if words[0] == "onnxquant":
        return [sys.executable, "-m", "onnxquant", *words[1:]]
    raise SystemExit(f"unexpected README command {step!r}: only python and onnxquant steps are run")


def run_sample(line: str, done: set[str]) -> str:
    """Run the steps of ``line``; return what the last one printed (setup steps run once overall)."""
    *setup, last = [step.strip() for step in line.split("&&")]
    for step in setup:
        if step not in done:
            subprocess.run(_argv(step), cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            done.add(step)
    result = subprocess.run(_argv(last), cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{last!r} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args()
    readme = args.readme.read_text(encoding="utf-8")
    stamp = f"{STAMP} on {cpu_name()}, {datetime.date.today().isoformat()}."
    done: set[str] = set()
    for heading in SAMPLES:
        output = run_sample(section_command(readme, heading), done)
        readme = replace_sample(readme, heading, output, stamp)
    args.readme.write_text(readme, encoding="utf-8")
    print(f"rewrote {len(SAMPLES)} sample blocks in {args.readme} ({stamp})")


if __name__ == "__main__":
    main()
