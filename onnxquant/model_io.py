"""Loading and saving ONNX models safely.

Loading refuses what a hostile or broken file could do to us: unreadable protobuf, external data
that points outside the model's folder, graphs the checker rejects. Saving is atomic (a temporary
file renamed into place) and deterministic, and uses external data above protobuf's 2 GB limit.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from onnxquant.errors import ModelError

PROTOBUF_LIMIT = 2**31 - 1
_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def iter_graphs(graph: onnx.GraphProto):
    """``graph`` and every graph nested in it (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_graphs(sub)


def iter_tensors(model: onnx.ModelProto):
    """Every TensorProto that can hold weights: initializers and Constant/attribute tensors."""
    for graph in iter_graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


def _check_strings(message: Any) -> None:
    """Raise UnicodeDecodeError on a string field that is not UTF-8. Protobuf parses such a field
    as bytes, and it would otherwise fail deep in a pass that copies it."""
    from google.protobuf.descriptor import FieldDescriptor

    for descriptor, value in message.ListFields():
        repeated = (descriptor.is_repeated if hasattr(descriptor, "is_repeated")
                    else descriptor.label == FieldDescriptor.LABEL_REPEATED)
        items = value if repeated else (value,)
        if descriptor.type == FieldDescriptor.TYPE_STRING:
            for item in items:
                if isinstance(item, bytes):
                    item.decode("utf-8")  # raises
        elif descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            for item in items:
                _check_strings(item)


def check_external_data_paths(model: onnx.ModelProto, base_dir: Path) -> None:
    """Refuse external data locations that leave the model's folder (``..``, absolute, symlinks)."""
    root = base_dir.resolve()
    for tensor in iter_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if not location or os.path.isabs(location) or Path(location).drive:
            raise ModelError(f"external data of {tensor.name!r} has an unsafe location {location!r}")
        target = (root / location).resolve()
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
    try:
        external_data_helper.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:
        raise ModelError(f"{path}: cannot read external data ({_first_line(exc)})") from exc
    check_contents(model, str(path))
    return model


_WEIGHTED = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,)}


def check_contents(model: onnx.ModelProto, what: str = "model") -> None:
    """What the checker lets through but onnxruntime or quantization cannot use.

    Two nodes of one graph with the same name (onnxruntime refuses to load them), and NaN or
    Inf in a Conv/Gemm/MatMul weight or bias (no scale can represent it).
    """
    for graph in iter_graphs(model.graph):
        seen: set[str] = set()
        for node in graph.node:
            if node.name and node.name in seen:
                raise ModelError(f"{what}: two nodes are named {node.name!r} (onnxruntime refuses duplicate node names)")
            seen.add(node.name)
        tensors = {t.name: t for t in graph.initializer}
        for node in graph.node:
            for slot in _WEIGHTED.get(node.op_type, ()):
                tensor = tensors.get(node.input[slot]) if len(node.input) > slot else None
                if tensor is None or tensor.data_type not in _FLOATS:
                    continue
                if not np.isfinite(numpy_helper.to_array(tensor)).all():
                    raise ModelError(f"{what}: {node.op_type} {node.name or node.output[0]!r} has NaN or Inf "
                                     f"in its {'weight' if slot == 1 else 'bias'} {tensor.name!r}")


def check_model(model: onnx.ModelProto, what: str = "model") -> None:
    """``onnx.checker`` with a one-line error; large models are checked through a file."""
    try:
        if model.ByteSize() < PROTOBUF_LIMIT:
            onnx.checker.check_model(model)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                tmp_path = Path(tmp) / "model.onnx"
                _write_external(model, tmp_path)
                onnx.checker.check_model(str(tmp_path))
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{what}: invalid ONNX model ({_first_line(exc)})") from exc


def serialize(model: onnx.ModelProto) -> bytes:
    """Deterministic bytes of a model under the protobuf limit."""
    return model.SerializeToString(deterministic=True)


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


def _write_external(model: onnx.ModelProto, path: Path) -> None:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    external_data_helper.convert_model_to_external_data(
        copy, all_tensors_to_one_file=True, location=path.name + ".data", size_threshold=1024
    )
    external_data_helper.write_external_data_tensors(copy, str(path.parent))
    path.write_bytes(serialize(copy))


def save_model(model: onnx.ModelProto, path: str | os.PathLike, data: bytes | None = None) -> Path:
    """Write ``model`` to ``path`` atomically: on any failure no partial file is left behind.

    ``data``, when given, is the model's serialization already made by the caller. Models over
    2 GB are written with their weights in ``<name>.data`` beside the model.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".onnxquant-", dir=path.parent))
    try:
        tmp_path = tmp_dir / path.name
        if data is not None:
            tmp_path.write_bytes(data)
        elif model.ByteSize() < PROTOBUF_LIMIT:
            tmp_path.write_bytes(serialize(model))
        else:
            _write_external(model, tmp_path)
            data = tmp_dir / (path.name + ".data")
            os.replace(data, path.parent / data.name)
        os.replace(tmp_path, path)
    finally:
        for leftover in tmp_dir.iterdir():
            leftover.unlink()
        tmp_dir.rmdir()
    return path


def model_size(model: onnx.ModelProto) -> int:
    """Bytes the model takes on disk (protobuf plus any external data)."""
    return model.ByteSize()


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file renamed into place: never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
