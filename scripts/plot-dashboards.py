#!/usr/bin/env python3
"""Renders fedgate's two Grafana dashboards as PNG files from Prometheus data.

Grafana is not packaged in Debian, so `scripts/dashboard-snapshots.sh` runs the metrics test
that drives a live fedgate under traffic with a real Prometheus scraping it, saves every
dashboard query over the last 30 s (Prometheus's query_range JSON), and this script draws each
dashboard's panels, in the dashboard's order, with their titles and the same queries:
`plot-dashboards.py DATA_DIR OUT_DIR`.
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def panels(dashboard):
    """(title, type, [query index]) per panel, the indices counting "expr" in file order."""
    n = 0
    out = []
    for p in dashboard["panels"]:
        exprs = [t for t in p.get("targets", []) if "expr" in t]
        if p.get("type") == "row" or not exprs:
            continue
        out.append((p.get("title", ""), p.get("type"), list(range(n, n + len(exprs)))))
        n += len(exprs)
    return out


def series(data_dir, name, i):
    path = os.path.join(data_dir, "%s-%d.json" % (name, i))
    try:
        body = json.load(open(path))
    except (OSError, ValueError):
        return []
    return body.get("data", {}).get("result", [])


def label(metric):
    parts = ["%s=%s" % (k, v) for k, v in sorted(metric.items()) if k != "__name__"]
    return ", ".join(parts) or metric.get("__name__", "value")


def render(data_dir, out_dir, name):
    dashboard = json.load(open(os.path.join(ROOT, "dashboards", name + ".json")))
    ps = panels(dashboard)
    cols = 3
    rows = (len(ps) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 6, rows * 3.2), squeeze=False)
    for ax, (title, kind, indices) in zip(axes.flat, ps):
        ax.set_title(title, fontsize=10)
        drawn = 0
        for i in indices:
            for s in series(data_dir, name, i):
                values = s.get("values", [])
                if not values:
                    continue
                t0 = float(values[0][0])
                xs = [float(t) - t0 for t, _ in values]
                ys = [float(v) if v not in ("NaN", "+Inf", "-Inf") else float("nan") for _, v in values]
                if kind == "stat":
                    ax.text(0.5, 0.5 - 0.15 * drawn, "%s: %.4g" % (label(s["metric"]), ys[-1]),
                            ha="center", va="center", fontsize=11, transform=ax.transAxes)
                else:
                    ax.plot(xs, ys, label=label(s["metric"])[:60])
                drawn += 1
        if kind == "stat":
            ax.set_axis_off()
        elif drawn:
            ax.legend(fontsize=6, loc="upper left")
            ax.set_xlabel("s", fontsize=7)
            ax.tick_params(labelsize=7)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(ps):]:
        ax.set_axis_off()
    fig.suptitle("%s (Prometheus data from the metrics test, rendered without Grafana)"
                 % dashboard.get("title", name), fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(os.path.join(out_dir, name + ".png"), dpi=80)


def main():
    data_dir, out_dir = sys.argv[1], sys.argv[2]
    for name in ["fedgate-overview", "fedgate-peers"]:
        render(data_dir, out_dir, name)


if __name__ == "__main__":
    main()
