"""vLLM's KV-cache groups (hybrid KV manager) as the connector serves them.

With vLLM's hybrid KV cache manager on (the connector declares ``SupportsHMA``),
a model whose layers differ in attention kind, e.g. sliding-window and full
attention, gets one KV-cache group per kind. Each group has its own layers,
block size and, per request, block table; block ids of all groups index one
shared pool, and block 0 is vLLM's null block: a sliding-window group's blocks
that have left every window (or were never needed, on a prefix hit) are
replaced by it. vLLM gives the connector the groups in ``KVCacheConfig`` and,
per request, ``block_ids`` as one list per group.

- :func:`kv_groups` reads ``KVCacheConfig`` into :class:`HybridGroup`
  descriptors, refusing (``ValueError`` naming the group) what cannot be
  stored chunk by chunk: recurrent state (Mamba), chunked-local, circular,
  sink or compressed attention, retained spec-decode tokens.
- :func:`is_hybrid`: one full-attention group (every model when the hybrid
  manager is off) keeps the single-group path exactly as before.
- :func:`check_hybrid_config`: start-up refusals for what this path does not
  serve (block sizes that do not divide the chunk on host KV, remote tiers,
  layerwise, CacheBlend).
- :class:`GroupBlockTables` (scheduler side): each request's block ids per
  group, kept from vLLM's scheduler output step by step; after LMCache's adapter
  built a step's metadata it replaces each request's slot mapping by the
  ``[T, G]`` one the hybrid device connector takes (null block -> ``-1``) and
  moves a request's first stored chunk past any chunk that needs a null block
  (its KV is not in the engine: such a chunk is never stored).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from lmcache_ascend.integrations.lmcache.hybrid_connector import HybridGroup

FULL_SPECS = ("FullAttentionSpec", "MLAAttentionSpec")
WINDOW_SPECS = ("SlidingWindowSpec", "SlidingWindowMLASpec")
NULL_BLOCK = 0  # vLLM's BlockPool.null_block: the first block, never given to a request


def _leaf_spec(spec: Any, name: str) -> Any:
    """The spec of a group's layers (``UniformTypeKVCacheSpecs`` holds one per layer, all of one type)."""
    inner = getattr(spec, "kv_cache_specs", None)
    if not isinstance(inner, dict):
        return spec
    kinds = {(type(s).__name__, getattr(s, "sliding_window", None)) for s in inner.values()}
    if len(kinds) != 1:
        raise ValueError(f"{name}: its layers have different attention kinds {sorted(map(str, kinds))}")
    return next(iter(inner.values()))


def _group(index: int, group: Any, whole_blocks: bool) -> tuple[HybridGroup, int]:
    """One vLLM ``KVCacheGroupSpec`` as a :class:`HybridGroup`, and its block size."""
    spec = group.kv_cache_spec
    name = f"KV-cache group {index} ({type(spec).__name__}, layers {list(group.layer_names)[:3]}...)"
    leaf = _leaf_spec(spec, name)
    cls = type(leaf).__name__
    if not getattr(group, "enable_kv_transfer", True):
        raise ValueError(f"{name}: vLLM marks it as not transferable (rebuilt from another group after a load)")
    if cls in FULL_SPECS + WINDOW_SPECS and getattr(leaf, "tokens_per_state", 1) != 1:
        raise ValueError(f"{name}: compresses {leaf.tokens_per_state} tokens per cache position, not supported")
    layers = tuple(group.layer_names)
    if cls in FULL_SPECS:
        return HybridGroup(name, "full", layers), int(spec.block_size)
    if cls in WINDOW_SPECS:
        if getattr(leaf, "extra_retained_tokens", 0):
            raise ValueError(f"{name}: retains {leaf.extra_retained_tokens} tokens past its window for speculative decoding, not supported")
        block_size = int(spec.block_size)
        return HybridGroup(name, "sliding_window", layers, int(leaf.sliding_window), block_size if whole_blocks else 1), block_size
    raise ValueError(
        f"{name}: LMCache-Ascend stores full-attention and sliding-window groups; a {cls} group holds "
        "state or a layout a prefix cannot be rebuilt from chunk by chunk. Serve this model without "
        "the connector, or with --disable-hybrid-kv-cache-manager if vLLM allows it for this model."
    )


def kv_groups(kv_cache_config: Any, whole_blocks: bool = False) -> tuple[tuple[HybridGroup, ...], tuple[int, ...]]:
    """vLLM's KV-cache groups and their block sizes, or ``ValueError`` naming the first it cannot serve.

    ``whole_blocks``: the KV moves only in whole blocks (vLLM CPU's packed
    blocks): sliding windows are stored from the start of their first block.
    """
    pairs = [_group(i, g, whole_blocks) for i, g in enumerate(kv_cache_config.kv_cache_groups)]
    if not pairs:
        raise ValueError("kv_cache_config has no KV-cache groups")
    return tuple(g for g, _ in pairs), tuple(b for _, b in pairs)


def is_hybrid(groups: Sequence[HybridGroup]) -> bool:
    """Whether the hybrid path serves these groups (anything but one full-attention group)."""
    return len(groups) > 1 or groups[0].kind != "full"


