"""Every setting is type- and range-checked once, where recipes, job files and flags become settings.

Values of every TOML type are put in every key of every recipe and job section (hypothesis):
a value of the wrong type is a UsageError naming the key, never accepted (``"false"`` for a bool
is truthy, a string where a list belongs is iterated per character) and never a crash.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.tiny import image_samples, tiny_cnn
from onnxquant.cli import main
from onnxquant.compress import PackageSettings, ValidateSettings, load_job
from onnxquant.errors import UsageError
from onnxquant.recipe import _SECTIONS, load_recipe
from onnxquant.settings import MAX_DEPTH, _hints, check_value, parse_limited
from tests.conftest import write_npz

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


_SCALARS = st.one_of(
    st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["false", "true", "1", "Conv", "minmax", "uint8", "NCHW", "", "2:4", "re:^a"]),
)
_VALUES = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=4), st.dictionaries(st.sampled_from(["a", "b"]), _SCALARS,
                                                                              max_size=2))
_FIELDS = [(section, f.name) for section, cls in _SECTIONS.items() for f in dataclasses.fields(cls)]


@SETTINGS
@given(key=st.sampled_from(_FIELDS), value=_VALUES)
def test_every_recipe_key_takes_only_its_type(tmp_path_factory, key: tuple[str, str], value):
    section, name = key
    path = tmp_path_factory.mktemp("recipe") / "recipe.toml"
    path.write_text(f"[{section}]\n{name} = {_toml(value)}\n")
    hint = _hints(_SECTIONS[section])[name]
    try:
        check_value(value, hint)
        well_typed = True
    except ValueError:
        well_typed = False
    try:
        recipe = load_recipe(path)
    except UsageError as exc:
        assert "\n" not in str(exc)
        if not well_typed:
            assert name in str(exc), str(exc)
        return
    assert well_typed, (key, value)  # a wrong type never passes
    stored = getattr(getattr(recipe, section), name)
    assert type(stored) is not str or isinstance(value, str)


_JOB_FIELDS = [("validate", f.name) for f in dataclasses.fields(ValidateSettings)] + \
    [("package", f.name) for f in dataclasses.fields(PackageSettings)] + \
    [("", k) for k in ("max_drop", "drop_by", "layer_errors", "threads", "max_memory", "holdout")]


@SETTINGS
@given(key=st.sampled_from(_JOB_FIELDS), value=_VALUES)
def test_every_job_key_takes_only_its_type(tmp_path_factory, key: tuple[str, str], value):
    section, name = key
    folder = tmp_path_factory.mktemp("job")
    head = 'model = "m.onnx"\ncalib_data = "calib"\noutput = "b.zip"\n'
    line = f"{name} = {_toml(value)}\n"
    job = folder / "job.toml"
    job.write_text(head + line if not section else f"{head}[{section}]\n{line}")
    try:
        spec = load_job(job)
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    if section:
        stored = getattr(getattr(spec, section), name)
        hint = _hints(type(getattr(spec, section)))[name]
        assert check_value(stored, hint) == stored  # what passed is of the declared type
    if isinstance(value, float) and not math.isfinite(value):
        pytest.fail(f"{key} accepted {value}")


@pytest.mark.parametrize("text", [
    "a = " + "[" * 100_000 + "]" * 100_000,
    "a = " + "{x = " * 5_000 + "1" + "}" * 5_000,
    "[calibration]\nmax_samples = " + "[" * (MAX_DEPTH + 5) + "1" + "]" * (MAX_DEPTH + 5),
])
def test_deep_nesting_is_refused_before_the_parser_recurses(tmp_path: Path, text: str):
    path = tmp_path / "deep.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match="nested"):
        load_recipe(path)


def test_json_depth_is_limited_too():
    with pytest.raises(UsageError, match="nested"):
        parse_limited("[" * 50_000 + "]" * 50_000, json.loads, "report.json")
    assert parse_limited('{"a": [1, {"b": 2}]}', json.loads, "x") == {"a": [1, {"b": 2}]}


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("flags")
    onnx.save(tiny_cnn(), str(folder / "m.onnx"))
    return folder / "m.onnx", write_npz(folder / "calib", image_samples(2))


@pytest.mark.parametrize("flags", [
    ["--max-memory", "inf"], ["--max-memory", "nan"], ["--max-memory", "-1G"], ["--max-memory", "1e400"],
    ["--max-memory", "0.0001"],
    ["--image-size", "0,0"], ["--image-size", "nan,nan"], ["--image-size", "inf,2"], ["--image-size", "1.5,2"],
    ["--image-size", "100000,100000"], ["--image-mean", "1,2"], ["--image-std", "1,0,1"], ["--image-std", "nan,1,1"],
    ["--image-resize", "0"],
    ["--threads", "1000000000"], ["--threads", "-1"],
    ["--percentile", "nan"], ["--smoothquant-alpha", "inf"], ["--max-samples", "0"], ["--adaround-seconds", "nan"],
    ["--prune-max-drop", "nan"], ["--input-shape", "x=0,3"], ["--int4-min-sqnr-db", "nan"],
])
def test_bad_flags_are_one_line_with_exit_2(cnn: tuple[Path, Path], tmp_path: Path, flags: list[str]):
    model, calib = cnn
    result = CliRunner().invoke(main, ["quantize", str(model), "-o", str(tmp_path / "out" / "q.onnx"),
                                       "--calib-data", str(calib), *flags])
    assert result.exit_code == 2, (flags, result.output)
    assert result.output.startswith("error:") and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "out").exists()
