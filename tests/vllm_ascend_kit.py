"""vllm-ascend's real Python source for tests, and its connector registration.

``scripts/vllm_ascend_src.sh`` extracts vllm-ascend's package (never installed:
see the script). :func:`pythonpath` returns the ``PYTHONPATH`` a child process
needs to see it the way a vllm-ascend installation does for connectors: the
source, plus a minimal distribution whose only ``vllm.general_plugins`` entry
point is vllm-ascend's connector registration
(``vllm_ascend.distributed.kv_transfer:register_connector``). vllm-ascend's
own entry point ``vllm_ascend:register_connector`` first applies its NPU patches
(torch_npu), and its platform plugin would leave the CPU platform; neither is
registered here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "vllm_ascend_src.sh"
REGISTER = "vllm_ascend.distributed.kv_transfer:register_connector"


def source_dir() -> Path:
    """The extracted source (fetched by the script if missing); fails the test loudly without it."""
    env = {**os.environ, "LMCACHE_ASCEND_VENV": str(Path(sys.executable).resolve().parents[1])}
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=300, env=env)
    if proc.returncode != 0:
        pytest.fail(f"vllm-ascend source unavailable (bash {SCRIPT.relative_to(ROOT)}):\n{proc.stderr[-2000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def plugin_dist(where: Path) -> Path:
    """A distribution in ``where`` registering vllm-ascend's connectors as a vLLM general plugin."""
    dist = where / "vllm_ascend_kv_connectors-0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm-ascend-kv-connectors\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(f"[vllm.general_plugins]\nascend_kv_connector = {REGISTER}\n")
    return where


def pythonpath(source: Path, plugin_root: Path | None) -> str:
    parts = [str(source)] + ([str(plugin_dist(plugin_root))] if plugin_root else [])
    old = os.environ.get("PYTHONPATH")
    return os.pathsep.join(parts + ([old] if old else []))


def run_python(code: str, path: str) -> str:
    """Run ``code`` in a fresh interpreter with ``PYTHONPATH=path``; its stdout (fails on exit != 0)."""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env={**os.environ, "PYTHONPATH": path}
    )
    assert proc.returncode == 0, f"child failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}"
    return proc.stdout
