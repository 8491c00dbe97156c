"""LMCache multi-process mode, phase by phase: where a warm request's time goes, per backend.

Runs the workload of ``e2e_mp.py`` (the KV-heavy random Llama, ``--prompts``
prompts of ``--prefix-tokens`` tokens, cold once and warm ``--warm-passes``
times, ``--rounds`` interleaved rounds) for ``ascend_cpu``, LMCache's
``default`` CPU backend and vLLM's prefix cache (the floor), with
``benchmarks/engine_trace`` on the engines' ``PYTHONPATH``: its hooks timestamp,
inside vLLM's EngineCore and worker processes, each step a warm request takes
(see ``engine_trace/trace_hooks.py``). Per warm request, the phases, which add
up to the engine's time to first token:

- ``lookup``: the request reaches the scheduler -> LMCache's lookup has
  answered (the lookup is an RPC; the scheduler asks again each step);
- ``to_load``: -> the worker asks the server for the chunks (the next step);
- ``prepare``: the server pins the chunks in its shared-memory pool (RPC);
- ``copy``: the engine copies them into vLLM's paged KV (the device backend's
  op, inside LMCache's ``scatter_cpu_to_paged_kv``);
- ``commit``: the server releases them (RPC);
- ``to_forward``: -> the step that runs the request's forward starts (vLLM
  learns the load finished from that step's output, and sleeps 1 ms after a
  step with no forward);
- ``forward``: that step (the last token's forward over the cached tokens).

Prints a table of medians, writes ``benchmarks/results/mp_timeline.png`` and,
with ``--json``, one JSON line: per set-up the median of every phase, the
median engine-side and client-side TTFT, ``ours_over_upstream`` (engine-side
TTFT) and ``ours_over_upstream_copy_free``: the same ratio if the copy took no
time at all, i.e. the best any copy kernel can reach on this host with this
protocol and this forward.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_model, format_table, print_json_last  # noqa: E402
from e2e_mp import BACKENDS, add_workload_args, prepare_workload, run_backend, run_peer  # noqa: E402
from engine_trace.trace_hooks import TRACE_DIR_ENV  # noqa: E402
from warm_rounds import check_args, median_ttft_ms  # noqa: E402

TRACE_PATH = Path(__file__).resolve().parent / "engine_trace"
SETUPS = {"ascend_cpu": "MP mode, ascend_cpu", "default": "MP mode, LMCache default", "prefix_cache": "vLLM prefix cache"}
PHASES = ("lookup", "to_load", "prepare", "copy", "commit", "to_forward", "forward")
Event = dict[str, Any]


def load_events(directory: Path) -> tuple[list[Event], list[str]]:
    """Every event of every process of one run, by start time, and the hooks no process found."""
    events: list[Event] = []
    for path in sorted(directory.glob("events-*.jsonl")):
        events += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    missing = sorted({e["hook"] for e in events if e["ev"] == "missing"})
    return sorted((e for e in events if e["ev"] != "missing"), key=lambda e: e["t0"]), missing


def _first(events: list[Event], ev: str, **match: Any) -> Event | None:
    return next((e for e in events if e["ev"] == ev and all(e.get(k) == v for k, v in match.items())), None)


def _inside(events: list[Event], ev: str, outer: Event) -> Event | None:
    """The first ``ev`` of ``outer``'s process that ran within ``outer``."""
    return next((e for e in events if e["ev"] == ev and e["pid"] == outer["pid"]
                 and outer["t0"] <= e["t0"] and e["t1"] <= outer["t1"]), None)


def request_timeline(events: list[Event], add: Event) -> dict[str, Any] | None:
    """The phases (ms) of the request that ``add`` (its ``add_request``) brought in; None if it never ran."""
    req, start = add["req"], add["t0"]
    hit = next((e for e in events if e["ev"] == "lookup" and e.get("req") == req and e.get("hit") is not None), None)
    looked = hit["t1"] if hit else start
    bounds = [start, looked]
    retrieve = _first(events, "retrieve", req=req)
    if retrieve is not None:
        parts = [_inside(events, name, retrieve) for name in ("prepare", "copy", "commit")]
        if None in parts:  # a part's hook is missing: the whole retrieve counts as the copy
            bounds += [retrieve["t0"], retrieve["t0"], retrieve["t1"], retrieve["t1"]]
        else:
            prepare, copy, commit = parts
            bounds += [prepare["t0"], prepare["t1"], copy["t1"], commit["t1"]]  # type: ignore[index]
    else:
        bounds += [looked] * 4
    forward = next((e for e in events if e["ev"] == "step" and e.get("executed") and e["t0"] >= bounds[-1]), None)
    if forward is None:
        return None
    bounds += [forward["t0"], forward["t1"]]
    timeline: dict[str, Any] = {p: (b - a) / 1e6 for p, a, b in zip(PHASES, bounds, bounds[1:])}
    timeline["total"] = (forward["t1"] - start) / 1e6
    timeline["hit"] = hit.get("hit") if hit else None
    return timeline


def warm_timelines(events: list[Event], num_warm: int) -> list[dict[str, Any]]:
    """The timelines of the last ``num_warm`` requests (the warm ones: the engine sends them last)."""
    timelines = [request_timeline(events, add) for add in events if add["ev"] == "add_request"]
    done = [t for t in timelines if t is not None]
    return done[-num_warm:]


