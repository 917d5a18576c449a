"""Write a model's calibration or held-out samples as a folder of .npz files.

``python -m calibration.build efficientnet-lite0 --part calib --out build/calib/efficientnet-lite0``
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from calibration.sets import SETS


def write_samples(name: str, part: str, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.npz"):
        old.unlink()
    for i, sample in enumerate(SETS[name](part)):
        np.savez(out_dir / f"sample_{i:04d}.npz", **sample)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=sorted(SETS))
    parser.add_argument("--part", choices=("calib", "holdout"), default="calib")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    print(write_samples(args.name, args.part, args.out))


if __name__ == "__main__":
    main()
