"""LMCache multi-process mode: warm TTFT with lmcache_ascend's ops vs LMCache's default CPU backend.

For each backend (``ascend_cpu``: LMCache's CPU backend with ``lmcache_ascend.ops``
bound; ``default``: LMCache's CPU backend on its torch baseline), a fresh
``lmcache server`` and a fresh vLLM CPU engine (``LMCacheMPConnector``,
engine-driven transfers into the server's shared-memory L1 pool) run the same
prompts: one short warm-up, ``--prompts`` cold prompts with a
``--prefix-tokens`` prefix (computed and stored), then the same prompts again
(loaded). The model is the KV-heavy random Llama of ``e2e_vllm.py``
(64 KiB of KV per token), so moving KV is a visible part of TTFT.

Prints a table, writes ``benchmarks/results/e2e_mp.png``; the last line is one
JSON object with ``ours_over_upstream`` (median warm TTFT, ascend_cpu /
default) and the raw times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, bar_chart, format_table, print_json_last  # noqa: E402

from lmcache_ascend.integrations.lmcache import ASCEND_CPU_BACKEND as BACKEND_NAME  # noqa: E402
from lmcache_ascend.integrations.lmcache.mp_server import running_server  # noqa: E402
from lmcache_ascend.integrations.vllm.runner import run_engine  # noqa: E402
from lmcache_ascend.tools.tiny_model import KV_HEAVY, build, prompt_token_ids  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = {"ascend_cpu": BACKEND_NAME, "default": None}


def run_backend(name: str, a: argparse.Namespace, prompts: list[list[int]], workdir: Path) -> tuple[list[dict], list[dict]]:
    backend = BACKENDS[name]
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": a.cores, "VLLM_CPU_KVCACHE_SPACE": str(a.kv_cache_gib)}
    warmup = prompt_token_ids(300, offset=4242)
    options = {
        "model_dir": str(a.model_dir),
        "max_model_len": a.prefix_tokens + 64,
        "max_tokens": 4,
        "device_backend": backend,
        "prompts": [warmup, *prompts, *prompts],
    }
    with running_server(backend=backend, log_path=workdir / f"server-{name}.log", l1_gb=a.l1_gib, shm_name=f"lmc_bench_{name}") as srv:
        results = run_engine({**options, "mp_port": srv.port}, rpc_dir=workdir, env=env)[1:]
    return results[: len(prompts)], results[len(prompts) :]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "kv-heavy-llama")
    p.add_argument("--prefix-tokens", type=int, default=4096)
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--l1-gib", type=float, default=3.0, help="the server's L1 (shared memory) pool")
    p.add_argument("--kv-cache-gib", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE")
    p.add_argument("--cores", default=f"0-{(os.cpu_count() or 1) - 1}", help="VLLM_CPU_OMP_THREADS_BIND")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", type=Path, default=RESULTS_DIR / "e2e_mp.png")
    a = p.parse_args(argv)

    spec = KV_HEAVY
    moved = a.prefix_tokens // 256 * 256 * spec.kv_bytes_per_token
    print(f"[1/4] model {a.model_dir}: {spec.num_layers} layers, {spec.num_kv_heads} KV heads x {spec.head_dim}, "
          f"{spec.kv_bytes_per_token // 1024} KiB KV per token; {a.prefix_tokens}-token prompts move {moved / 2**20:.0f} MiB", flush=True)
    build(a.model_dir, spec)
    prompts = [prompt_token_ids(a.prefix_tokens, offset=31 * (i + 1)) for i in range(a.prompts)]
    runs = {}
    with tempfile.TemporaryDirectory(prefix="lmcache-ascend-mp-bench-") as tmp:
        for i, name in enumerate(BACKENDS, start=2):
            print(f"[{i}/4] lmcache server + vLLM CPU, device backend {name}", flush=True)
            runs[name] = run_backend(name, a, prompts, Path(tmp))

    def med(results: list[dict]) -> float:
        return statistics.median(r["ttft_s"] for r in results) * 1000

    rows, same = [], True
    for name, (cold, warm) in runs.items():
        same &= all(c["token_ids"] == w["token_ids"] for c, w in zip(cold, warm))
        rows.append([name, med(cold), med(warm), min(w["from_lmcache"] for w in warm)])
    ours, upstream = med(runs["ascend_cpu"][1]), med(runs["default"][1])
    print(f"[4/4] results (median of {a.prompts} prompts)")
    print(format_table(["device backend", "cold TTFT ms", "warm TTFT ms", "tokens from LMCache"], rows))
    print(f"warm TTFT ascend_cpu / default: {ours / upstream:.2f}; greedy outputs identical cold vs warm: {'yes' if same else 'NO'}")
    plot = bar_chart(a.plot, f"LMCache MP mode, vLLM CPU, {a.prefix_tokens}-token prompt", [r[0] for r in rows],
                     {"cold TTFT": [r[1] for r in rows], "warm TTFT": [r[2] for r in rows]}, "ms")
    if plot:
        print(f"plot: {plot}")
    if a.json:
        print_json_last({
            "ours_over_upstream": ours / upstream,
            "warm_ttft_ms_ascend_cpu": ours,
            "warm_ttft_ms_default": upstream,
            "cold_ttft_ms_ascend_cpu": med(runs["ascend_cpu"][0]),
            "cold_ttft_ms_default": med(runs["default"][0]),
            "kv_bytes_per_prompt": moved,
            "identical_outputs": same,
        })
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
