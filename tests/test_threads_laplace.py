"""pk.Laplace and the optimisers from several Python threads at once.

* 8 threads, each fitting its own posterior (every structure and likelihood)
  and calling predictive / sample / functional_variance / kernel / LML, get
  bit-identical answers to the same calls made serially.
* 8 threads calling the read-only methods of ONE shared fitted posterior per
  structure -- with different inputs, seeds and prior precisions per thread --
  get the serial answers (the posterior's caches must not leak one thread's
  prior into another thread's result).
* 8 threads each running its own optimiser (K-FAC in every variant, SGD,
  Adam) reach bit-identical parameters and losses.
* The GIL is released during Laplace.fit: a pure-Python ticker thread keeps
  ticking in every quarter of a long fit (mirroring tests/test_threads.py),
  and two threads fitting at once overlap in time while the ticker runs.
"""
import contextlib
import random
import threading
import time

import numpy as np
import pytest

import pykfac as pk
from test_threads import N_THREADS, _check_equal, _run_threads, _ticker, _two_calls_while_ticking

STRUCTURES = ("full", "diag", "kron", "lowrank")


def _data(likelihood, K, N, d, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, d))
    if likelihood == "regression":
        y = rng.normal(size=(N, K))
    elif likelihood == "classification":
        y = rng.integers(0, K, size=N)
    else:
        y = rng.integers(0, 2, size=N).astype(float)
    return X, y


class LaplaceProblem:
    def __init__(self, i, structure=None, likelihood=None):
        self.structure = structure or STRUCTURES[i % 4]
        self.likelihood = likelihood or ("classification", "regression", "binary")[i % 3]
        K = 1 if self.likelihood == "binary" else 3
        self.net = pk.MLP([5, 9, 7, K], activation=["tanh", "relu"], seed=i)
        self.X, self.y = _data(self.likelihood, K, 40, 5, 100 + i)
        self.Xt = np.random.default_rng(200 + i).normal(size=(11, 5))
        self.seed = i
        self.kw = {"prior_precision": [0.5, 1.0, 2.0],
                   "sigma_noise": 0.7 if self.likelihood == "regression" else 1.0, "temperature": 0.9}
        if self.structure == "lowrank":
            self.kw["rank"] = 12
        if self.structure == "kron" and i % 2:
            self.kw["kind"] = "mc"
            self.kw["seed"] = i


def laplace_job(p):
    """Fit, then everything a user asks a posterior for."""
    la = pk.Laplace(p.net, p.likelihood, p.structure, **p.kw).fit([(p.X[:25], p.y[:25]), (p.X[25:], p.y[25:])])
    links = ["probit", "mc"] + (["bridge"] if p.likelihood == "classification" else [])
    return [la.predictive(p.Xt, link_approx=link, n_samples=30, seed=p.seed) for link in links] + [
        la.predictive(p.Xt, pred_type="nn", n_samples=7, seed=p.seed),
        la.functional_variance(p.Xt), la.kernel(p.Xt[:4], p.Xt[4:9]), la.sample(9, seed=p.seed),
        np.float64(la.log_marginal_likelihood()), np.float64(la.log_marginal_likelihood(prior_precision=0.3)),
        la.log_marginal_likelihood_grad()[0], la.posterior_precision_dense()]


def test_concurrent_fits_match_serial():
    problems = [LaplaceProblem(i) for i in range(N_THREADS)]
    serial = [laplace_job(p) for p in problems]
    before = [(p.X.copy(), p.y.copy(), p.net.theta.copy()) for p in problems]

    def work(i):
        for _ in range(2):
            _check_equal(laplace_job(problems[i]), serial[i], f"thread {i}: {problems[i].structure}")

    _run_threads(work)
    for p, (X, y, theta) in zip(problems, before):
        assert np.array_equal(p.X, X) and np.array_equal(p.y, y) and np.array_equal(p.net.theta, theta)


