"""Laplace with the exact Hessian (``kind="hessian"``, laplace-torch's Hessian backends):
the precision is pk.hessian + P0 (checked against finite differences of the gradient in
test_curvature), P may be indefinite, so no eigenvalue clipping may creep in and a
non-positive-definite P raises a clear pk.LinAlgError.
"""
import math

import numpy as np
import pytest

import pykfac as pk
from problems import small_problem

LIKE = {"regression": "mse", "classification": "ce", "binary": "bce"}


def make(likelihood="classification", N=30, seed=0):
    return small_problem(LIKE[likelihood], N, seed)


def lml_formula(la, net, X, y, likelihood, H, prior, sigma=1.0):
    """CONVENTIONS.md: log p(y|θ*) − ½ θ*ᵀP₀θ* − ½ log det P + ½ log det P₀."""
    D = H.shape[0]
    L = pk.loss(net, X, y, LIKE[likelihood])
    if likelihood == "regression":
        loglik = -L / sigma ** 2 - X.shape[0] * net.n_outputs * math.log(sigma * math.sqrt(2 * math.pi))
    else:
        loglik = -L
    P = H / sigma ** 2 + prior * np.eye(D)
    sign, logdet = np.linalg.slogdet(P)
    assert sign > 0
    theta = la.mean
    return loglik - 0.5 * prior * theta @ theta - 0.5 * logdet + 0.5 * D * math.log(prior)


@pytest.mark.parametrize("likelihood", ["regression", "classification", "binary"])
def test_full_hessian_precision_and_lml(likelihood):
    net, X, y = make(likelihood)
    H = pk.hessian(net, X, y, LIKE[likelihood])
    lam_min = np.linalg.eigvalsh(H).min()
    sigma = 0.9 if likelihood == "regression" else 1.0
    prior = max(1.0, -lam_min / sigma ** 2 + 0.5)  # P positive definite
    la = pk.Laplace(net, likelihood, "full", kind="hessian", prior_precision=prior, sigma_noise=sigma)
    la.fit((X, y))
    np.testing.assert_allclose(la.posterior_precision_dense(), H / sigma ** 2 + prior * np.eye(net.num_params),
                               rtol=1e-12, atol=1e-12)
    assert la.log_marginal_likelihood() == pytest.approx(lml_formula(la, net, X, y, likelihood, H, prior, sigma),
                                                         rel=1e-10)
    np.testing.assert_allclose(la.posterior_covariance_dense(),
                               np.linalg.inv(H / sigma ** 2 + prior * np.eye(net.num_params)), rtol=1e-8, atol=1e-10)


def test_indefinite_hessian_is_not_clipped():
    """A scalar prior normally switches full posteriors to one eigendecomposition of H
    with roundoff-level eigenvalues set to 0; a Hessian's negative eigenvalues are real,
    so the log-det must still be that of H + δI."""
    net, X, y = make()
    H = pk.hessian(net, X, y, "ce")
    w = np.linalg.eigvalsh(H)
    assert w.min() < -1.0  # the test needs an indefinite Hessian
    la = pk.Laplace(net, "classification", "full", kind="hessian", prior_precision=-w.min() + 2.0).fit((X, y))
    la._post.prefer_eig = True  # what optimize_prior_precision(method="marglik") switches on
    for prior in (-w.min() + 2.0, -w.min() + 7.0):
        expected = lml_formula(la, net, X, y, "classification", H, prior)
        assert la.log_marginal_likelihood(prior_precision=prior) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(pk.LinAlgError, match="kind='hessian'.*indefinite"):
        la.log_marginal_likelihood(prior_precision=-w.min() / 2)


def test_last_layer_hessian_is_its_ggn():
    """The last layer is linear in its parameters, so its Hessian is its GGN."""
    net, X, y = make()
    hess = pk.Laplace(net, "classification", "full", "last_layer", kind="hessian").fit((X, y))
    ggn = pk.Laplace(net, "classification", "full", "last_layer").fit((X, y))
    np.testing.assert_allclose(hess.posterior_precision_dense(), ggn.posterior_precision_dense(),
                               rtol=1e-10, atol=1e-12)


