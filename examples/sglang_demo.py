"""One-command demo: SGLang's ``--enable-lmcache`` with lmcache_ascend as LMCache's device backend.

Builds a small random-weight Llama locally (no download), starts LMCache's
multi-process server (``lmcache server``, device backend ``ascend_cpu``, KV in
a shared-memory pool) and a real SGLang 0.5.23 server on CPU with
``--enable-lmcache --lmcache-config-file F`` (``LMCACHE_DEVICE_BACKEND=ascend_cpu``
in both processes, so lmcache_ascend's ops move the KV), then:

- warm-up: one short request on another prompt (a process's first forward pays
  one-time set-up);
- cold: a ~1100-token prompt; SGLang computes it and LMCache stores its chunks;
- ``/flush_cache`` empties SGLang's own radix cache (not LMCache);
- warm: the same prompt; its whole 256-token chunks are loaded from LMCache.

It prints TTFT cold and warm, the tokens SGLang loaded from LMCache, whether the
greedy outputs are identical, and the two launch commands to type by hand
(built by the same functions that started the servers here), then stops both.
Exits non-zero if the outputs differ or nothing came from LMCache.

    bash scripts/dev.sh sglang-demo [--prompt-tokens 1100] [--max-new-tokens 16]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmcache_ascend.integrations.lmcache import ASCEND_CPU_BACKEND as BACKEND_NAME  # noqa: E402
from testkit.mp_server import running_server, server_command  # noqa: E402
from testkit.tiny_model import build, prompt_token_ids  # noqa: E402
from tests.e2e.sglang.servers import (  # noqa: E402
    STANDIN_DIR, flush_cache, generate, running_sglang, sglang_command, sglang_env, write_lmcache_config, work_directory,
)  # fmt: skip

CHUNK_SIZE = 256
L1_GB = 1.0
CONFIG_NAME = "lmcache-sglang.yaml"
TOTAL = 7


def step(i: int, text: str) -> None:
    print(f"[{i}/{TOTAL}] {text}", flush=True)


def shown(path: Path) -> str:
    """A path as typed from the repository root."""
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(ROOT))
    return str(path)


def launch_lines(model_dir: Path, config_text: str, server_args: tuple[int, int, str], sglang_port: int) -> str:
    """The two commands (and the config file) a user types, from the functions that started the servers here."""
    port, http_port, shm_name = server_args
    server = server_command(port, http_port, chunk_size=CHUNK_SIZE, l1_gb=L1_GB, shm_name=shm_name)
    sglang = sglang_command(Path(shown(model_dir)), sglang_port, lmcache_config=Path(CONFIG_NAME))
    env = sglang_env(BACKEND_NAME, base={})
    sglang_vars = [f"{k}={env[k]}" for k in ("LMCACHE_DEVICE_BACKEND", "SGLANG_USE_CPU_ENGINE")]
    yaml = "\n".join(f"    {line}" for line in config_text.splitlines())
    return "\n".join([
        "  # 1. LMCache's server with lmcache_ascend's ops (leave it running)",
        f"  LMCACHE_DEVICE_BACKEND={BACKEND_NAME} {shlex.join(['lmcache', *server[1:]])}",
        f"  # 2. {CONFIG_NAME}, the file SGLang hands to LMCache's connector:",
        yaml,
        f"  # 3. SGLang on CPU; PYTHONPATH={shown(STANDIN_DIR)} supplies the two sgl_kernel CPU ops as a",
        "  #    pure-torch stand-in, needed only where sgl-kernel's CPU build is not installed",
        f"  {' '.join(sglang_vars)} PYTHONPATH={shown(STANDIN_DIR)} {shlex.join(['python', *sglang[1:]])}",
    ])  # fmt: skip


def run(a: argparse.Namespace, workdir: Path) -> bool:
    step(1, f"model: {shown(a.model_dir)} (small random Llama, built locally)")
    build(a.model_dir)
    shm_name = f"lmc_demo_{os.getpid()}"
    step(2, f"starting lmcache server (device backend {BACKEND_NAME}, shared-memory pool {shm_name})")
    server_log = workdir / "lmcache-server.log"
    with running_server(backend=BACKEND_NAME, log_path=server_log, chunk_size=CHUNK_SIZE, l1_gb=L1_GB, shm_name=shm_name) as srv:
        config = write_lmcache_config(workdir / CONFIG_NAME, srv.port)
        step(3, f"starting SGLang on CPU with --enable-lmcache (~40-60 s; log {workdir / 'sglang.log'})")
        with running_sglang(a.model_dir, log_path=workdir / "sglang.log", lmcache_config=config, backend=BACKEND_NAME) as sg:
            step(4, "warm-up request on another prompt (a process's first forward pays one-time set-up)")
            generate(sg, prompt_token_ids(128, offset=4242), max_new_tokens=2)
            prompt = prompt_token_ids(a.prompt_tokens)
            step(5, f"cold request: {a.prompt_tokens}-token prompt (computed by SGLang, stored by LMCache)")
            cold = generate(sg, prompt, max_new_tokens=a.max_new_tokens)
            flush_cache(sg)
            step(6, "/flush_cache (SGLang's own radix cache only), then the same prompt: reuse must come from LMCache")
            warm = generate(sg, prompt, max_new_tokens=a.max_new_tokens)
            commands = launch_lines(a.model_dir, config.read_text(), (srv.port, srv.http_port, shm_name), sg.port)
        step(7, "results (both servers stopped)")
    same = cold.output_ids == warm.output_ids
    print(f"  TTFT cold            {cold.ttft_s * 1000:8.1f} ms")
    print(f"  TTFT warm            {warm.ttft_s * 1000:8.1f} ms   ({warm.ttft_s / cold.ttft_s:.2f}x cold)")
    print(f"  tokens from LMCache  {warm.storage_tokens:8d} of {a.prompt_tokens} (cold: {cold.storage_tokens})")
    print(f"  greedy outputs identical: {'yes' if same else 'NO'} ({len(cold.output_ids)} tokens)")
    print()
    print("To launch the same by hand (from the repository root, in the environment of scripts/sglang_env.sh):")
    print(commands)
    return same and warm.storage_tokens > 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "tiny-llama")
    p.add_argument("--prompt-tokens", type=int, default=1100)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--workdir", type=Path, default=None, help="logs and the config file (default: a temporary directory, removed)")
    a = p.parse_args(argv)
    with work_directory(a.workdir, "lmcache-ascend-sglang-demo-") as workdir:
        ok = run(a, workdir)
    if not ok:
        print("FAILED: the warm request did not load KV from LMCache or changed the greedy output", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
