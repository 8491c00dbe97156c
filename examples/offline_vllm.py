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

    python examples/offline_vllm.py [--prompt-tokens 2048] [--layerwise] [-v]

vLLM's and LMCache's own log lines (a few hundred, from this process and the
engine processes vLLM spawns) go to a log file whose path is printed first;
``-v`` shows them here instead. If the run fails, the file's last lines are
printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # testkit/: the harness beside the package, not in the wheel
# Where the steps and results go: the terminal, even while engine output is
# redirected to the log file (see engine_output_to).
CONSOLE: TextIO = sys.stdout


def step(i: int, total: int, text: str) -> None:
    print(f"[{i}/{total}] {text}", file=CONSOLE, flush=True)


def say(text: str) -> None:
    print(text, file=CONSOLE, flush=True)


@contextmanager
def engine_output_to(log_path: Path | None) -> Iterator[None]:
    """Send this process's stdout / stderr (and so the engine processes vLLM
    spawns, which inherit them) to ``log_path``; None leaves them alone."""
    global CONSOLE
    if log_path is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    CONSOLE = os.fdopen(os.dup(1), "w")
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    except BaseException:
        _restore(saved)
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        say(f"--- last lines of {log_path} ---\n" + "\n".join(tail))
        raise
    _restore(saved)


def _restore(saved: tuple[int, int]) -> None:
    global CONSOLE
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    os.close(saved[0])
    os.close(saved[1])
    CONSOLE.close()
    CONSOLE = sys.stdout


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "tiny-llama")
    p.add_argument("--prompt-tokens", type=int, default=2048)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--disk-dir", type=Path, default=None, help="local disk tier (default: a fresh temporary directory)")
    p.add_argument("--layerwise", action="store_true", help="LMCache layerwise mode (use_layerwise)")
    p.add_argument("--kv-cache-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE")
    p.add_argument("--log-file", type=Path, default=None, help="engine log file (default: a new file in the temporary directory)")
    p.add_argument("-v", "--verbose", action="store_true", help="show vLLM's and LMCache's log lines here instead of in the log file")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    from testkit.vllm_offline import LLMOptions, run_prompt, start_llm, stop_llm
    from testkit.tiny_model import build, prompt_token_ids

    total = 6
    step(1, total, f"model: {args.model_dir}")
    build(args.model_dir)
    disk_dir = args.disk_dir or Path(tempfile.mkdtemp(prefix="lmcache-ascend-disk-"))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.kv_cache_gib))
    step(2, total, f"starting vLLM CPU with LMCache (CPU tier + disk tier at {disk_dir}); this takes ~30 s")
    opts = LLMOptions(
        model_dir=args.model_dir,
        max_model_len=args.prompt_tokens + args.max_tokens + 64,
        layerwise=args.layerwise,
        disk_dir=disk_dir,
    )
    llm = start_llm(opts)
    prompt = prompt_token_ids(args.prompt_tokens)
    step(3, total, "warm-up request on another prompt (a process's first forward pays one-time set-up)")
    run_prompt(llm, prompt_token_ids(512, offset=4242), 1)
    step(4, total, f"cold request: {args.prompt_tokens}-token prompt (computed, then stored by LMCache)")
    cold = run_prompt(llm, prompt, args.max_tokens)
    step(5, total, "warm request: same prompt (vLLM's prefix cache is off: reuse must come from LMCache)")
    warm = run_prompt(llm, prompt, args.max_tokens)
    stop_llm(llm)

    step(6, total, "results")
    say(f"  TTFT cold            {cold.ttft_s * 1000:8.1f} ms")
    say(f"  TTFT warm            {warm.ttft_s * 1000:8.1f} ms   ({warm.ttft_s / cold.ttft_s:.2f}x cold)")
    say(f"  tokens from LMCache  {warm.from_lmcache:8d} of {args.prompt_tokens} (cold: {cold.from_lmcache})")
    same = cold.token_ids == warm.token_ids
    say(f"  greedy outputs identical: {'yes' if same else 'NO'} ({len(cold.token_ids)} tokens)")
    if args.disk_dir is None:
        shutil.rmtree(disk_dir, ignore_errors=True)
    return {"cold": cold, "warm": warm, "identical": same}


def _new_log_file() -> Path:
    fd, name = tempfile.mkstemp(prefix="lmcache-ascend-demo-", suffix=".log")
    os.close(fd)
    return Path(name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_path = None
    if not args.verbose:
        log_path = args.log_file or _new_log_file()
        say(f"engine logs: {log_path} (-v shows them here)")
    with engine_output_to(log_path):
        result = run(args)
    ok = result["identical"] and result["warm"].from_lmcache > 0
    if not ok:
        print("FAILED: warm run did not reuse LMCache's KV or changed the output", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":  # vLLM spawns worker processes: keep the guard
    raise SystemExit(main())
