#!/usr/bin/env bash
# tests/c/run.sh: build and run the C tests of csrc/ (no Python involved).
#
# Every tests/c/test_*.c is compiled with all of csrc/*.c under
#   -std=c11 -Wall -Wextra -Werror
# linked against OpenBLAS, and run. Exit status is non-zero if anything fails
# to build or any test fails. Each test binary prints `NAME: N passed, M failed`.
#
# Options (environment):
#   SANITIZE=1   build with -fsanitize=address,undefined and run with leak
#                detection; any sanitizer report fails the run
#   VALGRIND=1   run each binary under valgrind --leak-check=full
#   CC=...       compiler (default cc); CFLAGS_EXTRA=... appended to the flags
#   KEEP=DIR     build into DIR and keep it (default: a temporary directory)
#
# OpenBLAS: the system one when `pkg-config openblas` works, otherwise the
# scipy-openblas32 wheel's (installed with pip if missing), exactly as setup.py
# chooses, including its `scipy_` symbol prefix.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cc=${CC:-cc}
python=${PYTHON:-python3}

if ! command -v "$cc" >/dev/null 2>&1; then
    echo "run.sh: no C compiler ($cc)" >&2
    exit 2
fi
if [ "${SANITIZE:-0}" = 1 ] && [ "${VALGRIND:-0}" = 1 ]; then
    echo "run.sh: SANITIZE=1 and VALGRIND=1 cannot be combined" >&2
    exit 2
fi

# ---- BLAS --------------------------------------------------------------------
blas_cflags=()
blas_libs=()
if pkg-config --exists openblas 2>/dev/null; then
    read -r -a blas_cflags <<<"$(pkg-config --cflags openblas)"
    read -r -a blas_libs <<<"$(pkg-config --libs openblas)"
    for f in "${blas_libs[@]}"; do
        case $f in -L*) blas_libs+=("-Wl,-rpath,${f#-L}") ;; esac
    done
    blas_cflags+=(-DPK_BLAS_PREFIX=PK_EMPTY '-DPK_BLAS_SOURCE="system openblas (tests/c)"')
    blas_desc="system openblas (pkg-config)"
else
    query='import scipy_openblas32 as s; print(s.get_include_dir()); print(s.get_lib_dir()); print(s.get_library())'
    if ! info=$("$python" -c "$query" 2>/dev/null); then
        echo "run.sh: no system openblas and scipy_openblas32 is not importable; installing it" >&2
        "$python" -m pip install -q scipy-openblas32 >&2
        info=$("$python" -c "$query")
    fi
    { read -r inc; read -r libdir; read -r lib; } <<<"$info"
    blas_cflags=(-I"$inc" -DPK_BLAS_PREFIX=scipy_ '-DPK_BLAS_SOURCE="scipy-openblas32 (tests/c)"')
    blas_libs=(-L"$libdir" -l"$lib" -Wl,-rpath,"$libdir")
    blas_desc="scipy-openblas32 ($libdir/lib$lib.so)"
fi

# ---- flags -------------------------------------------------------------------
cflags=(-std=c11 -Wall -Wextra -Werror -g -I"$root/csrc")
ldflags=()
runner=()
if [ "${SANITIZE:-0}" = 1 ]; then
    san=(-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
    cflags+=(-O1 "${san[@]}")
    ldflags+=("${san[@]}")
    export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=23${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
    export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
elif [ "${VALGRIND:-0}" = 1 ]; then
    command -v valgrind >/dev/null || { echo "run.sh: valgrind not found" >&2; exit 2; }
    cflags+=(-O1)
    runner=(valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect)
    # valgrind runs one thread at a time, and OpenBLAS's idle workers spin-wait:
    # a threaded GEMM then crawls (test_diag_hessian: over 15 min, 35 s with one thread)
    export OPENBLAS_NUM_THREADS=1
else
    cflags+=(-O2)
fi
# shellcheck disable=SC2206
cflags+=(${CFLAGS_EXTRA:-})

if [ -n "${KEEP:-}" ]; then
    build=$KEEP
    mkdir -p "$build"
else
    build=$(mktemp -d "${TMPDIR:-/tmp}/pykfac-ctest.XXXXXX")
    trap 'rm -rf "$build"' EXIT
fi

echo "run.sh: $cc ${cflags[*]}"
echo "run.sh: BLAS = $blas_desc"

# ---- build csrc/ once ----------------------------------------------------------
objs=()
for src in "$root"/csrc/*.c; do
    obj="$build/$(basename "${src%.c}").o"
    if ! "$cc" "${cflags[@]}" "${blas_cflags[@]}" -c "$src" -o "$obj"; then
        echo "run.sh: FAILED to compile ${src#"$root"/}" >&2
        exit 1
    fi
    objs+=("$obj")
done

# Tests of parts of the engine that are not written yet are compiled out
# (the test binary says so); once csrc/ defines them they always run.
have=()
defined=$(nm -g --defined-only "${objs[@]}" 2>/dev/null | awk '{print $3}')
grep -qx pk_mlp_check <<<"$defined" && have+=(-DPK_TEST_HAVE_MLP=1)
grep -qx pk_kron_matvec <<<"$defined" && have+=(-DPK_TEST_HAVE_KRON=1)

# ---- build and run each test ---------------------------------------------------
failed=()
ran=0
for src in "$here"/test_*.c; do
    [ -e "$src" ] || continue
    name=$(basename "${src%.c}")
    exe="$build/$name"
    # ${a[@]+"${a[@]}"}: an empty array under `set -u` on bash < 4.4 too
    if ! "$cc" "${cflags[@]}" "${blas_cflags[@]}" ${have[@]+"${have[@]}"} "$src" "${objs[@]}" \
        ${ldflags[@]+"${ldflags[@]}"} "${blas_libs[@]}" -lm -ldl -o "$exe"; then
        echo "run.sh: FAILED to build $name" >&2
        failed+=("$name (build)")
        continue
    fi
    ran=$((ran + 1))
    set +e
    ${runner[@]+"${runner[@]}"} "$exe"
    rc=$?
    set -e
    if [ $rc -ne 0 ]; then
        echo "run.sh: $name exited with status $rc" >&2
        failed+=("$name")
    fi
done

if [ $ran -eq 0 ] && [ ${#failed[@]} -eq 0 ]; then
    echo "run.sh: no tests found in $here" >&2
    exit 1
fi
if [ ${#failed[@]} -ne 0 ]; then
    echo "run.sh: FAILED: ${failed[*]}"
    exit 1
fi
echo "run.sh: all $ran test programs passed"
