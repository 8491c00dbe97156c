"""Fixtures for the CacheBlend tests: the tiny random Llama, a multi-document
workload and in-process blend stacks (real LMCache engine + paged KV).

Stacks are session-scoped and hold the workload's documents, stored once; a
blend only reads LMCache, so tests sharing a stack cannot see each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.blend_stack import LocalBlendStack, StackOptions, load_model
from testkit.blend_workload import MultiDocWorkload, separator_tokens

NUM_DOCS = 4
DOC_LEN = 48
QUESTION_LEN = 12


@pytest.fixture(scope="session")
def blend_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from testkit import tiny_model

    return tiny_model.build(tmp_path_factory.mktemp("blend-tiny-llama"))


@pytest.fixture(scope="session")
def blend_model(blend_model_dir: Path) -> Any:
    return load_model(blend_model_dir)


@pytest.fixture(scope="session")
def workload(blend_model_dir: Path) -> MultiDocWorkload:
    from transformers import AutoTokenizer

    separator = separator_tokens(AutoTokenizer.from_pretrained(blend_model_dir))
    return MultiDocWorkload(NUM_DOCS, DOC_LEN, QUESTION_LEN, tuple(separator))


StackFactory = Callable[[str], LocalBlendStack]


@pytest.fixture(scope="session")
def stacks(blend_model_dir: Path, blend_model: Any, workload: MultiDocWorkload) -> Iterator[StackFactory]:
    """``stacks(layout)``: a stack over that paged layout, documents stored (built once)."""
    built: dict[str, LocalBlendStack] = {}

    def get(layout: str) -> LocalBlendStack:
        if layout not in built:
            stack = LocalBlendStack(blend_model_dir, blend_model, StackOptions(layout=layout, max_tokens=512))
            built[layout] = stack
            for doc in workload.documents():
                stack.prefill_and_store(doc)
        return built[layout]

    yield get
    for stack in built.values():
        stack.close()


@pytest.fixture
def flash_stack(stacks: StackFactory) -> LocalBlendStack:
    return stacks("flash")
