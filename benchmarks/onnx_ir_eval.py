"""onnx-ir (the ONNX project's in-memory IR) against our own ModelProto code: adopt it where?

Four measurements, each side by side in one run (this machine is shared and noisy: ratios):

(a) load + save of a large model with external data: ``model_io.load_model``/``save_model`` vs
    ``onnx_ir.load``/``onnx_ir.save`` (its memory-mapped external tensors), each in a child
    process whose peak memory is sampled; and whether onnx-ir's save is deterministic and gives
    our bytes.
(b) a representative graph edit, ``insert_qdq`` (find producers and readers, insert Q/DQ nodes,
    rename graph outputs, replace weights), on real models: ours on ModelProto vs the same edit
    written with onnx-ir (``insert_qdq_ir`` below), plus the conversion ModelProto <-> onnx_ir
    that our pipeline would pay at every boundary (onnxruntime sessions take bytes).
(c) lines of our code each adoption would delete, and the size of the onnx-ir port.
(d) external-data safety and malformed files: what each loader does with a hostile location, a
    symlink, a truncated data file, bad offsets, garbage bytes.

Models and samples: ``python -m models.build NAME --out build/models`` and
``python -m calibration.build NAME --out build/calib/NAME`` for efficientnet-lite0, minilm, ppocr-det.
``flock /tmp/onnxquant-bench.lock python -m benchmarks.onnx_ir_eval --out build/bench [--layers 4] [--repeats 5]``
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir import serde

from benchmarks.large_model import _peak, build as build_large, sample_peaks
from onnxquant import model_io
from onnxquant.errors import ModelError
from onnxquant.ops import WEIGHTED_OPS
from onnxquant.passes import insert_qdq as ours_qdq
from onnxquant.passes.names import fresh_name
from onnxquant.planner import QuantPlan

ZOO_MODELS = {"efficientnet-lite0": "efficientnet_lite0.onnx", "minilm": "all_minilm_l6_v2.onnx",
              "ppocr-det": "ppocrv4_det.onnx"}


# ---------------------------------------------------------------- (a) load + save round trip

def round_trip_ours(model: Path, out: Path) -> dict[str, float]:
    """Our pipeline's load (checks, weights left on disk) and atomic save."""
    started = time.perf_counter()
    proto = model_io.load_model(model)
    loaded = time.perf_counter()
    model_io.save_model(proto, out)
    return {"load_s": loaded - started, "save_s": time.perf_counter() - loaded}


def round_trip_ours_unchecked(model: Path, out: Path) -> dict[str, float]:
    """Our load without what onnx-ir's does not do either (``onnx.checker`` on the file, the
    content checks that read every weight): containment, lazy weights, atomic save kept."""
    started = time.perf_counter()
    proto = onnx.load_model(str(model), load_external_data=False)
    model_io.check_external_data_paths(proto, model.parent)
    model_io._anchor_external(proto, model)
    loaded = time.perf_counter()
    model_io.save_model(proto, out)
    return {"load_s": loaded - started, "save_s": time.perf_counter() - loaded}


def round_trip_ir(model: Path, out: Path) -> dict[str, float]:
    """onnx-ir's load (memory-mapped external tensors, no checks) and save (weights in
    ``<name>.data`` beside the output, as ours writes them)."""
    started = time.perf_counter()
    loaded_model = ir.load(model)
    loaded = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)  # ir.save does not make it
    ir.save(loaded_model, out, external_data=out.name + ".data")
    return {"load_s": loaded - started, "save_s": time.perf_counter() - loaded}


ROUND_TRIPS: dict[str, Callable[[Path, Path], dict[str, float]]] = {
    "ours": round_trip_ours, "ours_unchecked": round_trip_ours_unchecked, "onnx_ir": round_trip_ir}


def _sampled_child(kind: str, model: Path, out: Path) -> dict[str, float]:
    """Run one round trip in a fresh process, sampling its peak memory every 20 ms."""
    cmd = [sys.executable, "-m", "benchmarks.onnx_ir_eval", "--child", kind, str(model), str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = sample_peaks(proc, every=0.02)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} round trip failed: {stderr.strip()[-400:]}")
    info = json.loads(stdout)
    return {**info, "peak_rss_mb": peaks["VmHWM"], "peak_anon_mb": peaks["RssAnon"], "peak_file_mb": peaks["RssFile"],
            "peak_rss_over_imports_mb": peaks["VmHWM"] - info["rss_after_imports_mb"]}


