"""Exit codes: one table in code, the README's table is that table, every error class is in it."""
import re
from pathlib import Path

from onnxquant import errors
from onnxquant.errors import EXIT_CODES, OnnxQuantError

README = Path(__file__).resolve().parents[1] / "README.md"


def _subclasses(cls: type) -> list[type]:
    return [sub for child in cls.__subclasses__() for sub in (child, *_subclasses(child))]


def test_every_error_class_has_its_code_in_the_table():
    classes = [cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, OnnxQuantError)]
    assert len(classes) == len(_subclasses(OnnxQuantError)) + 1  # the base class too; none defined elsewhere
    assert {cls.exit_code for cls in classes} <= set(EXIT_CODES)
    assert {0, errors.INTERRUPTED, errors.TERMINATED} <= set(EXIT_CODES)


def test_the_readme_table_is_the_code_table():
    text = README.read_text(encoding="utf-8")
    table = text[text.index("| exit code | meaning |"):].split("\n\n", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", table, flags=re.MULTILINE)
    assert {int(code): meaning for code, meaning in rows} == EXIT_CODES
