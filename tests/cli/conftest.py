"""Fixtures the command tests share with the library tests they mirror."""
from tests.prune.conftest import mbconv_data, mbconv_path  # noqa: F401 - fixtures for test_prune.py