def files_of(path: Path) -> dict[str, str]:
    """The sha256 of the model file and of its data file, by name."""
    digests = {}
    for file in sorted(path.parent.iterdir()):
        if file.name.startswith(path.name):
            with open(file, "rb") as handle:
                digests[file.name] = hashlib.file_digest(handle, "sha256").hexdigest()
    return digests


def same_outputs(a: Path | bytes, b: Path | bytes, feed: dict[str, np.ndarray]) -> bool:
    """Both models give the same onnxruntime outputs, bit for bit, on ``feed``."""
    import onnxruntime as ort

    def run(model: Path | bytes) -> list[np.ndarray]:
        source = str(model) if isinstance(model, Path) else model
        return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feed)

    return all(np.array_equal(x, y) for x, y in zip(run(a), run(b), strict=True))


def measure_round_trip(folder: Path, layers: int, width: int, repeats: int) -> dict:
    """Each kind in its own process, interleaved (a noisy neighbour hits every kind), the order
    turned round each repeat, and the page cache's dirty pages written back before each run: a
    save otherwise pays for the previous run's writes."""
    model = build_large(folder / "large", layers, width)
    result: dict = {"weights_mb": round((model.parent / "large.onnx.data").stat().st_size / 2**20)}
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in ROUND_TRIPS}
    digests: dict[str, list[dict[str, str]]] = {kind: [] for kind in ROUND_TRIPS}
    for k in range(repeats):
        for kind in (list(ROUND_TRIPS) if k % 2 == 0 else list(ROUND_TRIPS)[::-1]):
            out = folder / f"{kind}{k}" / "out.onnx"
            shutil.rmtree(out.parent, ignore_errors=True)
            os.sync()
            runs[kind].append(_sampled_child(kind, model, out))
            digests[kind].append(files_of(out))
            if k:  # the first repeat's outputs are run below; the rest only hashed
                shutil.rmtree(out.parent)
    for kind, rows in runs.items():
        result[kind] = {key: round(min(r[key] for r in rows), 3) for key in rows[0]}
    ir_files, ours_files = digests["onnx_ir"], digests["ours"]
    result["onnx_ir_deterministic"] = all(f == ir_files[0] for f in ir_files)
    result["ours_deterministic"] = all(f == ours_files[0] for f in ours_files)
    result["onnx_ir_bytes_equal_ours"] = ir_files[0] == ours_files[0]
    result["onnx_ir_data_file_equal_ours"] = (ir_files[0]["out.onnx.data"] == ours_files[0]["out.onnx.data"])
    feed = {"x": np.random.default_rng(1).standard_normal((1, width), dtype=np.float32)}
    result["same_outputs"] = same_outputs(folder / "ours0" / "out.onnx", folder / "onnx_ir0" / "out.onnx", feed)
    for kind in ROUND_TRIPS:
        shutil.rmtree(folder / f"{kind}0", ignore_errors=True)
    for kind in ("load_s", "save_s", "peak_rss_over_imports_mb"):
        for ours in ("ours", "ours_unchecked"):
            result[f"ratio_{kind}_onnx_ir_over_{ours}"] = round(result["onnx_ir"][kind] / max(result[ours][kind], 1e-9), 2)
    return result


# ---------------------------------------------------------------- (b) a graph edit on real models

def real_plan(model_path: Path, calib: Path, samples: int = 4,
              every_op: bool = False) -> tuple[onnx.ModelProto, QuantPlan, int]:
    """The prepared model and the plan ``quantize`` would make for it (default recipe; with
    ``every_op``, the QNN target's selection, whose graph outputs are written by a DQ)."""
    from onnxquant.npu_planner import select_every_op
    from onnxquant.calibration.collector import collect
    from onnxquant.passes.prepare import default_opset, prepare_model
    from onnxquant.planner import finalize, node_names, select
    from onnxquant.recipe import Recipe

    recipe = Recipe()
    prepared, _ = prepare_model(model_io.load_model(model_path), owned=True)
    node_names(prepared)
    sel = (select_every_op if every_op else select)(prepared, recipe, per_channel_ok=True)
    feeds = [dict(np.load(p)) for p in sorted(calib.glob("*.npz"))[:samples]]
    plan = finalize(prepared, sel, collect(prepared, sel.observed, feeds, False, None), recipe)
    return prepared, plan, default_opset(prepared)


