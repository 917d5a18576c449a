"""Open onnxruntime sessions on a named execution provider, and say where each node ran.

An execution provider that fails to load must never turn silently into a CPU run: onnxruntime
will happily build a session on the CPU with only a warning, and may even list the missing
provider. So every session here records onnxruntime's graph assignment, and callers read the
placement from it instead of trusting ``get_providers()``.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import onnxruntime as ort

from onnxquant.errors import ExecutionProviderError, ModelError

PROVIDERS = ("cpu", "qnn", "openvino")
_EP_NAMES = {"cpu": "CPUExecutionProvider", "qnn": "QNNExecutionProvider", "openvino": "OpenVINOExecutionProvider"}
# Providers that compile a graph for fixed input shapes: symbolic dims must be fixed first
# (QNN HTP takes no node at all of a graph with a dynamic batch).
NEEDS_STATIC_SHAPES = {"qnn"}
# Float ops that QNN's HTP backend takes (LSTM: onnxruntime's QNN EP has no int8 LSTM) compile
# only in fp16 precision; without it, graph finalisation fails. Devices enable fp16 by default;
# the x86 simulator needs it asked for, with a SoC model (60: the one onnxruntime's own QNN
# examples use).
QNN_FINALIZE_FAILED = "Failed to finalize QNN graph"
QNN_FP16_OPTIONS = {"enable_htp_fp16_precision": "1", "soc_model": "60"}


def simulated(ep: str) -> bool:
    """Whether ``ep`` runs on a simulator here: QNN's HTP backend on an x86-64 host is Qualcomm's
    x86 simulator (Hexagon NPUs sit in ARM64 SoCs), so its timing says nothing of a device's."""
    import platform

    return ep == "qnn" and platform.machine().lower() in ("x86_64", "amd64")


@dataclass
class Placement:
    """Which nodes of the optimized graph each provider runs."""

    ep_name: str
    by_provider: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # ep -> [(node, op)]
    htp_fp16: bool = False  # QNN compiled the graph only with fp16 precision for its float ops

    def on_ep(self) -> list[tuple[str, str]]:
        return self.by_provider.get(self.ep_name, [])

    def fallback(self, boundary: set[str]) -> list[tuple[str, str]]:
        """Nodes that ran elsewhere than on the requested provider, apart from ``boundary`` ones."""
        return [(name, op) for ep, nodes in sorted(self.by_provider.items()) if ep != self.ep_name
                for name, op in nodes if name not in boundary]

    def to_dict(self, boundary: set[str]) -> dict[str, Any]:
        fallback = self.fallback(boundary)
        return {
            "nodes_on_ep": len(self.on_ep()),
            "nodes_elsewhere": sum(len(v) for ep, v in self.by_provider.items() if ep != self.ep_name),
            "fallback_nodes": len(fallback),
            "fallback_ops": dict(sorted(Counter(op for _, op in fallback).items())),
            "fallback_names": [name for name, _ in fallback[:50]],
            "ops_on_ep": dict(sorted(Counter(op for _, op in self.on_ep()).items())),
            **({"htp_fp16": True} if self.htp_fp16 else {}),
        }


def _qnn_options(options: ort.SessionOptions, fp16: bool = False) -> None:
    try:
        import onnxruntime_qnn
    except ImportError as exc:
        raise ExecutionProviderError(
            "execution provider 'qnn' is not installed: pip install 'onnxquant[qnn]' (onnxruntime-qnn)") from exc
    name = onnxruntime_qnn.get_ep_name()
    if not any(d.ep_name == _EP_NAMES["qnn"] for d in ort.get_ep_devices()):
        try:
            ort.register_execution_provider_library(name, onnxruntime_qnn.get_library_path())
        except Exception as exc:  # onnxruntime raises its own RuntimeError subclasses here
            raise ExecutionProviderError(f"execution provider 'qnn' failed to load: {_first_line(exc)}") from exc
    devices = [d for d in ort.get_ep_devices() if d.ep_name == _EP_NAMES["qnn"]]
    if not devices:
        raise ExecutionProviderError("execution provider 'qnn' registered but offers no device")
    options.add_provider_for_devices(devices, {"backend_type": "htp", **(QNN_FP16_OPTIONS if fp16 else {})})


def _providers(ep: str) -> tuple[list[str], list[dict[str, str]]] | None:
    if ep == "cpu":
        return ["CPUExecutionProvider"], [{}]
    if ep == "openvino":
        if _EP_NAMES["openvino"] not in ort.get_available_providers():
            raise ExecutionProviderError(
                "execution provider 'openvino' is not in this onnxruntime build: install 'onnxquant[openvino]' "
                "(onnxruntime-openvino) in its own virtual environment")
        return [_EP_NAMES["openvino"], "CPUExecutionProvider"], [{"device_type": "CPU"}, {}]
    return None  # qnn: a plugin provider, added through the session options


def check_available(ep: str) -> None:
    """Raise ExecutionProviderError if ``ep`` cannot be loaded here."""
    if ep not in PROVIDERS:
        raise ExecutionProviderError(f"unknown execution provider {ep!r}; choose from {', '.join(PROVIDERS)}")
    if ep == "qnn":
        _qnn_options(ort.SessionOptions())
    else:
        _providers(ep)


def open_session(model: bytes | str, ep: str, threads: int | None = None,
                 qnn_fp16: bool = False) -> tuple[ort.InferenceSession, Placement]:
    """A session on ``ep`` with its node placement. A model the provider rejects is a ModelError.

    On QNN, a graph whose float ops fail to compile for the HTP is compiled again with fp16
    precision for them (a device's default); the placement says so (``htp_fp16``). ``qnn_fp16``
    asks for it from the start (to compare a second model under the same settings: once one
    session compiled in fp16, the QNN backend may compile the next without asking)."""
    check_available(ep)
    placement = Placement(_EP_NAMES[ep], htp_fp16=ep == "qnn" and qnn_fp16)
    try:
        session = _session(model, ep, threads, qnn_fp16=placement.htp_fp16)
    except Exception as exc:  # onnxruntime's errors share no useful base class
        if ep != "qnn" or placement.htp_fp16 or QNN_FINALIZE_FAILED not in str(exc):
            raise ModelError(f"{ep}: the model does not load: {_first_line(exc)}") from exc
        try:
            session = _session(model, ep, threads, qnn_fp16=True)
        except Exception as again:
            raise ModelError(f"{ep}: the model does not load, with fp16 precision for its float ops or without: "
                             f"{_first_line(again)}") from again
        placement.htp_fp16 = True
    for subgraph in session.get_provider_graph_assignment_info():
        placement.by_provider.setdefault(subgraph.ep_name, []).extend(
            (n.name, n.op_type) for n in subgraph.get_nodes())
    return session, placement


def _session(model: bytes | str, ep: str, threads: int | None, qnn_fp16: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    if threads:
        options.intra_op_num_threads = threads
    providers = _providers(ep)
    if providers is None:
        _qnn_options(options, qnn_fp16)
        with _native_stdout_to_stderr():
            return ort.InferenceSession(model, options)
    return ort.InferenceSession(model, options, providers=providers[0], provider_options=providers[1])


@contextlib.contextmanager
def _native_stdout_to_stderr() -> Iterator[None]:
    """Send what native libraries print to stdout (QNN's banner) to stderr instead.

    Scripts parse our stdout as JSON; a C library's printf must not land in it. The C-level
    buffer is flushed before stdout is restored, or the text would surface at exit.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                ctypes.CDLL(None).fflush(None)
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
