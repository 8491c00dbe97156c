"""The NPU path with ``torch_npu`` replaced by a recording fake (see ``npu_fake.py``).

In-process: ``lmcache_ascend.core.devices.get_device("npu:N")`` drives ``torch.npu``
(streams, current stream, stream context, synchronize) and never ``torch.cuda``.
In a subprocess (``torch.device("npu:0")`` needs torch's privateuse1 backend
renamed, which cannot be undone in this process): both connectors on ``npu:0``,
with the device-generic torch kernels forced, issue their copies inside
``use_stream(<own stream>)``, a store first waits for the compute stream, and
the stream is synchronized before the call (or generator step) returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from lmcache_ascend.core import devices
from tests.integrations.lmcache.npu_fake import CallLog, CudaTripwire, FakeStream, make_fake_npu

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def fake_npu(monkeypatch: pytest.MonkeyPatch) -> tuple[CallLog, list[str]]:
    log = CallLog()
    touched: list[str] = []
    monkeypatch.setitem(sys.modules, "torch_npu", types.ModuleType("torch_npu"))
    monkeypatch.setattr(torch, "npu", make_fake_npu(log), raising=False)
    monkeypatch.setattr(torch, "cuda", CudaTripwire(touched))
    return log, touched


def test_get_device_npu_uses_torch_npu_streams(fake_npu: tuple[CallLog, list[str]]) -> None:
    log, touched = fake_npu
    dev = devices.get_device("npu:0")
    assert (dev.kind, dev.index) == ("npu", 0)

    s = dev.new_stream()
    assert isinstance(s, FakeStream) and s.device == "npu:0"
    cur = dev.current_stream()
    s.wait_stream(cur)
    with dev.use_stream(s):
        log.append(("work",))
    s.synchronize()
    dev.synchronize()
    assert list(log) == [
        ("Stream", s.id, "npu:0"),
        ("current_stream", 0),
        ("stream.wait_stream", s.id, cur.id),
        ("stream.enter", s.id),
        ("work",),
        ("stream.exit", s.id),
        ("stream.synchronize", s.id),
        ("synchronize", 0),
    ]
    assert touched == []


def test_get_device_npu_index_reaches_torch_npu(fake_npu: tuple[CallLog, list[str]]) -> None:
    log, _ = fake_npu
    dev = devices.get_device("npu:3")
    dev.new_stream()
    dev.current_stream()
    dev.synchronize()
    dev.new_event()
    assert list(log)[0][2] == "npu:3"
    assert ("current_stream", 3) in log and ("synchronize", 3) in log and ("Event",) in log


def test_cpu_device_never_touches_accelerators(fake_npu: tuple[CallLog, list[str]]) -> None:
    log, touched = fake_npu
    dev = devices.get_device("cpu")
    s = dev.new_stream()
    s.wait_stream(dev.current_stream())
    with dev.use_stream(s):
        pass
    s.synchronize()
    dev.synchronize()
    assert dev.new_event().query() is True
    assert list(log) == [] and touched == []


def test_npu_device_imports_torch_npu_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking for "npu" without torch_npu does not fail until the NPU is used."""
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # import torch_npu -> ImportError
    dev = devices.get_device("npu:0")
    with pytest.raises(ImportError):
        dev.new_stream()


@pytest.mark.parametrize("device", ["cuda:0", "cuda", "xpu:0", "npu:x", "npu:-1"])
def test_devices_not_driven_here_are_refused(device: str) -> None:
    with pytest.raises(ValueError):
        devices.get_device(device)


# ------------------------------------------------------------- connectors


@pytest.fixture(scope="module")
def npu_report() -> dict[str, Any]:
    env = dict(os.environ, LMCACHE_ASCEND_KERNEL_BACKEND="torch", PYTHONPATH=str(REPO_ROOT))
    code = "from tests.integrations.lmcache.npu_fake import main; main()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, f"npu scenario failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report: dict[str, Any] = json.loads(lines[-1][len("REPORT ") :])
    return report


def calls(report: dict[str, Any], key: str) -> list[tuple[Any, ...]]:
    return [tuple(c) for c in report[key]]


def test_paged_store_waits_for_compute_copies_on_store_stream_then_syncs(npu_report: dict[str, Any]) -> None:
    store = npu_report["paged_streams"]["store"]
    assert calls(npu_report, "paged_store") == [
        ("current_stream", 0),
        ("stream.wait_stream", store, "current:0"),
        ("stream.enter", store),
        ("copy",),
        ("copy",),
        ("stream.exit", store),
        ("stream.synchronize", store),
    ]


def test_paged_load_copies_on_load_stream_then_syncs(npu_report: dict[str, Any]) -> None:
    load = npu_report["paged_streams"]["load"]
    assert npu_report["paged_streams"]["store"] != load
    assert calls(npu_report, "paged_load") == [
        ("stream.enter", load),
        ("copy",),
        ("copy",),
        ("stream.exit", load),
        ("stream.synchronize", load),
    ]


def test_paged_round_trip_on_npu_device_is_exact(npu_report: dict[str, Any]) -> None:
    assert npu_report["paged_round_trip"] is True


def test_layerwise_store_copies_each_layer_on_store_stream(npu_report: dict[str, Any]) -> None:
    store = npu_report["layerwise_streams"]["store"]
    one_layer = [("current_stream", 0), ("stream.wait_stream", store, "current:0"), ("stream.enter", store), ("copy",), ("stream.exit", store)]
    assert calls(npu_report, "layerwise_store") == [
        *one_layer,
        ("engine.next",),
        *one_layer,
        ("engine.next",),
        ("stream.synchronize", store),  # the last step waits for the last layer
        ("engine.next",),
    ]


def test_layerwise_load_copies_each_layer_on_load_stream(npu_report: dict[str, Any]) -> None:
    load = npu_report["layerwise_streams"]["load"]
    one_layer = [("stream.enter", load), ("copy",), ("stream.exit", load)]
    assert calls(npu_report, "layerwise_load") == [
        *one_layer,
        ("engine.send",),
        *one_layer,
        ("engine.send",),
        ("stream.synchronize", load),
    ]


def test_no_torch_cuda_on_the_npu_data_path(npu_report: dict[str, Any]) -> None:
    assert npu_report["cuda_touched"] == []
