"""Run the float model on calibration samples and stream statistics of chosen tensors.

The model is augmented with the observed tensors as extra outputs; each sample's outputs are
folded into ``TensorStats`` and dropped before the next sample runs, so peak memory is one
sample's activations plus constant-size statistics.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import contextvars
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar
from pathlib import Path

import numpy as np
import onnx

from onnxquant.calibration.expose import body_values, expose_body_values
from onnxquant.calibration.feeds import check_feed, input_specs
from onnxquant.calibration.histogram import StreamingHistogram
from onnxquant.calibration.observers import StatsTable, TensorStats
from onnxquant.errors import CalibrationDataError, ModelError, UsageError
from onnxquant.model_io import (
    external_initializers,
    iter_tensors,
    lazy_folder,
    serialize,
    serialize_extended,
)
from onnxquant.outputs import scratch

ProgressCallback = Callable[[int, int | None], None]


def model_digest(model: onnx.ModelProto) -> str:
    """Digest of the graph's structure (ops and tensor names, not weights): what saved
    statistics must match to be reused."""
    h = hashlib.sha256()
    for node in model.graph.node:
        h.update("|".join([node.op_type, *node.input, ">", *node.output]).encode())
    return h.hexdigest()


def augmented_bytes(model: onnx.ModelProto, names: list[str]) -> bytes:
    """The model with ``names`` as extra outputs, serialized without copying the weights."""
    return augmented(model, names)[0]


def augmented(model: onnx.ModelProto, names: list[str]) -> tuple[bytes, dict[str, str]]:
    """``augmented_bytes``, where ``names`` may also be values inside If/Loop/Scan bodies: those
    are exposed through extra outputs (a copy of the model), returned as {output: value}."""
    existing = {o.name for o in model.graph.output}
    inner = body_values(model)
    in_body = [n for n in names if n in inner]
    if in_body:
        model, mapping = expose_body_values(model, in_body)
        existing |= set(mapping)
    else:
        mapping = {}
    graph = model.graph
    known = {i.name for i in [*graph.input, *graph.initializer]} | {o for n in graph.node for o in n.output}
    main = [n for n in names if n not in existing and n not in inner and n in known]
    return serialize_extended(model, outputs=main), mapping



T = TypeVar("T")

# onnxruntime intra-op threads for every CPU session a library call opens (0: its default).
# More than this is a typo, not a machine: onnxruntime would fail to start the pool.
MAX_THREADS = 1024
_THREADS: contextvars.ContextVar[int] = contextvars.ContextVar("onnxquant_threads", default=0)


@contextlib.contextmanager
def session_threads(threads: int | None) -> Iterator[None]:
    """Run the sessions opened inside with ``threads`` intra-op threads (None: leave as is)."""
    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= MAX_THREADS:
        raise UsageError(f"threads must be a whole number in 0..{MAX_THREADS}, got {threads!r}")
    token = _THREADS.set(threads)
    try:
        yield
    finally:
        _THREADS.reset(token)


# Bytes of observed activations one calibration run may fetch (None: no limit).
_MAX_MEMORY: contextvars.ContextVar[int | None] = contextvars.ContextVar("onnxquant_max_memory", default=None)


@contextlib.contextmanager
def memory_budget(max_bytes: int | None) -> Iterator[None]:
    """Calibrate inside with at most ``max_bytes`` of fetched activations per run: tensors are
    observed in groups, one pass over the data per group. Statistics (and so outputs) are the
    same as in one pass."""
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
        raise UsageError(f"max_memory must be a positive number of bytes, got {max_bytes!r}")
    token = _MAX_MEMORY.set(max_bytes)
    try:
        yield
    finally:
        _MAX_MEMORY.reset(token)


# Samples a calibration or probe pass runs at once when --threads is not given.
DEFAULT_WORKERS = 4


def sample_workers() -> int:
    """How many samples a pass runs at once: ``--threads``, else the CPUs this process may use
    (at most ``DEFAULT_WORKERS``); one under a memory budget (each sample in flight holds its
    activations)."""
    if _MAX_MEMORY.get() is not None:
        return 1
    threads = _THREADS.get()
    if threads:
        return threads
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(DEFAULT_WORKERS, cpus))


def in_order(run: Callable[[int, dict[str, np.ndarray]], T], samples: Iterable[dict[str, np.ndarray]],
             max_samples: int | None = None, workers: int = 1) -> Iterator[T]:
    """``run(index, sample)`` for each sample, results in sample order; ``workers`` samples run
    at once. Each run uses sessions with one intra-op thread, so a value never depends on the
    thread count: parallelism is across samples, never inside one (``--threads`` changes the
    speed, not the bits). An error surfaces at the sample it belongs to, as in one thread."""
    source = iter(samples)
    pending: collections.deque[concurrent.futures.Future] = collections.deque()
    pool = concurrent.futures.ThreadPoolExecutor(workers) if workers > 1 else None
    index = 0
    try:
        while max_samples is None or index < max_samples:
            try:
                raw = next(source)
            except StopIteration:
                break
            except Exception as exc:  # a bad file: reported after the samples before it
                failed: concurrent.futures.Future = concurrent.futures.Future()
                failed.set_exception(exc)
                pending.append(failed)
                break
            if pool is None:
                yield run(index, raw)
            else:
                pending.append(pool.submit(run, index, raw))
                if len(pending) >= workers:
                    yield pending.popleft().result()
            index += 1
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        if pool is not None:
            pool.shutdown(wait=True)


def run_fetch(session: Any, names: list[str], feed: dict[str, np.ndarray]) -> list[Any]:
    """The values of ``names`` for ``feed``. A graph input asked for as an output is taken from
    the feed itself: some onnxruntime builds (the OpenVINO one, 1.24) return it as a view of the
    feed's memory that does not keep the feed alive, so it changed under parallel samples."""
    asked = [n for n in names if n not in feed]
    got = dict(zip(asked, session.run(asked, feed))) if asked else {}
    return [feed[n] if n in feed else got[n] for n in names]


