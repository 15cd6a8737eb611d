"""Draws keel-bench results: python3 chart.py RESULTS.json OUT.png (needs matplotlib)."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"direct": "#888888", "iptables": "#d62728", "keel": "#1f77b4"}


def main(results_path, out_path):
    with open(results_path) as f:
        rows = json.load(f)
    scales = sorted({r["services"] for r in rows})
    datapaths = [d for d in ("direct", "iptables", "keel") if any(r["datapath"] == d for r in rows)]
    by = {(r["services"], r["datapath"]): r for r in rows}

    def ratio(scale, dp, field):
        row, ref = by.get((scale, dp)), by.get((scale, "direct"))
        if not row or not ref or row.get(field) is None or not ref.get(field):
            return None
        return row[field] / ref[field]

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    panels = [
        (axes[0][0], "conn_per_s", "New connections/s, ratio to direct"),
        (axes[0][1], "rr_per_s", "Keep-alive requests/s, ratio to direct"),
        (axes[1][0], "gbit_per_s", "Single-stream throughput, ratio to direct"),
    ]
    xs = range(len(scales))
    width = 0.8 / max(len(datapaths), 1)
    for ax, field, title in panels:
        for i, dp in enumerate(datapaths):
            values = [ratio(s, dp, field) for s in scales]
            pos = [x + (i - (len(datapaths) - 1) / 2) * width for x in xs]
            bars = ax.bar(pos, [v or 0 for v in values], width, label=dp, color=COLORS.get(dp))
            for bar, v, s in zip(bars, values, scales):
                absolute = (by.get((s, dp)) or {}).get(field)
                if v is None:
                    label = "n/a"
                elif field == "gbit_per_s":
                    label = f"{v:.2f}\n{absolute:.1f}"
                else:
                    label = f"{v:.2f}\n{absolute:,.0f}"
                ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="black", linewidth=0.6, linestyle="--")
        ax.set_xticks(list(xs), [f"{s:,}" for s in scales])
        ax.set_xlabel("services")
        ax.set_ylim(0, 1.5)
        ax.set_title(title)
        ax.legend(loc="upper center", ncol=len(datapaths), fontsize=8)

    ax = axes[1][1]
    for dp in datapaths:
        points = [(s, by[(s, dp)]["program_s"]) for s in scales
                  if (s, dp) in by and by[(s, dp)].get("program_s") is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=dp,
                    color=COLORS.get(dp))
            for s, v in points:
                ax.annotate(f"{v:.3g} s", (s, v), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("services")
    ax.set_ylabel("seconds")
    ax.set_title("Time to program all services")
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(fontsize=8)

    fig.suptitle("Keel datapath benchmark (client pod -> node -> 3 backend pods, one run)")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
