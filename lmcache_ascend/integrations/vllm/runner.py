"""Run one offline vLLM engine in a fresh process and collect its results.

Every engine gets its own process (vLLM CPU spawns workers and owns global
state; LMCache's engine is a per-process singleton), as in production where a
second engine is a second process:

    echo '<json options>' | python -m lmcache_ascend.integrations.vllm.runner

Options are :class:`~lmcache_ascend.integrations.vllm.offline.LLMOptions`
fields plus ``prompts`` (token-id lists, sent in order) and ``max_tokens``.
The child prints one line ``RESULT <json>``; :func:`run_engine` parses it.
With CacheBlend on (``blend_hole_mode`` set), each result also carries
``blend``: the blender's counters for that prompt, read in vLLM's worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULT_PREFIX = "LMCACHE_ASCEND_RESULT "
_PATH_KEYS = ("model_dir", "disk_dir", "example_storage")


class EngineRunError(RuntimeError):
    pass


def run_engine(options: dict[str, Any], *, timeout_s: float = 420, env: dict[str, str] | None = None, rpc_dir: Path | None = None) -> list[dict[str, Any]]:
    """Run the engine described by ``options`` in a child process; per-prompt results."""
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if options.get("blend_hole_mode") is not None:  # the blend counters come back through collective_rpc(function)
        child_env.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    if rpc_dir is not None:
        child_env["VLLM_RPC_BASE_PATH"] = str(rpc_dir)  # LMCache's ZMQ sockets live here
    proc = subprocess.run(
        [sys.executable, "-m", __name__],
        input=json.dumps(options, default=str),  # stdin: long prompts exceed argv limits
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=child_env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or len(lines) != 1:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-60:])
        raise EngineRunError(f"vLLM engine process failed (exit {proc.returncode}):\n{tail}")
    return parse_result(lines[0][len(RESULT_PREFIX) :])


def parse_result(text: str) -> Any:
    """The JSON value at the start of ``text``.

    vLLM's engine-core process shares the child's stdout: a log line it
    writes without a newline of its own can land right after the result on the
    same line (seen once in ``benchmarks/e2e_vllm.py``), so trailing text is ignored.
    """
    value, _ = json.JSONDecoder().raw_decode(text)
    return value


def _child(raw: str) -> int:
    from lmcache_ascend.integrations.vllm.offline import LLMOptions, run_prompt, start_llm

    args = json.loads(raw)
    prompts = args.pop("prompts")
    max_tokens = args.pop("max_tokens", 16)
    for key in _PATH_KEYS:
        if args.get(key) is not None:
            args[key] = Path(args[key])
    opts = LLMOptions(**args)
    llm = start_llm(opts)
    results, blends = [], 0
    for prompt in prompts:
        result = run_prompt(llm, prompt, max_tokens).to_dict()
        if opts.blend_hole_mode is not None:
            from lmcache_ascend.integrations.vllm.blend import worker_stats

            stats = llm.collective_rpc(worker_stats)[0]
            # vLLM calls the blender only for a prompt with an LMCache hit: {} when it did not run
            result["blend"] = stats["last"] if stats.get("requests", 0) > blends else {}
            blends = stats.get("requests", 0)
        results.append(result)
    # On a line of its own even if another process left a partial line on stdout.
    print("\n" + RESULT_PREFIX + json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_child(sys.stdin.read()))
