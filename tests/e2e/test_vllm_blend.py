"""CacheBlend and hole mode inside vLLM CPU: real engine, connector, LMCache, tiny random Llama.

Prompts are ``doc_0 SEP doc_1 SEP doc_2 SEP doc_3 SEP question``. Two engines,
float32 (so only the attention kernel, ours vs vLLM's, separates a blended
prefill from vLLM's own), recompute ratio 1.0 first:

- hole mode: prompt A cold (vLLM's own output), then B = A with document 1
  replaced by a new one and a new question. vLLM's scheduler is told every
  token up to the end of document 3 is a hit, the blender loads documents 0, 2
  and 3 (both cached documents after the hole), computes the hole, and B's
  greedy tokens equal B computed by vLLM alone;
- standard mode: B cold (vLLM's own output, the reference above), then A:
  document 1 is the hole, the hit stops at document 0, and documents 2 and 3,
  though cached, are not used; A's tokens equal A computed by vLLM alone;
- at ratio 0.15 most loaded tokens keep their cached KV (reported by the worker);
- a blend that fails before writing any KV (other documents, so the blocks hold
  stale KV) is recomputed by vLLM: the same tokens as vLLM alone, no error.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.blend_workload import MultiDocWorkload, separator_tokens
from testkit.vllm_settings import blend_env
from testkit.vllm_session import EngineSession

DOCS, DOC_LEN, QUESTION_LEN = 4, 64, 16
HOLE = 1
CPU_TIER = {"LMCACHE_LOCAL_CPU": "True", "LMCACHE_MAX_LOCAL_CPU_SIZE": "0.5"}


@pytest.fixture(scope="module")
def workload(model_dir: Path) -> MultiDocWorkload:
    from transformers import AutoTokenizer

    return MultiDocWorkload(DOCS, DOC_LEN, QUESTION_LEN, tuple(separator_tokens(AutoTokenizer.from_pretrained(model_dir))))


def open_session(model_dir: Path, tmp: Path, name: str, hole_mode: bool) -> EngineSession:
    rpc = tmp / f"rpc-{name}"
    rpc.mkdir()
    lmcache = {**CPU_TIER, **blend_env(hole_mode=hole_mode, recompute_ratio=1.0)}
    options = {"model_dir": model_dir, "lmcache_overrides": lmcache, "dtype": "float32"}
    return EngineSession(options, rpc_dir=rpc, log_path=tmp / f"{name}.log")


@pytest.fixture(scope="module")
def runs(model_dir: Path, workload: MultiDocWorkload, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Both engines' results, each engine used once (starting one costs most of the time)."""
    tmp = tmp_path_factory.mktemp("vllm-blend")
    a = workload.prompt()
    b = workload.prompt(holes=(HOLE,), variant=1)
    c = workload.prompt(holes=(2,), variant=2)
    other = MultiDocWorkload(DOCS, DOC_LEN, QUESTION_LEN, workload.separator, seed=1)
    d_cold, d = other.prompt(), other.prompt(holes=(HOLE,), variant=1)
    out: dict[str, Any] = {"a": a, "b": b}
    with open_session(model_dir, tmp, "hole", hole_mode=True) as hole:
        out["hole_a"] = hole.generate([a])[0]
        out["hole_b"] = hole.generate([b])[0]
        out["hole_b_stats"] = hole.blend()
        hole.blend(recompute_ratio=0.15)
        out["hole_c"] = hole.generate([c])[0]
        out["hole_c_stats"] = hole.blend()
        hole.generate([d_cold])
        hole.blend(break_it=True)
        out["hole_d"] = hole.generate([d])[0]
        out["hole_d_stats"] = hole.blend()
    with open_session(model_dir, tmp, "standard", hole_mode=False) as standard:
        out["standard_d"] = standard.generate([d])[0]  # other documents: nothing cached yet
        out["standard_b"] = standard.generate([b])[0]
        out["standard_a"] = standard.generate([a])[0]
        out["standard_a_stats"] = standard.blend()
    yield out



def test_cold_prompts_load_nothing(runs: dict[str, Any]) -> None:
    assert runs["hole_a"]["from_lmcache"] == 0
    assert runs["standard_b"]["from_lmcache"] == 0


def test_hole_mode_reuses_every_cached_document_after_the_hole(runs: dict[str, Any], workload: MultiDocWorkload) -> None:
    assert runs["hole_b"]["from_lmcache"] == workload.document_span(DOCS - 1)[1]  # the scheduler saw the hits after the hole
    stats = runs["hole_b_stats"]
    assert stats["installed"] and stats["hole_mode"] and stats["failures"] == 0
    last = stats["last"]
    assert (last["segments"], last["cached_segments"], last["used_segments"]) == (DOCS, DOCS - 1, DOCS - 1)
    assert last["segments_after_hole"] == DOCS - 1 - HOLE
    assert last["loaded_tokens"] == (DOCS - 1) * DOC_LEN


def test_standard_blending_stops_at_the_hole(runs: dict[str, Any], workload: MultiDocWorkload) -> None:
    assert runs["standard_a"]["from_lmcache"] == workload.document_span(HOLE - 1)[1]
    last = runs["standard_a_stats"]["last"]
    assert last["used_segments"] == HOLE and last["segments_after_hole"] == 0
    assert runs["standard_a_stats"]["failures"] == 0 and not runs["standard_a_stats"]["hole_mode"]


def test_ratio_one_equals_vllm_full_recompute(runs: dict[str, Any]) -> None:
    # vLLM computed B (standard engine, cold) and A (hole engine, cold) without any reuse.
    assert runs["hole_b"]["token_ids"] == runs["standard_b"]["token_ids"]
    assert runs["standard_a"]["token_ids"] == runs["hole_a"]["token_ids"]
    assert runs["hole_b_stats"]["last"]["reused_tokens"] == 0  # every loaded token was recomputed


def test_low_ratio_keeps_most_cached_kv(runs: dict[str, Any], workload: MultiDocWorkload) -> None:
    result, last = runs["hole_c"], runs["hole_c_stats"]["last"]
    assert result["finish_reason"] == "length" and len(result["token_ids"]) == 16
    assert result["from_lmcache"] == workload.document_span(DOCS - 1)[1]
    loaded = last["loaded_tokens"]
    assert loaded == (DOCS - 1) * DOC_LEN and last["segments_after_hole"] == 1
    assert last["reused_tokens"] >= loaded - int(0.15 * loaded) - 1, last


def test_a_failed_blend_is_recomputed_by_vllm(runs: dict[str, Any]) -> None:
    stats = runs["hole_d_stats"]
    assert stats["failures"] == 1 and stats["requests"] == runs["hole_c_stats"]["requests"]
    assert runs["standard_d"]["from_lmcache"] == 0
    assert runs["hole_d"]["finish_reason"] == "length"
    assert runs["hole_d"]["token_ids"] == runs["standard_d"]["token_ids"]
