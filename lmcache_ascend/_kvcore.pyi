# Types of the native core (csrc/bindings.cpp), for mypy; tests/kernels/test_kvcore_stub.py
# checks that every function here exists in the built module with the same parameters.
from collections.abc import Sequence
from typing import SupportsIndex

import numpy as np
import numpy.typing as npt

ABI_VERSION: int
PLANE_FIELDS: int

def transfer_planes(
    planes: npt.NDArray[np.int64],
    slots_addr: SupportsIndex,
    slots_itemsize: SupportsIndex,
    num_tokens: SupportsIndex,
    skip_prefix: SupportsIndex,
    direction: SupportsIndex,
    num_threads: SupportsIndex,
    streaming: bool = False,
) -> None: ...
def transfer_blocks(
    planes: npt.NDArray[np.int64],
    buffer_index: npt.NDArray[np.int64],
    buffer_ptrs: npt.NDArray[np.int64],
    objects: Sequence[SupportsIndex],
    block_ids_addr: SupportsIndex,
    block_ids_itemsize: SupportsIndex,
    num_block_ids: SupportsIndex,
    block_size: SupportsIndex,
    blocks_per_object: SupportsIndex,
    num_blocks: SupportsIndex,
    skip_blocks: SupportsIndex,
    direction: SupportsIndex,
    num_threads: SupportsIndex,
    streaming_min_bytes: SupportsIndex,
) -> None: ...
def batched_copy(
    src: Sequence[SupportsIndex], dst: Sequence[SupportsIndex], sizes: Sequence[SupportsIndex], num_threads: SupportsIndex
) -> None: ...
def host_alloc(size: SupportsIndex, alignment: SupportsIndex, huge_pages: bool = False) -> int: ...
def host_free(addr: SupportsIndex) -> None: ...
def host_allocation_size(addr: SupportsIndex) -> int: ...
def host_live_allocations() -> int: ...
def hardware_threads() -> int: ...
def thread_pool_in_use() -> str: ...
def page_size() -> int: ...
def wide_streaming() -> bool: ...
def streaming_copy(dst: SupportsIndex, src: SupportsIndex, n: SupportsIndex, wide: bool) -> None: ...
def streaming_pieces(
    dst: SupportsIndex,
    dst_step: SupportsIndex,
    src: SupportsIndex,
    src_step: SupportsIndex,
    count: SupportsIndex,
    n: SupportsIndex,
    streaming: bool,
    wide: bool,
) -> None: ...
def streaming_lines(
    piece: SupportsIndex,
    dst: SupportsIndex,
    dst_step: SupportsIndex,
    src: SupportsIndex,
    src_step: SupportsIndex,
    piece_step: SupportsIndex,
    count: SupportsIndex,
    wide: bool,
) -> None: ...
def line_writer(dst: SupportsIndex, pieces: Sequence[tuple[SupportsIndex, SupportsIndex]], wide: bool) -> None: ...
def rope_k_fused(
    key_addr: SupportsIndex,
    key_kind: SupportsIndex,
    num_tokens: SupportsIndex,
    num_heads: SupportsIndex,
    token_stride: SupportsIndex,
    head_stride: SupportsIndex,
    table_addr: SupportsIndex,
    table_kind: SupportsIndex,
    table_rows: SupportsIndex,
    rot_dim: SupportsIndex,
    row_stride: SupportsIndex,
    old_positions_addr: SupportsIndex,
    new_positions_addr: SupportsIndex,
    positions_itemsize: SupportsIndex,
    is_neox: bool,
    compute_kind: SupportsIndex,
    num_threads: SupportsIndex,
) -> None: ...
