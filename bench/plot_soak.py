"""Plot of `just soak`: answers per sampling interval (stacked by class, then the non-200s by
cause), Envoy's RSS with its least-squares fit, and Envoy's CPU; apiserver fault episodes shaded.

usage: plot_soak.py results.json soak.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FAULT_COLORS = {"down": "#e15759", "slow": "#f28e2b", "server-error": "#b07aa1"}
CLASS_COLORS = {
    "ok scrapes (200, whole body)": "#59a14f",
    "expected non-200": "#f1ce63",
    "unexpected": "#d62728",
    "hung": "#000000",
}


def cause_color(cause, i):
    """Expected causes in calm colours by family, unexpected ones in reds, hung in black."""
    if cause == "UNEXPECTED hung":
        return "#000000"
    if cause.startswith("UNEXPECTED"):
        return ["#d62728", "#8c1c13", "#ff5a36", "#a50f15"][i % 4]
    families = [
        ("scrape_503_during_down", "#f28e2b"),
        ("scrape_503_during_slow", "#ffbe7d"),
        ("scrape_503_during_server-error", "#e8a33d"),
        ("probe_new_token_503_during_down", "#4e79a7"),
        ("probe_new_token_503_during_slow", "#a0cbe8"),
        ("probe_new_token_503_during_server-error", "#7b6fb0"),
        ("probe_new_token_200", "#8cd17d"),
        ("scrape_401_from_component_during_down", "#d37295"),
        ("scrape_401_from_component_during_server-error", "#fabfd2"),
        ("probe_expired_token_401", "#9c755f"),
    ]
    for prefix, color in families:
        if cause.startswith(prefix):
            return color
    return ["#bab0ac", "#79706e", "#d4a6c8"][i % 3]


def shade(ax, episodes, end, label=False):
    for e in episodes:
        stop = e["end"] if e["end"] is not None else end
        ax.axvspan(e["start"] / 60, stop / 60, color=FAULT_COLORS.get(e["kind"], "#cccccc"), alpha=0.18,
                   lw=0, label=f"apiserver {e['kind']}" if label else None)


def fit(points):
    n = len(points)
    if n < 2:
        return None
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if sxx == 0:
        return None
    b = sum((p[0] - mx) * (p[1] - my) for p in points) / sxx
    return b, my - b * mx


def main(src, dst):
    with open(src) as f:
        r = json.load(f)
    samples = r["samples"]
    end = r["elapsed_s"]
    t = [s["t"] / 60 for s in samples]
    widths = []
    prev = 0.0
    for s in samples:
        widths.append((s["t"] - prev) / 60)
        prev = s["t"]
    left = [ti - w for ti, w in zip(t, widths)]

    breakdown = "heap_allocated_mib" in samples[0]
    rows = 5 if breakdown else 4
    fig, axes = plt.subplots(rows, 1, figsize=(13, 15 if breakdown else 13), sharex=True,
                             gridspec_kw={"height_ratios": [2.2, 2, 2, 1.6, 1.4][:rows]})

    # 1. every answer per interval, stacked by class
    ax = axes[0]
    classes = {
        "ok scrapes (200, whole body)": [s["interval"]["ok"] for s in samples],
        "expected non-200": [sum(s["interval"]["expected"].values()) for s in samples],
        "unexpected": [sum(v for k, v in s["interval"]["unexpected"].items() if k != "hung") for s in samples],
        "hung": [s["interval"]["hung"] for s in samples],
    }
    bottom = [0] * len(samples)
    for name, ys in classes.items():
        if name != "ok scrapes (200, whole body)" and not any(ys):
            continue
        ax.bar(left, ys, widths, bottom=bottom, align="edge", color=CLASS_COLORS[name], label=name, lw=0)
        bottom = [b + y for b, y in zip(bottom, ys)]
    shade(ax, r["episodes"], end, label=True)
    for e in r["events"]:
        w = e["what"]
        if w.startswith("proxy token swapped"):
            ax.axvline(e["t"] / 60, color="#4e79a7", ls="--", lw=1, label="proxy token swap")
        elif w.startswith("serving certificate swapped"):
            ax.axvline(e["t"] / 60, color="#76b7b2", ls="--", lw=1.4, label="serving certificate swap")
        elif w.startswith("scraper token: a short-lived"):
            ax.axvline(e["t"] / 60, color="#9c755f", ls=":", lw=1.4, label="short-lived scraper token")
        elif w.startswith("expired-token probe"):
            ax.axvline(e["t"] / 60, color="#9c755f", ls="-.", lw=1, label="expired-token probe")
    interval = r["sample_interval_s"]
    ax.set_ylabel(f"answers per {interval:.0f} s")
    ax.set_title(
        f"answers per interval — {r['totals']['requests']} scrapes at {r['achieved_rps']:.0f} req/s, "
        f"{sum(r['totals']['unexpected'].values())} unexpected, {r['totals']['hung']} hung "
        f"(scraper token rotated every minute)",
        fontsize=10,
    )
    handles, labels = ax.get_legend_handles_labels()
    seen = {}
    for h, lab in zip(handles, labels):
        seen.setdefault(lab, h)
    ax.set_ylim(0, max(bottom + [1]) * 1.5)
    ax.legend(seen.values(), seen.keys(), fontsize=8, ncol=4, loc="upper left")
    ax.grid(axis="y", alpha=0.3)

    # 2. the non-200s by cause
    ax = axes[1]
    causes = sorted({k for s in samples for k in s["interval"]["expected"]})
    unexpected = sorted({k for s in samples for k in s["interval"]["unexpected"]})
    series = [(c, [s["interval"]["expected"].get(c, 0) for s in samples]) for c in causes]
    series += [("UNEXPECTED " + c, [s["interval"]["unexpected"].get(c, 0) for s in samples]) for c in unexpected]
    bottom = [0] * len(samples)
    for i, (name, ys) in enumerate(series):
        ax.bar(left, ys, widths, bottom=bottom, align="edge", color=cause_color(name, i), label=name, lw=0)
        bottom = [b + y for b, y in zip(bottom, ys)]
    shade(ax, r["episodes"], end)
    ax.set_ylabel(f"non-200 per {interval:.0f} s (symlog)")
    ax.set_title("answers other than an ok scrape, by cause (fault episodes shaded)", fontsize=10)
    if series:
        # Symmetric log: a burst of 503s (a token rotated while the apiserver is down) and a few
        # probes in one picture.
        ax.set_yscale("symlog", linthresh=10)
        ax.set_ylim(0, max(bottom + [1]) * 8)
        ax.legend(fontsize=8, loc="upper left", ncol=2)
    else:
        ax.text(0.5, 0.5, "none", transform=ax.transAxes, ha="center")
    ax.grid(axis="y", alpha=0.3)

    # 3. RSS: total (left) and anonymous (right, what the verdict is on), each with its fit
    ax = axes[2]
    rs = r["rss"]

    def with_fit(ax, key, color, label, slope):
        ys = [s[key] for s in samples]
        ax.plot(t, ys, color=color, lw=1.5, label=label)
        pts = [(s["t"], s[key]) for s in samples if s["t"] >= rs["fit_from_s"]]
        f = fit(pts)
        if f:
            b, a = f
            xs = [pts[0][0], pts[-1][0]]
            ax.plot([x / 60 for x in xs], [a + b * x for x in xs], color=color, ls="--", lw=1,
                    label=f"fit after {rs['fit_from_s']:.0f} s: {slope:+.2f} MiB/h")
        lo, hi = min(ys), max(ys)
        pad = max(1.0, (hi - lo) * 0.3)
        ax.set_ylim(lo - pad, hi + pad)

    with_fit(ax, "rss_mib", "#4e79a7", "Envoy RSS (left)", rs["slope_mib_per_hour"])
    ax.set_ylabel("RSS, MiB")
    title = f"Envoy RSS: first {rs['first_mib']:.1f}, last {rs['last_mib']:.1f}, max {rs['max_mib']:.1f} MiB"
    if "rss_anon_mib" in samples[0]:
        ax2 = ax.twinx()
        with_fit(ax2, "rss_anon_mib", "#59a14f", "anonymous RSS (right)", rs["anon_slope_mib_per_hour"])
        ax2.set_ylabel("anonymous RSS, MiB")
        title += (f" — anonymous: first {rs['anon_first_mib']:.1f}, last {rs['anon_last_mib']:.1f}, "
                  f"max {rs['anon_max_mib']:.1f} MiB")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower right", ncol=2)
    else:
        ax.legend(fontsize=8, loc="lower right")
    shade(ax, r["episodes"], end)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)

    # 4. where the growth is
    if breakdown:
        ax = axes[3]
        first = samples[0]
        ax.plot(t, [s["rss_mib"] - first["rss_mib"] for s in samples], color="#4e79a7", lw=1.5, label="RSS")
        ax.plot(t, [s["heap_allocated_mib"] - first["heap_allocated_mib"] for s in samples], color="#e15759",
                lw=1.2, label="heap in use (server.memory_allocated)")
        ax.plot(t, [s["heap_size_mib"] - first["heap_size_mib"] for s in samples], color="#f28e2b", lw=1,
                ls="--", label="allocator heap (server.memory_heap_size)")
        ax.plot(t, [s["rss_anon_mib"] - first["rss_anon_mib"] for s in samples], color="#59a14f", lw=1.2,
                label="RSS anonymous (heaps, V8 and the filter VMs, stacks)")
        ax.plot(t, [s["rss_file_mib"] - first["rss_file_mib"] for s in samples], color="#b07aa1", lw=1.2,
                label="RSS file-backed (Envoy's code pages as first used)")
        shade(ax, r["episodes"], end)
        ax.axhline(0, color="#999999", lw=0.6)
        ax.set_ylabel("MiB since start")
        ax.set_title("Envoy's memory growth since the first sample, by where it is", fontsize=10)
        ax.legend(fontsize=8, loc="upper left", ncol=2)
        ax.grid(alpha=0.3)

    # 5. CPU
    ax = axes[-1]
    ax.plot(t, [s["cpu_pct"] for s in samples], color="#59a14f", lw=1, label="Envoy")
    ax.plot(t, [s.get("harness_cpu_pct", 0) for s in samples], color="#bab0ac", lw=1,
            label="soak harness (scraper, fakes, mock apiserver)")
    shade(ax, r["episodes"], end)
    ax.set_ylabel("% of one core")
    ax.set_xlabel("minutes")
    ax.set_title("CPU per interval", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)

    verdict = "PASS" if not r["problems"] else "FAIL"
    fig.suptitle(
        f"metrics-gate soak {r['date']} — {verdict}: {end / 60:.0f} min, {len(r['listeners'])} TLS listeners, "
        f"{r['rate_target']:.0f} req/s target, Envoy --concurrency {r['envoy_concurrency']}, {r['nproc']} CPUs",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(dst, dpi=100)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
