"""Block-granular tails for host (vLLM CPU) KV: a prompt's last partial chunk is kept.

vLLM CPU packs K (and V on AMX CPUs) inside each block, so only whole blocks
survive a store/load byte for byte. With LMCache's ``save_unfull_chunk`` off
(what that used to force) a prompt's last partial chunk was never stored, and
up to ``chunk_size - 1`` tokens were recomputed on every repeat. With block
tails on, the connector instead:

- sets ``save_unfull_chunk`` on LMCache's config (both processes), so chunks
  shorter than ``chunk_size`` are stored and looked up;
- stores each request up to its last whole vLLM block (:func:`trim_stores`,
  scheduler side, on the metadata LMCache's adapter built for this step);
- looks each request up by its tokens up to its last whole block
  (:class:`BlockAlignedRequest`, what the scheduler-side lookup sees).

So a repeated prompt hits as many tokens as vLLM's own prefix cache does, and
every chunk that moves is whole blocks. Chunk keys stay what LMCache makes
them: a prefix hash over the chunk's exact tokens. A partial tail of 128 tokens
and a later full chunk starting with the same 128 tokens hash different token
lists, so one is never loaded for the other
(``tests/integrations/vllm/test_block_tail.py``).

Switch: ``kv_connector_extra_config["lmcache_ascend.block_tails"]`` (default
true on host KV; ``false`` restores whole-chunk storage, which then needs
``save_unfull_chunk`` off). Not used with CacheBlend (its connector moves single
tokens) nor on device KV (LMCache's own ``save_unfull_chunk`` applies there).
Multi-process mode stores in the LMCache server, which keeps its own rules.
"""

from __future__ import annotations

from typing import Any

from lmcache.logging import init_logger

from lmcache_ascend.integrations.lmcache import plugin

logger = init_logger(__name__)

TAILS_KEY = "lmcache_ascend.block_tails"


def wanted(vllm_config: Any, config: Any) -> bool:
    """Whether this engine uses block tails: host KV, no CacheBlend, switch not off."""
    extra = vllm_config.kv_transfer_config.kv_connector_extra_config or {}
    switch = extra.get(TAILS_KEY, True)
    if not isinstance(switch, bool):
        raise TypeError(f"kv_connector_extra_config[{TAILS_KEY!r}] must be true or false, got {switch!r}")
    return switch and plugin.whole_blocks_only(vllm_config, config)


def configure(vllm_config: Any, config: Any) -> int | None:
    """Turn block tails on in LMCache's config when :func:`wanted`; the block size, else None."""
    if not wanted(vllm_config, config):
        return None
    if not config.save_unfull_chunk:
        config.save_unfull_chunk = True
        logger.info("lmcache_ascend: block tails on (a prompt's last partial chunk is stored up to its last whole block)")
    return int(vllm_config.cache_config.block_size)


def aligned(num_tokens: int, block_size: int) -> int:
    """``num_tokens`` rounded down to whole blocks."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    return num_tokens - num_tokens % block_size


class BlockAlignedRequest:
    """A vLLM request as the scheduler-side lookup should see it: token lists cut
    to whole blocks; every other attribute (id, ``num_tokens``, sampling params)
    is the request's own."""

    def __init__(self, request: Any, block_size: int) -> None:
        self._request = request
        self.all_token_ids = _cut(request.all_token_ids, block_size)
        self.prompt_token_ids = _cut(request.prompt_token_ids, block_size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def _cut(tokens: Any, block_size: int) -> Any:
    return None if tokens is None else tokens[: aligned(len(tokens), block_size)]


def trim_stores(metadata: Any, trackers: dict[str, Any], block_size: int) -> int:
    """Cut each request of LMCache's step metadata to whole blocks; how many were cut.

    ``metadata.requests`` are LMCache ``ReqMeta`` (``token_ids``,
    ``slot_mapping``, ``save_spec``); ``trackers`` LMCache's request trackers by
    id, whose ``num_saved_tokens`` must not count the cut tokens (later saves
    start from it). Loads are unaffected: a lookup never reports more than the
    aligned tokens.
    """
    trimmed = 0
    for request in getattr(metadata, "requests", ()):
        keep = aligned(len(request.token_ids), block_size)
        if keep == len(request.token_ids):
            continue
        request.token_ids = request.token_ids[:keep]
        request.slot_mapping = request.slot_mapping[:keep]
        if request.save_spec is not None:
            request.save_spec.skip_leading_tokens = min(request.save_spec.skip_leading_tokens, keep)
        tracker = trackers.get(request.req_id)
        if tracker is not None and tracker.num_saved_tokens > keep:
            tracker.num_saved_tokens = keep
        trimmed += 1
    return trimmed
