"""Real vLLM CPU engines with LMCacheAscendConnectorV1Dynamic (each engine in its own process).

vLLM's prefix cache is off in every run, so ``from_lmcache`` (vLLM's
``num_cached_tokens``) counts tokens whose KV LMCache loaded. A full-prompt hit
is reported one short: vLLM always recomputes the last prompt token.

Greedy outputs must match token for token between cold and warm runs. The
negative control shows that check has teeth: corrupting the stored chunks
changes the output.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest

from testkit.tiny_model import prompt_token_ids

PROMPT = prompt_token_ids(2048)
# Shares the first 1024 tokens (4 chunks of 256) with PROMPT, then differs.
SHARED_HALF = PROMPT[:1024] + prompt_token_ids(300, offset=11)
CHUNK = 256


def _close(a: list[float], b: list[float], tol: float = 0.05) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, abs_tol=tol) for x, y in zip(a, b))


def test_warm_run_is_served_by_lmcache_and_matches_cold(model_dir: Path, run_vllm, tmp_path: Path) -> None:
    cold, warm, partial = run_vllm(model_dir=model_dir, prompts=[PROMPT, PROMPT, SHARED_HALF], disk_dir=tmp_path / "disk")
    assert cold["from_lmcache"] == 0
    assert warm["from_lmcache"] == len(PROMPT) - 1
    assert warm["token_ids"] == cold["token_ids"]
    assert _close(warm["logprobs"], cold["logprobs"])
    assert partial["from_lmcache"] == 1024
    assert partial["token_ids"] != cold["token_ids"]  # a different prompt: the model is not constant


@pytest.mark.slow  # the same engine run as the warm test above; kept out of the default run's time
def test_newer_lmcache_ascend_configuration_form(model_dir: Path, run_vllm) -> None:
    """``"kv_connector": "LMCacheAscendConnector"`` with ``lmcache_ascend.integration.vllm.lmcache_ascend_connector``."""
    cold, warm = run_vllm(model_dir=model_dir, prompts=[PROMPT, PROMPT], connector_form="ascend")
    assert (cold["from_lmcache"], warm["from_lmcache"]) == (0, len(PROMPT) - 1)
    assert warm["token_ids"] == cold["token_ids"]
    assert _close(warm["logprobs"], cold["logprobs"])


@pytest.mark.slow  # the same engine run as the warm test above; kept out of the default run's time
def test_vllm_ascend_registered_name(model_dir: Path, tmp_path: Path) -> None:
    """``{"kv_connector": "LMCacheAscendConnector"}`` alone, the name vllm-ascend's real plugin registers."""
    from testkit.vllm_runner import run_engine
    from tests import vllm_ascend_kit as kit

    env = {**os.environ, "PYTHONPATH": kit.pythonpath(kit.source_dir(), tmp_path / "plugins")}
    cold, warm = run_engine(
        {"model_dir": model_dir, "prompts": [PROMPT, PROMPT], "connector_form": "vllm_ascend", "disk_dir": tmp_path / "disk"},
        env=env,
        rpc_dir=tmp_path,
    )
    assert (cold["from_lmcache"], warm["from_lmcache"]) == (0, len(PROMPT) - 1)
    assert warm["token_ids"] == cold["token_ids"]
    assert _close(warm["logprobs"], cold["logprobs"])
    assert sorted((tmp_path / "disk").glob("*.pt")), "this package's connector (disk tier) did not store"


def test_fresh_process_hits_the_disk_tier_and_corruption_is_detected(model_dir: Path, run_vllm, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    (first,) = run_vllm(model_dir=model_dir, prompts=[PROMPT], disk_dir=disk)
    files = sorted(disk.glob("*.pt"))
    assert len(files) == len(PROMPT) // CHUNK, [f.name for f in files]

    corrupted = tmp_path / "corrupted"
    shutil.copytree(disk, corrupted)
    for f in sorted(corrupted.glob("*.pt")):
        data = bytearray(f.read_bytes())
        data[::2] = bytes(len(data[::2]))  # zero every other byte, keep the size
        f.write_bytes(bytes(data))

    # A new engine, tiny CPU tier: everything it reuses must come from disk.
    (second,) = run_vllm(model_dir=model_dir, prompts=[PROMPT], disk_dir=disk)
    assert second["from_lmcache"] == len(PROMPT) - 1
    assert second["token_ids"] == first["token_ids"]

    (bad,) = run_vllm(model_dir=model_dir, prompts=[PROMPT], disk_dir=corrupted)
    assert bad["from_lmcache"] == len(PROMPT) - 1
    assert bad["token_ids"] != first["token_ids"] or not _close(bad["logprobs"], first["logprobs"], tol=0.5)


def test_layerwise_mode_matches_cold(model_dir: Path, run_vllm, tmp_path: Path) -> None:
    cold, warm = run_vllm(model_dir=model_dir, prompts=[PROMPT, PROMPT], layerwise=True)
    assert cold["from_lmcache"] == 0
    assert warm["from_lmcache"] == len(PROMPT) - 1
    assert warm["token_ids"] == cold["token_ids"]
    assert _close(warm["logprobs"], cold["logprobs"])


# Switched off is the old behaviour: a control, run with the slow tests (default-run time).
@pytest.mark.parametrize(("block_size", "block_tails", "hit"), [(64, True, 960), pytest.param(64, False, 768, marks=pytest.mark.slow)])
def test_partial_tail_and_other_block_size(model_dir: Path, run_vllm, block_size: int, block_tails: bool, hit: int) -> None:
    """1000 tokens: three full chunks of 256 and a tail of 232. Block tails store the
    tail up to its last whole block (960 = vLLM's own prefix-cache hit for this
    prompt); without them the partial chunk is recomputed (768)."""
    prompt = PROMPT[:1000]
    cold, warm = run_vllm(model_dir=model_dir, prompts=[prompt, prompt], block_size=block_size, block_tails=block_tails)
    assert warm["from_lmcache"] == hit
    assert warm["token_ids"] == cold["token_ids"]
    assert _close(warm["logprobs"], cold["logprobs"])


@pytest.mark.slow  # three engine processes (~2 min)
def test_block_tail_from_disk_in_a_fresh_process_and_longer_prompts(model_dir: Path, run_vllm, tmp_path: Path) -> None:
    """A stored tail (chunk 3 = tokens 768..992, block 32) is found again by a new engine
    from the disk tier; a longer prompt whose chunk 3 is full (same first 224 tokens)
    never takes the tail's KV for it: it hits the three full chunks only, with the
    tokens a cold run gives."""
    disk = tmp_path / "disk"
    prompt, longer = PROMPT[:1000], PROMPT[:1100]
    (first,) = run_vllm(model_dir=model_dir, prompts=[prompt], disk_dir=disk, block_size=32)
    assert len(sorted(disk.glob("*.pt"))) == 4  # three full chunks and the tail
    second, longer_warm = run_vllm(model_dir=model_dir, prompts=[prompt, longer], disk_dir=disk, block_size=32)
    assert second["from_lmcache"] == 992 and second["token_ids"] == first["token_ids"]
    assert longer_warm["from_lmcache"] == 768
    (longer_cold,) = run_vllm(model_dir=model_dir, prompts=[longer], connector=False, block_size=32)
    assert longer_warm["token_ids"] == longer_cold["token_ids"]
