"""CacheBlend with hole mode inside vLLM (CPU, offline, no download).

vLLM CPU with the ``LMCacheAscendConnectorV1Dynamic`` connector and this LMCache
configuration (as ``LMCACHE_*`` variables; YAML equivalent)::

    local_cpu: true
    use_layerwise: true
    enable_blending: true
    blend_special_str: " # # "
    blend_recompute_ratios: [0.15]
    blend_check_layers: [1]
    extra_config: {blend_hole_mode: true}

Request A is ``doc1 SEP doc2 SEP doc3 SEP doc4 SEP question``: computed by vLLM,
each document stored by LMCache as its own segment. Request B replaces doc2 by
a document never seen (a hole) and asks another question. LMCache's own lookup
stops at the hole (doc1 only); in hole mode vLLM's scheduler is told every
token up to the end of doc4 is a hit, and the blender loads doc1, doc3 and doc4,
computes the hole, and recomputes the 15% of cached tokens whose KV deviates
most. The script prints both TTFTs, the tokens served, and the blender's
counters (read in vLLM's worker).

    python examples/blend_vllm.py [--doc-len 256] [--standard]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # testkit/: the harness beside the package, not in the wheel


def step(i: int, total: int, text: str) -> None:
    print(f"[{i}/{total}] {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="CacheBlend hole mode inside vLLM CPU")
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "tiny-llama")
    p.add_argument("--doc-len", type=int, default=256)
    p.add_argument("--ratio", type=float, default=0.15, help="blend_recompute_ratios[0]")
    p.add_argument("--standard", action="store_true", help="standard blending instead of hole mode")
    a = p.parse_args(argv)

    from transformers import AutoTokenizer

    from testkit.blend_workload import MultiDocWorkload, separator_tokens
    from lmcache_ascend.integrations.vllm import blend
    from testkit.vllm_offline import LLMOptions, run_prompt, start_llm
    from testkit.tiny_model import build, prompt_token_ids

    total, hole_mode = 6, not a.standard
    step(1, total, f"model: {a.model_dir}")
    build(a.model_dir)
    workload = MultiDocWorkload(4, a.doc_len, 16, tuple(separator_tokens(AutoTokenizer.from_pretrained(a.model_dir))))
    prompt_a, prompt_b = workload.prompt(), workload.prompt(holes=(1,), variant=1)
    mode = "hole mode" if hole_mode else "standard blending"
    # Only for reading the blender's counters with collective_rpc(function) below; serving does not need it.
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    step(2, total, f"starting vLLM CPU with CacheBlend ({mode}, ratio {a.ratio}); this takes ~30 s")
    opts = LLMOptions(
        model_dir=a.model_dir, max_model_len=len(prompt_b) + 64, blend_hole_mode=hole_mode, blend_ratio=a.ratio
    )
    llm = start_llm(opts)
    step(3, total, "warm-up request on unrelated tokens (a process's first forward pays one-time set-up)")
    run_prompt(llm, prompt_token_ids(256, offset=4242), 1)
    step(4, total, f"request A: 4 documents of {a.doc_len} tokens + a question ({len(prompt_a)} tokens), computed and stored")
    cold = run_prompt(llm, prompt_a)
    step(5, total, "request B: document 2 replaced by a new one (a hole), another question")
    warm = run_prompt(llm, prompt_b)
    stats = llm.collective_rpc(blend.worker_stats)[0]
    last = stats.get("last", {})

    step(6, total, "results")
    prefix_only = a.doc_len  # LMCache's prefix lookup stops after document 1
    print(f"  TTFT A (cold)           {cold.ttft_s * 1000:8.1f} ms")
    print(f"  TTFT B (blended)        {warm.ttft_s * 1000:8.1f} ms   ({warm.ttft_s / cold.ttft_s:.2f}x A)")
    print(f"  B tokens from LMCache   {warm.from_lmcache:8d} of {len(prompt_b)} (a prefix lookup stops at {prefix_only})")
    print(
        f"  blender: {last.get('used_segments', 0)} cached documents loaded, {last.get('segments_after_hole', 0)} of "
        f"them after the hole; {last.get('reused_tokens', 0)} of {last.get('loaded_tokens', 0)} loaded tokens kept "
        f"their cached KV; {stats.get('failures', 0)} failed blends"
    )
    return 0 if stats.get("installed") and warm.from_lmcache > 0 and stats.get("failures", 1) == 0 else 1


if __name__ == "__main__":  # vLLM spawns worker processes: keep the guard
    raise SystemExit(main())
