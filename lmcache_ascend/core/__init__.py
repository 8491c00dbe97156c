"""Framework-neutral kernel core: tensor descriptions, KV format detection,
layer groups and the plane tables the host kernels execute.

Nothing here imports torch or MindSpore at module top; tensors are described
through :func:`describe` by their module name.
"""

from lmcache_ascend.core.detection import KVCacheLayout, detect_kv_layout, physical_view
from lmcache_ascend.core.kv_format import FORMATS, FormatSpec, KVFormat, format_spec, to_upstream
from lmcache_ascend.core.layer_groups import KVLayerGroup, LayerIdentity, build_layer_groups
from lmcache_ascend.core.planes import KVGeometry, ObjectPlane, PagedPlane
from lmcache_ascend.core.tensor_desc import TensorDesc, describe

__all__ = [
    "FORMATS",
    "FormatSpec",
    "KVCacheLayout",
    "KVFormat",
    "KVGeometry",
    "KVLayerGroup",
    "LayerIdentity",
    "ObjectPlane",
    "PagedPlane",
    "TensorDesc",
    "build_layer_groups",
    "describe",
    "detect_kv_layout",
    "format_spec",
    "physical_view",
    "to_upstream",
]
