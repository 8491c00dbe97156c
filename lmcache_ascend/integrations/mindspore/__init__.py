"""MindSpore adapter (the ``USE_MINDSPORE=1`` flavour): vLLM-MindSpore KV through LMCache.

What it serves: an engine whose paged KV is MindSpore tensors, per layer a
``(K, V)`` tuple of ``[num_blocks, block_size, num_kv_heads, head_size]``
tensors, or for MLA models a 1-tuple ``(latent,)`` of
``[num_blocks, block_size, 1, head_size]`` (vllm-mindspore's layouts), resident in
host memory. LMCache's memory objects are exactly the PyTorch flavour's
(``KV_2LTD`` ``[2, L, T, H]``, ``KV_MLA_FMT`` ``[1, L, T, H]``, layerwise
``KV_T2D`` ``[T, 2, H]``), so a chunk stored by either flavour loads in the other.

Modules (none imports MindSpore at module level; it is imported when first needed):

- ``engine_kv``: the engine's MindSpore KV described once (format, geometry,
  pointer table), with a sync before any pointer is taken.
- ``transfer``: KV <-> memory objects through the host C++ core, on plane tables
  from ``core.planes`` (``kernels.host.run_planes``); no torch and no MindSpore op
  touches the bytes.
- ``connectors``: LMCache device connectors (paged and layerwise) for that KV.
- ``vllm_connector``: ``LMCacheAscendConnectorV1Dynamic`` for vllm-mindspore
  (imports vLLM and LMCache's vLLM integration).
- ``flavour``: which vLLM connector class the installed flavour exposes.
"""
