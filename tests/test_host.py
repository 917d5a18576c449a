"""CPU kinds: detection from /proc/cpuinfo text, the recipes the cpu targets resolve to, what the
model records, and the validate note. Every machine kind is simulated, so these pass on any CPU."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import onnxquant.validate as validate_module
from onnxquant.api import quantize
from onnxquant.cli import main
from onnxquant.compress import job_from_dict
from onnxquant.errors import UsageError
from onnxquant.host import (
    CPU_KINDS,
    CpuChoice,
    HostCpu,
    cpu_mismatch,
    detect,
    host_cpu,
    target_note,
)
from onnxquant.recipe import (
    TARGETS,
    Recipe,
    is_cpu_target,
    recipe_for_target,
    recipe_from_dict,
    recipe_of,
)
from onnxquant.validate import validate

# /proc/cpuinfo as these CPUs print it (first processor, trimmed to the lines that matter).
EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand avx2 bmi2 sha_ni
"""
SKYLAKE_AVX512 = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz
flags\t\t: fpu sse4_1 sse4_2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl
"""
XEON_VNNI = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bitalg
"""
ALDER_LAKE_AVX_VNNI = """processor\t: 0
model name\t: 12th Gen Intel(R) Core(TM) i7-1260P
flags\t\t: fpu sse4_2 avx avx2 fma avx_vnni
"""
SAPPHIRE_RAPIDS_AMX = """processor\t: 0
flags\t\t: avx2 avx512f avx512bw avx512_vnni amx_bf16 amx_tile amx_int8
"""
GRAVITON2_DOTPROD = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
"""
CORTEX_A53 = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid
"""

AVX2_HOST = detect(EPYC_AVX2, "x86_64")
VNNI_HOST = detect(XEON_VNNI, "x86_64")


@pytest.mark.parametrize("cpuinfo, machine, kind, features", [
    (EPYC_AVX2, "x86_64", "avx2", ("avx2",)),
    (SKYLAKE_AVX512, "x86_64", "avx2", ("avx2", "avx512bw")),  # AVX-512 without VNNI saturates too
    (XEON_VNNI, "x86_64", "vnni", ("avx2", "avx512bw", "avx512_vnni")),
    (ALDER_LAKE_AVX_VNNI, "x86_64", "vnni", ("avx2", "avx_vnni")),
    (SAPPHIRE_RAPIDS_AMX, "x86_64", "vnni", ("avx2", "avx512bw", "avx512_vnni", "amx_int8")),
    (GRAVITON2_DOTPROD, "aarch64", "arm64", ("asimddp",)),
    (CORTEX_A53, "aarch64", "arm64", ()),
    (None, "arm64", "arm64", ()),  # macOS on Apple silicon: no /proc/cpuinfo
    (None, "x86_64", "unknown", ()),  # an x86 CPU whose flags cannot be read
    (None, "AMD64", "unknown", ()),  # Windows
    ("processor\t: 0\ncpu\t\t: POWER9\n", "ppc64le", "unknown", ()),
    ("", "x86_64", "unknown", ()),
])
def test_detect_each_machine_kind(cpuinfo: str | None, machine: str, kind: str, features: tuple[str, ...]):
    host = detect(cpuinfo, machine)
    assert (host.kind, host.features) == (kind, features)
    read = bool(cpuinfo) and ("flags" in cpuinfo or "Features" in cpuinfo)
    assert host.source == ("/proc/cpuinfo" if read else "platform.machine()")


def test_the_host_descriptions_name_what_was_read():
    assert AVX2_HOST.describe() == "/proc/cpuinfo: avx2; no avx512_vnni, avx_vnni, amx_int8"
    assert VNNI_HOST.describe() == "/proc/cpuinfo: avx2, avx512bw, avx512_vnni"
    assert detect(GRAVITON2_DOTPROD, "aarch64").describe() == "/proc/cpuinfo: with the dot product (asimddp)"
    assert detect(None, "AMD64").describe() == "platform.machine() = AMD64; CPU features not read"


def test_this_machine_is_read_once_and_is_a_known_kind():
    assert host_cpu() is host_cpu()
    assert host_cpu().kind in CPU_KINDS


def test_weight_bits_follow_the_cpu_kind():
    assert {name: kind.reduce_range for name, kind in CPU_KINDS.items()} == {
        "avx2": True, "vnni": False, "arm64": False, "unknown": True}


