"""runner.parse_result: the engine child's result line, whatever another process appended to it."""

from __future__ import annotations

import json

import pytest

from testkit.vllm_runner import parse_result


def test_trailing_output_of_another_process_is_ignored() -> None:
    results = [{"from_lmcache": 1920, "token_ids": [1, 2, 3]}]
    log = "\x1b[31m[2026-12-06 08:01:02] LMCache ERROR: Unexpected error in offload server\x1b[0m"
    assert parse_result(json.dumps(results) + log) == results
    assert parse_result(json.dumps(results) + json.dumps({"other": 1})) == results  # the case seen


def test_a_line_without_a_result_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_result("LMCache ERROR: no result here")
