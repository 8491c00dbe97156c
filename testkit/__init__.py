"""The test kit: what tests, examples and benchmarks use to run the package, not part of it.

Nothing here ships in the wheel (``pyproject.toml`` packages only
``lmcache_ascend``) and nothing in ``lmcache_ascend`` imports it (checked by
the import contract in ``pyproject.toml``). It is importable from the
repository root: pytest puts the root on ``sys.path``; examples and benchmarks
add it themselves; child processes get it through ``PYTHONPATH``
(:func:`testkit.vllm_runner.kit_env`).

- ``tiny_model``: a random-weight Llama built locally (no download) and prompts for it.
- ``vllm_settings``: ready-made ``kv_transfer_config`` / ``LMCACHE_*`` settings for the connector.
- ``vllm_offline``: start an offline vLLM ``LLM`` with those settings and time one prompt.
- ``vllm_runner``: run one offline vLLM engine in a child process and collect its results.
- ``mp_server``: start and stop an ``lmcache server`` (multi-process mode).
- ``remote_servers``: Redis / LMCache servers and fault proxies on loopback.
- ``blend_stack`` / ``blend_workload``: an in-process LMCache + paged-KV stack for
  CacheBlend and a synthetic multi-document workload.
"""