def make_session(model: onnx.ModelProto | bytes | Path | Callable[[], bytes], threads: int = 0, optimize: bool = True,
                 weights: onnx.ModelProto | None = None, concurrent_runs: bool = False):
    """A CPU session. ``optimize=False``: no graph fusions, so a tensor's values do not depend on
    which other tensors are fetched (fetching one blocks the fusions that would consume it).

    ``weights`` (default: ``model`` itself): the model whose weights left on disk the session
    reads from their memory mapping, without a copy.

    ``concurrent_runs``: the session runs several samples at once (``in_order``). Its memory
    pattern is then off: with it, each run's activations take one more block besides the chunks
    the first run left in the arena (EfficientNet-Lite0's bias-correction probe: 337 MB peak
    with it, 242 MB without, two samples at once). Values do not depend on where they are stored.

    ``model`` may be a function that serializes it: its bytes are then written to a scratch file
    and let go before onnxruntime loads that file (as from any file, onnxruntime holds no copy of
    the serialization beside its own; given bytes, it copies them first). all-MiniLM-L6-v2's
    session: 175 MB over the bytes at its peak from bytes, 55 MB from a file.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    weights = weights if weights is not None else (model if isinstance(model, onnx.ModelProto) else None)
    mapped = external_initializers(weights) if weights is not None else {}
    values = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in mapped.items()}
    if values:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", lazy_folder(weights))
        # Prepacking would copy every GEMM weight into onnxruntime's own layout: the mapping is the copy.
        options.add_session_config_entry("session.disable_prepacking", "1")
        for name, value in values.items():
            options.add_initializer(name, value)
    options.log_severity_level = 3
    if concurrent_runs:
        options.enable_mem_pattern = False
        # Nodes in the order the graph lists them where it can: a probe's extra nodes, placed
        # after what they read (recovery.probe), then free what they measure early. Each kernel
        # computes the same values in any order.
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    threads = threads or _THREADS.get()
    if threads:
        options.intra_op_num_threads = threads
    try:
        if isinstance(model, Path):
            session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        elif not values and weights is not None and not _has_external(weights):
            session = _session_from_file(model if callable(model) else lambda: _serialized(model), options)
        else:
            data = model() if callable(model) else _serialized(model)
            session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
            del data
        session.onnxquant_weights = values  # the mapped buffers must outlive the session
        return session
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot run the model: {str(exc).strip().splitlines()[0]}") from exc


def _serialized(model: onnx.ModelProto | bytes) -> bytes:
    return model if isinstance(model, bytes) else serialize(model)


def _has_external(model: onnx.ModelProto) -> bool:
    """Whether a tensor of ``model`` keeps its data in a file (resolved against the folder a
    session loads the model from: not the scratch folder)."""
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in iter_tensors(model))


def _session_from_file(serialized: Callable[[], bytes], options: Any) -> Any:
    """A session loaded from a scratch file holding ``serialized()``, whose bytes are let go first
    (from the bytes themselves where the temporary folder cannot take them: full, read-only)."""
    import onnxruntime as ort

    data = serialized()
    with contextlib.ExitStack() as stack:
        try:
            path = Path(stack.enter_context(scratch())) / "model.onnx"
            path.write_bytes(data)
        except OSError:
            return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        del data
        try:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # (its message names the scratch file, gone when the user reads it)
            raise RuntimeError(str(exc).replace(str(path), "the model")) from exc


def _sizes(model: onnx.ModelProto, names: list[str], feed: dict[str, np.ndarray]) -> dict[str, int]:
    """Bytes of each tensor for this feed, from inferred shapes; symbolic dims are read off the
    inputs, and a tensor of unknown shape counts as large as the largest known one."""
    dims: dict[str, int] = {}
    for value in model.graph.input:
        if value.name in feed:
            for d, n in zip(value.type.tensor_type.shape.dim, feed[value.name].shape):
                if d.dim_param:
                    dims[d.dim_param] = int(n)
    infos = {v.name: v for v in [*model.graph.value_info, *model.graph.output, *model.graph.input]}
    sizes: dict[str, int | None] = {}
    for name in names:
        value = infos.get(name)
        count: int | None = None
        if value is not None and value.type.tensor_type.HasField("shape"):
            count = 1
            for d in value.type.tensor_type.shape.dim:
                n = d.dim_value if d.HasField("dim_value") else dims.get(d.dim_param)
                if not n:
                    count = None
                    break
                count *= n
        sizes[name] = count * 4 if count is not None else None
    known = [v for v in sizes.values() if v is not None]
    fallback = max(known, default=1 << 20)
    return {n: v if v is not None else fallback for n, v in sizes.items()}


def _groups(sizes: dict[str, int], budget: int) -> list[list[str]]:
    """Tensors in graph-name order, packed into runs of at most ``budget`` bytes."""
    groups: list[list[str]] = [[]]
    used = 0
    for name in sorted(sizes):
        if groups[-1] and used + sizes[name] > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += sizes[name]
    return groups


def collect(
    model: onnx.ModelProto,
    tensor_names: list[str],
    samples: Iterable[dict[str, np.ndarray]],
    histograms: bool,
    max_samples: int | None = None,
    progress: ProgressCallback | None = None,
    total: int | None = None,
) -> StatsTable:
    """Observe ``tensor_names`` over ``samples``; non-float tensors are skipped.

    Under a ``memory_budget``, the tensors are split into groups that fit it, each observed in
    its own pass over the samples (which must then be re-readable).
    """
    names = sorted(set(tensor_names))
    table = StatsTable(model_digest=model_digest(model))
    if max_samples is not None and total is not None:
        total = min(total, max_samples)
    groups = [names]
    budget = _MAX_MEMORY.get()
    if budget is not None:
        if not getattr(samples, "rereadable", False):
            raise UsageError("--max-memory may need several passes over the samples; give a folder or a list, "
                             "not a one-shot reader")
        first = next(iter(samples), None)
        if first is None:
            raise CalibrationDataError("no calibration samples were read")
        sizes = _sizes(model, names, check_feed(first, input_specs(model), 0))
        largest = max(sizes, key=lambda n: sizes[n], default=None)
        if largest is not None and sizes[largest] > budget:
            raise UsageError(f"--max-memory {budget} bytes is below one sample's tensor {largest!r} "
                             f"({sizes[largest]} bytes); raise it or calibrate with a smaller batch")
        groups = _groups(sizes, budget)
    passes = len(groups)
    for number, group in enumerate(groups):
        counted = _observe(model, group, samples, table, histograms, max_samples,
                           _offset(progress, number, passes), total)
        if number == 0:
            table.samples = counted
    if table.samples == 0:
        raise CalibrationDataError("no calibration samples were read")
    return table


def _offset(progress: ProgressCallback | None, number: int, passes: int) -> ProgressCallback | None:
    """Progress over all passes: pass ``number`` reports after the ones before it."""
    if progress is None or passes == 1:
        return progress
    return lambda done, total: progress(number * (total or 0) + done, total * passes if total is not None else None)


def _observe(model: onnx.ModelProto, names: list[str], samples: Iterable[dict[str, np.ndarray]], table: StatsTable,
             histograms: bool, max_samples: int | None, progress: ProgressCallback | None, total: int | None) -> int:
    """One pass over ``samples`` folding ``names`` into ``table``; returns the samples read.

    Samples run in parallel (``in_order``) on one-thread sessions; statistics are folded in
    sample order, so the table is the same for any thread count."""
    exposed: dict[str, str] = {}

    def serialized() -> bytes:
        data, mapping = augmented(model, names)
        exposed.update(mapping)
        return data

    session = make_session(serialized, threads=1, optimize=False, weights=model, concurrent_runs=True)
    fetch = [o.name for o in session.get_outputs()]
    wanted = set(names)
    specs = input_specs(model)

    def run(index: int, raw: dict[str, np.ndarray]) -> tuple[int, list[Any]]:
        feed = check_feed(raw, specs, index)
        try:
            return index, run_fetch(session, fetch, feed)
        except Exception as exc:
            raise CalibrationDataError(
                f"calibration sample {index}: onnxruntime failed: {str(exc).strip().splitlines()[0]}"
            ) from exc

    count = 0
    for index, outputs in in_order(run, samples, max_samples, sample_workers()):
        for name, value in zip(fetch, outputs):
            name = exposed.get(name, name)
            if name not in wanted or not isinstance(value, np.ndarray) or value.dtype != np.float32:
                continue
            if value.size == 0:
                continue  # an If branch that did not run (see calibration.expose): nothing observed
            stats = table.tensors.get(name)
            if stats is None:
                stats = table.tensors[name] = TensorStats(histogram=StreamingHistogram() if histograms else None)
            try:
                stats.update(value)
            except FloatingPointError as exc:
                raise CalibrationDataError(
                    f"calibration sample {index}: tensor {name!r} contains NaN or Inf"
                ) from exc
        del outputs
        count += 1
        if progress:
            progress(count, total)
    return count