def test_subnetwork_hessian_block(monkeypatch):
    net, X, y = make()
    idx = np.array([0, 3, 7, 20, 21, net.num_params - 1])
    H = pk.hessian(net, X, y, "ce")
    la = pk.Laplace(net, "classification", "full", "subnetwork", kind="hessian", prior_precision=30.0,
                    subnetwork_indices=idx).fit((X, y))
    np.testing.assert_allclose(la.posterior_precision_dense(), H[np.ix_(idx, idx)] + 30 * np.eye(idx.size),
                               rtol=1e-12, atol=1e-12)
    # the column chunks of the Hessian-vector products join up
    import pykfac.laplace as lm
    monkeypatch.setattr(lm, "_J_CHUNK_BYTES", 2 * 8 * net.num_params)
    chunked = pk.Laplace(net, "classification", "full", "subnetwork", kind="hessian", prior_precision=30.0,
                         subnetwork_indices=idx).fit((X, y))
    np.testing.assert_allclose(chunked.posterior_precision_dense(), la.posterior_precision_dense(), rtol=1e-13)


def test_hessian_posterior_save_load(tmp_path):
    net, X, y = make()
    H = pk.hessian(net, X, y, "ce")
    prior = -np.linalg.eigvalsh(H).min() + 1.0
    la = pk.Laplace(net, "classification", "full", kind="hessian", prior_precision=prior).fit((X, y))
    la.optimize_prior_precision(method="gridsearch", val_data=(X, y), grid=[prior, 3 * prior, 10 * prior])
    la.save(tmp_path / "h.npz")
    back = pk.Laplace.load(tmp_path / "h.npz")
    assert back.kind == "hessian" and not back._post.psd
    assert back.log_marginal_likelihood() == la.log_marginal_likelihood()


@pytest.mark.parametrize("likelihood", ["regression", "classification", "binary"])
def test_diag_hessian_posterior(likelihood, tmp_path):
    """diag + kind='hessian': P = diag(H) + P0 from pk.diag_hessian (checked against
    np.diag(pk.hessian) in test_diag_hessian), negative entries kept, not clipped."""
    net, X, y = make(likelihood)
    h = np.diag(pk.hessian(net, X, y, LIKE[likelihood]))
    assert h.min() < 0  # the test needs negative curvature on the diagonal
    sigma = 0.9 if likelihood == "regression" else 1.0
    prior = -h.min() / sigma ** 2 + 0.3
    la = pk.Laplace(net, likelihood, "diag", kind="hessian", prior_precision=prior, sigma_noise=sigma).fit((X, y))
    p = h / sigma ** 2 + prior
    np.testing.assert_allclose(np.diag(la.posterior_precision_dense()), p, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(la.posterior_variance(), 1 / p, rtol=1e-9)
    D = net.num_params
    expected = lml_formula(la, net, X, y, likelihood, np.diag(h), prior, sigma)
    assert la.log_marginal_likelihood() == pytest.approx(expected, rel=1e-10)
    la.save(tmp_path / "d.npz")
    back = pk.Laplace.load(tmp_path / "d.npz")
    assert back.log_marginal_likelihood() == la.log_marginal_likelihood()
    with pytest.raises(pk.LinAlgError, match="kind='hessian'.*<= 0 at"):
        la.log_marginal_likelihood(prior_precision=-h.min() / sigma ** 2 / 2)
    weak = pk.Laplace(net, likelihood, "diag", kind="hessian", prior_precision=-h.min() / sigma ** 2 / 2,
                      sigma_noise=sigma).fit((X, y))
    for use in (lambda: weak.sample(2, seed=0), lambda: weak.predictive(X[:3]), weak.posterior_variance):
        with pytest.raises(pk.LinAlgError, match="kind='hessian'"):
            use()
    idx = np.array([1, 4, 9, D - 2])
    sub = pk.Laplace(net, likelihood, "diag", "subnetwork", kind="hessian", prior_precision=prior,
                     sigma_noise=sigma, subnetwork_indices=idx).fit((X, y))
    np.testing.assert_allclose(np.diag(sub.posterior_precision_dense()), p[idx], rtol=1e-10)


@pytest.mark.parametrize("structure", ["kron", "lowrank", "ekfac"])
def test_hessian_kind_only_for_full_and_diag(structure):
    net, X, y = make()
    with pytest.raises(ValueError, match="kind"):
        pk.Laplace(net, "classification", structure, kind="hessian")
