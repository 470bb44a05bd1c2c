#!/usr/bin/env bash
# tools/sanitize_tests.sh: the pytest suite against an AddressSanitizer +
# UndefinedBehaviorSanitizer build of pykfac's C extension.
#
#   tools/sanitize_tests.sh [OUTDIR] [-- extra pytest arguments]
#
# 1. Builds pykfac with PYKFAC_SANITIZE=address,undefined (see setup.py) from
#    a copy of the sources in a private directory OUTDIR (default: a fresh
#    temporary one), never touching the source tree: with `python setup.py
#    build_ext` like tools/devbuild.sh when setuptools and a BLAS are at hand,
#    else with `pip install --target` (an isolated build, as in a fresh CI
#    venv where pykfac was pip-installed; pip's cache supplies the build
#    requirements). OUTDIR is always rebuilt from scratch (setuptools does not
#    notice edits to csrc/*.inc).
# 2. Runs tests/ -- all of it except tests/test_notebooks.py (Jupyter
#    kernels) and tests/test_c_core.py (it builds and runs the C tests under
#    ASan/UBSan itself) -- with that build first on PYTHONPATH and the ASan
#    runtime the extension links preloaded (Python itself is not instrumented).
# 3. Fails if the build fails, if pytest fails, or if ASan or UBSan reported
#    anything in any process (reports go to OUTDIR/reports/, are printed, and
#    fail the run even when the test that triggered them passed).
#
# Sanitizer settings: ASAN_OPTIONS=detect_leaks=0 (CPython frees nothing at
# exit; leaks are covered by tests/test_memory.py and the LSan run of the C
# tests), allocator_may_return_null=1 (a refused huge allocation must stay a
# MemoryError, as without ASan); UBSAN_OPTIONS=halt_on_error=1:
# print_stacktrace=1. Extra options may be appended through ASAN_OPTIONS /
# UBSAN_OPTIONS in the environment.
#
# Environment: PYTHON (default python3), CC (compiler for the build).
# Needs: a C compiler with ASan/UBSan runtimes (gcc or clang), pytest and
# hypothesis importable by $PYTHON. Prints the elapsed time at the end.
set -euo pipefail

start=$(date +%s)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}

out=""
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
    out=$1
    shift
fi
[ "${1:-}" = "--" ] && shift
if [ -z "$out" ]; then
    out=$(mktemp -d "${TMPDIR:-/tmp}/pykfac-sanitize.XXXXXX")
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -rf "$out/tmp" "$out/lib" "$out/reports" "$out/run" "$out/src"
mkdir -p "$out/tmp" "$out/lib" "$out/reports" "$out/run"

say() { echo "sanitize_tests: $*"; }
die() { echo "sanitize_tests: $*" >&2; exit 1; }

"$python" -c "import pytest, numpy" 2>/dev/null || die "$python cannot import pytest and numpy"

# ---- 1. build ------------------------------------------------------------------
# From a copy of the sources: pip builds in-tree, and a build/ directory left
# in the tree by another build would be reused without the sanitizer flags.
export PYKFAC_SANITIZE=address,undefined
src="$out/src"
rm -rf "$src"
mkdir -p "$src/csrc" "$src/pykfac"
for f in setup.py pyproject.toml MANIFEST.in README.md LICENSE; do
    if [ -e "$root/$f" ]; then cp "$root/$f" "$src/"; fi
done
find "$root/csrc" -maxdepth 1 -type f -exec cp {} "$src/csrc/" \;
find "$root/pykfac" -maxdepth 1 -type f ! -name "*.so" ! -name "*.pyc" -exec cp {} "$src/pykfac/" \;

have_blas=0
if pkg-config --exists openblas 2>/dev/null || "$python" -c "import scipy_openblas32" 2>/dev/null; then
    have_blas=1
