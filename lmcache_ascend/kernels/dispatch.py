"""Backend choice, and the host core's run of one plane transfer.

Framework-free: the torch ops' run (``torch_run.run``) and the description front
end (``described``) both decide and run here; only the torch ops have a
device-generic executor to fall back on.

``$LMCACHE_ASCEND_KERNEL_BACKEND`` selects the backend:

- ``auto`` (default): host C++ core when the paged buffers, the memory object
  and the slot ids are all in host memory; the device-generic torch path
  otherwise.
- ``torch``: always the device-generic torch path (tests run it on CPU).
- ``host``: always the C++ core; a device-resident argument is an error.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from lmcache_ascend.core.planes import PlaneSet
from lmcache_ascend.kernels import host

BACKEND_ENV = "LMCACHE_ASCEND_KERNEL_BACKEND"
BACKENDS = ("auto", "host", "torch")


def backend_setting() -> str:
    return _backend(os.environ.get(BACKEND_ENV))


@functools.lru_cache(maxsize=16)  # read on every op call; parsed once per distinct value
def _backend(raw: str | None) -> str:
    value = (raw or "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV} must be one of {BACKENDS}, got {value!r}")
    return value


def use_host(on_host: bool, device_memory: Callable[[], str]) -> bool:
    """Whether an op whose arguments are all in host memory (``on_host``) runs on the C++ core;
    ``device_memory()`` says what is not, for the error when the setting demands the host
    (formatted only then: this runs on every op call)."""
    setting = backend_setting()
    if setting == "host" and not on_host:
        raise ValueError(f"{BACKEND_ENV}=host but {device_memory()}")
    return on_host and setting != "torch"


def run_host(
    planes: PlaneSet, buffer_ptrs: npt.NDArray[np.int64], obj_ptr: int, slots: npt.NDArray[np.integer[Any]], skip_prefix: int, direction: int
) -> None:
    """The host branch of ``torch_run.run`` for checked paged buffer addresses (pointer-table order), a
    checked object address and C-contiguous numpy slot ids; also the description front end's run."""
    num_tokens = len(slots)
    if not planes.paged or num_tokens == 0 or skip_prefix >= num_tokens:
        return
    table = planes.bind(buffer_ptrs, obj_ptr)
    host.run_planes(table, slots.ctypes.data, slots.itemsize, num_tokens, skip_prefix, direction, planes.token_bytes)

