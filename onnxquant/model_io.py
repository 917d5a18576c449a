"""Loading and saving ONNX models safely.

Loading refuses what a hostile or broken file could do to us: unreadable protobuf, external data
that points outside the model's folder, graphs the checker rejects. Saving is atomic (a temporary
file renamed into place) and deterministic, and uses external data above protobuf's 2 GB limit.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import EncodeError
from onnx import external_data_helper, numpy_helper

from onnxquant.errors import ModelError
from onnxquant.graphs import iter_graphs as iter_graphs
from onnxquant.graphs import iter_tensors as iter_tensors
from onnxquant.ops import WEIGHTED_OPS
from onnxquant.outputs import all_or_nothing, scratch, temp_dir, temp_file, write_errors

PROTOBUF_LIMIT = 2**31 - 1
_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def is_repeated(field: Any) -> bool:
    """Whether a protobuf field descriptor is a repeated field (``is_repeated`` exists from
    protobuf 6.31 on; onnx 1.16-1.17 run on older ones, where only ``label`` says it)."""
    from google.protobuf.descriptor import FieldDescriptor

    return field.is_repeated if hasattr(field, "is_repeated") else field.label == FieldDescriptor.LABEL_REPEATED


def _check_strings(message: Any) -> None:
    """Raise UnicodeDecodeError on a string field that is not UTF-8. Protobuf parses such a field
    as bytes, and it would otherwise fail deep in a pass that copies it."""
    from google.protobuf.descriptor import FieldDescriptor

    for descriptor, value in message.ListFields():
        items = value if is_repeated(descriptor) else (value,)
        if descriptor.type == FieldDescriptor.TYPE_STRING:
            for item in items:
                if isinstance(item, bytes):
                    item.decode("utf-8")  # raises
        elif descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            for item in items:
                _check_strings(item)


@dataclass(frozen=True)
class ExternalEntry:
    """A tensor's external-data metadata, checked: where its bytes are, and how many."""

    location: str
    offset: int
    length: int | None  # as written in the file; None when left out
    size: int  # bytes the tensor's type and shape need


def _whole(text: str, key: str, name: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise ModelError(f"external data of {name!r} has a bad {key} {text[:40]!r} (must be a whole number >= 0)")
    return int(text)


def external_entry(tensor: onnx.TensorProto) -> ExternalEntry:
    """The one reader of external-data metadata: every malformed entry (negative or non-numeric
    offset or length, an empty, absolute or NUL-holding location, a shape whose size overflows)
    is a ModelError (exit 3)."""
    info = _external_info(tensor)
    name = tensor.name
    location = info.get("location", "")
    if not location or "\0" in location or os.path.isabs(location) or Path(location).drive:
        raise ModelError(f"external data of {name!r} has an unsafe location {location[:80]!r}")
    offset = _whole(info.get("offset", "0"), "offset", name)
    length = _whole(info["length"], "length", name) if "length" in info else None
    return ExternalEntry(location, offset, length, tensor_bytes(tensor))


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's values by its type and shape; a negative dim, an unknown type or a size
    past what a file can hold is a ModelError."""
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"tensor {tensor.name!r} has an unknown data type {tensor.data_type}") from exc
    if dtype == object:
        raise ModelError(f"tensor {tensor.name!r}: string tensors cannot be stored as external data")
    if any(d < 0 for d in tensor.dims):
        raise ModelError(f"tensor {tensor.name!r} has a negative dim {list(tensor.dims)}")
    count = math.prod(tensor.dims)
    size = count * dtype.itemsize
    if size >= 2**62:
        raise ModelError(f"tensor {tensor.name!r} has shape {list(tensor.dims)}: more bytes than any file holds")
    return size


def check_external_data_paths(model: onnx.ModelProto, base_dir: Path) -> None:
    """Refuse external data locations that leave the model's folder (``..``, absolute, symlinks)."""
    root = base_dir.resolve()
    for tensor in iter_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entry = external_entry(tensor)
        location = entry.location
        try:
            target = (root / location).resolve()
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"external data of {tensor.name!r} has an unsafe location {location[:80]!r}") from exc
        if root != target and root not in target.parents:
            raise ModelError(
                f"external data of {tensor.name!r} points outside the model's folder: {location!r}"
            )
        if not target.is_file():
            raise ModelError(f"external data file {location!r} of {tensor.name!r} is missing")


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read, validate and return a model with its external data loaded.

    The file is opened read-only; nothing is ever written next to the input.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types on corrupt input
        raise ModelError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from exc
    try:
        _check_strings(model)
    except UnicodeDecodeError as exc:
        raise ModelError(f"{path}: the model holds text that is not UTF-8 (a corrupt file?)") from exc
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelError(f"{path}: the model has no graph nodes (empty or truncated file?)")
    check_external_data_paths(model, path.parent)
    try:
        # The checker reads the file itself (no Python-side re-serialization, works over 2 GB).
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{path}: invalid ONNX model ({_first_line(exc)})") from exc
    except Exception as exc:
        raise ModelError(f"{path}: cannot be checked ({_first_line(exc)})") from exc
    _anchor_external(model, path)
    check_contents(model, str(path))
    return model


