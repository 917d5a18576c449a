"""Magika's file-type classifier (214 content types), the ONNX model the ``magika`` package ships.

Input: (batch, 2048) int32, the first 1,024 bytes of a file (leading whitespace stripped) and
its last 1,024 (trailing whitespace stripped), padded with 256; output (batch, 214) scores.
Samples are files of many types found on this machine (Python's standard library, licences,
images, shared objects, compressed files).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

BEG, END, BLOCK, PAD = 1024, 1024, 4096, 256


def _model_dir() -> Path:
    import magika

    return Path(magika.__file__).parent / "models" / "standard_v3_3"


def build(out_path: Path) -> Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_model_dir() / "model.onnx", out_path)
    return out_path


def labels() -> list[str]:
    return json.loads((_model_dir() / "config.min.json").read_text())["target_labels_space"]


def features(data: bytes) -> np.ndarray:
    """Magika's input for one file's bytes."""
    head = data[:BLOCK].lstrip()[:BEG]
    tail = data[-BLOCK:].rstrip()[-END:]
    out = np.full(BEG + END, PAD, np.int32)
    out[:len(head)] = np.frombuffer(head, np.uint8)
    if tail:
        out[BEG + END - len(tail):] = np.frombuffer(tail, np.uint8)
    return out


def _files() -> list[Path]:
    """Files of varied types, in a fixed order: the same list on every machine of this kind."""
    lib = Path(sys.prefix if (Path(sys.prefix) / "lib").exists() else "/usr")
    roots = [Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}",
             Path("/usr/share/common-licenses"), Path("/usr/share/fonts"), Path("/usr/share/doc"),
             Path("/etc"), lib]
    suffixes = (".py", ".txt", ".json", ".xml", ".html", ".css", ".js", ".sh", ".c", ".h", ".gz", ".zip",
                ".png", ".jpg", ".ttf", ".so", ".pdf", ".csv", ".toml", ".cfg", ".ini", ".md", ".rst", ".wav",
                ".svg", ".bz2", ".xz", ".conf", "")
    found: dict[str, list[Path]] = {s: [] for s in suffixes}
    for root in roots:
        if not root.exists():
            continue
        for path in sorted(root.rglob("*"))[:20000]:
            if path.is_file() and not path.is_symlink() and path.suffix in found and len(found[path.suffix]) < 12:
                try:
                    if path.stat().st_size >= 64:
                        found[path.suffix].append(path)
                except OSError:
                    continue
    return [p for s in suffixes for p in found[s]]


def samples(part: str, count: int = 64) -> list[dict[str, np.ndarray]]:
    """Calibration: every other file; held-out: the rest."""
    files = _files()
    picked = files[0::2] if part == "calib" else files[1::2]
    out = []
    for path in picked:
        try:
            out.append({"bytes": features(path.read_bytes())[None]})
        except OSError:
            continue
        if len(out) >= count:
            break
    return out
