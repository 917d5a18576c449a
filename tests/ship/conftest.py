from __future__ import annotations

from pathlib import Path


def write_job(folder: Path, model: Path, calib: Path, body: str = "", output: str = "out/bundle.zip") -> Path:
    """A job file next to its inputs, with paths relative to it (as users write them)."""
    job = folder / "job.toml"
    job.write_text(f'model = "{model.relative_to(folder)}"\ncalib_data = "{calib.relative_to(folder)}"\n'
                   f'output = "{output}"\n{body}')
    return job