@pytest.mark.parametrize("host, kind, reduce_range", [
    (AVX2_HOST, "avx2", True), (VNNI_HOST, "vnni", False), (detect(ALDER_LAKE_AVX_VNNI, "x86_64"), "vnni", False),
    (detect(CORTEX_A53, "aarch64"), "arm64", False), (detect(None, "x86_64"), "unknown", True),
])
def test_target_cpu_is_the_host(host: HostCpu, kind: str, reduce_range: bool):
    recipe = recipe_for_target("cpu", host)
    assert recipe.target == "cpu" and recipe.cpu == CpuChoice(kind, detected=True)
    assert recipe.quantization.reduce_range is reduce_range
    # everything else is the plain default recipe
    assert recipe.quantization == Recipe().quantization.__class__(reduce_range=reduce_range)


@pytest.mark.parametrize("target, kind, reduce_range", [
    ("cpu-avx2", "avx2", True), ("cpu-vnni", "vnni", False), ("cpu-arm64", "arm64", False)])
def test_explicit_cpu_targets_ignore_the_host(target: str, kind: str, reduce_range: bool):
    for host in (AVX2_HOST, VNNI_HOST):
        recipe = recipe_for_target(target, host)
        assert recipe.target == "cpu" and recipe.cpu == CpuChoice(kind, detected=False)
        assert recipe.quantization.reduce_range is reduce_range
    assert is_cpu_target(target) and target in TARGETS


def test_other_targets_have_no_cpu_kind():
    for target in ("qnn", "openvino"):
        recipe = recipe_for_target(target, VNNI_HOST)
        assert recipe.cpu is None and "cpu" not in recipe.to_dict() and not is_cpu_target(target)
    assert Recipe().cpu is None and Recipe().quantization.reduce_range is True
    assert "cpu" not in Recipe().to_dict()


def test_a_cpu_kind_is_only_set_through_its_target():
    with pytest.raises(UsageError, match="recipe_for_target"):
        Recipe(target="cpu-vnni")
    with pytest.raises(UsageError, match="target cpu"):
        Recipe(target="qnn", cpu=CpuChoice("vnni", detected=False))
    with pytest.raises(UsageError, match="unknown"):
        recipe_for_target("cpu-sse")
    with pytest.raises(UsageError, match="unknown CPU kind"):
        CpuChoice("pentium", detected=False)


def test_explicit_settings_win_over_the_cpu_kind():
    assert recipe_for_target("cpu-vnni").with_overrides(quantization={"reduce_range": True}).quantization.reduce_range
    from_file = recipe_from_dict({"target": "cpu-vnni", "quantization": {"reduce_range": True}})
    assert from_file.quantization.reduce_range is True and from_file.cpu == CpuChoice("vnni", detected=False)
    flag_target = recipe_from_dict({"target": "cpu-vnni"}, target="cpu-avx2")  # the flag's target wins
    assert flag_target.cpu.kind == "avx2" and flag_target.quantization.reduce_range is True
    on_host = recipe_from_dict({"quantization": {"reduce_range": False}}, host=AVX2_HOST)
    assert on_host.cpu == CpuChoice("avx2", detected=True) and on_host.quantization.reduce_range is False
    # overriding keeps the kind, so the note can say the weights were set against it
    assert on_host.cpu_note(AVX2_HOST).endswith("full 8-bit weights as set, which onnxruntime's u8s8 kernels "
                                                "may saturate there")


def test_a_job_names_a_cpu_kind(tmp_path: Path):
    job = job_from_dict({"model": "m.onnx", "calib_data": "c", "output": "b.zip", "target": "cpu-vnni"}, tmp_path)
    assert job.recipe.target == "cpu" and job.recipe.cpu.kind == "vnni" and not job.recipe.quantization.reduce_range


def test_the_note_says_which_kind_and_why():
    note = recipe_for_target("cpu", AVX2_HOST).cpu_note(AVX2_HOST)
    assert note == ("target cpu: this host is x86-64 without VNNI (/proc/cpuinfo: avx2; no avx512_vnni, avx_vnni, "
                    "amx_int8): 7-bit weights in GEMM kernels, as onnxruntime's u8s8 kernels (vpmaddubsw) sum pairs "
                    "of products in 16 bits and would saturate with 8 bits")
    vnni = recipe_for_target("cpu-vnni").cpu_note()
    assert vnni.startswith("target cpu-vnni: x86-64 with VNNI (AVX512-VNNI, AVX-VNNI or AMX): full 8-bit weights, as")
    assert recipe_for_target("cpu-arm64").cpu_note().startswith("target cpu-arm64: ARM64")
    unknown = recipe_for_target("cpu", detect(None, "x86_64")).cpu_note(detect(None, "x86_64"))
    assert "platform.machine() = x86_64; CPU features not read" in unknown and "--target cpu-vnni" in unknown
    assert recipe_for_target("qnn").cpu_note() is None and Recipe().cpu_note() is None
    assert target_note("cpu", CpuChoice("vnni", detected=False), True).endswith(
        "7-bit weights in GEMM kernels as set, though 8-bit ones would not saturate there")
    # full 8-bit int8 weights on AVX2 may saturate (u8s8); uint8 ones do not (u8u8 widens first)
    assert "u8s8 kernels may saturate" in target_note("cpu", CpuChoice("avx2", detected=False), False)
    uint8 = recipe_for_target("cpu", AVX2_HOST).with_overrides(
        quantization={"weight_type": "uint8", "reduce_range": False}).cpu_note(AVX2_HOST)
    assert uint8.endswith("full 8-bit uint8 weights as set: onnxruntime's u8u8 kernels widen to 16 bits before "
                          "multiplying and do not saturate there, but they are slower than its u8s8 ones")


