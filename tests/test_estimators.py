"""curvlinops' remaining matrix-free tools: the XDiag diagonal estimator, the squared
Frobenius norm estimator, the Jacobian as a LinearOperator, and the log-spectrum of
stochastic Lanczos quadrature. Each against dense NumPy algebra or a closed form."""
import numpy as np
import pytest

import pykfac as pk
from pykfac import _core
from pykfac._data import resolve_seed


def rotated(D, eigenvalues, seed):
    Q = np.linalg.qr(np.random.default_rng(seed).normal(size=(D, D)))[0]
    return (Q * eigenvalues) @ Q.T


def integrate(grid, f):
    return float(np.sum((f[1:] + f[:-1]) * np.diff(grid)) / 2)


# ---------------------------------------------------------------- XDiag
def test_xdiag_is_exact_below_half_the_products_for_indefinite_low_rank():
    B = np.random.default_rng(0).normal(size=(50, 4))
    low = B @ np.diag([3.0, 1.0, -2.0, 0.5]) @ B.T          # rank 4 < 10 / 2
    np.testing.assert_allclose(pk.diag_estimate(low, 10, "xdiag", seed=0), np.diag(low), atol=1e-12)
    # m is rounded down to even: 11 products use the same 5 sign vectors as 10
    np.testing.assert_array_equal(pk.diag_estimate(low, 11, "xdiag", seed=0),
                                  pk.diag_estimate(low, 10, "xdiag", seed=0))
    # and the GGN of a small batch (rank <= N (K - 1) = 2) from its operator
    net = pk.MLP([3, 5, 2], seed=1)
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(2, 3)), rng.integers(0, 2, 2)
    G = pk.ggn(net, X, y, "ce")
    np.testing.assert_allclose(pk.diag_estimate(pk.GGNOperator(net, X, y, "ce"), 8, "xdiag", seed=3),
                               np.diag(G), atol=1e-12 * np.abs(G).max())


def test_xdiag_is_unbiased_and_beats_hutchinson_on_a_decaying_spectrum():
    D, runs = 40, 1500
    ind = rotated(D, np.random.default_rng(5).normal(size=D), seed=4)    # full rank, indefinite
    est = np.array([pk.diag_estimate(ind, 8, "xdiag", seed=s) for s in range(runs)])
    z = (est.mean(0) - np.diag(ind)) / (est.std(0) / np.sqrt(runs))
    # 40 entries: a 4.5-sigma bound fails with probability ~3e-4 if unbiased
    assert np.abs(z).max() < 4.5
    psd = rotated(D, 0.7 ** np.arange(D), seed=6)
    xd = np.array([pk.diag_estimate(psd, 12, "xdiag", seed=s) for s in range(300)])
    hut = np.array([pk.diag_estimate(psd, 12, seed=s) for s in range(300)])
    mse_xd, mse_hut = np.mean((xd - np.diag(psd)) ** 2), np.mean((hut - np.diag(psd)) ** 2)
    assert mse_xd < 0.5 * mse_hut  # 0.3x here


def test_xdiag_arguments():
    A = np.eye(6)
    with pytest.raises(ValueError, match="num_matvecs: expected an int >= 4"):
        pk.diag_estimate(A, 3, "xdiag")
    with pytest.raises(ValueError, match="method: expected 'hutchinson' or 'xdiag'"):
        pk.diag_estimate(A, 4, "diag++")
    # the default stays Hutchinson: same values as before the method argument existed
    Z = np.where(_core.standard_normal(6, 5, False, resolve_seed(2)) >= 0, 1.0, -1.0)
    B = rotated(6, np.arange(1.0, 7.0), seed=0)
    np.testing.assert_allclose(pk.diag_estimate(B, 5, seed=2), np.einsum("ij,ij->i", Z, B @ Z) / 5, rtol=1e-14)


