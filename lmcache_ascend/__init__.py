"""lmcache-ascend: LMCache KV-cache offloading for engines upstream LMCache does not serve.

Importing the package is cheap on purpose: LMCache imports ``lmcache_ascend.ops``
by name from its device layer, so nothing here may pull in an engine, torch_npu
or MindSpore. Sub-packages:

- ``lmcache_ascend.core``: framework-neutral KV layout logic (no torch import).
- ``lmcache_ascend.kernels``: the op implementations (host C++ and device-generic torch).
- ``lmcache_ascend.ops``: the op surface LMCache binds (names of ``lmcache.cuda_ops``).
- ``lmcache_ascend.integrations``: engine adapters (vLLM, vLLM-MindSpore, SGLang).
"""

from lmcache_ascend.build_info import BuildInfo, build_info
from lmcache_ascend.version import LMCACHE_UPSTREAM_VERSION, __version__

__all__ = ["BuildInfo", "LMCACHE_UPSTREAM_VERSION", "__version__", "build_info"]
