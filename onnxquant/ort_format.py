"""ONNX -> ORT format (onnxruntime mobile and minimal builds), byte-for-byte reproducible.

onnxruntime writes the ORT file itself (the converter in ``onnxruntime.tools`` does the same),
but it serialises its kernel-type-string table from a hash map keyed by addresses, so two
conversions of the same model differ in the table's byte layout (same content). We rebuild that
table and the root in sorted order over the model bytes, which onnxruntime wrote identically.
"""
from __future__ import annotations

import logging
from pathlib import Path

from onnxquant.errors import ModelError
from onnxquant.outputs import scratch

ORT_LEVELS = ("all", "extended", "basic")


def _session_options(level: str, output: Path, arm: bool):
    import onnxruntime as ort

    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = levels[level]
    options.optimized_model_filepath = str(output)
    options.add_session_config_entry("session.save_model_format", "ORT")
    # On ARM, int8 (s8s8) QDQ groups may be fused too: what the onnxruntime converter does for arm.
    options.add_session_config_entry("session.qdqisint8allowed", "1" if arm else "0")
    return options


def convert_to_ort(model_path: Path, level: str = "all", arm: bool = True) -> bytes:
    """The ORT-format bytes of the ONNX model at ``model_path``, canonicalised.

    The x86-only NCHWc layout transform is left out (as the onnxruntime converter does), so
    the file runs on ARM devices too.
    """
    import onnxruntime as ort

    if level not in ORT_LEVELS:
        raise ValueError(f"ORT optimization level {level!r} unknown; choose from {', '.join(ORT_LEVELS)}")
    with scratch() as tmp:
        target = Path(tmp) / "model.ort"
        try:
            ort.InferenceSession(str(model_path), _session_options(level, target, arm),
                                 providers=["CPUExecutionProvider"], disabled_optimizers=["NchwcTransformer"])
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"onnxruntime cannot convert the model to ORT format: {first}") from exc
        return canonical_ort(target.read_bytes())


def canonical_ort(data: bytes) -> bytes:
    """``data`` with its kernel-type-string resolver rewritten in sorted order."""
    import flatbuffers
    from flatbuffers import encode
    from flatbuffers import number_types as N
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import (
        ArgTypeAndIndex,
        InferenceSession,
        KernelTypeStrArgsEntry,
        KernelTypeStrResolver,
        OpIdKernelTypeStrArgsEntry,
    )

    session = InferenceSession.InferenceSession.GetRootAsInferenceSession(data, 0)
    model = session.Model()
    resolver = session.KernelTypeStrResolver()
    if model is None or resolver is None:
        return data
    # onnxruntime builds the model first and the resolver and root after it: everything from the
    # model table (or its vtable) to the end is the model, kept byte for byte.
    model_pos = model._tab.Pos
    start = min(model_pos, model_pos - encode.Get(N.SOffsetTFlags.packer_type, data, model_pos))
    ops = []
    for i in range(resolver.OpKernelTypeStrArgsLength()):
        entry = resolver.OpKernelTypeStrArgs(i)
        args = []
        for j in range(entry.KernelTypeStrArgsLength()):
            arg = entry.KernelTypeStrArgs(j)
            args.append((arg.KernelTypeStr(), [(arg.Args(k).ArgType(), arg.Args(k).Index()) for k in range(arg.ArgsLength())]))
        ops.append((entry.OpId(), sorted(args)))
    version = session.OrtVersion()

    tail = data[start:]
    builder = flatbuffers.Builder(len(tail) + 1024)
    builder.head = len(builder.Bytes) - len(tail)
    builder.Bytes[builder.head:] = tail
    # Alignment is counted from the buffer's end, so the copied model stays aligned as long as the
    # whole buffer is padded to at least the alignment onnxruntime used (at most 16).
    builder.minalign = 16
    model_offset = len(data) - model_pos

    def vector(start_vector, offsets: list[int]) -> int:
        start_vector(builder, len(offsets))
        for offset in reversed(offsets):
            builder.PrependUOffsetTRelative(offset)
        return builder.EndVector()

    op_offsets = []
    for op_id, args in sorted(ops):
        arg_offsets = []
        for name, pairs in args:
            pair_offsets = []
            for arg_type, index in pairs:
                ArgTypeAndIndex.Start(builder)
                ArgTypeAndIndex.AddArgType(builder, arg_type)
                ArgTypeAndIndex.AddIndex(builder, index)
                pair_offsets.append(ArgTypeAndIndex.End(builder))
            args_vector = vector(KernelTypeStrArgsEntry.StartArgsVector, pair_offsets)
            name_offset = builder.CreateString(name)
            KernelTypeStrArgsEntry.Start(builder)
            KernelTypeStrArgsEntry.AddKernelTypeStr(builder, name_offset)
            KernelTypeStrArgsEntry.AddArgs(builder, args_vector)
            arg_offsets.append(KernelTypeStrArgsEntry.End(builder))
        entries = vector(OpIdKernelTypeStrArgsEntry.StartKernelTypeStrArgsVector, arg_offsets)
        id_offset = builder.CreateString(op_id)
        OpIdKernelTypeStrArgsEntry.Start(builder)
        OpIdKernelTypeStrArgsEntry.AddOpId(builder, id_offset)
        OpIdKernelTypeStrArgsEntry.AddKernelTypeStrArgs(builder, entries)
        op_offsets.append(OpIdKernelTypeStrArgsEntry.End(builder))
    table = vector(KernelTypeStrResolver.StartOpKernelTypeStrArgsVector, op_offsets)
    KernelTypeStrResolver.Start(builder)
    KernelTypeStrResolver.AddOpKernelTypeStrArgs(builder, table)
    resolver_offset = KernelTypeStrResolver.End(builder)
    version_offset = builder.CreateString(version) if version is not None else None
    InferenceSession.Start(builder)
    if version_offset is not None:
        InferenceSession.AddOrtVersion(builder, version_offset)
    InferenceSession.AddModel(builder, model_offset)
    InferenceSession.AddKernelTypeStrResolver(builder, resolver_offset)
    builder.Finish(InferenceSession.End(builder), file_identifier=b"ORTM")
    return bytes(builder.Output())


def required_operators(ort_path: Path, name: str, type_reduction: bool = False) -> str:
    """The reduced-build operator config for the ORT model at ``ort_path`` (named ``name`` in it)."""
    from onnxruntime.tools.ort_format_model import create_config_from_models

    logger = logging.getLogger("ort_format_model.utils")
    level = logger.level
    logger.setLevel(logging.WARNING)  # it logs every config it writes at INFO
    try:
        with scratch() as tmp:
            config = Path(tmp) / "required_operators.config"
            create_config_from_models([ort_path], config, type_reduction)
            lines = config.read_text(encoding="utf-8").splitlines()
    finally:
        logger.setLevel(level)
    # Its header names the model by absolute path: name it as the bundle does.
    body = [line for line in lines if not line.startswith("#")]
    return "\n".join(["# Generated from model/s:", f"# - {name}", *body]) + "\n"
