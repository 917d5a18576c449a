from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import external_data_helper, numpy_helper

from models.tiny import tiny_cnn, tiny_mlp
from onnxquant.api import quantize
from onnxquant.cli import main
from onnxquant.errors import ModelError
from onnxquant import model_io
from onnxquant.model_io import is_lazy, load_model, save_model, tensor_array
from onnxquant.recipe import Recipe
from tests.conftest import write_npz


def test_truncated_and_garbage_files(tmp_path: Path):
    good = tiny_cnn().SerializeToString()
    for name, data in [("trunc.onnx", good[: len(good) // 3]), ("garbage.onnx", b"\x00\xffhello" * 10), ("empty.onnx", b"")]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ModelError) as info:
            load_model(path)
        assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path):
    with pytest.raises(ModelError, match="no such model file"):
        load_model(tmp_path / "nope.onnx")


def _with_external(tmp_path: Path, location: str) -> Path:
    model = tiny_cnn()
    external_data_helper.convert_model_to_external_data(model, location="w.bin", size_threshold=0)
    external_data_helper.write_external_data_tensors(model, str(tmp_path))
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _mlp_with_external(folder: Path) -> Path:
    """tiny_mlp with its two weight matrices (8 and 16 KiB) and everything else in external data."""
    model = tiny_mlp(hidden=512)
    external_data_helper.convert_model_to_external_data(model, location="w.bin", size_threshold=0)
    external_data_helper.write_external_data_tensors(model, str(folder))
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def mlp_data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    return write_npz(tmp_path / "mlp-calib", [{"x": rng.normal(0, 1, (1, 4, 8)).astype(np.float32)} for _ in range(6)])


def test_external_data_inside_folder_loads_lazily(tmp_path: Path):
    """Weights in external data stay on disk: memory-mapped when read, never copied into the proto."""
    model = load_model(_mlp_with_external(tmp_path))
    original = {t.name: numpy_helper.to_array(t) for t in tiny_mlp(hidden=512).graph.initializer}
    lazy = [t for t in model.graph.initializer if is_lazy(t)]
    assert {t.name for t in lazy} == {"w1", "w2"}  # small tensors (the bias) are read in as usual
    assert model.ByteSize() < 4096
    for tensor in model.graph.initializer:
        value = tensor_array(tensor)
        assert np.array_equal(value, original[tensor.name])
        if is_lazy(tensor):
            assert isinstance(value, np.memmap)
            value[...] = 0  # copy-on-write: the file is never changed
    assert all(np.array_equal(tensor_array(t), original[t.name]) for t in model.graph.initializer)


def test_truncated_external_data_is_refused(tmp_path: Path):
    path = _mlp_with_external(tmp_path)
    data = tmp_path / "w.bin"
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(ModelError, match="shorter than its shape"):
        load_model(path)


def test_quantizing_external_data_matches_the_inline_model(tmp_path: Path, mlp_data: Path):
    external = _mlp_with_external(tmp_path)
    inline = tmp_path / "inline.onnx"
    inline.write_bytes(tiny_mlp(hidden=512).SerializeToString())
    recipe = Recipe()  # a small model with external data is read in: simplified, fused as the inline one is
    a = quantize(external, mlp_data, recipe, output=tmp_path / "out" / "a.onnx")
    b = quantize(inline, mlp_data, recipe, output=tmp_path / "out" / "b.onnx")
    assert (tmp_path / "out" / "a.onnx").read_bytes() == (tmp_path / "out" / "b.onnx").read_bytes()
    assert a.size_after == b.size_after and not (tmp_path / "out" / "a.onnx.data").exists()


def test_weights_left_on_disk_are_copied_beside_the_output(tmp_path: Path, mlp_data: Path, monkeypatch):
    monkeypatch.setattr(model_io, "IN_MEMORY_LIMIT", 0)  # as a model too large to read in
    source = tmp_path / "src"
    source.mkdir()
    external = _mlp_with_external(source)
    before = (source / "w.bin").read_bytes()
    recipe = Recipe(simplify=False).with_overrides(nodes={"exclude": ("op:MatMul",)})
    quantize(external, mlp_data, recipe, output=tmp_path / "out" / "q.onnx")
    assert (tmp_path / "out" / "q.onnx.data").exists() and (source / "w.bin").read_bytes() == before
    saved = onnx.load(str(tmp_path / "out" / "q.onnx"), load_external_data=False)
    entries = [(e.key, e.value) for t in saved.graph.initializer for e in t.external_data]
    assert {v for k, v in entries if k == "location"} == {"q.onnx.data"}  # relative, beside the output
    assert {k for k, _ in entries} == {"location", "offset", "length"}  # no private key leaks
    feed = {"x": np.ones((1, 4, 8), np.float32)}
    expected = ort.InferenceSession(tiny_mlp(hidden=512).SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(str(tmp_path / "out" / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)  # every MatMul excluded: float weights


@pytest.mark.parametrize("location", ["../w.bin", "/etc/passwd", "sub/../../w.bin"])
def test_external_data_outside_folder_is_refused(tmp_path: Path, location: str):
    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "w.bin").write_bytes(b"\0" * 4096)
    with pytest.raises(ModelError, match="outside|unsafe"):
        load_model(_with_external(inner, location))


def test_symlink_leading_out_is_refused(tmp_path: Path):
    inner = tmp_path / "inner"
    inner.mkdir()
    path = _with_external(inner, "w.bin")
    (tmp_path / "real.bin").write_bytes((inner / "w.bin").read_bytes())
    (inner / "w.bin").unlink()
    (inner / "w.bin").symlink_to(tmp_path / "real.bin")
    with pytest.raises(ModelError, match="outside"):
        load_model(path)


def test_save_is_atomic_and_deterministic(tmp_path: Path):
    model = tiny_cnn()
    a = save_model(model, tmp_path / "a.onnx")
    b = save_model(model, tmp_path / "b.onnx")
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx"]  # no temp files left


def test_failed_save_leaves_nothing(tmp_path: Path, monkeypatch):
    import onnxquant.model_io as io

    def boom(model):
        raise RuntimeError("disk full")

    monkeypatch.setattr(io, "serialize", boom)
    with pytest.raises(RuntimeError):
        io.save_model(tiny_cnn(), tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


def test_initializer_values_survive(tmp_path: Path):
    model = tiny_cnn()
    path = save_model(model, tmp_path / "m.onnx")
    back = load_model(path)
    for a, b in zip(model.graph.initializer, back.graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))


def test_a_result_that_fails_its_check_is_never_put_in_place(tmp_path: Path, npz_dir: Path, monkeypatch):
    """The self-check loads the written temporary file; when it fails, no file is left."""
    from onnxquant.errors import QuantizationError
    from onnxquant.pipeline import save

    checked: list[Path] = []

    def failing(written, sample, model=None):
        checked.append(written)
        assert isinstance(written, Path) and written.exists()  # the check reads the file itself
        raise QuantizationError("result rejected (test)")

    monkeypatch.setattr(save, "_self_check", failing)
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_cnn().SerializeToString())
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(QuantizationError):
        quantize(model, npz_dir, output=out / "q.onnx")
    assert checked and list(out.iterdir()) == []


def test_weights_on_disk_in_the_output_are_checked_beside_it(tmp_path: Path, mlp_data: Path, monkeypatch):
    """A result that keeps weights on disk is checked from its written file and data file."""
    monkeypatch.setattr(model_io, "IN_MEMORY_LIMIT", 0)  # as a model too large to read in
    source = tmp_path / "src"
    source.mkdir()
    recipe = Recipe(simplify=False).with_overrides(nodes={"exclude": ("op:MatMul",)})
    result = quantize(_mlp_with_external(source), mlp_data, recipe, output=tmp_path / "out" / "q.onnx")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["q.onnx", "q.onnx.data"]
    assert result.size_after == sum(p.stat().st_size for p in (tmp_path / "out").iterdir())


# Malformed external-data metadata: every field the loader reads, with values a hostile or broken
# exporter could write. Each is refused by the one metadata reader (exit 3), never a crash.
_BAD_ENTRIES = st.one_of(
    st.tuples(st.just("offset"), st.sampled_from(["-1", "-4096", "abc", "1e3", "0x10", "", " 1", "99999999999999999999"])),
    st.tuples(st.just("length"), st.sampled_from(["-1", "ten", "1.5", "", "１２"])),
    st.tuples(st.just("location"), st.sampled_from(["w\0.bin", "", "/etc/passwd", "../w.bin", "w.bin\0../../x"])),
    st.tuples(st.sampled_from(["offset", "length"]), st.text(max_size=12)),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(change=_BAD_ENTRIES)
def test_malformed_external_metadata_is_a_model_error(tmp_path_factory, change: tuple[str, str]):
    folder = tmp_path_factory.mktemp("meta")
    path = _mlp_with_external(folder)
    model = onnx.load_model(str(path), load_external_data=False)
    key, value = change
    tensor = model.graph.initializer[0]
    entries = {e.key: e.value for e in tensor.external_data}
    entries[key] = value
    del tensor.external_data[:]
    for k, v in entries.items():
        tensor.external_data.add(key=k, value=v)
    path.write_bytes(model.SerializeToString())
    try:
        load_model(path)
    except ModelError as exc:
        assert "\n" not in str(exc)
    else:  # only a value that happens to be valid may load ("0" offset, a long enough length)
        assert key != "location" and value.strip().isdigit(), change


@pytest.mark.parametrize("dims", [[-1, 4], [2**40, 2**40], [2**31, 2**31, 2**31, 2**31]])
def test_external_tensor_with_impossible_shape_is_a_model_error(tmp_path: Path, dims: list[int]):
    path = _mlp_with_external(tmp_path)
    model = onnx.load_model(str(path), load_external_data=False)
    tensor = model.graph.initializer[0]
    del tensor.dims[:]
    tensor.dims.extend(dims)
    path.write_bytes(model.SerializeToString())
    result = CliRunner().invoke(main, ["quantize", str(path), "-o", str(tmp_path / "out" / "q.onnx"),
                                       "--calib-data", str(tmp_path)])
    assert result.exit_code == 3, result.output
    assert result.output.startswith("error:") and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "out").exists()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, 10), dims=st.lists(st.integers(0, 40), min_size=1, max_size=4),
       typed=st.booleans())
