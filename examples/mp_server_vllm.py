"""LMCache multi-process mode with lmcache_ascend's ops: an `lmcache server` + vLLM CPU.

Starts `lmcache server` on 127.0.0.1 with LMCACHE_DEVICE_BACKEND=ascend_cpu
(LMCache's CPU backend with lmcache_ascend's native ops), runs vLLM CPU with
vLLM's `LMCacheMPConnector` against it (same backend in vLLM's processes), sends
a short warm-up prompt, then one long prompt twice (cold: stored in the
server; warm: loaded from it), prints TTFT, tokens served by LMCache and whether
the greedy outputs match, and stops the server.

    python examples/mp_server_vllm.py [--prompt-tokens 2048] [--backend default]

Equivalent manual commands are in the README ("LMCache multi-process mode").
"""

from __future__ import annotations

import argparse
import tempfile
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # testkit/: the harness beside the package, not in the wheel


def main(argv: list[str] | None = None) -> int:
    from lmcache_ascend.integrations.lmcache.device_plugin import BACKEND_NAME
    from testkit.mp_server import running_server
    from testkit.vllm_runner import run_engine
    from testkit.tiny_model import build, prompt_token_ids

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "tiny-llama")
    p.add_argument("--prompt-tokens", type=int, default=2048)
    p.add_argument("--backend", choices=["ascend_cpu", "default"], default="ascend_cpu")
    a = p.parse_args(argv)
    backend = BACKEND_NAME if a.backend == "ascend_cpu" else None

    print(f"[1/4] model: {a.model_dir}", flush=True)
    build(a.model_dir)
    prompt = prompt_token_ids(a.prompt_tokens)
    with tempfile.TemporaryDirectory(prefix="lmcache-ascend-mp-") as tmp:
        log = Path(tmp) / "server.log"
        print(f"[2/4] lmcache server on 127.0.0.1 (device backend {a.backend}; log {log})", flush=True)
        with running_server(backend=backend, log_path=log, shm_name="lmcache_ascend_example") as srv:
            print(f"[3/4] vLLM CPU + LMCacheMPConnector -> tcp://127.0.0.1:{srv.port}: warm-up, cold, warm", flush=True)
            _, cold, warm = run_engine(
                {
                    "model_dir": str(a.model_dir),
                    "max_model_len": a.prompt_tokens + 64,
                    "mp_port": srv.port,
                    "device_backend": backend,
                    "prompts": [prompt_token_ids(300, offset=4242), prompt, prompt],
                },
                rpc_dir=Path(tmp),
            )
    same = cold["token_ids"] == warm["token_ids"]
    print("[4/4] results")
    print(f"  TTFT cold            {cold['ttft_s'] * 1000:8.1f} ms")
    print(f"  TTFT warm            {warm['ttft_s'] * 1000:8.1f} ms")
    print(f"  tokens from LMCache  {warm['from_lmcache']:8d} of {a.prompt_tokens}")
    print(f"  greedy outputs identical: {'yes' if same else 'NO'}")
    return 0 if same and warm["from_lmcache"] > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