# ---------------------------------------------------------------------------
# one shared fitted posterior, read-only calls with per-thread arguments
# ---------------------------------------------------------------------------
def shared_calls(la, Xt, i):
    """Calls whose arguments differ per thread i (inputs, seeds, prior precisions)."""
    rows = Xt[i % 3: i % 3 + 6]
    prior = 0.2 + 0.3 * i
    calls = {
        "predictive": lambda: la.predictive(rows),
        "predictive_mc": lambda: la.predictive(rows, link_approx="mc", n_samples=25, seed=i),
        "fv": lambda: la.functional_variance(rows),
        "kernel": lambda: la.kernel(rows, Xt[:2]),
        "sample": lambda: la.sample(6, seed=1000 + i),
        "lml": lambda: np.float64(la.log_marginal_likelihood()),
        "lml_prior": lambda: np.float64(la.log_marginal_likelihood(prior_precision=prior)),
        "lml_grad_prior": lambda: la.log_marginal_likelihood_grad(prior_precision=prior)[0],
        "logdet": lambda: np.float64(la.log_det_posterior_precision()),
    }
    if la.structure != "kron":
        calls["lml_param_prior"] = lambda: np.float64(la.log_marginal_likelihood(
            prior_precision=np.linspace(0.1, 1.0 + i, la.n_params)))
    return calls


def one_blas_thread():
    """OpenBLAS's own threads spin while 8 Python threads call in on a busy
    2-core machine (minutes instead of seconds for the dense posterior); the
    property tested here is pykfac's, so the BLAS runs single-threaded."""
    setter = getattr(pk, "set_num_threads", None)
    return setter(1) if setter is not None else contextlib.nullcontext()


@pytest.mark.parametrize("structure", STRUCTURES)
def test_shared_posterior_read_only_calls(structure):
    with one_blas_thread():
        shared_posterior_read_only_calls(structure)


def shared_posterior_read_only_calls(structure):
    p = LaplaceProblem(3, structure=structure, likelihood="classification")
    la = pk.Laplace(p.net, p.likelihood, structure, **p.kw).fit((p.X, p.y))
    serial = {(i, name): call() for i in range(N_THREADS) for name, call in shared_calls(la, p.Xt, i).items()}
    Xt_before = p.Xt.copy()

    def work(i):
        for _ in range(4):
            calls = list(shared_calls(la, p.Xt, i).items())
            random.Random(i).shuffle(calls)
            for name, call in calls:
                _check_equal(call(), serial[(i, name)], f"thread {i}: {structure} {name}")

    _run_threads(work)
    assert np.array_equal(p.Xt, Xt_before)
    # and the shared posterior itself still gives the serial answers
    for i in range(N_THREADS):
        for name, call in shared_calls(la, p.Xt, i).items():
            _check_equal(call(), serial[(i, name)], f"after: {name}")


# ---------------------------------------------------------------------------
# optimisers, each thread its own
# ---------------------------------------------------------------------------
OPTIMIZERS = [
    lambda net: pk.optim.KFAC(net, "ce", damping=1.0, inverse_every=3, damping_every=2, gamma_every=4, seed=1),
    lambda net: pk.optim.KFAC(net, "ce", damping=0.5, structure="tridiag", seed=2, kl_clip=0.05),
    lambda net: pk.optim.KFAC(net, "ce", curvature="kfra", lr=0.1, momentum=0.5, damping=0.3),
    lambda net: pk.optim.KFAC(net, "ce", curvature="exact", damping=2.0, stats_batch=16, seed=3),
    lambda net: pk.optim.KFAC(net, "ce", curvature="empirical", damping=1.0, adapt_damping=False),
    lambda net: pk.optim.SGD(net, "ce", lr=0.05, momentum=0.9),
    lambda net: pk.optim.Adam(net, "ce", lr=1e-2),
    lambda net: pk.optim.KFAC(net, "ce", damping=1.0, mc_samples=2, seed=4, weight_decay=1e-3),
]


def optimizer_job(i):
    net = pk.MLP([6, 16, 12, 4], activation="tanh", seed=i)
    opt = OPTIMIZERS[i % len(OPTIMIZERS)](net)
    X, y = _data("classification", 4, 96, 6, 300 + i)
    hist = pk.train(net, opt, (X, y), epochs=3, batch_size=32, seed=i, progress=False)
    return [hist["loss"], net.theta.copy(), np.float64(getattr(opt, "damping", 0.0))]


