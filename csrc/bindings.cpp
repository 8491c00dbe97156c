// pybind11 surface of the host kernel core: lmcache_ascend._kvcore.
//
// Framework-neutral on purpose: it sees addresses and int64 tables only, never
// torch or MindSpore objects. The Python layer (lmcache_ascend.kernels) builds
// the plane tables and validates user arguments before anything reaches here;
// the checks below are a second line of defence, not the user-facing errors.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "host_memory.h"
#include "line_writer.h"
#include "piece_copy.h"
#include "plane_transfer.h"
#include "rope.h"
#include "openmp_team.h"
#include "thread_pool.h"

namespace py = pybind11;
namespace la = lmcache_ascend;

namespace {

constexpr int kAbiVersion = 1;
constexpr int kPlaneFields = static_cast<int>(sizeof(la::PlaneSpec) / sizeof(int64_t));

void transfer_planes_py(const py::array_t<int64_t, py::array::c_style>& planes,
                        uintptr_t slots_addr, int slots_itemsize, int64_t num_tokens,
                        int64_t skip_prefix, int direction, int num_threads,
                        bool streaming) {
  if (planes.ndim() != 2 || planes.shape(1) != kPlaneFields) {
    throw py::value_error("planes must be an int64 array of shape [P, " + std::to_string(kPlaneFields) + "]");
  }
  la::SlotList slots{reinterpret_cast<const void*>(slots_addr), slots_itemsize, num_tokens};
  const auto* specs = reinterpret_cast<const la::PlaneSpec*>(planes.data());
  const int64_t count = planes.shape(0);
  py::gil_scoped_release release;
  la::transfer_planes(specs, count, slots, skip_prefix,
                      static_cast<la::Direction>(direction), num_threads, streaming);
}

// A bad block id is the caller's error: ValueError (pybind11 would make
// std::out_of_range an IndexError), raised with the GIL held again.
void transfer_blocks_py(const py::array_t<int64_t, py::array::c_style>& planes,
                        const py::array_t<int64_t, py::array::c_style>& buffer_index,
                        const py::array_t<int64_t, py::array::c_style>& buffer_ptrs,
                        const std::vector<uintptr_t>& objects, uintptr_t block_ids_addr,
                        int block_ids_itemsize, int64_t num_block_ids, int64_t block_size,
                        int64_t blocks_per_object, int64_t num_blocks, int64_t skip_blocks,
                        int direction, int num_threads, int64_t streaming_min_bytes) {
  if (planes.ndim() != 2 || planes.shape(1) != kPlaneFields) {
    throw py::value_error("planes must be an int64 array of shape [P, " + std::to_string(kPlaneFields) + "]");
  }
  if (buffer_index.ndim() != 1 || buffer_index.shape(0) != planes.shape(0)) {
    throw py::value_error("buffer_index must hold one buffer per plane");
  }
  if (buffer_ptrs.ndim() != 1) throw py::value_error("buffer_ptrs must be 1-D");
  const la::BlockCall call{buffer_index.data(),
                           buffer_ptrs.data(),
                           buffer_ptrs.shape(0),
                           objects.data(),
                           static_cast<int64_t>(objects.size()),
                           la::SlotList{reinterpret_cast<const void*>(block_ids_addr),
                                        block_ids_itemsize, num_block_ids},
                           block_size,
                           blocks_per_object,
                           num_blocks,
                           skip_blocks};
  const auto* specs = reinterpret_cast<const la::PlaneSpec*>(planes.data());
  std::string bad_id;
  {
    py::gil_scoped_release release;
    try {
      la::transfer_blocks(specs, planes.shape(0), call, static_cast<la::Direction>(direction),
                          num_threads, streaming_min_bytes);
    } catch (const std::out_of_range& e) {
      bad_id = e.what();
    }
  }
  if (!bad_id.empty()) throw py::value_error(bad_id);
}

void batched_copy_py(const std::vector<uintptr_t>& src, const std::vector<uintptr_t>& dst,
                     const std::vector<int64_t>& sizes, int num_threads) {
  py::gil_scoped_release release;
  la::batched_copy(src, dst, sizes, num_threads);
}

// Test hooks: the streaming-store primitives with the store width forced, so
// tests check the 16- and 32-byte forms on any machine that has both.
void check_wide(bool wide) {
  if (wide && !la::wide_streaming()) throw std::invalid_argument("this CPU has no 32-byte streaming stores");
}

void streaming_copy_py(uintptr_t dst, uintptr_t src, int64_t n, bool wide) {
  if (n < 0) throw std::invalid_argument("n must be >= 0");
  check_wide(wide);
  la::copy_streaming_width(reinterpret_cast<char*>(dst), reinterpret_cast<const char*>(src),
                           static_cast<size_t>(n), wide);
  la::store_fence();
}

void streaming_pieces_py(uintptr_t dst, int64_t dst_step, uintptr_t src, int64_t src_step,
                         int64_t count, int64_t n, bool streaming, bool wide) {
  if (count < 0 || n < 0) throw std::invalid_argument("count and n must be >= 0");
  check_wide(wide);
  la::copy_pieces(reinterpret_cast<char*>(dst), dst_step, reinterpret_cast<const char*>(src),
                  src_step, count, n, streaming, wide);
  la::store_fence();
}

void streaming_lines_py(int64_t piece, uintptr_t dst, int64_t dst_step, uintptr_t src,
                        int64_t src_step, int64_t piece_step, int64_t count, bool wide) {
  if (piece != 16 && piece != 32) throw std::invalid_argument("piece must be 16 or 32");
  if (count < 0) throw std::invalid_argument("count must be >= 0");
  if ((dst & 63) != 0 || dst_step % 64 != 0) throw std::invalid_argument("dst lines must be 64-byte aligned");
  check_wide(wide);
  la::stream_gathered_lines(piece, reinterpret_cast<char*>(dst), dst_step,
                            reinterpret_cast<const char*>(src), src_step, piece_step, count, wide);
  la::store_fence();
}

void line_writer_py(uintptr_t dst, const std::vector<std::pair<uintptr_t, int64_t>>& pieces,
                    bool wide) {
  for (const auto& piece : pieces) {
    if (piece.second < 0) throw std::invalid_argument("piece lengths must be >= 0");
  }
  check_wide(wide);
  la::LineWriter out(reinterpret_cast<char*>(dst), wide);
  for (const auto& piece : pieces) {
    out.put(reinterpret_cast<const char*>(piece.first), static_cast<size_t>(piece.second));
  }
  out.finish();
  la::store_fence();
}

uintptr_t host_alloc_py(int64_t size, int64_t alignment, bool huge_pages) {
  py::gil_scoped_release release;  // zero-filling a large buffer takes a while
  return la::host_alloc(size, alignment, huge_pages);
}

}  // namespace

