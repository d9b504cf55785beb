#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""plot.py - dedup-bench's fallback plotter (gnuplot is tried first).

Reads series.csv (time_s, workload, mode, pss_kib, saved_kib, merger_cpu_s)
and draws memory saved over time: one panel per workload, one line per mode.
Usage: plot.py SERIES_CSV OUT_PNG. Needs python3-matplotlib.
"""
import csv
import sys
from collections import OrderedDict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    series, out = sys.argv[1], sys.argv[2]
    data = OrderedDict()
    with open(series, newline="") as f:
        for row in csv.DictReader(f):
            key = data.setdefault(row["workload"], OrderedDict())
            t, s = key.setdefault(row["mode"], ([], []))
            t.append(float(row["time_s"]))
            s.append(float(row["saved_kib"]) / 1024)
    if not data:
        return 1
    cols = min(3, len(data))
    rows = (len(data) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (wl, modes) in zip(axes.flat, data.items()):
        for mode, (t, s) in modes.items():
            ax.plot(t, s, label=mode, linewidth=1.8)
        ax.set_title(wl)
        ax.set_xscale("log")
        ax.set_xlim(left=0.05)
        ax.set_xlabel("seconds since go (log scale)")
        ax.set_ylabel("saved MiB (Pss)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(data):]:
        ax.set_visible(False)
    fig.suptitle("dedup-bench: memory saved over time")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
