"""The three terms of the Laplace log marginal likelihood as laplace-torch exposes them:
log_det_prior_precision, log_det_ratio and scatter, against dense algebra, and
log Z = log p(y|theta*) - (scatter + log_det_ratio) / 2 for every structure."""
import numpy as np
import pytest

import pykfac as pk


@pytest.mark.parametrize("structure, subset", [("full", "all"), ("diag", "all"), ("kron", "all"),
                                               ("lowrank", "all"), ("ekfac", "all"), ("full", "last_layer"),
                                               ("kron", "last_layer")])
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_lml_terms(structure, subset, likelihood):
    rng = np.random.default_rng(4)
    K = 3 if likelihood == "classification" else 2
    net = pk.MLP([3, 5, K], activation="tanh", seed=2)
    X = rng.normal(size=(25, 3))
    y = rng.integers(0, K, 25) if likelihood == "classification" else rng.normal(size=(25, K))
    prior = [0.7, 2.0] if subset == "all" else 1.3
    mu0 = 0.05 * rng.normal(size=net.num_params if subset == "all" else 5 * K + K)
    la = pk.Laplace(net, likelihood, structure, subset, prior_precision=prior, prior_mean=mu0,
                    sigma_noise=0.6 if likelihood == "regression" else 1.0).fit((X, y))
    P = la.posterior_precision_dense()
    d0 = la.prior_precision_diag
    theta = la.mean
    assert la.log_det_prior_precision() == pytest.approx(np.sum(np.log(d0)), rel=1e-13)
    assert la.log_det_ratio() == pytest.approx(np.linalg.slogdet(P)[1] - np.sum(np.log(d0)), rel=1e-9, abs=1e-9)
    assert la.scatter() == pytest.approx(float((theta - mu0) @ (d0 * (theta - mu0))), rel=1e-12)
    assert la.log_marginal_likelihood() == pytest.approx(
        la.log_likelihood() - 0.5 * (la.scatter() + la.log_det_ratio()), rel=1e-11, abs=1e-11)


def test_terms_need_a_fit_and_a_mean():
    net = pk.MLP([2, 3, 2], seed=0)
    la = pk.Laplace(net, "classification", "diag")
    for term in (la.log_det_prior_precision, la.log_det_ratio, la.scatter):
        with pytest.raises(RuntimeError, match="fit"):
            term()
    rng = np.random.default_rng(0)
    J = rng.normal(size=(4, 2, 5))
    lj = pk.Laplace.from_jacobians(J, f_map=rng.normal(size=(4, 2)), y=rng.integers(0, 2, 4))
    assert lj.log_det_ratio() == pytest.approx(np.linalg.slogdet(lj.posterior_precision_dense())[1], rel=1e-12)
    with pytest.raises(RuntimeError, match="theta_map"):
        lj.scatter()
