"""End-to-end benchmark: vLLM CPU time-to-first-token, this connector against vLLM's own peers.

On a KV-heavy, compute-light random Llama (16 layers, hidden 256, 4 KV heads of
head_dim 256: 64 KiB of KV per token), so moving KV is a visible part of TTFT,
each of ``--prompts`` distinct prompts of ``--prefix-tokens`` tokens (default
2000: not a multiple of LMCache's 256-token chunk, so the tail matters) is sent:

- ``baseline``: vLLM CPU without a KV connector (its prefix cache off);
- ``cold`` / ``warm``: with LMCacheAscendConnectorV1Dynamic, first time
  (computed + stored), then again (loaded from LMCache's CPU tier);
- ``prefix cache``: vLLM's own prefix cache, no connector (warm = a repeat
  served from vLLM's KV blocks, no copy at all);
- ``ExampleConnector``: vLLM's own disk connector (safetensors files), warm repeat.

Each configuration runs in its own engine process after one warm-up prompt,
``--warm-passes`` warm repeats of every prompt (one sample each), and
``--rounds`` times, interleaved (all configurations, then all again): a
shared host's slow minutes then fall on every configuration alike rather
than on whichever ran during them. All runs share the same OpenMP core binding (``VLLM_CPU_OMP_THREADS_BIND``, default: all
cores): left on ``auto``, vLLM reserves a different number of cores with and
without a KV connector, which would compare different compute budgets.
Prints a table, writes ``benchmarks/results/e2e_vllm.png``; the last line is one
JSON object with ``warm_over_cold`` (warm / cold TTFT), ``store_overhead`` (cold
with the connector / baseline), ``warm_over_example`` and
``warm_over_prefix_cache`` (our warm TTFT / the peer's), and
``hit_tokens_vs_prefix_cache`` (tokens we served / tokens vLLM's prefix cache
served), medians over every warm sample of every round, the spread of the
per-round ratios (``*_per_round``), and the CPU model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # testkit/: the harness beside the package, not in the wheel
from common import RESULTS_DIR, bar_chart, cpu_model, format_table, print_json_last  # noqa: E402
from warm_rounds import RoundRuns, add_args, check_args, median_ttft_ms, per_round_ratio, pooled, warm_matches_cold  # noqa: E402

from testkit.vllm_runner import run_engine  # noqa: E402
from testkit.tiny_model import KV_HEAVY, build, prompt_token_ids  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# name: (what runs, engine options, whether it has warm passes); ExampleConnector's
# files go to a directory of the round (a second round must start cold too).
def _configs(work: Path, rnd: int) -> dict[str, tuple[str, dict, bool]]:
    return {
        "base": ("baseline: vLLM CPU without connector", {"connector": False}, False),
        "ours": ("LMCacheAscendConnectorV1Dynamic: cold, then warm", {"connector": True}, True),
        "pc": ("vLLM's prefix cache (no connector): cold, then warm", {"connector": False, "prefix_caching": True}, True),
        "ex": ("vLLM's ExampleConnector (disk): cold, then warm",
               {"connector": False, "example_storage": str(work / f"example-{rnd}")}, True),
    }


def _run_all(a: argparse.Namespace, common: dict, env: dict, steps: int) -> dict[str, RoundRuns]:
    """Per configuration, its results round by round (``warm_rounds.RoundRuns``)."""
    warmup = prompt_token_ids(a.prefix_tokens, offset=999)
    prompts = [prompt_token_ids(a.prefix_tokens, offset=17 * (i + 1)) for i in range(a.prompts)]
    runs: dict[str, RoundRuns] = {}
    step = 1
    with tempfile.TemporaryDirectory(prefix="lmcache-ascend-bench-") as rpc:
        for rnd in range(a.rounds):
            for name, (what, options, warm) in _configs(Path(rpc), rnd).items():
                step += 1
                print(f"[{step}/{steps}] round {rnd + 1}/{a.rounds}, {what} (cores {a.cores})", flush=True)
                sent = [warmup, *prompts * (1 + (a.warm_passes if warm else 0))]
                out = run_engine({**common, **options, "prompts": sent}, rpc_dir=Path(rpc), env=env)[1:]
                runs.setdefault(name, []).append((out[: a.prompts], out[a.prompts :]))
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "kv-heavy-llama")
    p.add_argument("--prefix-tokens", type=int, default=2000, help="prompt length (default not a multiple of the chunk)")
    p.add_argument("--prompts", type=int, default=3)
    add_args(p)
    p.add_argument("--cores", default=f"0-{(os.cpu_count() or 1) - 1}", help="VLLM_CPU_OMP_THREADS_BIND for every run")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    p.add_argument("--plot", type=Path, default=RESULTS_DIR / "e2e_vllm.png")
    a = p.parse_args(argv)
    check_args(p, a)

    spec = KV_HEAVY
    steps = 2 + 4 * a.rounds
    print(f"[1/{steps}] model {a.model_dir}: {spec.num_layers} layers, hidden {spec.hidden_size}, "
          f"{spec.num_kv_heads} KV heads x {spec.head_dim} (bf16) = {spec.kv_bytes_per_token // 1024} KiB KV per token", flush=True)
    build(a.model_dir, spec)
    common = {"model_dir": str(a.model_dir), "max_model_len": a.prefix_tokens + 64, "max_tokens": 4, "cpu_gib": 4.0}
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": a.cores, "VLLM_CPU_KVCACHE_SPACE": "2"}
    runs = _run_all(a, common, env, steps)
    (base, _), (cold, warm), (pc_cold, pc_warm), (ex_cold, ex_warm) = (pooled(runs[k]) for k in ("base", "ours", "pc", "ex"))

    identical = warm_matches_cold(runs["ours"], a.prompts)
    hits, pc_hits = min(w["from_lmcache"] for w in warm), min(w["from_lmcache"] for w in pc_warm)
    ex_hits = min(w["from_lmcache"] for w in ex_warm)
    moved = hits * spec.kv_bytes_per_token
    ms = {name: median_ttft_ms(rs) for name, rs in
          {"base": base, "cold": cold, "warm": warm, "pc": pc_warm, "ex": ex_warm, "ex_cold": ex_cold, "pc_cold": pc_cold}.items()}
    rounds = {"warm_over_prefix_cache_per_round": per_round_ratio(runs["ours"], runs["pc"]),
              "warm_over_example_per_round": per_round_ratio(runs["ours"], runs["ex"])}
    print(f"[{steps}/{steps}] results on {cpu_model()} (median of {len(warm)} warm samples per set-up: "
          f"{a.prompts} prompts x {a.warm_passes} passes x {a.rounds} rounds, {a.prefix_tokens} tokens each; "
          f"KV loaded per warm prompt: {moved / 2**20:.0f} MiB)")
    print(format_table(
        ["run", "TTFT ms", "tokens reused", "vs baseline"],
        [["baseline (no connector)", ms["base"], 0, 1.0],
         ["cold, this connector (compute + store)", ms["cold"], cold[0]["from_lmcache"], ms["cold"] / ms["base"]],
         ["warm, this connector (load)", ms["warm"], hits, ms["warm"] / ms["base"]],
         ["warm, vLLM prefix cache (no copy)", ms["pc"], pc_hits, ms["pc"] / ms["base"]],
         ["cold, vLLM ExampleConnector (compute + store)", ms["ex_cold"], ex_cold[0]["from_lmcache"], ms["ex_cold"] / ms["base"]],
         ["warm, vLLM ExampleConnector (load)", ms["ex"], ex_hits, ms["ex"] / ms["base"]]],
    ))
    for key, values in rounds.items():
        print(f"{key.removesuffix('_per_round')} by round: {' / '.join(f'{v:.2f}' for v in values)}")
    print(f"greedy outputs identical cold vs warm: {'yes' if identical else 'NO'}")
    plot = bar_chart(a.plot, f"vLLM CPU TTFT, {a.prefix_tokens}-token prompt, {spec.kv_bytes_per_token // 1024} KiB KV/token",
                     ["baseline", "cold (store)", "warm (ours)", "warm (prefix cache)", "warm (Example)"],
                     {"TTFT (ms)": [ms["base"], ms["cold"], ms["warm"], ms["pc"], ms["ex"]]}, "ms")
    if plot:
        print(f"plot: {plot}")
    if a.json:
        print_json_last({
            "warm_over_cold": ms["warm"] / ms["cold"],
            "store_overhead": ms["cold"] / ms["base"],
            "warm_over_example": ms["warm"] / ms["ex"],
            "warm_over_prefix_cache": ms["warm"] / ms["pc"],
            **rounds,
            "hit_tokens_vs_prefix_cache": hits / pc_hits if pc_hits else None,
            "baseline_ttft_ms": ms["base"],
            "cold_ttft_ms": ms["cold"],
            "warm_ttft_ms": ms["warm"],
            "prefix_cache_warm_ttft_ms": ms["pc"],
            "example_warm_ttft_ms": ms["ex"],
            "tokens_from_lmcache": hits,
            "tokens_from_prefix_cache": pc_hits,
            "tokens_from_example": ex_hits,
            "prompt_tokens": a.prefix_tokens,
            "warm_samples": len(warm),
            "rounds": a.rounds,
            "kv_bytes_per_prompt": moved,
            "identical_outputs": identical,
            "cpu": cpu_model(),
        })
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
