"""Write a model's calibration or held-out samples as a folder of .npz files.

``python -m calibration.build efficientnet-lite0 --part calib --out build/calib/efficientnet-lite0``
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from calibration.sets import SETS


def write_samples(name: str, part: str, out_dir: Path, seq_len: int | None = None) -> Path:
    if seq_len is not None and name != "minilm":
        raise SystemExit("--seq-len applies to text models (minilm) only")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.npz"):
        old.unlink()
    samples = SETS[name](part, pad_to=seq_len) if seq_len else SETS[name](part)
    for i, sample in enumerate(samples):
        np.savez(out_dir / f"sample_{i:04d}.npz", **sample)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=sorted(SETS))
    parser.add_argument("--part", choices=("calib", "holdout"), default="calib")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seq-len", type=int, help="Pad every text sample to this many tokens (fixed-shape runtimes).")
    args = parser.parse_args()
    print(write_samples(args.name, args.part, args.out, args.seq_len))


if __name__ == "__main__":
    main()
