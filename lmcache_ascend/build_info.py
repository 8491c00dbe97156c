"""What this installation was built with (flags read by setup.py).

``setup.py`` writes ``lmcache_ascend/_build_info.py``; this module turns it into
a typed record and explains what to do when the package is used from a source
tree that was never built.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class BuildInfo:
    flavour: str  # "pytorch" or "mindspore" (USE_MINDSPORE=1)
    soc_version: str | None
    ascend_home_path: str | None
    npu_kernels_built: bool
    npu_kernels_reason: str
    sanitize: str | None


@functools.cache
def build_info() -> BuildInfo:
    """Return the build record; raises ImportError if the package was never built."""
    try:
        raw = importlib.import_module("lmcache_ascend._build_info")
    except ImportError as exc:
        raise ImportError(
            "lmcache_ascend/_build_info.py is missing: this source tree was never "
            "built. Run `pip install -e .` (or `pip install .`) first."
        ) from exc
    return BuildInfo(
        flavour=raw.FLAVOUR,
        soc_version=raw.SOC_VERSION,
        ascend_home_path=raw.ASCEND_HOME_PATH,
        npu_kernels_built=raw.NPU_KERNELS_BUILT,
        npu_kernels_reason=raw.NPU_KERNELS_REASON,
        sanitize=getattr(raw, "SANITIZE", None),
    )
