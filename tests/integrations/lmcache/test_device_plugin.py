"""The ``ascend_cpu`` LMCache device backend (entry point ``lmcache.device_plugins``),
and LMCache's built-in Ascend device binding ``lmcache_ascend.ops``.

Backend selection happens at ``import lmcache``, so it is checked in fresh
interpreters; the rest in-process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from importlib.metadata import entry_points

import pytest
import torch

import lmcache_ascend.ops as ops
from lmcache_ascend.integrations.lmcache import device_plugin
from lmcache_ascend.integrations.lmcache.device_plugin import BACKEND_NAME, AscendCpuDeviceOps, AscendCpuDeviceSpec

OP_NAMES = [n for n in dir(ops) if not n.startswith("_") and callable(getattr(ops, n)) and not isinstance(getattr(ops, n), type)]

PROBE = """
import json, lmcache
from lmcache import device_ops
import lmcache_ascend.ops as ops
from lmcache.v1.multiprocess.transfer_context.base import _detect_block_transfer_accepts_tensor
names = [n for n in dir(ops) if not n.startswith("_") and callable(getattr(ops, n)) and not isinstance(getattr(ops, n), type)]
print("RESULT " + json.dumps({
    "ops_class": type(device_ops).__name__,
    "torch_dev": type(lmcache.torch_dev).__name__,
    "device_type": lmcache.torch_device_type,
    "bound": sorted(n for n in names if getattr(device_ops, n, None) is getattr(ops, n)),
    "tensor_path": _detect_block_transfer_accepts_tensor(device_ops.multi_layer_block_kv_transfer),
}))
"""


def _probe(env_backend: str | None) -> dict:
    env = {k: v for k, v in __import__("os").environ.items() if k != "LMCACHE_DEVICE_BACKEND"}
    if env_backend:
        env["LMCACHE_DEVICE_BACKEND"] = env_backend
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(lines[0][len("RESULT ") :])


def test_entry_point_names_the_spec_class() -> None:
    (ep,) = [e for e in entry_points(group="lmcache.device_plugins") if e.name == BACKEND_NAME]
    assert ep.load() is AscendCpuDeviceSpec
    assert AscendCpuDeviceSpec().backend_name == ep.name  # LMCache rejects a mismatch


def test_selected_backend_binds_every_op_of_ours() -> None:
    got = _probe(BACKEND_NAME)
    assert got["ops_class"] == "AscendCpuDeviceOps"
    assert got["device_type"] == "cpu" and got["torch_dev"] == "StubCPUDevice"
    assert got["bound"] == sorted(OP_NAMES)
    # LMCache's MP path takes its tensor (not pinned-pointer) route only if it
    # sees "Tensor" in this parameter's annotation.
    assert got["tensor_path"] is True


def test_without_the_env_var_lmcache_keeps_its_own_backend() -> None:
    got = _probe(None)
    assert got["ops_class"] == "CpuDeviceOps"
    assert got["bound"] == []


def test_available_only_when_selected(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = AscendCpuDeviceSpec()
    monkeypatch.delenv("LMCACHE_DEVICE_BACKEND", raising=False)
    assert spec.is_available() is False
    monkeypatch.setenv("LMCACHE_DEVICE_BACKEND", BACKEND_NAME)
    assert spec.is_available() is True
    assert spec.device_type == "cpu" and spec.ops_cls is AscendCpuDeviceOps


def test_torch_module_name_resolves_to_a_stub_device() -> None:
    """LMCache's explicit backend selection returns getattr(torch, torch_module_name)
    as lmcache.torch_dev; its server calls torch_dev.device(...), which torch.cpu lacks."""
    dev = getattr(torch, AscendCpuDeviceSpec().torch_module_name)
    assert dev is getattr(torch, device_plugin.TORCH_MODULE_NAME)
    assert callable(getattr(dev, "device", None)) and callable(getattr(dev, "synchronize", None))


def test_ensure_native_binds_ops_once() -> None:
    dev_ops = AscendCpuDeviceOps()
    dev_ops.ensure_native()
    for name in OP_NAMES:
        assert getattr(dev_ops, name) is getattr(ops, name), name
    dev_ops.ensure_native()  # idempotent
    # Ops we do not provide keep LMCache's implementation.
    assert "tensor_from_ptr" not in vars(dev_ops)
    assert "record_completion_on_stream" not in vars(dev_ops)


def test_builtin_npu_device_binds_lmcache_ascend_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    """LMCache 0.5.6's own Ascend device imports lmcache_ascend.ops by name and
    binds it; torch_npu cannot install here, so torch.npu is a stand-in."""
    from lmcache.v1.platform.devices.npu import NpuDeviceSpec
    from lmcache.v1.platform.devices.npu.device_ops import NpuDeviceOps

    fake_npu = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 1, current_device=lambda: 0)
    monkeypatch.setattr(torch, "npu", fake_npu, raising=False)
    spec = NpuDeviceSpec()
    assert spec.is_available() is True
    assert spec.ops_cls is NpuDeviceOps
    npu_ops = spec.get_ops()
    for name in OP_NAMES:
        assert getattr(npu_ops, name) is getattr(ops, name), name
    assert npu_ops.EngineKVFormat is ops.EngineKVFormat
