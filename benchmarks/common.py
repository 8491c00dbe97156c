"""Shared helpers for the benchmarks: timing, tables, JSON and plots.

Benchmarks compare peers measured in the same run and report ratios; absolute
times depend on the machine and its load.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def time_calls(fns: Sequence[Callable[[], object]], *, repeat: int, warmup: int = 1) -> float:
    """Median wall time in seconds of one call, cycling through ``fns``.

    Passing several callables over different buffers keeps the data cold in
    the CPU caches, as it is for KV chunks in serving.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    samples = []
    for i in range(max(repeat, len(fns))):
        fn = fns[i % len(fns)]
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join([line, rule, *body])


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"
    return "n/a" if v is None else str(v)


def _numeric(s: str) -> bool:
    return s.replace(".", "", 1).replace("x", "").isdigit()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform``) and the cores this process sees."""
    name = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name or platform.processor() or platform.machine()}, {cores} cores"


def print_json_last(payload: dict) -> None:
    """The machine-readable result: one JSON object on the last line."""
    print(json.dumps(payload, sort_keys=True))


def bar_chart(
    path: Path, title: str, groups: Sequence[str], series: dict[str, Sequence[float | None]], ylabel: str, *, headroom: float = 1.0
) -> Path | None:
    """Grouped bar chart; returns the path, or None when matplotlib is missing.

    ``headroom`` > 1 raises the y axis above the tallest bar (room for the legend).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(groups)), 4))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + i * width for g in range(len(groups))]
        ax.bar(xs, [v or 0 for v in values], width, label=name)
    ax.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))])
    ax.set_xticklabels(groups, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    if headroom > 1.0:
        ax.set_ylim(0, headroom * max((v or 0) for values in series.values() for v in values))
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
