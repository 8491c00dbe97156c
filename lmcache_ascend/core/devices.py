"""A small device abstraction: streams, events, synchronization.

The connectors order their copies against the engine's compute through this
interface instead of ``torch.cuda``. Backends:

- ``cpu``: host KV (vLLM CPU, tests). Work runs synchronously on the calling
  thread, so streams and events are trivially complete.
- ``npu``: Ascend through ``torch_npu`` (imported lazily, only when an ``npu``
  device is asked for): ``torch.npu.Stream`` / ``Event`` / ``synchronize``.
- ``mindspore``: MindSpore tensors; ``mindspore.hal`` synchronizes.

:func:`get_device` picks one from a device string (``"cpu"``, ``"npu:0"``) or a
``torch.device``; it raises ``ValueError`` for device types this project does
not drive (e.g. ``cuda``: upstream LMCache serves it).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol


class Stream(Protocol):
    def synchronize(self) -> None: ...

    def wait_stream(self, other: Any) -> None: ...


class Event(Protocol):
    def record(self, stream: Any = None) -> None: ...

    def synchronize(self) -> None: ...

    def query(self) -> bool: ...


class DeviceBackend(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def index(self) -> int: ...

    def new_stream(self) -> Stream: ...

    def current_stream(self) -> Stream: ...

    def new_event(self) -> Event: ...

    def use_stream(self, stream: Stream) -> contextlib.AbstractContextManager[None]: ...

    def synchronize(self) -> None: ...


class _ImmediateStream:
    """A stream on which every operation has already completed when it returns."""

    def synchronize(self) -> None:
        return None

    def wait_stream(self, other: Any) -> None:
        return None


class _ImmediateEvent:
    def record(self, stream: Any = None) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def query(self) -> bool:
        return True


@dataclass(frozen=True)
class CpuBackend:
    kind: str = "cpu"
    index: int = 0

    def new_stream(self) -> Stream:
        return _ImmediateStream()

    def current_stream(self) -> Stream:
        return _ImmediateStream()

    def new_event(self) -> Event:
        return _ImmediateEvent()

    @contextlib.contextmanager
    def use_stream(self, stream: Stream) -> Iterator[None]:
        yield

    def synchronize(self) -> None:
        return None


@dataclass(frozen=True)
class TorchAcceleratorBackend:
    """A torch device module with the CUDA-style stream API (``torch.npu``)."""

    kind: str
    index: int = 0

    @property
    def _module(self) -> Any:
        if self.kind == "npu":
            importlib.import_module("torch_npu")  # registers torch.npu
        import torch

        module = getattr(torch, self.kind, None)
        if module is None:
            raise RuntimeError(f"torch.{self.kind} is not available; is torch_{self.kind} installed?")
        return module

    def new_stream(self) -> Stream:
        stream: Stream = self._module.Stream(device=f"{self.kind}:{self.index}")
        return stream

    def current_stream(self) -> Stream:
        stream: Stream = self._module.current_stream(self.index)
        return stream

    def new_event(self) -> Event:
        event: Event = self._module.Event()
        return event

    def use_stream(self, stream: Stream) -> contextlib.AbstractContextManager[None]:
        context: contextlib.AbstractContextManager[None] = self._module.stream(stream)
        return context

    def synchronize(self) -> None:
        self._module.synchronize(self.index)


@dataclass(frozen=True)
class MindSporeBackend(CpuBackend):
    """MindSpore tensors: copies are issued synchronously, then the device is synced."""

    kind: str = "mindspore"

    def synchronize(self) -> None:
        import mindspore as ms

        ms.hal.synchronize()


_ACCELERATORS = ("npu",)


def get_device(device: Any) -> DeviceBackend:
    """The backend for ``device`` (``"cpu"``, ``"npu:1"``, ``torch.device``, ``"mindspore"``)."""
    text = str(device)
    kind, _, index = text.partition(":")
    if index and not index.isdigit():
        raise ValueError(f"device {text!r} has a non-numeric index")
    idx = int(index) if index else 0
    if kind == "cpu":
        return CpuBackend(index=idx)
    if kind == "mindspore":
        return MindSporeBackend(index=idx)
    if kind in _ACCELERATORS:
        return TorchAcceleratorBackend(kind=kind, index=idx)
    raise ValueError(
        f"device {text!r} is not driven by lmcache_ascend (supported: cpu, npu, mindspore); "
        "CUDA devices are served by upstream LMCache"
    )
