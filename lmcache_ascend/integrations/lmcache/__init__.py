"""LMCache device connectors on the lmcache_ascend kernels, and their plug-in point.

``ASCEND_CPU_BACKEND`` is the name of the device backend
(``LMCACHE_DEVICE_BACKEND=ascend_cpu``). It lives here, not only in
``device_plugin``, so that code naming the backend does not import LMCache: LMCache
loads every device plugin while its platform package initialises, and a first
import of ``device_plugin`` would hand it the half-initialised module.
"""

ASCEND_CPU_BACKEND = "ascend_cpu"
