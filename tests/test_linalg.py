"""Tests of pk.linalg (csrc/linalg.c, pykfac/linalg.py) against dense NumPy algebra.

Every reference is built here from np.linalg / np.kron / np.einsum in float64;
sampling is checked on the mean AND the covariance with per-entry standard
errors (Var of a sample covariance entry ~ (C_ij^2 + C_ii C_jj) / n).
"""
import threading

import numpy as np
import pytest

import pykfac as pk
from pykfac import linalg as la


def rng_(seed=0):
    return np.random.default_rng(seed)


def spd(rng, n, scale=1.0):
    X = rng.standard_normal((n, n + 3))
    return scale * X @ X.T / X.shape[1] + 0.1 * np.eye(n)


def assert_cov(samples, mean, cov, z=5.0):
    """Sample mean and covariance within z standard errors, entry by entry."""
    n = samples.shape[0]
    m_hat = samples.mean(0)
    se_m = np.sqrt(np.diag(cov) / n)
    assert np.max(np.abs(m_hat - mean) / se_m) < z
    C_hat = np.cov(samples.T)
    se_c = np.sqrt((cov ** 2 + np.outer(np.diag(cov), np.diag(cov))) / n)
    assert np.max(np.abs(C_hat - cov) / se_c) < z


# ---------------------------------------------------------------------------
# GGN from Jacobians
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("with_lam", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ggn_from_jacobians(with_lam, dtype):
    r = rng_(1)
    N, K, D = 7, 3, 11
    J = r.standard_normal((N, K, D))
    Lam = r.standard_normal((N, K, K)) if with_lam else None  # indefinite is allowed
    if with_lam:
        Lam = Lam + Lam.transpose(0, 2, 1)
    ref = np.einsum("nkd,nkl,nle->de", J, Lam, J) if with_lam else np.einsum("nkd,nke->de", J, J)
    G = la.ggn_from_jacobians(J.astype(dtype), None if Lam is None else Lam.astype(dtype))
    assert G.dtype == dtype and G.shape == (D, D)
    assert np.array_equal(G, G.T)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(G, ref, rtol=tol, atol=tol * np.abs(ref).max())


def test_ggn_from_jacobians_matches_pk_ggn(make_problem):
    for loss in ("mse", "ce", "bce"):
        net, X, y, _ = make_problem(loss, N=5)
        J = pk.jacobian(net, X)
        oc = pk.output_curvature(net, X, loss)
        G = la.ggn_from_jacobians(J, oc.hessian)
        np.testing.assert_allclose(G, pk.ggn(net, X, y, loss), atol=1e-12)
        U = la.ggn_factor(J, S=oc.sqrt)
        np.testing.assert_allclose(U @ U.T, G, atol=1e-12)
        U2 = la.ggn_factor(J, Lam=oc.hessian)
        np.testing.assert_allclose(U2 @ U2.T, G, atol=1e-12)


def test_ggn_from_jacobians_chunked():
    """More rows than one scratch chunk (4M elements) still sums every sample."""
    r = rng_(2)
    N, K, D = 300, 2, 8000
    J = r.standard_normal((N, K, D)).astype(np.float32)
    Lam = np.broadcast_to(np.eye(K, dtype=np.float32) * 2, (N, K, K))
    G = la.ggn_from_jacobians(J, Lam)
    J64 = J.astype(np.float64).reshape(N * K, D)
    idx = r.integers(0, D, size=20)
    ref = 2 * J64[:, idx].T @ J64[:, idx]
    np.testing.assert_allclose(G[np.ix_(idx, idx)], ref, rtol=1e-4, atol=1e-2)


def test_psd_sqrt():
    r = rng_(3)
    B = r.standard_normal((6, 4, 2))
    Lam = B @ B.transpose(0, 2, 1)  # rank 2: exact zeros tolerated
    S = la.psd_sqrt(Lam)
    np.testing.assert_allclose(S @ S.transpose(0, 2, 1), Lam, atol=1e-12)
    np.testing.assert_allclose(S, S.transpose(0, 2, 1), atol=1e-12)
    with pytest.raises(pk.LinAlgError):
        la.psd_sqrt(-np.eye(3)[None])


# ---------------------------------------------------------------------------
# Woodbury
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("D,M", [(9, 4), (5, 12), (6, 0), (1, 3)])
@pytest.mark.parametrize("diag", [False, True])
def test_woodbury_against_dense(D, M, diag):
    r = rng_(D * 100 + M)
    U = r.standard_normal((D, M))
    alpha = r.uniform(0.3, 2.0, size=D) if diag else 0.7
    P = np.diag(np.broadcast_to(alpha, (D,))) + U @ U.T
    Pinv = np.linalg.inv(P)
    V = r.standard_normal((D, 3))
    np.testing.assert_allclose(la.woodbury_solve(alpha, U, V), Pinv @ V, atol=1e-12)
    np.testing.assert_allclose(la.woodbury_solve(alpha, U, V[:, 0]), Pinv @ V[:, 0], atol=1e-12)
    Wi = la.woodbury_inverse(alpha, U)
    np.testing.assert_allclose(Wi, Pinv, atol=1e-12)
    assert np.array_equal(Wi, Wi.T)
    np.testing.assert_allclose(la.woodbury_diag_inverse(alpha, U), np.diag(Pinv), atol=1e-12)
    assert la.woodbury_logdet(alpha, U) == pytest.approx(np.linalg.slogdet(P)[1], abs=1e-10)


def test_woodbury_scalar_formula_of_conventions():
    """P^-1 = (1/a)[I - G (aI + G^T G)^-1 G^T] and log|P| = (D-M) log a + log|aI + G^T G|."""
    r = rng_(4)
    D, M, a = 10, 3, 0.25
    G = r.standard_normal((D, M))
    C = a * np.eye(M) + G.T @ G
    ref = (np.eye(D) - G @ np.linalg.solve(C, G.T)) / a
    np.testing.assert_allclose(la.woodbury_inverse(a, G), ref, atol=1e-12)
    ld = (D - M) * np.log(a) + np.linalg.slogdet(C)[1]
    assert la.woodbury_logdet(a, G) == pytest.approx(ld, abs=1e-12)


def test_woodbury_float32():
    r = rng_(5)
    U = r.standard_normal((20, 4)).astype(np.float32)
    V = r.standard_normal((20, 2)).astype(np.float32)
    R = la.woodbury_solve(1.5, U, V)
    assert R.dtype == np.float32
    P = 1.5 * np.eye(20) + U.astype(np.float64) @ U.T.astype(np.float64)
    np.testing.assert_allclose(R, np.linalg.solve(P, V), rtol=1e-4, atol=1e-5)
    assert la.woodbury_inverse(1.5, U).dtype == np.float32


def test_woodbury_sample_mean_and_covariance():
    r = rng_(6)
    D, M = 5, 3
    U = r.standard_normal((D, M))
    alpha = r.uniform(0.5, 1.5, size=D)
    S = la.woodbury_sample(alpha, U, 20000, seed=11)
    assert S.shape == (20000, D)
    assert_cov(S, np.zeros(D), np.linalg.inv(np.diag(alpha) + U @ U.T))
    assert np.array_equal(S, la.woodbury_sample(alpha, U, 20000, seed=11))
    assert not np.array_equal(S[:5], la.woodbury_sample(alpha, U, 5, seed=12))


def test_woodbury_errors():
    U = np.ones((4, 2))
    for bad in (0.0, -1.0, np.nan, np.inf, [1.0, 2.0]):
        with pytest.raises(ValueError, match="alpha"):
            la.woodbury_logdet(bad, U)
    with pytest.raises(ValueError, match="alpha"):
        la.woodbury_solve(np.array([1, 1, -1, 1.0]), U, np.ones(4))
    with pytest.raises(ValueError, match="Gmat"):
        la.woodbury_logdet(1.0, np.ones(4))
    Un = U.copy()
    Un[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        la.woodbury_inverse(1.0, Un)
    with pytest.raises(ValueError, match="V"):
        la.woodbury_solve(1.0, U, np.ones(5))
    # capacitance not PD: only through overflow/roundoff; huge values overflow to inf
    with pytest.raises((pk.LinAlgError, ValueError)):
        la.woodbury_logdet(1e-300, np.full((3, 2), 1e200))


def test_woodbury_inputs_unchanged():
    r = rng_(7)
    U = r.standard_normal((6, 2))
    V = r.standard_normal((6, 2))
    a = np.full(6, 0.5)
    copies = [U.copy(), V.copy(), a.copy()]
    la.woodbury_solve(a, U, V)
    la.woodbury_sample(a, U, 3, seed=0)
    for x, c in zip((U, V, a), copies):
        assert np.array_equal(x, c)


# ---------------------------------------------------------------------------
# low-rank eigendecomposition
# ---------------------------------------------------------------------------
def test_lowrank_eigh():
    r = rng_(8)
    D, M = 30, 6
    U = r.standard_normal((D, M))
    s, Q = la.lowrank_eigh(U)
    assert s.shape == (M,) and Q.shape == (D, M)
    assert np.all(np.diff(s) <= 0)
    np.testing.assert_allclose(Q.T @ Q, np.eye(M), atol=1e-12)
    np.testing.assert_allclose(Q * s @ Q.T, U @ U.T, atol=1e-12)
    ref = np.sort(np.linalg.eigvalsh(U @ U.T))[::-1][:M]
    np.testing.assert_allclose(s, ref, rtol=1e-12)
    s2, Q2 = la.lowrank_eigh(U, rank=2)
    np.testing.assert_allclose(s2, s[:2])
    np.testing.assert_allclose(np.abs(Q2.T @ Q[:, :2]), np.eye(2), atol=1e-10)
    # rank-deficient: duplicated columns leave a zero eigenvalue, which is dropped
    s3, Q3 = la.lowrank_eigh(np.hstack([U[:, :3], U[:, :3]]))
    assert s3.shape == (3,)
    np.testing.assert_allclose(Q3 * s3 @ Q3.T, 2 * U[:, :3] @ U[:, :3].T, atol=1e-12)


def test_lowrank_apply_spectral_functions():
    r = rng_(9)
    D = 12
    U = r.standard_normal((D, 4))
    s, Q = la.lowrank_eigh(U)
    delta = 0.3
    P = delta * np.eye(D) + U @ U.T
    V = r.standard_normal((D, 2))
    from pykfac import _core
    inv = _core.lowrank_apply(Q, 1 / delta, 1 / (s + delta) - 1 / delta, V)
    np.testing.assert_allclose(inv, np.linalg.solve(P, V), atol=1e-12)
    w, E = np.linalg.eigh(P)
    isq = _core.lowrank_apply(Q, delta ** -0.5, (s + delta) ** -0.5 - delta ** -0.5, V)
    np.testing.assert_allclose(isq, E @ np.diag(w ** -0.5) @ E.T @ V, atol=1e-12)


# ---------------------------------------------------------------------------
# dense precision
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dense_precision(dtype):
    r = rng_(10)
    D = 6
    P = spd(r, D)
    dp = la.DensePrecision(P.astype(dtype))
    tol = 1e-12 if dtype == np.float64 else 1e-4
    L = dp.L.astype(np.float64)
    np.testing.assert_allclose(L, np.tril(L))
    np.testing.assert_allclose(L @ L.T, P, atol=tol)
    assert dp.logdet() == pytest.approx(np.linalg.slogdet(P)[1], abs=tol * 10)
    V = r.standard_normal((D, 3))
    np.testing.assert_allclose(dp.solve(V), np.linalg.solve(P, V), rtol=tol * 10, atol=tol * 10)
    np.testing.assert_allclose(dp.solve(V[:, 0]), np.linalg.solve(P, V[:, 0]), rtol=tol * 10,
                               atol=tol * 10)
    inv = dp.inverse()
    assert inv.dtype == dtype and np.array_equal(inv, inv.T)
    np.testing.assert_allclose(inv, np.linalg.inv(P), rtol=tol * 10, atol=tol * 10)
    if dtype == np.float64:
        S = dp.sample(20000, seed=3)
        assert_cov(S, np.zeros(D), np.linalg.inv(P))
        assert np.array_equal(S, dp.sample(20000, seed=3))


def test_chol_factor_scan_skipped_only_on_request():
    """DensePrecision's own (read-only, finite) factor skips the per-call NaN scan;
    a factor passed to the core is still scanned by default, and skipping the scan
    changes no value."""
    from pykfac import _core
    r = rng_(12)
    P = spd(r, 5)
    dp = la.DensePrecision(P)
    assert not dp.L.flags.writeable
    Z, B = r.standard_normal((4, 5)), r.standard_normal((5, 2))
    assert np.array_equal(_core.chol_sample(dp.L, Z), _core.chol_sample(dp.L, Z, check_L=False))
    assert np.array_equal(_core.chol_solve(dp.L, B), dp.solve(B))
    bad = dp.L.copy()
    bad[3, 1] = np.nan
    for call in (lambda: _core.chol_sample(bad, Z), lambda: _core.chol_solve(bad, B)):
        with pytest.raises(ValueError, match="L: contains NaN"):
            call()
    with pytest.raises(ValueError, match="L: expected a square matrix"):
        _core.chol_sample(np.ones((5, 4)), Z, check_L=False)


def test_dense_precision_not_pd_names_matrix():
    with pytest.raises(pk.LinAlgError, match="posterior precision"):
        la.DensePrecision(np.diag([1.0, -1.0]), name="posterior precision")
    with pytest.raises(ValueError, match="NaN"):
        la.DensePrecision(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="square"):
        la.DensePrecision(np.ones((2, 3)))


# ---------------------------------------------------------------------------
# Kronecker
# ---------------------------------------------------------------------------
def test_kron_eigh_and_solve():
    r = rng_(11)
    nG, nA = 3, 5
    A, G = spd(r, nA), spd(r, nG, scale=0.5)
    eig = la.kron_eigh(A, G)
    np.testing.assert_allclose(eig.QG * eig.wG @ eig.QG.T, G, atol=1e-12)
    np.testing.assert_allclose(eig.QA * eig.wA @ eig.QA.T, A, atol=1e-12)
    s, d = 0.7, 0.2
    K = s * np.kron(G, A) + d * np.eye(nG * nA)
    B = r.standard_normal((nG, nA))
    X = la.kron_solve(A, G, B, damping=d, scale=s)
    np.testing.assert_allclose(X.ravel(), np.linalg.solve(K, B.ravel()), atol=1e-12)
    # the other accepted layouts
    Bm = r.standard_normal((4, nG, nA))
    Xm = la.kron_solve(None, None, Bm, damping=d, scale=s, eig=eig)
    np.testing.assert_allclose(Xm.reshape(4, -1), np.linalg.solve(K, Bm.reshape(4, -1).T).T, atol=1e-12)
    np.testing.assert_allclose(la.kron_solve(A, G, B.ravel(), d, s), X.ravel(), atol=1e-12)
    Bc = Bm.reshape(4, -1).T
    np.testing.assert_allclose(la.kron_solve(A, G, Bc, d, s), np.linalg.solve(K, Bc), atol=1e-12)
    # G X A^T identity of the row-major order
    np.testing.assert_allclose(np.kron(G, A) @ B.ravel(), (G @ B @ A.T).ravel(), atol=1e-12)


def test_kron_solve_errors():
    A = np.diag([1.0, 0.0])
    G = np.eye(2)
    with pytest.raises(pk.LinAlgError):
        la.kron_solve(A, G, np.ones((2, 2)))
    with pytest.raises(ValueError, match="B"):
        la.kron_solve(np.eye(2), G, np.ones((3, 3)))
    with pytest.raises(TypeError):
        la.kron_solve(None, G, np.ones((2, 2)))


def test_kron_solve_matches_kron_curvature():
    """With one layer the theta-order KronCurvature and the plain order agree after permuting."""
    r = rng_(12)
    out, inp = 3, 4
    A, G = spd(r, inp + 1), spd(r, out)
    K = pk.KronCurvature([A], [G], (inp, out))
    v = r.standard_normal(out * (inp + 1))
    x_theta = K.solve(v, damping=0.3)
    perm = [i * (inp + 1) + k for i in range(out) for k in range(inp)] + [i * (inp + 1) + inp for i in range(out)]
    vb = np.empty_like(v)
    vb[perm] = v
    xb = la.kron_solve(A, G, vb.reshape(out, inp + 1), damping=0.3)
    np.testing.assert_allclose(xb.ravel()[perm], x_theta, atol=1e-12)


def test_matrix_normal_sample_mean_and_covariance():
    r = rng_(13)
    M = r.standard_normal((3, 2))
    U, V = spd(r, 3), spd(r, 2, scale=2.0)
    X = la.matrix_normal_sample(M, U, V, 20000, seed=5)
    assert X.shape == (20000, 3, 2)
    assert_cov(X.reshape(20000, -1), M.ravel(), np.kron(U, V))
    assert np.array_equal(X, la.matrix_normal_sample(M, U, V, 20000, seed=5))
    # a NON-symmetric check would miss a transposed factor: cross-covariance pins it
    Xf = la.matrix_normal_sample(M, U, V, 3, seed=1)
    assert Xf.dtype == np.float64


def test_matrix_normal_errors():
    M = np.zeros((2, 2))
    with pytest.raises(pk.LinAlgError, match="U"):
        la.matrix_normal_sample(M, -np.eye(2), np.eye(2), 2)
    with pytest.raises(pk.LinAlgError, match="V"):
        la.matrix_normal_sample(M, np.eye(2), np.diag([1.0, -1.0]), 2)
    with pytest.raises(ValueError, match="U"):
        la.matrix_normal_sample(M, np.eye(3), np.eye(2), 2)
    with pytest.raises(ValueError, match="n"):
        la.matrix_normal_sample(M, np.eye(2), np.eye(2), -1)
    assert la.matrix_normal_sample(M, np.eye(2), np.eye(2), 0).shape == (0, 2, 2)


def test_float32_matrix_normal_and_sample():
    r = rng_(14)
    U = spd(r, 3).astype(np.float32)
    X = la.matrix_normal_sample(np.zeros((3, 2), np.float32), U, np.eye(2, dtype=np.float32), 4, seed=0)
    assert X.dtype == np.float32
    assert la.woodbury_sample(1.0, np.ones((3, 1), np.float32), 2, seed=0).dtype == np.float32


def test_threads_give_serial_results():
    r = rng_(15)
    U = r.standard_normal((200, 20))
    V = r.standard_normal((200, 8))
    ref = la.woodbury_solve(0.5, U, V)
    out = [None] * 4

    def work(i):
        out[i] = la.woodbury_solve(0.5, U, V)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for o in out:
        assert np.array_equal(o, ref)


@pytest.mark.parametrize("factored", [False, True])
def test_kron_inv_quad_rank_one_rows(factored):
    r = rng_(16)
    nG, nA, N, K = 4, 5, 6, 3
    A, G = spd(r, nA), spd(r, nG, scale=0.5)
    eig = la.kron_eigh(A, G)
    Gv = r.standard_normal((N, K, nG))
    Av = r.standard_normal((N, nA))
    s, d = 0.8, 0.3
    if factored:
        P = np.kron(s * G + np.sqrt(d) * np.eye(nG), A + np.sqrt(d) * np.eye(nA))
    else:
        P = s * np.kron(G, A) + d * np.eye(nG * nA)
    J = np.einsum("nki,nj->nkij", Gv, Av).reshape(N, K, -1)  # rows vec(g a^T) = g (x) a
    ref = np.einsum("nkd,de,nle->nkl", J, np.linalg.inv(P), J)
    out = la.kron_inv_quad(eig, Gv, Av, damping=d, scale=s, factored=factored)
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(pk.LinAlgError):
        la.kron_inv_quad(la.kron_eigh(np.diag([1.0, 0, 1, 1, 1]), G), Gv, Av, damping=0.0)
    for truthy in ("no", 1, 0.5, None):  # not a bool: refused, not read as truthy
        with pytest.raises(TypeError, match="factored"):
            la.kron_inv_quad(eig, Gv, Av, damping=d, scale=s, factored=truthy)


def test_diag_inv_quad_rank_one_rows():
    r = rng_(18)
    nG, nA, N, K = 4, 5, 6, 3
    F = r.uniform(0.1, 2.0, (nG, nA))
    Gv = r.standard_normal((N, K, nG))
    Av = r.standard_normal((N, nA))
    J = np.einsum("nki,nj->nkij", Gv, Av).reshape(N, K, -1)
    ref = np.einsum("nkd,d,nld->nkl", J, F.ravel(), J)
    np.testing.assert_allclose(la.diag_inv_quad(F, Gv, Av), ref, rtol=1e-12, atol=1e-13)
    out32 = la.diag_inv_quad(F.astype(np.float32), Gv.astype(np.float32), Av.astype(np.float32))
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="Gv: expected shape"):
        la.diag_inv_quad(F, Gv[:, :, :3], Av)
    with pytest.raises(ValueError, match="Av: expected shape"):
        la.diag_inv_quad(F, Gv, Av[:, :4])
    with pytest.raises(ValueError, match="F: .*NaN"):
        la.diag_inv_quad(np.full_like(F, np.nan), Gv, Av)


@pytest.mark.parametrize("nG, nA, N", [(3, 4, 5), (60, 40, 70)])  # the second runs in 3 row chunks
def test_linear_cov_quad_is_J_S_JT_in_theta_order(nG, nA, N):
    from pykfac import _core

    r = rng_(19)
    B = r.standard_normal((nG * nA, 64))
    S = B @ B.T / 64 + np.diag(r.uniform(0.5, 1.5, nG * nA))
    Av = np.hstack([r.standard_normal((N, nA - 1)), np.ones((N, 1))])
    rows = np.unique([0, 1, 28, 29, 57, 58, N - 1]) % N  # both sides of every chunk boundary
    # theta order of a linear layer: W (nG x (nA-1)) row-major, then b
    J = np.zeros((len(rows), nG, nG * nA))
    for k in range(nG):
        J[:, k, k * (nA - 1):(k + 1) * (nA - 1)] = Av[rows, :-1]
        J[:, k, nG * (nA - 1) + k] = 1.0
    ref = J @ S @ J.transpose(0, 2, 1)
    out = _core.linear_cov_quad(S, Av, nG)
    assert out.shape == (N, nG, nG)
    np.testing.assert_allclose(out[rows], ref, rtol=1e-11, atol=1e-12)
    with pytest.raises(ValueError, match="S: expected shape"):
        _core.linear_cov_quad(S, Av[:, 1:], nG)


def test_lowrank_eigh_wide():
    """More columns than rows: U U^T is decomposed directly."""
    r = rng_(17)
    U = r.standard_normal((5, 40))
    s, Q = la.lowrank_eigh(U)
    assert s.shape == (5,) and Q.shape == (5, 5)
    np.testing.assert_allclose(Q * s @ Q.T, U @ U.T, atol=1e-10)
    np.testing.assert_allclose(Q.T @ Q, np.eye(5), atol=1e-12)


def _gmat_from_layer_factors(U, A):
    """Gmat (D, N Kp) written out from layer factors: column n Kp + j holds, per
    layer in theta order, U[l][n, j] (x) [A[l][n]; 1]."""
    N, Kp = U[0].shape[:2]
    rows = []
    for u, a in zip(U, A):
        rows.append(np.einsum("njo,ni->oinj", u, a).reshape(-1, N * Kp))  # W_l, row-major
        rows.append(u.transpose(2, 0, 1).reshape(-1, N * Kp))  # b_l
    return np.concatenate(rows)


@pytest.mark.parametrize("sizes,N,Kp,dtype", [([6, 7, 5, 3], 4, 3, np.float64), ([4, 5, 2], 9, 1, np.float64),
                                               ([6, 7, 5, 3], 4, 3, np.float32), ([2, 2], 9, 2, np.float64)])
def test_lowrank_eigh_layers_matches_the_dense_gmat(sizes, N, Kp, dtype):
    """The factored eigendecomposition (never forming Gmat; the last case has
    more columns than rows, where Gmat is formed) equals lowrank_eigh of the
    dense Gmat, keeps the largest max_rank pairs, and leaves its inputs alone."""
    from pykfac import _core

    r = rng_(31)
    U = [r.standard_normal((N, Kp, o)).astype(dtype) for o in sizes[1:]]
    A = [r.standard_normal((N, i)).astype(dtype) for i in sizes[:-1]]
    copies = [x.copy() for x in U + A]
    G = _gmat_from_layer_factors(U, A)
    D, M = G.shape
    s_ref, Q_ref = la.lowrank_eigh(G)
    s, Qbuf, Cbuf, rank = _core.lowrank_eigh_layers(U, A, M)
    assert s.dtype == dtype and Qbuf.dtype == dtype and Cbuf.dtype == dtype
    Q = Qbuf.reshape(-1)[:D * rank].reshape(D, rank)
    C = Cbuf.reshape(-1)[:M * rank].reshape(M, rank)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    assert rank == s_ref.shape[0]
    np.testing.assert_allclose(s[:rank], s_ref, rtol=tol * 10, atol=tol * s_ref[0])
    np.testing.assert_allclose(Q.T @ Q, np.eye(rank), atol=tol * 10)
    GG = (G.astype(np.float64) @ G.T.astype(np.float64))
    np.testing.assert_allclose((Q * s[:rank]) @ Q.T, GG, atol=tol * np.abs(GG).max())
    np.testing.assert_allclose(G @ C, Q, atol=tol * 100)  # the coefficients behind Q
    s2, Q2buf, C2buf, rank2 = _core.lowrank_eigh_layers(U, A, 2)
    assert rank2 == 2 and Q2buf.shape == (D, 2) and C2buf.shape == (M, 2)
    np.testing.assert_array_equal(s2[:2], s[:2])
    np.testing.assert_allclose(np.abs(Q2buf.T @ Q[:, :2]), np.eye(2), atol=tol * 10)
    np.testing.assert_allclose(G @ C2buf, Q2buf, atol=tol * 100)
    for x, c in zip(U + A, copies):
        np.testing.assert_array_equal(x, c)

    # J(x) diag(w) Q through the kernel, against the written-out Jacobians of test rows
    Nx, K = 5, 4
    Gx = [r.standard_normal((Nx, K, o)).astype(dtype) for o in sizes[1:]]
    Ax = [r.standard_normal((Nx, i)).astype(dtype) for i in sizes[:-1]]
    Axb = [np.concatenate([a, np.full((Nx, 1), 7.0, dtype)], axis=1) for a in Ax]  # bias column: not read
    J = np.concatenate([np.concatenate([np.einsum("tko,ti->tkoi", g, a).reshape(Nx, K, -1), g], axis=2)
                        for g, a in zip(Gx, Ax)], axis=2)
    w = np.linspace(0.5, 2.0, len(sizes) - 1)
    wD = np.repeat(w, [o * (i + 1) for i, o in zip(sizes[:-1], sizes[1:])])
    for weights, scale in ((None, np.ones(D)), (w, wD)):
        got = _core.lowrank_jq_layers(Gx, Axb, U, A, weights, C)
        assert got.dtype == dtype and got.shape == (Nx, K, rank)
        want = np.einsum("tkd,d,dr->tkr", J.astype(np.float64), scale, Q.astype(np.float64))
        np.testing.assert_allclose(got, want, atol=tol * 100 * np.abs(want).max())


def test_lowrank_eigh_layers_errors():
    from pykfac import _core

    r = rng_(32)
    U = [r.standard_normal((3, 2, 5)), r.standard_normal((3, 2, 4))]
    A = [r.standard_normal((3, 6)), r.standard_normal((3, 5))]
    with pytest.raises(ValueError, match=r"^A\[1\]: expected shape \(3, 5\)"):
        _core.lowrank_eigh_layers(U, [A[0], A[1][:, :4]], 4)
    with pytest.raises(ValueError, match=r"^U\[1\]: expected shape \(3, 2, \*\), got \(2, 2, 4\)"):
        _core.lowrank_eigh_layers([U[0], U[1][:2]], A, 4)
    with pytest.raises(ValueError, match=r"^A: expected 2 entries, got 1"):
        _core.lowrank_eigh_layers(U, A[:1], 4)
    with pytest.raises(TypeError, match=r"^U: expected a list of arrays"):
        _core.lowrank_eigh_layers(U[0], A, 4)
    with pytest.raises(ValueError, match=r"^max_rank: expected an int >= 1"):
        _core.lowrank_eigh_layers(U, A, 0)
    bad = A[0].copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"^A\[0\]: contains NaN or Inf"):
        _core.lowrank_eigh_layers(U, [bad, A[1]], 4)
    C = _core.lowrank_eigh_layers(U, A, 6)[2]
    Gx = [r.standard_normal((2, 3, 5)), r.standard_normal((2, 3, 4))]
    Axb = [r.standard_normal((2, 7)), r.standard_normal((2, 6))]
    assert _core.lowrank_jq_layers(Gx, Axb, U, A, None, C).shape == (2, 3, 6)
    with pytest.raises(ValueError, match=r"^Axb\[1\]: expected shape \(2, 6\), got \(2, 5\)"):
        _core.lowrank_jq_layers(Gx, [Axb[0], Axb[1][:, :5]], U, A, None, C)
    with pytest.raises(ValueError, match=r"^Gx\[1\]: expected shape \(2, 3, 4\)"):
        _core.lowrank_jq_layers([Gx[0], Gx[1][:, :2]], Axb, U, A, None, C)
    with pytest.raises(ValueError, match=r"^C: expected shape \(6, \*\), got \(5, 6\)"):
        _core.lowrank_jq_layers(Gx, Axb, U, A, None, C[:5])
    with pytest.raises(ValueError, match=r"^w: expected shape \(2,\)"):
        _core.lowrank_jq_layers(Gx, Axb, U, A, [1.0], C)
    with pytest.raises(ValueError, match=r"^w: contains NaN or Inf"):
        _core.lowrank_jq_layers(Gx, Axb, U, A, [1.0, np.inf], C)
    # every path releases what it took: the inputs' reference counts do not move
    import sys

    arrays = U + A + Gx + Axb + [C]
    before = [sys.getrefcount(x) for x in arrays]
    for _ in range(20):
        _core.lowrank_eigh_layers(U, A, 3)
        _core.lowrank_jq_layers(Gx, Axb, U, A, [1.0, 2.0], C)
        for bad_call in (lambda: _core.lowrank_eigh_layers(U, [A[0], A[1][:, :4]], 4),
                         lambda: _core.lowrank_jq_layers(Gx, Axb, U, A, None, C[:5])):
            with pytest.raises(ValueError):
                bad_call()
    assert [sys.getrefcount(x) for x in arrays] == before


