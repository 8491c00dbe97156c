"""Ask Linux for AMX tile state in a vLLM CPU worker, before its first forward.

On x86 CPUs with AMX, Linux grants the tile registers to a process only after
``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``. vLLM CPU 0.32's
attention kernels use AMX instructions but the short-query path does not
request that permission first: a worker whose first forward is a short query
dies with SIGILL ("Illegal instruction"). Without LMCache that is a prompt of a
few tokens; with LMCache it is every fresh process whose first request is a
full cache hit (only the last token is computed). Requesting the permission at
start-up is harmless: it is idempotent, and refused (returns False) on CPUs or
kernels without AMX.
"""

from __future__ import annotations

import ctypes
import platform
import sys

_SYS_ARCH_PRCTL = 158  # x86-64 syscall number
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18


def request_amx_permission() -> bool:
    """True when the kernel granted AMX tile data to this process."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0)