class _IrNames:
    """The names ``insert_qdq._Names`` would give, in the same order (one rule: ``fresh_name``)."""

    def __init__(self, graph: ir.Graph) -> None:
        self.used: set[str] = set(graph.initializers)
        for node in graph:
            self.used.update(v.name for v in node.inputs if v is not None)
            self.used.update(v.name for v in node.outputs)
            self.used.add(node.name or "")
        self.used.update(v.name for v in graph.inputs)

    def fresh(self, base: str) -> str:
        return fresh_name(self.used, base)


def _ir_initializer(graph: ir.Graph, name: str, value: np.ndarray) -> ir.Value:
    init = ir.Value(name=name, const_value=ir.tensor(value, name=name))
    graph.register_initializer(init)
    return init


def _ir_guarded(graph: ir.Graph, sel) -> set[str]:
    """``insert_qdq._runtime_would_quantize`` with producers and readers taken from the IR."""
    guarded = set()
    for node in graph:
        if node.name in sel.quantized or node.op_type not in WEIGHTED_OPS or len(node.inputs) < 2:
            continue
        if node.inputs[1] is None or not node.inputs[1].is_initializer() or not node.outputs:
            continue
        out = node.outputs[0]
        chain = [use.node for use in out.uses()]
        if (len(chain) == 1 and chain[0].op_type in ours_qdq._PASS_THROUGH_ACTIVATIONS
                and chain[0].name not in sel.quantized):
            out = chain[0].outputs[0]
        if out.name in sel.activations:
            guarded.add(node.name)
    return guarded


def insert_qdq_ir(model: ir.Model, plan: QuantPlan, opset: int) -> None:
    """``insert_qdq`` (main graph) written with onnx-ir: the same nodes, names and order."""
    graph = model.graph
    names = _IrNames(graph)
    sel = plan.selection
    values = {v.name: v for v in graph.inputs}
    values.update(graph.initializers)
    values.update((v.name, v) for node in graph for v in node.outputs)
    nodes = {node.name: node for node in graph}
    original = list(graph)
    guarded = _ir_guarded(graph, sel)
    head: list[ir.Node] = []
    after: dict[str, list[ir.Node]] = {}  # original tensor name -> nodes placed after its producer
    new_nodes: set[int] = set()

    for tensor in sel.activations:
        params = plan.activations[tensor]
        value = values[tensor]
        scale = _ir_initializer(graph, names.fresh(f"{tensor}_scale"), np.asarray(params.scale, np.float32))
        zero = _ir_initializer(graph, names.fresh(f"{tensor}_zero_point"), np.asarray(params.zero_point))
        q_name, dq_name = names.fresh(f"{tensor}_quantized"), names.fresh(f"{tensor}_dequantized")
        boundary = tensor in sel.boundary_outputs
        if boundary:
            value.name = names.fresh(f"{tensor}_before_quantize")
            dq_name = tensor
        domain = ours_qdq.qdq_domain(params, opset)
        q = ir.node("QuantizeLinear", [value, scale, zero], name=names.fresh(f"{tensor}_QuantizeLinear"),
                    domain=domain, outputs=[ir.Value(name=q_name)])
        dq_value = ir.Value(name=dq_name, type=value.type, shape=value.shape) if boundary else ir.Value(name=dq_name)
        dq = ir.node("DequantizeLinear", [q.outputs[0], scale, zero], name=names.fresh(f"{tensor}_DequantizeLinear"),
                     domain=domain, outputs=[dq_value])
        new_nodes.update((id(q), id(dq)))
        (after.setdefault(tensor, []) if value.producer() is not None else head).extend([q, dq])
        for use in list(value.uses()):
            reader = use.node
            if id(reader) in new_nodes:
                continue
            quantized = reader.name in sel.quantized and reader.name not in sel.weight_only
            if boundary or quantized or (tensor in sel.owned and reader.name not in guarded):
                reader.replace_input_with(use.idx, dq.outputs[0])
        if boundary:
            graph.outputs[graph.outputs.index(value)] = dq.outputs[0]

    readers: dict[str, int] = {}
    for _, tensor in plan.weights:
        readers[tensor] = readers.get(tensor, 0) + 1
    for (node_name, tensor), params in sorted(plan.weights.items()):
        weight = graph.initializers[tensor]
        base = f"{tensor}_{node_name}" if readers[tensor] > 1 else tensor
        q_init = _ir_initializer(graph, names.fresh(f"{base}_quantized"),
                                 plan.quantized_weight((node_name, tensor), weight.const_value.numpy()))
        scale = _ir_initializer(graph, names.fresh(f"{base}_scale"), np.asarray(params.scale, np.float32))
        zero_name = names.fresh(f"{base}_zero_point")
        inputs = [q_init, scale]
        if params.dtype != "int32" and not ours_qdq._zero_point_implied(params, sel.quantized.get(node_name, "")):
            inputs.append(_ir_initializer(graph, zero_name, np.asarray(params.zero_point)))
        dq_name = names.fresh(f"{base}_dequantized")
        dq = ir.node("DequantizeLinear", inputs, ours_qdq._axis_attr(params), name=names.fresh(f"{base}_DequantizeLinear"),
                     domain=ours_qdq.qdq_domain(params, opset), outputs=[ir.Value(name=dq_name)])
        head.append(dq)
        reader = nodes[node_name]
        for i, value in enumerate(reader.inputs):
            if value is weight:
                reader.replace_input_with(i, dq.outputs[0])

    for node in original:  # Q/DQ after their producer, in the order of its outputs
        placed = [n for out in node.outputs for n in after.get(_original_name(out, sel, values), [])]
        if placed:
            graph.insert_after(node, placed)
    if head:
        graph.insert_before(original[0], head)
    for name, init in list(graph.initializers.items()):  # weights now read only through their copy
        if not init.uses() and not init.is_graph_output():
            del graph.initializers[name]
    if any(n.domain == ours_qdq.MS_DOMAIN for n in graph) and ours_qdq.MS_DOMAIN not in model.opset_imports:
        model.opset_imports[ours_qdq.MS_DOMAIN] = 1