def test_memory_layouts_give_the_contiguous_result():
    """F-order, strided, read-only and integer inputs equal the C-contiguous float64 call."""
    r = rng_(18)
    U = r.standard_normal((8, 3))
    V = r.standard_normal((8, 2))
    ref = la.woodbury_solve(0.5, U, V)
    Uf = np.asfortranarray(U)
    Vs = np.repeat(V, 2, axis=1)[:, ::2]
    Ur = U.copy()
    Ur.setflags(write=False)
    for u, v in ((Uf, V), (U, Vs), (Ur, V), (U[::-1][::-1], V)):
        np.testing.assert_array_equal(la.woodbury_solve(0.5, u, v), ref)
    Ui = np.arange(24).reshape(8, 3) % 5
    np.testing.assert_allclose(la.woodbury_logdet(2, Ui), la.woodbury_logdet(2.0, Ui.astype(float)))
    J = r.standard_normal((3, 2, 5))
    np.testing.assert_array_equal(la.ggn_from_jacobians(np.asfortranarray(J)), la.ggn_from_jacobians(J))


def test_refcounts_stable():
    import sys

    r = rng_(19)
    U = r.standard_normal((6, 2))
    V = r.standard_normal((6, 1))
    before = sys.getrefcount(U), sys.getrefcount(V)
    for _ in range(50):
        la.woodbury_solve(1.0, U, V)
        la.woodbury_sample(1.0, U, 2, seed=0)
        la.lowrank_eigh(U)
        try:
            la.woodbury_solve(-1.0, U, V)
        except ValueError:
            pass
    assert (sys.getrefcount(U), sys.getrefcount(V)) == before


