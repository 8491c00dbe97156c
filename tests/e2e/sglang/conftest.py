"""Fixtures for SGLang 0.5.23 served through ``lmcache server`` (scripts/sglang_env.sh).

Everything here needs SGLang 0.5.23; the main environment (.venv) has 0.5.3 for
the in-process route, so these tests skip there, naming the script that runs
them. The model is the small random Llama built locally; baseline outputs come
from one SGLang server without LMCache, started once per session.
"""

from __future__ import annotations

import os
from importlib import metadata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.tiny_model import build, prompt_token_ids
from tests.e2e.sglang import servers

SGLANG_VERSION = "0.5.23"
CHUNK = 256
PROMPT_TOKENS = 1100  # 4 whole chunks and a partial one
MAX_NEW_TOKENS = 8


def sglang_skip_reason() -> str | None:
    # The version from package metadata: importing sglang here would fix its is_cpu()
    # for this process before tests/integrations/sglang_mp sets SGLANG_USE_CPU_ENGINE.
    try:
        version = metadata.version("sglang")
    except metadata.PackageNotFoundError:
        return f"SGLang {SGLANG_VERSION} is not installed here: run `bash scripts/sglang_env.sh`"
    if version != SGLANG_VERSION:
        return f"needs SGLang {SGLANG_VERSION} (found {version}): run `bash scripts/sglang_env.sh`"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = sglang_skip_reason()
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here) and reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@dataclass(frozen=True)
class Prompts:
    full: list[int]
    half_shared: list[int]  # the first half of `full`, then other tokens
    other: list[int]
    after_restart: list[int]

    def all(self) -> dict[str, list[int]]:
        return {"full": self.full, "half_shared": self.half_shared, "other": self.other, "after_restart": self.after_restart}


PROMPTS = Prompts(
    full=prompt_token_ids(PROMPT_TOKENS, offset=3),
    half_shared=prompt_token_ids(PROMPT_TOKENS, offset=3)[: PROMPT_TOKENS // 2] + prompt_token_ids(PROMPT_TOKENS // 2, offset=501),
    other=prompt_token_ids(PROMPT_TOKENS, offset=907),
    after_restart=prompt_token_ids(PROMPT_TOKENS, offset=1303),
)


@pytest.fixture(scope="session")
def sglang_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def expected_outputs(sglang_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[int]]:
    """Greedy outputs of SGLang alone (no LMCache) for every test prompt."""
    log = tmp_path_factory.mktemp("baseline") / "sglang.log"
    with servers.running_sglang(sglang_model, log_path=log, lmcache_config=None, backend=None) as server:
        return {name: servers.generate(server, ids, max_new_tokens=MAX_NEW_TOKENS).output_ids for name, ids in PROMPTS.all().items()}


@pytest.fixture
def shm_name() -> str:
    return f"lmc_test_{os.getpid()}_{os.urandom(3).hex()}"


@pytest.fixture
def sglang_log_clean() -> Iterator[list[Path]]:
    """Register SGLang logs here: after the test, none may report a failed LMCache transfer."""
    logs: list[Path] = []
    yield logs
    for log in logs:
        failures = failed_transfer_lines(log)
        assert not failures, f"{log} reports failed LMCache transfers:\n" + "\n".join(failures[:10])


FAILURE_MARKS = ("LMCache store failed", "LMCache load failed", "store submission failed", "retrieve failed", "Failed to scatter")


def failed_transfer_lines(log: Path) -> list[str]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return [line for line in text.splitlines() if any(mark in line for mark in FAILURE_MARKS)]
