"""The plumbing for quantizers that run from their own virtual environments (benchmarks/tool_venvs.py).

Nothing is installed here: a "venv" is a folder whose python is this interpreter, which has
neither AIMET nor Quark, so the real per-tool scripts run and must report the missing tool as
one failed row through the JSON protocol.
"""
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from benchmarks import tool_venvs
from benchmarks.quantize_one import report


def _fake_venv(root: Path, tool: str) -> None:
    """A venv folder with the current stamp whose python is this interpreter."""
    python = tool_venvs.venv_python(tool, root)
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    (root / tool / tool_venvs.STAMP).write_text(tool_venvs.VENV_TOOLS[tool].requirements)


def _model_and_calibration(tmp_path: Path) -> tuple[Path, Path]:
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), model)
    calib = tmp_path / "calib"
    calib.mkdir()
    np.savez(calib / "0.npz", x=np.ones((1, 4), np.float32))
    return model, calib


def test_the_json_line_is_the_last_line_of_stdout_after_the_tools_own_printing():
    stdout = "[QUARK-INFO]: table\n| op | count |\n" + json.dumps({"ok": True, "seconds": 1.5}) + "\n\n"
    assert tool_venvs.parse_output(0, stdout, "warnings") == {"ok": True, "seconds": 1.5}


def test_a_crashed_tool_is_one_failed_row_with_the_last_line_of_stderr():
    stderr = "Traceback (most recent call last):\n  File x\nMemoryError: out of memory\n"
    assert tool_venvs.parse_output(1, "partial output", stderr) == {"ok": False, "error": "MemoryError: out of memory"}
    assert tool_venvs.parse_output(-11, "", "") == {"ok": False, "error": "crashed (exit code -11)"}
    assert tool_venvs.parse_output(0, "[1, 2]", "")["ok"] is False  # JSON, but not a row


def test_report_prints_one_row_for_a_failing_quantizer(capsys):
    def fails() -> dict:
        raise RuntimeError("unsupported op Foo\nsecond line")

    report("tool", fails)
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["ok"] is False and row["error"] == "RuntimeError: unsupported op Foo" and row["tool"] == "tool"
    assert row["seconds"] >= 0 and row["peak_rss_mb"] > 0


def test_a_missing_venv_is_a_failed_row_and_nothing_is_installed(tmp_path):
    model, calib = _model_and_calibration(tmp_path)
    row = tool_venvs.run_tool("aimet", model, calib, tmp_path / "out.onnx", tmp_path, root=tmp_path / "venvs",
                              install=False)
    assert row == {"ok": False, "error": f"no tool venv at {tmp_path / 'venvs' / 'aimet'}"}
    assert not (tmp_path / "venvs").exists() and not (tmp_path / "out.onnx").exists()


def test_a_venv_made_for_other_pins_is_not_reused(tmp_path):
    _fake_venv(tmp_path, "quark")
    assert tool_venvs.venv_ready("quark", tmp_path)
    (tmp_path / "quark" / tool_venvs.STAMP).write_text("amd-quark==0.1\n")
    assert not tool_venvs.venv_ready("quark", tmp_path)
    assert tool_venvs.ensure_venv("quark", tmp_path, install=False) is not None


@pytest.mark.parametrize("tool,module", [("aimet", "aimet_onnx"), ("quark", "quark")])
def test_the_tool_script_in_a_venv_without_the_tool_reports_it_through_the_protocol(tmp_path, tool, module):
    model, calib = _model_and_calibration(tmp_path)
    root = tmp_path / "venvs"
    _fake_venv(root, tool)
    out = tmp_path / "out.onnx"
    row = tool_venvs.run_tool(tool, model, calib, out, tmp_path, root=root, install=False)
    assert row["ok"] is False and row["tool"] == tool
    assert row["error"] == f"ModuleNotFoundError: No module named '{module}'"
    assert row["peak_rss_mb"] > 0 and not out.exists()


def test_configs_name_each_tool_configuration_and_the_models_it_ran_on():
    rows = [
        {"model": "a", "tools": {"quark": {"ok": True, "version": "q 1", "config": "per_channel=True"},
                                 "ort": {"ok": True, "config": "not a venv tool"}}},
        {"model": "b", "tools": {"quark": {"ok": True, "version": "q 1", "config": "per-tensor"},
                                 "aimet": {"ok": False, "error": "no tool venv"}}},
        {"model": "c", "tools": {"quark": {"ok": True, "version": "q 1", "config": "per_channel=True"}}},
    ]
    assert tool_venvs.configs(rows) == ["- `quark` (q 1): per_channel=True; on a, c", "- `quark` (q 1): per-tensor; on b"]
