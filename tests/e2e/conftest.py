"""Fixtures for end-to-end tests: a locally built model and a one-engine-per-process runner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from testkit.tiny_model import build
from tests.e2e.remote_helpers import SessionMaker, session_maker


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("vllm")
    return build(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture
def run_vllm(tmp_path: Path) -> Callable[..., list[dict]]:
    """Run one vLLM engine in a fresh process; returns its per-prompt results."""
    from testkit.vllm_runner import run_engine

    def run(**options: object) -> list[dict]:
        return run_engine(dict(options), rpc_dir=tmp_path)

    return run


@pytest.fixture
def make_session(model_dir: Path, tmp_path: Path) -> SessionMaker:
    return session_maker(model_dir, tmp_path)
