"""Engine adapters. Each sub-package wires one serving stack to the kernel core:

- ``lmcache``: LMCache device connectors (paged and layerwise), the module that
  plugs them into LMCache's in-process engine (``plugin``), the ``ascend_cpu``
  device backend for LMCache's multi-process mode (``device_plugin``), CacheBlend's
  buffer connector (``blend_connector``) and per-token views of vLLM CPU's packed KV
  (``cpu_kv_layout``).
- ``vllm``: the vLLM v1 KV connector ``LMCacheAscendConnectorV1Dynamic``.
- ``sglang``: SGLang's ``--enable-lmcache`` radix cache on NPU and host KV pools.
- ``mindspore``: the MindSpore flavour (``USE_MINDSPORE=1``): MindSpore tensors,
  device connectors and the vLLM-MindSpore connector.
"""
