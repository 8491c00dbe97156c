"""vllm-ascend's ``LMCacheAscendConnector`` name, answered by this package's connector.

vllm-ascend (0.23.0.post1, its ``vllm.general_plugins`` entry point
``ascend_kv_connector``) registers ``"LMCacheAscendConnector"`` in vLLM's
``KVConnectorFactory`` as class ``LMCacheConnectorV1`` of its module
``vllm_ascend.distributed.kv_transfer.kv_pool.lmcache_ascend_connector``. That
module is two lines: ``import lmcache_ascend`` (LMCache-Ascend patches LMCache on
import) and ``from vllm...lmcache_connector import LMCacheConnectorV1``, vLLM's own
wrapper over LMCache's unpatched in-process adapter. So users who write
``{"kv_connector": "LMCacheAscendConnector", "kv_role": "kv_both"}`` get vLLM's
class, whose engine would use LMCache's CUDA-only device connector.

This package patches nothing on import. Instead :func:`install`, which vLLM calls
in each of its processes through this package's own ``vllm.general_plugins``
entry point (before any connector is built), puts an import hook in front of
``sys.meta_path`` that reacts to that one module: once vllm-ascend's code has
run, the module's ``LMCacheConnectorV1`` is replaced by the connector of this
package's flavour (``LMCacheAscendConnectorV1Dynamic``), so the factory builds
ours, with everything it does (device connectors, guards, block tails, bounded
shutdown). Nothing else is touched: no other module, not vLLM's class, not the
factory's registry; a process that never imports that module never notices.

The hook imports neither vLLM nor LMCache until the module is imported.
``tests/integrations/vllm/test_vllm_ascend_hook.py`` pins vllm-ascend's module
(real source, ``scripts/vllm_ascend_src.sh``): it must still export
``LMCacheConnectorV1`` as vLLM's class, or the hook has nothing to replace.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

TARGET = "vllm_ascend.distributed.kv_transfer.kv_pool.lmcache_ascend_connector"
REGISTERED_CLASS = "LMCacheConnectorV1"  # the attribute vllm-ascend's registration names


def install() -> None:
    """Put the hook in front of ``sys.meta_path`` (once per process); vLLM's plugin entry point."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    module = sys.modules.get(TARGET)
    if module is not None and hasattr(module, REGISTERED_CLASS):
        replace_class(module)  # imported before the hook existed


def replace_class(module: ModuleType) -> None:
    """Point vllm-ascend's registered attribute at this package's connector."""
    from lmcache_ascend.build_info import build_info
    from lmcache_ascend.integrations.flavour import connector_class

    if not hasattr(module, REGISTERED_CLASS):
        raise ImportError(
            f"{TARGET} no longer defines {REGISTERED_CLASS} (vllm-ascend changed its LMCache connector "
            "module); configure the connector with its module path instead: "
            '{"kv_connector": "LMCacheAscendConnectorV1Dynamic", '
            '"kv_connector_module_path": "lmcache_ascend.integration.vllm.lmcache_ascend_connector_v1"}'
        )
    setattr(module, REGISTERED_CLASS, connector_class(build_info().flavour))


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


class _Loader(importlib.abc.Loader):
    """vllm-ascend's own loader, then :func:`replace_class`."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        replace_class(module)
