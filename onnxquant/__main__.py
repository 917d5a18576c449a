"""``python -m onnxquant``: the command line, as the ``onnxquant`` script runs it."""
from onnxquant.cli import main

main(prog_name="onnxquant")
