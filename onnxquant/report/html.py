"""The HTML report: one self-contained page rendered from the JSON report (nothing else).

Readable offline and by a person deciding whether a model ships: the verdict first, then size
and latency per execution provider, agreement, where the error comes from, and the histograms
behind every clipping range. Inline SVG only; the one script just counts rendered plots.
"""
from __future__ import annotations

import json
from html import escape
from typing import Any

from onnxquant.agreement.text import checks_text, figures_text, kind_text
from onnxquant.report import svg

MIB = 1 << 20  # sizes in binary units, as the command line prints them
_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
.verdict{display:inline-block;padding:4px 12px;border-radius:4px;font-weight:700;color:#fff}
.pass{background:#2e7d32}.fail{background:#c62828}.none{background:#757575}
table{border-collapse:collapse;margin:8px 0;font-size:13px} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4} td.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:8px} .muted{color:#666;font-size:13px} pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}
"""
_SCRIPT = """
addEventListener('load',function(){var n=0;document.querySelectorAll('svg.plot').forEach(function(s){
var b=s.getBBox();if(b.width>0&&b.height>0)n++;});document.body.setAttribute('data-rendered-plots',String(n));});
"""


def _e(value: Any) -> str:
    """Every value that reaches the page goes through here (or _cell): text, never markup.

    A report may come from a file the user gives (``package --validation``), so any field can
    hold any string."""
    return escape(str(value), quote=True)


def _d(value: Any) -> dict[str, Any]:
    """A JSON object, or an empty one when a hand-written report holds something else there."""
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return f"<td>{_e(value)}</td>"
    if isinstance(value, float):
        return f'<td class="n">{value:.4g}</td>'
    if isinstance(value, int):
        return f'<td class="n">{value:,}</td>'
    return f"<td>{_e(value)}</td>"


def _mib(n: Any) -> float | None:
    number = _number(n)
    return round(number / MIB, 2) if number is not None else None

def _verdict(report: dict[str, Any]) -> str:
    validation = _d(report.get("validation"))
    if not validation:
        return '<span class="verdict none">not validated</span>'
    if validation.get("passed") is True:
        return '<span class="verdict pass">PASS: every budget holds</span>'
    return '<span class="verdict fail">FAIL</span>'


def _summary(report: dict[str, Any]) -> str:
    comp, orig = report["compressed"], report.get("original")
    rows = [["file size (MiB)", _mib(orig["size"]) if orig else "", _mib(comp["size"])],
            ["deflated, as zipped (MiB)", _mib(orig["size_deflated"]) if orig else "", _mib(comp["size_deflated"])],
            ["parameters", orig["total_parameters"] if orig else "", comp["total_parameters"]],
            ["weight sparsity", f"{orig['sparsity']:.1%}" if orig else "", f"{comp['sparsity']:.1%}"]]
    for precision in sorted({*comp["precision"], *(orig["precision"] if orig else {})}):
        rows.append([f"{precision} layers", (orig["precision"].get(precision, {}).get("layers", 0) if orig else ""),
                     comp["precision"].get(precision, {}).get("layers", 0)])
    if "float_weight_share" in comp:
        rows.append(["weight bytes in float layers", f"{orig['float_weight_share']:.1%}" if orig and "float_weight_share" in orig
                     else "", f"{comp['float_weight_share']:.1%}"])
    fusion = (report.get("quantization") or {}).get("fusion")
    if fusion:
        rows.append(["quantized layers onnxruntime runs as integer kernels", "",
                     f"{fusion['integer_layers']} of {fusion['quantized_layers']}"])
    return _table(["", "original", "compressed"], rows)


def _providers(validation: dict[str, Any]) -> str:
    groups, rows = [], []
    for p in map(_d, _l(validation.get("providers"))):
        ep = str(p.get("ep", ""))
        if not p.get("available"):
            rows.append([ep, "unavailable", p.get("reason", ""), "", "", ""])
            continue
        o, c = _d(p.get("original")), _d(p.get("compressed"))
        om = _number(_d(o.get("latency_ms")).get("median")) if o.get("loaded") else None
        cm = _number(_d(c.get("latency_ms")).get("median")) if c.get("loaded") else None
        groups.append((ep, [("original", om), ("compressed", cm)]))
        place = _d(c.get("placement"))
        where = (f"{place.get('nodes_on_ep', 0)} on EP, {place.get('fallback_nodes', 0)} fell back"
                 if ep != "cpu" else "CPU")
        ratio = _number(p.get("latency_ratio"))
        rows.append([ep, "ran" if c.get("loaded") else f"did not load: {c.get('error', '')}", where,
                     om if om is not None else "", cm if cm is not None else "", ratio if ratio is not None else ""])
    size = _d(validation.get("size"))
    charts = svg.grouped_bars([("file size", [("original", _mib(size.get("original"))),
                                              ("compressed", _mib(size.get("compressed")))])],
                              "MiB", "Size before and after", width=260)
    if groups:
        charts += svg.grouped_bars(groups, "median ms per sample", "Latency before and after, per execution provider",
                                   width=max(400, 170 * len(groups)))
    table = _table(["provider", "compressed model", "placement", "original ms", "compressed ms", "ratio"], rows)
    return f'<div class="grid">{charts}</div>{table}'


def _agreement(validation: dict[str, Any]) -> str:
    """Per provider and output: its kind, its figures, and each budget applied (default or given)."""
    rows = []
    for p in map(_d, _l(validation.get("providers"))):
        for name, a in _d(p.get("agreement")).items():
            a = _d(a)
            rows.append([p.get("ep", ""), name, kind_text(a), figures_text(a),
                         "; ".join(checks_text(a.get("checks"))) or "none"])
        metric = _d(p.get("metric"))
        if metric:
            figures = ", ".join(f"{k} {metric[k]}" for k in ("fp32", "compressed", "drop") if k in metric)
            rows.append([p.get("ep", ""), f"metric {metric.get('name', '')}", "your metric", figures or "not measured",
                         "; ".join(checks_text(metric.get("checks"))) or "none"])
    given = ", ".join(f"{k} {v}" for k, v in _d(validation.get("budget")).items())
    defaults = validation.get("default_budgets", True)
    budget = ("defaults per output kind" if defaults else "no defaults") + (f"; given: {given}" if given else "")
    text = _table(["provider", "output", "kind", "agreement with the original", "budgets"], rows)
    text += f'<p class="muted">{_e(validation.get("samples", "?"))} held-out samples; budgets: {_e(budget)}</p>'
    notes = [n for p in map(_d, _l(validation.get("providers"))) for n in _l(p.get("notes"))]
    if notes:
        text += "<p><b>Not checked</b></p><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"
    failures = "".join(f"<li>{_e(f)}</li>" for f in _l(validation.get("failures")))
    if failures:
        text += f"<p><b>Failed budget checks</b></p><ul>{failures}</ul>"
    return text


def _layer_errors(errors: list[dict[str, Any]] | None) -> str:
    if errors is None:
        return '<p class="muted">Not measured: per-layer error needs calibration data (onnxquant compress measures it).</p>'
    finite = [e for e in errors if isinstance(e["own_sqnr_db"], (int, float))][:40]
    if not finite:
        return '<p class="muted">No quantized tensor adds measurable error.</p>'
    rows = [(f"{e['op_type']} {e['tensor']}", float(e["own_sqnr_db"])) for e in finite]
    chart = svg.horizontal_bars(rows, " dB", "Own SQNR of each quantized tensor, worst first (higher is better)",
                                marker=20.0, marker_label="20 dB")
    return (chart + '<p class="muted">Own SQNR: the signal-to-noise ratio of the error this tensor adds over its '
            "producer's cleanest input. A low value marks the layer that does the damage; "
            "<code>onnxquant sensitivity</code> and <code>--exclude</code> act on it.</p>")


def _sparsity(layers: list[dict[str, Any]]) -> str:
    if not layers:
        return '<p class="muted">No weighted layers.</p>'
    rows = [(f"{layer['op_type']} {layer['node'] or layer['weight']}", layer["sparsity"] * 100) for layer in layers]
    return svg.horizontal_bars(rows, "%", "Share of zero weights per layer (graph order)")


def _histograms(items: list[dict[str, Any]], what: str) -> str:
    if not items:
        return f'<p class="muted">No {what} histograms: {"needs calibration data" if what == "activation" else "no 8-bit weights"}.</p>'
    plots = []
    for h in items:
        sub = f"range [{h['clip_lo']:.3g}, {h['clip_hi']:.3g}]; clipped {h['clipped']:.2%}"
        plots.append(svg.histogram(h["counts"], h["lo"], h["hi"], h["clip_lo"], h["clip_hi"],
                                   h["layer"] or h["tensor"], sub))
    return (f'<p class="muted">{len(items)} tensors. Dashed lines: the clipping range the quantized model uses. '
            "Bar heights on a square-root scale.</p>" + f'<div class="grid">{"".join(plots)}</div>')


def _float_nodes(quantization: dict[str, Any] | None) -> str:
    if not quantization:
        return ""
    nodes = sorted(quantization.get("float_nodes", []), key=lambda n: -n.get("share", 0.0))
    rows = [[n["name"], n["op_type"], n["reason"], f"{n['share']:.1%}" if n.get("share") else ""] for n in nodes]
    notes = "".join(f"<li>{_e(n)}</li>" for n in quantization.get("notes", []))
    warnings = "".join(f"<li><strong>warning:</strong> {_e(w)}</li>" for w in quantization.get("warnings", []))
    text = (_table(["node", "op", "why it stayed float", "share of the input model weight bytes"], rows) if rows
            else "<p>Every supported node is quantized.</p>")
    return text + (f"<ul>{warnings}{notes}</ul>" if notes or warnings else "")


def _search(quantization: dict[str, Any]) -> str:
    """What the recipe search tried, each trial's drop on the held-out calibration samples, and the choice."""
    search = quantization.get("search")
    if not search:
        return ""
    if search.get("skipped"):
        return f"<h2>Recipe search</h2><p>Skipped: {_e(search['skipped'])}</p>"
    rows = [["chosen" if t["name"] == search["chosen"] else "", t["name"],
             json.dumps(t["changes"], sort_keys=True) if t["changes"] else "",
             f"{t['drop']:.4f}" if t.get("error") is None else t["error"],
             f"{t['cosine_drop']:.5f}" if t.get("error") is None else "", t.get("why", ""), f"{t['seconds']:.1f}"]
            for t in search["trials"]]
    intro = (f"<p>{len(search['trials'])} trial(s) re-planned from one calibration on "
             f"{search['calibration_samples']} samples, scored on {search['scored_samples']} calibration samples "
             f"held out from it (drop by {_e(search['drop_by'])}).")
    if search.get("cut_by_time"):
        intro += " Its time cap cut it: a faster machine may choose differently."
    chosen = [f"<li>kept float: {_e(', '.join(search['kept_float']))}</li>" if search.get("kept_float") else "",
              f"<li>full 8-bit uint8 weights: {_e(', '.join(search['uint8_weights']))}</li>"
              if search.get("uint8_weights") else "",
              *(f"<li>not tried: {_e(why)}</li>" for why in search.get("not_tried", []))]
    listed = "".join(chosen)
    return ("<h2>Recipe search</h2>" + intro + "</p>"
            + _table(["", "trial", "recipe change", "drop", "cosine drop", "why (not) chosen", "seconds"], rows)
            + (f"<ul>{listed}</ul>" if listed else ""))


def render_html(report: dict[str, Any]) -> str:
    """The page for ``report`` (as written to report.json)."""
    name = report["compressed"]["path"] or "model"
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>onnxquant report: {_e(name)}</title>",
             f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>",
             f"<h1>{_e(name)}</h1>",
             (f'<p>{_verdict(report)} <span class="muted">onnxquant {_e(report["tool"]["onnxquant"])}, '
              f'onnxruntime {_e(report["tool"]["onnxruntime"])}</span></p>'),
             "<h2>Summary</h2>", _summary(report)]
    validation = _d(report.get("validation"))
    if validation:
        parts += ["<h2>Size and latency, per execution provider</h2>", _providers(validation),
                  "<h2>Agreement with the original</h2>", _agreement(validation)]
    parts += ["<h2>Per-layer error</h2>", _layer_errors(report.get("layer_errors")),
              "<h2>Sparsity per layer</h2>", _sparsity(report["compressed"].get("layers", [])),
              "<h2>Weight histograms</h2>", _histograms(report.get("weight_histograms", []), "weight"),
              "<h2>Activation histograms</h2>", _histograms(report.get("activation_histograms", []), "activation")]
    quantization = report.get("quantization")
    if quantization:
        parts += [_search(quantization), "<h2>Left in float, and notes</h2>", _float_nodes(quantization),
                  "<h2>Recipe</h2>", f"<pre>{_e(json.dumps(quantization.get('recipe', {}), indent=2, sort_keys=True))}</pre>"]
    parts.append("</body></html>\n")
    return "".join(parts)
