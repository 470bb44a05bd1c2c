"""Memory: nothing leaks, and requests that cannot fit raise MemoryError.

* Leaks. Every main function is called 10 000 times after a warm-up, once
  with good arguments and once with arguments that fail (in the wrapper, in
  the C core after it allocated, in the memory guard); the resident set size
  read from /proc/self/statm must stay flat within 1 MiB, and the bytes
  glibc's malloc has handed out (mallinfo2) within 256 KiB. The calls run
  in ONE fresh interpreter (a long test session's heap is full of free
  holes that swallow a small leak without RSS growth), with free heap pages
  trimmed before each reading. The problems are sized so that leaking any
  output or C scratch buffer per call grows the RSS by MiBs
  (test_harness_detects_a_small_leak: a 1 KiB-per-call leak is seen).
  test_wrapper.py's tracemalloc check sees Python allocations only; these
  also see the C core's malloc.
* Requests too large for the machine raise MemoryError naming the function
  or argument BEFORE anything is allocated -- outputs (a Hessian with
  D = 10^6, a Jacobian with huge N*K*D), input copies (a broadcast view or a
  float32 -> float64 cast that would have to be materialised), C scratch
  (huge mc_samples) and sizes where a byte count would overflow 64 bits --
  never an OOM kill, a crash, or numpy's "array is too big" ValueError.
* In a child process with an address-space limit (ulimit -v, as on many
  clusters) the guard uses the limit, and an allocation failing INSIDE a C
  kernel (below the guard's 64 MiB threshold) is a MemoryError that frees
  the kernel's other buffers.

The RSS and rlimit tests need Linux and are skipped under AddressSanitizer
(its quarantine holds freed memory and it cannot run under RLIMIT_AS);
tools/sanitize_tests.sh runs the rest of this file under ASan.
"""
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest

import pykfac as pk

LINUX = sys.platform.startswith("linux")
REPEATS = int(os.environ.get("PYKFAC_MEMORY_REPEATS", "10000"))
WARMUP = 300
TOLERANCE = 1 << 20  # bytes of RSS growth allowed over REPEATS calls
HEAP_TOLERANCE = 256 << 10  # bytes of malloc'ed memory still in use
MiB = 1 << 20


def _asan_loaded():
    if not LINUX:
        return False
    with open("/proc/self/maps") as f:
        return any("libasan" in line or "libclang_rt.asan" in line for line in f)


ASAN = _asan_loaded()
needs_linux = pytest.mark.skipif(not LINUX, reason="reads /proc/self/statm and /proc/meminfo")
no_asan = pytest.mark.skipif(ASAN, reason="AddressSanitizer's quarantine and shadow memory distort RSS "
                                          "and it cannot run under RLIMIT_AS")