# ---------------------------------------------------------------- squared Frobenius norm
def test_squared_frobenius_estimate():
    D, runs = 30, 3000
    B = rotated(D, np.random.default_rng(1).normal(size=D), seed=2)
    est = np.array([pk.squared_frobenius_estimate(B, 3, seed=s) for s in range(runs)])
    assert abs(est.mean() - np.sum(B ** 2)) < 4.5 * est.std() / np.sqrt(runs)
    d = np.random.default_rng(3).uniform(1, 2, D)
    assert pk.squared_frobenius_estimate(np.diag(d), 1, seed=0) == pytest.approx(np.sum(d ** 2), rel=1e-14)
    # the same signs as the other estimators of that seed: ||A Z||^2 / m exactly
    Z = np.where(_core.standard_normal(D, 4, False, resolve_seed(9)) >= 0, 1.0, -1.0)
    assert pk.squared_frobenius_estimate(B, 4, seed=9) == pytest.approx(np.sum((B @ Z) ** 2) / 4, rel=1e-14)
    # the Hessian of a network from its operator: tr(H^2) on average
    net = pk.MLP([2, 4, 3], seed=0)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(5, 2)), rng.integers(0, 3, 5)
    H = pk.hessian(net, X, y, "ce")
    Hop = pk.HessianOperator(net, X, y, "ce")
    est = np.array([pk.squared_frobenius_estimate(Hop, 10, seed=s) for s in range(300)])
    assert abs(est.mean() - np.sum(H ** 2)) < 4.5 * est.std() / np.sqrt(300)
    with pytest.raises(ValueError, match="num_matvecs"):
        pk.squared_frobenius_estimate(B, 0)
    with pytest.raises(ValueError, match="A: expected a square operator"):
        pk.squared_frobenius_estimate(np.ones((3, 4)), 2)
    with pytest.raises(ValueError, match="A: its products contain NaN"):
        pk.squared_frobenius_estimate(np.where(np.eye(3) > 0, np.nan, 1.0), 2)


# ---------------------------------------------------------------- Jacobian operator
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_jacobian_operator_matches_the_dense_jacobian(dtype):
    rng = np.random.default_rng(2)
    net = pk.MLP([3, 6, 4, 2], activation="softplus", seed=3, dtype=dtype)
    X = rng.normal(size=(5, 3)).astype(dtype)
    J = pk.jacobian(net, X).reshape(10, -1).astype(np.float64)
    op = pk.JacobianOperator(net, X)
    assert op.shape == (10, net.num_params) and op.dtype == dtype
    tol = 1e-13 if dtype == np.float64 else 2e-5
    V = rng.normal(size=(net.num_params, 3)).astype(dtype)
    U = rng.normal(size=(10, 2)).astype(dtype)
    np.testing.assert_allclose(op @ V, J @ V, atol=tol * np.abs(J).max() * 10)
    np.testing.assert_allclose(op @ V[:, 0], J @ V[:, 0], atol=tol * np.abs(J).max() * 10)
    np.testing.assert_allclose(op.T @ U, J.T @ U, atol=tol * np.abs(J).max() * 10)
    np.testing.assert_allclose(op.T @ U[:, 0], J.T @ U[:, 0], atol=tol * np.abs(J).max() * 10)
    # J^T J is the GGN of mse (Lambda = I): the operators compose
    if dtype == np.float64:
        G = pk.ggn(net, X, rng.normal(size=(5, 2)), "mse")
        np.testing.assert_allclose((op.T @ op) @ V, G @ V, rtol=1e-12, atol=1e-12)


def test_jacobian_operator_bad_inputs():
    net = pk.MLP([3, 4, 2], seed=0)
    with pytest.raises(ValueError, match="X"):
        pk.JacobianOperator(net, np.ones((4, 2)))
    with pytest.raises(ValueError, match="X"):
        pk.JacobianOperator(net, np.full((4, 3), np.nan))
    with pytest.raises(TypeError):
        pk.JacobianOperator("net", np.ones((4, 3)))
    op = pk.JacobianOperator(net, np.ones((4, 3)))
    with pytest.raises(ValueError):
        op @ np.ones(net.num_params + 1)


