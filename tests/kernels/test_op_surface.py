"""``lmcache_ascend.ops`` as LMCache binds it: names, signatures, ``bind_native``."""

from __future__ import annotations

import inspect
import types

import pytest
import torch
from lmcache.lmcache_native import EngineKVFormat, TransferDirection
from lmcache.v1.platform import torch_ops
from lmcache.v1.platform.base.device_ops import DeviceOps

from lmcache_ascend import ops
from tests.kernels.reference import (
    Geom,
    assert_cache_equal,
    assert_tensor_equal,
    make_paged,
    object_shape,
    random_slots,
    random_tensor,
    ref_transfer,
)

PUBLIC = sorted(n for n in dir(ops) if not n.startswith("_"))
OP_NAMES = [n for n in PUBLIC if n not in ("EngineKVFormat", "TransferDirection")]


def test_public_names_are_ops_and_the_two_enums() -> None:
    assert set(PUBLIC) == set(ops.__all__)
    assert ops.EngineKVFormat is EngineKVFormat
    assert ops.TransferDirection is TransferDirection
    for name in OP_NAMES:
        obj = getattr(ops, name)
        assert isinstance(obj, types.FunctionType), f"{name} is {type(obj).__name__}, not an op"
        assert not isinstance(obj, type)


def test_every_op_exists_in_the_torch_baseline() -> None:
    missing = [n for n in OP_NAMES if not callable(getattr(torch_ops, n, None))]
    assert not missing


def _params(fn: object) -> list[tuple[str, object, object]]:
    return [(p.name, p.default, p.kind) for p in inspect.signature(fn).parameters.values()]  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [n for n in OP_NAMES if n != "lmcache_memcpy_async"])
def test_signature_equals_torch_baseline(name: str) -> None:
    """Same parameter names, defaults and kinds as ``lmcache.v1.platform.torch_ops``."""
    assert _params(getattr(ops, name)) == _params(getattr(torch_ops, name))


def test_lmcache_memcpy_async_parameter_names() -> None:
    """Known upstream inconsistency, kept visible: ``cuda_ops`` names the last parameter
    ``host_buffer_alignment`` (which we use), the torch baseline and the NPU/MUSA
    ``DeviceOps`` overrides ``host_buffer_alignments``. LMCache calls it positionally."""
    ours = [p[0] for p in _params(ops.lmcache_memcpy_async)]
    theirs = [p[0] for p in _params(torch_ops.lmcache_memcpy_async)]
    assert ours == ["dest", "src", "nbytes", "direction", "host_buffer_offset", "host_buffer_alignment"]
    assert theirs[:-1] == ours[:-1]
    assert theirs[-1] == "host_buffer_alignments"


def test_bind_native_binds_our_functions() -> None:
    device_ops = DeviceOps()
    device_ops.bind_native(ops)
    for name in PUBLIC:
        assert getattr(device_ops, name) is getattr(ops, name), name
    assert device_ops.GPUKVFormat is EngineKVFormat


def test_npu_device_ops_binds_lmcache_ascend_ops_by_name() -> None:
    from lmcache.v1.platform.devices.npu.device_ops import NpuDeviceOps

    npu = NpuDeviceOps()
    npu.ensure_native()
    for name in OP_NAMES:
        assert getattr(npu, name) is getattr(ops, name), name


@pytest.mark.parametrize("direction", [0, 1], ids=["load", "store"])
def test_ops_called_through_bound_device_ops(backend: str, direction: int, gen: torch.Generator) -> None:
    device_ops = DeviceOps()
    device_ops.bind_native(ops)
    g = Geom(3, 10, 8, 2, 4)
    cache = make_paged(7, g, torch.bfloat16, gen)
    obj = random_tensor(object_shape(7, g, 30), torch.bfloat16, gen)
    slots = random_slots(30, g.num_slots, gen, 3)
    want_cache, want_obj = cache.clone(), obj.clone()
    ref_transfer(want_cache, want_obj, slots, direction, 2)
    device_ops.multi_layer_kv_transfer(
        obj, cache.pointers(), slots, torch.device("cpu"), g.num_slots,
        device_ops.TransferDirection(direction), device_ops.EngineKVFormat.NL_X_NB_TWO_NH_BS_HS,
        g.block_size, g.head_size, 2,
    )
    assert_cache_equal(cache, want_cache)
    assert_tensor_equal(obj, want_obj)
    ptr = device_ops.alloc_pinned_ptr(4096)
    device_ops.free_pinned_ptr(ptr)