def _malloc_trim():
    """glibc's malloc_trim(0), or a no-op elsewhere."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


_TRIM = _malloc_trim()


def rss():
    """Resident set size in bytes (/proc/self/statm, field 2), after giving
    free heap pages back to the OS: in a long test session the heap holds
    many free pages, and a leak that reuses them would not show."""
    gc.collect()
    _TRIM()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def available():
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return info["MemAvailable"] + info.get("SwapFree", 0)


# ---------------------------------------------------------------------------
# problems: every output and scratch buffer is >= ~1 KiB per call
# ---------------------------------------------------------------------------
def _problem(sizes, loss, N, seed=0):
    net = pk.MLP(list(sizes), activation="tanh", seed=seed)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, sizes[0]))
    K = sizes[-1]
    y = {"ce": rng.integers(0, K, size=N), "mse": rng.normal(size=(N, K)),
         "bce": rng.integers(0, 2, size=N).astype(float)}[loss]
    V = rng.normal(size=(net.num_params, 3))
    U = rng.normal(size=(N, K, 3))
    return net, X, y, V, U


P = _problem((8, 16, 4), "ce", 32)   # D = 212
SMALL = _problem((4, 6, 3), "ce", 8)  # D = 51, for the dense D x D functions
KRON_NET = _problem((24, 32, 4), "ce", 40)  # factors 25^2, 32^2, 33^2, 4^2
KC = pk.kfac(KRON_NET[0], (KRON_NET[1], KRON_NET[2]), "ce")
KC_V = np.random.default_rng(1).normal(size=(KC.num_params, 2))
KC.eigh()
SINGULAR = pk.kfac(SMALL[0], (SMALL[1], SMALL[2]), "ce")  # ce: the last G is singular
SINGULAR.eigh()


def _huge_net():
    return pk.MLP([1000, 999, 1], seed=0)  # D = 1 000 999, a 8 TB Hessian


HUGE = None
# K = 10^4 outputs, D = 110 110: a Jacobian of 10^5 samples is 8.8e14 bytes,
# their output Hessians 8e13 bytes -- beyond any machine, so the guard's
# MemoryError is certain wherever the tests run
WIDE_K = pk.MLP([10, 10, 10**4], seed=0)
WIDE_X = np.zeros((10**5, 10))


def good_calls():
    net, X, y, V, U = P
    snet, sX, sy, sV, _ = SMALL
    return {
        "forward": lambda: net(X),
        "loss_and_grad": lambda: pk.loss_and_grad(net, X, y, "ce"),
        "loss_per_sample": lambda: pk.loss_per_sample(net, X, y, "ce"),
        "jacobian": lambda: pk.jacobian(net, X),
        "jvp": lambda: pk.jvp(net, X, V),
        "vjp": lambda: pk.vjp(net, X, U),
        "hvp": lambda: pk.hvp(net, X, y, "ce", V),
        "ggn_matvec": lambda: pk.ggn_matvec(net, X, y, "ce", V),
        "residual_matvec": lambda: pk.residual_matvec(net, X, y, "ce", V),
        "hessian": lambda: pk.hessian(snet, sX, sy, "ce"),
        "ggn": lambda: pk.ggn(snet, sX, sy, "ce"),
        "diag_ggn": lambda: pk.diag_ggn(net, X, y, "ce"),
        "diag_ggn_mc": lambda: pk.diag_ggn(net, X, y, "ce", mc_samples=4, seed=1),
        "empirical_fisher_diag": lambda: pk.empirical_fisher_diag(net, X, y, "ce"),
        "output_curvature": lambda: pk.output_curvature(net, X, "ce", y=y),
        "kfac_exact": lambda: pk.kfac(net, (X, y), "ce"),
        "kfac_mc": lambda: pk.kfac(net, (X, y), "ce", kind="mc", mc_samples=2, seed=3),
        "kfac_kfra": lambda: pk.kfac(net, (X, y), "ce", kind="kfra"),
        "kron_solve": lambda: KC.solve(KC_V, 0.1),
        "kron_solve_factored": lambda: KC.solve(KC_V, 0.1, factored=True),
        "kron_matvec": lambda: KC.matvec(KC_V),
        "kron_logdet": lambda: KC.logdet(0.1),
        "kron_eigh": lambda: pk.KronCurvature(SINGULAR.A, SINGULAR.G, SINGULAR.sizes).eigh(),
        "GGNOperator": lambda: pk.GGNOperator(net, X, y, "ce") @ V,
    }


def bad_calls():
    """Failing calls: in the wrapper (after net and X were converted), in the
    C core after its allocations (singular solve), in the memory guard."""
    net, X, y, V, U = P
    Xnan = X.copy()
    Xnan[3, 2] = np.nan
    Vnan = V.copy()
    Vnan[-1, 0] = np.inf
    ybad = y.copy()
    ybad[-1] = 99
    global HUGE
    if HUGE is None:
        HUGE = _huge_net()
    hX, hy = np.zeros((1, 1000)), np.zeros((1, 1))
    return {
        "loss_and_grad_bad_label": (lambda: pk.loss_and_grad(net, X, ybad, "ce"), ValueError),
        "jacobian_nan_X": (lambda: pk.jacobian(net, Xnan), ValueError),
        "jvp_inf_V": (lambda: pk.jvp(net, X, Vnan), ValueError),
        "vjp_wrong_u": (lambda: pk.vjp(net, X, U[:, :2]), ValueError),
        "hvp_float_labels": (lambda: pk.hvp(net, X, y.astype(float), "ce", V), TypeError),
        "ggn_matvec_complex_V": (lambda: pk.ggn_matvec(net, X, y, "ce", V + 0j), TypeError),
        "diag_ggn_bad_seed": (lambda: pk.diag_ggn(net, X, y, "ce", mc_samples=2, seed=-1), ValueError),
        "kfac_second_batch_bad": (lambda: pk.kfac(net, [(X, y), (X[:, :3], y)], "ce"), ValueError),
        "output_curvature_bad_loss": (lambda: pk.output_curvature(net, X, "nll", y=y), ValueError),
        "kron_solve_singular": (lambda: SINGULAR.solve(SMALL[3], 0.0), pk.LinAlgError),
        "kron_logdet_singular": (lambda: SINGULAR.logdet(0.0), pk.LinAlgError),
        "kron_solve_nan_V": (lambda: KC.solve(np.full_like(KC_V, np.nan), 0.1), ValueError),
        # (the guard's own cost is ~0.1 ms; these two spend ~3 ms checking
        # the 10^6 parameters / inputs for NaN first, hence fewer repeats)
        "hessian_too_big": (lambda: pk.hessian(HUGE, hX, hy, "mse"), MemoryError, REPEATS // 10),
        "jacobian_too_big": (lambda: pk.jacobian(WIDE_K, WIDE_X), MemoryError, REPEATS // 10),
        "X_copy_too_big": (lambda: net(np.broadcast_to(X[:1], (10**12, X.shape[1]))), MemoryError),
    }


def _heap_in_use():
    """Bytes glibc malloc has handed out and not got back (mallinfo2:
    uordblks + hblkhd), or None without glibc >= 2.33. Unlike the RSS this
    sees a leak even where it lands in a hole of a fragmented heap."""
    try:
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                "fordblks", "keepcost")]

        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = MallInfo2
    info = fn()
    return info.uordblks + info.hblkhd


def _growth(fn, repeats=REPEATS):
    """(RSS growth, malloc in-use growth or None) over `repeats` calls after a warm-up."""
    for _ in range(WARMUP):
        fn()
    r0, h0 = rss(), _heap_in_use()
    for _ in range(repeats):
        fn()
    r1, h1 = rss(), _heap_in_use()
    return r1 - r0, (None if h0 is None else h1 - h0)


def _failing(name, fn, exc):
    def call():
        try:
            fn()
        except exc:
            return
        raise AssertionError(f"{name} did not raise {exc.__name__}")

    return call


def measure_all():
    """Every leak case in THIS process; {case: [rss growth, heap growth, calls]}."""
    out = {}
    kept = []
    out["harness"] = [*_growth(lambda: kept.append(np.ones(128))), REPEATS]
    del kept[:]
    for name, fn in sorted(good_calls().items()):
        out[f"good:{name}"] = [*_growth(fn), REPEATS]
    for name, (fn, exc, *rep) in sorted(bad_calls().items()):
        n = rep[0] if rep else REPEATS
        out[f"bad:{name}"] = [*_growth(_failing(name, fn, exc), n), n]
    return out


_RESULTS = {}


def leak_results():
    """measure_all() run once per session in a FRESH interpreter: in a long
    test session the heap is full of free holes that would absorb a small
    leak without any RSS growth (the 1 KiB-per-call harness leak shows as
    ~90 KiB after a fragmenting workload, 11 MiB in a fresh process)."""
    if not _RESULTS:
        here = os.path.abspath(__file__)
        pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(pk.__file__)))
        code = textwrap.dedent(f"""
            import importlib.util, json, sys
            sys.path.insert(0, {pkg_parent!r})
            spec = importlib.util.spec_from_file_location("pykfac_test_memory", {here!r})
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            print("RESULTS " + json.dumps(mod.measure_all()))
        """)
        with tempfile.TemporaryDirectory() as cwd:  # never the source tree as sys.path[0]
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                                  timeout=1800, env=dict(os.environ, PYKFAC_MEMORY_REPEATS=str(REPEATS)))
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULTS ")]
        assert proc.returncode == 0 and line, f"leak measurement failed:\n{proc.stdout}\n{proc.stderr}"
        _RESULTS.update(json.loads(line[0][len("RESULTS "):]))
    return _RESULTS


def _check(key, what):
    rss_growth, heap_growth, n = leak_results()[key]
    assert rss_growth < TOLERANCE, f"{what}: RSS grew by {rss_growth / 1024:.0f} KiB over {n} calls"
    if heap_growth is not None:
        assert heap_growth < HEAP_TOLERANCE, \
            f"{what}: malloc'ed memory in use grew by {heap_growth / 1024:.0f} KiB over {n} calls"


@needs_linux
@no_asan
def test_harness_detects_a_small_leak():
    """The measurement is sensitive enough: 1 KiB kept per call is seen."""
    rss_growth, heap_growth, n = leak_results()["harness"]
    assert rss_growth > 4 * TOLERANCE, rss_growth
    if heap_growth is not None:
        assert heap_growth > n * 1024, heap_growth


@needs_linux
@no_asan
@pytest.mark.parametrize("name", sorted(good_calls()))
def test_no_leak_successful_calls(name):
    _check(f"good:{name}", name)


@needs_linux
@no_asan
@pytest.mark.parametrize("name", sorted(bad_calls()))
def test_no_leak_failing_calls(name):
    _check(f"bad:{name}", f"{name} (failing)")


@pytest.mark.parametrize("name", ["hessian_too_big", "jacobian_too_big", "X_copy_too_big"])
def test_memory_error_releases_arguments(name):
    """The guard's MemoryError drops every reference the call took."""
    fn, exc, *_ = bad_calls()[name]
    objs = [HUGE, HUGE.theta, WIDE_K, WIDE_K.theta, WIDE_X, P[0], P[0].theta, P[1]]
    for _ in range(3):
        with pytest.raises(exc):
            fn()
    gc.collect()
    before = [sys.getrefcount(o) for o in objs]
    for _ in range(50):
        with pytest.raises(exc):
            fn()
    gc.collect()
    assert [sys.getrefcount(o) for o in objs] == before


