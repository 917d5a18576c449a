"""Which CPU an int8 model will run on, and what that means for its weights.

onnxruntime's int8 GEMM kernels differ by instruction set (its MLAS library picks them at start-up,
``onnxruntime/core/mlas/lib/platform.cpp``). On x86-64 without VNNI (SSE4.1, AVX2, AVX-512 without
VNNI) the u8s8 kernels multiply with ``vpmaddubsw``, which adds two u8 x s8 products in a 16-bit
lane and saturates (255 x 127 x 2 > 32767); 7-bit weights cannot overflow it. VNNI (``vpdpbusd``:
AVX512-VNNI, AVX-VNNI) and AMX accumulate in 32 bits, and so does every ARM64 kernel (``sdot``/
``udot``, or NEON widening multiply-accumulate), so there full 8-bit weights lose nothing. See the
README, "CPU kinds". Activations stay uint8 asymmetric and weights int8 symmetric on every kind:
u8s8 is each kind's native integer path.

The host is read once (Linux ``/proc/cpuinfo``; elsewhere only ``platform.machine()``). Tests and
callers pass ``cpuinfo``/``machine`` to ``detect`` instead; users name another CPU with an explicit
target (``cpu-avx2``, ``cpu-vnni``, ``cpu-arm64``).
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from onnxquant.errors import UsageError

CPUINFO = Path("/proc/cpuinfo")
X86_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # any one: int8 products summed in 32 bits
X86_FLAGS = ("avx2", "avx512bw", *X86_VNNI_FLAGS)  # the flags the notes name
ARM_DOTPROD_FLAG = "asimddp"


@dataclass(frozen=True)
class CpuKind:
    """A class of CPUs whose onnxruntime int8 kernels treat full 8-bit weights alike."""

    name: str
    target: str | None  # the explicit --target that names it (None: cannot be asked for)
    label: str  # which CPUs, for people
    covers: str  # the instruction sets it stands for
    reduce_range: bool  # 7-bit weights in GEMM kernels
    why: str  # the kernel behaviour behind ``reduce_range``

    @property
    def weights(self) -> str:
        return "7-bit weights in GEMM kernels" if self.reduce_range else "full 8-bit weights"

    @property
    def reason(self) -> str:
        return f"{self.weights}, as {self.why}"


CPU_KINDS: dict[str, CpuKind] = {k.name: k for k in (
    CpuKind("avx2", "cpu-avx2", "x86-64 without VNNI", "SSE4.1, AVX2, or AVX-512 without VNNI", True,
            "onnxruntime's u8s8 kernels (vpmaddubsw) sum pairs of products in 16 bits and would saturate "
            "with 8 bits"),
    CpuKind("vnni", "cpu-vnni", "x86-64 with VNNI", "AVX512-VNNI, AVX-VNNI or AMX", False,
            "onnxruntime's VNNI and AMX kernels sum in 32 bits and cannot saturate"),
    CpuKind("arm64", "cpu-arm64", "ARM64", "NEON, with or without the dot product", False,
            "onnxruntime's ARM64 kernels (sdot/udot, or NEON widening multiply-add) sum in 32 bits and "
            "cannot saturate"),
    CpuKind("unknown", None, "a CPU whose features onnxquant cannot read", "any", True,
            "these are safe on any CPU; name the CPU (--target cpu-vnni, cpu-arm64) for 8-bit weights"),
)}
CPU_TARGETS: dict[str, str] = {k.target: k.name for k in CPU_KINDS.values() if k.target is not None}


@dataclass(frozen=True)
class HostCpu:
    """What this machine is, and from what that was read."""

    kind: str  # a key of CPU_KINDS
    machine: str  # platform.machine()
    features: tuple[str, ...]  # the flags that decide the kind, as found (sorted)
    source: str  # where the features came from

    def describe(self) -> str:
        """``/proc/cpuinfo: avx2; no avx512_vnni, avx_vnni, amx_int8`` and the like."""
        if self.source != str(CPUINFO):
            return f"{self.source} = {self.machine}; CPU features not read"
        if self.kind == "arm64":
            dot = "with the dot product (asimddp)" if ARM_DOTPROD_FLAG in self.features else "no dot product"
            return f"{self.source}: {dot}"
        missing = [f for f in X86_VNNI_FLAGS if f not in self.features]
        found = ", ".join(self.features) or "none of " + ", ".join(X86_FLAGS)
        return f"{self.source}: {found}" + (f"; no {', '.join(missing)}" if self.kind == "avx2" else "")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "machine": self.machine, "features": list(self.features), "source": self.source}


@dataclass(frozen=True)
class CpuChoice:
    """The CPU kind a recipe's weights were chosen for; stamped into the model with the recipe."""

    kind: str
    detected: bool  # True: read from the machine that quantized (target cpu); False: named
    reason: str = ""

    def __post_init__(self) -> None:
        if self.kind not in CPU_KINDS:
            raise UsageError(f"unknown CPU kind {self.kind!r}; known: {', '.join(CPU_KINDS)}")
        object.__setattr__(self, "reason", CPU_KINDS[self.kind].reason)


def _arch(machine: str) -> str:
    m = machine.lower()
    if m in ("x86_64", "amd64", "x64", "i386", "i686", "x86"):
        return "x86"
    if m in ("aarch64", "arm64", "armv8", "armv8l", "arm64e"):
        return "arm64"
    return m or "unknown"


