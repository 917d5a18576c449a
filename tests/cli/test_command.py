"""Every command's --help ends with the exit-code table."""
import pytest
from click.testing import CliRunner

from onnxquant.cli import main
from onnxquant.errors import EXIT_CODES


@pytest.mark.parametrize("command", [[], *([name] for name in sorted(main.commands))])
def test_every_help_lists_every_exit_code(command: list[str]):
    result = CliRunner().invoke(main, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    table = result.output[result.output.index("Exit codes:"):].splitlines()[1:]
    assert [line.split(None, 1) for line in table] == [[str(code), meaning] for code, meaning in EXIT_CODES.items()]


def test_with_json_a_failure_is_one_json_document_on_stdout(cnn_path, npz_dir, tmp_path):
    """A script that parses stdout of ``--json`` gets a document on failure too (it got nothing:
    the error line is on stderr), and a failed budget's report is not followed by a second one."""
    import json

    from click.testing import CliRunner

    from onnxquant.cli import main

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    failed = CliRunner().invoke(main, ["quantize", str(bad), "-o", str(tmp_path / "o.onnx"),
                                       "--calib-data", str(npz_dir), "--json"])
    assert failed.exit_code == 3
    document = json.loads(failed.stdout)
    assert document["exit_code"] == 3 and document["error"] and "Traceback" not in failed.stdout
    assert failed.stderr.startswith("error: ") and failed.stderr.count("\n") == 1
    assert not (tmp_path / "o.onnx").exists()

    from onnxquant.api import quantize

    quantized = tmp_path / "q.onnx"
    quantize(cnn_path, npz_dir, output=quantized)
    over = CliRunner().invoke(main, ["validate", str(cnn_path), str(quantized), "--holdout", str(npz_dir),
                                     "--min-cosine", "0.99999999", "--latency-runs", "1", "--json"])
    assert over.exit_code == 6
    report = json.loads(over.stdout)  # exactly one document: json.loads refuses a second
    assert report["passed"] is False and "exit_code" not in report
