"""Graph rewrites, one job per module."""
