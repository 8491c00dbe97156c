"""CacheBlend for lmcache-ascend, with hole mode.

LMCache's CacheBlend (``enable_blending``) caches the KV of prompt *segments*
(split at ``blend_special_str``) independently of their position, and reuses
them wherever they appear: cached K is re-rotated to its new positions, the
tokens whose K deviates most from a fresh computation at a check layer are
recomputed (``blend_recompute_ratios``), all others keep their cached KV.

Standard blending reuses segments only up to the first one that is not cached.
Hole mode (``extra_config: {blend_hole_mode: true}``) is a flag on the same
path: the segment lookup keeps every cached segment, the plan marks the missing
segments ("holes") for recompute, and the load fills all cached segments.

Modules, each with one job:

- ``settings``: the blend settings read from LMCache's config.
- ``segments``: segment-aware lookup against a real LMCache engine.
- ``plan``: which tokens are loaded, which must be recomputed, top-k selection.
- ``retrieve``: layerwise load of the chosen segments (protocol of ``retrieve_layer``).
- ``rope``: cos/sin table and K re-rotation with our ``rotary_embedding_k_fused``.
- ``model``: layer-by-layer access to a transformers Llama.
- ``forward``: the blended layerwise forward (selection, attention of selected tokens).
- ``blender``: the blender LMCache's vLLM adapter calls (``blend(tokens, mask, **kw)``).

The in-process LMCache + paged-KV stack and the synthetic multi-document workload
that tests, examples and benchmarks use live in the test kit
(``testkit/blend_stack.py``, ``testkit/blend_workload.py``), not in the package.

The device connector is ``integrations/lmcache/blend_connector.py`` (``KV_2TD``).
"""
