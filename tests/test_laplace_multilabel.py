"""Laplace with likelihood="binary" and K > 1 outputs (multi-label classification, one
independent sigmoid per output): the posterior precision, predictive, sampling and
marginal likelihood against dense NumPy algebra built from pk.jacobian and the
diagonal output Hessians diag(p (1 - p))."""
import math

import numpy as np
import pytest

import pykfac as pk


def problem(K=3, N=30, seed=0):
    rng = np.random.default_rng(seed)
    net = pk.MLP([3, 6, K], activation="tanh", seed=seed)
    X = rng.normal(size=(N, 3))
    y = rng.integers(0, 2, size=(N, K)).astype(np.float64)
    return net, X, y


def sigmoid(f):
    return 1 / (1 + np.exp(-f))


def dense_ggn(net, X):
    J = pk.jacobian(net, X)
    p = sigmoid(net(X))
    return np.einsum("nkd,nk,nke->de", J, p * (1 - p), J)


@pytest.mark.parametrize("structure", ["full", "diag", "lowrank"])
def test_precision_is_the_ggn_of_independent_sigmoids(structure):
    net, X, y = problem()
    la = pk.Laplace(net, "binary", structure, prior_precision=0.5).fit((X, y))
    G = dense_ggn(net, X)
    want = G + 0.5 * np.eye(len(G)) if structure != "diag" else np.diag(np.diag(G) + 0.5)
    np.testing.assert_allclose(la.posterior_precision_dense(), want, rtol=1e-10, atol=1e-12)


def test_kron_and_last_layer_use_the_same_curvature():
    net, X, y = problem()
    la = pk.Laplace(net, "binary", "kron").fit((X, y))
    K = pk.kfac(net, (X, y), "bce")
    np.testing.assert_allclose(la.posterior_precision_dense(), K.to_dense() + np.eye(net.num_params),
                               rtol=1e-10, atol=1e-12)
    ll = pk.Laplace(net, "binary", "full", subset="last_layer").fit((X, y))
    G = dense_ggn(net, X)[-21:, -21:]  # the last layer: 6 x 3 weights and 3 biases
    np.testing.assert_allclose(ll.posterior_precision_dense(), G + np.eye(21), rtol=1e-10, atol=1e-12)


def test_glm_predictive_probit_and_mc_per_output():
    net, X, y = problem(seed=1)
    la = pk.Laplace(net, "binary", "full", prior_precision=2.0).fit((X, y))
    Xt = np.random.default_rng(5).normal(size=(6, 3))
    J = pk.jacobian(net, Xt)
    Sigma = np.einsum("nkd,de,nle->nkl", J, la.posterior_covariance_dense(), J)
    var = np.diagonal(Sigma, axis1=1, axis2=2)
    mu = net(Xt)
    probs = la.predictive(Xt)
    assert probs.shape == (6, 3)
    np.testing.assert_allclose(probs, sigmoid(mu / np.sqrt(1 + math.pi / 8 * var)), rtol=1e-10)
    np.testing.assert_allclose(la.functional_variance(Xt), Sigma, rtol=1e-9, atol=1e-12)
    # MC: each output's marginal is N(mu_k, var_k); E sigmoid(f) by Gauss-Hermite quadrature
    t, w = np.polynomial.hermite_e.hermegauss(80)
    exact = np.einsum("q,nkq->nk", w / np.sqrt(2 * np.pi), sigmoid(mu[..., None] + np.sqrt(var)[..., None] * t))
    n = 20000
    mc = la.predictive(Xt, link_approx="mc", n_samples=n, seed=3)
    draws = la.predictive_samples(Xt, n_samples=n, seed=3)
    assert draws.shape == (n, 6, 3)
    np.testing.assert_allclose(mc, draws.mean(0), rtol=1e-12)
    se = draws.std(0) / np.sqrt(n)
    assert np.all(np.abs(mc - exact) < 5 * se + 1e-12)
    # the probit is an approximation: close, but not the quadrature
    assert 0 < np.abs(probs - exact).max() < 0.02


def test_lml_and_sampling():
    net, X, y = problem(seed=2)
    la = pk.Laplace(net, "binary", "diag", prior_precision=[0.5, 2.0]).fit((X, y))
    f = net(X)
    L = np.sum(np.logaddexp(0, f) - y * f)  # sum over rows and outputs of the logistic loss
    assert la.log_likelihood() == pytest.approx(-L, rel=1e-12)
    P = la.posterior_precision_dense()
    d0 = la.prior_precision_diag
    th = net.theta
    want = -L - 0.5 * th @ (d0 * th) - 0.5 * np.linalg.slogdet(P)[1] + 0.5 * np.sum(np.log(d0))
    assert la.log_marginal_likelihood() == pytest.approx(want, rel=1e-10)
    s = la.sample(20000, seed=1)
    np.testing.assert_allclose(s.var(0), 1 / np.diag(P), rtol=0.05)


def test_from_jacobians_takes_the_diagonal_output_hessians():
    net, X, y = problem(K=2)
    J = pk.jacobian(net, X)
    lj = pk.Laplace.from_jacobians(J, f_map=net(X), likelihood="binary", y=y, theta_map=net.theta)
    la = pk.Laplace(net, "binary", "full").fit((X, y))
    np.testing.assert_allclose(lj.posterior_precision_dense(), la.posterior_precision_dense(), rtol=1e-10)
    assert lj.log_marginal_likelihood() == pytest.approx(la.log_marginal_likelihood(), rel=1e-10)


def test_gridsearch_nll_sums_over_outputs_and_labels_are_checked():
    net, X, y = problem()
    la = pk.Laplace(net, "binary", "diag").fit((X[:20], y[:20]))
    grid = [0.1, 1.0, 10.0]
    nll = []
    for p in grid:
        la.prior_precision = p
        q = la.predictive(X[20:])
        nll.append(-np.mean(np.sum(y[20:] * np.log(q) + (1 - y[20:]) * np.log(1 - q), axis=1)))
    la.prior_precision = 0.5  # off the grid, so the search must set it
    la.optimize_prior_precision(method="gridsearch", val_data=(X[20:], y[20:]), grid=grid)
    assert la.prior_precision == grid[int(np.argmin(nll))]
    with pytest.raises(ValueError, match="loss: 'brier' takes one binary output"):
        la.optimize_prior_precision(method="gridsearch", val_data=(X[20:], y[20:]), loss="brier")
    with pytest.raises(ValueError, match=r"y: expected shape \(30, 3\) \(one 0/1 label per output\)"):
        pk.Laplace(net, "binary", "diag").fit((X, y[:, 0]))
    with pytest.raises(ValueError, match="y: binary labels"):
        pk.Laplace(net, "binary", "diag").fit((X, np.full((30, 3), 0.5)))
    with pytest.raises(ValueError, match="link_approx: the Laplace bridge"):
        la.predictive(X, link_approx="bridge")


def test_marglik_training_multilabel():
    net, X, y = problem(K=2, N=40, seed=4)
    la, net2, margliks, losses = pk.marglik_training(net, (X, y), likelihood="binary", structure="kron",
                                                     n_epochs=60, lr=1e-2)
    assert la.n_outputs == 2 and la.predictive(X[:3]).shape == (3, 2)
    assert losses[-1] < losses[0] and np.all(np.isfinite(margliks))
