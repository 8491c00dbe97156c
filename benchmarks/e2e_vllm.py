"""End-to-end benchmark: vLLM CPU time-to-first-token with and without the connector.

On a KV-heavy, compute-light random Llama (16 layers, hidden 256, 4 KV heads of
head_dim 256: 64 KiB of KV per token), so moving KV is a visible part of TTFT,
each of ``--prompts`` distinct prompts with a ``--prefix-tokens`` prefix is sent:

- ``baseline``: vLLM CPU without a KV connector (its prefix cache off);
- ``cold``: with LMCacheAscendConnectorV1Dynamic, first time (computed + stored);
- ``warm``: the same prompts again (loaded from LMCache's CPU tier).

Each configuration runs in its own engine process after one warm-up prompt,
with the same OpenMP core binding (``VLLM_CPU_OMP_THREADS_BIND``, default: all
cores): left on ``auto``, vLLM reserves a different number of cores with and
without a KV connector, which would compare different compute budgets.
Prints a table, writes ``benchmarks/results/e2e_vllm.png``; the last line is one
JSON object with ``warm_over_cold`` (warm / cold TTFT) and ``store_overhead``
(cold with the connector / baseline), medians over the prompts.
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

from lmcache_ascend.integrations.vllm.runner import run_engine  # noqa: E402
from lmcache_ascend.tools.tiny_model import KV_HEAVY, build, prompt_token_ids  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _median_ms(results: list[dict]) -> float:
    return statistics.median(r["ttft_s"] for r in results) * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "kv-heavy-llama")
    p.add_argument("--prefix-tokens", type=int, default=2048)
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--cores", default=f"0-{(os.cpu_count() or 1) - 1}", help="VLLM_CPU_OMP_THREADS_BIND for every run")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    p.add_argument("--plot", type=Path, default=RESULTS_DIR / "e2e_vllm.png")
    a = p.parse_args(argv)

    spec = KV_HEAVY
    print(f"[1/4] model {a.model_dir}: {spec.num_layers} layers, hidden {spec.hidden_size}, "
          f"{spec.num_kv_heads} KV heads x {spec.head_dim} (bf16) = {spec.kv_bytes_per_token // 1024} KiB KV per token", flush=True)
    build(a.model_dir, spec)
    warmup = prompt_token_ids(a.prefix_tokens, offset=999)
    prompts = [prompt_token_ids(a.prefix_tokens, offset=17 * (i + 1)) for i in range(a.prompts)]
    common = {"model_dir": str(a.model_dir), "max_model_len": a.prefix_tokens + 64, "max_tokens": 4, "cpu_gib": 4.0}

    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": a.cores, "VLLM_CPU_KVCACHE_SPACE": "2"}
    with tempfile.TemporaryDirectory(prefix="lmcache-ascend-bench-") as rpc:
        print(f"[2/4] baseline: vLLM CPU without connector (cores {a.cores})", flush=True)
        base = run_engine({**common, "connector": False, "prompts": [warmup, *prompts]}, rpc_dir=Path(rpc), env=env)[1:]
        print("[3/4] with LMCacheAscendConnectorV1Dynamic: cold, then warm", flush=True)
        both = run_engine({**common, "connector": True, "prompts": [warmup, *prompts, *prompts]}, rpc_dir=Path(rpc), env=env)[1:]
    cold, warm = both[: a.prompts], both[a.prompts :]

    identical = all(c["token_ids"] == w["token_ids"] for c, w in zip(cold, warm))
    hits = [w["from_lmcache"] for w in warm]
    moved = a.prefix_tokens // 256 * 256 * spec.kv_bytes_per_token
    b_ms, c_ms, w_ms = _median_ms(base), _median_ms(cold), _median_ms(warm)
    print(f"[4/4] results (median of {a.prompts} prompts of {a.prefix_tokens} tokens; "
          f"KV stored / loaded per prompt: {moved / 2**20:.0f} MiB)")
    print(format_table(
        ["run", "TTFT ms", "tokens from LMCache", "vs baseline"],
        [["baseline (no connector)", b_ms, 0, 1.0], ["cold (compute + store)", c_ms, cold[0]["from_lmcache"], c_ms / b_ms],
         ["warm (load)", w_ms, min(hits), w_ms / b_ms]],
    ))
    print(f"greedy outputs identical cold vs warm: {'yes' if identical else 'NO'}")
    plot = bar_chart(a.plot, f"vLLM CPU TTFT, {a.prefix_tokens}-token prompt, {spec.kv_bytes_per_token // 1024} KiB KV/token",
                     ["baseline", "cold (store)", "warm (load)"], {"TTFT (ms)": [b_ms, c_ms, w_ms]}, "ms")
    if plot:
        print(f"plot: {plot}")
    if a.json:
        print_json_last({
            "warm_over_cold": w_ms / c_ms,
            "store_overhead": c_ms / b_ms,
            "baseline_ttft_ms": b_ms,
            "cold_ttft_ms": c_ms,
            "warm_ttft_ms": w_ms,
            "tokens_from_lmcache": min(hits),
            "kv_bytes_per_prompt": moved,
            "identical_outputs": identical,
        })
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