def medians(timelines: list[dict[str, Any]]) -> dict[str, float]:
    return {key: statistics.median(t[key] for t in timelines) for key in (*PHASES, "total")}


def copy_free_ratio(ours: dict[str, float], upstream: dict[str, float]) -> float:
    """Engine-side TTFT ratio if ``ours`` copied in no time: what no copy kernel can beat."""
    return (ours["total"] - ours["copy"]) / upstream["total"]


def _run_setup(setup: str, a: argparse.Namespace, prompts: list[list[int]], workdir: Path, rnd: int) -> list[dict]:
    """One engine (and server), traced into ``workdir/<setup>-<rnd>``; the warm client-side results."""
    trace_dir = workdir / f"{setup}-{rnd}"
    trace_dir.mkdir()
    saved = {k: os.environ.get(k) for k in (TRACE_DIR_ENV, "PYTHONPATH")}
    os.environ[TRACE_DIR_ENV] = str(trace_dir)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TRACE_PATH), saved["PYTHONPATH"]]))
    try:
        if setup in BACKENDS:
            _, warm, _ = run_backend(setup, a, prompts, workdir, rnd)
        else:
            _, warm = run_peer(setup, a, prompts, workdir)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return warm


def _run_rounds(
    a: argparse.Namespace, setups: list[str], prompts: list[list[int]], steps: int, num_warm: int
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict]], set[str]]:
    """Every set-up ``--rounds`` times, interleaved: per set-up its warm timelines (the last
    ``num_warm`` requests of each engine) and client-side results, and the hooks some process
    could not find."""
    timelines: dict[str, list[dict[str, Any]]] = {s: [] for s in setups}
    client: dict[str, list[dict]] = {s: [] for s in setups}
    missing: set[str] = set()
    step = 1
    with tempfile.TemporaryDirectory(prefix="lmcache-ascend-mp-timeline-") as tmp:
        for rnd, setup in ((r, s) for r in range(a.rounds) for s in setups):
            step += 1
            print(f"[{step}/{steps}] round {rnd + 1}/{a.rounds}, {SETUPS[setup]} (traced)", flush=True)
            client[setup] += _run_setup(setup, a, prompts, Path(tmp), rnd)
            events, gone = load_events(Path(tmp) / f"{setup}-{rnd}")
            missing.update(gone)
            timelines[setup] += warm_timelines(events, num_warm)
    return timelines, client, missing


def _plot(path: Path, title: str, rows: dict[str, dict[str, float]]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.6 * len(rows)))
    names = list(rows)
    left = [0.0] * len(names)
    for phase in PHASES:
        widths = [rows[n][phase] for n in names]
        ax.barh([SETUPS[n] for n in names], widths, left=left, label=phase)
        left = [a + b for a, b in zip(left, widths)]
    ax.invert_yaxis()
    ax.set_xlabel("ms from the scheduler's add_request (median of each phase)")
    ax.set_title(title)
    ax.legend(ncol=len(PHASES), fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.35))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_args(p, "mp_timeline.png")
    p.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated, of: {', '.join(SETUPS)}")
    a = p.parse_args(argv)
    check_args(p, a)
    setups = [s.strip() for s in a.setups.split(",") if s.strip()]
    if not setups or any(s not in SETUPS for s in setups):
        p.error(f"--setups must name some of {', '.join(SETUPS)}, got {a.setups!r}")
    steps = 2 + a.rounds * len(setups)
    prompts = prepare_workload(a, steps)
    num_warm = a.prompts * a.warm_passes
    timelines, client, missing = _run_rounds(a, setups, prompts, steps, num_warm)
    if any(not t for t in timelines.values()):
        print(f"no traced warm request for {[s for s, t in timelines.items() if not t]}; missing hooks: {sorted(missing)}")
        return 1
    rows = {s: medians(t) for s, t in timelines.items()}
    ttft = {s: median_ttft_ms(r) for s, r in client.items()}
    print(f"[{steps}/{steps}] results on {cpu_model()} (medians of {num_warm * a.rounds} warm requests per set-up, ms)")
    table = [[phase, *(rows[s][phase] for s in setups)] for phase in (*PHASES, "total")]
    table.append(["TTFT seen by the client", *(ttft[s] for s in setups)])
    print(format_table(["phase", *(SETUPS[s] for s in setups)], table))
    if missing:
        print(f"hooks not found (their phases fold into the next one): {', '.join(sorted(missing))}")
    ratio = free = None
    if "ascend_cpu" in rows and "default" in rows:
        ratio, free = rows["ascend_cpu"]["total"] / rows["default"]["total"], copy_free_ratio(rows["ascend_cpu"], rows["default"])
        print(f"engine-side TTFT ascend_cpu / default: {ratio:.2f}; with a copy that took no time: {free:.2f}")
    plot = _plot(a.plot, f"LMCache MP mode, vLLM CPU, {a.prefix_tokens}-token warm request", rows)
    if plot:
        print(f"plot: {plot}")
    if a.json:
        print_json_last({
            "phases_ms": rows, "client_ttft_ms": ttft, "ours_over_upstream": ratio, "ours_over_upstream_copy_free": free,
            "warm_samples": num_warm * a.rounds, "missing_hooks": sorted(missing), "cpu": cpu_model(),
        })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