# Key we add to an external tensor's entries: the absolute data file it was checked to live in.
# Weights stay on disk until read (``tensor_array`` memory-maps them); sessions get them as
# initializers that point into the mapping (``external_initializers``); ``save_model`` copies
# them in chunks. Nothing holds a whole large model in memory.
SOURCE_KEY = "onnxquant.source"


# Smaller external tensors, and every non-float one (shape constants, which onnxruntime must
# read while it infers shapes), are read into the model as usual.
LAZY_MIN_BYTES = 4096


def _anchor_external(model: onnx.ModelProto, path: Path) -> None:
    for tensor in iter_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entry = external_entry(tensor)
        source = (path.parent / entry.location).resolve()
        try:
            size = source.stat().st_size
        except OSError as exc:
            raise ModelError(f"{path}: cannot read external data of {tensor.name!r} ({_first_line(exc)})") from exc
        expected = entry.size
        if entry.length is not None and entry.length < expected or entry.offset + expected > size:
            raise ModelError(f"{path}: external data of {tensor.name!r} is shorter than its shape says "
                             "(truncated data file?)")
        if tensor.data_type in _FLOATS and expected >= LAZY_MIN_BYTES:
            tensor.external_data.add(key=SOURCE_KEY, value=str(source))
            continue
        _read_in(tensor, source, entry.offset, expected)


def _byte_size(tensor: onnx.TensorProto) -> int:
    return tensor_bytes(tensor)


def is_lazy(tensor: onnx.TensorProto) -> bool:
    """An external tensor that ``load_model`` left on disk."""
    return tensor.data_location == onnx.TensorProto.EXTERNAL and any(e.key == SOURCE_KEY for e in tensor.external_data)


def has_lazy(model: onnx.ModelProto) -> bool:
    return any(is_lazy(t) for t in iter_tensors(model))


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The values of ``tensor``; a weight left on disk is memory-mapped (copy-on-write: the file
    is never changed), not read into memory."""
    if not is_lazy(tensor):
        return numpy_helper.to_array(tensor)
    info = _external_info(tensor)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
    return np.memmap(info[SOURCE_KEY], dtype=dtype, mode="c", offset=external_entry(tensor).offset,
                     shape=tuple(tensor.dims))


# A model whose weights on disk and proto come to less than this is read into memory before its
# graph is prepared, as a one-file model of that size is: onnxruntime's simplifier and the
# transformer fusion work on a serialized model, and torch.onnx's exporter (dynamo, the default
# since torch 2.9) writes external data for models of any size.
IN_MEMORY_LIMIT = 1 << 30


def read_in_if_small(model: onnx.ModelProto, limit: int | None = None) -> bool:
    """Read the weights ``load_model`` left on disk into ``model`` when the whole model stays under
    ``limit`` (default ``IN_MEMORY_LIMIT``); whether it did."""
    lazy = [t for t in iter_tensors(model) if is_lazy(t)]
    limit = IN_MEMORY_LIMIT if limit is None else limit
    if not lazy or model.ByteSize() + sum(tensor_bytes(t) for t in lazy) >= limit:
        return False
    for tensor in lazy:
        entry = external_entry(tensor)
        _read_in(tensor, Path(_external_info(tensor)[SOURCE_KEY]), entry.offset, entry.size)
    return True


def _read_in(tensor: onnx.TensorProto, source: Path, offset: int, size: int) -> None:
    """Make an external tensor an ordinary one, its bytes read from ``source``."""
    with open(source, "rb") as handle:
        handle.seek(offset)
        tensor.raw_data = handle.read(size)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT


def external_initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Main-graph weights left on disk, for ``SessionOptions.add_initializer`` (zero-copy)."""
    return {t.name: tensor_array(t) for t in model.graph.initializer if is_lazy(t)}