def _gemm_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The int8 weight of each quantized Conv/Gemm, by node name (through its DequantizeLinear)."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dq = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name: inits[dq[n.input[1]]] for n in model.graph.node
            if n.op_type in ("Conv", "Gemm") and n.input[1] in dq and dq[n.input[1]] in inits}


@pytest.mark.parametrize("target, gemm_max", [("cpu-avx2", 63), ("cpu-vnni", 127), ("cpu-arm64", 127)])
def test_each_cpu_target_quantizes_a_valid_model(cnn_path: Path, npz_dir: Path, tmp_path: Path, target: str,
                                                 gemm_max: int):
    out = tmp_path / f"{target}.onnx"
    result = quantize(cnn_path, npz_dir, recipe_for_target(target), out)
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert result.fusion is not None  # the CPU's fusion self-check ran: a CPU target like `cpu`
    weights = _gemm_weights(model)
    dense = {name: w for name, w in weights.items() if name != "dwconv"}
    assert dense and all(w.dtype == np.int8 for w in weights.values())
    # per-channel symmetric: each output channel's largest weight lands on the end of the range
    for w in dense.values():
        if gemm_max == 63:  # 7-bit kinds: pair-limited 8-bit weights, which the u8s8 kernels cannot saturate
            rows = w.astype(np.int32).reshape(w.shape[0], -1)
            even = rows.shape[1] - rows.shape[1] % 2
            a, b = rows[:, 0:even:2], rows[:, 1:even:2]
            assert np.where(a * b > 0, np.abs(a) + np.abs(b), 0).max() <= 128
            assert 63 < int(np.abs(rows).max()) <= 127
        else:
            assert int(np.abs(w.astype(np.int32)).max()) == gemm_max
    if "dwconv" in weights:  # depthwise convs accumulate in 32 bits: 8 bits on every kind
        assert int(np.abs(weights["dwconv"].astype(np.int32)).max()) == 127
    stamped = recipe_of(model)
    assert stamped["target"] == "cpu" and stamped["cpu"]["kind"] == CpuChoice(
        recipe_for_target(target).cpu.kind, detected=False).kind
    assert stamped["cpu"]["detected"] is False and stamped["cpu"]["reason"] == CPU_KINDS[stamped["cpu"]["kind"]].reason
    assert stamped["quantization"]["reduce_range"] is (gemm_max == 63)


