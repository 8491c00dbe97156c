"""Where a warm request's time goes: the LMCache phases of one load, inside a real vLLM CPU worker.

Runs vLLM CPU with LMCacheAscendConnectorV1Dynamic on the KV-heavy random Llama
(64 KiB of KV per token), sends one ``--prompt-tokens`` prompt cold and warm
(TTFT of each), then, in the worker (``collective_rpc``), times each phase of
loading that prompt's KV again, on vLLM's own KV tensors, ``--repeat`` times:

- ``lookup``: ``LMCacheEngine.lookup`` (what the scheduler's lookup asks);
- ``hashing``: chunk keys of the prompt (``token_database.process_tokens``);
- ``tier get``: the chunks' memory objects from the CPU tier (``batched_get``);
- ``copy``: our device connector writing them into vLLM's paged KV
  (``batched_to_gpu``), and a plain ``torch.copy_`` of the same bytes;
- ``retrieve``: the whole ``LMCacheEngine.retrieve`` (hashing + get + copy +
  bookkeeping); ``other`` is what it spends outside the three parts.

A second run with vLLM's own prefix cache (no connector) gives the floor a
warm request cannot beat (the forward of the uncached tokens). Prints a
table, writes ``benchmarks/results/warm_breakdown.png`` and with ``--json`` one
JSON line. Medians; the CPU is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # testkit/: the harness beside the package, not in the wheel
from common import RESULTS_DIR, bar_chart, cpu_model, format_table, print_json_last  # noqa: E402

from testkit.vllm_runner import parse_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHILD_PREFIX = "WARM_BREAKDOWN "


def _median_ms(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure_in_worker(worker: Any, tokens: list[int], repeat: int) -> dict[str, float]:
    """Runs in vLLM's worker process: the phase timings of loading ``tokens`` (ms)."""
    import torch
    from lmcache.v1.cache_engine import LMCacheEngineBuilder
    from vllm.distributed.kv_transfer import get_kv_transfer_group

    from lmcache_ascend.integrations.lmcache.plugin import ENGINE_NAME

    engine = LMCacheEngineBuilder.get(ENGINE_NAME)
    kvcaches = list(get_kv_transfer_group()._lmcache_engine.kv_caches.values())
    ids = torch.tensor(tokens, dtype=torch.long)
    slots = torch.arange(len(tokens), dtype=torch.long)  # blocks 0.. (free: the requests finished)
    chunks = list(engine.token_database.process_tokens(tokens=ids))
    keys, starts, ends = [k for _, _, k in chunks], [s for s, _, _ in chunks], [e for _, e, _ in chunks]

    def tier_get() -> list[Any]:
        return engine.storage_manager.batched_get(keys)

    def release(objs: list[Any]) -> None:
        for obj in objs:
            obj.ref_count_down()

    held = tier_get()
    if any(obj is None for obj in held):
        raise RuntimeError("the prompt's chunks are not all in the CPU tier; raise --cpu-gib")
    nbytes = sum(obj.get_size() for obj in held)
    src, dst = torch.empty(nbytes, dtype=torch.uint8), torch.empty(nbytes, dtype=torch.uint8)
    src.fill_(1)
    dst.fill_(0)
    out = {
        "lookup": _median_ms(lambda: engine.lookup(ids), repeat),
        "hashing": _median_ms(lambda: list(engine.token_database.process_tokens(tokens=ids)), repeat),
        "tier_get": _median_ms(lambda: release(tier_get()), repeat),
        "copy": _median_ms(lambda: engine.gpu_connector.batched_to_gpu(held, starts, ends, kvcaches=kvcaches, slot_mapping=slots), repeat),
        "memcpy": _median_ms(lambda: dst.copy_(src), repeat),
        "retrieve": _median_ms(lambda: engine.retrieve(ids, kvcaches=kvcaches, slot_mapping=slots), repeat),
        "bytes": float(nbytes),
        "chunks": float(len(keys)),
    }
    release(held)
    out["other"] = max(0.0, out["retrieve"] - out["hashing"] - out["tier_get"] - out["copy"])
    return out


