"""The main panels of the Grafana dashboard (manifests/monitoring/dashboard.json), drawn from the data
a real Prometheus returned for the dashboard's own queries in gate_dashboard.rs's run.

usage: plot_dashboard.py dashboard-data.json dashboard.png   (`just dashboard-png` runs it all)
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# (panel title, stacked, y label): the panels a reader looks at first.
MAIN = [
    ("Requests by decision", True, "requests/s"),
    ("Responses by component", False, "requests/s"),
    ("Review latency", False, "ms"),
    ("Apiserver calls", False, "per second"),
    ("Decision cache hit ratio", False, "ratio"),
    ("Reviews in flight", False, "reviews"),
]
# Shading for the run's apiserver episodes (gate_dashboard.rs, traffic()), in their order.
EPISODE_COLORS = ["#f2cf5b", "#e15759"]


def main(src, dst):
    with open(src) as f:
        data = json.load(f)
    start, seconds = data["start"], data["seconds"]
    panels = {p["title"]: p for p in data["panels"]}
    fig, axes = plt.subplots(3, 2, figsize=(13, 10.5), squeeze=False)
    for ax, (title, stacked, ylabel) in zip(axes.flat, MAIN):
        panel = panels[title]
        series = [s for s in panel["series"] if any(v != 0 for _, v in s["points"])]
        # Up to 20 series apart (Responses by component has one per listener and status class).
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
        for (label, lo, hi), color in zip(data["episodes"], EPISODE_COLORS):
            ax.axvspan(lo - start, hi - start, color=color, alpha=0.15, lw=0, label=label)
        if stacked and series:
            # One common time axis; a series without a sample at a time counts 0 there.
            times = sorted({t for s in series for t, _ in s["points"]})
            ys = [[dict(s["points"]).get(t, 0.0) for t in times] for s in series]
            ax.stackplot([t - start for t in times], ys, labels=[s["legend"] for s in series], alpha=0.8)
        else:
            for s in series:
                ax.plot([t - start for t, _ in s["points"]], [v for _, v in s["points"]], label=s["legend"], lw=1.4)
        ax.set_title(title, fontsize=11)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("seconds into the run")
        ax.set_xlim(0, data["end"] - start)
        ax.set_ylim(bottom=0)
        if title == "Decision cache hit ratio":
            ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", ncol=2, framealpha=0.8)
    fig.suptitle(
        "metrics-gate dashboard, main panels: a live gate scraped by Prometheus every "
        f"{data['step']} s, rates over {data['rate_interval']} s ({seconds} s of traffic; gate_dashboard.rs)",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(dst, dpi=90)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