fi
log="$out/build.log"
if [ $have_blas = 1 ] && "$python" -c "import setuptools, numpy" 2>/dev/null; then
    say "building with setup.py build_ext into $out/lib"
    (cd "$src" && "$python" setup.py -q build_ext --build-temp "$out/tmp" --build-lib "$out/lib") \
        >"$log" 2>&1 || { cat "$log"; die "build failed"; }
    cp "$src"/pykfac/*.py "$out/lib/pykfac/"
else
    say "building with pip install --target $out/lib (isolated build)"
    "$python" -m pip install -q --no-deps --no-compile --target "$out/lib" "$src" \
        >"$log" 2>&1 || { cat "$log"; die "build failed"; }
fi
so=$(ls "$out"/lib/pykfac/_core*.so 2>/dev/null | head -n 1)
[ -n "$so" ] || die "no extension module in $out/lib/pykfac (see $log)"

# the ASan runtime the extension is linked against (preloaded: it must be first)
asan_rt=$(ldd "$so" | awk '/libasan|libclang_rt\.asan/ {print $3; exit}')
if [ -z "$asan_rt" ]; then
    # clang links its runtime statically unless -shared-libsan; ask the compiler
    cc=${CC:-$("$python" -c "import sysconfig; print((sysconfig.get_config_var('CC') or 'cc').split()[0])")}
    for name in libasan.so "libclang_rt.asan-$(uname -m).so"; do
        cand=$("$cc" -print-file-name="$name" 2>/dev/null || true)
        if [ -n "$cand" ] && [ -f "$cand" ]; then asan_rt=$cand; break; fi
    done
fi
[ -n "$asan_rt" ] && [ -f "$asan_rt" ] || die "cannot find the ASan runtime of $so"
syms=$(nm -D "$so" 2>/dev/null || true)  # (not piped into grep -q: pipefail + SIGPIPE)
grep -q "__asan_report" <<<"$syms" || die "$so is not instrumented with ASan"
grep -q "__ubsan_handle" <<<"$syms" || die "$so is not instrumented with UBSan"
say "extension $so"
say "ASan runtime $asan_rt"
# C++ extensions the tests import later (matplotlib's ft2font in the demo) throw
# exceptions through ASan's __cxa_throw interceptor, which needs libstdc++ to be
# loaded when ASan starts: preload it right after the runtime.
cxx_rt=$("${CC:-cc}" -print-file-name=libstdc++.so.6 2>/dev/null || true)
if [ -n "$cxx_rt" ] && [ -f "$cxx_rt" ]; then
    asan_rt="$asan_rt:$(readlink -f "$cxx_rt")"
    say "preloading $cxx_rt too"
fi

# ---- 2. run the tests ------------------------------------------------------------
# Only the Python processes get the sanitizer environment (children inherit it).
san_env=(
    LD_PRELOAD="$asan_rt${LD_PRELOAD:+:$LD_PRELOAD}"
    ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:abort_on_error=0:log_path=$out/reports/asan${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$out/reports/ubsan${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
    PYTHONPATH="$out/lib${PYTHONPATH:+:$PYTHONPATH}"
    PYTHONDONTWRITEBYTECODE=1
)

# the sanitized build, not an installed or in-tree pykfac, is what gets imported
imported=$(cd "$out/run" && env "${san_env[@]}" "$python" -c "import pykfac._core as c; print(c.__file__)")
case $imported in
    "$out/lib/"*) ;;
    *) die "pykfac._core imports from $imported, not from $out/lib" ;;
esac

say "pytest (ASan + UBSan) ..."
set +e
(cd "$out/run" && env "${san_env[@]}" "$python" -m pytest -q -p no:cacheprovider --rootdir="$root" \
    -c "$root/pyproject.toml" "$root/tests" --ignore="$root/tests/test_notebooks.py" \
    --ignore="$root/tests/test_c_core.py" "$@") 2>&1 | tee "$out/pytest.log"
rc=${PIPESTATUS[0]}
set -e

# ---- 3. verdict --------------------------------------------------------------------
elapsed=$(( $(date +%s) - start ))
reports=$(find "$out/reports" -type f 2>/dev/null | sort)
if [ -n "$reports" ]; then
    for f in $reports; do
        echo "==== $f"
        cat "$f"
    done
    die "sanitizer reports found (above; pytest exit status $rc) after ${elapsed} s"
fi
if [ "$rc" -ne 0 ]; then
    die "pytest failed (exit status $rc) under ASan + UBSan after ${elapsed} s"
fi
say "OK: no ASan/UBSan reports, tests passed, ${elapsed} s (build and logs in $out)"
