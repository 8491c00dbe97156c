"""Remote-tier benchmark: one Redis against a Redis Cluster, same run, same machine.

Two measurements per tier (``redis://`` on one ``redis-server``; ``redis-cluster://``
on 3 primaries + 3 replicas, all on loopback; both with LMCache's CPU tier off, so
every hit is a remote get):

- throughput, on a real LMCache 0.5.6 engine with this package's paged connector
  (KV of the KV-heavy model: 16 layers x 4 KV heads x 256, bf16, 64 KiB per token):
  ``--chunks`` chunks of 256 tokens stored (timed until every put is acknowledged)
  and loaded back into other slots (``engine.retrieve``), ``--rounds`` rounds of new
  tokens; GB/s of KV moved, median over rounds;
- warm TTFT through vLLM CPU: one engine process per tier (same OpenMP binding)
  sends ``--prompts`` prompts of ``--prefix-tokens`` tokens twice; the second pass
  loads from the tier. Median TTFT of the warm pass, tokens served by LMCache and
  whether the greedy outputs equal the cold pass.

Prints a table, writes ``benchmarks/results/remote_tiers.png`` and, with
``--json``, one JSON object on the last line: ``cluster_over_single`` for store
and load GB/s and warm TTFT, the raw figures and the CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))  # tests.redis_topologies: the cluster set-up the tests use
from common import RESULTS_DIR, bar_chart, cpu_model, format_table, print_json_last  # noqa: E402

from testkit.lmcache_engines import EngineFactory, make_metadata, wait_idle  # noqa: E402
from testkit.remote_servers import RedisServer  # noqa: E402
from testkit.vllm_runner import run_engine  # noqa: E402
from testkit.tiny_model import KV_HEAVY, build, prompt_token_ids  # noqa: E402
from tests.redis_topologies import RedisClusterSet  # noqa: E402

CHUNK = 256
BLOCK = 16


def _engine(url: str, chunks: int) -> tuple[Any, list[torch.Tensor], str]:
    """A real LMCache engine on ``url`` (CPU tier only staging) and its paged KV (vLLM flash NHD)."""
    from lmcache_ascend.integrations.lmcache import redis_sentinel_fix, remote_get_guard
    from lmcache_ascend.integrations.lmcache.paged_connector import PagedKVConnector

    redis_sentinel_fix.fix_sentinel_connector()  # what the vLLM connector's worker installs
    remote_get_guard.guard_remote_gets()
    spec = KV_HEAVY
    meta = make_metadata(
        num_layers=spec.num_layers, num_heads=spec.num_kv_heads, head_size=spec.head_dim, chunk_size=CHUNK, model_name="bench/kv-heavy"
    )
    connector = PagedKVConnector.from_metadata(meta, device="cpu", layout_hints={"kv_layout": "NHD"})
    name = f"bench-{uuid.uuid4().hex[:8]}"
    engine = EngineFactory().build(
        connector, meta, instance_id=name, local_cpu=False, max_local_cpu_size=2.0, remote_url=url, remote_serde="naive", blocking_timeout_secs=60
    )
    blocks = 2 * chunks * CHUNK // BLOCK  # store from the first half, load into the second
    shape = (2, blocks, BLOCK, spec.num_kv_heads, spec.head_dim)
    kv = [torch.randn(shape).to(torch.bfloat16) for _ in range(spec.num_layers)]
    return engine, kv, name


def throughput(url: str, chunks: int, rounds: int) -> dict[str, float]:
    """Median store and load GB/s over ``rounds`` rounds of ``chunks`` new chunks."""
    from lmcache.v1.cache_engine import LMCacheEngineBuilder

    from lmcache_ascend.integrations.lmcache.remote_tier import close_remote_backends

    engine, kv, name = _engine(url, chunks)
    n = chunks * CHUNK
    store_slots = torch.arange(n, dtype=torch.long)
    load_slots = store_slots + n
    nbytes = n * KV_HEAVY.kv_bytes_per_token
    stores, loads = [], []
    try:
        for r in range(rounds):
            tokens = (torch.arange(n, dtype=torch.long) * (7 + 2 * r) + 11 * r) % 30000
            t0 = time.perf_counter()
            engine.store(tokens, kvcaches=kv, slot_mapping=store_slots)
            wait_idle(engine)
            stores.append(nbytes / (time.perf_counter() - t0) / 1e9)
            t0 = time.perf_counter()
            got = int(engine.retrieve(tokens, kvcaches=kv, slot_mapping=load_slots).sum())
            loads.append(nbytes / (time.perf_counter() - t0) / 1e9)
            if got != n:
                raise RuntimeError(f"{url}: round {r} loaded {got} of {n} tokens")
            for layer in kv:  # the loaded KV equals the stored KV, exactly
                if not torch.equal(layer[:, n // BLOCK :], layer[:, : n // BLOCK]):
                    raise RuntimeError(f"{url}: round {r} loaded KV differs from what was stored")
            wait_idle(engine)
    finally:
        close_remote_backends(engine)
        LMCacheEngineBuilder.destroy(name)
    return {"store_gbps": statistics.median(stores), "load_gbps": statistics.median(loads)}


def warm_ttft(url: str, a: argparse.Namespace, rpc: Path) -> dict[str, Any]:
    """vLLM CPU with this connector on ``url`` (CPU tier off): cold pass, then warm pass."""
    warmup = prompt_token_ids(a.prefix_tokens, offset=999)
    prompts = [prompt_token_ids(a.prefix_tokens, offset=17 * (i + 1)) for i in range(a.prompts)]
    env = {
        **os.environ, "VLLM_CPU_OMP_THREADS_BIND": a.cores, "VLLM_CPU_KVCACHE_SPACE": "2",
        "LMCACHE_REMOTE_URL": url, "LMCACHE_REMOTE_SERDE": "naive", "LMCACHE_BLOCKING_TIMEOUT_SECS": "60",
    }  # fmt: skip
    options = {"model_dir": str(a.model_dir), "max_model_len": a.prefix_tokens + 64, "max_tokens": 4,
               "connector": True, "lmcache_store": False, "prompts": [warmup, *prompts, *prompts]}  # fmt: skip
    out = run_engine(options, rpc_dir=rpc, env=env)[1:]
    cold, warm = out[: a.prompts], out[a.prompts :]
    return {
        "warm_ttft_ms": statistics.median(r["ttft_s"] for r in warm) * 1000,
        "cold_ttft_ms": statistics.median(r["ttft_s"] for r in cold) * 1000,
        "hit_tokens": min(r["from_lmcache"] for r in warm),
        "identical": all(c["token_ids"] == w["token_ids"] for c, w in zip(cold, warm, strict=True)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "kv-heavy-llama")
    p.add_argument("--chunks", type=int, default=16, help="chunks per throughput round (16 MiB each)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prefix-tokens", type=int, default=2000)
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--cores", default=f"0-{(os.cpu_count() or 1) - 1}", help="VLLM_CPU_OMP_THREADS_BIND")
    p.add_argument("--skip-vllm", action="store_true", help="throughput only")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", type=Path, default=RESULTS_DIR / "remote_tiers.png")
    a = p.parse_args(argv)
    for name in ("chunks", "rounds", "prefix_tokens", "prompts"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")

    print(f"[1/4] model {a.model_dir}: {KV_HEAVY.kv_bytes_per_token // 1024} KiB KV per token", flush=True)
    build(a.model_dir, KV_HEAVY)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="lmcache-ascend-remote-") as tmp:
        root = Path(tmp)
        single = RedisServer(root / "redis.log", max_memory_mb=4096)
        cluster = RedisClusterSet(root / "cluster")
        try:
            single.start()
            cluster.start()
            tiers = {"one Redis": single.url, "Redis Cluster (3+3)": cluster.url}
            for step, (tier, url) in enumerate(tiers.items(), start=2):
                print(f"[{step}/4] {tier}: {a.rounds} rounds of {a.chunks} chunks"
                      + ("" if a.skip_vllm else f", then vLLM CPU, {a.prompts} prompts x 2"), flush=True)  # fmt: skip
                results[tier] = throughput(url, a.chunks, a.rounds)
                if not a.skip_vllm:
                    rpc = root / f"rpc{step}"
                    rpc.mkdir()
                    results[tier].update(warm_ttft(url, a, rpc))
        finally:
            cluster.stop()
            single.stop()
    return report(results, a)


def report(results: dict[str, dict[str, Any]], a: argparse.Namespace) -> int:
    single, cluster = results["one Redis"], results["Redis Cluster (3+3)"]
    print(f"[4/4] results on {cpu_model()} (loopback; medians)")
    headers = ["tier", "store GB/s", "load GB/s", "warm TTFT ms", "cold TTFT ms", "tokens from tier", "same tokens"]
    rows = [[t, r["store_gbps"], r["load_gbps"], r.get("warm_ttft_ms"), r.get("cold_ttft_ms"), r.get("hit_tokens"),
             None if "identical" not in r else ("yes" if r["identical"] else "NO")] for t, r in results.items()]  # fmt: skip
    print(format_table(headers, rows))
    ratios = {
        "store_gbps": cluster["store_gbps"] / single["store_gbps"],
        "load_gbps": cluster["load_gbps"] / single["load_gbps"],
        "warm_ttft": cluster["warm_ttft_ms"] / single["warm_ttft_ms"] if "warm_ttft_ms" in single else None,
    }
    print("cluster / one Redis: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items() if v is not None))
    plot = bar_chart(a.plot, "LMCache remote tier on loopback: one Redis vs Redis Cluster",
                     ["store GB/s", "load GB/s"],
                     {t: [r["store_gbps"], r["load_gbps"]] for t, r in results.items()}, "GB/s")  # fmt: skip
    if plot:
        print(f"plot: {plot}")
    identical = all(r.get("identical", True) for r in results.values())
    if a.json:
        print_json_last({"cluster_over_single": ratios, "tiers": results, "chunks": a.chunks, "rounds": a.rounds,
                         "prompt_tokens": a.prefix_tokens, "identical_outputs": identical, "cpu": cpu_model()})  # fmt: skip
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
