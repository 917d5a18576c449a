from __future__ import annotations

import re
from pathlib import Path

from onnxquant.inspect_model import inspect_model
from onnxquant.report.build import build_report
from onnxquant.report.html import render_html
from onnxquant.report.svg import histogram, horizontal_bars


def test_svg_is_deterministic_and_escapes_names():
    one = horizontal_bars([("<script>alert(1)</script>", 3.0), ("b", 1.0)], " dB", "t & u")
    assert one == horizontal_bars([("<script>alert(1)</script>", 3.0), ("b", 1.0)], " dB", "t & u")
    assert "<script>" not in one and "&lt;script&gt;" in one and "t &amp; u" in one
    plot = histogram([0, 4, 9, 0], -1.0, 1.0, -0.5, 0.5, "w", "range")
    assert plot.count("<rect") == 2 and plot.count("stroke-dasharray") == 2


def test_page_without_data_says_what_is_missing(quantized_path: Path):
    import onnx

    model = onnx.load(str(quantized_path))
    page = render_html(build_report(inspect_model(quantized_path), model, "cnn.int8.onnx"))
    assert "not validated" in page and "needs calibration data" in page
    assert len(re.findall(r'<svg class="plot"', page)) == 1 + 4  # sparsity chart + one histogram per weight
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # no network resources


def test_page_lists_float_layers_with_their_share_and_the_integer_kernels(tmp_path: Path):
    import onnx

    import onnxquant
    from tests.test_float_weights import _einsum_model, _samples

    out = tmp_path / "einsum.int8.onnx"
    result = onnxquant.quantize(_einsum_model(), _samples(), output=out)
    page = render_html(build_report(inspect_model(out), onnx.load(str(out)), out.name, quantization=result.to_dict()))
    assert "share of the weight bytes" in page and "op type not quantized" in page
    assert f"{result.float_nodes[-1].share:.1%}" in page and "warning:" in page
    assert "1 of 1" in page  # the Gemm runs as an integer kernel
