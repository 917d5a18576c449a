"""The benchmark's per-stage table: one row per onnxquant tool that told its stages, none otherwise."""
from __future__ import annotations

from benchmarks.run import stages_markdown


def test_one_row_per_tool_with_stages_naming_each_stage_that_took_time():
    stages = {"calibrate": {"seconds": 1.04, "cpu_seconds": 1.9, "calls": 1, "peak_mb": 200.0},
              "recover": {"seconds": 2.0, "cpu_seconds": 3.8, "calls": 1, "peak_mb": 310.0},
              "prune": {"seconds": 0.0, "cpu_seconds": 0.0, "calls": 1, "peak_mb": 150.0}}
    rows = [{"model": "efficientnet-lite0", "tools": {
        "onnxquant-as-given": {"seconds": 4.5, "library_seconds": 3.5, "stages": stages},
        "ort": {"seconds": 4.0}}}]
    table = stages_markdown(rows).splitlines()
    assert len(table) == 3
    assert table[2] == "| efficientnet-lite0 | onnxquant-as-given | 4.5 (3.5) | calibrate 1.0/1.9/200, recover 2.0/3.8/310 |"
    assert stages_markdown([{"model": "m", "tools": {"ort": {"seconds": 1.0}}}]) == ""
