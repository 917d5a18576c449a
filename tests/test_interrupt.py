"""Ctrl-C at any point leaves nothing behind: no output, no temporary file, exit code 130."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent('''
    import os, signal, sys
    import onnxquant.calibration.sources as sources
    import onnxquant.model_io as model_io
    from onnxquant.cli import main

    where, marker, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    # A test run started in the background by a shell inherits SIGINT ignored: Ctrl-C as at a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if where == "calibration":
        load, seen = sources._load_npz, []

        def interrupted(path):
            seen.append(path)
            if len(seen) == 3:
                open(marker, "w").write(path.name)
                os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered mid-calibration
            return load(path)

        sources._load_npz = interrupted
    else:  # while the output is being renamed into place
        replace = os.replace

        def interrupted(src, dst):
            open(marker, "w").write(os.path.basename(dst))
            os.kill(os.getpid(), signal.SIGINT)
            return replace(src, dst)

        model_io.os.replace = interrupted
    main(args, prog_name="onnxquant")
''')


@pytest.mark.parametrize("where", ["calibration", "save"])
def test_ctrl_c_leaves_nothing(cnn_path: Path, npz_dir: Path, tmp_path: Path, where: str):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    marker = tmp_path / "interrupted-at"
    result = subprocess.run([sys.executable, "-c", SCRIPT, where, str(marker), "quantize", str(cnn_path), "-o",
                             str(out_dir / "q.onnx"), "--calib-data", str(npz_dir)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 130, result.stderr[-2000:]
    assert result.stderr.strip() == "error: interrupted; nothing was written"
    assert marker.read_text() == ("s02.npz" if where == "calibration" else "q.onnx")  # where Ctrl-C came
    assert list(out_dir.iterdir()) == []


def test_sigterm_leaves_nothing(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    """``kill`` (SIGTERM) mid-calibration unwinds like Ctrl-C: exit 143, no output, no temporary."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    marker = tmp_path / "interrupted-at"
    script = SCRIPT.replace("signal.SIGINT", "signal.SIGTERM")
    result = subprocess.run([sys.executable, "-c", script, "calibration", str(marker), "quantize", str(cnn_path),
                             "-o", str(out_dir / "q.onnx"), "--calib-data", str(npz_dir)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 143, result.stderr[-2000:]
    assert result.stderr.strip() == "error: terminated; nothing was written"
    assert list(out_dir.iterdir()) == []
