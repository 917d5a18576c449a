"""Never overwrite an input, never leave anything behind, through every command that writes.

Each case builds a work folder with a model (weights in external data), calibration samples, a
recipe, a job file and a validation report, then points one output of one command at one input,
spelled as the same path, through ``sub/..``, a symlink or a hard link. Every one must be
refused with one ``error:`` line and exit 2, with every file in the folder unchanged and
nothing added. Failures after work began must take back every file and folder they made.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import external_data_helper

from models.tiny import image_samples, tiny_cnn, tiny_mlp
from onnxquant.cli import main
from onnxquant.outputs import _NAMESPACE, TMP_PREFIX, all_or_nothing, clean_stale
from tests.conftest import write_npz


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links as where they point) and its sha256."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = "-> " + os.readlink(path)
        elif path.is_file():
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[key] = "dir"
    return found


def _work(folder: Path) -> Path:
    """A model with external data (``m.onnx.data``), samples, a recipe, a job and a validation report."""
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_cnn()
    external_data_helper.convert_model_to_external_data(model, location="m.onnx.data", size_threshold=0)
    onnx.save(model, str(folder / "m.onnx"))
    onnx.save(tiny_cnn(seed=1), str(folder / "plain.onnx"))
    write_npz(folder / "calib", image_samples(3))
    (folder / "recipe.toml").write_text("[calibration]\nmethod = \"minmax\"\n")
    (folder / "job.toml").write_text('model = "plain.onnx"\ncalib_data = "calib"\noutput = "bundle.zip"\n'
                                     "[validate]\nlatency_runs = 1\nmax_samples = 2\n")
    (folder / "validation.json").write_text(json.dumps({"providers": [], "passed": True, "budget": {},
                                                        "size": {}, "samples": 1}))
    (folder / "sub").mkdir()
    return folder


def _spell(folder: Path, target: str, how: str) -> str:
    """A path that names ``folder/target`` another way."""
    if how == "same":
        return str(folder / target)
    if how == "dotdot":
        return str(folder / "sub" / ".." / target)
    if how == "symlink":
        link = folder / "sub" / f"link-{target.replace('/', '_')}"
        if not link.is_symlink():
            link.symlink_to(folder / target)
        return str(link)
    if how == "hardlink":
        link = folder / "sub" / f"hard-{target.replace('/', '_')}"
        if not link.exists():
            os.link(folder / target, link)
        return str(link)
    raise ValueError(how)


# (command line with {out} where the aliased output goes, the input file it aliases)
CASES = [
    (["quantize", "{w}/m.onnx", "-o", "{out}", "--calib-data", "{w}/calib"], "m.onnx"),
    (["quantize", "{w}/m.onnx", "-o", "{out}", "--calib-data", "{w}/calib"], "calib/s00.npz"),
    (["quantize", "{w}/plain.onnx", "-o", "{out}", "--calib-data", "{w}/calib", "--recipe", "{w}/recipe.toml"],
     "recipe.toml"),
    (["quantize", "{w}/m.onnx", "-o", "{w}/out/q.onnx", "--calib-data", "{w}/calib", "--save-stats", "{out}"],
     "m.onnx"),
    (["quantize", "{w}/m.onnx", "-o", "{w}/out/q.onnx", "--calib-data", "{w}/calib", "--save-stats", "{out}"],
     "m.onnx.data"),
    (["prune", "{w}/plain.onnx", "-o", "{out}", "--sparsity", "0.5"], "plain.onnx"),
    (["package", "{w}/plain.onnx", "-o", "{out}", "--validation", "{w}/validation.json"], "validation.json"),
    (["package", "{w}/plain.onnx", "-o", "{out}"], "plain.onnx"),
]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(CASES), how=st.sampled_from(["same", "dotdot", "symlink", "hardlink"]))
def test_an_output_that_is_an_input_is_refused(tmp_path_factory, case, how: str):
    work = _work(tmp_path_factory.mktemp("alias"))
    args, target = case
    out = _spell(work, target, how)
    before = _snapshot(work)
    result = CliRunner().invoke(main, [a.format(w=work, out=out) for a in args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and result.output.count("\n") == 1, result.output
    assert "overwrite" in result.output
    assert _snapshot(work) == before


def test_an_output_whose_data_file_is_the_inputs_data_is_refused(tmp_path: Path):
    """``-o q.onnx`` would write ``q.onnx.data``: here that is the input's own external data."""
    model = tiny_mlp(hidden=256)
    external_data_helper.convert_model_to_external_data(model, location="q.onnx.data", size_threshold=0)
    onnx.save(model, str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(0)
    write_npz(tmp_path / "calib", [{"x": rng.normal(0, 1, (1, 4, 8)).astype(np.float32)} for _ in range(3)])
    before = _snapshot(tmp_path)
    result = CliRunner().invoke(main, ["quantize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "q.onnx"),
                                       "--calib-data", str(tmp_path / "calib")])
    assert result.exit_code == 2 and "overwrite" in result.output, result.output
    assert _snapshot(tmp_path) == before
    onnx.checker.check_model(str(tmp_path / "m.onnx"))  # the input still loads


def test_two_outputs_that_are_one_file_are_refused(tmp_path: Path):
    work = _work(tmp_path / "w")
    before = _snapshot(work)
    result = CliRunner().invoke(main, ["quantize", str(work / "plain.onnx"), "-o", str(work / "q.onnx"),
                                       "--calib-data", str(work / "calib"), "--save-stats", str(work / "sub/../q.onnx")])
    assert result.exit_code == 2 and "same file" in result.output, result.output
    assert _snapshot(work) == before


def test_compress_refuses_a_bundle_over_its_job_or_model(tmp_path: Path):
    work = _work(tmp_path / "w")
    for output in ("job.toml", "plain.onnx", "sub/../calib/s01.npz"):
        job = work / "job.toml"
        text = job.read_text()
        job.write_text(text.replace('output = "bundle.zip"', f'output = "{output}"'))
        before = _snapshot(work)
        result = CliRunner().invoke(main, ["compress", str(job)])
        assert result.exit_code == 2 and "overwrite" in result.output, (output, result.output)
        assert _snapshot(work) == before
        job.write_text(text)


def test_a_failure_after_calibration_leaves_no_statistics_and_no_folders(tmp_path: Path):
    """The statistics file and the model's new folders are taken back when the model cannot be made."""
    work = _work(tmp_path / "w")
    before = _snapshot(work)
    result = CliRunner().invoke(main, ["quantize", str(work / "plain.onnx"), "-o", str(work / "new/deep/q.onnx"),
                                       "--calib-data", str(work / "calib"), "--save-stats", str(work / "st/s.npz"),
                                       "--max-drop", "nan"])
    assert result.exit_code == 2, result.output
    assert _snapshot(work) == before


def test_all_or_nothing_takes_back_files_and_created_folders(tmp_path: Path):
    from onnxquant.model_io import write_atomic

    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError), all_or_nothing():
        write_atomic(tmp_path / "a" / "b" / "one.bin", b"1")
        write_atomic(tmp_path / "kept" / "two.bin", b"2")
        assert (tmp_path / "a" / "b" / "one.bin").exists()
        raise RuntimeError("a later step failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert list((tmp_path / "kept").iterdir()) == []


def test_the_html_copy_failing_takes_the_bundle_back(tmp_path: Path, monkeypatch):
    """compress writes BUNDLE.zip, then BUNDLE.report.html beside it: when the second write fails
    (here: the disk is full), the first must not stay, nor the folder made for it."""
    import errno

    from onnxquant import model_io

    work = _work(tmp_path / "w")
    job = work / "job.toml"
    job.write_text(job.read_text().replace('output = "bundle.zip"', 'output = "new/bundle.zip"'))
    real = model_io.write_atomic

    def full_disk(path, data):
        if str(path).endswith(".report.html"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(model_io, "write_atomic", full_disk)
    before = _snapshot(work)
    result = CliRunner().invoke(main, ["compress", str(job), "-q"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and result.output.count("\n") == 1, result.output
    assert _snapshot(work) == before  # no bundle, no "new" folder, no temporary


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_one_line(tmp_path: Path):
    work = _work(tmp_path / "w")
    (work / "ro").mkdir()
    (work / "ro").chmod(0o500)
    try:
        result = CliRunner().invoke(main, ["quantize", str(work / "plain.onnx"), "-o", str(work / "ro/q.onnx"),
                                           "--calib-data", str(work / "calib")])
    finally:
        (work / "ro").chmod(0o700)
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output


@pytest.mark.parametrize("output", ["plain.onnx/q.onnx", "recipe.toml/deeper/q.onnx"])
def test_an_output_under_a_file_is_one_line(tmp_path: Path, output: str):
    work = _work(tmp_path / "w")
    before = _snapshot(work)
    result = CliRunner().invoke(main, ["quantize", str(work / "plain.onnx"), "-o", str(work / output),
                                       "--calib-data", str(work / "calib")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and result.output.count("\n") == 1, result.output
    assert _snapshot(work) == before


def test_a_file_size_limit_is_one_line_and_leaves_nothing(tmp_path: Path):
    """Under ``ulimit -f`` the model cannot be written (EFBIG): one line, exit 2, no partial file."""
    work = _work(tmp_path / "w")
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048)); "
              "from onnxquant.cli import main; sys.exit(main())")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", script, "quantize", str(work / "plain.onnx"), "-o",
                           str(work / "out" / "q.onnx"), "--calib-data", str(work / "calib"), "-q"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error:") and done.stderr.count("\n") == 1, done.stderr
    assert not (work / "out").exists()


def test_stale_temporaries_of_killed_runs_are_cleaned(tmp_path: Path):
    """A killed run leaves its temporary folder; the next run beside it removes it (its process
    is gone), and leaves a live run's alone."""
    work = _work(tmp_path / "w")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = work / f"{TMP_PREFIX}{_NAMESPACE}-{int(dead.stdout)}-abc"
    stale.mkdir()
    (stale / "q.onnx").write_bytes(b"half")
    live = work / f"{TMP_PREFIX}{_NAMESPACE}-{os.getpid()}-xyz"
    live.mkdir()
    result = CliRunner().invoke(main, ["quantize", str(work / "plain.onnx"), "-o", str(work / "q.onnx"),
                                       "--calib-data", str(work / "calib"), "-q"])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and live.exists()
    clean_stale(work)
    assert live.exists()  # this process is alive


def test_a_newline_in_a_path_cannot_forge_a_second_line(tmp_path: Path):
    result = CliRunner().invoke(main, ["quantize", str(tmp_path / "a\nerror: forged.onnx"), "-o",
                                       str(tmp_path / "q.onnx"), "--calib-data", str(tmp_path)])
    assert result.exit_code == 3, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "\\n" in lines[0], result.output


def test_an_output_that_is_a_device_or_a_pipe_is_refused(tmp_path: Path):
    """Renaming a file over /dev/null (as root) would replace the device: refused up front."""
    work = _work(tmp_path / "w")
    os.mkfifo(work / "pipe.onnx")
    (work / "sub" / "null.onnx").symlink_to("/dev/null")
    for out in (work / "pipe.onnx", work / "sub" / "null.onnx", Path("/dev/null")):
        result = CliRunner().invoke(main, ["quantize", str(work / "plain.onnx"), "-o", str(out),
                                           "--calib-data", str(work / "calib")])
        assert result.exit_code == 2 and "not a regular file" in result.output, result.output
    assert Path("/dev/null").is_char_device()