# ---------------------------------------------------------------------------
# requests that cannot fit: MemoryError before allocating
# ---------------------------------------------------------------------------
def _expect_memory_error(fn, pattern):
    """fn() raises MemoryError matching `pattern`, quickly and without the
    process's memory growing (nothing was allocated)."""
    gc.collect()
    before = rss() if LINUX else 0
    if not LINUX:  # the guard knows the available memory on Linux only; elsewhere malloc refuses
        pattern = ""
    t0 = time.perf_counter()
    with pytest.raises(MemoryError, match=pattern) as info:
        fn()
    elapsed = time.perf_counter() - t0
    if LINUX and not ASAN:
        assert rss() - before < 64 * MiB, "memory was allocated before the MemoryError"
    assert elapsed < 30, f"took {elapsed:.1f} s: something was computed first"
    return info.value


GUARD = r"needs [\d.]+ \w?i?B of memory .* but only [\d.]+ \w?i?B is available"


def test_hessian_and_ggn_of_a_million_parameters():
    net = _huge_net()
    X, y = np.zeros((2, 1000)), np.zeros((2, 1))
    for fn, name in ((pk.hessian, "hessian"), (pk.ggn, "ggn")):
        _expect_memory_error(lambda: fn(net, X, y, "mse"), rf"^{name}: {GUARD}")
    # the net itself still works
    assert np.isfinite(pk.loss(net, X, y, "mse"))


