from __future__ import annotations

import html
import re
from pathlib import Path

from onnxquant.inspect_model import inspect_model
from onnxquant.report.build import build_report
from onnxquant.report.html import render_html
from onnxquant.report.svg import histogram, horizontal_bars
from tests.conftest import INTEGER_KERNELS


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


HOSTILE = ['</script><script>alert(1)</script>', '<img src=x onerror=alert(2)>', '"><svg onload=alert(3)>', "'quoted'"]


def _hostile_validation(text: str) -> dict:
    """A validation report as a hand-written JSON file can hold it: the text in every field."""
    check = {"budget": text, "metric": text, "value": text, "limit": text, "source": text, "passed": text}
    output = {"kind": text, "kind_source": text, "samples": text, "cosine": text, "top1": text, "checks": [check, text],
              "notes": [text], "per_key": {text: {text: text}}}
    provider = {"ep": text, "available": True, "samples": text, "reason": text, "latency_ratio": text,
                "original": {"loaded": True, "latency_ms": {"median": text}, "error": text},
                "compressed": {"loaded": False, "error": text, "placement": {"nodes_on_ep": text}},
                "agreement": {text: output, "x": text}, "metric": {"name": text, "fp32": text, "checks": [check]},
                "failures": [text], "notes": [text]}
    return {"original": text, "compressed": text, "size": {"original": text, "compressed": text, "ratio": text},
            "samples": 3, "budget": {text: text}, "default_budgets": text, "settings": {text: text},
            "providers": [provider, {"ep": text, "available": False, "reason": text}, text],
            "failures": [text], "unavailable": [text], "passed": True}


def test_every_field_of_a_validation_json_is_escaped(quantized_path: Path):
    import onnx

    model = onnx.load(str(quantized_path))
    for text in HOSTILE:
        page = render_html(build_report(inspect_model(quantized_path), model, "cnn.int8.onnx",
                                        validation=_hostile_validation(text)))
        assert text not in page
        assert "<script>alert" not in page and "<img" not in page and "<svg onload" not in page
        assert page.count("<script>") == 1  # only the page's own plot counter
        from html import escape

        assert escape(text, quote=True) in page


def test_package_escapes_a_hostile_validation_file(quantized_path: Path, tmp_path: Path):
    import json
    import zipfile

    from click.testing import CliRunner

    from onnxquant.cli import main

    report = tmp_path / "validation.json"
    hostile = _hostile_validation(HOSTILE[0])
    hostile["providers"] = [p for p in hostile["providers"] if isinstance(p, dict)]  # a bare string is refused
    report.write_text(json.dumps(hostile))
    result = CliRunner().invoke(main, ["package", str(quantized_path), "-o", str(tmp_path / "b.zip"),
                                       "--validation", str(report)])
    assert result.exit_code == 0, result.output
    page = zipfile.ZipFile(tmp_path / "b.zip").read("report.html").decode()
    assert "<script>alert" not in page and page.count("<script>") == 1
    zero = dict(hostile, samples=0)
    report.write_text(json.dumps(zero))
    refused = CliRunner().invoke(main, ["package", str(quantized_path), "-o", str(tmp_path / "c.zip"),
                                        "--validation", str(report)])
    assert refused.exit_code == 2 and "at least one" in refused.output and not (tmp_path / "c.zip").exists()


def test_page_lists_float_layers_with_their_share_and_the_integer_kernels(tmp_path: Path):
    import onnx

    import onnxquant
    from tests.test_float_weights import _einsum_model, _samples

    out = tmp_path / "einsum.int8.onnx"
    result = onnxquant.quantize(_einsum_model(), _samples(), INTEGER_KERNELS, output=out)
    page = render_html(build_report(inspect_model(out), onnx.load(str(out)), out.name, quantization=result.to_dict()))
    assert "share of the input model weight bytes" in page and "op type not quantized" in page
    assert f"{result.float_nodes[-1].share:.1%}" in page and "warning:" in page
    assert "1 of 1" in page  # the Gemm runs as an integer kernel


def test_page_shows_the_recipe_search_trials_and_the_choice(tmp_path: Path):
    import onnx

    import onnxquant
    from models.tiny import image_samples, tiny_cnn

    out = tmp_path / "cnn.int8.onnx"
    result = onnxquant.quantize(tiny_cnn(), image_samples(32), output=out)
    page = render_html(build_report(inspect_model(out), onnx.load(str(out)), out.name, quantization=result.to_dict()))
    assert "<h2>Recipe search</h2>" in page
    assert "<th>why (not) chosen</th>" in page
    for trial in result.search["trials"]:
        assert f"<td>{trial['name']}</td>" in page
        assert trial["why"] and f"<td>{html.escape(trial['why'])}</td>" in page  # why it was (not) taken
    chosen = page.split("<td>chosen</td>", 1)[1].split("</tr>", 1)[0]
    assert f"<td>{result.search['chosen']}</td>" in chosen


def test_page_lists_what_the_search_chose_beyond_its_trials_and_what_it_left_untried(tmp_path: Path):
    import onnx

    import onnxquant
    from models.tiny import image_samples, tiny_cnn

    out = tmp_path / "cnn.int8.onnx"
    result = onnxquant.quantize(tiny_cnn(), image_samples(32), output=out).to_dict()
    search = result["search"]
    # what a bigger model's search reports (MiniLM: the alpha trials do not fit the default budget)
    search.update(kept_float=["conv<1>"], uint8_weights=["conv2"],
                  not_tried=["SmoothQuant alpha 0.5 (each calibrates again: --search-trials 16 tries them)"])
    page = render_html(build_report(inspect_model(out), onnx.load(str(out)), out.name, quantization=result))
    assert "<li>kept float: conv&lt;1&gt;</li>" in page
    assert "<li>full 8-bit uint8 weights: conv2</li>" in page
    assert "<li>not tried: SmoothQuant alpha 0.5 (each calibrates again: --search-trials 16 tries them)</li>" in page