def test_tensor_data_that_does_not_fill_its_dims_is_a_model_error(tmp_path: Path, index: int, dims: list[int],
                                                                   typed: bool):
    """A corrupt dim or cut data (a bit flip) is exit 3 at load, never a crash in a pass; so is a
    ModelProto handed to the library."""
    model = tiny_cnn()
    tensor = model.graph.initializer[index % len(model.graph.initializer)]
    values = numpy_helper.to_array(tensor)
    if typed and tensor.data_type == onnx.TensorProto.FLOAT:
        tensor.ClearField("raw_data")
        tensor.float_data[:] = values.ravel().tolist()
    if int(np.prod(dims)) == values.size:
        dims = [*dims, 2] if values.size else [*dims, 1, 0]
        if int(np.prod(dims)) == values.size:
            return
    tensor.ClearField("dims")
    tensor.dims.extend(dims)
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError):
        load_model(path)
    with pytest.raises(ModelError):
        quantize(model, [{"x": np.zeros((1, 3, 16, 16), np.float32)}])
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 3 and result.output.count("\n") == 1


def test_model_digest_keys_the_model_and_refuses_what_cannot_be_serialized(monkeypatch):
    from onnxquant import model_io

    a, b = tiny_cnn(), tiny_cnn()
    assert model_io.model_digest(a) == model_io.model_digest(b)
    b.graph.node[0].name = b.graph.node[0].name + "_other"
    assert model_io.model_digest(a) != model_io.model_digest(b)
    c = tiny_cnn()  # a weight's values count, though the model is hashed piece by piece
    weight = onnx.numpy_helper.to_array(c.graph.initializer[0]).copy()
    weight.flat[0] += 1
    c.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(weight, c.graph.initializer[0].name))
    assert model_io.model_digest(c) != model_io.model_digest(a)
    d = tiny_cnn()
    d.graph.initializer[0].name, d.graph.initializer[1].name = d.graph.initializer[1].name, d.graph.initializer[0].name
    assert model_io.model_digest(d) != model_io.model_digest(a)  # which weight has which name counts too
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", 16)  # as if the model were over 2 GB
    assert model_io.model_digest(a) is None
    assert model_io.uncached_key() != model_io.uncached_key()


