"""pykfac from several Python threads at once.

* 8 threads calling the kernels concurrently (each on its own problem, and all
  on one shared problem) get exactly the answers of serial calls: the C core
  keeps no mutable global state and samples from the caller's seeded RNG.
* Failing calls in some threads do not disturb the others.
* The GIL is released while a kernel runs: a pure-Python ticker thread keeps
  recording timestamps in the middle of a long C call.
"""
import random
import threading
import time

import numpy as np
import pytest

import pykfac as pk

N_THREADS = 8


class Problem:
    def __init__(self, loss, seed, sizes=(6, 12, 10), N=40):
        k = 1 if loss == "bce" else sizes[-1]
        self.loss = loss
        self.net = pk.MLP([*sizes[:-1], k], activation="tanh", seed=seed)
        rng = np.random.default_rng(seed + 100)
        self.X = rng.normal(size=(N, sizes[0]))
        if loss == "mse":
            self.y = rng.normal(size=(N, k))
        elif loss == "ce":
            self.y = rng.integers(0, k, size=N)
        else:
            self.y = rng.integers(0, 2, size=N).astype(float)
        self.V = rng.normal(size=(self.net.num_params, 3))
        self.seed = seed


def _kfac(kind, **kw):
    def job(p):
        kc = pk.kfac(p.net, (p.X, p.y), p.loss, kind=kind, **kw)
        return [*kc.A, *kc.G]

    return job


JOBS = {
    "loss_and_grad": lambda p: pk.loss_and_grad(p.net, p.X, p.y, p.loss),
    "ggn_matvec": lambda p: pk.ggn_matvec(p.net, p.X, p.y, p.loss, p.V),
    "hvp": lambda p: pk.hvp(p.net, p.X, p.y, p.loss, p.V),
    "kfac_exact": _kfac("exact"),
    "kfac_kfra": _kfac("kfra"),
    "kfac_mc": lambda p: _kfac("mc", mc_samples=2, seed=p.seed)(p),
    "kfac_batches": lambda p: pk.kfac(p.net, [(p.X[:15], p.y[:15]), (p.X[15:], p.y[15:])], p.loss,
                                      kind="empirical").to_dense(),
    "diag_ggn": lambda p: pk.diag_ggn(p.net, p.X, p.y, p.loss),
    "diag_ggn_mc": lambda p: pk.diag_ggn(p.net, p.X, p.y, p.loss, mc_samples=3, seed=p.seed),
    "empirical_fisher_diag": lambda p: pk.empirical_fisher_diag(p.net, p.X, p.y, p.loss),
    "jvp": lambda p: pk.jvp(p.net, p.X, p.V),
    "forward": lambda p: p.net(p.X),
}


def _flatten(result):
    if isinstance(result, (tuple, list)):
        return [x for r in result for x in _flatten(r)]
    return [np.asarray(result)]


