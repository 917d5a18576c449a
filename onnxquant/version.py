"""The package version, in a module of its own: the stamp written into every output reads it
without importing the package's facade."""

__version__ = "0.1.0"
