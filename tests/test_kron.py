"""Tests of the Kronecker-factored block algebra (csrc/kron.c, pykfac/kron.py).

References are dense float64 NumPy computations built here independently:
the theta-order permutation of np.kron(G, A) is written out by hand.
"""
import sys
import threading

import numpy as np
import pytest
from scipy.sparse.linalg import LinearOperator, cg, eigsh

from pykfac import _core
from pykfac.kron import KronCurvature

LinAlgError = _core.LinAlgError
SIZES = (4, 3, 5, 2)


def spd(rng, n, rank=None, scale=1.0):
    X = rng.standard_normal((n, n + 2 if rank is None else rank))
    return scale * (X @ X.T) / X.shape[1]


def factors(seed=0, sizes=SIZES, dtype=np.float64):
    rng = np.random.default_rng(seed)
    A = [spd(rng, s + 1, scale=2.0).astype(dtype) for s in sizes[:-1]]
    G = [spd(rng, s, scale=0.3).astype(dtype) for s in sizes[1:]]
    return A, G


def theta_perm(out, inp):
    """perm[t] = Wbar (row-major) index of theta index t: W entries, then b."""
    q = inp + 1
    return [i * q + k for i in range(out) for k in range(inp)] + [i * q + inp for i in range(out)]


def dense_ref(A, G, sizes, shift_g=None, shift_a=None):
    """Block-diagonal reference, optionally with per-layer factor shifts."""
    blocks = []
    for l, (a, g) in enumerate(zip(A, G)):
        a = np.asarray(a, np.float64)
        g = np.asarray(g, np.float64)
        if shift_g is not None:
            g = g + shift_g[l] * np.eye(len(g))
            a = a + shift_a[l] * np.eye(len(a))
        perm = theta_perm(sizes[l + 1], sizes[l])
        blocks.append(np.kron(g, a)[np.ix_(perm, perm)])
    D = sum(len(b) for b in blocks)
    out = np.zeros((D, D))
    o = 0
    for b in blocks:
        out[o:o + len(b), o:o + len(b)] = b
        o += len(b)
    return out


def ref_pi(a, g):
    return np.sqrt((np.trace(a) / len(a)) / (np.trace(g) / len(g)))


@pytest.fixture
def kc():
    A, G = factors()
    return KronCurvature(A=A, G=G, sizes=SIZES, num_data=10, kind="exact")


@pytest.fixture
def dense(kc):
    return dense_ref(kc.A, kc.G, SIZES)


def test_attributes(kc):
    D = sum(SIZES[l + 1] * (SIZES[l] + 1) for l in range(len(SIZES) - 1))
    assert kc.num_params == D and kc.shape == (D, D)
    assert kc.sizes == SIZES and kc.num_data == 10 and kc.kind == "exact"
    assert kc.dtype == np.float64 and len(kc.A) == len(kc.G) == 3
    assert "KronCurvature" in repr(kc)


def test_to_dense_theta_order(kc, dense):
    B = kc.to_dense()
    assert B.shape == kc.shape and B.dtype == np.float64
    np.testing.assert_allclose(B, dense, rtol=1e-14, atol=1e-14)


def test_to_dense_single_layer_by_index():
    # entry-by-entry: theta row (W[i, k] or b[i]) x column (W[i2, k2] or b[i2]) = G[i, i2] A[k, k2]
    rng = np.random.default_rng(1)
    out, inp = 3, 2
    A, G = spd(rng, inp + 1), spd(rng, out)
    B = KronCurvature([A], [G], (inp, out)).to_dense()
    idx = [(i, k) for i in range(out) for k in range(inp)] + [(i, inp) for i in range(out)]
    for t, (i, k) in enumerate(idx):
        for u, (i2, k2) in enumerate(idx):
            assert B[t, u] == pytest.approx(G[i, i2] * A[k, k2], rel=1e-14)