def _flags(cpuinfo: str) -> set[str]:
    """Every flag on the first ``flags`` (x86) or ``Features`` (ARM) line."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def detect(cpuinfo: str | None, machine: str) -> HostCpu:
    """The CPU kind of a machine from its ``/proc/cpuinfo`` text (None: not readable) and
    ``platform.machine()``. An x86 CPU whose flags cannot be read is ``unknown`` (7-bit, safe)."""
    arch = _arch(machine)
    flags = _flags(cpuinfo) if cpuinfo else None
    source = str(CPUINFO) if flags else "platform.machine()"
    if arch == "arm64":
        found = tuple(sorted({ARM_DOTPROD_FLAG} & flags)) if flags else ()
        return HostCpu("arm64", machine, found, source)
    if arch == "x86" and flags:
        found = tuple(f for f in X86_FLAGS if f in flags)
        kind = "vnni" if any(f in flags for f in X86_VNNI_FLAGS) else "avx2"
        return HostCpu(kind, machine, found, source)
    return HostCpu("unknown", machine, (), source)


@lru_cache(maxsize=1)
def host_cpu() -> HostCpu:
    """This machine's CPU kind, read once."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace") if CPUINFO.is_file() else None
    except OSError:
        text = None
    return detect(text, platform.machine())


def cpu_choice(target: str, host: HostCpu | None = None) -> CpuChoice:
    """The CPU kind for a CPU target: ``cpu`` is this host (or ``host``), ``cpu-vnni`` and the
    like name one."""
    if target == "cpu":
        return CpuChoice((host or host_cpu()).kind, detected=True)
    if target not in CPU_TARGETS:
        raise UsageError(f"{target!r} is not a CPU target; choose from cpu, {', '.join(CPU_TARGETS)}")
    return CpuChoice(CPU_TARGETS[target], detected=False)


# u8u8 kernels (uint8 weights) widen both sides to 16 bits before multiplying: no saturation on any kind
UINT8_WEIGHTS = ("full 8-bit uint8 weights as set: onnxruntime's u8u8 kernels widen to 16 bits before "
                 "multiplying and do not saturate there, but they are slower than its u8s8 ones")


FLOAT_COMPUTE_WEIGHTS = "full 8-bit weights, computed in float (no int8 kernel to saturate)"


def target_note(target: str, choice: CpuChoice | None, reduce_range: bool, host: HostCpu | None = None,
                weight_type: str = "int8", float_compute: bool = False) -> str | None:
    """The summary's line on the CPU kind a model was quantized for and why its weights are what
    they are (None for a recipe without a CPU kind: a non-CPU target, or ``Recipe()`` itself).
    ``float_compute``: no integer kernel is left (weights folded to float), whatever ``reduce_range``."""
    if target != "cpu" or choice is None:
        return None
    kind = CPU_KINDS[choice.kind]
    if choice.detected:
        read = host or host_cpu()
        seen = read if read.kind == choice.kind else None  # a recipe resolved for a host given by the caller
        head = f"target cpu: this host is {kind.label}" + (f" ({seen.describe()})" if seen else "")
    else:
        head = f"target {kind.target}: {kind.label} ({kind.covers})"
    if float_compute:
        return f"{head}: {FLOAT_COMPUTE_WEIGHTS}"
    if weight_type == "uint8" and not reduce_range:
        return f"{head}: {UINT8_WEIGHTS}"
    if reduce_range == kind.reduce_range:
        return f"{head}: {kind.reason}"
    if reduce_range:
        return f"{head}: 7-bit weights in GEMM kernels as set, though 8-bit ones would not saturate there"
    return f"{head}: full 8-bit weights as set, which onnxruntime's u8s8 kernels may saturate there"


def cpu_mismatch(recipe: dict[str, Any] | None, host: HostCpu) -> str | None:
    """One line when a model's weights do not suit the CPU it is being measured on (None when they
    do, or when the model does not say). ``recipe``: the one the model carries (``onnxquant.recipe``)."""
    if not recipe:
        return None
    quantization = recipe.get("quantization")
    full = isinstance(quantization, dict) and quantization.get("reduce_range") is False
    if full and quantization.get("weight_type") == "uint8":
        return None  # u8u8 kernels do not saturate on any CPU kind
    target, here = recipe.get("target"), CPU_KINDS[host.kind]
    if target != "cpu":
        if not isinstance(target, str) or not full or not here.reduce_range:
            return None
        # an NPU model (QNN: 8-bit weights) checked on the CPU provider of a host without VNNI
        host_says = ("onnxquant cannot read this host's CPU features" if host.kind == "unknown"
                     else "this host has no VNNI")
        return (f"the model was quantized for --target {target} with full 8-bit weights, and {host_says}: "
                "onnxruntime's u8s8 CPU kernels may saturate here, so its CPU figures can be worse than on the "
                f"{target} device")
    stated = recipe.get("cpu")
    kind = stated.get("kind") if isinstance(stated, dict) else None
    intended = CPU_KINDS.get(kind) if isinstance(kind, str) else None  # metadata is input: any JSON
    made_for = f" (quantized for {intended.label})" if intended is not None else ""
    if full and here.reduce_range:
        if host.kind == "unknown":
            return (f"the model has full 8-bit weights{made_for}, and onnxquant cannot read this host's CPU "
                    "features: on x86-64 without VNNI, onnxruntime's u8s8 kernels saturate, so its figures here "
                    "can be worse than on its own CPU")
        return (f"the model has full 8-bit weights{made_for}, and this host has no VNNI: onnxruntime's u8s8 "
                "kernels may saturate here, so its figures on this CPU can be worse than on its own")
    if not full and intended is not None and intended.reduce_range and not here.reduce_range:
        return (f"the model has 7-bit weights{made_for}; on this host ({here.label}) 8-bit weights would not "
                f"saturate: --target {here.target} would keep more accuracy here")
    return None