# Packed 4-bit types: two values a byte in raw_data.
_PACKED_4BIT = {t for t in (getattr(onnx.TensorProto, n, None) for n in ("INT4", "UINT4", "FLOAT4E2M1")) if t}
# Typed fields that hold one value an element (complex types hold two: not checked here).
_TYPED_FIELDS = {onnx.TensorProto.FLOAT: "float_data", onnx.TensorProto.DOUBLE: "double_data",
                 onnx.TensorProto.INT64: "int64_data", onnx.TensorProto.UINT64: "uint64_data",
                 onnx.TensorProto.INT32: "int32_data", onnx.TensorProto.STRING: "string_data"}


def check_tensor_data(tensor: onnx.TensorProto, what: str = "model") -> None:
    """A tensor held in the file must carry as many values as its dims say: the checker does not
    look, and a corrupt dim or a cut raw_data would otherwise fail deep inside a pass."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return  # its length is checked against the data file (``check_external_data_paths``)
    if any(d < 0 for d in tensor.dims):
        raise ModelError(f"{what}: tensor {tensor.name!r} has a negative dim {list(tensor.dims)}")
    count = math.prod(tensor.dims)
    if tensor.raw_data:
        if tensor.data_type in _PACKED_4BIT:
            expected = (count + 1) // 2
        elif tensor.data_type == onnx.TensorProto.STRING:
            raise ModelError(f"{what}: string tensor {tensor.name!r} stored as raw bytes")
        else:
            expected = tensor_bytes(tensor)
        if len(tensor.raw_data) != expected:
            raise ModelError(f"{what}: tensor {tensor.name!r} of shape {list(tensor.dims)} holds "
                             f"{len(tensor.raw_data)} bytes, not {expected} (a corrupt file?)")
        return
    field = _TYPED_FIELDS.get(tensor.data_type)
    if field is not None and len(getattr(tensor, field)) != count:
        raise ModelError(f"{what}: tensor {tensor.name!r} of shape {list(tensor.dims)} holds "
                         f"{len(getattr(tensor, field))} values, not {count} (a corrupt file?)")


def check_contents(model: onnx.ModelProto, what: str = "model") -> None:
    """What the checker lets through but onnxruntime or quantization cannot use.

    Tensors whose data does not fill their dims, two nodes of one graph with the same name
    (onnxruntime refuses to load them), and NaN or Inf in a Conv/Gemm/MatMul weight or bias (no
    scale can represent it).
    """
    for tensor in iter_tensors(model):
        check_tensor_data(tensor, what)
    for graph in iter_graphs(model.graph):
        for sparse in graph.sparse_initializer:
            check_tensor_data(sparse.values, what)
            check_tensor_data(sparse.indices, what)
    for graph in iter_graphs(model.graph):
        seen: set[str] = set()
        for node in graph.node:
            if node.name and node.name in seen:
                raise ModelError(f"{what}: two nodes are named {node.name!r} (onnxruntime refuses duplicate node names)")
            seen.add(node.name)
        tensors = {t.name: t for t in graph.initializer}
        for node in graph.node:
            slots = ((1,) if node.op_type == "MatMul" else (1, 2)) if node.op_type in WEIGHTED_OPS else ()
            for slot in slots:
                tensor = tensors.get(node.input[slot]) if len(node.input) > slot else None
                if tensor is None or tensor.data_type not in _FLOATS:
                    continue
                if not np.isfinite(tensor_array(tensor)).all():
                    raise ModelError(f"{what}: {node.op_type} {node.name or node.output[0]!r} has NaN or Inf "
                                     f"in its {'weight' if slot == 1 else 'bias'} {tensor.name!r}")


def check_model(model: onnx.ModelProto, what: str = "model") -> None:
    """``onnx.checker`` with a one-line error; large models are checked through a file."""
    try:
        if model.ByteSize() < PROTOBUF_LIMIT:
            onnx.checker.check_model(model)
        else:
            with scratch() as tmp:
                tmp_path = Path(tmp) / "model.onnx"
                _write_external(model, tmp_path)
                onnx.checker.check_model(str(tmp_path))
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{what}: invalid ONNX model ({_first_line(exc)})") from exc


def serialize(model: onnx.ModelProto) -> bytes:
    """Deterministic bytes of a model under the protobuf limit. Weights left on disk keep their
    original relative location (the private source path is left out)."""
    lazy = [t for t in iter_tensors(model) if is_lazy(t)]
    public = [[(k, v) for k, v in _external_info(t).items() if k != SOURCE_KEY] for t in lazy]
    with _entries_replaced(lazy, public):
        return model.SerializeToString(deterministic=True)


def serialize_below_limit(model: onnx.ModelProto) -> bytes | None:
    """``serialize(model)``, or None when it reaches the protobuf limit. Cheaper than asking
    ``ByteSize()`` first: protobuf's upb backend computes a size by serializing the whole message
    (all-MiniLM-L6-v2: as long as the serialization itself), so the check costs one serialization, not two."""
    try:
        data = serialize(model)
    except (EncodeError, ValueError):  # (upb refuses to encode past its own limit)
        return None
    return data if len(data) < PROTOBUF_LIMIT else None


def model_digest(model: onnx.ModelProto) -> str | None:
    """sha256 of the model's serialization taken piece by piece (each field of the model and of
    its graph, each node and tensor apart): the key under which a pass caches what it measured on
    this model. Never the whole serialization at once: serializing holds two to three times the
    model's size for a moment (all-MiniLM-L6-v2's bias correction: 170 MB at the run's peak),
    one weight at a time costs a weight. Weights left on disk count by their public entries, as
    ``serialize`` writes them. ``None`` over the protobuf limit: nothing is cached then."""
    lazy = [t for t in iter_tensors(model) if is_lazy(t)]
    public = [[(k, v) for k, v in _external_info(t).items() if k != SOURCE_KEY] for t in lazy]
    digest, size = hashlib.sha256(), 0
    with _entries_replaced(lazy, public):
        for scope, message in (("model", model), ("graph", model.graph)):
            for field, value in message.ListFields():
                if scope == "model" and field.name == "graph":
                    continue
                for item in (value if is_repeated(field) else [value]):
                    piece = (item.SerializeToString(deterministic=True) if field.message_type is not None
                             else repr(item).encode())
                    size += len(piece)
                    digest.update(f"{scope}.{field.number}:{len(piece)}:".encode())
                    digest.update(piece)
    return digest.hexdigest() if size < PROTOBUF_LIMIT else None


def uncached_key() -> str:
    """A cache key no other model shares: for a model ``model_digest`` cannot hash."""
    return f"unhashed:{uuid.uuid4().hex}"


def repacked(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` holding only what it still holds. A protobuf keeps the memory of every
    field removed from it until the whole message is dropped: a model rewritten in place (its
    float weights replaced by int8 ones) still holds the float weights' bytes."""
    fresh = onnx.ModelProto()
    fresh.CopyFrom(model)
    return fresh


