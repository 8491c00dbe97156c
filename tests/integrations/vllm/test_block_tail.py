"""Block tails on host KV: a prompt's last partial chunk is stored and found up to its last whole block.

Step by step with vLLM's real scheduler-side and worker-side classes (as
``test_step_flow.py``). Block 128, chunk 256: a 700-token prompt has two full
chunks (blocks 0-3), a tail of one whole block (block 4, tokens 512..640) and 60
tokens in block 5 that are never stored. Chunk keys are LMCache's own prefix
hashes over a chunk's exact tokens, so the 128-token tail and a full chunk that
starts with the same 128 tokens are different keys: one is never loaded for the other.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lmcache.integration.vllm.vllm_v1_adapter import LoadSpec, RequestTracker

from lmcache_ascend.integrations.vllm import block_tail
from testkit.tiny_model import prompt_token_ids
from tests.integrations.vllm import helpers
from tests.integrations.vllm.conftest import MakeConnectors
from tests.integrations.vllm.test_step_flow import store_first_request, stored_locations

PROMPT = 700
ALIGNED = 640  # whole blocks of PROMPT: two chunks and one block of tail
BLOCKS_A = [0, 1, 2, 3, 4, 5]


def test_a_repeated_prompt_loads_its_tail_block_exactly(make_connectors: MakeConnectors, gen: torch.Generator) -> None:
    c = make_connectors()
    tokens = prompt_token_ids(PROMPT)
    store_first_request(c, tokens, BLOCKS_A)
    assert stored_locations(c, tokens[:ALIGNED]) == ["LocalCPUBackend"] * 3
    stored = helpers.snapshot_blocks(c.caches, BLOCKS_A[:5])
    helpers.scramble_blocks(c.caches, BLOCKS_A, gen)

    request = helpers.make_request("req-b", tokens)
    blocks_b = [9, 5, 17, 11, 20, 3]
    helpers.zero_blocks(c.caches, blocks_b)
    assert c.scheduler.get_num_new_matched_tokens(request, 0) == (ALIGNED, False)
    output = helpers.schedule_new(c.scheduler, request, blocks_b, ALIGNED)
    req_meta = helpers.connector_metadata(output).requests[0]
    assert req_meta.load_spec == LoadSpec(vllm_cached_tokens=0, lmcache_cached_tokens=ALIGNED, can_load=True)
    assert len(req_meta.token_ids) == len(req_meta.slot_mapping) == ALIGNED

    result = helpers.run_worker_step(c.config, output, helpers.cpu_attn_metadata(request, blocks_b, helpers.BLOCK))
    assert result.invalid_block_ids == set()
    assert helpers.same_blocks(helpers.blocks_of(c.caches, blocks_b[:5]), stored)
    assert helpers.all_zero(c.caches, blocks_b[5:])  # the last 60 tokens are vLLM's to compute


@pytest.mark.parametrize("tail", [1, helpers.BLOCK - 1, helpers.BLOCK, helpers.CHUNK - 1])
def test_tails_of_every_length_load_exactly_their_whole_blocks(make_connectors: MakeConnectors, gen: torch.Generator, tail: int) -> None:
    c = make_connectors()
    tokens = prompt_token_ids(2 * helpers.CHUNK + tail, offset=tail)
    whole = block_tail.aligned(len(tokens), helpers.BLOCK)  # 512, 512, 640, 640
    blocks_a = list(range(-(-len(tokens) // helpers.BLOCK)))
    store_first_request(c, tokens, blocks_a)
    stored = helpers.snapshot_blocks(c.caches, blocks_a[: whole // helpers.BLOCK])
    helpers.scramble_blocks(c.caches, blocks_a, gen)

    request = helpers.make_request("req-b", tokens)
    blocks_b = [b + 10 for b in blocks_a]
    helpers.zero_blocks(c.caches, blocks_b)
    hit = whole - 1 if whole == len(tokens) else whole  # a full hit leaves vLLM the last token
    assert c.scheduler.get_num_new_matched_tokens(request, 0) == (hit, False)
    output = helpers.schedule_new(c.scheduler, request, blocks_b, hit)
    result = helpers.run_worker_step(c.config, output, helpers.cpu_attn_metadata(request, blocks_b, helpers.BLOCK))
    assert result.invalid_block_ids == set()
    assert helpers.same_blocks(helpers.blocks_of(c.caches, blocks_b[: whole // helpers.BLOCK]), stored)
    assert helpers.all_zero(c.caches, blocks_b[whole // helpers.BLOCK :])


def test_a_longer_prompt_never_takes_the_tail_for_a_full_chunk(make_connectors: MakeConnectors) -> None:
    c = make_connectors()
    tokens = prompt_token_ids(PROMPT)
    store_first_request(c, tokens, BLOCKS_A)
    longer = tokens[:ALIGNED] + prompt_token_ids(200, offset=5)  # chunk 2 is full: tail block + 128 others
    request = helpers.make_request("req-c", longer)
    assert c.scheduler.get_num_new_matched_tokens(request, 0) == (512, False)  # the two full chunks only
    assert c.worker.lmcache_engine.lookup(tokens=longer[:768]) == 512


def test_switched_off_only_full_chunks_are_stored(make_connectors: MakeConnectors) -> None:
    c = make_connectors(extra={block_tail.TAILS_KEY: False})
    tokens = prompt_token_ids(PROMPT)
    store_first_request(c, tokens, BLOCKS_A)
    assert c.worker.lmcache_engine.config.save_unfull_chunk is False
    assert c.scheduler.get_num_new_matched_tokens(helpers.make_request("req-b", tokens), 0) == (512, False)


def test_a_prompt_of_whole_blocks_is_a_full_hit(make_connectors: MakeConnectors) -> None:
    c = make_connectors()
    tokens = prompt_token_ids(ALIGNED, offset=9)
    store_first_request(c, tokens, BLOCKS_A[:5])
    request = helpers.make_request("req-b", tokens)
    assert c.scheduler.get_num_new_matched_tokens(request, 0) == (ALIGNED - 1, False)  # vLLM recomputes the last token


# ---------------------------------------------------------------- the pieces


def test_aligned() -> None:
    assert [block_tail.aligned(n, 128) for n in (0, 127, 128, 700)] == [0, 0, 128, 640]
    with pytest.raises(ValueError, match="block_size"):
        block_tail.aligned(10, 0)


def _vllm_config(device: str = "cpu", extra: dict | None = None, block_size: int = 128) -> SimpleNamespace:
    return SimpleNamespace(
        kv_transfer_config=SimpleNamespace(kv_connector_extra_config=extra),
        device_config=SimpleNamespace(device=device),
        cache_config=SimpleNamespace(block_size=block_size),
    )


def test_wanted_only_on_host_kv_without_cacheblend() -> None:
    plain, blending = SimpleNamespace(enable_blending=False), SimpleNamespace(enable_blending=True)
    assert block_tail.wanted(_vllm_config(), plain) is True
    assert block_tail.wanted(_vllm_config("npu"), plain) is False
    assert block_tail.wanted(_vllm_config(), blending) is False
    assert block_tail.wanted(_vllm_config(extra={block_tail.TAILS_KEY: False}), plain) is False
    with pytest.raises(TypeError, match="lmcache_ascend.block_tails"):
        block_tail.wanted(_vllm_config(extra={block_tail.TAILS_KEY: "yes"}), plain)


def test_configure_turns_on_partial_chunks() -> None:
    config = SimpleNamespace(enable_blending=False, save_unfull_chunk=False)
    assert block_tail.configure(_vllm_config(block_size=64), config) == 64
    assert config.save_unfull_chunk is True
    device = SimpleNamespace(enable_blending=False, save_unfull_chunk=False)
    assert block_tail.configure(_vllm_config("npu"), device) is None and device.save_unfull_chunk is False


def test_aligned_request_cuts_only_the_token_lists() -> None:
    request = helpers.make_request("req-x", list(range(300)))
    seen = block_tail.BlockAlignedRequest(request, 128)
    assert list(seen.all_token_ids) == list(range(256)) and list(seen.prompt_token_ids) == list(range(256))
    assert (seen.request_id, seen.num_tokens, seen.sampling_params) == ("req-x", 300, request.sampling_params)


def test_trim_stores_cuts_tokens_slots_and_the_tracker() -> None:
    tracker = RequestTracker(req_id="r", prompt_len=700, token_ids=list(range(700)), allocated_block_ids=BLOCKS_A, num_saved_tokens=700)
    request = SimpleNamespace(req_id="r", token_ids=list(range(700)), slot_mapping=torch.arange(700), save_spec=SimpleNamespace(skip_leading_tokens=700))
    whole = SimpleNamespace(req_id="w", token_ids=list(range(512)), slot_mapping=torch.arange(512), save_spec=None)
    assert block_tail.trim_stores(SimpleNamespace(requests=[request, whole]), {"r": tracker}, 128) == 1
    assert len(request.token_ids) == len(request.slot_mapping) == ALIGNED
    assert request.save_spec.skip_leading_tokens == ALIGNED and tracker.num_saved_tokens == ALIGNED
    assert len(whole.token_ids) == 512