def test_huge_outputs_of_every_shape():
    """Every size is far beyond any machine (>= 10 TB), so the MemoryError is
    certain; broadcast views make the inputs free."""
    net, X, y, V, U = P
    D, K = net.num_params, net.n_outputs
    many = np.broadcast_to(X[:1], (10**12, X.shape[1]))  # 10^12 samples, no memory
    cases = [
        (lambda: pk.jacobian(WIDE_K, WIDE_X), r"^jacobian: "),
        (lambda: pk.output_curvature(WIDE_K, WIDE_X, "mse"), r"^output_curvature: "),
        (lambda: pk.loss_per_sample(net, many, np.broadcast_to(y[:1], (10**12,)), "ce"), r"^X: "),
        (lambda: net(many), r"^X: "),  # the contiguous copy of X itself
        (lambda: pk.jvp(net, X, np.broadcast_to(V[:, :1], (D, 10**11))), r"^v: "),
        (lambda: pk.hvp(net, X, y, "ce", np.broadcast_to(V[:, :1], (D, 10**11))), r"^V: "),
        (lambda: pk.vjp(net, X, np.broadcast_to(U[..., :1], (len(X), K, 10**11))), r"^u: "),
        # float32 data into a float64 network: the cast would double it
        (lambda: pk.loss(net, np.broadcast_to(X[:1].astype(np.float32), (10**12, X.shape[1])),
                         np.broadcast_to(y[:1], (10**12,)), "ce"), r"^X: "),
    ]
    for fn, pattern in cases:
        _expect_memory_error(fn, pattern + GUARD)


