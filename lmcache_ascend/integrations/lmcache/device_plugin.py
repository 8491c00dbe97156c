"""LMCache device backend ``ascend_cpu``: host-resident KV on lmcache_ascend's native ops.

LMCache discovers it through the entry point group ``lmcache.device_plugins``
(``pyproject.toml``) and uses it when ``LMCACHE_DEVICE_BACKEND=ascend_cpu`` is
set in every process that imports LMCache (the ``lmcache server`` and vLLM's
processes). It is LMCache's own CPU backend (shared-memory KV wrapping, CPU
cache context, stub events) with one difference: ``lmcache.device_ops`` binds
:mod:`lmcache_ascend.ops` (``DeviceOps.bind_native``), so block transfers,
host allocation and memcpy run on the C++ core instead of the torch baseline.

Two details of LMCache 0.5.6 this relies on, each pinned by a test:

- explicit backend selection returns ``getattr(torch, spec.torch_module_name)``
  as ``lmcache.torch_dev``; ``torch.cpu`` lacks what LMCache's server calls
  (``device()``...), so a stub device like LMCache's own CPU fallback is
  registered as ``torch.lmcache_ascend_cpu`` when this module is imported;
- the backend is available only when selected by name, so installing the
  package never changes which backend LMCache picks by itself.

On vLLM CPU with AMX, the worker's first short forward needs AMX tile state
(see ``core/cpu_amx.py``); binding the ops requests it.

When the backend is selected, importing this module also installs
:mod:`lmcache_ascend.integrations.lmcache.sglang_mp_guard` (SGLang's scheduler loads
LMCache, hence this module, before it imports LMCache's SGLang connector): the
connector then survives an unreachable or restarted ``lmcache server`` and
counts failed transfers. It patches nothing in a process without SGLang.
"""

from __future__ import annotations

import os
from typing import ClassVar

import torch
from lmcache.v1.platform.devices.cpu import CpuDeviceSpec
from lmcache.v1.platform.devices.cpu.device_ops import CpuDeviceOps
from lmcache.v1.platform.devices.cpu.stub_cpu_device import StubCPUDevice

from lmcache_ascend.integrations.lmcache import ASCEND_CPU_BACKEND
from lmcache_ascend.upstream.patching import add_attribute

BACKEND_NAME = ASCEND_CPU_BACKEND
BACKEND_ENV = "LMCACHE_DEVICE_BACKEND"
TORCH_MODULE_NAME = "lmcache_ascend_cpu"

add_attribute(torch, TORCH_MODULE_NAME, StubCPUDevice("cpu"))


def selected(env: dict[str, str] | None = None) -> bool:
    return (os.environ if env is None else env).get(BACKEND_ENV, "").strip().lower() == BACKEND_NAME


if selected():
    from lmcache_ascend.integrations.lmcache import sglang_mp_guard

    sglang_mp_guard.install()


class AscendCpuDeviceOps(CpuDeviceOps):
    """CPU device ops with lmcache_ascend's native kernels bound over the torch baseline."""

    device_type: ClassVar[str] = "cpu"

    def ensure_native(self) -> None:
        if self._native_bound:
            return
        self._native_bound = True
        import lmcache_ascend.ops as native
        from lmcache_ascend.core.cpu_amx import request_amx_permission

        self.bind_native(native)
        request_amx_permission()


class AscendCpuDeviceSpec(CpuDeviceSpec):
    @property
    def backend_name(self) -> str:
        return BACKEND_NAME

    @property
    def torch_module_name(self) -> str:
        return TORCH_MODULE_NAME

    @property
    def ops_cls(self) -> type[CpuDeviceOps]:
        return AscendCpuDeviceOps

    def is_available(self) -> bool:
        return selected()