PYBIND11_MODULE(_kvcore, m) {
  m.doc() = "lmcache-ascend host kernel core (paged KV <-> memory objects)";
  m.attr("ABI_VERSION") = kAbiVersion;
  m.attr("PLANE_FIELDS") = kPlaneFields;

  m.def("transfer_planes", &transfer_planes_py, py::arg("planes"), py::arg("slots_addr"),
        py::arg("slots_itemsize"), py::arg("num_tokens"), py::arg("skip_prefix"),
        py::arg("direction"), py::arg("num_threads"), py::arg("streaming") = false,
        "Copy between paged buffers and memory objects along a plane table.");
  m.def("transfer_blocks", &transfer_blocks_py, py::arg("planes"), py::arg("buffer_index"),
        py::arg("buffer_ptrs"), py::arg("objects"), py::arg("block_ids_addr"),
        py::arg("block_ids_itemsize"), py::arg("num_block_ids"), py::arg("block_size"),
        py::arg("blocks_per_object"), py::arg("num_blocks"), py::arg("skip_blocks"),
        py::arg("direction"), py::arg("num_threads"), py::arg("streaming_min_bytes"),
        "Copy whole blocks between paged buffers and memory objects (one object per chunk).");
  m.def("batched_copy", &batched_copy_py, py::arg("src"), py::arg("dst"), py::arg("sizes"),
        py::arg("num_threads"));
  m.def("host_alloc", &host_alloc_py, py::arg("size"), py::arg("alignment"),
        py::arg("huge_pages") = false);
  m.def("host_free", &la::host_free, py::arg("addr"));
  m.def("host_allocation_size", &la::host_allocation_size, py::arg("addr"));
  m.def("host_live_allocations", &la::host_live_allocations);
  m.def("hardware_threads", &la::hardware_threads);
  m.def("thread_pool_in_use", [] { return la::openmp_team_available() ? "openmp" : "own"; },
        "Where parallel host copies run now: the process's OpenMP team or our own pool.");
  m.def("page_size", &la::page_size);
  m.def("wide_streaming", &la::wide_streaming,
        "Whether streaming stores are 32 bytes wide here (x86-64 with AVX2).");
  m.def("streaming_copy", &streaming_copy_py, py::arg("dst"), py::arg("src"), py::arg("n"),
        py::arg("wide"));
  m.def("streaming_pieces", &streaming_pieces_py, py::arg("dst"), py::arg("dst_step"),
        py::arg("src"), py::arg("src_step"), py::arg("count"), py::arg("n"),
        py::arg("streaming"), py::arg("wide"));
  m.def("streaming_lines", &streaming_lines_py, py::arg("piece"), py::arg("dst"),
        py::arg("dst_step"), py::arg("src"), py::arg("src_step"), py::arg("piece_step"),
        py::arg("count"), py::arg("wide"));
  m.def("line_writer", &line_writer_py, py::arg("dst"), py::arg("pieces"), py::arg("wide"),
        "Test hook: the (address, length) pieces written back to back from dst by a LineWriter.");
  m.def("rope_k_fused", &la::rope_k_fused, py::arg("key_addr"), py::arg("key_kind"),
        py::arg("num_tokens"), py::arg("num_heads"), py::arg("token_stride"),
        py::arg("head_stride"), py::arg("table_addr"), py::arg("table_kind"),
        py::arg("table_rows"), py::arg("rot_dim"), py::arg("row_stride"),
        py::arg("old_positions_addr"), py::arg("new_positions_addr"),
        py::arg("positions_itemsize"), py::arg("is_neox"), py::arg("compute_kind"),
        py::arg("num_threads"), py::call_guard<py::gil_scoped_release>(),
        "Re-rotate keys in place from old to new positions (rotary_embedding_k_fused).");
}