def child(raw: str) -> int:
    from testkit.vllm_offline import LLMOptions, run_prompt, start_llm
    from testkit.tiny_model import prompt_token_ids

    args = json.loads(raw)
    prompt = prompt_token_ids(args["prompt_tokens"], offset=31)
    opts = LLMOptions(model_dir=Path(args["model_dir"]), max_model_len=args["prompt_tokens"] + 64, cpu_gib=args["cpu_gib"],
                      connector=not args["prefix_cache"], prefix_caching=args["prefix_cache"])
    llm = start_llm(opts)
    run_prompt(llm, prompt_token_ids(256, offset=999), 4)  # warm-up
    cold, warm = run_prompt(llm, prompt, 4), run_prompt(llm, prompt, 4)
    result: dict[str, Any] = {"cold_ttft_ms": cold.ttft_s * 1000, "warm_ttft_ms": warm.ttft_s * 1000, "warm_hit": warm.from_lmcache}
    if not args["prefix_cache"]:
        full_hit = warm.from_lmcache == len(prompt) - 1  # vLLM recomputes the last token of a full hit
        stored = prompt if full_hit else prompt[: warm.from_lmcache]
        # By reference from an importable module (not __main__), so the worker can unpickle it.
        from warm_breakdown import measure_in_worker as measure

        result["phases"] = llm.collective_rpc(measure, args=(stored, args["repeat"]))[0]
    print("\n" + CHILD_PREFIX + json.dumps(result), flush=True)  # a line of its own (see runner.parse_result)
    return 0


def run_child(a: argparse.Namespace, prefix_cache: bool) -> dict[str, Any]:
    payload = {"model_dir": str(a.model_dir), "prompt_tokens": a.prompt_tokens, "cpu_gib": a.cpu_gib, "repeat": a.repeat, "prefix_cache": prefix_cache}
    env = {
        **os.environ, "VLLM_CPU_OMP_THREADS_BIND": a.cores, "VLLM_CPU_KVCACHE_SPACE": "2",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")]),
        "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",  # collective_rpc with a function (as the e2e tests do)
    }  # fmt: skip
    proc = subprocess.run([sys.executable, __file__, "--child"], input=json.dumps(payload), capture_output=True, text=True, env=env, timeout=900)
    for line in proc.stdout.splitlines():
        if line.startswith(CHILD_PREFIX):
            return parse_result(line[len(CHILD_PREFIX) :])
    raise RuntimeError(f"engine process failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:] == ["--child"]:
        return child(sys.stdin.read())
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "kv-heavy-llama")
    p.add_argument("--prompt-tokens", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--cpu-gib", type=float, default=4.0)
    p.add_argument("--cores", default=f"0-{(os.cpu_count() or 1) - 1}", help="VLLM_CPU_OMP_THREADS_BIND")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    p.add_argument("--plot", type=Path, default=RESULTS_DIR / "warm_breakdown.png")
    a = p.parse_args(argv)

    from testkit.tiny_model import KV_HEAVY, build

    build(a.model_dir, KV_HEAVY)
    print(f"[1/2] this connector: cold, warm, then the phases of one load ({a.repeat} times)", flush=True)
    ours = run_child(a, prefix_cache=False)
    print("[2/2] vLLM's prefix cache (the floor): cold, warm", flush=True)
    floor = run_child(a, prefix_cache=True)
    ph = ours["phases"]
    print(f"results on {cpu_model()}: {a.prompt_tokens}-token prompt, {int(ph['chunks'])} chunks, {ph['bytes'] / 2**20:.0f} MiB loaded")
    print(format_table(["what", "ms"], [
        ["warm TTFT, this connector", ours["warm_ttft_ms"]], ["warm TTFT, vLLM prefix cache", floor["warm_ttft_ms"]],
        ["  difference", ours["warm_ttft_ms"] - floor["warm_ttft_ms"]],
        ["lookup (scheduler asks)", ph["lookup"]], ["retrieve (whole load)", ph["retrieve"]],
        ["  chunk keys (hashing)", ph["hashing"]], ["  CPU tier get", ph["tier_get"]],
        ["  copy into vLLM's KV", ph["copy"]], ["  other (bookkeeping)", ph["other"]],
        ["plain memcpy of the same bytes", ph["memcpy"]],
    ]))
    plot = bar_chart(a.plot, f"One warm load of {a.prompt_tokens} tokens ({ph['bytes'] / 2**20:.0f} MiB), {cpu_model()}",
                     ["lookup", "hashing", "tier get", "copy", "other", "memcpy"],
                     {"ms": [ph["lookup"], ph["hashing"], ph["tier_get"], ph["copy"], ph["other"], ph["memcpy"]]}, "ms")
    if plot:
        print(f"plot: {plot}")
    if a.json:
        print_json_last({"phases_ms": ph, "warm_ttft_ms": ours["warm_ttft_ms"], "prefix_cache_warm_ttft_ms": floor["warm_ttft_ms"],
                         "copy_over_memcpy": ph["copy"] / ph["memcpy"], "cpu": cpu_model()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
