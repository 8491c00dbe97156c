#!/usr/bin/env bash
# Run the host C++ core under AddressSanitizer, without touching the in-tree build.
#
#   bash scripts/asan.sh                 # build, prove ASan is live, run the default test subset
#   bash scripts/asan.sh tests/fuzz -x   # other pytest arguments instead of the default subset
#
# 1. Copies setup.py, pyproject.toml, csrc/, lmcache_ascend/, testkit/ and tests/ to
#    $ASAN_DIR (default build/asan/src; build/ is git-ignored) and builds
#    lmcache_ascend._kvcore there with LMCACHE_ASCEND_SANITIZE=address
#    (-O1 -g -fsanitize=address, see setup.py). The in-tree
#    lmcache_ascend/_kvcore*.so and _build_info.py are never written.
# 2. Checks that ASan is really active: the built module must link libasan
#    and reference __asan_init, and a 10-line C++ program with a heap overflow,
#    built with the same compiler and flags, must be stopped by ASan.
# 3. Runs pytest inside the copy with libasan preloaded (Python itself is not
#    instrumented) and ASAN_OPTIONS=detect_leaks=0 (CPython and torch keep
#    memory until exit by design), allocator_may_return_null=1 (an impossible
#    allocation fails normally); it asserts the tests import the ASan build.
#    Any ASan report aborts the process with a non-zero status.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LMCACHE_ASCEND_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
ASAN_DIR="${ASAN_DIR:-$ROOT/build/asan/src}"
CXX="${CXX:-g++}"
DEFAULT_TESTS=(
  tests/kernels/test_slot_ops.py tests/kernels/test_single_layer_ops.py tests/kernels/test_block_ops.py
  tests/kernels/test_memory_ops.py tests/kernels/test_bad_input.py tests/kernels/test_concurrency.py tests/kernels/test_described.py
  tests/kernels/test_streaming.py tests/kernels/test_streaming_layouts.py tests/kernels/test_block_transfer.py tests/kernels/test_stream_copy.py
  tests/kernels/test_line_writer.py
  tests/fuzz
)

log() { printf '\033[1m[asan.sh]\033[0m %s\n' "$*" >&2; }

copy_tree() {
  log "copying the sources to $ASAN_DIR"
  mkdir -p "$ASAN_DIR"
  rm -rf "$ASAN_DIR/lmcache_ascend" "$ASAN_DIR/csrc" "$ASAN_DIR/tests" "$ASAN_DIR/testkit"
  cp "$ROOT/setup.py" "$ROOT/pyproject.toml" "$ASAN_DIR/"
  cp -r "$ROOT/csrc" "$ROOT/tests" "$ROOT/testkit" "$ASAN_DIR/"
  # the package without any build output of the in-tree checkout
  tar -C "$ROOT" --exclude='*.so' --exclude='__pycache__' --exclude='_build_info.py' -cf - lmcache_ascend |
    tar -C "$ASAN_DIR" -xf -
}

build() {
  log "building lmcache_ascend._kvcore with -fsanitize=address (takes a minute)"
  (cd "$ASAN_DIR" && LMCACHE_ASCEND_SANITIZE=address CC="$CXX" CXX="$CXX" \
    "$PY" setup.py -q build_ext --inplace --build-temp "$ASAN_DIR/../tmp" >/dev/null)
}

check_asan_is_live() {
  local so probe
  so="$(ls "$ASAN_DIR"/lmcache_ascend/_kvcore*.so)"
  ldd "$so" | grep libasan >/dev/null || { log "FAIL: $so does not link libasan"; exit 1; }
  nm -D "$so" | grep "__asan_init" >/dev/null || { log "FAIL: $so has no __asan_init reference"; exit 1; }
  probe="$ASAN_DIR/../asan_probe"
  printf '%s\n' '#include <cstdlib>' 'int main(int argc, char**) {' \
    '  int* p = static_cast<int*>(std::malloc(4 * sizeof(int)));' \
    '  p[argc + 3] = 1;  // one past the end' '  int v = p[0]; std::free(p); return v; }' >"$probe.cpp"
  "$CXX" -O1 -g -fsanitize=address -fno-omit-frame-pointer "$probe.cpp" -o "$probe"
  if ASAN_OPTIONS=detect_leaks=0 "$probe" 2>"$probe.log"; then
    log "FAIL: a heap overflow ran to completion: AddressSanitizer is not working"; exit 1
  fi
  grep -q "heap-buffer-overflow" "$probe.log" || { log "FAIL: no ASan report for the probe"; cat "$probe.log"; exit 1; }
  log "ASan is live: $(basename "$so") links libasan, and the probe's overflow was reported"
}

run_tests() {
  local libasan libstdcxx
  libasan="$("$CXX" -print-file-name=libasan.so)"
  libstdcxx="$("$CXX" -print-file-name=libstdc++.so)"
  [ -f "$libasan" ] || { log "FAIL: $CXX has no libasan.so"; exit 1; }
  local args=("$@")
  [ ${#args[@]} -gt 0 ] || args=("${DEFAULT_TESTS[@]}")
  log "pytest ${args[*]} (LD_PRELOAD=$libasan $libstdcxx)"
  cd "$ASAN_DIR"
  # allocator_may_return_null: an impossible allocation (a test asks for 2**60
  # bytes) must fail as it does without ASan, not abort the run.
  # libstdc++ is preloaded too: python does not link it, and without it ASan's
  # __cxa_throw interceptor finds no real function and aborts on the first C++ throw.
  export LD_PRELOAD="$libasan $libstdcxx" ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1"
  export PYTHONPATH="$ASAN_DIR" LMCACHE_TRACK_USAGE=false
  "$PY" - <<EOF
import lmcache_ascend, lmcache_ascend._kvcore as k
assert k.__file__.startswith("$ASAN_DIR"), f"tests would import {k.__file__}, not the ASan build"
assert lmcache_ascend.__file__.startswith("$ASAN_DIR"), lmcache_ascend.__file__
print("[asan.sh] testing", k.__file__)
EOF
  "$PY" -m pytest -q -p no:cacheprovider "${args[@]}"
}

copy_tree
build
check_asan_is_live
run_tests "$@"