def _original_name(value: ir.Value, sel, values: dict[str, ir.Value]) -> str:
    """A value's name before a boundary output's producer result was renamed."""
    for tensor in sel.boundary_outputs:
        if values.get(tensor) is value:
            return tensor
    return value.name or ""


def edit_ours(prepared: onnx.ModelProto, plan: QuantPlan, opset: int) -> onnx.ModelProto:
    """Our edit as ``quantize`` runs it: in place, on ModelProto."""
    return ours_qdq.insert_qdq(prepared, plan, opset, inplace=True)


def edit_ir(prepared: onnx.ModelProto, plan: QuantPlan, opset: int) -> onnx.ModelProto:
    """The same edit through onnx-ir, converting in and out as our pipeline would have to."""
    model = serde.deserialize_model(prepared)
    insert_qdq_ir(model, plan, opset)
    return serde.serialize_model(model)


def _node_key(node: onnx.NodeProto) -> tuple:
    return (node.op_type, node.domain, node.name, tuple(node.input), tuple(node.output),
            tuple(a.SerializeToString(deterministic=True) for a in node.attribute))


def _tensor_key(tensor: onnx.TensorProto) -> tuple:
    return tensor.name, tensor.data_type, tuple(tensor.dims), model_io.tensor_array(tensor).tobytes()