def test_matvec(kc, dense):
    rng = np.random.default_rng(2)
    V = rng.standard_normal((kc.num_params, 5))
    np.testing.assert_allclose(kc.matvec(V), dense @ V, rtol=1e-12, atol=1e-12)
    v = V[:, 0]
    r = kc.matvec(v)
    assert r.shape == v.shape
    np.testing.assert_allclose(r, dense @ v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(kc @ v, r)


@pytest.mark.parametrize("m", [1, 3])
def test_solve_exact(kc, dense, m):
    rng = np.random.default_rng(3)
    V = rng.standard_normal((kc.num_params, m))
    d = 0.05
    ref = np.linalg.solve(dense + d * np.eye(len(dense)), V)
    np.testing.assert_allclose(kc.solve(V, d), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(kc.solve(V[:, 0], damping=d), ref[:, 0], rtol=1e-10, atol=1e-12)


def test_solve_per_layer_damping(kc):
    d = [0.1, 0.2, 0.3]
    V = np.random.default_rng(4).standard_normal(kc.num_params)
    shift = np.repeat(d, [SIZES[l + 1] * (SIZES[l] + 1) for l in range(3)])
    ref = np.linalg.solve(dense_ref(kc.A, kc.G, SIZES) + np.diag(shift), V)
    np.testing.assert_allclose(kc.solve(V, d), ref, rtol=1e-10)


def test_solve_factored(kc):
    d = 0.04
    gam = np.sqrt(d)
    pis = [ref_pi(a, g) for a, g in zip(kc.A, kc.G)]
    np.testing.assert_allclose(kc.factored_pi(), pis, rtol=1e-13)
    ref_mat = dense_ref(kc.A, kc.G, SIZES, [gam / p for p in pis], [gam * p for p in pis])
    V = np.random.default_rng(5).standard_normal((kc.num_params, 2))
    np.testing.assert_allclose(kc.solve(V, d, factored=True), np.linalg.solve(ref_mat, V), rtol=1e-10)
    _, ld = np.linalg.slogdet(ref_mat)
    assert kc.logdet(d, factored=True) == pytest.approx(ld, rel=1e-12)
    op = kc.as_linear_operator(damping=d, factored=True)
    np.testing.assert_allclose(op @ V, ref_mat @ V, rtol=1e-11)


@pytest.mark.parametrize("d", [0.0, 1e-3, 0.5])
def test_logdet_exact(kc, dense, d):
    sign, ld = np.linalg.slogdet(dense + d * np.eye(len(dense)))
    assert sign > 0
    assert kc.logdet(d) == pytest.approx(ld, rel=1e-11)


def test_powers(kc, dense):
    d = 0.1
    V = np.random.default_rng(6).standard_normal((kc.num_params, 3))
    half = kc.apply_power(kc.apply_power(V, -0.5, damping=d), -0.5, damping=d)
    np.testing.assert_allclose(half, kc.solve(V, d), rtol=1e-10)
    Kd = dense + d * np.eye(len(dense))
    sq = kc.apply_power(kc.apply_power(V, 0.5, damping=d), 0.5, damping=d)
    np.testing.assert_allclose(sq, Kd @ V, rtol=1e-10)
    np.testing.assert_allclose(kc.apply_power(V, 1, damping=d), Kd @ V, rtol=1e-10)
    # the inverse square root is symmetric: S S^T = Kd^{-1} for S = Kd^{-1/2}
    S = kc.apply_power(np.eye(kc.num_params), -0.5, damping=d)
    np.testing.assert_allclose(S, S.T, atol=1e-12)
    np.testing.assert_allclose(S @ S.T, np.linalg.inv(Kd), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="power"):
        kc.apply_power(V, 2, damping=d)


def test_trace_frobenius_eigvals(kc, dense):
    assert kc.trace() == pytest.approx(np.trace(dense), rel=1e-13)
    assert kc.frobenius_norm() == pytest.approx(np.linalg.norm(dense), rel=1e-13)
    np.testing.assert_allclose(kc.eigvals(), np.linalg.eigvalsh(dense), rtol=1e-10, atol=1e-12)


def test_eigh_cached_and_correct(kc):
    e1 = kc.eigh()
    e2 = kc.eigh()
    assert all(a is b for t1, t2 in zip(e1, e2) for a, b in zip(t1, t2))
    for (wG, QG, wA, QA), a, g in zip(e1, kc.A, kc.G):
        np.testing.assert_allclose(QG @ np.diag(wG) @ QG.T, g, atol=1e-13)
        np.testing.assert_allclose(QA @ np.diag(wA) @ QA.T, a, atol=1e-13)
        assert not wG.flags.writeable and not QA.flags.writeable


def _cg_tol(tol):
    """SciPy >= 1.12 calls cg's relative tolerance rtol, older versions tol."""
    import inspect

    from scipy.sparse.linalg import cg

    return {"rtol" if "rtol" in inspect.signature(cg).parameters else "tol": tol}


def test_linear_operator(kc, dense):
    op = kc.as_linear_operator()
    assert isinstance(op, LinearOperator) and op.shape == kc.shape and op.dtype == np.float64
    top = eigsh(op, k=3, which="LA", return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(top), np.linalg.eigvalsh(dense)[-3:], rtol=1e-8)
    b = np.random.default_rng(7).standard_normal(kc.num_params)
    d = 0.2
    opd = kc.as_linear_operator(damping=d)
    np.testing.assert_allclose(opd @ b, dense @ b + d * b, rtol=1e-12)
    np.testing.assert_allclose(opd.T @ b, opd @ b)
    x, info = cg(opd, b, maxiter=2000, **_cg_tol(1e-12))
    assert info == 0
    np.testing.assert_allclose(x, np.linalg.solve(dense + d * np.eye(len(dense)), b), rtol=1e-6)
    inv = kc.as_linear_operator(damping=d, inverse=True)
    np.testing.assert_allclose(inv @ b, kc.solve(b, d))
    # exact preconditioner: cg converges in one or two steps
    x, info = cg(opd, b, M=inv, maxiter=3, **_cg_tol(1e-10))
    assert info == 0


def test_float32_matches_float64():
    A64, G64 = factors(seed=8)
    A32 = [a.astype(np.float32) for a in A64]
    G32 = [g.astype(np.float32) for g in G64]
    k64 = KronCurvature(A64, G64, SIZES)
    k32 = KronCurvature(A32, G32, SIZES)
    assert k32.dtype == np.float32
    V = np.random.default_rng(9).standard_normal((k64.num_params, 2))
    for f in (lambda k: k.matvec(V), lambda k: k.solve(V, 0.1), lambda k: k.to_dense(),
              lambda k: k.solve(V, 0.1, factored=True), lambda k: k.apply_power(V, -0.5, 0.1)):
        r32, r64 = f(k32), f(k64)
        assert r32.dtype == np.float32
        assert np.abs(r32 - r64).max() <= 1e-4 * np.abs(r64).max()
    assert k32.logdet(0.1) == pytest.approx(k64.logdet(0.1), rel=1e-4, abs=1e-3)
    np.testing.assert_allclose(k32.eigvals(), k64.eigvals(), rtol=1e-3, atol=1e-5)


def test_mixed_dtype_follows_first_factor():
    A, G = factors(seed=10)
    k = KronCurvature([a.astype(np.float32) for a in A], G, SIZES)
    assert k.dtype == np.float32 and all(g.dtype == np.float32 for g in k.G)
    with pytest.raises(TypeError, match=r"A\[0\]"):
        KronCurvature([a.astype(np.int64) for a in A], G, SIZES)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_singular_factor_needs_damping(dtype):
    rng = np.random.default_rng(11)
    A, G = factors(seed=11, dtype=dtype)
    G[1] = spd(rng, SIZES[2], rank=2).astype(dtype)  # rank 2 < 5: singular
    k = KronCurvature(A, G, SIZES)
    V = np.ones(k.num_params)
    for call in (lambda: k.solve(V, 0.0), lambda: k.logdet(0.0), lambda: k.solve(V, 0.0, factored=True),
                 lambda: k.apply_power(V, -0.5, damping=0.0),
                 lambda: k.as_linear_operator(damping=0.0, inverse=True)):
        with pytest.raises(LinAlgError, match="damping") as exc:
            call()
        assert "layer 1" in str(exc.value)
    # the PSD square root exists, and damping fixes everything
    assert np.all(np.isfinite(k.apply_power(V, 0.5, damping=0.0)))
    x = k.solve(V, 1e-2)
    assert np.all(np.isfinite(x))
    ref = dense_ref(k.A, k.G, SIZES) + 1e-2 * np.eye(k.num_params)
    np.testing.assert_allclose(ref @ x, V, rtol=1e-3 if dtype == np.float32 else 1e-9,
                               atol=1e-3 if dtype == np.float32 else 1e-9)
    assert np.isfinite(k.logdet(1e-2))


def test_negative_or_bad_damping(kc):
    V = np.zeros(kc.num_params)
    for bad in (-1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="damping"):
            kc.solve(V, bad)
        with pytest.raises(ValueError, match="damping"):
            kc.logdet(bad)
    with pytest.raises(ValueError, match="damping: expected a number or 3 values"):
        kc.solve(V, [0.1, 0.2])
    with pytest.raises(TypeError, match="damping"):
        kc.solve(V, "a lot")
    for bad in ("1", True, np.bool_(True), [0.1, "0.2", 0.3]):  # float() would accept these
        with pytest.raises(TypeError, match="damping: expected a real number"):
            kc.solve(V, bad)


def test_nan_factor_raises():
    A, G = factors()
    A[0] = A[0].copy()
    A[0][1, 1] = np.nan
    with pytest.raises(ValueError, match=r"A\[0\]: contains NaN or Inf"):
        KronCurvature(A, G, SIZES)
    with pytest.raises(ValueError, match="M: contains NaN"):
        _core.sym_eigh(np.full((3, 3), np.nan))


def test_shape_errors(kc):
    A, G = factors()
    with pytest.raises(ValueError, match=r"A\[1\]: expected shape \(4, 4\), got \(3, 3\)"):
        KronCurvature([A[0], A[1][:3, :3], A[2]], G, SIZES)
    with pytest.raises(ValueError, match=r"G\[2\]: expected shape \(2, 2\)"):
        KronCurvature(A, [G[0], G[1], G[1]], SIZES)
    with pytest.raises(ValueError, match="G: expected 3 factors"):
        KronCurvature(A, G[:2], SIZES)
    with pytest.raises(ValueError, match="sizes"):
        KronCurvature(A, G, (4,))
    asym = A[0].copy()
    asym[0, 1] += 1.0
    with pytest.raises(ValueError, match=r"A\[0\]: expected a symmetric matrix"):
        KronCurvature([asym, A[1], A[2]], G, SIZES)
    D = kc.num_params
    msg = rf"V: expected shape \(D,\) or \(D, m\) with D = {D}, got \(5,\)"
    for call in (kc.matvec, lambda v: kc.solve(v, 1.0), lambda v: kc.apply_power(v, 0.5)):
        with pytest.raises(ValueError, match=msg):
            call(np.ones(5))
    with pytest.raises(ValueError, match="V: expected shape"):
        kc.matvec(np.ones((D, 2, 1)))


def test_not_psd_factor_rejected():
    A, G = factors()
    G[0] = -G[0]
    k = KronCurvature(A, G, SIZES)
    with pytest.raises(ValueError, match=r"G\[0\]: expected a positive semi-definite"):
        k.solve(np.ones(k.num_params), 1.0)


def test_inputs_unchanged_and_private_copies():
    A, G = factors(seed=12)
    A0 = [a.copy() for a in A]
    G0 = [g.copy() for g in G]
    k = KronCurvature(A, G, SIZES)
    V = np.random.default_rng(13).standard_normal((k.num_params, 2))
    V0 = V.copy()
    k.matvec(V), k.solve(V, 0.1), k.solve(V, 0.1, factored=True), k.logdet(0.1), k.to_dense()
    k.apply_power(V, -0.5, 0.1)
    assert all(np.array_equal(a, b) for a, b in zip(A, A0))
    assert all(np.array_equal(a, b) for a, b in zip(G, G0))
    assert np.array_equal(V, V0)
    A[0][0, 0] += 100.0  # the object holds its own copy
    assert np.array_equal(k.A[0], A0[0])
    assert not k.A[0].flags.writeable


def test_layouts_and_dtypes_of_V(kc, dense):
    rng = np.random.default_rng(14)
    V = rng.standard_normal((kc.num_params, 4))
    ref = dense @ V
    F = np.asfortranarray(V)
    strided = np.repeat(V, 2, axis=1)[:, ::2]
    ro = V.copy()
    ro.flags.writeable = False
    for W in (F, strided, ro, V.astype(np.float32), list(map(list, V))):
        np.testing.assert_allclose(kc.matvec(W), ref, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(kc.matvec(np.arange(kc.num_params)), dense @ np.arange(kc.num_params), rtol=1e-12)


def test_scaled(kc, dense):
    kc.eigh()
    k2 = kc.scaled(0.25)
    V = np.random.default_rng(15).standard_normal(kc.num_params)
    np.testing.assert_allclose(k2.solve(V, 0.3), np.linalg.solve(0.25 * dense + 0.3 * np.eye(len(dense)), V),
                               rtol=1e-10)
    np.testing.assert_allclose(k2.to_dense(), 0.25 * dense, rtol=1e-14)
    with pytest.raises(ValueError, match="c: expected"):
        kc.scaled(-1.0)


# ---- wrapper (pykfac._core) -------------------------------------------------

def test_core_sym_eigh():
    rng = np.random.default_rng(16)
    M = spd(rng, 6, rank=3)
    M0 = M.copy()
    w, Q = _core.sym_eigh(M)
    assert np.array_equal(M, M0)
    np.testing.assert_allclose(w, np.linalg.eigvalsh(M), atol=1e-13)
    np.testing.assert_allclose(Q.T @ Q, np.eye(6), atol=1e-13)
    np.testing.assert_allclose((Q * w) @ Q.T, M, atol=1e-13)
    w32, Q32 = _core.sym_eigh(M.astype(np.float32))
    assert w32.dtype == Q32.dtype == np.float32
    w0, Q0 = _core.sym_eigh(np.zeros((0, 0)))
    assert w0.shape == (0,) and Q0.shape == (0, 0)
    with pytest.raises(ValueError, match=r"M: expected a square matrix, got shape \(2, 3\)"):
        _core.sym_eigh(np.ones((2, 3)))
    with pytest.raises(TypeError, match="M: expected a float32 or float64 array"):
        _core.sym_eigh(np.eye(3, dtype=np.int64))
    with pytest.raises(TypeError, match="M: expected a float32 or float64 array"):
        _core.sym_eigh(np.eye(3, dtype=complex))


def test_core_argument_errors():
    rng = np.random.default_rng(17)
    G, A = spd(rng, 3), spd(rng, 4)
    V = np.ones(12)
    with pytest.raises(ValueError, match=r"V: expected shape \(p,\) or \(p, m\) with p = 12, got \(11,\)"):
        _core.kron_matvec(G, A, np.ones(11))
    with pytest.raises(ValueError, match="A: expected a square matrix"):
        _core.kron_matvec(G, np.ones((4, 3)), V)
    with pytest.raises(TypeError, match="G: expected a float32 or float64"):
        _core.kron_matvec(np.eye(3, dtype=np.int32), A, V)
    with pytest.raises(TypeError, match="G: expected an array, got None"):
        _core.kron_matvec(None, A, V)
    wG, QG = _core.sym_eigh(G)
    wA, QA = _core.sym_eigh(A)
    with pytest.raises(ValueError, match=r"QA: expected shape \(4, 4\)"):
        _core.kron_eig_apply(wG, QG, wA, QG, V)
    with pytest.raises(ValueError, match="power: expected 1, -1, 0.5 or -0.5, got 3"):
        _core.kron_eig_apply(wG, QG, wA, QA, V, power=3.0)
    with pytest.raises(ValueError, match="pi: expected a finite number > 0"):
        _core.kron_eig_apply(wG, QG, wA, QA, V, damping=1.0, factored=True, pi=0.0)
    with pytest.raises(ValueError, match="damping"):
        _core.kron_logdet(wG, wA, damping=-1.0, factored=True)
    with pytest.raises(ValueError, match="V: contains NaN"):
        _core.kron_eig_apply(wG, QG, wA, QA, np.full(12, np.nan), damping=1.0)
    with pytest.raises(ValueError, match="out: expected a writeable"):
        _core.kron_to_dense(G, A, out=np.zeros((12, 12), np.float32))
    with pytest.raises(ValueError, match="out: expected a writeable"):
        _core.kron_to_dense(G, A, out=np.zeros((24, 24))[::2, ::2])


def test_core_to_dense_into_block_view():
    rng = np.random.default_rng(18)
    G, A = spd(rng, 2), spd(rng, 3)
    big = np.full((9, 9), -1.0)
    res = _core.kron_to_dense(G, A, out=big[2:8, 3:9])
    assert res.base is big or res.base is big.base or np.shares_memory(res, big)
    perm = theta_perm(2, 2)
    np.testing.assert_allclose(big[2:8, 3:9], np.kron(G, A)[np.ix_(perm, perm)], rtol=1e-15)
    mask = np.ones_like(big, bool)
    mask[2:8, 3:9] = False
    assert np.all(big[mask] == -1.0)


def test_core_bias_only_layer():
    # in = 0: A is the 1 x 1 bias factor, the block is G * A[0, 0]
    G = spd(np.random.default_rng(19), 3)
    A = np.array([[2.0]])
    V = np.arange(3.0)
    np.testing.assert_allclose(_core.kron_matvec(G, A, V), 2.0 * G @ V)
    np.testing.assert_allclose(_core.kron_to_dense(G, A), 2.0 * G)


def test_core_refcounts_stable():
    rng = np.random.default_rng(20)
    G, A = spd(rng, 3), spd(rng, 4)
    wG, QG = _core.sym_eigh(G)
    wA, QA = _core.sym_eigh(A)
    V = np.ones((12, 2))
    args = (G, A, V, wG, QG, wA, QA)
    before = [sys.getrefcount(x) for x in args]
    for _ in range(50):
        _core.kron_matvec(G, A, V)
        _core.kron_eig_apply(wG, QG, wA, QA, V, damping=0.1)
        _core.kron_logdet(wG, wA, damping=0.1)
        _core.kron_to_dense(G, A)
        with pytest.raises(ValueError):
            _core.kron_matvec(G, A, np.ones(5))
    assert [sys.getrefcount(x) for x in args] == before


def test_threads_agree(kc):
    V = np.random.default_rng(21).standard_normal((kc.num_params, 3))
    ref = kc.solve(V, 0.1)
    results = [None] * 4

    def work(i):
        results[i] = [kc.solve(V, 0.1) for _ in range(20)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for rs in results:
        for r in rs:
            np.testing.assert_array_equal(r, ref)
