"""SGLang adapter: ``--enable-lmcache`` on NPU and CPU KV pools.

- :mod:`.hook`: ``install()`` makes SGLang's LMCache radix cache use this
  adapter (call it at module level of the script that starts SGLang), or run
  ``python -m lmcache_ascend.integrations.sglang.launch_server``.
- :mod:`.radix_cache`: ``AscendLMCRadixCache``, SGLang's ``LMCRadixCache``
  with the connector and streams below on non-CUDA pools.
- :mod:`.lmcache_connector`: the LMCache connector SGLang drives (lookup,
  load, layerwise load, store).
- :mod:`.device_connectors`: LMCache device connectors for SGLang pools.
- :mod:`.pools`: reading SGLang's MHA, NPU MHA and MLA KV pools.

Importing this package imports neither SGLang nor LMCache.
"""
