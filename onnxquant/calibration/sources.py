"""Where calibration samples come from. Every source is an iterable of ``{input name: array}``.

Sources are read lazily, one sample at a time, so memory does not grow with their length.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from onnxquant.calibration.feeds import input_specs
from onnxquant.calibration.preprocess import IMAGE_SUFFIXES, ImagePreprocess
from onnxquant.errors import CalibrationDataError

Sample = dict[str, np.ndarray]


class CalibrationDataReader(Protocol):
    """onnxruntime's reader protocol: ``get_next()`` returns a feed dict, then ``None``."""

    def get_next(self) -> Mapping[str, Any] | None: ...


@dataclass
class SampleSource:
    """A re-iterable source with a length where one is known (for the progress bar)."""

    factory: Any  # () -> Iterator[Sample]
    length: int | None = None
    description: str = ""
    rereadable: bool = True  # False: a reader or a one-shot iterator, good for one pass only

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.factory())

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("length unknown")
        return self.length


def _load_npz(path: Path) -> Sample:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: np.asarray(data[key]) for key in data.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise CalibrationDataError(f"{path}: holds pickled objects, which are never loaded") from exc
        raise CalibrationDataError(f"{path}: not a readable .npz file ({exc})") from exc
    except (OSError, EOFError, KeyError) as exc:  # zipfile errors surface as these
        raise CalibrationDataError(f"{path}: not a readable .npz file ({exc})") from exc
    except Exception as exc:  # zipfile.BadZipFile and friends
        raise CalibrationDataError(f"{path}: not a readable .npz file ({exc})") from exc


def npz_folder(folder: Path) -> SampleSource:
    files = sorted(p for p in folder.iterdir() if p.suffix == ".npz" and p.is_file())
    if not files:
        raise CalibrationDataError(f"{folder}: no .npz files")
    return SampleSource(lambda: (_load_npz(p) for p in files), len(files), f"{len(files)} .npz files in {folder}")


def image_folder(folder: Path, input_name: str, preprocess: ImagePreprocess) -> SampleSource:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise CalibrationDataError(f"{folder}: no images")
    return SampleSource(
        lambda: ({input_name: preprocess(p)} for p in files), len(files), f"{len(files)} images in {folder}"
    )


def from_reader(reader: CalibrationDataReader) -> SampleSource:
    """Adapt an onnxruntime ``CalibrationDataReader`` (read once; readers are not re-iterable)."""

    def generate() -> Iterator[Sample]:
        while (feed := reader.get_next()) is not None:
            yield {k: np.asarray(v) for k, v in feed.items()}

    return SampleSource(generate, None, type(reader).__name__, rereadable=False)


def from_iterable(samples: Iterable[Mapping[str, Any]]) -> SampleSource:
    length = len(samples) if hasattr(samples, "__len__") else None  # type: ignore[arg-type]
    return SampleSource(lambda: ({k: np.asarray(v) for k, v in s.items()} for s in samples), length, "samples",
                        rereadable=iter(samples) is not samples)


def open_source(
    data: Any,
    input_names: list[str],
    preprocess: ImagePreprocess | None = None,
) -> SampleSource:
    """Turn whatever the user passed into a ``SampleSource``.

    A folder of ``.npz`` files, a folder of images (single-input models), an onnxruntime
    ``CalibrationDataReader``, or any iterable of dicts.
    """
    if isinstance(data, SampleSource):
        return data
    if isinstance(data, (str, os.PathLike)):
        folder = Path(data)
        if not folder.is_dir():
            raise CalibrationDataError(f"{folder}: calibration data folder not found")
        if any(p.suffix == ".npz" for p in folder.iterdir()):
            return npz_folder(folder)
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
            if len(input_names) != 1:
                raise CalibrationDataError(
                    f"{folder}: images can feed only a single-input model; this one has {input_names}"
                )
            return image_folder(folder, input_names[0], preprocess or ImagePreprocess())
        if any(p.suffix == ".npy" for p in folder.iterdir()):
            raise CalibrationDataError(f"{folder}: .npy files are not read; save each sample as an .npz of named inputs")
        raise CalibrationDataError(f"{folder}: no .npz files or images")
    if hasattr(data, "get_next"):
        return from_reader(data)
    if isinstance(data, Mapping):
        return from_iterable([data])
    if isinstance(data, Iterable):
        return from_iterable(data)
    raise CalibrationDataError(f"unsupported calibration data: {type(data).__name__}")


def open_for_model(model: Any, data: Any, preprocess: ImagePreprocess) -> SampleSource:
    """``open_source`` for ``model``'s inputs; images are cropped to its input size unless told."""
    specs = input_specs(model)
    if preprocess.size is None and len(specs) == 1 and len(specs[0].shape) == 4:
        dims = specs[0].shape
        hw = (dims[2], dims[3]) if preprocess.layout == "NCHW" else (dims[1], dims[2])
        if all(isinstance(d, int) and d > 0 for d in hw):
            preprocess = preprocess.with_size(hw)  # type: ignore[arg-type]
    return open_source(data, [s.name for s in specs], preprocess)
