"""Pruning: zero weights (unstructured, N:M, whole channels) and take dead channels out of the graph."""
