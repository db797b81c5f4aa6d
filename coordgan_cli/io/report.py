"""A self-contained review page (``report.html``) for a propagation run.

One HTML file, no external resources: thumbnails, overlays and confidence heat maps are embedded
as base64 JPEG/PNG; a table of queries sorts by mean confidence in the browser with plain JS,
worst first by default, so a reviewer looks at the doubtful labels first.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from coordgan_cli.io.atomic import atomic_write_text


def thumbnail_data_uri(path: str | Path | None, size: int = 160, fmt: str = "JPEG") -> str:
    """A small base64 data URI of an image file ('' when the file is missing or unreadable)."""
    if path is None:
        return ""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, format=fmt, quality=80)
    except (OSError, ValueError):
        return ""
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def confidence_heatmap(confidence: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1] → (H, W, 3) uint8: red (0) → yellow (0.5) → green (1)."""
    c = np.clip(np.nan_to_num(confidence, nan=0.0), 0.0, 1.0)
    r = np.clip(2.0 * (1.0 - c), 0, 1)
    g = np.clip(2.0 * c, 0, 1)
    b = np.zeros_like(c)
    return (np.stack([r, g, b], axis=-1) * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, colours: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend label colours (H, W, 3) over an RGB image where mask (H, W) bool is set."""
    out = image.astype(np.float32).copy()
    m = mask[..., None]
    out = np.where(m, (1 - alpha) * out + alpha * colours.astype(np.float32), out)
    return out.round().astype(np.uint8)


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px} .meta{color:#555;margin-bottom:14px;font-size:14px}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 3px rgba(0,0,0,.12)}
th,td{padding:6px 10px;border-bottom:1px solid #e5e5e5;text-align:left;vertical-align:middle;font-size:14px}
th{background:#f0f0f0;position:sticky;top:0;cursor:pointer;user-select:none}
th.sorted-asc::after{content:" \\25B2"} th.sorted-desc::after{content:" \\25BC"}
td img{display:block;max-width:160px;max-height:160px;border-radius:3px}
.bar{height:8px;background:#ddd;border-radius:4px;width:120px;overflow:hidden;margin-top:4px}
.bar>span{display:block;height:100%}
.legend span{display:inline-block;padding:2px 8px;margin:2px;border-radius:3px;font-size:12px}
.note{color:#777;font-size:13px;margin-top:10px}
"""

_SCRIPT = """
(function(){
  const table=document.getElementById('queries');
  const body=table.tBodies[0];
  const heads=table.tHead.rows[0].cells;
  function sortBy(col, asc){
    const rows=Array.from(body.rows);
    const numeric=heads[col].dataset.type==='number';
    rows.sort(function(a,b){
      const x=a.cells[col].dataset.value, y=b.cells[col].dataset.value;
      const r=numeric?(parseFloat(x)-parseFloat(y)):x.localeCompare(y);
      return asc?r:-r;});
    rows.forEach(function(r){body.appendChild(r);});
    for(const h of heads){h.classList.remove('sorted-asc','sorted-desc');}
    heads[col].classList.add(asc?'sorted-asc':'sorted-desc');
  }
  for(let i=0;i<heads.length;i++){
    if(!heads[i].dataset.type) continue;
    heads[i].addEventListener('click',function(){
      const asc=!heads[i].classList.contains('sorted-asc');
      sortBy(i,asc);});
  }
  sortBy(1,true);  // worst (lowest mean confidence) first
})();
"""


def write_report(path: str | Path, records: Sequence[dict[str, Any]], *, title: str, summary: dict[str, Any],
                 legend: Sequence[tuple[str, tuple[int, int, int]]], limit: int = 500) -> int:
    """Write ``report.html`` atomically.

    records: per query {"name", "mean_confidence", "low_fraction", "image", "overlay",
    "confidence"} — the last three are file paths (thumbnails are made and embedded here).
    Only the ``limit`` least confident queries get picture rows (the page stays small for huge
    folders); the rest are counted in a note. Returns the number of rows written.
    """
    ordered = sorted(records, key=lambda r: r["mean_confidence"])
    shown = ordered[:limit]
    rows = []
    for rec in shown:
        conf = float(rec["mean_confidence"])
        hue = int(round(120 * max(0.0, min(1.0, conf))))
        pics = "".join(
            f'<td><img alt="{kind}" src="{thumbnail_data_uri(rec.get(kind), fmt="PNG" if kind == "confidence" else "JPEG")}"></td>'
            for kind in ("image", "overlay", "confidence")
        )
        name = html.escape(str(rec["name"]))
        rows.append(
            f'<tr><td data-value="{name}">{name}</td>'
            f'<td data-value="{conf:.6f}">{conf:.3f}<div class="bar"><span style="width:{conf * 100:.1f}%;'
            f'background:hsl({hue},70%,45%)"></span></div></td>'
            f'<td data-value="{float(rec.get("low_fraction", 0.0)):.6f}">{100 * float(rec.get("low_fraction", 0.0)):.1f}%</td>'
            f"{pics}</tr>"
        )
    def text_colour(c) -> str:
        # Dark text on light swatches, white on dark ones (relative luminance).
        return "#000" if 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2] > 140 else "#fff"

    legend_html = "".join(
        f'<span style="background:rgb{tuple(int(v) for v in c)};color:{text_colour(c)}">{html.escape(name)}</span>'
        for name, c in legend
    )
    meta = " · ".join(f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in summary.items())
    note = ""
    if len(ordered) > len(shown):
        note = (f'<p class="note">Showing the {len(shown)} least confident of {len(ordered)} queries; '
                "every query's labels, overlay and heat map are in the output folder.</p>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<div class="meta">{meta}</div>
<div class="legend">{legend_html}</div>
<p class="note">Click a column header to sort. Rows start with the lowest mean confidence (review these first).
Heat maps: red = low confidence, green = high.</p>
<table id="queries">
<thead><tr><th data-type="text">query</th><th data-type="number">mean confidence</th>
<th data-type="number">low-confidence pixels</th><th>image</th><th>labels</th><th>confidence</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
{note}
<script>{_SCRIPT}</script>
</body></html>
"""
    atomic_write_text(path, page)
    return len(shown)
