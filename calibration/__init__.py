"""Calibration-set builders for the models in ``models/``, from real data that packages ship.

Photos: scikit-image's and scikit-learn's bundled images. Text: the license texts Debian
ships in /usr/share/common-licenses. Calibration and held-out sets are split by source (no
photo or document is in both), so agreement is measured on inputs the calibration never saw.
"""
