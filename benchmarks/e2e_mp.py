"""LMCache multi-process mode: warm TTFT with lmcache_ascend's ops vs LMCache's default CPU backend.

For each backend (``ascend_cpu``: LMCache's CPU backend with ``lmcache_ascend.ops``
bound; ``default``: LMCache's CPU backend on its torch baseline), a fresh
``lmcache server`` and a fresh vLLM CPU engine (``LMCacheMPConnector``,
engine-driven transfers into the server's shared-memory L1 pool) run the same
prompts: one short warm-up, ``--prompts`` cold prompts with a
``--prefix-tokens`` prefix (computed and stored), then the same prompts again
(loaded). The model is the KV-heavy random Llama of ``e2e_vllm.py``
(64 KiB of KV per token), so moving KV is a visible part of TTFT.

Two peers run the same prompts in the same run, without a server: vLLM's own
prefix cache (no connector, no copy: the floor of a warm request, which still
computes its last token over the whole prompt) and this project's in-process
connector (``LMCacheAscendConnectorV1Dynamic``, LMCache's CPU tier in the
engine process).

Every set-up sends each prompt cold once and warm ``--warm-passes`` times (one
sample each), and runs ``--rounds`` times, interleaved (all set-ups, then all
again): a shared host's slow minutes then fall on every set-up alike rather
than on whichever ran during them; medians pool every warm sample.

Prints a table, writes ``benchmarks/results/e2e_mp.png``; the last line is one
JSON object with ``ours_over_upstream`` (median warm TTFT, ascend_cpu /
default; ``ours_over_upstream_per_round`` its spread), ``overhead_ours_over_upstream`` (the same for the time above the
prefix-cache floor: what multi-process mode adds to a warm request),
``mp_over_in_process`` (ascend_cpu / in-process connector), the CPU model and
the raw times. For multi-process runs it also reports the server's retrieve
window (``Retrieved N tokens in S seconds`` in the server log: from
``prepare_retrieve`` to ``commit_retrieve``, the engine's copy out of the shared
pool included), so a warm TTFT splits into that window and everything else
(lookup round trips, scheduling, the last token's forward pass).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # testkit/: the harness beside the package, not in the wheel
from common import RESULTS_DIR, bar_chart, cpu_model, format_table, print_json_last  # noqa: E402
from warm_rounds import RoundRuns, add_args, check_args, median_ttft_ms, per_round_ratio, pooled, warm_matches_cold  # noqa: E402

from lmcache_ascend.integrations.lmcache import ASCEND_CPU_BACKEND as BACKEND_NAME  # noqa: E402
from testkit.mp_server import running_server  # noqa: E402
from testkit.vllm_runner import run_engine  # noqa: E402
from testkit.tiny_model import KV_HEAVY, build, prompt_token_ids  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = {"ascend_cpu": BACKEND_NAME, "default": None}
PEERS = {
    "prefix_cache": "vLLM's prefix cache, no connector (the floor of a warm request)",
    "in_process": "this project's in-process connector (LMCache CPU tier in the engine process)",
}
ROW_NAMES = {
    "ascend_cpu": "MP mode, ascend_cpu",
    "default": "MP mode, LMCache default",
    "prefix_cache": "vLLM prefix cache (no copy)",
    "in_process": "in-process connector",
}


def _options(a: argparse.Namespace, prompts: list[list[int]]) -> dict:
    warmup = prompt_token_ids(300, offset=4242)
    return {
        "model_dir": str(a.model_dir),
        "max_model_len": a.prefix_tokens + 64,
        "max_tokens": 4,
        "prompts": [warmup, *prompts * (1 + a.warm_passes)],
    }


def _env(a: argparse.Namespace) -> dict[str, str]:
    return {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": a.cores, "VLLM_CPU_KVCACHE_SPACE": str(a.kv_cache_gib)}


def _cold_warm(results: list[dict], n: int) -> tuple[list[dict], list[dict]]:
    results = results[1:]  # the warm-up
    return results[:n], results[n:]


# LMCache's server logs the window from prepare_retrieve to commit_retrieve of
# each request (engine_driven_transfer.py): the engine's copy out of the shared
# L1 pool happens inside it.
_RETRIEVED = re.compile(r"Retrieved (\d+) tokens in ([0-9.]+) seconds")


def retrieve_windows_ms(log: str) -> list[float]:
    """The server's retrieve windows, in log order, in milliseconds."""
    return [float(m.group(2)) * 1000 for m in _RETRIEVED.finditer(log)]


