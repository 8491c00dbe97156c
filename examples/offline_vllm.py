"""The main job: offline vLLM on CPU with LMCache offloading through lmcache_ascend.

Builds a small random-weight Llama locally (no download), starts vLLM CPU with
the ``LMCacheAscendConnectorV1Dynamic`` KV connector and LMCache's embedded
default tiers (local CPU memory + local disk), then sends one long prompt twice:

- cold: nothing cached; vLLM computes the prompt and LMCache stores its KV;
- warm: vLLM's own prefix cache is off, so every reused token must come from
  LMCache; the prompt's KV is loaded instead of recomputed.

It prints time-to-first-token for both, how many prompt tokens LMCache served,
and whether the greedy outputs are identical (they must be: the warm run
attends over KV that was stored and loaded, byte for byte).

    python examples/offline_vllm.py [--prompt-tokens 2048] [--layerwise]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def step(i: int, total: int, text: str) -> None:
    print(f"[{i}/{total}] {text}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "tiny-llama")
    p.add_argument("--prompt-tokens", type=int, default=2048)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--disk-dir", type=Path, default=None, help="local disk tier (default: a fresh temporary directory)")
    p.add_argument("--layerwise", action="store_true", help="LMCache layerwise mode (use_layerwise)")
    p.add_argument("--kv-cache-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    from lmcache_ascend.integrations.vllm.settings import kv_transfer_config, lmcache_env
    from lmcache_ascend.tools.tiny_model import build, prompt_token_ids

    total = 5
    step(1, total, f"model: {args.model_dir}")
    build(args.model_dir)

    disk_dir = args.disk_dir or Path(tempfile.mkdtemp(prefix="lmcache-ascend-disk-"))
    os.environ.update(lmcache_env(disk_dir=disk_dir, layerwise=args.layerwise))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.kv_cache_gib))
    step(2, total, f"starting vLLM CPU with LMCache (CPU tier + disk tier at {disk_dir}); this takes ~30 s")
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(args.model_dir),
        dtype="bfloat16",
        max_model_len=args.prompt_tokens + args.max_tokens + 64,
        enable_prefix_caching=False,  # every reused token must come from LMCache
        enforce_eager=True,
        disable_log_stats=False,  # per-request metrics: time to first token
        kv_transfer_config=kv_transfer_config(),
    )
    prompt = {"prompt_token_ids": prompt_token_ids(args.prompt_tokens)}
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)

    results = {}
    for i, name in ((3, "cold"), (4, "warm")):
        step(i, total, f"{name} request: {args.prompt_tokens}-token prompt")
        start = time.perf_counter()
        out = llm.generate([prompt], params, use_tqdm=False)[0]
        wall = time.perf_counter() - start
        ttft = out.metrics.first_token_latency if out.metrics is not None else wall
        results[name] = {"ttft_s": ttft, "from_lmcache": out.num_cached_tokens or 0, "tokens": list(out.outputs[0].token_ids)}

    step(5, total, "results")
    cold, warm = results["cold"], results["warm"]
    print(f"  TTFT cold            {cold['ttft_s'] * 1000:8.1f} ms")
    print(f"  TTFT warm            {warm['ttft_s'] * 1000:8.1f} ms   ({warm['ttft_s'] / cold['ttft_s']:.2f}x cold)")
    print(f"  tokens from LMCache  {warm['from_lmcache']:8d} of {args.prompt_tokens} (cold: {cold['from_lmcache']})")
    same = cold["tokens"] == warm["tokens"]
    print(f"  greedy outputs identical: {'yes' if same else 'NO'}")
    if args.disk_dir is None:
        shutil.rmtree(disk_dir, ignore_errors=True)
    return {"cold": cold, "warm": warm, "identical": same}


def main(argv: list[str] | None = None) -> int:
    result = run(parse_args(argv))
    ok = result["identical"] and result["warm"]["from_lmcache"] > 0
    if not ok:
        print("FAILED: warm run did not reuse LMCache's KV or changed the output", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":  # vLLM spawns worker processes: keep the guard
    raise SystemExit(main())