def _run_threads(target, n=N_THREADS, timeout=300):
    """Run target(i) in n threads started together; re-raise the first error."""
    barrier = threading.Barrier(n)
    errors = []

    def body(i):
        try:
            barrier.wait(timeout=60)
            target(i)
        except BaseException as exc:  # noqa: BLE001 -- reported in the main thread
            errors.append((i, exc))

    threads = [threading.Thread(target=body, args=(i,), name=f"pykfac-test-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        i, exc = errors[0]
        raise AssertionError(f"thread {i} failed ({len(errors)} threads failed)") from exc


def _check_equal(got, want, what):
    got, want = _flatten(got), _flatten(want)
    assert len(got) == len(want), what
    for g, w in zip(got, want):
        # bit-identical, not merely close: same inputs, same answer
        np.testing.assert_array_equal(g, w, err_msg=what)


def test_concurrent_calls_match_serial_own_problems():
    """Each thread has its own network and data (all three losses)."""
    problems = [Problem(("mse", "ce", "bce")[i % 3], seed=i) for i in range(N_THREADS)]
    serial = {(i, name): job(problems[i]) for i in range(N_THREADS) for name, job in JOBS.items()}

    def work(i):
        order = list(JOBS.items()) * 4
        random.Random(i).shuffle(order)
        for name, job in order:
            _check_equal(job(problems[i]), serial[(i, name)], f"thread {i}: {name}")

    _run_threads(work)


@pytest.mark.parametrize("loss", ["mse", "ce", "bce"])
def test_concurrent_calls_match_serial_shared_problem(loss):
    """All threads read the same network and arrays at once."""
    p = Problem(loss, seed=42)
    serial = {name: job(p) for name, job in JOBS.items()}
    before = (p.X.copy(), np.array(p.y), p.V.copy(), p.net.theta.copy())

    def work(i):
        order = list(JOBS.items()) * 3
        random.Random(100 + i).shuffle(order)
        for name, job in order:
            _check_equal(job(p), serial[name], f"thread {i}: {name}")

    _run_threads(work)
    for arr, old in zip((p.X, p.y, p.V, p.net.theta), before):
        np.testing.assert_array_equal(arr, old)


def test_concurrent_calls_big_enough_for_blas_threads():
    """Matrices large enough that OpenBLAS itself uses its thread pool while
    8 Python threads call in: still bit-identical to the serial answers."""
    p = Problem("ce", seed=9, sizes=(64, 128, 128, 10), N=256)
    names = ("loss_and_grad", "ggn_matvec", "kfac_exact", "diag_ggn_mc", "jvp")
    serial = {name: JOBS[name](p) for name in names}

    def work(i):
        order = list(names)
        random.Random(200 + i).shuffle(order)
        for name in order:
            _check_equal(JOBS[name](p), serial[name], f"thread {i}: {name}")

    _run_threads(work)


def test_failures_in_some_threads_do_not_disturb_others():
    """Half of the threads raise on purpose, again and again, while the other
    half compute; every good call is still exact and every bad call raises the
    documented error."""
    p = Problem("ce", seed=7)
    want_grad = pk.loss_and_grad(p.net, p.X, p.y, "ce")
    want_gv = pk.ggn_matvec(p.net, p.X, p.y, "ce", p.V)
    bad_y = p.y.copy()
    bad_y[3] = 99
    bad_X = p.X.copy()
    bad_X[0, 0] = np.nan

    def work(i):
        for _ in range(30):
            if i % 2:
                with pytest.raises(ValueError, match=r"^y\b"):
                    pk.loss_and_grad(p.net, p.X, bad_y, "ce")
                with pytest.raises(ValueError, match=r"^X\b"):
                    pk.ggn_matvec(p.net, bad_X, p.y, "ce", p.V)
                with pytest.raises(TypeError, match=r"^V\b"):
                    pk.ggn_matvec(p.net, p.X, p.y, "ce", p.V.astype(complex))
            else:
                _check_equal(pk.loss_and_grad(p.net, p.X, p.y, "ce"), want_grad, f"thread {i}")
                _check_equal(pk.ggn_matvec(p.net, p.X, p.y, "ce", p.V), want_gv, f"thread {i}")

    _run_threads(work)


def test_float32_and_float64_networks_concurrently():
    p64 = Problem("mse", seed=3)
    p32 = Problem("mse", seed=3)
    p32.net = pk.MLP(p64.net.sizes, activation="tanh", dtype=np.float32, seed=3)
    want = {id(p): [JOBS[n](p) for n in ("loss_and_grad", "ggn_matvec", "kfac_exact")] for p in (p64, p32)}

    def work(i):
        p = p64 if i % 2 else p32
        for _ in range(10):
            got = [JOBS[n](p) for n in ("loss_and_grad", "ggn_matvec", "kfac_exact")]
            _check_equal(got, want[id(p)], f"thread {i}")

    _run_threads(work)


# ---------------------------------------------------------------------------
# the GIL is released inside the kernels
# ---------------------------------------------------------------------------
def _long_problem(N):
    p = Problem("ce", seed=5, sizes=(192, 384, 384, 10), N=N)
    return p


GIL_JOBS = {
    "loss_and_grad": lambda p: pk.loss_and_grad(p.net, p.X, p.y, "ce"),
    "ggn_matvec": lambda p: pk.ggn_matvec(p.net, p.X, p.y, "ce", p.V),
    "kfac": lambda p: pk.kfac(p.net, (p.X, p.y), "ce", kind="exact"),
    "diag_ggn": lambda p: pk.diag_ggn(p.net, p.X, p.y, "ce"),
    "jvp": lambda p: pk.jvp(p.net, p.X, p.V),
}
MIN_CALL = 0.3  # seconds: long enough to dwarf a GIL switch interval (5 ms)


def _calibrated(job):
    """A problem on which one call of job takes at least MIN_CALL seconds."""
    N = 256
    while True:
        p = _long_problem(N)
        t0 = time.perf_counter()
        job(p)
        elapsed = time.perf_counter() - t0
        if elapsed >= MIN_CALL or N >= 1 << 15:
            return p, elapsed
        N = int(N * min(8.0, max(2.0, 1.5 * MIN_CALL / max(elapsed, 1e-3))))


def _ticker(stamps, stop, started=None):
    """Pure Python: append a timestamp about every millisecond until ``stop``."""
    last = time.perf_counter()
    if started is not None:
        started.set()
    while not stop.is_set():
        now = time.perf_counter()
        if now - last >= 1e-3:
            stamps.append(now)
            last = now


def _two_calls_while_ticking(call):
    """call(0) and call(1) in two threads started together while a pure-Python
    ticker runs: the two calls overlap in time, and the ticker recorded a stamp
    well inside the overlap (no call held the GIL)."""
    spans, stamps, stop = {}, [], threading.Event()

    def worker(i):
        t0 = time.perf_counter()
        call(i)
        spans[i] = (t0, time.perf_counter())

    tick = threading.Thread(target=_ticker, args=(stamps, stop))
    tick.start()
    try:
        _run_threads(worker, n=2)
    finally:
        stop.set()
        tick.join()
    (a0, a1), (b0, b1) = spans[0], spans[1]
    lo, hi = max(a0, b0), min(a1, b1)
    assert hi > lo, f"the two calls did not overlap: {spans}"
    # while both were (at least nominally) inside, Python code kept running
    margin = 0.03 + 0.1 * (hi - lo)
    if hi - lo > 2 * margin:
        assert any(lo + margin < s < hi - margin for s in stamps)


def _ticks_during_call(job, p):
    """Run job(p) in this thread while a pure-Python thread records a timestamp
    about every millisecond; return (call start, call end, timestamps)."""
    stamps = []
    stop = threading.Event()
    started = threading.Event()
    t = threading.Thread(target=_ticker, args=(stamps, stop, started), name="pykfac-ticker")
    t.start()
    started.wait()
    time.sleep(0.02)
    t0 = time.perf_counter()
    job(p)
    t1 = time.perf_counter()
    stop.set()
    t.join()
    return t0, t1, stamps


@pytest.mark.parametrize("name", list(GIL_JOBS))
def test_gil_released_during_kernel(name):
    """If the kernel held the GIL, the ticker could not run between the call's
    first and last few milliseconds (Python switches threads only every 5 ms,
    and the Python work around the C call is far shorter than the margin)."""
    job = GIL_JOBS[name]
    p, _ = _calibrated(job)
    results = []
    for _ in range(3):  # a loaded machine may starve the ticker once; not 3 times
        t0, t1, stamps = _ticks_during_call(job, p)
        margin = 0.03 + 0.1 * (t1 - t0)
        inside = [s for s in stamps if t0 + margin < s < t1 - margin]
        results.append((t1 - t0, len(inside)))
        if len(inside) >= 5:
            return
    pytest.fail(f"{name}: the Python ticker thread made no progress during the C call "
                f"(call seconds, ticks inside): {results}")


def test_two_threads_inside_kernels_at_once():
    """Two threads in long kernels overlap in time, and a third, pure-Python
    thread still ticks while both run."""
    job = GIL_JOBS["ggn_matvec"]
    p, _ = _calibrated(job)
    _two_calls_while_ticking(lambda i: job(p))


def test_set_num_threads_sets_and_restores_the_blas_thread_count():
    before = pk.show_config(print_out=False)["blas_threads"]
    with pk.set_num_threads(1) as setting:
        assert setting.previous == before and setting.num_threads == 1
        assert pk.show_config(print_out=False)["blas_threads"] == 1
        p = Problem("ce", 3)
        G1 = pk.ggn(p.net, p.X, p.y, "ce")
    assert pk.show_config(print_out=False)["blas_threads"] == before
    np.testing.assert_allclose(pk.ggn(p.net, p.X, p.y, "ce"), G1, rtol=1e-12, atol=1e-14)
    pk.set_num_threads(1)
    try:
        assert pk.show_config(print_out=False)["blas_threads"] == 1
    finally:
        pk.set_num_threads(before)
    for bad, exc in ((0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError), ("2", TypeError)):
        with pytest.raises(exc, match="n: expected"):
            pk.set_num_threads(bad)
    assert pk.show_config(print_out=False)["blas_threads"] == before