def same_graph(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    """The same nodes in the same order, the same initializers, outputs and opsets, field by
    field: onnx-ir's bytes differ from ours anyway (it writes an empty ``domain`` on every node,
    a value_info for every initializer, and may store tensors in another field)."""
    def key(m: onnx.ModelProto) -> tuple:
        return ([_node_key(n) for n in m.graph.node], sorted(_tensor_key(t) for t in m.graph.initializer),
                [o.SerializeToString(deterministic=True) for o in m.graph.output],
                sorted((o.domain, o.version) for o in m.opset_import))
    return key(a) == key(b)


def same_bytes(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def measure_edit(zoo: Path, calib: Path, name: str, repeats: int) -> dict:
    """Seconds of the edit: ours in place on ModelProto (the copy each repeat needs is timed
    apart and taken off), onnx-ir's on its own IR, and onnx-ir's with the conversions."""
    prepared, plan, opset = real_plan(zoo / ZOO_MODELS[name], calib / name)
    ours, theirs = edit_ours(_copy(prepared), plan, opset), edit_ir(prepared, plan, opset)
    times: dict[str, list[float]] = {}

    def timed(key: str, call: Callable[[], object]) -> object:
        started = time.perf_counter()
        result = call()
        times.setdefault(key, []).append(time.perf_counter() - started)
        return result

    for _ in range(repeats):  # each phase timed on its own; the copy ours edits is not timed
        work = _copy(prepared)
        timed("ours_edit_s", lambda: edit_ours(work, plan, opset))
        as_ir = timed("proto_to_ir_s", lambda: serde.deserialize_model(prepared))
        timed("onnx_ir_edit_s", lambda: insert_qdq_ir(as_ir, plan, opset))
        timed("ir_to_proto_s", lambda: serde.serialize_model(as_ir))
    t = {key: min(values) for key, values in times.items()}
    t["onnx_ir_with_conversion_s"] = t["proto_to_ir_s"] + t["onnx_ir_edit_s"] + t["ir_to_proto_s"]
    feed = dict(np.load(sorted((calib / name).glob("*.npz"))[0]))
    return {"nodes": len(prepared.graph.node), "quantized_tensors": len(plan.activations),
            **{k: round(v, 4) for k, v in t.items()},
            "ratio_edit_only": round(t["onnx_ir_edit_s"] / t["ours_edit_s"], 2),
            "ratio_with_conversion": round(t["onnx_ir_with_conversion_s"] / t["ours_edit_s"], 2),
            "same_graph": same_graph(ours, theirs), "same_bytes": same_bytes(ours, theirs),
            "same_outputs": same_outputs(ours.SerializeToString(), theirs.SerializeToString(), feed)}


# ---------------------------------------------------------------- (c) lines of code

def source_lines(obj: object) -> int:
    """Non-blank lines of a function, class or module (docstrings and comments included)."""
    return sum(1 for line in inspect.getsource(obj).splitlines() if line.strip())


def measure_lines() -> dict[str, int]:
    from onnxquant.passes import names, node_index, scopes

    io = model_io
    lazy_external = [io.external_entry, io._whole, io.check_external_data_paths, io._anchor_external, io.is_lazy,
                     io.has_lazy, io.tensor_array, io.external_initializers, io.serialize, io._external_info,
                     io._set_entries, io._entries_replaced, io.lazy_folder, io._write_with_lazy, io._write_external,
                     io.ExternalEntry]
    return {
        "model_io_total": source_lines(io),
        "model_io_external_data_and_lazy": sum(source_lines(f) for f in lazy_external),
        "node_index_class": source_lines(node_index.NodeIndex),
        "names_module": source_lines(names),
        "scopes_module": source_lines(scopes),
        "insert_qdq_ours_main_graph": sum(source_lines(f) for f in (ours_qdq._Names, ours_qdq.insert_qdq,
                                                                     ours_qdq._runtime_would_quantize)),
        "insert_qdq_onnx_ir_port": sum(source_lines(f) for f in (_IrNames, _ir_initializer, _ir_guarded,
                                                                  insert_qdq_ir, _original_name)),
    }


# ---------------------------------------------------------------- (d) safety

def safety_cases(folder: Path) -> dict[str, Path]:
    """A small external-data model, and one broken or hostile variant per case, each in its own
    folder (a copy of the data file sits one level up, where ``..`` leads)."""
    from onnx import external_data_helper

    from models.tiny import tiny_mlp

    def make(name: str, entries: dict[str, str] | None = None, after: Callable[[Path], None] | None = None) -> Path:
        inner = folder / name / "inner"
        shutil.rmtree(inner.parent, ignore_errors=True)
        inner.mkdir(parents=True)
        model = tiny_mlp(hidden=512)
        external_data_helper.convert_model_to_external_data(model, location="w.bin", size_threshold=0)
        external_data_helper.write_external_data_tensors(model, str(inner))
        if entries:
            tensor = model.graph.initializer[0]
            merged = {e.key: e.value for e in tensor.external_data} | entries
            del tensor.external_data[:]
            for key, value in merged.items():
                tensor.external_data.add(key=key, value=value)
        path = inner / "m.onnx"
        path.write_bytes(model.SerializeToString())
        shutil.copy(inner / "w.bin", inner.parent / "w.bin")
        if after:
            after(inner)
        return path

    def truncate(inner: Path) -> None:
        data = (inner / "w.bin").read_bytes()
        (inner / "w.bin").write_bytes(data[:-100])

    def symlink_out(inner: Path) -> None:
        (inner / "w.bin").unlink()
        (inner / "w.bin").symlink_to(inner.parent / "w.bin")

    def hardlink(inner: Path) -> None:
        os.link(inner / "w.bin", inner.parent / "w.hardlink.bin")

    def raw(name: str, data: bytes) -> Path:
        path = folder / name / "m.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    return {
        "valid": make("valid"),
        "location ../": make("dotdot", {"location": "../w.bin"}),
        "absolute location": make("absolute", {"location": "/etc/passwd"}),
        "symlink out of the folder": make("symlink", after=symlink_out),
        "truncated data file": make("truncated", after=truncate),
        "negative offset": make("negative", {"offset": "-1"}),
        "offset past any file": make("huge", {"offset": "99999999999999999999"}),
        "NUL in location": make("nul", {"location": "w.bin\0../../x"}),
        "data file with a second hard link": make("hardlink", after=hardlink),
        "garbage bytes": raw("garbage", b"\x00\xffhello" * 10),
        "empty file": raw("empty", b""),
    }


def outcome_ours(path: Path) -> str:
    """``refused at load`` (a ModelError: one line, exit 3 in the CLI), else ``loaded``."""
    try:
        model = model_io.load_model(path)
        for tensor in model_io.iter_tensors(model):
            np.asarray(model_io.tensor_array(tensor)).sum()
    except ModelError:
        return "refused at load"
    return "loaded"


def outcome_ir(path: Path) -> str:
    """When onnx-ir refuses (at load, or only when the weights are first read), and with which
    exception type; ``loaded`` when it reads every weight without complaint."""
    try:
        model = ir.load(path)
    except Exception as exc:  # noqa: BLE001 - what it raises is what we record
        return f"refused at load ({type(exc).__name__})"
    try:
        for graph in model.graphs():
            for init in graph.initializers.values():
                np.asarray(init.const_value.numpy()).sum()
    except Exception as exc:  # noqa: BLE001
        return f"refused on first read ({type(exc).__name__})"
    return "loaded" if len(model.graph) else "loaded (empty graph)"


def lazy_weights_survive_conversion(path: Path) -> bool:
    """Does a model loaded by ``load_model``, its weights left on disk, still have them after a
    ModelProto -> onnx_ir -> ModelProto round trip (what a pass written with onnx-ir in the middle
    of our pipeline would do)? onnx-ir keeps only location/offset/length, not the folder."""
    import warnings

    model = model_io.load_model(path)
    assert model_io.has_lazy(model), "the model must have weights left on disk"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnx-ir warns that it drops our key
        back = serde.serialize_model(serde.deserialize_model(model))
    return model_io.has_lazy(back)


def measure_safety(folder: Path) -> dict[str, dict[str, str]]:
    return {case: {"ours": outcome_ours(path), "onnx_ir": outcome_ir(path)}
            for case, path in safety_cases(folder).items()}


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/bench"))
    parser.add_argument("--zoo", type=Path, default=Path("build/models"),
                        help="folder of `python -m models.build NAME --out DIR`")
    parser.add_argument("--calib", type=Path, default=Path("build/calib"), help="folder of NAME/*.npz samples")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=list(ZOO_MODELS))
    parser.add_argument("--child", nargs=3, metavar=("KIND", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, model, out = args.child
        before = _peak(Path("/proc/self/status").read_text())["VmHWM"]  # both sides import the same modules
        print(json.dumps({**ROUND_TRIPS[kind](Path(model), Path(out)), "rss_after_imports_mb": before}))
        return
    folder = args.out / "onnx_ir_eval"
    folder.mkdir(parents=True, exist_ok=True)
    report = {
        "onnx_ir": ir.__version__,
        "safety": measure_safety(folder / "safety"),
        "lazy_weights_survive_conversion": lazy_weights_survive_conversion(
            safety_cases(folder / "conversion")["valid"]),
        "lines": measure_lines(),
        "edit": {name: measure_edit(args.zoo, args.calib, name, args.repeats) for name in args.models},
        "round_trip": measure_round_trip(folder, args.layers, args.width, args.repeats),
    }
    (args.out / "onnx_ir_eval.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
