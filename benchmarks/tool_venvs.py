"""Quantizers whose pins clash with ours, each run from its own virtual environment.

AIMET-ONNX and AMD Quark pin their own onnx/onnxruntime (Quark: onnx<=1.22, onnxruntime<=1.28;
AIMET pulls torch and torchvision), so they cannot share the project's environment. Each gets a
venv under ``build/venvs/<tool>`` (git-ignored), made once from PyPI and reused while its stamp
(the exact requirement list) matches. The tool's script, a plain file in benchmarks/ that imports
only the tool, onnx and numpy, runs in that venv's python as the benchmark's subprocess and
prints the same one JSON line as ``benchmarks/quantize_one.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
DEFAULT_ROOT = BENCHMARKS.parent / "build" / "venvs"
STAMP = "onnxquant-requirements.txt"


@dataclass(frozen=True)
class VenvTool:
    """One foreign quantizer: what to pip-install (in order) and the script that runs it."""

    name: str
    # Each inner tuple is one ``pip install`` call, in order: torch first, so that pip keeps the
    # local CPU wheel (torch==2.13.0) and never resolves a CUDA build for the tool.
    installs: tuple[tuple[str, ...], ...]
    script: str
    module: str  # imported once after installing, to prove the venv works

    @property
    def requirements(self) -> str:
        return "\n".join(" ".join(step) for step in self.installs) + "\n"


VENV_TOOLS: dict[str, VenvTool] = {
    # aimet-onnx needs torch (and torchvision through onnx2torch); unpinned, pip picks torch 2.14
    # with the CUDA libraries. torchvision 0.28 is the release that accepts torch 2.13; its C ops do
    # not load against the CPU wheel (`import torchvision` fails), but AIMET's PTQ never imports it.
    "aimet": VenvTool("aimet", (("torch==2.13.0", "torchvision==0.28.0"), ("aimet-onnx==2.42.0",)),
                      "quantize_aimet.py", "aimet_onnx"),
    # amd-quark's ONNX quantizer imports torch (its custom-op loader) and onnxruntime, yet declares
    # neither (onnxruntime<=1.28.0 only in its `cli` extra); it pins onnx<=1.22.
    "quark": VenvTool("quark", (("torch==2.13.0",), ("amd-quark==0.13", "onnxruntime==1.28.0")),
                      "quantize_quark.py", "quark.onnx"),
}


def venv_python(tool: str, root: Path = DEFAULT_ROOT) -> Path:
    return root / tool / "bin" / "python"


def venv_ready(tool: str, root: Path = DEFAULT_ROOT) -> bool:
    """A venv is reused only when it was finished with this exact requirement list."""
    stamp = root / tool / STAMP
    return venv_python(tool, root).exists() and stamp.exists() and stamp.read_text() == VENV_TOOLS[tool].requirements


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _error_line(stderr: str) -> str:
    """pip ends its stderr with warnings as often as with the error: prefer the last ERROR line."""
    errors = [line for line in stderr.splitlines() if line.startswith("ERROR")]
    return errors[-1].strip() if errors else _last_line(stderr)


def ensure_venv(tool: str, root: Path = DEFAULT_ROOT, install: bool = True) -> str | None:
    """Make (or reuse) the tool's venv; None when it is ready, else one line saying why not.

    A failed install leaves no stamp, so the next run tries again instead of using a half venv.
    """
    if venv_ready(tool, root):
        return None
    if not install:
        return f"no tool venv at {root / tool}"
    if (tool, root) in _FAILED:  # one failed install per run, not one per model
        return _FAILED[tool, root]
    reason = _make_venv(tool, root)
    if reason is not None:
        _FAILED[tool, root] = reason
    return reason


_FAILED: dict[tuple[str, Path], str] = {}


def _make_venv(tool: str, root: Path) -> str | None:
    spec = VENV_TOOLS[tool]
    folder = root / tool
    folder.parent.mkdir(parents=True, exist_ok=True)
    (folder / STAMP).unlink(missing_ok=True)
    steps = [[sys.executable, "-m", "venv", "--clear", str(folder)]]
    steps += [[str(venv_python(tool, root)), "-m", "pip", "install", "-q", *step] for step in spec.installs]
    steps.append([str(venv_python(tool, root)), "-c", f"import {spec.module}"])
    for step in steps:
        try:
            proc = subprocess.run(step, capture_output=True, text=True)
        except OSError as exc:
            return f"tool venv could not be made: {exc}"
        if proc.returncode != 0:
            return f"tool venv could not be made: `{' '.join(step[-3:])}` failed: {_error_line(proc.stderr) or '?'}"[:300]
    (folder / STAMP).write_text(spec.requirements)
    return None


def parse_output(returncode: int, stdout: str, stderr: str) -> dict:
    """The subprocess's JSON line (the last line of stdout), or a failure row whose error is the
    last line of stderr: a tool that crashes its interpreter still yields one row."""
    try:
        info = json.loads(_last_line(stdout))
        if not isinstance(info, dict):
            raise ValueError("not an object")
    except ValueError:
        return {"ok": False, "error": _last_line(stderr) or f"crashed (exit code {returncode})"}
    return info


def run_tool(tool: str, model: Path, calib: Path, out: Path, scratch: Path, root: Path = DEFAULT_ROOT,
             install: bool = True) -> dict:
    """Quantize ``model`` with a venv tool in its own process; always returns one row."""
    reason = ensure_venv(tool, root, install)
    if reason is not None:
        return {"ok": False, "error": reason}
    # Neither this repository nor the project's venv may leak into the tool's interpreter.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    proc = subprocess.run([str(venv_python(tool, root)), str(BENCHMARKS / VENV_TOOLS[tool].script),
                           str(model), str(calib), str(out)], capture_output=True, text=True, cwd=scratch, env=env)
    return parse_output(proc.returncode, proc.stdout, proc.stderr)


def configs(rows: list[dict]) -> list[str]:
    """One line per venv tool and configuration that ran: its versions, the exact configuration
    compared, and on which models (a tool may adapt its configuration to a model)."""
    models: dict[tuple[str, str, str], list[str]] = {}
    for row in rows:
        for tool, info in row["tools"].items():
            if tool in VENV_TOOLS and info.get("config"):
                models.setdefault((tool, info.get("version", "?"), info["config"]), []).append(row["model"])
    return [f"- `{tool}` ({version}): {config}; on {', '.join(names)}" for (tool, version, config), names in models.items()]
