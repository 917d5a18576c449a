"""Check calibration samples against the model's inputs before they reach onnxruntime."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from onnxquant.errors import CalibrationDataError, InputShapeError


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  # ints are fixed dims, str/None are free


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    initializers = {i.name for i in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        ttype = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type)) if ttype.elem_type else np.dtype("float32")
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in ttype.shape.dim)
        specs.append(InputSpec(value.name, dtype, dims))
    return specs


def check_feed(feed: dict[str, np.ndarray], specs: list[InputSpec], index: int) -> dict[str, np.ndarray]:
    """Return the feed with safe dtype casts applied, or raise a one-line error."""
    where = f"calibration sample {index}"
    names = {s.name for s in specs}
    missing = sorted(names - feed.keys())
    if missing:
        raise CalibrationDataError(f"{where}: missing input(s) {missing}; the model expects {sorted(names)}")
    extra = sorted(feed.keys() - names)
    if extra:
        raise CalibrationDataError(f"{where}: unknown input(s) {extra}; the model expects {sorted(names)}")
    checked = {}
    for spec in specs:
        value = np.asarray(feed[spec.name])
        if spec.dtype == object:  # a string input (a text classifier's raw text)
            value = _strings(value, f"{where}: input {spec.name!r}")
        elif value.dtype == object:
            raise CalibrationDataError(f"{where}: input {spec.name!r} is not a numeric array")
        if value.size == 0:
            raise CalibrationDataError(f"{where}: input {spec.name!r} has shape {value.shape}: no values "
                                       "(a range from no data would be made up)")
        if value.dtype != spec.dtype:
            if np.can_cast(value.dtype, spec.dtype, "same_kind") and value.dtype.kind == spec.dtype.kind:
                value = _narrowed(value, spec.dtype, f"{where}: input {spec.name!r}")
            else:
                raise CalibrationDataError(
                    f"{where}: input {spec.name!r} has dtype {value.dtype}, the model expects {spec.dtype}"
                )
        if spec.shape and len(spec.shape) != value.ndim:
            raise InputShapeError(
                f"{where}: input {spec.name!r} has shape {value.shape}, the model expects rank {len(spec.shape)} {_fmt(spec.shape)}"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, value.shape)):
            if isinstance(want, int) and want > 0 and want != got:
                raise InputShapeError(
                    f"{where}: input {spec.name!r} has shape {value.shape}, the model expects {_fmt(spec.shape)} (axis {axis})"
                )
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise CalibrationDataError(f"{where}: input {spec.name!r} contains NaN or Inf")
        checked[spec.name] = value
    return checked


def _strings(value: np.ndarray, where: str) -> np.ndarray:
    """A string input's sample as onnxruntime takes it. ``.npz`` files store text as fixed-width
    unicode (``<U``) or bytes (``S``) arrays, since object arrays need pickle to load: those are the
    model's strings, not a wrong dtype."""
    if value.dtype.kind == "U" or (value.dtype == object and all(isinstance(v, str) for v in value.flat)):
        return value.astype(object)
    if value.dtype.kind == "S":
        try:
            return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(value)
        except UnicodeDecodeError:
            raise CalibrationDataError(f"{where} holds bytes that are not UTF-8 text") from None
    raise CalibrationDataError(f"{where} has dtype {value.dtype}, the model expects strings")


def _narrowed(value: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    """``value`` cast to the model's narrower type of the same kind, refusing values the type
    cannot hold (int64 past int32 would wrap; float64 past float32 would become Inf)."""
    if value.dtype.kind in "iu":
        info = np.iinfo(dtype)
        if value.min() < info.min or value.max() > info.max:
            raise CalibrationDataError(f"{where} has values outside {dtype} ({value.min()}..{value.max()}); "
                                       "they would wrap around")
    elif value.dtype.kind == "f":
        with np.errstate(all="ignore"):
            finite = np.isfinite(value)
            if not finite.all():
                raise CalibrationDataError(f"{where} contains NaN or Inf")
            if np.abs(value).max() > np.finfo(dtype).max:
                raise CalibrationDataError(f"{where} has values too large for {dtype}")
    with np.errstate(all="ignore"):
        return value.astype(dtype)


def _fmt(shape: tuple) -> str:
    return "[" + ", ".join(str(d) if d not in (None, "") else "?" for d in shape) + "]"
