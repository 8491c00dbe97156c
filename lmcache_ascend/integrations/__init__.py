"""Engine adapters. Each sub-package wires one serving stack to the kernel core:

- ``lmcache``: LMCache device connectors (paged and layerwise) and the one
  module that plugs them into LMCache's engine (``plugin``).
- ``vllm``: the vLLM v1 KV connector ``LMCacheAscendConnectorV1Dynamic``.
"""
