"""Page character error rate of a text detector in the full OCR pipeline (benchmarks/ocr_pipeline.py)
on held-out pages with known text (benchmarks/ocr_pages.py).

How read lines meet the ground truth: each read line goes to the ground-truth line whose ink box
its box overlaps most (by area); a read line that overlaps none is spurious. A ground-truth line's
hypothesis is the text of the read lines it received, left to right, concatenated. Whitespace is
removed from both sides before comparing: PP-OCRv4's recogniser is trained mostly on Chinese and
drops about one English word gap in five even on fp32 boxes, which would drown the detector's
share (a detector that splits a line at a word gap loses nothing by it). Case counts. Page CER = the sum over ground-truth
lines of edit distance(reference, hypothesis), plus every character of spurious lines, divided by
the number of reference characters; the CER of a set of pages pools the counts the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.ocr_pages import Page, held_out_pages
from benchmarks.ocr_pipeline import NORMALISATION, ReadLine, Recogniser, detector, read_page
from onnxquant.agreement.sequence import edit_distance  # Levenshtein on any two sequences, strings too


def _normalise(text: str) -> str:
    return "".join(text.split())


def _overlap(box: tuple[int, int, int, int], corners: np.ndarray) -> float:
    x0, y0 = corners.min(axis=0)
    x1, y1 = corners.max(axis=0)
    return max(0.0, min(box[2], x1) - max(box[0], x0)) * max(0.0, min(box[3], y1) - max(box[1], y0))


@dataclass
class PageErrors:
    errors: int = 0
    reference_chars: int = 0
    lines: list[tuple[str, str, int]] = field(default_factory=list)  # (reference, hypothesis, errors)
    spurious: list[str] = field(default_factory=list)

    @property
    def cer(self) -> float:
        return self.errors / max(self.reference_chars, 1)


def page_errors(page: Page, read: list[ReadLine]) -> PageErrors:
    """Match the read lines to the page's ground truth and count character errors."""
    received: list[list[ReadLine]] = [[] for _ in page.lines]
    out = PageErrors()
    for line in read:
        overlaps = [_overlap(t.box, line.box) for t in page.lines]
        best = int(np.argmax(overlaps)) if overlaps else -1
        if best < 0 or overlaps[best] <= 0:
            out.spurious.append(_normalise(line.text))
            out.errors += len(_normalise(line.text))
            continue
        received[best].append(line)
    for truth, got in zip(page.lines, received):
        reference = _normalise(truth.text)
        hypothesis = _normalise("".join(r.text for r in sorted(got, key=lambda r: float(r.box[:, 0].min()))))
        errors = edit_distance(reference, hypothesis)
        out.lines.append((reference, hypothesis, errors))
        out.errors += errors
        out.reference_chars += len(reference)
    return out


def pooled_cer(pages: list[PageErrors]) -> float:
    return sum(p.errors for p in pages) / max(sum(p.reference_chars for p in pages), 1)


def measure(detectors: dict[str, Path], recogniser_model: Path, pages: list[Page], threads: int = 2,
            model: str = "ppocr-det") -> dict[str, dict]:
    """Page CER of each detector model (name -> path; ``fp32`` among them) with one fp32 recogniser:
    pooled CER, each page's CER, and [errors, reference characters] by ground-truth font size."""
    recogniser = Recogniser(recogniser_model, threads)
    out: dict[str, dict] = {}
    for name, path in detectors.items():
        found = detector(model, path, threads)
        per_page = [page_errors(page, read_page(found, recogniser, page.image)) for page in pages]
        by_size: dict[int, list[int]] = {}
        for page, errors in zip(pages, per_page):
            for truth, (reference, _hyp, e) in zip(page.lines, errors.lines):
                counts = by_size.setdefault(truth.size, [0, 0])
                counts[0] += e
                counts[1] += len(reference)
        out[name] = {"cer": pooled_cer(per_page), "page_cer": [p.cer for p in per_page],
                     "errors": sum(p.errors for p in per_page),
                     "reference_chars": sum(p.reference_chars for p in per_page),
                     "spurious_lines": sum(len(p.spurious) for p in per_page),
                     "size_counts": {size: counts for size, counts in sorted(by_size.items())}}
        del found
    return out


def _by_height(size_counts: dict, edges: tuple[int, int] = (16, 28)) -> list[float]:
    """Pooled CER of the lines of font size <= edges[0], up to edges[1], and above."""
    buckets = [[0, 0], [0, 0], [0, 0]]
    for size, (errors, chars) in size_counts.items():
        b = buckets[0 if int(size) <= edges[0] else 1 if int(size) <= edges[1] else 2]
        b[0] += errors
        b[1] += chars
    return [e / max(n, 1) for e, n in buckets]


def markdown(model: str, results: dict[str, dict], failed: dict[str, str] | None = None) -> str:
    """A short table: each detector's pooled page CER and its difference from fp32's."""
    base = results["fp32"]["cer"]
    lines = [f"| model | detector | page CER ({len(results['fp32']['page_cer'])} held-out pages) "
             "| CER − fp32 | CER by text height ≤16 px, 18–28 px, >28 px | worst page CER | spurious lines |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        diff = "" if name == "fp32" else f"{r['cer'] - base:+.4f}"
        sizes = ", ".join(f"{cer:.4f}" for cer in _by_height(r["size_counts"]))
        lines.append(f"| {model} | {name} | {r['cer']:.4f} | {diff} | {sizes} | {max(r['page_cer']):.4f} "
                     f"| {r['spurious_lines']} |")
    for name, error in (failed or {}).items():
        lines.append(f"| {model} | {name} | failed: {error} | | | | |")
    return "\n".join(lines)


def bench(fp32: Path, outputs: dict[str, Path], work: Path, threads: int = 2, count: int = 30,
          model: str = "ppocr-det") -> dict[str, dict]:
    """For benchmarks/run.py: the page CER of fp32 and of each tool's int8 detector, one recogniser."""
    from models.ppocr_rec import build as build_rec

    recogniser = work / "models" / "ppocr_rec_fp32.onnx"
    if not recogniser.exists():
        build_rec(recogniser)
    return measure({"fp32": fp32, **outputs}, recogniser, held_out_pages(count), threads, model)


def main() -> None:
    """``python -m benchmarks.page_cer DETECTOR.onnx ... [--model ppocrv5-det]``: the page CER table
    of the fp32 detector (PP-OCRv4's by default) and the given int8 detector models, without
    quantizing or timing anything."""
    import argparse
    import tempfile

    from models.build import build

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("detectors", nargs="*", type=Path)
    parser.add_argument("--model", choices=sorted(NORMALISATION), default="ppocr-det")
    parser.add_argument("--pages", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = build(args.model, work / "models")
        results = bench(fp32, {p.stem: p for p in args.detectors}, work, args.threads, args.pages, args.model)
    print(markdown(args.model, results))


if __name__ == "__main__":
    main()