def test_repacked_is_a_new_message_with_the_same_bytes():
    """A model rewritten in place is repacked into a new message (the old one's removed fields
    are let go with it); nothing it still holds is lost or reordered."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxquant.model_io import repacked, serialize

    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.graph.initializer.add().CopyFrom(numpy_helper.from_array(np.ones(5, np.float32), "dropped"))
    del model.graph.initializer[1:]  # removed in place, as a rewrite removes the float weights
    fresh = repacked(model)
    assert fresh is not model and serialize(fresh) == serialize(model)
    assert [i.name for i in fresh.graph.initializer] == ["w"]


def test_digest_and_probe_copies_work_without_is_repeated(monkeypatch):
    """protobuf before 6.31 has no ``FieldDescriptor.is_repeated`` (onnx 1.16-1.17 allow it): the
    digest and the probe's cut-down copy read the field's label there."""
    from onnxquant import model_io as mio

    real = mio.is_repeated
    real_digest = mio.model_digest(tiny_mlp(hidden=32))

    from google.protobuf.descriptor import FieldDescriptor

    class Old:  # a descriptor as older protobuf gives it: label, no is_repeated
        def __init__(self, fd):
            self.label = FieldDescriptor.LABEL_REPEATED if fd.is_repeated else FieldDescriptor.LABEL_OPTIONAL

    monkeypatch.setattr(mio, "is_repeated", lambda fd: real(Old(fd)))
    model = tiny_mlp(hidden=32)
    assert mio.model_digest(model) == real_digest
