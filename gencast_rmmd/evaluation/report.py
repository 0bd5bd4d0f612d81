"""A one-page HTML report: headline numbers, notes (leakage, skipped dates) and the plots."""

from __future__ import annotations

import html

import xarray as xr

from gencast_rmmd.remote import write_text


def _fmt(x, names: dict | None = None) -> str:
    """HTML text of a value; `names` labels dict keys (roles such as "forecast" -> its model)."""
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, dict):
        names = names or {}
        return ", ".join(
            f"{html.escape(str(k) if k not in names else f'{k} ({names[k]})')}: {_fmt(v)}"
            for k, v in x.items()
        )
    return html.escape(str(x))


def write_report(
    card: xr.Dataset, hist: xr.Dataset, meta: dict, files: dict[str, str], path: str
) -> str:
    """Write report.html next to the plots (images are linked by relative file name)."""
    summ = meta.get("summary", {})
    models = summ.get("models", {})  # per-model figures are keyed by role: name them too
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{_fmt(v, None if k == 'models' else models)}</td></tr>"
        for k, v in summ.items()
    )
    info_keys = (
        "forecast_model",
        "baseline_model",
        "forecast",
        "baseline",
        "truth",
        "ensemble_size",
        "baseline_ensemble_size",
        "grid",
        "time_window",
        "lead_times_hours",
        "estimator",
        "significance",
        "training_period",
        "created",
    )
    info = "".join(
        f"<tr><th>{k}</th><td>{_fmt(meta[k])}</td></tr>"
        for k in info_keys
        if meta.get(k) is not None
    )
    notes = meta.get("notes") or []
    notes_html = (
        "".join(
            f'<li class="{"warn" if n.startswith("WARNING") else ""}">{html.escape(n)}</li>'
            for n in notes
        )
        or "<li>none</li>"
    )
    imgs = "".join(
        f'<figure><img src="{html.escape(name)}" alt="{html.escape(name)}"><figcaption>{html.escape(name)}</figcaption></figure>'
        for name in files
        if name.endswith(".png")
    )
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>gencast-rmmd evaluation: {html.escape(str(meta.get("forecast_model")))}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} th{{text-align:left;padding-right:1em}}
td,th{{border-bottom:1px solid #ddd;padding:2px 6px}} .warn{{color:#b00;font-weight:bold}}
img{{max-width:100%}} figure{{margin:1em 0}}</style></head><body>
<h1>Evaluation of {html.escape(str(meta.get("forecast_model")))}</h1>
<h2>Headline numbers (global)</h2><table>{rows}</table>
<h2>Notes</h2><ul>{notes_html}</ul>
<h2>Run</h2><table>{info}</table>
<h2>Plots</h2>{imgs}
<p>Files: {", ".join(html.escape(n) for n in files)}, evaluation.json</p>
</body></html>
"""
    write_text(path, page)
    return path
