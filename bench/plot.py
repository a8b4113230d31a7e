#!/usr/bin/env python3
"""Plot bench/results.json as log-scale horizontal bars grouped by scenario.

    python bench/plot.py results.json results.png      (run by bench/run.py with the venv's python)
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter


def _major(v, _):
    return "%g" % v


def _minor(v, _):
    # label 2x and 5x minor ticks too: ranges here often span less than a decade
    return ("%g" % v) if ("%.0e" % v)[0] in "25" else ""

COLORS = {"pytest": "#7f7f7f", "xdist": "#1f77b4", "upstream": "#ff7f0e", "ours": "#2ca02c"}


def main(src, dst):
    data = json.load(open(src))
    scens = [s for s in data["scenarios"] if s["rows"]]
    heights = [max(len(s["rows"]), 1) * 0.32 + 0.7 for s in scens]
    fig, axes = plt.subplots(len(scens), 1, figsize=(10, sum(heights) + 1.0),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    m = data["machine"]
    busy = max([s.get("foreign_load_cores") or 0 for s in data["scenarios"]] or [0])
    fig.suptitle("pytest-fast benchmark — %s, %s cores, Python %s, pytest %s%s" % (
        m["cpu_model"], m["nproc"], m.get("venv_python") or m["python"],
        m.get("venv_pytest") or m["pytest"], "  (quick)" if data["config"]["quick"] else "")
        + ("\nWARNING: other processes used up to %.2f cores during this run — timings are noisy"
           % busy if busy > 0.25 else ""), fontsize=10)
    for ax, s in zip(axes[:, 0], scens):
        mem = s.get("kind") == "memory"
        key = "total_pss_mb" if mem else "median"
        rows = list(reversed(s["rows"]))
        labels, vals, lo, hi, cols = [], [], [], [], []
        for r in rows:
            v = r.get(key) if r["status"] == "ok" else None
            labels.append(r["label"] + ("" if v is not None else "  (%s)" % r["status"]))
            vals.append(v or 0)
            if v is not None and not mem:
                lo.append(v - r["min"])
                hi.append(r["max"] - v)
            else:
                lo.append(0)
                hi.append(0)
            cols.append(COLORS.get(r["family"], "#999999"))
        y = range(len(rows))
        present = [v for v in vals if v > 0]
        ax.barh(list(y), [v if v > 0 else float("nan") for v in vals], color=cols,
                xerr=None if mem else [lo, hi], capsize=2, error_kw={"lw": 0.8})
        ax.set_xscale("log")
        ax.set_yticks(list(y))
        ax.set_yticklabels(labels, fontsize=8)
        unit = "MB (total PSS)" if mem else "seconds (median, min–max)"
        ax.set_title("%s — %s" % (s["title"], unit), fontsize=9, loc="left")
        if present:
            lo_x, hi_x = min(present), max(present)
            ax.set_xlim(lo_x / 2.5, hi_x * 3.0)
            for yi, v in zip(y, vals):
                if v > 0:
                    ax.text((v * 1.04) if mem else (v + hi[yi]) * 1.05, yi,
                            ("%.0f MB" % v) if mem else ("%.3f s" % v if v < 10 else "%.2f s" % v),
                            va="center", fontsize=7)
        ax.xaxis.set_major_formatter(FuncFormatter(_major))
        ax.xaxis.set_minor_formatter(FuncFormatter(_minor))
        ax.tick_params(axis="x", which="both", labelsize=7)
        ax.grid(axis="x", which="both", alpha=0.25)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