def test_sym_eigvals_and_lowrank_quad():
    from pykfac import _core

    r = rng_(20)
    A = spd(r, 9)
    np.testing.assert_allclose(_core.sym_eigvals(A), np.linalg.eigvalsh(A), rtol=1e-12)
    assert _core.sym_eigvals(A.astype(np.float32)).dtype == np.float32
    J = r.standard_normal((4, 3, 9))
    Q, _ = np.linalg.qr(r.standard_normal((9, 2)))
    d = np.array([0.5, -0.2])
    C = 0.7 * np.eye(9) + Q @ np.diag(d) @ Q.T
    np.testing.assert_allclose(_core.lowrank_quad(J, Q, 0.7, d), np.einsum("nkd,de,nle->nkl", J, C, J),
                               atol=1e-12)


@pytest.mark.parametrize("factored", [False, True])
def test_kron_sample_covariance(factored):
    from pykfac import _core

    r = rng_(21)
    nG, nA = 2, 3
    A, G = spd(r, nA), spd(r, nG, scale=0.5)
    eig = la.kron_eigh(A, G)
    s, d = 0.7, 0.4
    if factored:
        P = np.kron(s * G + np.sqrt(d) * np.eye(nG), A + np.sqrt(d) * np.eye(nA))
    else:
        P = s * np.kron(G, A) + d * np.eye(nG * nA)
    # draws land in theta order (W row-major, then b = the last column of [W b])
    # inside a wider array, ADDED to what is there (the mean)
    theta_of_wbar = np.concatenate([(np.arange(nG)[:, None] * nA + np.arange(nA - 1)).ravel(),
                                    np.arange(nG) * nA + nA - 1])
    wide = np.zeros((20000, nG * nA + 3))
    wide[:, 1:-2] = 5.0
    _core.kron_sample(*eig, wide[:, 1:-2], 7, scale=s, damping=d, factored=factored)
    assert np.all(wide[:, [0, -2, -1]] == 0)
    Sigma = np.linalg.inv(P)[np.ix_(theta_of_wbar, theta_of_wbar)]
    assert_cov(wide[:, 1:-2], np.full(nG * nA, 5.0), Sigma)
    again = np.zeros((20000, nG * nA))
    _core.kron_sample(*eig, again, 7, scale=s, damping=d, factored=factored)
    np.testing.assert_array_equal(again + 5.0, wide[:, 1:-2])  # same seed, same draws
    with pytest.raises(pk.LinAlgError):
        _core.kron_sample(*la.kron_eigh(np.diag([1.0, 0, 1]), G), np.zeros((2, nG * 3)), 0, damping=0.0)
    with pytest.raises(ValueError, match="out: expected a writeable"):
        _core.kron_sample(*eig, np.zeros((2, nG * nA + 1)), 0)
    empty = np.zeros((0, nG * nA + 3))[:, 1:-2]
    _core.kron_sample(*eig, empty, 0)  # no draws, nothing to do
    ro = np.zeros((2, nG * nA))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: expected a writeable"):
        _core.kron_sample(*eig, ro, 0)


@pytest.mark.parametrize("loss", ["mse", "ce", "bce"])
def test_ggn_linear_equals_pk_ggn_of_a_linear_layer(loss):
    r = rng_(22)
    K = 1 if loss == "bce" else 3
    net = pk.MLP([4, K], seed=1)
    Phi = r.standard_normal((9, 4))
    y = {"mse": r.standard_normal((9, K)), "ce": r.integers(0, K, 9),
         "bce": r.integers(0, 2, 9).astype(float)}[loss]
    Lam = pk.output_curvature(net, Phi, loss).hessian
    G = la.ggn_linear(Phi, Lam)
    assert np.array_equal(G, G.T)
    np.testing.assert_allclose(G, pk.ggn(net, Phi, y, loss), atol=1e-12)
    assert la.ggn_linear(Phi.astype(np.float32), Lam.astype(np.float32)).dtype == np.float32
