"""A quantize whose calibration pace projects a long run says so early, in one line on stderr
(dnsmos took 4 minutes with nothing said beforehand); a short one says nothing."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from onnxquant.cli import main
from onnxquant.cli import progress as progress_module
from onnxquant.cli.progress import LONG_SECONDS, PaceWatch


def test_the_pace_after_the_first_sample_projects_the_pass_and_is_told_once():
    said: list[str] = []
    ticks = iter([100.0, 103.0, 106.0, 109.0])  # 3 s a sample after the first (whose time has the session's start)
    watch = PaceWatch(lambda projected, pace, n: f"{projected:.0f} s at {pace:.0f} s for {n}", said.append,
                      clock=lambda: next(ticks))
    for done in range(1, 5):
        watch(done, 24)
    assert said == ["72 s at 3 s for 24"]  # 72 s >= LONG_SECONDS: told at the second sample, and only then


def test_a_quick_pass_or_an_unknown_total_says_nothing():
    said: list[str] = []
    ticks = iter([0.0, 0.1, 0.2])
    quick = PaceWatch(lambda *_: "long", said.append, clock=lambda: next(ticks))
    for done in range(1, 4):
        quick(done, 24)  # 0.1 s a sample: 2.4 s
    unknown = PaceWatch(lambda *_: "long", said.append, clock=lambda: 1000.0 * len(said))
    unknown(1, None)
    unknown(2, None)
    assert said == [] and 0.1 * 24 < LONG_SECONDS


def test_a_later_stage_counting_again_from_1_is_not_charged_the_gap_since_the_first_pass():
    # calibration: 24 samples at 0.1 s; 500 s later (bias correction...) the search re-calibrates
    # on the same callback, from 1 again, at the same quick pace: no stage is long
    said: list[str] = []
    times = [0.1 * i for i in range(24)] + [500.0 + 0.1 * i for i in range(24)]
    ticks = iter(times)
    watch = PaceWatch(lambda projected, pace, n: f"projected {projected:.0f} s", said.append, clock=lambda: next(ticks))
    for _ in range(2):
        for done in range(1, 25):
            watch(done, 24)
    assert said == []


def test_a_count_that_goes_backwards_before_its_total_starts_the_watch_again():
    said: list[str] = []
    ticks = iter([0.0, 0.1, 300.0, 303.0])  # a pass cut short, then one at 3 s a sample
    watch = PaceWatch(lambda projected, pace, n: f"{projected:.0f} s at {pace:.0f} s", said.append,
                      clock=lambda: next(ticks))
    for done in (1, 2, 1, 2):
        watch(done, 24)
    assert said == ["72 s at 3 s"]  # not (303 - 0) / 1 s a sample


def _quantize(args: list[str], cnn_path: Path, npz_dir: Path, tmp_path: Path):
    return CliRunner().invoke(main, ["quantize", str(cnn_path), "-o", str(tmp_path / "q.onnx"),
                                     "--calib-data", str(npz_dir), *args])


def test_the_cli_says_it_early_on_stderr_unless_quiet(cnn_path: Path, npz_dir: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(progress_module, "LONG_SECONDS", 0.0)  # any pace is long
    told = _quantize(["--search-trials", "3", "--search-min-samples", "8"], cnn_path, npz_dir, tmp_path)
    assert told.exit_code == 0, told.output
    notes = [line for line in told.stderr.splitlines() if line.startswith("note: a long run:")]
    assert len(notes) == 1 and "up to 3 trials" in notes[0] and "--no-search skips it" in notes[0]
    assert "(0.0 s a sample, 6 samples)" in notes[0]  # the search holds 6 of the 12 out
    assert "note: a long run" not in told.stdout
    quiet = _quantize(["-q"], cnn_path, npz_dir, tmp_path)
    assert quiet.exit_code == 0 and "a long run" not in quiet.stderr


def _note(result) -> str:
    assert result.exit_code == 0, result.output
    (note,) = [line for line in result.stderr.splitlines() if line.startswith("note: a long run:")]
    return note


def test_the_note_promises_no_search_that_will_not_run(cnn_path: Path, npz_dir: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(progress_module, "LONG_SECONDS", 0.0)
    # 12 samples, fewer than the search's 16: it is skipped (the note promised its trials)
    few = _note(_quantize([], cnn_path, npz_dir, tmp_path))
    assert few.endswith("(0.0 s a sample, 12 samples); bias correction runs the model again, "
                        "so quantize may take several times that"), few
    # --max-drop: mixed precision runs instead of the search
    drop = _note(_quantize(["--max-drop", "0.5", "--search-min-samples", "8"], cnn_path, npz_dir, tmp_path))
    assert "trials" not in drop and "--search-seconds" not in drop
    assert drop.endswith("; bias correction and --max-drop's layer ranking and checks run the model again, so "
                         "quantize may take several times that"), drop
    # --max-memory: the count is of sample runs over the passes (samples x passes), not of samples
    split = _note(_quantize(["--max-memory", "9K", "--no-search"], cnn_path, npz_dir, tmp_path))
    assert "s a sample in each pass, " in split and " sample runs over the passes --max-memory needs)" in split
    assert int(split.split(" sample runs")[0].rsplit(" ", 1)[1]) > 12, split  # several passes here


def test_a_short_run_says_nothing(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    result = _quantize([], cnn_path, npz_dir, tmp_path)
    assert result.exit_code == 0 and "a long run" not in result.output + result.stderr