def _external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def _set_entries(tensor: onnx.TensorProto, entries: Sequence[tuple[str, str]]) -> None:
    del tensor.external_data[:]
    for key, value in entries:
        tensor.external_data.add(key=key, value=value)


@contextlib.contextmanager
def _entries_replaced(tensors: Sequence[onnx.TensorProto], entries: Sequence[Sequence[tuple[str, str]]]) -> Iterator[None]:
    """Give each of ``tensors`` these external-data entries for the duration; its own come back
    after (the model is ours to borrow, not to change)."""
    saved = [list(_external_info(t).items()) for t in tensors]
    try:
        for tensor, own in zip(tensors, entries):
            _set_entries(tensor, own)
        yield
    finally:
        for tensor, own in zip(tensors, saved):
            _set_entries(tensor, own)


def lazy_folder(model: onnx.ModelProto) -> str | None:
    """The folder the relative locations of weights left on disk are resolved from."""
    for tensor in iter_tensors(model):
        if is_lazy(tensor):
            info = _external_info(tensor)
            source, location = Path(info[SOURCE_KEY]), Path(info["location"])
            return str(source.parents[len(location.parts) - 1])
    return None


def serialize_extended(
    model: onnx.ModelProto,
    nodes: Sequence[onnx.NodeProto] = (),
    initializers: Sequence[onnx.TensorProto] = (),
    outputs: Sequence[str] = (),
) -> bytes:
    """``model`` with extra nodes, initializers and (untyped) outputs, serialized without
    copying its weights: they are appended, serialized, then removed again."""
    graph = model.graph
    counts = len(graph.node), len(graph.initializer), len(graph.output)
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    for name in outputs:
        graph.output.add().name = name
    try:
        return serialize(model)
    finally:
        del graph.node[counts[0]:]
        del graph.initializer[counts[1]:]
        del graph.output[counts[2]:]


