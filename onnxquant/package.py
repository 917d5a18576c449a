"""The edge bundle: model, ORT-format model, reduced-build operator config, report, recipe, manifest.

A bundle is a zip file or a folder. Its bytes depend only on its inputs: zip entries are sorted,
dated 1980-01-01 and deflated at a fixed level; the manifest holds no time and no absolute path.
It is written atomically: a failed or interrupted run leaves no bundle and no partial file.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from onnxquant.errors import BudgetExceededError, ModelError, UsageError
from onnxquant.inspect_model import inspect_model
from onnxquant.model_io import iter_tensors, load_model, write_atomic
from onnxquant.ort_format import ORT_LEVELS, convert_to_ort, required_operators
from onnxquant.outputs import (
    all_or_nothing,
    model_files,
    refuse_aliasing,
    scratch,
    temp_dir,
    write_errors,
)
from onnxquant.recipe import recipe_of
from onnxquant.report.build import build_report, tool_versions
from onnxquant.report.html import render_html
from onnxquant.settings import parse_limited

MANIFEST_FORMAT = "onnxquant-bundle/1"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass
class PackageResult:
    output: Path
    files: list[dict[str, Any]]  # name, bytes, sha256 (the manifest's list, plus the manifest)
    manifest: dict[str, Any]
    report: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "files": self.files,
                "ort": self.manifest["ort_format"], "validated": self.manifest["validated"]}


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def default_ort_level(recipe: dict[str, Any] | None) -> str:
    """Fused int8 kernels for the CPU; for NPU targets the Q/DQ node groups stay as they are,
    so the device's execution provider can take them."""
    target = (recipe or {}).get("target", "cpu")
    return "all" if target == "cpu" else "basic"


def package(
    compressed: str | os.PathLike,
    output: str | os.PathLike,
    *,
    report: dict[str, Any] | None = None,
    validation: dict[str, Any] | None = None,
    recipe_text: str | None = None,
    ort_optimization: str | None = None,
    arm: bool = True,
    type_reduction: bool = False,
) -> PackageResult:
    """Bundle the compressed model at ``compressed`` into ``output`` (``.zip``: a zip file; else a folder).

    ``report``: a full report (from ``compress``); otherwise one is built from the model itself
    and ``validation`` (a ``validate`` report). ``recipe_text``: the recipe file as the user
    wrote it, kept verbatim next to the resolved recipe the model carries.
    """
    source = Path(compressed)
    output = Path(output)
    refuse_aliasing((f for path in (source,) for f in model_files(path)), [output])  # lazy: see refuse_aliasing
    model = load_model(source)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in iter_tensors(onnx.load_model(str(source), load_external_data=False))):
        raise ModelError(f"{source}: models with external data cannot be packaged yet (keep them under 2 GiB)")
    if output.exists() and output.is_dir() and any(output.iterdir()):
        raise UsageError(f"{output}: the folder exists and is not empty; choose a new bundle path")
    recipe = recipe_of(model)
    level = ort_optimization or default_ort_level(recipe)
    if level not in ORT_LEVELS:
        raise UsageError(f"ORT optimization level {level!r} unknown; choose from {', '.join(ORT_LEVELS)}")

    files: dict[str, bytes] = {"model.onnx": source.read_bytes()}
    ort_bytes = convert_to_ort(source, level, arm)
    files["model.ort"] = ort_bytes
    with scratch() as tmp:
        ort_path = Path(tmp) / "model.ort"
        ort_path.write_bytes(ort_bytes)
        _check_ort_loads(ort_path)
        files["required_operators.config"] = required_operators(ort_path, "model.ort", type_reduction).encode("utf-8")
    if report is None:
        report = build_report(inspect_model(model), model, source.name, validation=validation, recipe=recipe)
    files["report.json"] = _json(report)
    files["report.html"] = render_html(report).encode("utf-8")
    if recipe is not None:
        files["recipe.json"] = _json(recipe)
    if recipe_text is not None:
        files["recipe.toml"] = recipe_text.encode("utf-8")
    manifest = _manifest(files, model, level, arm, type_reduction, report)
    files["manifest.json"] = _json(manifest)
    _write_bundle(files, output)
    listing = [{"name": name, "bytes": len(data), "sha256": _sha256(data)} for name, data in sorted(files.items())]
    return PackageResult(output=output, files=listing, manifest=manifest, report=report)


