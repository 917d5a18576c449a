"""Calibration under a memory budget, and across thread counts: same statistics, same model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from models.tiny import image_samples, tiny_cnn, tiny_detector
from onnxquant.api import quantize
from onnxquant.calibration.collector import (
    _groups,
    _sizes,
    collect,
    in_order,
    memory_budget,
    session_threads,
)
from onnxquant.calibration.sources import from_iterable, from_reader, open_source
from onnxquant.cli import main
from onnxquant.errors import UsageError
from onnxquant.passes.prepare import prepare_model
from onnxquant.recipe import recipe_for_target
from tests.conftest import write_npz


def _tensors(model: onnx.ModelProto) -> list[str]:
    return [n.output[0] for n in model.graph.node]


@pytest.fixture
def prepared() -> onnx.ModelProto:
    return prepare_model(tiny_cnn(), simplify=True)[0]


def test_sizes_follow_the_feed_batch(prepared: onnx.ModelProto):
    feed = image_samples(1, batch=3)[0]
    sizes = _sizes(prepared, _tensors(prepared), feed)
    conv = next(n.output[0] for n in prepared.graph.node if n.op_type == "Conv")
    assert sizes[conv] == 3 * 8 * 16 * 16 * 4  # batch 3, 8 channels of 16x16 float32


def test_groups_respect_the_budget():
    sizes = {"a": 40, "b": 30, "c": 30, "d": 90}
    groups = _groups(sizes, 100)
    assert sorted(n for g in groups for n in g) == sorted(sizes)
    assert all(sum(sizes[n] for n in g) <= 100 for g in groups) and len(groups) == 2


def test_a_budget_gives_the_same_statistics(prepared: onnx.ModelProto):
    source = from_iterable(image_samples(5))
    names = _tensors(prepared)
    whole = collect(prepared, names, source, histograms=True)
    with memory_budget(9000):  # a few tensors per pass
        split = collect(prepared, names, source, histograms=True)
    assert whole.samples == split.samples == 5 and set(whole.tensors) == set(split.tensors)
    for name, stats in whole.tensors.items():
        other = split.tensors[name]
        assert (stats.min, stats.max, stats.count) == (other.min, other.max, other.count)
        assert np.array_equal(stats.histogram.counts, other.histogram.counts)


def test_progress_covers_every_pass(prepared: onnx.ModelProto):
    seen: list[tuple[int, int | None]] = []
    with memory_budget(9000):
        collect(prepared, _tensors(prepared), from_iterable(image_samples(4)), False,
                progress=lambda done, total: seen.append((done, total)), total=4)
    assert seen[-1][0] == seen[-1][1] and seen[-1][1] % 4 == 0 and seen[-1][1] > 4


def test_budget_refusals(prepared: onnx.ModelProto):
    with memory_budget(100), pytest.raises(UsageError, match="below one sample's tensor"):
        collect(prepared, _tensors(prepared), from_iterable(image_samples(2)), False)

    class Reader:
        def __init__(self) -> None:
            self.left = image_samples(2)

        def get_next(self):
            return self.left.pop() if self.left else None

    with memory_budget(9000), pytest.raises(UsageError, match="one-shot"):
        collect(prepared, _tensors(prepared), from_reader(Reader()), False)
    with memory_budget(9000), pytest.raises(UsageError, match="one-shot"):
        collect(prepared, _tensors(prepared), from_iterable(iter(image_samples(2))), False)


def test_output_is_byte_identical_across_budgets_and_threads(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    outputs = []
    for threads, budget in ((None, None), (1, None), (2, 9000), (4, None)):
        with session_threads(threads), memory_budget(budget):
            quantize(cnn_path, npz_dir, output=tmp_path / f"{threads}-{budget}.onnx")
        outputs.append((tmp_path / f"{threads}-{budget}.onnx").read_bytes())
    assert all(o == outputs[0] for o in outputs)


def test_cli_flags(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    run = CliRunner().invoke
    plain = run(main, ["quantize", str(cnn_path), "-o", str(tmp_path / "a.onnx"), "--calib-data", str(npz_dir), "-q"])
    bounded = run(main, ["quantize", str(cnn_path), "-o", str(tmp_path / "b.onnx"), "--calib-data", str(npz_dir), "-q",
                         "--max-memory", "0.01M", "--threads", "1"])
    assert plain.exit_code == bounded.exit_code == 0, bounded.output
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    small = run(main, ["quantize", str(cnn_path), "-o", str(tmp_path / "c.onnx"), "--calib-data", str(npz_dir),
                       "--max-memory", "100"])
    assert small.exit_code == 2 and "below one sample's tensor" in small.output and not (tmp_path / "c.onnx").exists()
    bad = run(main, ["quantize", str(cnn_path), "-o", str(tmp_path / "c.onnx"), "--calib-data", str(npz_dir),
                     "--max-memory", "lots"])
    assert bad.exit_code == 2


def test_folder_sources_are_rereadable(npz_dir: Path):
    assert open_source(npz_dir, ["x"]).rereadable


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("detector")
    model = folder / "detector.onnx"
    onnx.save(tiny_detector(), str(model))
    rng = np.random.default_rng(0)
    calib = write_npz(folder / "calib", [{"images": rng.uniform(-2, 2, (1, 3, 96, 96)).astype(np.float32)}
                                         for _ in range(6)])
    return model, calib


def test_detector_output_does_not_depend_on_threads(detector: tuple[Path, Path], tmp_path: Path):
    """A YOLO-style detector is big enough for onnxruntime to split a Conv across threads, which
    changed the last bit of an activation's range (and so a scale and an int32 bias) between
    --threads 1 and 2. Samples now run in parallel, each on one thread: the bits are the same."""
    model, calib = detector
    outputs = {}
    for threads in ("1", "2", "3"):
        out = tmp_path / f"t{threads}.onnx"
        result = CliRunner().invoke(main, ["quantize", str(model), "-o", str(out), "--calib-data", str(calib),
                                           "--threads", threads, "-q"])
        assert result.exit_code == 0, result.output
        outputs[threads] = out.read_bytes()
    with memory_budget(2 * 2**20):  # the CLI's default recipe: target cpu, for this host's CPU kind
        quantize(model, calib, recipe_for_target("cpu"), output=tmp_path / "budget.onnx")
    outputs["budget"] = (tmp_path / "budget.onnx").read_bytes()
    assert len(set(outputs.values())) == 1, {k: len(v) for k, v in outputs.items()}


@pytest.mark.parametrize("workers", [1, 3])
def test_in_order_keeps_sample_order_and_the_first_error(workers: int):
    def run(index: int, sample: dict) -> int:
        if sample.get("bad"):
            raise ValueError(f"sample {index}")
        return index

    assert list(in_order(run, [{}] * 7, None, workers)) == list(range(7))
    assert list(in_order(run, [{}] * 7, 4, workers)) == list(range(4))

    def source():
        yield {}
        yield {"bad": True}
        raise OSError("unreadable third file")

    seen = []
    with pytest.raises(ValueError, match="sample 1"):  # the bad sample, not the file read after it
        for value in in_order(run, source(), None, workers):
            seen.append(value)
    assert seen == [0]


def test_graph_inputs_are_read_from_the_feed_not_fetched(monkeypatch):
    """onnxruntime's OpenVINO build (1.24) returns a graph input fetched as an output as a view of
    the feed's memory that does not keep the feed alive; under parallel samples the input's range
    then came out different from run to run. Here a session hands back such an output and then
    scribbles over it: the statistics must not see the scribble."""
    import onnxquant.calibration.collector as collector
    import onnxquant.recovery.probe as probe

    model, samples = tiny_cnn(), image_samples(6)
    expected = quantize(model, samples).model.SerializeToString()
    made = collector.make_session

    class Scribbling:
        def __init__(self, session):
            self.session, self.inputs = session, {i.name for i in session.get_inputs()}

        def __getattr__(self, name):
            return getattr(self.session, name)

        def run(self, names, feed):
            values = self.session.run(names, feed)
            for name, value in zip(names or [], values):
                if name in self.inputs:
                    value[...] = 1e6  # the memory is reused once run returns
            return values

    monkeypatch.setattr(collector, "make_session", lambda *a, **k: Scribbling(made(*a, **k)))
    monkeypatch.setattr(probe, "make_session", lambda *a, **k: Scribbling(made(*a, **k)))
    assert quantize(model, samples).model.SerializeToString() == expected


def test_a_session_loads_from_a_scratch_file_or_from_the_bytes_where_the_temporary_folder_refuses(monkeypatch):
    """A session is loaded from a file its serialization was written to (onnxruntime would copy
    given bytes first), and from the bytes where the temporary folder cannot take them: the same
    outputs either way, and no file left behind."""
    import contextlib
    import os
    import tempfile

    from onnxquant.calibration import collector

    model = tiny_cnn()
    feed = next(iter(image_samples(1)))
    written: list[str] = []
    made = collector.scratch

    @contextlib.contextmanager
    def watched():
        with made() as tmp:
            written.append(tmp)
            yield tmp

    monkeypatch.setattr(collector, "scratch", watched)
    from_file = collector.make_session(model).run(None, feed)
    assert written and not any(os.path.exists(path) for path in written)

    @contextlib.contextmanager
    def refused():
        raise OSError(28, "No space left on device", tempfile.gettempdir())
        yield ""

    monkeypatch.setattr(collector, "scratch", refused)
    from_bytes = collector.make_session(lambda: collector.serialize(model), weights=model).run(None, feed)
    assert all(np.array_equal(a, b) for a, b in zip(from_file, from_bytes))


def test_a_session_that_fails_names_no_scratch_file():
    """A model onnxruntime refuses, loaded from a scratch file: the error does not name that file."""
    import re

    import pytest
    from onnx import TensorProto, helper

    from onnxquant.calibration.collector import make_session
    from onnxquant.errors import ModelError

    node = helper.make_node("GlobalAveragePool", ["x"], ["y"], name="pool")  # int32: no kernel for it
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.INT32, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 2, 1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    with pytest.raises(ModelError) as raised:
        make_session(model, weights=model)
    assert not re.search(r"onnxquant-tmp|/tmp/|model\\.onnx", str(raised.value))
