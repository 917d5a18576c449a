"""The HTML report in a real headless browser (Debian's chromium; .ci/run installs it)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnxquant.compress import compress, load_job
from tests.ship.conftest import write_job


@pytest.fixture
def chromium() -> str:
    found = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if found is None:
        if os.environ.get("ONNXQUANT_EXPECT_CHROMIUM"):
            pytest.fail("ONNXQUANT_EXPECT_CHROMIUM is set but no chromium is installed")
        pytest.skip("no headless browser installed (apt-get install chromium)")
    return found


def _browser(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=180, check=False)


def test_report_renders_every_plot(chromium: str, cnn_path: Path, npz_dir: Path, tmp_path: Path):
    job = write_job(tmp_path, cnn_path, npz_dir, "[validate]\nmin_cosine = 0.9\nlatency_runs = 2\n")
    html = compress(load_job(job)).html
    page = html.read_text(encoding="utf-8")
    expected = len(re.findall(r'<svg class="plot"', page))
    assert expected >= 10  # size, latency, layer error, sparsity, weight and activation histograms

    dom = _browser(chromium, tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", html.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = re.search(r'data-rendered-plots="(\d+)"', dom.stdout)
    assert rendered is not None, "the page's load script did not run"
    assert int(rendered.group(1)) == expected  # every chart laid out with a non-empty box

    shot = tmp_path / "report.png"
    result = _browser(chromium, tmp_path / "profile", "--window-size=1200,1600", f"--screenshot={shot}", html.as_uri())
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (1600, 1200)
    # the verdict badge (green) and chart bars (blue) are on screen, not a blank page
    green = np.all(np.abs(pixels.astype(int) - (0x2E, 0x7D, 0x32)) < 8, axis=-1).sum()
    blue = np.all(np.abs(pixels.astype(int) - (0x4E, 0x79, 0xA7)) < 8, axis=-1).sum()
    assert green > 500 and blue > 2000
