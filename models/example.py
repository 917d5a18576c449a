"""Build the quick-start example: EfficientNet-Lite0 plus real calibration samples and photos.

``python -m models.example`` writes, under ``build/``:
- ``models/efficientnet_lite0.onnx``: the fp32 model, exported from packaged ImageNet weights;
- ``calib/efficientnet-lite0/*.npz``: calibration samples (views of packaged photos);
- ``holdout/efficientnet-lite0/*.npz``: held-out samples from other photos;
- ``photos/``: the calibration photos themselves, for calibrating from an image folder.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from calibration.build import write_samples
from calibration.photos import photo_paths, split
from models.build import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("build"))
    args = parser.parse_args()
    model = build("efficientnet-lite0", args.out / "models")
    calib = write_samples("efficientnet-lite0", "calib", args.out / "calib" / "efficientnet-lite0")
    held = write_samples("efficientnet-lite0", "holdout", args.out / "holdout" / "efficientnet-lite0")
    photos = args.out / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for path in split(photo_paths())[0]:
        shutil.copyfile(path, photos / path.name)
    print(f"model:        {model}\ncalibration:  {calib}\nheld-out:     {held}\nphotos:       {photos}")


if __name__ == "__main__":
    main()