def test_huge_scratch():
    """The C core's scratch is sized by mc_samples (a stack of sampled
    gradients): the guard sees it before the kernel allocates."""
    net = pk.MLP([1000, 2], seed=0)  # 2 * mc_samples * width doubles: 34 TB
    X, y = np.zeros((3, 1000)), np.array([0, 1, 1])
    for fn, name in ((lambda: pk.diag_ggn(net, X, y, "ce", mc_samples=2**31 - 1, seed=0), "diag_ggn"),
                     (lambda: pk.kfac(net, (X, y), "ce", kind="mc", mc_samples=2**31 - 1, seed=0), "kfac")):
        _expect_memory_error(fn, rf"^{name}: {GUARD}")


def test_huge_kronecker_factors():
    """K-FAC of a layer 10^6 wide needs 8 TB of factors; to_dense of a
    D = 999 000 block needs 8 TB: both refused before numpy allocates."""
    net = pk.MLP([1, 10**6, 1], seed=0)
    X, y = np.zeros((2, 1)), np.zeros((2, 1))
    _expect_memory_error(lambda: pk.kfac(net, (X, y), "mse"), rf"^kfac: {GUARD}")
    kc = pk.KronCurvature([np.eye(1000)], [np.eye(999)], (999, 999))
    _expect_memory_error(kc.to_dense, rf"^to_dense: {GUARD}")
    assert kc.matvec(np.ones(kc.num_params)).shape == (kc.num_params,)


@needs_linux
def test_guard_helper():
    _core = pk._core
    assert _core.check_memory(1.0, "x") is None
    assert _core.check_memory(32.0 * MiB, "x") is None  # below the threshold: never checked
    with pytest.raises(MemoryError, match=rf"^thing: {GUARD}"):
        _core.check_memory(2.0**70, "thing")
    with pytest.raises(MemoryError, match=r"^thing: needs 1\.0 EiB"):
        _core.check_memory(2.0**60, "thing")
    if LINUX:
        assert _core.check_memory(min(available() / 4, 2.0**33), "x") is None


def _lazy_net(sizes, dtype=np.float32):
    """An MLP whose theta is calloc'ed (untouched zero pages: no RSS), for
    parameter counts whose byte sizes overflow 64 bits when squared."""
    net = pk.MLP.__new__(pk.MLP)
    net._dtype = np.dtype(dtype)
    net._sizes = tuple(sizes)
    net._activations = ("identity",) * (len(sizes) - 2)
    net._act_codes = (0,) * (len(sizes) - 2)
    D = sum(o * (i + 1) for i, o in zip(sizes[:-1], sizes[1:]))
    try:
        net._theta = np.zeros(D, dtype)
    except MemoryError:
        pytest.skip(f"cannot reserve {D * np.dtype(dtype).itemsize / 2**30:.1f} GiB of address space here")
    return net