def test_concurrent_optimizers_match_serial():
    serial = [optimizer_job(i) for i in range(N_THREADS)]

    def work(i):
        for _ in range(2):
            _check_equal(optimizer_job(i), serial[i], f"thread {i}: optimiser {i % len(OPTIMIZERS)}")

    _run_threads(work)


# ---------------------------------------------------------------------------
# the GIL is released during Laplace.fit
# ---------------------------------------------------------------------------
MIN_FIT = 0.4  # seconds: dwarfs the 5 ms GIL switch interval


def _fit_problem(N):
    net = pk.MLP([64, 256, 256, 10], activation="tanh", seed=0)
    X, y = _data("classification", 10, N, 64, 7)
    return net, X, y


def _fit(problem):
    net, X, y = problem
    return pk.Laplace(net, "classification", "diag").fit((X, y))


def _calibrated_fit():
    """(problem, seconds) with a diag fit -- one GGN-diagonal kernel over the
    whole batch and little else -- of at least MIN_FIT seconds."""
    N = 512
    while True:
        problem = _fit_problem(N)
        t0 = time.perf_counter()
        _fit(problem)
        elapsed = time.perf_counter() - t0
        if elapsed >= MIN_FIT or N >= 1 << 15:
            return problem, elapsed
        N = int(N * min(8.0, max(2.0, 1.5 * MIN_FIT / max(elapsed, 1e-3))))


def test_gil_released_during_laplace_fit():
    """A kernel holding the GIL would stop the ticker for as long as it runs:
    the diagonal-GGN kernel is nearly all of this fit, so the longest pause
    between two ticks would be most of the fit's own time. Released, the
    pauses are scheduling noise (milliseconds). (Checked by wrapping the kernel
    in a list.sort that holds the GIL for as long: the pause then shows.) One
    BLAS thread, so OpenBLAS's spinning threads do not starve the ticker of a
    core on a busy 2-core machine."""
    with one_blas_thread():
        gil_released_during_fit()


def gil_released_during_fit():
    problem, alone = _calibrated_fit()
    results = []
    for _ in range(3):  # a loaded machine may starve the ticker once; not 3 times
        stamps, stop, started = [], threading.Event(), threading.Event()
        t = threading.Thread(target=_ticker, args=(stamps, stop, started), name="pykfac-ticker")
        t.start()
        started.wait()
        time.sleep(0.02)
        t0 = time.perf_counter()
        _fit(problem)
        t1 = time.perf_counter()
        stop.set()
        t.join()
        lo, hi = t0 + 0.03, t1 - 0.03
        pauses = np.diff([lo] + [s for s in stamps if lo < s < hi] + [hi])
        results.append((round(t1 - t0, 3), round(float(pauses.max()), 3)))
        if pauses.max() < 0.3 * alone:
            return
    pytest.fail(f"the Python ticker paused during Laplace.fit as if a kernel held the GIL "
                f"(fit alone {alone:.3f} s; per attempt: fit seconds, longest pause): {results}")


def test_two_threads_fitting_at_once():
    """Two threads inside Laplace.fit overlap in time, and a third,
    pure-Python thread keeps ticking while both run; both fits are exact."""
    with one_blas_thread():
        two_threads_fitting_at_once()


def two_threads_fitting_at_once():
    problem, _ = _calibrated_fit()
    fitted = {}

    def fit(i):
        fitted[i] = _fit(problem)

    _two_calls_while_ticking(fit)
    # the concurrent fits equal a serial one
    ref = _fit(problem)
    X = problem[1][:20]
    want = [ref.log_marginal_likelihood(), ref.sample(3, seed=0), ref.predictive(X)]
    for i, la in fitted.items():
        _check_equal([la.log_marginal_likelihood(), la.sample(3, seed=0), la.predictive(X)], want, f"fit {i}")
