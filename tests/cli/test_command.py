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