def run_backend(
    name: str, a: argparse.Namespace, prompts: list[list[int]], workdir: Path, rnd: int = 0
) -> tuple[list[dict], list[dict], list[float]]:
    """Cold and warm results, and the server's retrieve windows of the warm prompts."""
    backend = BACKENDS[name]
    options = {**_options(a, prompts), "device_backend": backend}
    log_path = workdir / f"server-{name}-{rnd}.log"
    with running_server(backend=backend, log_path=log_path, l1_gb=a.l1_gib, shm_name=f"lmc_bench_{name}") as srv:
        results = run_engine({**options, "mp_port": srv.port}, rpc_dir=workdir, env=_env(a))
    windows = retrieve_windows_ms(log_path.read_text(errors="replace"))[-len(prompts) * a.warm_passes :]
    return (*_cold_warm(results, len(prompts)), windows)


def run_peer(peer: str, a: argparse.Namespace, prompts: list[list[int]], workdir: Path) -> tuple[list[dict], list[dict]]:
    """vLLM's prefix cache (``prefix_cache``) or the in-process connector (``in_process``)."""
    extra = {"connector": False, "prefix_caching": True} if peer == "prefix_cache" else {"connector": True, "cpu_gib": 4.0}
    return _cold_warm(run_engine({**_options(a, prompts), **extra}, rpc_dir=workdir, env=_env(a)), len(prompts))


def _run_all(a: argparse.Namespace, prompts: list[list[int]], steps: int) -> tuple[dict[str, RoundRuns], dict[str, list[float]]]:
    """Per set-up, its results round by round (``warm_rounds.RoundRuns``); per backend, every warm retrieve window."""
    runs: dict[str, RoundRuns] = {}
    windows: dict[str, list[float]] = {name: [] for name in BACKENDS}
    step = 1
    with tempfile.TemporaryDirectory(prefix="lmcache-ascend-mp-bench-") as tmp:
        for rnd in range(a.rounds):
            for name in BACKENDS:
                step += 1
                print(f"[{step}/{steps}] round {rnd + 1}/{a.rounds}, lmcache server + vLLM CPU, device backend {name}", flush=True)
                cold, warm, seen = run_backend(name, a, prompts, Path(tmp), rnd)
                runs.setdefault(name, []).append((cold, warm))
                windows[name] += seen
            for peer, what in PEERS.items():
                step += 1
                print(f"[{step}/{steps}] round {rnd + 1}/{a.rounds}, {what}", flush=True)
                runs.setdefault(peer, []).append(run_peer(peer, a, prompts, Path(tmp)))
    return runs, windows


