"""Plot of `just bench`: throughput and p99 latency per setup, payload and concurrency.

usage: plot.py results.json results.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {
    "a": "a: fake directly",
    "b": "b: bare Envoy",
    "c": "c: metrics-gate, warm",
    "d": "d: metrics-gate, new token",
    "e": "e: HAProxy (seed)",
}
COLORS = {"a": "#9e9e9e", "b": "#4e79a7", "c": "#59a14f", "d": "#b6d7a8", "e": "#e15759"}


def main(src, dst):
    with open(src) as f:
        report = json.load(f)
    runs = report["runs"]
    payloads = [p for p in ("225k", "27k") if any(r["payload"] == p for r in runs)]
    conc = sorted({r["connections"] for r in runs})
    setups = [s for s in "abcde" if any(r["setup"] == s for r in runs)]
    fig, axes = plt.subplots(len(payloads), 2, figsize=(12, 4.2 * len(payloads)), squeeze=False)
    width = 0.8 / len(setups)
    for row, payload in enumerate(payloads):
        for col, (key, title, scale) in enumerate(
            [("rps", "requests/s", 1.0), ("p99_us", "p99 latency (ms, log)", 1e-3)]
        ):
            ax = axes[row][col]
            for i, s in enumerate(setups):
                xs, ys = [], []
                for j, c in enumerate(conc):
                    hit = [r for r in runs if r["setup"] == s and r["payload"] == payload and r["connections"] == c]
                    if hit:
                        xs.append(j + (i - (len(setups) - 1) / 2) * width)
                        ys.append(hit[0][key] * scale)
                ax.bar(xs, ys, width, label=LABELS[s], color=COLORS[s])
            ax.set_xticks(range(len(conc)))
            ax.set_xticklabels([f"{c} conn." for c in conc])
            body = report["payload_bytes"].get(payload, 0) // 1000
            ax.set_title(f"{title} — {body} KB body")
            if key == "p99_us":
                ax.set_yscale("log")
            ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(setups), fontsize=9)
    fig.suptitle(
        f"metrics-gate bench, {report['date']}, {report['nproc']} CPUs, Envoy and HAProxy on one core"
        + (" (QUICK RUN)" if report.get("quick") else ""),
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
