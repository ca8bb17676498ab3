#!/usr/bin/env python3
"""Draws twill's Grafana dashboard as one SVG from a Prometheus that scraped a real run.

Each panel of manifests/charts/twill/files/twill-dashboard.json is laid out where its
gridPos puts it; each of its queries is asked of Prometheus (query_range, the dashboard's
`$job` variable as "all"), and every series returned is drawn with its legend as the
panel's legendFormat names it. Marks for the faults the run injected come from an events
file ("<unix seconds> <label>" per line). Written by hand with the standard library only:
no plotting library is installed here, and the picture needs lines, axes and text only.

usage: plot-dashboard.py DASHBOARD PROMETHEUS_URL START END EVENTS OUT.svg
"""

import json
import re
import sys
import urllib.parse
import urllib.request
from html import escape

COLOURS = ["#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9", "#705da0"]
CELL_W, CELL_H = 46, 30  # pixels per grid unit (Grafana's grid is 24 units wide)
PAD = 8
MAX_SHOWN = 8  # series drawn per panel


def query_range(url, expr, start, end, step):
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{q}", timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise SystemExit(f"query failed: {expr}: {body}")
    return body["data"]["result"]


def legend(fmt, labels):
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt or "")
    return text.strip() or ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__")


def nice_max(v):
    """The smallest 1/2/5 x 10^n at or above v, for the y axis' top."""
    if v <= 0:
        return 1.0
    exp = 10 ** int(f"{v:e}".split("e")[1])
    for m in (1, 2, 5, 10):
        if m * exp >= v:
            return m * exp
    return 10 * exp


def fmt_value(v, unit):
    if unit == "bytes":
        return f"{v / 1e6:.0f} MB" if v >= 1e6 else f"{v / 1e3:.0f} kB"
    if unit == "s":
        if v == 0:
            return "0"
        if v >= 3600:
            return f"{v / 3600:.0f} h"
        return f"{v:.0f} s" if v >= 1 else f"{v * 1000:.3g} ms"
    if unit == "percentunit":
        return f"{v * 100:.2g}%"
    return f"{v:.3g}"


def panel_svg(panel, series, start, end, events):
    g = panel["gridPos"]
    x0, y0 = g["x"] * CELL_W + PAD, g["y"] * CELL_H + PAD
    w, h = g["w"] * CELL_W - PAD, g["h"] * CELL_H - PAD
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    out = [f'<g transform="translate({x0},{y0})">',
           f'<rect width="{w}" height="{h}" rx="3" fill="#181b1f" stroke="#2c3235"/>',
           f'<text x="10" y="18" class="title">{escape(panel["title"])}</text>']
    # Plot area, leaving room for the y labels, the time axis and the legend. Series that
    # moved come first: a panel of many all-zero series still shows the one that did not.
    ranked = sorted(series, key=lambda s: (not any(v for _, v in s[1]), s[0]))
    shown = ranked[:MAX_SHOWN]
    hidden = len(series) - len(shown)
    lx, ly, lw = 58, 30, w - 70
    lh = h - 58 - 14 * ((len(shown) + 1 + (hidden > 0)) // 2)
    top = nice_max(max((v for _, pts in series for _, v in pts), default=0))
    sx = lambda t: lx + (t - start) / (end - start) * lw
    sy = lambda v: ly + lh - v / top * lh
    for i in range(5):
        v = top * i / 4
        y = sy(v)
        out.append(f'<line x1="{lx}" x2="{lx + lw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{lx - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{fmt_value(v, unit)}</text>')
    for m in range(0, int((end - start) // 60) + 1):
        x = sx(start + m * 60)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{ly}" y2="{ly + lh}" class="grid"/>')
        out.append(f'<text x="{x:.1f}" y="{ly + lh + 14}" class="tick" text-anchor="middle">{m} min</text>')
    for t, _ in events:
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{ly}" y2="{ly + lh}" class="event"/>')
    for i, (name, pts) in enumerate(shown):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{'M' if j == 0 else 'L'}{sx(t):.1f},{sy(v):.1f}" for j, (t, v) in enumerate(pts))
        if path:
            out.append(f'<path d="{path}" stroke="{colour}" class="series"/>')
        col, row = i % 2, i // 2
        tx, ty = lx + col * lw / 2, ly + lh + 32 + row * 14
        out.append(f'<rect x="{tx}" y="{ty - 8}" width="10" height="3" fill="{colour}"/>')
        out.append(f'<text x="{tx + 14}" y="{ty - 3}" class="legend">{escape(name[:48])}</text>')
    if hidden:
        ty = ly + lh + 32 + (len(shown) // 2) * 14 + (len(shown) % 2) * 14
        zero = all(not any(v for _, v in pts) for _, pts in ranked[MAX_SHOWN:])
        more = f"+{hidden} more series" + (", all 0" if zero else "")
        out.append(f'<text x="{lx}" y="{ty - 3}" class="legend">{more}</text>')
    if not series:
        out.append(f'<text x="{w / 2}" y="{h / 2}" class="tick" text-anchor="middle">no data</text>')
    out.append("</g>")
    return out


def main():
    dash_path, url, start, end, events_path, out_path = sys.argv[1:7]
    start, end = float(start), float(end)
    step = max(2, int((end - start) / 300))
    dash = json.load(open(dash_path))
    events = []
    for line in open(events_path):
        t, _, label = line.strip().partition(" ")
        if t:
            events.append((float(t), label))
    body, bottom = [], 0
    for panel in dash["panels"]:
        series = []
        for target in panel.get("targets", []):
            expr = target["expr"].replace('=~"$job"', '=~".*"')
            for r in query_range(url, expr, start, end, step):
                pts = [(float(t), float(v)) for t, v in r["values"] if v not in ("NaN", "+Inf", "-Inf")]
                series.append((legend(target.get("legendFormat"), r["metric"]), pts))
        body += panel_svg(panel, series, start, end, events)
        g = panel["gridPos"]
        bottom = max(bottom, (g["y"] + g["h"]) * CELL_H + PAD)
    width = 24 * CELL_W + PAD
    marks = " · ".join(f"{(t - start) / 60:.1f} min: {label}" for t, label in events)
    height = bottom + 30
    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
        "<style>text{font-family:Inter,Helvetica,Arial,sans-serif;fill:#ccccdc}"
        ".title{font-size:13px;font-weight:600}.tick{font-size:10px;fill:#8e8e9e}"
        ".legend{font-size:10px}.grid{stroke:#2c3235;stroke-width:1}"
        ".event{stroke:#e02f44;stroke-width:1;stroke-dasharray:3 3}"
        ".series{fill:none;stroke-width:1.6}</style>",
        f'<rect width="{width}" height="{height}" fill="#111217"/>',
    ]
    foot = [f'<text x="{PAD}" y="{height - 10}" class="tick">dashed: {escape(marks)}</text>', "</svg>"]
    with open(out_path, "w") as f:
        f.write("\n".join(head + body + foot) + "\n")


if __name__ == "__main__":
    main()
