"""Fit ``onnxquant/conv_cost.py``'s per-kind figures to ``benchmarks.conv_profile`` results.

``python -m benchmarks.conv_fit PROFILE.json [PROFILE.json ...]``

Per kind of Conv (depthwise, pointwise, dense k x k): non-negative least squares of each layer's
measured fp32 and int8 kernel time on ``per_call + per_pixel * pixels + per_output * outputs +
per_mac * multiply-adds``, each layer weighted by 1/sqrt(its time); int8's per-call cost is its own (with VNNI, holding it
at fp32's, as the x86-without-VNNI figures did, underestimated the mobile classifiers' int8 time
by a third). Prints the ``ConvCost`` pair to paste into
``conv_cost.COSTS`` and, per profile, the Convs' int8/fp32 time measured and fitted.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

KINDS = ("depthwise", "pointwise", "dense")


def _kind(row: dict) -> str | None:
    if row["int8_us"] is None or row["fp32_us"] is None:
        return None  # a hard-sigmoid gate (fp32 folds it into its Conv) or a layer not timed
    return "depthwise" if row["depthwise"] else "pointwise" if row["kernel"] in ([1, 1], []) else "dense"


def _features(row: dict) -> list[float]:
    return [float(row["pixels"]), float(row["pixels"] * row["channels"]), float(row["macs"])]


def fit(rows: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """kind -> (fp32 [per_call, per_pixel, per_output, per_mac], int8 [the same]) in ns."""
    out = {}
    for kind in KINDS:
        mine = [r for r in rows if _kind(r) == kind]
        if not mine:
            continue
        # the hard-sigmoid gates run as int8 depthwise 1x1 Convs (fp32 folds them): int8 side only
        gates = [r for r in rows if kind == "depthwise" and r["depthwise"] and r["fp32_us"] is None and r["int8_us"]]
        a, b = [], []
        for r in mine + gates:  # unknowns: fp32 call/pixel/output/mac, int8 call/pixel/output/mac
            f = _features(r)
            sides = [(r["int8_us"], [0.0, 0.0, 0.0, 0.0, 1.0, *f])]
            if r in mine:
                sides.append((r["fp32_us"], [1.0, *f, 0.0, 0.0, 0.0, 0.0]))
            for times, cols in sides:
                weight = 1.0 / np.sqrt(max(times, 1.0))
                a.append([c * weight for c in cols])
                b.append(times * 1e3 * weight)
        x, _ = nnls(np.array(a), np.array(b))
        out[kind] = (list(x[0:4]), list(x[4:8]))
    return out


def _us(costs: list[float], row: dict) -> float:
    return (costs[0] + float(np.dot(costs[1:], _features(row)))) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profiles", type=Path, nargs="+")
    args = parser.parse_args()
    profiles = [json.loads(p.read_text()) for p in args.profiles]
    fitted = fit([r for p in profiles for r in p["layers"]])
    for label, side in (("fp32", 0), ("int8", 1)):
        parts = ", ".join(f"{kind}=KindCost({', '.join(f'{v:.4g}' for v in fitted[kind][side])})"
                          for kind in KINDS if kind in fitted)
        print(f"{label}: ConvCost({parts})")
    for p in profiles:
        rows = [r for r in p["layers"] if _kind(r) in fitted]
        measured = sum(r["int8_us"] for r in rows) / sum(r["fp32_us"] for r in rows)
        est = (sum(_us(fitted[_kind(r)][1], r) for r in rows) / sum(_us(fitted[_kind(r)][0], r) for r in rows))
        print(f"{p['model']} batch {p['batch']}: Convs int8/fp32 measured {measured:.2f}, fitted {est:.2f}")


if __name__ == "__main__":
    main()
