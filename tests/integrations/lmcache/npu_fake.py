"""A recording stand-in for ``torch_npu`` / ``torch.npu`` (torch_npu cannot be installed here).

Every stream, event and synchronize call is appended to one :class:`CallLog`, so
tests can assert the order in which the connectors use them. :func:`main` runs
the connector scenario in a fresh interpreter (``torch.device("npu:0")`` needs
the ``privateuse1`` backend renamed to ``npu``, as real torch_npu does at import,
which cannot be undone inside the test process) and prints the log as JSON.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
import types
from collections.abc import Iterator
from typing import Any

Call = tuple[Any, ...]


class CallLog(list):  # list[Call]
    def names(self) -> list[str]:
        return [c[0] for c in self]


class FakeStream:
    _ids = itertools.count()

    def __init__(self, log: CallLog, device: Any = None, label: str | None = None) -> None:
        self.log = log
        self.id = label or f"s{next(self._ids)}"
        self.device = device
        if label is None:
            log.append(("Stream", self.id, str(device)))

    def synchronize(self) -> None:
        self.log.append(("stream.synchronize", self.id))

    def wait_stream(self, other: FakeStream) -> None:
        self.log.append(("stream.wait_stream", self.id, other.id))


class FakeEvent:
    def __init__(self, log: CallLog) -> None:
        self.log = log
        log.append(("Event",))

    def record(self, stream: Any = None) -> None:
        self.log.append(("event.record",))

    def synchronize(self) -> None:
        self.log.append(("event.synchronize",))

    def query(self) -> bool:
        return True


def make_fake_npu(log: CallLog) -> types.ModuleType:
    """A ``torch.npu`` namespace with the CUDA-style stream API, recording every call."""
    npu = types.ModuleType("torch.npu")

    def stream_factory(device: Any = None, priority: int = 0) -> FakeStream:
        return FakeStream(log, device)

    def current_stream(device: Any = None) -> FakeStream:
        log.append(("current_stream", device))
        return FakeStream(log, device, label=f"current:{device}")

    @contextlib.contextmanager
    def stream(s: FakeStream) -> Iterator[None]:
        log.append(("stream.enter", s.id))
        try:
            yield
        finally:
            log.append(("stream.exit", s.id))

    def synchronize(device: Any = None) -> None:
        log.append(("synchronize", device))

    npu.Stream = stream_factory  # type: ignore[attr-defined]
    npu.Event = lambda *a, **k: FakeEvent(log)  # type: ignore[attr-defined]
    npu.current_stream = current_stream  # type: ignore[attr-defined]
    npu.stream = stream  # type: ignore[attr-defined]
    npu.synchronize = synchronize  # type: ignore[attr-defined]
    npu.is_available = lambda: True  # type: ignore[attr-defined]
    npu.device_count = lambda: 1  # type: ignore[attr-defined]
    return npu


class CudaTripwire(types.ModuleType):
    """Replaces ``torch.cuda``: any attribute access is recorded and fails."""

    def __init__(self, touched: list[str]) -> None:
        super().__init__("torch.cuda")
        object.__setattr__(self, "_touched", touched)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        object.__getattribute__(self, "_touched").append(name)
        raise AssertionError(f"torch.cuda.{name} touched on a non-CUDA path")


# ------------------------------------------------------------- subprocess


def main() -> None:
    """Drive both connectors on ``npu:0`` (CPU tensors, torch kernel path); print a JSON report."""
    import torch
    from lmcache.v1.memory_allocators.tensor_memory_allocator import TensorMemoryAllocator
    from lmcache.v1.memory_management import MemoryFormat

    from lmcache_ascend.integrations.lmcache.layerwise_connector import LayerwiseKVConnector
    from lmcache_ascend.integrations.lmcache.paged_connector import PagedKVConnector
    from lmcache_ascend.kernels import torch_path
    from tests.kernels.reference import Geom, make_paged

    log = CallLog()
    touched: list[str] = []
    torch.utils.rename_privateuse1_backend("npu")  # what importing torch_npu does
    sys.modules["torch_npu"] = types.ModuleType("torch_npu")
    torch.npu = make_fake_npu(log)  # type: ignore[attr-defined]
    real_run = torch_path.run_planes

    def spy(*args: Any, **kwargs: Any) -> Any:
        log.append(("copy",))
        return real_run(*args, **kwargs)

    torch_path.run_planes = spy
    # Upstream modules use torch.cuda at import time; the tripwire guards the data path only.
    torch.cuda = CudaTripwire(touched)  # type: ignore[assignment]

    g = Geom(num_layers=2, num_blocks=8, block_size=16, num_heads=2, head_size=8)
    gen = torch.Generator().manual_seed(7)
    cache = make_paged(1, g, torch.bfloat16, gen)
    original = [t.clone() for t in cache.data]  # type: ignore[union-attr]
    slots = torch.randperm(g.num_slots, generator=gen)[:40]
    alloc = TensorMemoryAllocator(torch.zeros(1 << 20, dtype=torch.uint8))
    report: dict[str, Any] = {}

    paged = PagedKVConnector(num_layers=2, hidden_dim=16, use_mla=False, device="npu:0", layout_hints={"kv_layout": "NHD"})
    report["paged_streams"] = {"load": paged.load_stream.id, "store": paged.store_stream.id}
    objs = [alloc.allocate(torch.Size([2, 2, n, 16]), torch.bfloat16, MemoryFormat.KV_2LTD) for n in (32, 8)]
    kw = dict(kvcaches=cache.data, slot_mapping=slots)
    mark = len(log)
    paged.batched_from_gpu(objs, [0, 32], [32, 40], **kw)
    report["paged_store"] = log[mark:]
    for t in cache.data:  # type: ignore[union-attr]
        t.zero_()
    mark = len(log)
    paged.batched_to_gpu(objs, [0, 32], [32, 40], vllm_cached_tokens=0, **kw)
    report["paged_load"] = log[mark:]
    used = torch.zeros(g.num_slots, dtype=torch.bool)
    used[slots] = True
    report["paged_round_trip"] = all(
        torch.equal(t.flatten(1, 2)[:, used], o.flatten(1, 2)[:, used]) and not t.flatten(1, 2)[:, ~used].any()
        for t, o in zip(cache.data, original)  # type: ignore[arg-type]
    )

    layered = LayerwiseKVConnector(num_layers=2, hidden_dim=16, use_mla=False, device="npu:0", layout_hints={"kv_layout": "NHD"})
    report["layerwise_streams"] = {"load": layered.load_stream.id, "store": layered.store_stream.id}
    per_layer = [[alloc.allocate(torch.Size([40, 2, 16]), torch.bfloat16, MemoryFormat.KV_T2D)] for _ in range(2)]
    mark = len(log)
    store = layered.batched_from_gpu(per_layer, [0], [40], sync=False, **kw)
    for _ in range(3):
        next(store)
        log.append(("engine.next",))
    report["layerwise_store"] = log[mark:]
    mark = len(log)
    load = layered.batched_to_gpu([0], [40], sync=False, vllm_cached_tokens=0, **kw)
    next(load)
    for layer in range(2):
        load.send(per_layer[layer])
        log.append(("engine.send",))
    next(load)
    report["layerwise_load"] = log[mark:]
    report["cuda_touched"] = touched
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    main()