def test_cli_target_cpu_records_this_host(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    result = CliRunner().invoke(main, ["quantize", str(cnn_path), "-o", str(tmp_path / "q.onnx"), "--calib-data",
                                       str(npz_dir), "--target", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    recipe = json.loads(result.output)["recipe"]
    assert recipe["cpu"] == {"kind": host_cpu().kind, "detected": True, "reason": CPU_KINDS[host_cpu().kind].reason}
    assert recipe["quantization"]["reduce_range"] is CPU_KINDS[host_cpu().kind].reduce_range
    assert recipe_of(onnx.load(str(tmp_path / "q.onnx")))["cpu"] == recipe["cpu"]
    note = json.loads(result.output)["notes"][0]  # the summary says which kind, and why
    assert note == recipe_for_target("cpu").cpu_note() and note.startswith("target cpu: this host ")


def test_the_library_default_is_this_host_as_in_the_cli(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    result = quantize(cnn_path, npz_dir, output=tmp_path / "q.onnx")  # no recipe: as `--target cpu`
    stamped = recipe_of(onnx.load(str(tmp_path / "q.onnx")))
    assert stamped["cpu"] == {"kind": host_cpu().kind, "detected": True, "reason": CPU_KINDS[host_cpu().kind].reason}
    assert stamped["quantization"]["reduce_range"] is CPU_KINDS[host_cpu().kind].reduce_range
    assert result.notes[0] == recipe_for_target("cpu").cpu_note()


def test_cli_flag_wins_over_the_named_kind(cnn_path: Path, npz_dir: Path, tmp_path: Path):
    result = CliRunner().invoke(main, ["quantize", str(cnn_path), "-o", str(tmp_path / "q.onnx"), "--calib-data",
                                       str(npz_dir), "--target", "cpu-vnni", "--reduce-range", "--no-pair-limited-weights",
                                       "--json"])
    assert result.exit_code == 0, result.output
    recipe = json.loads(result.output)["recipe"]
    assert recipe["cpu"]["kind"] == "vnni" and recipe["quantization"]["reduce_range"] is True
    assert all(int(np.abs(w.astype(np.int32)).max()) <= 63
               for name, w in _gemm_weights(onnx.load(str(tmp_path / "q.onnx"))).items() if name != "dwconv")


@pytest.mark.parametrize("recipe, host, expected", [
    ({"target": "cpu", "quantization": {"reduce_range": False}, "cpu": {"kind": "vnni"}}, AVX2_HOST,
     "the model has full 8-bit weights (quantized for x86-64 with VNNI), and this host has no VNNI: onnxruntime's u8s8 "
     "kernels may saturate here, so its figures on this CPU can be worse than on its own"),
    ({"target": "cpu", "quantization": {"reduce_range": False}}, detect(None, "x86_64"),
     "the model has full 8-bit weights, and onnxquant cannot read this host's CPU features: on x86-64 without VNNI, "
     "onnxruntime's u8s8 kernels saturate, so its figures here can be worse than on its own CPU"),
    ({"target": "cpu", "quantization": {"reduce_range": True}, "cpu": {"kind": "avx2"}}, VNNI_HOST,
     "the model has 7-bit weights (quantized for x86-64 without VNNI); on this host (x86-64 with VNNI) 8-bit weights "
     "would not saturate: --target cpu-vnni would keep more accuracy here"),
    ({"target": "cpu", "quantization": {"reduce_range": False}, "cpu": {"kind": "vnni"}}, VNNI_HOST, None),
    ({"target": "cpu", "quantization": {"reduce_range": False, "weight_type": "uint8"}, "cpu": {"kind": "avx2"}},
     AVX2_HOST, None),  # u8u8 kernels do not saturate
    ({"target": "cpu", "quantization": {"reduce_range": True}, "cpu": {"kind": "avx2"}}, AVX2_HOST, None),
    ({"target": "cpu", "quantization": {"reduce_range": True}}, VNNI_HOST, None),  # Recipe(): no kind stated
    ({"target": "qnn", "quantization": {"reduce_range": False}}, AVX2_HOST,
     "the model was quantized for --target qnn with full 8-bit weights, and this host has no VNNI: onnxruntime's "
     "u8s8 CPU kernels may saturate here, so its CPU figures can be worse than on the qnn device"),
    ({"target": "qnn", "quantization": {"reduce_range": False}}, VNNI_HOST, None),
    ({"target": "openvino", "quantization": {"reduce_range": True}}, AVX2_HOST, None),  # 7-bit: no saturation
    (None, AVX2_HOST, None),
    ({"target": "cpu", "quantization": [], "cpu": {"kind": ["vnni"]}}, AVX2_HOST, None),  # odd metadata: no note
])
def test_cpu_mismatch(recipe: dict | None, host: HostCpu, expected: str | None):
    assert cpu_mismatch(recipe, host) == expected


@pytest.mark.parametrize("host, noted", [(AVX2_HOST, True), (VNNI_HOST, False)])
def test_validate_notes_a_vnni_model_measured_without_vnni(cnn_path: Path, npz_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, host: HostCpu, noted: bool):
    out = tmp_path / "vnni.onnx"
    quantize(cnn_path, npz_dir, recipe_for_target("cpu-vnni"), out)
    monkeypatch.setattr(validate_module, "host_cpu", lambda: host)
    report = validate(cnn_path, out, npz_dir, max_samples=2, latency_runs=1)
    (cpu,) = report.providers
    assert any("this host has no VNNI" in n for n in cpu.notes) is noted
    assert report.to_dict()["providers"][0]["notes"] == cpu.notes


def test_validate_command_prints_the_note(cnn_path: Path, npz_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "vnni.onnx"
    quantize(cnn_path, npz_dir, recipe_for_target("cpu-vnni"), out)
    monkeypatch.setattr(validate_module, "host_cpu", lambda: AVX2_HOST)
    result = CliRunner().invoke(main, ["validate", str(cnn_path), str(out), "--data", str(npz_dir),
                                       "--max-samples", "2", "--latency-runs", "1"])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if "full 8-bit weights" in line]
    assert notes == ["  note: " + cpu_mismatch(recipe_of(onnx.load(str(out))), AVX2_HOST)]