def _write_with_lazy(model: onnx.ModelProto, path: Path) -> None:
    """Write a model holding weights left on disk: they are copied in chunks into
    ``<name>.data`` beside ``path`` (relative locations), the rest is serialized. The model
    keeps its own entries."""
    lazy = [t for t in iter_tensors(model) if is_lazy(t)]
    data_path = path.parent / (path.name + ".data")
    written = []
    offset = 0
    with open(data_path, "wb") as out:
        for tensor in lazy:
            info = _external_info(tensor)
            length = _byte_size(tensor)
            pad = (-offset) % 64  # aligned, so a reader can map each weight
            out.write(b"\0" * pad)
            offset += pad
            with open(info[SOURCE_KEY], "rb") as src:
                src.seek(external_entry(tensor).offset)
                left = length
                while left:
                    chunk = src.read(min(left, 1 << 24))
                    if not chunk:
                        raise ModelError(f"external data of {tensor.name!r} ended early")
                    out.write(chunk)
                    left -= len(chunk)
            written.append([("location", data_path.name), ("offset", str(offset)), ("length", str(length))])
            offset += length
    with _entries_replaced(lazy, written):
        if model.ByteSize() >= PROTOBUF_LIMIT:
            raise ModelError("the model's in-memory part is over 2 GiB even with its original weights on disk")
        path.write_bytes(serialize(model))


def _write_external(model: onnx.ModelProto, path: Path) -> None:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    external_data_helper.convert_model_to_external_data(
        copy, all_tensors_to_one_file=True, location=path.name + ".data", size_threshold=1024
    )
    external_data_helper.write_external_data_tensors(copy, str(path.parent))
    path.write_bytes(serialize(copy))


def save_model(model: onnx.ModelProto, path: str | os.PathLike, data: bytes | None = None,
               check: Callable[[Path], None] | None = None) -> Path:
    """Write ``model`` to ``path`` atomically: on any failure no partial file is left behind.

    ``data``, when given, is the model's serialization already made by the caller. Models over
    2 GB are written with their weights in ``<name>.data`` beside the model. ``check`` is called
    with the written temporary file (its data file beside it) before anything is put in place;
    if it raises, nothing is (and no folder made for it stays).
    """
    path = Path(path)
    with all_or_nothing() as made, write_errors(path):
        made.parents(path)
        tmp_dir = temp_dir(path.parent)
        try:
            tmp_path = tmp_dir / path.name
            if has_lazy(model):
                _write_with_lazy(model, tmp_path)
            elif data is not None:
                tmp_path.write_bytes(data)
            elif model.ByteSize() < PROTOBUF_LIMIT:
                tmp_path.write_bytes(serialize(model))
            else:
                _write_external(model, tmp_path)
            del data
            if check is not None:
                check(tmp_path)
            external = tmp_dir / (path.name + ".data")
            if external.exists():
                os.replace(external, path.parent / external.name)
                made.file(path.parent / external.name)
            os.replace(tmp_path, path)
            made.file(path)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def file_size(path: Path, model: onnx.ModelProto) -> int:
    """The model file plus every external data file it names (each counted once)."""
    locations = {entry.value for t in iter_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL
                 for entry in t.external_data if entry.key == "location"}
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in sorted(locations))


def model_size(model: onnx.ModelProto) -> int:
    """Bytes the model takes on disk (protobuf plus any external data)."""
    return model.ByteSize() + sum(_byte_size(t) for t in iter_tensors(model) if is_lazy(t))


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file renamed into place: never a partial file."""
    path = Path(path)
    with all_or_nothing() as made, write_errors(path):
        made.parents(path)
        fd, tmp = temp_file(path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        made.file(path)
    return path
