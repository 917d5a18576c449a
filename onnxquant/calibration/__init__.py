"""Calibration: sample sources, streaming statistics, range estimators."""