@needs_linux
@no_asan
def test_sizes_that_overflow_64_bits():
    """D = 1.6e9 (the largest D the 32-bit BLAS allows is 2^31 - 1): D*D*4
    bytes exceeds 2^63, where a naive size computation overflows and numpy
    says 'array is too big' (ValueError). The guard computes in floating point
    and raises MemoryError; D > 2^31 - 1 is refused by the C core's check."""
    net = _lazy_net([1, 2**29, 1])
    assert float(net.num_params) ** 2 * 4 > 2.0**63
    X, y = np.zeros((1, 1)), np.zeros((1, 1))
    for fn, name in ((pk.hessian, "hessian"), (pk.ggn, "ggn")):
        _expect_memory_error(lambda: fn(net, X, y, "mse"), rf"^{name}: {GUARD}")
    _expect_memory_error(lambda: pk.jacobian(net, np.broadcast_to(X, (2**40, 1))), r"^(X|jacobian): ")
    net = None  # give the 6 GiB of address space back first
    too_big = _lazy_net([1, 2**30, 1])  # D = 2^31 + 1
    with pytest.raises(ValueError, match=r"^net: .*too large for the 32-bit BLAS"):
        pk.loss(too_big, X, y, "mse")


# ---------------------------------------------------------------------------
# under an address-space limit (a child process)
# ---------------------------------------------------------------------------
CHILD_PRELUDE = """
import os, resource, sys
import numpy as np
import pykfac as pk

def vm_size():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def limit(extra):
    resource.setrlimit(resource.RLIMIT_AS, (vm_size() + extra, resource.RLIM_INFINITY))

def unlimit():
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

MiB = 1 << 20
"""


def run_child(body, timeout=300):
    code = CHILD_PRELUDE + textwrap.dedent(body)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as cwd:  # never the source tree as sys.path[0]
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              env=env, cwd=cwd)
    # killed by a signal (OOM killer, segfault) would be a negative return code
    assert proc.returncode == 0, f"child exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@needs_linux
@no_asan
def test_guard_uses_the_address_space_limit():
    """Under `ulimit -v`, a 2 GiB Jacobian with 1 GiB of headroom raises the
    guard's MemoryError (naming the function and both sizes) instead of being
    attempted; 128 MiB ones still work."""
    out = run_child("""
        net = pk.MLP([10, 200, 100], seed=0)         # D = 22 300, K = 100
        X = np.zeros((120, 10))                       # N K D * 8 = 2.1 GB
        pk.jacobian(net, X[:2])                       # warm up OpenBLAS before the limit
        limit(1024 * MiB)
        try:
            pk.jacobian(net, X)
            print("no error")
        except MemoryError as e:
            print("MemoryError:", e)
        J = pk.jacobian(net, X[:7])                   # 125 MiB
        print("small ok", J.shape)
    """)
    assert re.search(r"MemoryError: jacobian: needs 2\.0 GiB .* but only (0\.\d|1\.0) GiB is available", out), out
    assert "small ok (7, 100, 22300)" in out


@needs_linux
@no_asan
def test_allocation_failure_inside_the_c_core():
    """A scratch buffer below the guard's 64 MiB threshold that still cannot
    be allocated fails inside the kernel (after its other buffers were
    allocated): MemoryError, those buffers freed, and the next calls work.
    Repeated 200 times, RSS stays flat."""
    out = run_child("""
        net = pk.MLP([4, 4, 3], seed=0)
        X = np.ones((1, 4)); y = np.array([1])
        ref = pk.diag_ggn(net, X, y, "ce", mc_samples=3, seed=0)
        # the MC stack: 2 * mc_samples * width doubles = 48 MiB, under the guard's threshold
        M = 48 * MiB // (2 * 4 * 8)
        limit(24 * MiB)
        failures = 0
        before = rss()
        for i in range(200):
            try:
                pk.diag_ggn(net, X, y, "ce", mc_samples=M, seed=0)
            except MemoryError:
                failures += 1
            again = pk.diag_ggn(net, X, y, "ce", mc_samples=3, seed=0)
            assert np.array_equal(again, ref)
        growth = rss() - before
        unlimit()
        print("failures", failures, "growth", growth)
        big = pk.diag_ggn(net, X, y, "ce", mc_samples=M, seed=0)
        print("unlimited ok", bool(np.all(np.isfinite(big))))
    """)
    fails = int(re.search(r"failures (\d+)", out).group(1))
    growth = int(re.search(r"growth (-?\d+)", out).group(1))
    assert fails == 200, out
    assert growth < TOLERANCE, out
    assert "unlimited ok True" in out