def read_validation(path: Path) -> dict[str, Any]:
    """The report of ``onnxquant validate --json`` at ``path``, checked enough to build a manifest from."""
    try:
        data = parse_limited(path.read_text(encoding="utf-8"), json.loads, str(path))
    except FileNotFoundError as exc:
        raise UsageError(f"{path}: no such validation report") from exc
    except IsADirectoryError as exc:
        raise UsageError(f"{path}: is a folder, not a validation report") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{path}: not a JSON validation report (write one with `onnxquant validate --json`)") from exc
    if not isinstance(data, dict) or not {"providers", "passed", "budget", "size", "samples"} <= set(data):
        raise UsageError(f"{path}: not an `onnxquant validate --json` report")
    types = {"passed": bool, "providers": list, "budget": dict, "size": dict, "samples": int}
    wrong = [key for key, kind in types.items() if not isinstance(data[key], kind) or data[key] is True and kind is int]
    if wrong or not all(isinstance(p, dict) and isinstance(p.get("ep"), str) for p in data["providers"]):
        raise UsageError(f"{path}: not an `onnxquant validate --json` report (wrong types: {wrong or ['providers']})")
    if data["samples"] < 1:
        raise UsageError(f"{path}: the validation compared {data['samples']!r} samples; a verdict needs at least one")
    return data


def package_files(
    compressed: str | os.PathLike,
    output: str | os.PathLike,
    *,
    validation_path: Path | None = None,
    recipe_path: Path | None = None,
    ort_optimization: str | None = None,
    arm: bool = True,
    type_reduction: bool = False,
) -> PackageResult:
    """``package`` from the files a user names (``onnxquant package``): a validation report that
    did not pass is refused (exit 6), and so is one whose fields are missing or of the wrong type."""
    validation = read_validation(validation_path) if validation_path else None
    if validation is not None and not validation["passed"]:
        raise BudgetExceededError(f"{validation_path}: the validation did not pass; a failed model is not packaged")
    recipe_text = None
    if recipe_path is not None:
        try:
            recipe_text = recipe_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{recipe_path}: cannot read the recipe ({exc})") from exc
    try:
        return package(compressed, output, validation=validation, recipe_text=recipe_text,
                       ort_optimization=ort_optimization, arm=arm, type_reduction=type_reduction)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
        if validation is None:
            raise
        # The report is built from the user's file: a field missing or of the wrong type inside it.
        raise UsageError(f"{validation_path}: an incomplete `onnxquant validate --json` report "
                         f"({type(exc).__name__}: {exc})") from exc


def _check_ort_loads(path: Path) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # a conversion we cannot load back must never ship
        raise ModelError(f"the ORT-format model does not load back: {str(exc).strip().splitlines()[0]}") from exc


def _manifest(files: dict[str, bytes], model: onnx.ModelProto, level: str, arm: bool, type_reduction: bool,
              report: dict[str, Any]) -> dict[str, Any]:
    info = report["compressed"]
    validation = report.get("validation")
    return {
        "format": MANIFEST_FORMAT,
        "tool": tool_versions(),
        "files": [{"name": name, "bytes": len(data), "sha256": _sha256(data)} for name, data in sorted(files.items())],
        "model": {"inputs": info["inputs"], "outputs": info["outputs"], "opsets": info["opsets"],
                  "ir_version": model.ir_version},
        "ort_format": {"file": "model.ort", "optimization_level": level, "platform": "arm" if arm else "any",
                       "type_reduction": type_reduction, "reduced_build_config": "required_operators.config"},
        "validated": None if not validation else _validation_summary(validation),
    }


def _validation_summary(validation: dict[str, Any]) -> dict[str, Any]:
    """The verdict and, per provider and output, the kind, the figures and the budget checks."""
    providers = [p for p in validation.get("providers", []) if isinstance(p, dict)]
    return {
        "passed": validation.get("passed"), "samples": validation.get("samples"),
        "budget": validation.get("budget"), "default_budgets": validation.get("default_budgets", True),
        "providers": [p.get("ep") for p in providers],
        "outputs": {str(p.get("ep")): p.get("agreement") for p in providers if p.get("available", True)},
        "failures": validation.get("failures", []),
    }


def _write_bundle(files: dict[str, bytes], output: Path) -> None:
    """Write the zip or folder next to its final place, then move it there in one step."""
    if output.suffix.lower() == ".zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as bundle:
            for name, data in sorted(files.items()):
                entry = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
                entry.external_attr = 0o644 << 16
                entry.create_system = 3
                bundle.writestr(entry, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
        write_atomic(output, buffer.getvalue())
        return
    with all_or_nothing() as made, write_errors(output):
        made.parents(output)
        tmp_dir = temp_dir(output.parent)
        try:
            tmp_dir.chmod(0o755)  # mkdtemp's 0700 would make the bundle private to its maker
            for name, data in sorted(files.items()):
                (tmp_dir / name).write_bytes(data)
            if output.exists():
                output.rmdir()  # checked empty above
            os.replace(tmp_dir, output)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        made.file(output)
