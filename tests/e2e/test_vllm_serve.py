"""A real ``vllm serve`` with this connector and in LMCache's multi-process mode, over HTTP.

The same prompt twice through the OpenAI completions API: the second is
served from LMCache (``cached_tokens`` from ``--enable-prompt-tokens-details``;
vLLM's prefix cache is off, so every reused token was loaded by LMCache) and its
greedy text equals the first. 1000 tokens with vLLM CPU's default block size of
128: 896 tokens in whole blocks. Marked slow (two server starts, ~2 min).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.tiny_model import prompt_token_ids
from tests.e2e.vllm_serve import complete, running_vllm_serve

pytestmark = pytest.mark.slow

PROMPT = prompt_token_ids(1000, offset=23)


def test_this_connector_serves_a_repeat_from_lmcache(model_dir: Path, tmp_path: Path) -> None:
    with running_vllm_serve(model_dir, "this connector", work=tmp_path, lmcache_cpu_gib=1.0) as server:
        cold, warm = complete(server, PROMPT), complete(server, PROMPT)
    assert cold["cached_tokens"] == 0
    assert warm["cached_tokens"] == 896  # block tails: up to the last whole block, as vLLM's prefix cache
    assert warm["text"] == cold["text"]


def test_multi_process_mode_serves_a_repeat_from_the_lmcache_server(model_dir: Path, tmp_path: Path) -> None:
    with running_vllm_serve(model_dir, "multi-process", work=tmp_path, lmcache_cpu_gib=1.0) as server:
        cold, warm = complete(server, PROMPT), complete(server, PROMPT)
    assert cold["cached_tokens"] == 0
    assert warm["cached_tokens"] >= 768  # the server keeps whole 256-token chunks
    assert warm["text"] == cold["text"]


def test_an_unknown_setup_is_refused(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="setup must be one of"), running_vllm_serve(model_dir, "tensor parallel", work=tmp_path):
        pass
