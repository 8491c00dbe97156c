"""A hybrid model on real vLLM CPU engines with the hybrid KV manager on (``SupportsHMA``).

The model alternates sliding-window (window 64) and full-attention layers, so
vLLM gives it two KV-cache groups, each with its own block table; blocks that
leave a sliding window become vLLM's null block. vLLM's prefix cache is off:
``from_lmcache`` counts tokens whose KV LMCache loaded.

Bytes per chunk are asserted exactly, from the model's config: a full chunk of
256 tokens stores every token of the full-attention layers and the last 64
tokens (one 64-token block) of the sliding-window layers; with the hybrid
manager off every layer stores all 256 tokens.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from testkit.tiny_model import TinyLlamaSpec, build, prompt_token_ids

WINDOW = 64
BLOCK = 64
CHUNK = 256
PROMPT = prompt_token_ids(1000)
HIT = 960  # whole 64-token blocks of the prompt: 3 chunks and a 192-token tail


@pytest.fixture(scope="module")
def hybrid_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("vllm")
    return build(tmp_path_factory.mktemp("models") / "tiny-llama-sliding", TinyLlamaSpec(sliding_window=WINDOW))


def _layers_and_row_bytes(model: Path) -> tuple[int, int, int]:
    """(full-attention layers, sliding-window layers, K or V bytes per token and layer) from config.json."""
    cfg = json.loads((model / "config.json").read_text())
    kinds = cfg["layer_types"]
    row = cfg["num_key_value_heads"] * cfg["head_dim"] * 2  # bf16
    return kinds.count("full_attention"), kinds.count("sliding_attention"), row


def _chunk_files(disk: Path) -> dict[int, int]:
    """Chunk file sizes -> how many files have that size."""
    sizes: dict[int, int] = {}
    for f in disk.glob("*.pt"):
        sizes[f.stat().st_size] = sizes.get(f.stat().st_size, 0) + 1
    return sizes


def _close(a: list[float], b: list[float], tol: float = 0.05) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, abs_tol=tol) for x, y in zip(a, b))


def test_hybrid_model_warm_run_and_bytes_per_chunk(hybrid_model: Path, run_vllm, tmp_path: Path) -> None:
    full, sliding, row = _layers_and_row_bytes(hybrid_model)
    assert full > 0 and sliding > 0
    hma = tmp_path / "hma"
    cold, warm = run_vllm(model_dir=hybrid_model, prompts=[PROMPT, PROMPT], disk_dir=hma, block_size=BLOCK)
    assert cold["from_lmcache"] == 0
    assert warm["from_lmcache"] == HIT
    assert warm["token_ids"] == cold["token_ids"]
    assert _close(warm["logprobs"], cold["logprobs"])

    off = tmp_path / "hma-off"
    (plain,) = run_vllm(model_dir=hybrid_model, prompts=[PROMPT], disk_dir=off, block_size=BLOCK, hybrid_kv_manager=False)
    assert plain["token_ids"] == cold["token_ids"]

    per_chunk_hma = 2 * (full * CHUNK + sliding * WINDOW) * row
    per_chunk_off = 2 * (full + sliding) * CHUNK * row
    assert _chunk_files(hma).get(per_chunk_hma) == 3, _chunk_files(hma)
    assert _chunk_files(off).get(per_chunk_off) == 3, _chunk_files(off)
    # Half the layers keep a 64-token window of a 256-token chunk: (1 + 1/4) / 2.
    assert per_chunk_hma / per_chunk_off == (full + sliding * WINDOW / CHUNK) / (full + sliding) == 0.625
    tail = 2 * (full * (HIT - 3 * CHUNK) + sliding * WINDOW) * row
    tails = [f for f in hma.glob("*.pt") if f.stat().st_size not in (per_chunk_hma,)]
    assert len(tails) == 1 and tails[0].stat().st_size == (HIT - 3 * CHUNK) * math.ceil(tail / (HIT - 3 * CHUNK))


@pytest.mark.slow  # two more engine processes; the run above covers the warm path
def test_hybrid_model_fresh_process_from_disk_matches_vllm_alone(hybrid_model: Path, run_vllm, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    (cold,) = run_vllm(model_dir=hybrid_model, prompts=[PROMPT], disk_dir=disk, block_size=BLOCK)
    (fresh,) = run_vllm(model_dir=hybrid_model, prompts=[PROMPT], disk_dir=disk, block_size=BLOCK)
    (alone,) = run_vllm(model_dir=hybrid_model, prompts=[PROMPT], connector=False, block_size=BLOCK)
    assert fresh["from_lmcache"] == HIT
    assert fresh["token_ids"] == cold["token_ids"] == alone["token_ids"]
    assert _close(fresh["logprobs"], alone["logprobs"])


@pytest.mark.slow  # one engine per configuration form
@pytest.mark.parametrize("form", ["ascend", "vllm_ascend"])
def test_hybrid_model_through_each_configuration_form(hybrid_model: Path, form: str, tmp_path: Path) -> None:
    """``LMCacheAscendConnector`` + the newer module path, and alone as vllm-ascend's real plugin registers it."""
    from testkit.vllm_runner import run_engine

    env = dict(os.environ)
    if form == "vllm_ascend":
        from tests import vllm_ascend_kit as kit

        env["PYTHONPATH"] = kit.pythonpath(kit.source_dir(), tmp_path / "plugins")
    disk = tmp_path / "disk"
    cold, warm = run_engine(
        {"model_dir": hybrid_model, "prompts": [PROMPT, PROMPT], "disk_dir": disk, "block_size": BLOCK, "connector_form": form},
        env=env,
        rpc_dir=tmp_path,
    )
    full, sliding, row = _layers_and_row_bytes(hybrid_model)
    assert (cold["from_lmcache"], warm["from_lmcache"]) == (0, HIT)
    assert warm["token_ids"] == cold["token_ids"]
    assert _chunk_files(disk).get(2 * (full * CHUNK + sliding * WINDOW) * row) == 3