def check_hybrid_config(groups: Sequence[HybridGroup], block_sizes: Sequence[int], config: Any, whole_blocks: bool) -> None:
    """Refuse, at start-up and naming the group or setting, what the hybrid path cannot serve."""
    for group, block_size in zip(groups, block_sizes):
        if whole_blocks and config.chunk_size % block_size:
            raise ValueError(
                f"{group.name}: block size {block_size} does not divide LMCache chunk_size {config.chunk_size}; "
                "host (vLLM CPU) KV moves whole blocks only"
            )
        if group.sliding_window is not None and group.sliding_window > config.chunk_size:
            raise ValueError(
                f"{group.name}: sliding window {group.sliding_window} exceeds LMCache chunk_size {config.chunk_size}; "
                "a chunk would need tokens of an earlier chunk. Raise LMCACHE_CHUNK_SIZE."
            )
    for setting, why in (
        ("use_layerwise", "layerwise transfer moves one layer of every chunk at a time"),
        ("enable_blending", "CacheBlend recomputes single tokens across all layers"),
    ):
        if getattr(config, setting, False):
            raise ValueError(f"{setting}: not supported for models with several KV-cache groups ({why})")
    if getattr(config, "remote_url", None):
        raise ValueError(
            "remote_url: a remote tier is not supported for models with several KV-cache groups: vLLM 0.32 "
            "cannot recompute a failed synchronous load for such models (it stops the engine), and a remote "
            "read can fail. Use the local CPU and disk tiers."
        )


def tail_block(block_sizes: Sequence[int]) -> int:
    """The block every group ends a whole block on (block tails cut stores and lookups to it)."""
    return math.lcm(*block_sizes)


class GroupBlockTables:
    """Scheduler side: each request's block ids per group, and the ``[T, G]`` slot mappings."""

    def __init__(self, groups: Sequence[HybridGroup], block_sizes: Sequence[int], chunk_size: int) -> None:
        self.groups = tuple(groups)
        self.block_sizes = tuple(block_sizes)
        self.chunk_size = chunk_size
        self._blocks: dict[str, list[list[int]]] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    def update(self, scheduler_output: Any) -> None:
        """Follow one step of vLLM's scheduler (call once per step, from ``build_connector_meta``)."""
        for req_id in scheduler_output.finished_req_ids:
            self._blocks.pop(req_id, None)
        for req in scheduler_output.scheduled_new_reqs:
            self._blocks[req.req_id] = self._lists(req.block_ids, req.req_id)
        cached = scheduler_output.scheduled_cached_reqs
        resumed = getattr(cached, "resumed_req_ids", set())
        for req_id, new in zip(cached.req_ids, cached.new_block_ids):
            if new is None:
                continue
            lists = self._lists(new, req_id)
            if req_id in resumed or req_id not in self._blocks:
                self._blocks[req_id] = lists
            else:
                for mine, more in zip(self._blocks[req_id], lists):
                    mine.extend(more)

    def _lists(self, block_ids: Sequence[Sequence[int]], req_id: str) -> list[list[int]]:
        if len(block_ids) != len(self.groups):
            raise ValueError(f"request {req_id}: block_ids has {len(block_ids)} groups, the model {len(self.groups)}")
        return [list(ids) for ids in block_ids]

    def forget(self, req_id: str) -> None:
        self._blocks.pop(req_id, None)

    def slot_mapping(self, req_id: str, num_tokens: int) -> torch.Tensor:
        """int64 ``[num_tokens, G]``: each group's slot per token, ``-1`` on the null block or past its blocks."""
        columns = []
        tokens = torch.arange(num_tokens, dtype=torch.int64)
        for ids, block_size in zip(self._blocks[req_id], self.block_sizes):
            blocks = torch.full((-(-num_tokens // block_size),), NULL_BLOCK, dtype=torch.int64)
            known = torch.tensor(ids[: blocks.numel()], dtype=torch.int64)
            blocks[: known.numel()] = known
            per_token = blocks[tokens // block_size]
            columns.append(torch.where(per_token == NULL_BLOCK, -1, per_token * block_size + tokens % block_size))
        return torch.stack(columns, dim=1)

    def first_storable(self, slots: torch.Tensor, start: int) -> int:
        """The first chunk start >= ``start`` (chunk-aligned) from which every chunk's KV is in the engine."""
        first = start - start % self.chunk_size
        for begin in range(first, slots.shape[0], self.chunk_size):
            end = min(begin + self.chunk_size, slots.shape[0])
            for g, group in enumerate(self.groups):
                window_start = end - (group.sliding_window or self.chunk_size)
                lo = max(begin, window_start - window_start % group.window_align)
                if bool((slots[lo:end, g] < 0).any()):
                    first = end
                    break
        return first

    def apply(self, metadata: Any) -> None:
        """Give each request of LMCache's step metadata its ``[T, G]`` slot mapping; stores start where KV exists."""
        for request in getattr(metadata, "requests", ()):
            if request.req_id not in self._blocks:
                raise ValueError(f"request {request.req_id}: no block ids were seen for it")
            slots = self.slot_mapping(request.req_id, len(request.token_ids))
            request.slot_mapping = slots
            spec = request.save_spec
            if spec is not None and spec.can_save:
                spec.skip_leading_tokens = self.first_storable(slots, spec.skip_leading_tokens)
