"""pk.spectral_density (stochastic Lanczos quadrature) against closed forms: the Gauss
quadrature identity sum_i tau_i theta_i^m = v^T A^m v / v^T v for the seeded start vector,
exact nodes when Lanczos meets an invariant subspace, eigenvalue masses, and the Hessian
spectrum of a network against its dense eigenvalues."""
import numpy as np
import pytest

import pykfac as pk
from pykfac import _core
from pykfac._data import resolve_seed


def sym(D, seed=0, spread=3.0):
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.normal(size=(D, D)))[0]
    w = np.linspace(-1.0, spread, D) + rng.normal(size=D) * 0.1
    return (Q * w) @ Q.T, np.sort(w)


def integrate(grid, f):
    return float(np.sum((f[1:] + f[:-1]) * np.diff(grid)) / 2)


def test_moments_are_the_quadrature_of_the_start_vector():
    A, w = sym(40)
    seed, steps = 7, 6
    # a wide grid, so the Gaussian tails are inside it and the trapezoid is exact to ~1e-9
    grid, dens = pk.spectral_density(A, num_points=20001, num_repeats=1, num_steps=steps, kappa=20,
                                     boundaries=(-6, 8), seed=seed)
    sigma = 20 * 14 / 20000
    v = _core.standard_normal(1, 40, False, resolve_seed(seed))[0]
    v /= np.linalg.norm(v)
    assert integrate(grid, dens) == pytest.approx(1.0, abs=1e-9)
    assert integrate(grid, grid * dens) == pytest.approx(v @ A @ v, abs=1e-8)
    # second moment of a Gaussian mixture: sum tau (theta^2 + sigma^2)
    assert integrate(grid, grid ** 2 * dens) == pytest.approx(v @ A @ A @ v + sigma ** 2, abs=1e-8)
    # degree 2 steps - 1 = 11 is still exact; the 4th moment adds 6 sigma^2 m2 + 3 sigma^4
    A4 = np.linalg.matrix_power(A, 4)
    m4 = v @ A4 @ v + 6 * sigma ** 2 * (v @ A @ A @ v) + 3 * sigma ** 4
    assert integrate(grid, grid ** 4 * dens) == pytest.approx(m4, rel=1e-8)


def test_two_eigenvalues_are_found_exactly_with_their_masses():
    """Lanczos stops after two steps (two distinct eigenvalues): the nodes are exact and
    the weights average to the eigenspace fractions (30/40 and 10/40)."""
    D = 40
    Q = np.linalg.qr(np.random.default_rng(1).normal(size=(D, D)))[0]
    A = (Q * np.r_[np.full(30, 1.0), np.full(10, 5.0)]) @ Q.T
    grid, dens = pk.spectral_density(A, num_points=4001, num_repeats=400, num_steps=50, kappa=3,
                                     boundaries=(0, 6), seed=2)
    assert grid[np.argmax(dens)] == pytest.approx(1.0, abs=2e-3)
    low = integrate(grid[grid < 3], dens[grid < 3])
    # the weight of one run is Beta(15, 5)-distributed: sd 0.095, so 400 runs give 0.0047
    assert low == pytest.approx(0.75, abs=5 * 0.0047)
    assert integrate(grid, dens) == pytest.approx(1.0, abs=1e-6)


def test_multiple_of_identity_is_one_gaussian():
    A = 2.5 * np.eye(30)
    grid, dens = pk.spectral_density(A, num_points=501, num_repeats=3, seed=0)
    sigma = 3 * (grid[-1] - grid[0]) / 500
    np.testing.assert_allclose(dens, np.exp(-0.5 * ((grid - 2.5) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi)),
                               rtol=1e-10, atol=1e-12)


def test_network_hessian_spectrum_with_full_lanczos():
    """With as many steps as parameters every run finds all eigenvalues: the density's
    peaks sit on the dense Hessian's eigenvalues and its mean is tr(H)/D on average."""
    rng = np.random.default_rng(0)
    net = pk.MLP([2, 4, 3], activation="tanh", seed=0)
    X, y = rng.normal(size=(20, 2)), rng.integers(0, 3, 20)
    H = pk.hessian(net, X, y, "ce")
    w = np.linalg.eigvalsh(H)
    D = H.shape[0]
    grid, dens = pk.spectral_density(pk.HessianOperator(net, X, y, "ce"), num_points=20001, num_repeats=200,
                                     num_steps=D, kappa=1, seed=3)
    mean = integrate(grid, grid * dens)
    # tr(H)/D with the Hutchinson-type variance of 200 normalised Gaussian starts
    sd = np.sqrt(2 * np.sum(w ** 2) / D ** 2 / 200)
    assert mean == pytest.approx(w.mean(), abs=5 * sd)
    assert grid[0] < w[0] and w[-1] < grid[-1]
    # the largest eigenvalue is a local maximum of the density
    i = np.argmin(np.abs(grid - w[-1]))
    assert dens[i] > dens[max(i - 50, 0)] and dens[i] > dens[min(i + 50, grid.size - 1)]


@pytest.mark.parametrize("kw, msg", [
    ({"num_points": 1}, "num_points"), ({"num_repeats": 0}, "num_repeats"), ({"num_steps": 0}, "num_steps"),
    ({"kappa": 0}, "kappa"), ({"margin": -1}, "margin"), ({"boundaries": (1, 0)}, "boundaries"),
    ({"num_points": True}, "num_points")])
def test_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        pk.spectral_density(np.eye(3), **kw)


def test_bad_operator():
    with pytest.raises(ValueError, match="A: expected a square"):
        pk.spectral_density(np.ones((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        pk.spectral_density(np.full((3, 3), np.nan))
    with pytest.raises(TypeError, match="boundaries"):
        pk.spectral_density(np.eye(3), boundaries=5)