def add_workload_args(p: argparse.ArgumentParser, plot_name: str) -> None:
    """The model, prompts, rounds, server and engine options (``mp_timeline.py`` shares them)."""
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "kv-heavy-llama")
    # One past a whole number of blocks and chunks: every run then computes only
    # the last token, so vLLM's prefix cache is the floor of a warm request.
    p.add_argument("--prefix-tokens", type=int, default=4097)
    p.add_argument("--prompts", type=int, default=3)
    add_args(p)
    p.add_argument("--l1-gib", type=float, default=3.0, help="the server's L1 (shared memory) pool")
    p.add_argument("--kv-cache-gib", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE")
    p.add_argument("--cores", default=f"0-{(os.cpu_count() or 1) - 1}", help="VLLM_CPU_OMP_THREADS_BIND")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", type=Path, default=RESULTS_DIR / plot_name)


def kv_bytes_moved(a: argparse.Namespace) -> int:
    """The KV a warm request loads: its whole 256-token chunks."""
    return a.prefix_tokens // 256 * 256 * KV_HEAVY.kv_bytes_per_token


def prepare_workload(a: argparse.Namespace, steps: int) -> list[list[int]]:
    """Builds the model (step 1 of ``steps``) and returns the prompts."""
    spec = KV_HEAVY
    moved = kv_bytes_moved(a)
    print(f"[1/{steps}] model {a.model_dir}: {spec.num_layers} layers, {spec.num_kv_heads} KV heads x {spec.head_dim}, "
          f"{spec.kv_bytes_per_token // 1024} KiB KV per token; {a.prefix_tokens}-token prompts move {moved / 2**20:.0f} MiB", flush=True)
    build(a.model_dir, spec)
    return [prompt_token_ids(a.prefix_tokens, offset=31 * (i + 1)) for i in range(a.prompts)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_args(p, "e2e_mp.png")
    a = p.parse_args(argv)
    check_args(p, a)

    steps = 2 + a.rounds * (len(BACKENDS) + len(PEERS))
    prompts = prepare_workload(a, steps)
    per_round, windows = _run_all(a, prompts, steps)
    runs = {name: pooled(rs) for name, rs in per_round.items()}

    same = all(warm_matches_cold(rs, a.prompts) for rs in per_round.values())
    rows = [[ROW_NAMES[name], median_ttft_ms(cold), median_ttft_ms(warm), min(w["from_lmcache"] for w in warm)]
            for name, (cold, warm) in runs.items()]
    warm_ms = {name: median_ttft_ms(warm) for name, (_, warm) in runs.items()}
    ours, upstream, floor = warm_ms["ascend_cpu"], warm_ms["default"], warm_ms["prefix_cache"]
    by_round = per_round_ratio(per_round["ascend_cpu"], per_round["default"])
    print(f"[{steps}/{steps}] results on {cpu_model()} (median of {len(runs['ascend_cpu'][1])} warm samples per set-up: "
          f"{a.prompts} prompts x {a.warm_passes} passes x {a.rounds} rounds)")
    for row, name in zip(rows, runs):
        row.append(statistics.median(windows[name]) if windows.get(name) else None)
    print(format_table(["run", "cold TTFT ms", "warm TTFT ms", "tokens reused", "server retrieve window ms"], rows))
    print(f"warm TTFT ascend_cpu / default: {ours / upstream:.2f} (by round: {' / '.join(f'{r:.2f}' for r in by_round)}); "
          f"above the prefix-cache floor ({floor:.0f} ms): {(ours - floor) / (upstream - floor):.2f}; ascend_cpu / in-process "
          f"connector: {ours / warm_ms['in_process']:.2f}; greedy outputs identical cold vs warm: {'yes' if same else 'NO'}")
    plot = bar_chart(a.plot, f"LMCache MP mode, vLLM CPU, {a.prefix_tokens}-token prompt", [r[0] for r in rows],
                     {"cold TTFT": [r[1] for r in rows], "warm TTFT": [r[2] for r in rows]}, "ms")
    if plot:
        print(f"plot: {plot}")
    if a.json:
        print_json_last({
            "ours_over_upstream": ours / upstream,
            "ours_over_upstream_per_round": by_round,
            "overhead_ours_over_upstream": (ours - floor) / (upstream - floor),
            "mp_over_in_process": ours / warm_ms["in_process"],
            "warm_ttft_ms_ascend_cpu": ours,
            "warm_ttft_ms_default": upstream,
            "warm_ttft_ms_prefix_cache": floor,
            "warm_ttft_ms_in_process": warm_ms["in_process"],
            "server_retrieve_ms_ascend_cpu": statistics.median(windows["ascend_cpu"]) if windows["ascend_cpu"] else None,
            "server_retrieve_ms_default": statistics.median(windows["default"]) if windows["default"] else None,
            "cold_ttft_ms_ascend_cpu": median_ttft_ms(runs["ascend_cpu"][0]),
            "cold_ttft_ms_default": median_ttft_ms(runs["default"][0]),
            "warm_samples": len(runs["ascend_cpu"][1]),
            "rounds": a.rounds,
            "kv_bytes_per_prompt": kv_bytes_moved(a),
            "identical_outputs": same,
            "cpu": cpu_model(),
        })
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