# ---------------------------------------------------------------- log-spectrum
def test_log_spectrum_puts_the_masses_at_log_abs_eigenvalues():
    """Two eigenvalues (one negative) four decades apart: Lanczos finds both exactly
    in two steps, so the log-density peaks at log(|lambda| + eps) with the
    eigenspace fractions as masses, and integrates to 1 on the log axis."""
    D, eps = 40, 1e-5
    A = rotated(D, np.r_[np.full(30, -1e-3), np.full(10, 10.0)], seed=1)
    grid, dens = pk.spectral_density(A, num_points=4001, num_repeats=300, num_steps=20, kappa=3,
                                     boundaries=(-9.0, 4.0), log=True, epsilon=eps, seed=2)
    assert integrate(grid, dens) == pytest.approx(1.0, abs=1e-6)
    low_peak = grid[grid < 0][np.argmax(dens[grid < 0])]
    high_peak = grid[grid > 0][np.argmax(dens[grid > 0])]
    assert low_peak == pytest.approx(np.log(1e-3 + eps), abs=5e-3)
    assert high_peak == pytest.approx(np.log(10.0 + eps), abs=5e-3)
    # each run's weight is Beta(15, 5): sd 0.095, 300 runs give 0.0055
    assert integrate(grid[grid < 0], dens[grid < 0]) == pytest.approx(0.75, abs=5 * 0.0055)


def test_log_spectrum_is_the_linear_one_of_the_transformed_nodes():
    """log=True changes only the nodes: for A with eigenvalues e^s the log-density of A
    equals the linear density of the matrix with eigenvalues log(e^s + eps), same
    eigenvectors, same start vectors and the same grid."""
    D, eps = 30, 1e-5
    Q = np.linalg.qr(np.random.default_rng(3).normal(size=(D, D)))[0]
    s = np.linspace(-6, 2, D)
    A = (Q * np.exp(s)) @ Q.T
    B = (Q * np.log(np.exp(s) + eps)) @ Q.T
    kw = dict(num_points=301, num_repeats=2, num_steps=D, boundaries=(-8.0, 3.0), seed=5)
    g1, d1 = pk.spectral_density(A, log=True, epsilon=eps, **kw)
    g2, d2 = pk.spectral_density(B, **kw)
    np.testing.assert_array_equal(g1, g2)
    # full Lanczos: both runs find all eigenvalues; weights are (Q^T v)^2 for both
    np.testing.assert_allclose(d1, d2, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kw, err, msg", [
    (dict(log=1), TypeError, "log: expected True or False"),
    (dict(log=True, epsilon=0.0), ValueError, "epsilon: expected a finite number > 0"),
    (dict(log=True, epsilon=np.nan), ValueError, "epsilon"),
    (dict(log=True, epsilon=True), ValueError, "epsilon"),
])
def test_log_spectrum_bad_arguments(kw, err, msg):
    with pytest.raises(err, match=msg):
        pk.spectral_density(np.eye(4), num_points=10, **kw)


def test_tall_qr_both_paths():
    """The sketches' QR: CholeskyQR2 for well-conditioned Y, Householder otherwise;
    Y = Q R with orthonormal Q to roundoff either way."""
    from pykfac.curvature import _tall_qr
    rng = np.random.default_rng(8)
    for Y in (rng.normal(size=(5000, 12)),                                   # CholeskyQR2
              rng.normal(size=(5000, 3)) @ rng.normal(size=(3, 12)),        # rank 3: Householder
              rng.normal(size=(5000, 12)) * np.logspace(0, -9, 12)):        # cond 1e9: Householder
        Q, R = _tall_qr(Y)
        assert Q.shape == Y.shape and R.shape == (12, 12)
        np.testing.assert_allclose(Q.T @ Q, np.eye(12), atol=1e-13)
        np.testing.assert_allclose(Q @ R, Y, atol=1e-13 * np.abs(Y).max())
