"""The README sample regeneration: block replacement on a small text (no model is run)."""
import sys

from benchmarks.readme_samples import STAMP, _argv, replace_sample, section_command

TEXT = """# tool

## Quantize

```
not the sample: before the command
```

```bash
python -m models.example && onnxquant quantize m.onnx \\
    -o q.onnx
```

It prints:

```
old output
old line 2
```

## Next

```
untouched
```
"""


def test_the_sample_after_the_command_is_replaced_and_stamped_once():
    stamp = f"{STAMP} on Test CPU, 2026-01-01."
    once = replace_sample(TEXT, "## Quantize", "wrote q.onnx\nsize: 1 MiB\n", stamp)
    assert "old output" not in once and "wrote q.onnx\nsize: 1 MiB\n```\n" + stamp + "\n\n## Next" in once
    assert "not the sample: before the command" in once and "```\nuntouched\n```" in once
    again = replace_sample(once, "## Quantize", "wrote q.onnx\n", f"{STAMP} on Other CPU, 2026-02-02.")
    assert again.count(STAMP) == 1 and "Other CPU" in again and "size: 1 MiB" not in again
    assert again.replace("wrote q.onnx\n```\n" + f"{STAMP} on Other CPU, 2026-02-02.",
                         "wrote q.onnx\nsize: 1 MiB\n```\n" + stamp) == once


def test_the_command_is_read_from_the_bash_block():
    line = section_command(TEXT, "## Quantize")
    assert line == "python -m models.example && onnxquant quantize m.onnx -o q.onnx"
    assert _argv("onnxquant quantize m.onnx      -o q.onnx") == [sys.executable, "-m", "onnxquant", "quantize", "m.onnx",
                                                                "-o", "q.onnx"]
    assert _argv("python -m models.example") == [sys.executable, "-m", "models.example"]
