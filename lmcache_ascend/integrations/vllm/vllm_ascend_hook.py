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
entry point (before any connector is built), registers an import-time patch
(:func:`lmcache_ascend.upstream.patching.patch_on_import`) for that one module: once vllm-ascend's code has
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

from types import ModuleType

from lmcache_ascend.upstream.patching import patch_on_import, replace_attribute

TARGET = "vllm_ascend.distributed.kv_transfer.kv_pool.lmcache_ascend_connector"
REGISTERED_CLASS = "LMCacheConnectorV1"  # the attribute vllm-ascend's registration names


def install() -> None:
    """Replace the class as soon as vllm-ascend's module has run (now, if it already has);
    vLLM's plugin entry point, once per process."""
    patch_on_import(TARGET, replace_class)


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
    replace_attribute(module, REGISTERED_CLASS, connector_class(build_info().flavour))
