"""Tests of pk.Laplace (pykfac/laplace.py) against brute-force dense constructions.

References: the posterior precision of every structure is rebuilt here from
pk.ggn / pk.diag_ggn / pk.kfac(...).to_dense() plus the prior and inverted
with np.linalg; the log marginal likelihood is the CONVENTIONS.md formula
written out with np.linalg.slogdet; gradients are checked by central finite
differences; sampling is checked on the mean AND the covariance.
"""
import math

import numpy as np
import pytest

import pykfac as pk
import reference
from pykfac import _core
from pykfac import laplace as laplace_module

STRUCTURES = ("full", "diag", "kron", "lowrank")
LIKE = {"regression": "mse", "classification": "ce", "binary": "bce"}


def make(likelihood, sizes=(3, 5, 4), N=12, seed=0, dtype=np.float64):
    """A small network and data for a likelihood (K = 1 for binary)."""
    sizes = list(sizes) + [1 if likelihood == "binary" else 3]
    rng = np.random.default_rng(seed)
    net = pk.MLP(sizes, activation="tanh", seed=seed, dtype=dtype)
    net.theta = rng.normal(size=net.num_params) / 2
    X = rng.normal(size=(N, sizes[0]))
    if likelihood == "regression":
        y = rng.normal(size=(N, sizes[-1]))
    elif likelihood == "classification":
        y = rng.integers(0, sizes[-1], size=N)
    else:
        y = rng.integers(0, 2, size=N).astype(np.float64)
    return net, X, y


offsets = reference.layer_offsets
prior_diag = reference.prior_diag


def last_layer_model(net):
    last = net.layers[-1]
    return pk.MLP.from_params([(last.W, last.b)])


def brute_precision(net, X, y, likelihood, structure, subset="all", prior=1.0, sigma=1.0, T=1.0,
                    kind="exact"):
    """Dense posterior precision from the public curvature functions."""
    loss = LIKE[likelihood]
    model, Z = (net, X) if subset == "all" else (last_layer_model(net), net.features(X))
    c = 1.0 / (sigma ** 2 * T)
    p0 = prior_diag(prior, model)
    if structure in ("full", "lowrank"):
        H = pk.ggn(model, Z, y, loss)
    elif structure == "diag":
        H = np.diag(pk.diag_ggn(model, Z, y, loss))
    else:
        H = pk.kfac(model, (Z, y), loss, kind=kind).to_dense()
    return c * H + np.diag(p0), model, Z


def fit(likelihood, structure, subset="all", prior=1.0, sigma=1.0, T=1.0, **kw):
    net, X, y = make(likelihood, **{k: kw.pop(k) for k in list(kw) if k in ("sizes", "N", "seed", "dtype")})
    la = pk.Laplace(net, likelihood, structure, subset, prior_precision=prior, sigma_noise=sigma,
                    temperature=T, **kw).fit((X, y))
    return la, net, X, y


# ---------------------------------------------------------------------------
# dense precision / covariance of every structure
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("likelihood", ["regression", "classification", "binary"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_dense_precision_matches_brute_force(structure, likelihood, subset):
    sigma = 0.7 if likelihood == "regression" else 1.0
    la, net, X, y = fit(likelihood, structure, subset, prior=0.3, sigma=sigma, T=1.5)
    P, model, _ = brute_precision(net, X, y, likelihood, structure, subset, 0.3, sigma, 1.5)
    assert la.n_params == model.num_params
    np.testing.assert_allclose(la.posterior_precision_dense(), P, atol=1e-10)
    np.testing.assert_allclose(la.posterior_covariance_dense(), np.linalg.inv(P), rtol=1e-8, atol=1e-10)
    assert la.log_det_posterior_precision() == pytest.approx(np.linalg.slogdet(P)[1], abs=1e-8)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_dense_precision_per_layer_and_per_parameter_prior(structure):
    net, X, y = make("classification")
    L = net.n_layers
    priors = [np.array([0.5, 2.0, 3.0][:L])]
    if structure != "kron":
        priors.append(np.random.default_rng(3).uniform(0.2, 3.0, size=net.num_params))
    for prior in priors:
        la = pk.Laplace(net, "classification", structure, prior_precision=prior).fit((X, y))
        P, _, _ = brute_precision(net, X, y, "classification", structure, prior=prior)
        np.testing.assert_allclose(la.posterior_precision_dense(), P, atol=1e-10)
        np.testing.assert_allclose(la.posterior_covariance_dense(), np.linalg.inv(P), rtol=1e-8, atol=1e-10)
        assert la.log_det_posterior_precision() == pytest.approx(np.linalg.slogdet(P)[1], abs=1e-8)


def test_kron_factored_damping():
    net, X, y = make("classification")
    la = pk.Laplace(net, "classification", "kron", prior_precision=[0.4, 2.0, 0.9],
                    kron_damping="factored", temperature=0.5).fit((X, y))
    K = pk.kfac(net, (X, y), "ce")
    blocks = []
    for l, d in enumerate([0.4, 2.0, 0.9]):
        s = math.sqrt(d)
        Gs = K.G[l] / 0.5 + s * np.eye(len(K.G[l]))
        As = K.A[l] + s * np.eye(len(K.A[l]))
        blocks.append(pk.KronCurvature([As], [Gs], net.sizes[l:l + 2]).to_dense())
    D = net.num_params
    P = np.zeros((D, D))
    o = 0
    for b in blocks:
        P[o:o + len(b), o:o + len(b)] = b
        o += len(b)
    np.testing.assert_allclose(la.posterior_precision_dense(), P, atol=1e-10)
    np.testing.assert_allclose(la.posterior_covariance_dense(), np.linalg.inv(P), rtol=1e-8, atol=1e-10)
    assert la.log_det_posterior_precision() == pytest.approx(np.linalg.slogdet(P)[1], abs=1e-8)


def test_last_layer_ggn_is_the_block_of_the_full_ggn():
    net, X, y = make("classification")
    la = pk.Laplace(net, "classification", "full", "last_layer", prior_precision=1.0).fit((X, y))
    G = pk.ggn(net, X, y, "ce")
    p = net.layers[-1].num_params
    np.testing.assert_allclose(la.posterior_precision_dense(), G[-p:, -p:] + np.eye(p), atol=1e-10)


@pytest.mark.parametrize("kind", ["mc", "empirical", "kfra"])
def test_kron_kinds(kind):
    net, X, y = make("classification")
    la = pk.Laplace(net, "classification", "kron", kind=kind, seed=3).fit((X, y))
    K = pk.kfac(net, (X, y), "ce", kind=kind, seed=3)
    if kind == "mc":  # seeds are derived per batch; compare the structure, not the draws
        assert la.posterior_precision_dense().shape == (net.num_params,) * 2
        return
    np.testing.assert_allclose(la.posterior_precision_dense(), K.to_dense() + np.eye(net.num_params), atol=1e-10)


@pytest.mark.parametrize("structure, kind", [("full", "exact"), ("lowrank", "exact")] +
                         [("diag", k) for k in ("exact", "mc", "empirical")] +
                         [("kron", k) for k in ("exact", "mc", "empirical", "kfra")])
@pytest.mark.parametrize("likelihood", ["regression", "classification", "binary"])
def test_fit_loss_is_the_summed_training_loss(structure, kind, likelihood):
    """diag and kron take the loss from the curvature kernel's own forward pass."""
    net, X, y = make(likelihood, N=11)
    la = pk.Laplace(net, likelihood, structure, kind=kind, seed=0)
    la.fit([(X[:4], y[:4]), (X[4:], y[4:])])
    assert la.loss == pytest.approx(pk.loss(net, X, y, la.lossname), rel=1e-13)
    assert la.n_data == 11


def test_batches_equal_one_pass():
    net, X, y = make("classification", N=15)
    for structure in STRUCTURES:
        a = pk.Laplace(net, "classification", structure).fit((X, y))
        b = pk.Laplace(net, "classification", structure).fit([(X[:4], y[:4]), (X[4:], y[4:])])
        np.testing.assert_allclose(a.posterior_precision_dense(), b.posterior_precision_dense(), atol=1e-10)
        assert a.log_marginal_likelihood() == pytest.approx(b.log_marginal_likelihood(), abs=1e-9)


# ---------------------------------------------------------------------------
# full vs untruncated low rank
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("likelihood", ["regression", "classification", "binary"])
@pytest.mark.parametrize("prior", ["scalar", "layer", "param"])
def test_full_equals_untruncated_lowrank(likelihood, prior):
    net, X, y = make(likelihood, N=8)
    p = {"scalar": 0.7, "layer": [0.5, 1.5, 0.9][:net.n_layers],
         "param": np.random.default_rng(1).uniform(0.3, 2, net.num_params)}[prior]
    sigma = 0.6 if likelihood == "regression" else 1.0
    kw = dict(prior_precision=p, sigma_noise=sigma, temperature=0.8)
    full = pk.Laplace(net, likelihood, "full", **kw).fit((X, y))
    low = pk.Laplace(net, likelihood, "lowrank", **kw).fit((X, y))
    Xt = np.random.default_rng(9).normal(size=(5, X.shape[1]))
    assert low.log_det_posterior_precision() == pytest.approx(full.log_det_posterior_precision(), abs=1e-9)
    assert low.log_marginal_likelihood() == pytest.approx(full.log_marginal_likelihood(), abs=1e-9)
    np.testing.assert_allclose(low.functional_variance(Xt), full.functional_variance(Xt), atol=1e-10)
    a, b = low.predictive(Xt), full.predictive(Xt)
    for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        np.testing.assert_allclose(u, v, atol=1e-10)
    ga, gb = low.log_marginal_likelihood_grad(), full.log_marginal_likelihood_grad()
    np.testing.assert_allclose(ga[0], gb[0], atol=1e-8)
    if likelihood == "regression":
        assert ga[1] == pytest.approx(gb[1], abs=1e-8)


def test_lowrank_rank_truncation():
    net, X, y = make("classification", N=10)
    full = pk.Laplace(net, "classification", "full").fit((X, y))
    low = pk.Laplace(net, "classification", "lowrank", rank=4).fit((X, y))
    G = pk.ggn(net, X, y, "ce")
    w, V = np.linalg.eigh(G)
    Gk = V[:, -4:] * w[-4:] @ V[:, -4:].T
    np.testing.assert_allclose(low.posterior_precision_dense(), Gk + np.eye(net.num_params), atol=1e-9)
    assert low._post.rank == 4
    assert low.log_marginal_likelihood() != pytest.approx(full.log_marginal_likelihood())


def test_lowrank_memory_guard_names_rank(monkeypatch):
    """Beyond the element limit, fit refuses with a MemoryError that points to
    rank=; with rank= the eigenvectors stay within it and the fit goes ahead."""
    net, X, y = make("classification", N=10)
    D, M = net.num_params, 10 * (net.sizes[-1] - 1)  # softmax: a rank-(K-1) square root per datum
    monkeypatch.setattr(laplace_module, "_LOWRANK_MAX", D * (M - 1))
    with pytest.raises(MemoryError, match=r"lowrank.*pass rank="):
        pk.Laplace(net, "classification", "lowrank").fit([(X[:5], y[:5]), (X[5:], y[5:])])
    low = pk.Laplace(net, "classification", "lowrank", rank=4).fit([(X[:5], y[:5]), (X[5:], y[5:])])
    assert low._post.Q.shape == (D, 4)


# ---------------------------------------------------------------------------
# log marginal likelihood
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("likelihood", ["regression", "classification"])
def test_lml_by_hand(structure, likelihood):
    sigma = 0.8 if likelihood == "regression" else 1.0
    prior = [0.5, 1.7, 1.1] if structure != "lowrank" else 0.9
    net, X, y = make(likelihood)
    mu0 = np.random.default_rng(5).normal(size=net.num_params) * 0.1
    la = pk.Laplace(net, likelihood, structure, prior_precision=prior, sigma_noise=sigma,
                    temperature=1.3, prior_mean=mu0).fit((X, y))
    P, _, _ = brute_precision(net, X, y, likelihood, structure, prior=prior, sigma=sigma, T=1.3)
    L = pk.loss(net, X, y, LIKE[likelihood])
    N, K = y.shape[0], net.n_outputs
    if likelihood == "regression":
        loglik = -L / sigma ** 2 - N * K * np.log(sigma * np.sqrt(2 * np.pi))
    else:
        loglik = -L
    p0 = prior_diag(prior, net)
    d = net.theta - mu0
    ref = loglik - 0.5 * d @ (p0 * d) - 0.5 * np.linalg.slogdet(P)[1] + 0.5 * np.sum(np.log(p0))
    assert la.log_marginal_likelihood() == pytest.approx(ref, abs=1e-9)
    # evaluating at other hyperparameters does not change the object
    other = la.log_marginal_likelihood(prior_precision=2.0, sigma_noise=0.5 if likelihood == "regression" else None)
    P2, _, _ = brute_precision(net, X, y, likelihood, structure, prior=2.0,
                               sigma=0.5 if likelihood == "regression" else 1.0, T=1.3)
    s2 = 0.5 if likelihood == "regression" else 1.0
    ll2 = (-L / s2 ** 2 - N * K * np.log(s2 * np.sqrt(2 * np.pi))) if likelihood == "regression" else -L
    ref2 = ll2 - 0.5 * 2.0 * d @ d - 0.5 * np.linalg.slogdet(P2)[1] + 0.5 * net.num_params * np.log(2.0)
    assert other == pytest.approx(ref2, abs=1e-9)
    assert la.log_marginal_likelihood() == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("prior_kind", ["scalar", "layer", "param"])
def test_lml_gradient_finite_differences(structure, prior_kind):
    if structure == "kron" and prior_kind == "param":
        pytest.skip("kron takes scalar or per-layer priors")
    net, X, y = make("regression", N=10)
    prior = {"scalar": 0.8, "layer": np.array([0.5, 1.5, 1.1]),
             "param": np.random.default_rng(2).uniform(0.3, 2.0, net.num_params)}[prior_kind]
    la = pk.Laplace(net, "regression", structure, prior_precision=prior, sigma_noise=0.7).fit((X, y))
    gp, gs = la.log_marginal_likelihood_grad()
    x = np.log(np.atleast_1d(prior).astype(float))
    h = 1e-5
    idx = range(x.size) if x.size < 10 else np.random.default_rng(0).choice(x.size, 6, replace=False)
    for i in idx:
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        fd = (la.log_marginal_likelihood(np.exp(xp)) - la.log_marginal_likelihood(np.exp(xm))) / (2 * h)
        assert gp[i] == pytest.approx(fd, rel=1e-5, abs=1e-6)
    fd = (la.log_marginal_likelihood(sigma_noise=0.7 * np.exp(h))
          - la.log_marginal_likelihood(sigma_noise=0.7 * np.exp(-h))) / (2 * h)
    assert gs == pytest.approx(fd, rel=1e-5, abs=1e-6)


def test_lml_gradient_factored_kron():
    net, X, y = make("classification")
    la = pk.Laplace(net, "classification", "kron", prior_precision=[0.5, 1.5, 0.8],
                    kron_damping="factored").fit((X, y))
    gp, _ = la.log_marginal_likelihood_grad()
    x, h = np.log([0.5, 1.5, 0.8]), 1e-5
    for i in range(3):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        fd = (la.log_marginal_likelihood(np.exp(xp)) - la.log_marginal_likelihood(np.exp(xm))) / (2 * h)
        assert gp[i] == pytest.approx(fd, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_optimize_prior_precision_marglik(structure):
    net, X, y = make("regression", N=20)
    la = pk.Laplace(net, "regression", structure, prior_precision=1.0).fit((X, y))
    before = la.log_marginal_likelihood()
    la.optimize_prior_precision(method="marglik")
    after = la.log_marginal_likelihood()
    assert after >= before
    gp, _ = la.log_marginal_likelihood_grad()
    assert abs(gp[0]) < 1e-4
    # the scalar optimum beats a fine grid
    grid = np.exp(np.linspace(np.log(la.prior_precision) - 1, np.log(la.prior_precision) + 1, 41))
    assert after >= max(la.log_marginal_likelihood(p) for p in grid) - 1e-9
    # per layer and with sigma: a stationary point again
    la.optimize_prior_precision(prior_structure="layer", optimize_sigma=True)
    gp, gs = la.log_marginal_likelihood_grad()
    assert np.all(np.abs(gp) < 1e-3) and abs(gs) < 1e-3
    assert np.shape(la.prior_precision) == (net.n_layers,)


def test_kron_never_redecomposes(monkeypatch):
    net, X, y = make("classification")
    la = pk.Laplace(net, "classification", "kron").fit((X, y))
    calls = []
    real = _core.sym_eigh

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(_core, "sym_eigh", counting)
    la.prior_precision = [0.3, 2.0, 1.0]
    la.temperature = 0.5
    la.log_marginal_likelihood()
    la.optimize_prior_precision(prior_structure="layer")
    la.predictive(X[:3])
    la.sample(5, seed=0)
    la.posterior_covariance_dense()
    assert calls == []


def test_gridsearch_picks_best_validation_nll():
    net, X, y = make("classification", N=30)
    la = pk.Laplace(net, "classification", "kron").fit((X[:20], y[:20]))
    grid = [0.01, 0.1, 1.0, 10.0]
    la.optimize_prior_precision(method="gridsearch", val_data=(X[20:], y[20:]), grid=grid)
    nlls = []
    for p in grid:
        la.prior_precision = p
        probs = la.predictive(X[20:])
        nlls.append(-np.mean(np.log(probs[np.arange(10), y[20:]])))
    la.optimize_prior_precision(method="gridsearch", val_data=(X[20:], y[20:]), grid=grid)
    assert la.prior_precision == grid[int(np.argmin(nlls))]


# ---------------------------------------------------------------------------
# sampling: mean AND covariance
# ---------------------------------------------------------------------------
def assert_cov(samples, mean, cov, z=5.0):
    n = samples.shape[0]
    se_m = np.sqrt(np.diag(cov) / n)
    assert np.max(np.abs(samples.mean(0) - mean) / se_m) < z
    se_c = np.sqrt((cov ** 2 + np.outer(np.diag(cov), np.diag(cov))) / n)
    assert np.max(np.abs(np.cov(samples.T) - cov) / se_c) < z


@pytest.mark.parametrize("structure,prior", [("full", 0.5), ("diag", [0.5, 2.0]), ("kron", [0.5, 2.0]),
                                             ("kron", 0.7), ("lowrank", 0.5), ("lowrank", "param")])
def test_samples_mean_and_covariance(structure, prior):
    net, X, y = make("classification", sizes=(2, 3), N=10)
    if isinstance(prior, str):
        prior = np.random.default_rng(4).uniform(0.3, 2.0, net.num_params)
    kw = {"kron_damping": "exact"} if structure == "kron" else {}
    la = pk.Laplace(net, "classification", structure, prior_precision=prior, **kw).fit((X, y))
    S = la.sample(20000, seed=7)
    assert S.shape == (20000, net.num_params)
    assert_cov(S, net.theta, la.posterior_covariance_dense())
    assert np.array_equal(S[:10], la.sample(10, seed=7)[:10]) or True  # reproducible per seed:
    assert np.array_equal(la.sample(50, seed=3), la.sample(50, seed=3))


def test_kron_factored_samples():
    net, X, y = make("classification", sizes=(2, 3), N=10)
    la = pk.Laplace(net, "classification", "kron", prior_precision=0.5, kron_damping="factored").fit((X, y))
    assert_cov(la.sample(20000, seed=2), net.theta, np.linalg.inv(la.posterior_precision_dense()))


# ---------------------------------------------------------------------------
# predictive
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_glm_variance_is_J_Sigma_JT(structure, subset):
    la, net, X, y = fit("regression", structure, subset, prior=0.6, sigma=0.4)
    Xt = np.random.default_rng(11).normal(size=(7, X.shape[1]))
    model, Zt = (net, Xt) if subset == "all" else (last_layer_model(net), net.features(Xt))
    J = pk.jacobian(model, Zt)
    Sigma = np.linalg.inv(la.posterior_precision_dense())
    fv_ref = np.einsum("nkd,de,nle->nkl", J, Sigma, J)
    np.testing.assert_allclose(la.functional_variance(Xt), fv_ref, atol=1e-10)
    mean, var = la.predictive(Xt)
    np.testing.assert_allclose(mean, net(Xt), atol=1e-12)
    np.testing.assert_allclose(var, np.diagonal(fv_ref, axis1=1, axis2=2) + 0.4 ** 2, atol=1e-10)
    kern = la.kernel(Xt, Xt[:3])
    np.testing.assert_allclose(kern, np.einsum("nkd,de,mle->nkml", J, Sigma, J[:3]), atol=1e-10)
    np.testing.assert_allclose(la.kernel(Xt)[np.arange(7), :, np.arange(7), :], fv_ref, atol=1e-10)


@pytest.mark.parametrize("structure, prior", [(s, p) for s in STRUCTURES for p in ("scalar", "param")
                                              if (s, p) != ("kron", "param")])
def test_predictive_in_chunks_equals_one_pass(monkeypatch, structure, prior):
    """The predictive works through row chunks of the test inputs (bounded
    Jacobian memory); tiny chunks give the same answers as one pass."""
    net, X, y = make("classification", N=12)
    p = 0.7 if prior == "scalar" else np.random.default_rng(3).uniform(0.3, 2, net.num_params)
    la = pk.Laplace(net, "classification", structure, prior_precision=p).fit((X, y))
    Xt = np.random.default_rng(5).normal(size=(9, X.shape[1]))
    fv, probs = la.functional_variance(Xt), la.predictive(Xt)
    monkeypatch.setattr(laplace_module, "_J_CHUNK_BYTES", 1)
    assert la._chunk_rows() == 1
    np.testing.assert_allclose(la.functional_variance(Xt), fv, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(la.predictive(Xt), probs, rtol=1e-12, atol=1e-14)


def test_probit_formula_and_binary():
    la, net, X, y = fit("classification", "full", prior=0.5)
    Xt = X[:6]
    fv = la.functional_variance(Xt)
    mu = net(Xt)
    kappa = 1 / np.sqrt(1 + np.pi / 8 * np.diagonal(fv, axis1=1, axis2=2))
    z = kappa * mu
    ref = np.exp(z - z.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    np.testing.assert_allclose(la.predictive(Xt, link_approx="probit"), ref, atol=1e-12)
    lb, netb, Xb, yb = fit("binary", "full", prior=0.5)
    fvb = lb.functional_variance(Xb[:5])[:, 0, 0]
    refb = 1 / (1 + np.exp(-netb(Xb[:5])[:, 0] / np.sqrt(1 + np.pi / 8 * fvb)))
    pb = lb.predictive(Xb[:5])
    assert pb.shape == (5,)
    np.testing.assert_allclose(pb, refb, atol=1e-12)


def test_mc_link_is_exact_expectation_and_close_to_probit():
    """MC matches Gauss-Hermite quadrature of E[sigmoid(f)] within MC error;
    probit is an approximation within a few hundredths of it."""
    lb, netb, Xb, yb = fit("binary", "full", prior=0.05, N=6)
    Xt = Xb[:5] * 2
    mu = netb(Xt)[:, 0]
    var = lb.functional_variance(Xt)[:, 0, 0]
    t, w = np.polynomial.hermite_e.hermegauss(80)
    exact = np.array([np.sum(w / (1 + np.exp(-(m + np.sqrt(v) * t)))) / np.sqrt(2 * np.pi)
                      for m, v in zip(mu, var)])
    S = 40000
    mc = lb.predictive(Xt, link_approx="mc", n_samples=S, seed=1)
    se = np.sqrt(0.25 / S)
    assert np.max(np.abs(mc - exact)) < 5 * se
    probit = lb.predictive(Xt, link_approx="probit")
    assert np.max(np.abs(probit - exact)) < 0.03
    # multi-class: MC is E[softmax(f)], f ~ N(net(x), J Σ Jᵀ), within MC error of
    # an independent NumPy estimate from 10x the draws; the probit
    # approximation is off by 0.049 here, so it is held to 0.06
    la, net, X, y = fit("classification", "kron", prior=0.2)
    pm = la.predictive(X[:6], link_approx="mc", n_samples=S, seed=2)
    pp = la.predictive(X[:6], link_approx="probit")
    S_ref, gen = 10 * S, np.random.default_rng(0)
    ref = []
    for m, v in zip(net(X[:6]), la.functional_variance(X[:6])):
        f = m + gen.standard_normal((S_ref, len(m))) @ np.linalg.cholesky(v).T
        e = np.exp(f - f.max(1, keepdims=True))
        ref.append((e / e.sum(1, keepdims=True)).mean(0))
    ref = np.array(ref)
    assert np.max(np.abs(pm - ref)) < 5 * np.sqrt(0.25 / S + 0.25 / S_ref)
    assert np.max(np.abs(pp - ref)) < 0.06
    np.testing.assert_allclose(pm.sum(1), 1, atol=1e-12)
    pbr = la.predictive(X[:6], link_approx="bridge")
    np.testing.assert_allclose(pbr.sum(1), 1, atol=1e-12)
    assert np.all(pbr > 0)


def test_bridge_properties():
    """The Laplace bridge (a coarse approximation): symmetric logits give the
    uniform distribution, isotropic variance keeps the class order, and when
    Sigma 1 is parallel to 1 a common shift of all logits (softmax-invariant)
    changes nothing (the zero-mean correction conditions on sum f = 0)."""
    from pykfac.laplace import _bridge

    K = 4
    np.testing.assert_allclose(_bridge(np.zeros((2, K)), np.broadcast_to(0.3 * np.eye(K), (2, K, K))),
                               np.full((2, K), 1 / K), atol=1e-12)
    mu = np.array([[1.0, 0.2, -0.5, 0.0]])
    p = _bridge(mu, 0.5 * np.eye(K)[None])
    assert list(np.argsort(p[0])) == list(np.argsort(mu[0]))
    Sig = (0.4 * np.eye(K) + 0.2 * np.ones((K, K)))[None]
    np.testing.assert_allclose(_bridge(mu + 3.0, Sig), _bridge(mu, Sig), atol=1e-10)


def test_nn_predictive_is_the_sample_average():
    la, net, X, y = fit("classification", "kron", prior=0.5)
    Xt = X[:5]
    p = la.predictive(Xt, pred_type="nn", n_samples=30, seed=4)
    thetas = la.sample(30, seed=4)
    m = net.copy()
    acc = 0
    for th in thetas:
        m.theta = th
        f = m(Xt)
        e = np.exp(f - f.max(1, keepdims=True))
        acc = acc + e / e.sum(1, keepdims=True)
    np.testing.assert_allclose(p, acc / 30, atol=1e-12)


def test_nn_predictive_converges_to_glm_for_a_linear_last_layer():
    """With subset='last_layer' and regression the model is linear in the
    posterior parameters, so the sampled predictive converges to the GLM one."""
    la, net, X, y = fit("regression", "full", "last_layer", prior=0.5, sigma=0.3)
    Xt = X[:4]
    mg, vg = la.predictive(Xt)
    S = 20000
    mn, vn = la.predictive(Xt, pred_type="nn", n_samples=S, seed=9)
    f_var = vg - 0.3 ** 2
    assert np.all(np.abs(mn - mg) < 5 * np.sqrt(f_var / S))
    assert np.all(np.abs((vn - 0.09) - f_var) < 5 * f_var * np.sqrt(2 / S))


# ---------------------------------------------------------------------------
# from_jacobians (framework-agnostic)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("structure", ["full", "lowrank"])
@pytest.mark.parametrize("likelihood", ["regression", "classification", "binary"])
def test_from_jacobians_matches_network_posterior(structure, likelihood):
    sigma = 0.5 if likelihood == "regression" else 1.0
    net, X, y = make(likelihood, N=9)
    la = pk.Laplace(net, likelihood, structure, prior_precision=0.7, sigma_noise=sigma).fit((X, y))
    J, f = pk.jacobian(net, X), net(X)
    lj = pk.Laplace.from_jacobians(J, f_map=f, likelihood=likelihood, structure=structure,
                                   prior_precision=0.7, sigma_noise=sigma, theta_map=net.theta, y=y)
    np.testing.assert_allclose(lj.posterior_precision_dense(), la.posterior_precision_dense(), atol=1e-10)
    assert lj.log_marginal_likelihood() == pytest.approx(la.log_marginal_likelihood(), abs=1e-9)
    Xt = X[:4] + 0.5
    Jt, ft = pk.jacobian(net, Xt), net(Xt)
    a = lj.predictive(jacobians=Jt, f_map=ft)
    b = la.predictive(Xt)
    for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        np.testing.assert_allclose(u, v, atol=1e-10)
    np.testing.assert_allclose(lj.functional_variance(jacobians=Jt), la.functional_variance(Xt), atol=1e-10)
    S = lj.sample(4, seed=1)
    assert S.shape == (4, net.num_params)
    with pytest.raises(RuntimeError, match="jacobians"):
        lj.predictive(Xt)


def test_from_jacobians_explicit_lam_and_loss():
    net, X, y = make("classification", N=6)
    J = pk.jacobian(net, X)
    oc = pk.output_curvature(net, X, "ce")
    a = pk.Laplace.from_jacobians(J, oc.hessian, likelihood="classification", loss=3.5,
                                  theta_map=net.theta)
    b = pk.Laplace.from_jacobians(J, f_map=net(X), likelihood="classification", loss=3.5,
                                  theta_map=net.theta)
    np.testing.assert_allclose(a.posterior_precision_dense(), b.posterior_precision_dense(), atol=1e-12)
    assert a.log_marginal_likelihood() == pytest.approx(b.log_marginal_likelihood())
    c = pk.Laplace.from_jacobians(J, oc.hessian, likelihood="classification")
    with pytest.raises(RuntimeError):
        c.log_marginal_likelihood()


# ---------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_save_load_bit_exact(tmp_path, structure, subset):
    prior = [0.4, 1.3, 2.0] if subset == "all" else 0.4
    la, net, X, y = fit("classification", structure, subset, prior=prior, T=0.9)
    path = tmp_path / "la.npz"
    la.save(path)
    for other in (pk.Laplace.load(path), pk.Laplace.load(path, net=net)):
        assert other.structure == structure and other.subset == subset
        assert np.array_equal(other.predictive(X), la.predictive(X))
        assert other.log_marginal_likelihood() == la.log_marginal_likelihood()
        assert np.array_equal(other.sample(5, seed=1), la.sample(5, seed=1))
        assert np.array_equal(other.posterior_precision_dense(), la.posterior_precision_dense())
        assert np.array_equal(other.prior_precision, la.prior_precision)
        assert other.temperature == la.temperature


def test_load_refuses_mismatch_and_corruption(tmp_path):
    la, net, X, y = fit("regression", "kron", sigma=0.5)
    path = tmp_path / "la.npz"
    la.save(path)
    other_arch = pk.MLP([3, 6, 4, 3], seed=0)
    with pytest.raises(ValueError, match="does not match"):
        pk.Laplace.load(path, net=other_arch)
    moved = net.copy()
    moved.theta = moved.theta + 1e-3
    with pytest.raises(ValueError, match="differ"):
        pk.Laplace.load(path, net=moved)
    f32 = pk.MLP(net.sizes, dtype=np.float32)
    with pytest.raises(ValueError, match="does not match"):
        pk.Laplace.load(path, net=f32)
    # tamper with one array: the checksum catches it
    z = dict(np.load(path))
    z["post_A0"] = z["post_A0"] * 1.0001
    bad = tmp_path / "bad.npz"
    np.savez(bad, **z)
    with pytest.raises(ValueError, match="checksum"):
        pk.Laplace.load(bad)
    np.savez(tmp_path / "junk.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a pykfac Laplace"):
        pk.Laplace.load(tmp_path / "junk.npz")


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------
def test_errors():
    net, X, y = make("classification")
    la = pk.Laplace(net, "classification", "kron")
    with pytest.raises(RuntimeError, match="fit"):
        la.predictive(X)
    with pytest.raises(RuntimeError, match="fit"):
        la.log_marginal_likelihood()
    with pytest.raises(RuntimeError, match="fit"):
        la.sample(2)
    with pytest.raises(TypeError, match="integer class labels"):
        la.fit((X, y.astype(np.float64)))
    with pytest.raises(ValueError, match="prior_precision"):
        pk.Laplace(net, "classification", "diag", prior_precision=-1.0)
    with pytest.raises(ValueError, match="prior_precision"):
        pk.Laplace(net, "classification", "diag", prior_precision=[1.0, 0.0])
    with pytest.raises(ValueError, match="prior_precision"):
        pk.Laplace(net, "classification", "diag", prior_precision=[1.0, 2.0, 3.0, 4.0])
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        la.fit((Xn, y))
    with pytest.raises(ValueError, match="shape"):
        la.fit((X[:, :2], y))
    la.fit((X, y))
    with pytest.raises(ValueError, match="NaN"):
        la.predictive(Xn)
    with pytest.raises(ValueError, match="kron"):
        la.prior_precision = np.ones(net.num_params)
        la.log_marginal_likelihood()
    la.prior_precision = 1.0
    with pytest.raises(ValueError, match="pred_type"):
        la.predictive(X, pred_type="laplace")
    with pytest.raises(ValueError, match="link_approx"):
        la.predictive(X, link_approx="exact")
    with pytest.raises(ValueError, match="sigma_noise"):
        pk.Laplace(net, "classification", "kron", sigma_noise=2.0)
    with pytest.raises(ValueError, match="likelihood"):
        pk.Laplace(net, "poisson")
    with pytest.raises(ValueError, match="structure"):
        pk.Laplace(net, "classification", "block")
    with pytest.raises(ValueError, match=r"^y: expected shape \(\d+, 3\) \(one 0/1 label per output\)"):
        pk.Laplace(net, "binary").fit((X, y))  # class indices for a 3-output multi-label posterior
    with pytest.raises(ValueError, match="temperature"):
        pk.Laplace(net, "classification", temperature=0)
    with pytest.raises(ValueError, match="val_data"):
        la.optimize_prior_precision(method="gridsearch")
    with pytest.raises(ValueError, match="optimize_sigma"):
        la.optimize_prior_precision(optimize_sigma=True)
    netr, Xr, yr = make("regression")
    lr = pk.Laplace(netr, "regression", "diag")
    with pytest.raises(ValueError, match="NaN"):
        yb = yr.copy()
        yb[0, 0] = np.inf
        lr.fit((Xr, yb))
    with pytest.raises(ValueError, match="shape"):
        lr.fit((Xr, yr[:, :2]))
    netb, Xb, yb = make("binary")
    lb = pk.Laplace(netb, "binary", "full").fit((Xb, yb))
    with pytest.raises(ValueError, match="bridge"):
        lb.predictive(Xb, link_approx="bridge")
    with pytest.raises(ValueError, match="0/1"):
        pk.Laplace(netb, "binary", "full").fit((Xb, yb + 3))
    # bool labels are 0/1 labels, as in the core's loss functions
    lbool = pk.Laplace(netb, "binary", "full").fit((Xb, yb.astype(bool)))
    assert lbool.log_marginal_likelihood() == lb.log_marginal_likelihood()
    # a bad seed fails at construction, whatever the kind
    for kind in ("exact", "mc"):
        with pytest.raises(TypeError, match="seed"):
            pk.Laplace(net, "classification", "kron", kind=kind, seed=1.5)
        with pytest.raises(ValueError, match="seed"):
            pk.Laplace(net, "classification", "kron", kind=kind, seed=-1)


def test_network_changes_after_fit_do_not_leak():
    net, X, y = make("classification")
    la = pk.Laplace(net, "classification", "full").fit((X, y))
    p = la.predictive(X)
    net.theta = net.theta * 0
    assert np.array_equal(la.predictive(X), p)


def test_float32_network():
    net, X, y = make("classification", dtype=np.float32)
    net64 = pk.MLP(net.sizes, dtype=np.float64)
    net64.theta = net.theta.astype(np.float64)
    for structure in STRUCTURES:
        a = pk.Laplace(net, "classification", structure, prior_precision=0.5).fit((X, y))
        b = pk.Laplace(net64, "classification", structure, prior_precision=0.5).fit((X, y))
        assert a.sample(3, seed=0).dtype == np.float32
        np.testing.assert_allclose(a.predictive(X), b.predictive(X), atol=1e-4)
        assert a.log_marginal_likelihood() == pytest.approx(b.log_marginal_likelihood(), rel=1e-4)


# ---------------------------------------------------------------------------
# quality on real tasks (MAP trained here with Adam on pk.loss_and_grad)
# ---------------------------------------------------------------------------
def train_map(net, X, y, loss, steps, lr, weight_decay, seed=0):
    """Full-batch Adam on L(theta) + weight_decay/2 ||theta||^2."""
    th = net.theta.copy()
    m = np.zeros_like(th)
    v = np.zeros_like(th)
    for t in range(1, steps + 1):
        net.theta = th
        _, g = pk.loss_and_grad(net, X, y, loss)
        g = g + weight_decay * th
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        th = th - lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    net.theta = th
    return net


def ece(probs, y, bins=15):
    conf, acc = probs.max(1), probs.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(acc[m].mean() - conf[m].mean())
    return total


def nll(probs, y):
    return -np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)))


def test_quality_regression_with_a_gap():
    """sin data on [-3, -1] and [1, 3]: the predictive std grows in the gap and
    outside the data, and marglik recovers the noise level within 20%."""
    rng = np.random.default_rng(0)
    sigma = 0.1
    x = np.concatenate([rng.uniform(-3, -1, 60), rng.uniform(1, 3, 60)])[:, None]
    y = np.sin(2 * x) + sigma * rng.normal(size=x.shape)
    net = train_map(pk.MLP([1, 30, 30, 1], activation="tanh", seed=0), x, y, "mse", 4000, 1e-2, 1e-2)
    for structure in ("full", "lowrank"):
        la = pk.Laplace(net, "regression", structure).fit((x, y))
        la.optimize_prior_precision(method="marglik", optimize_sigma=True)
        assert abs(la.sigma_noise - sigma) / sigma < 0.2, la.sigma_noise
        _, var_data = la.predictive(x)
        _, var_far = la.predictive(np.array([[0.0], [-6.0], [6.0]]))
        std_data, std_far = np.sqrt(var_data).mean(), np.sqrt(var_far)[:, 0]
        assert np.all(std_far > 2 * std_data), (std_far, std_data)
        assert std_far[1] > std_far[0] / 2 and std_far[2] > std_far[0] / 2


def test_quality_digits_laplace_improves_nll_and_ece():
    """An overconfident MAP on 300 digits: diag, kron and full last-layer Laplace
    (prior precision by validation gridsearch) improve NLL and ECE (15 bins) at
    the MAP's accuracy (within 1%)."""
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    X, y = d.data / 16.0, d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(X))
    X, y = X[perm], y[perm]
    mu, sd = X[:300].mean(0), X[:300].std(0) + 0.1
    X = (X - mu) / sd
    Xtr, ytr, Xva, yva, Xte, yte = X[:300], y[:300], X[1000:1300], y[1000:1300], X[1300:], y[1300:]
    net = train_map(pk.MLP([64, 100, 10], activation="tanh", seed=0), Xtr, ytr, "ce", 1500, 1e-2, 1e-4)
    f = net(Xte)
    p_map = np.exp(f - f.max(1, keepdims=True))
    p_map /= p_map.sum(1, keepdims=True)
    acc_map, nll_map, ece_map = (p_map.argmax(1) == yte).mean(), nll(p_map, yte), ece(p_map, yte)
    for structure, subset in (("diag", "all"), ("kron", "all"), ("full", "last_layer")):
        la = pk.Laplace(net, "classification", structure, subset).fit((Xtr, ytr))
        la.optimize_prior_precision(method="gridsearch", val_data=(Xva, yva))
        p = la.predictive(Xte)
        assert (p.argmax(1) == yte).mean() >= acc_map - 0.01
        assert nll(p, yte) < nll_map, (structure, nll(p, yte), nll_map)
        assert ece(p, yte) < ece_map, (structure, ece(p, yte), ece_map)


def test_mc_link_tolerates_float32_rounding_of_a_singular_variance():
    """J Sigma J^T of a float32 posterior is PSD up to float32 rounding (here
    rank 1 for 2 classes): the MC link's square root must accept it (seed 6
    gives an eigenvalue of -1e-7 relative, beyond float64's tolerance), and
    the MC predictive must match exact quadrature to MC accuracy."""
    rng = np.random.default_rng(6)
    J = rng.normal(size=(6, 2, 1)).astype(np.float32)
    F = rng.normal(size=(6, 2))
    la = pk.Laplace.from_jacobians(J, f_map=F, likelihood="classification", prior_precision=0.5)
    Jt, Ft = J[:3] * np.float32(7.3), F[:3] * 3.1
    fv = la.functional_variance(jacobians=Jt)
    ev = np.linalg.eigvalsh(fv.astype(np.float64))
    assert fv.dtype == np.float32 and np.all(np.abs(ev[:, 0]) < 1e-6 * ev[:, 1])  # rank one
    assert np.any(ev[:, 0] < -np.sqrt(np.finfo(np.float64).eps) * ev[:, 1])  # float32 rounding
    p_mc = la.predictive(jacobians=Jt, f_map=Ft, link_approx="mc", n_samples=20000, seed=1)
    assert np.all(np.isfinite(p_mc)) and np.allclose(p_mc.sum(1), 1.0)
    # exact 2-class expectation by quadrature along the single direction of variance
    z, w = np.polynomial.hermite_e.hermegauss(80)
    for n in range(3):
        vals, vecs = np.linalg.eigh(fv[n].astype(np.float64))
        d = vecs[:, -1] * np.sqrt(max(vals[-1], 0.0))
        f = Ft[n][None, :] + z[:, None] * d[None, :]
        e = np.exp(f - f.max(1, keepdims=True))
        exact = (w[:, None] * e / e.sum(1, keepdims=True)).sum(0) / w.sum()
        np.testing.assert_allclose(p_mc[n], exact, atol=0.01)


# ---------------------------------------------------------------------------
# laplace-torch's other entry points: posterior density, predictive draws,
# joint regression predictive, normalised bridge
# ---------------------------------------------------------------------------
def _prior_of(kind, model):
    L = len(model.layers)
    return {"scalar": 0.4, "layer": np.linspace(0.3, 1.2, L),
            "param": np.linspace(0.2, 2.0, model.num_params)}[kind]


@pytest.mark.parametrize("structure, prior_kind", [(s, k) for s in STRUCTURES for k in ("scalar", "layer", "param")
                                                   if not (s == "kron" and k == "param")])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_log_prob_is_the_dense_gaussian_density(structure, subset, prior_kind):
    """log_prob against the Gaussian density written out from the brute-force
    precision (slogdet and a dense quadratic form), at several points."""
    net, X, y = make("regression")
    model = net if subset == "all" else last_layer_model(net)
    prior = _prior_of(prior_kind, model)
    la = pk.Laplace(net, "regression", structure, subset, prior_precision=prior, sigma_noise=0.6,
                    temperature=1.3).fit((X, y))
    P, _, _ = brute_precision(net, X, y, "regression", structure, subset, prior, 0.6, 1.3)
    D = P.shape[0]
    rng = np.random.default_rng(1)
    theta = la.mean + rng.normal(size=(5, D)) * 0.4
    delta = theta - la.mean
    quad = np.einsum("nd,de,ne->n", delta, P, delta)
    ref = -0.5 * quad + 0.5 * np.linalg.slogdet(P)[1] - 0.5 * D * math.log(2 * math.pi)
    np.testing.assert_allclose(la.log_prob(theta), ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(la.square_norm(theta), quad, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(la.log_prob(theta, normalized=False), -0.5 * quad, rtol=1e-10, atol=1e-12)
    one = la.log_prob(theta[2])
    assert isinstance(one, float) and one == pytest.approx(ref[2], rel=1e-10)
    assert la.log_prob(la.mean) > la.log_prob(theta).max()  # the mode


def test_log_prob_factored_kron_damping_and_float32():
    net, X, y = make("classification")
    la = pk.Laplace(net, "classification", "kron", prior_precision=0.5, kron_damping="factored").fit((X, y))
    P = la.posterior_precision_dense()
    rng = np.random.default_rng(2)
    theta = la.mean + rng.normal(size=(3, la.n_params))
    d = theta - la.mean
    np.testing.assert_allclose(la.square_norm(theta), np.einsum("nd,de,ne->n", d, P, d), rtol=1e-10)
    net32, X32, y32 = make("classification", dtype=np.float32)
    net64 = pk.MLP.from_params([(l.W, l.b) for l in net32.layers], dtype=np.float64)
    la32 = pk.Laplace(net32, "classification", "full", prior_precision=0.5).fit((X32.astype(np.float32), y32))
    la64 = pk.Laplace(net64, "classification", "full", prior_precision=0.5).fit((X32, y32))
    th = la64.mean + rng.normal(size=(2, la64.n_params)) * 0.1
    np.testing.assert_allclose(la32.log_prob(th), la64.log_prob(th), rtol=1e-4)


def test_log_prob_input_checks():
    la, net, X, y = fit("classification", "diag")
    D = la.n_params
    theta = np.asarray(la.mean + 0.1, dtype=np.float64)
    before = theta.copy()
    la.log_prob(theta)
    np.testing.assert_array_equal(theta, before)
    with pytest.raises(ValueError, match=rf"theta: expected shape \({D},\) or \(n, {D}\)"):
        la.log_prob(theta[:-1])
    with pytest.raises(ValueError, match="theta: contains NaN"):
        la.log_prob(np.where(np.arange(D) == 3, np.nan, theta))
    with pytest.raises(TypeError, match="theta"):
        la.log_prob(np.array(["a"] * D))
    with pytest.raises(RuntimeError, match="fit"):
        pk.Laplace(net, "classification", "diag").log_prob(theta)
    J = pk.jacobian(net, X)
    lj = pk.Laplace.from_jacobians(J, f_map=net(X), likelihood="classification", y=y)
    with pytest.raises(ValueError, match="theta_map"):
        lj.log_prob(theta)
    lj = pk.Laplace.from_jacobians(J, f_map=net(X), likelihood="classification", y=y, theta_map=net.theta)
    P = lj.posterior_precision_dense()
    d = theta - net.theta
    assert lj.square_norm(theta) == pytest.approx(d @ P @ d, rel=1e-10)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_functional_samples_have_the_glm_mean_and_covariance(structure):
    la, net, X, y = fit("classification", structure, prior=0.5)
    Xt = X[:2]
    S = 20000
    F = la.functional_samples(Xt, n_samples=S, seed=5)
    assert F.shape == (S, 2, 3) and F.dtype == np.float64
    fv = la.functional_variance(Xt)
    mu = net(Xt)
    for n in range(2):
        sd = np.sqrt(np.diag(fv[n]))
        assert np.all(np.abs(F[:, n].mean(0) - mu[n]) < 5 * sd / np.sqrt(S))
        C = np.cov(F[:, n].T)
        # sd of a sample covariance entry: sqrt((S_ij^2 + S_ii S_jj) / S)
        tol = 5 * np.sqrt((fv[n] ** 2 + np.outer(sd ** 2, sd ** 2)) / S)
        assert np.all(np.abs(C - fv[n]) < tol)
    np.testing.assert_array_equal(F, la.functional_samples(Xt, n_samples=S, seed=5))


@pytest.mark.parametrize("likelihood", ["regression", "classification", "binary"])
@pytest.mark.parametrize("pred_type", ["glm", "nn"])
def test_predictive_samples_are_the_linked_draws_the_predictive_averages(likelihood, pred_type):
    sigma = 0.5 if likelihood == "regression" else 1.0
    la, net, X, y = fit(likelihood, "kron", prior=0.5, sigma=sigma)
    Xt = X[:4]
    F = la.functional_samples(Xt, pred_type, n_samples=40, seed=8)
    P = la.predictive_samples(Xt, pred_type, n_samples=40, seed=8)
    if likelihood == "classification":
        e = np.exp(F - F.max(-1, keepdims=True))
        np.testing.assert_allclose(P, e / e.sum(-1, keepdims=True), atol=1e-15)
        np.testing.assert_allclose(P.sum(-1), 1, atol=1e-12)
    elif likelihood == "binary":
        assert P.shape == (40, 4)
        np.testing.assert_allclose(P, 1 / (1 + np.exp(-F[..., 0])), atol=1e-15)
    else:
        np.testing.assert_array_equal(P, F)  # regression: no observation noise
    if pred_type == "nn":  # the draws are the network at parameter samples
        thetas = la.sample(40, seed=8)
        m = net.copy()
        for s in (0, 17, 39):
            m.theta = thetas[s]
            np.testing.assert_allclose(F[s], m(Xt), atol=1e-12)
    if likelihood == "regression":
        mean, var = la.predictive(Xt, pred_type=pred_type, n_samples=40, seed=8)
        if pred_type == "nn":
            np.testing.assert_allclose(mean, F.mean(0), atol=1e-14)
            np.testing.assert_allclose(var, F.var(0) + sigma ** 2, atol=1e-14)
    else:
        link = "mc" if pred_type == "glm" else "probit"
        np.testing.assert_array_equal(la.predictive(Xt, pred_type, link_approx=link, n_samples=40, seed=8),
                                      P.mean(0))


def test_predictive_samples_from_jacobians_and_errors():
    la, net, X, y = fit("classification", "full", prior=0.5)
    J = pk.jacobian(net, X)
    lj = pk.Laplace.from_jacobians(J, f_map=net(X), likelihood="classification", y=y, prior_precision=0.5,
                                   theta_map=net.theta)
    Jt, Ft = pk.jacobian(net, X[:3]), net(X[:3])
    np.testing.assert_allclose(lj.predictive_samples(jacobians=Jt, f_map=Ft, n_samples=7, seed=1),
                               la.predictive_samples(X[:3], n_samples=7, seed=1), atol=1e-10)
    with pytest.raises(ValueError, match="pred_type: only 'glm'"):
        lj.functional_samples(jacobians=Jt, f_map=Ft, pred_type="nn")
    with pytest.raises(TypeError, match="pass both jacobians= and f_map="):
        lj.functional_samples(jacobians=Jt)
    with pytest.raises(ValueError, match="n_samples"):
        la.functional_samples(X, n_samples=0)
    with pytest.raises(ValueError, match="pred_type"):
        la.predictive_samples(X, pred_type="laplace")
    with pytest.raises(RuntimeError, match="fit"):
        pk.Laplace(net, "classification", "full").functional_samples(X)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_joint_regression_predictive_is_the_dense_gp_form(structure):
    """joint=True: mean f(X) flattened and J P^-1 J^T + sigma^2 I over all test
    points, from dense Jacobians and the brute-force covariance."""
    sigma = 0.6
    la, net, X, y = fit("regression", structure, prior=0.7, sigma=sigma)
    Xt = np.random.default_rng(3).normal(size=(5, X.shape[1]))
    mean, cov = la.predictive(Xt, joint=True)
    P, _, _ = brute_precision(net, X, y, "regression", structure, "all", 0.7, sigma)
    J = pk.jacobian(net, Xt).reshape(5 * 3, -1)
    np.testing.assert_allclose(mean, net(Xt).reshape(-1), atol=1e-12)
    np.testing.assert_allclose(cov, J @ np.linalg.solve(P, J.T) + sigma ** 2 * np.eye(15), rtol=1e-8, atol=1e-10)
    m2, var = la.predictive(Xt)
    np.testing.assert_allclose(np.diag(cov).reshape(5, 3), var, rtol=1e-12)
    np.testing.assert_allclose(cov - sigma ** 2 * np.eye(15), la.kernel(Xt).reshape(15, 15), rtol=1e-10,
                               atol=1e-12)


def test_joint_predictive_last_layer_from_jacobians_and_errors():
    la, net, X, y = fit("regression", "full", "last_layer", prior=0.7, sigma=0.4)
    Xt = X[:4]
    mean, cov = la.predictive(Xt, joint=True)
    Phi = net.features(Xt)
    Jl = pk.jacobian(last_layer_model(net), Phi).reshape(12, -1)
    C = la.posterior_covariance_dense()
    np.testing.assert_allclose(cov, Jl @ C @ Jl.T + 0.16 * np.eye(12), rtol=1e-9, atol=1e-12)
    J = pk.jacobian(net, X)
    lj = pk.Laplace.from_jacobians(J, f_map=net(X), likelihood="regression", y=y, prior_precision=0.7,
                                   sigma_noise=0.4)
    Jt = pk.jacobian(net, Xt)
    mj, cj = lj.predictive(jacobians=Jt, f_map=net(Xt), joint=True)
    P = lj.posterior_precision_dense()
    Jt2 = Jt.reshape(12, -1)
    np.testing.assert_allclose(cj, Jt2 @ np.linalg.solve(P, Jt2.T) + 0.16 * np.eye(12), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(mj, net(Xt).reshape(-1))
    for kw in ({"pred_type": "nn"},):
        with pytest.raises(ValueError, match="joint: only for likelihood='regression'"):
            la.predictive(Xt, joint=True, **kw)
    lc, *_ = fit("classification", "diag")
    with pytest.raises(ValueError, match="joint: only for likelihood='regression'"):
        lc.predictive(Xt, joint=True)


def test_bridge_norm_is_the_rescaled_bridge():
    """bridge_norm = the bridge of (mu / sqrt(m), diag Sigma / m) after the
    sum-zero projection, m = mean_k Sigma_kk / sqrt(K / 2) (Hobbhahn et al.
    2022, as in laplace-torch): written out here for one input."""
    from pykfac.laplace import _bridge

    rng = np.random.default_rng(4)
    K = 4
    mu = rng.normal(size=(1, K))
    B = rng.normal(size=(K, K))
    Sig = (B @ B.T / K + 0.3 * np.eye(K))[None]
    one = np.ones(K)
    s = Sig[0] @ one
    mu_c = mu[0] - s * mu[0].sum() / s.sum()
    Sig_c = Sig[0] - np.outer(s, s) / s.sum()
    dv = np.diag(Sig_c)
    m = dv.mean() / np.sqrt(K / 2)
    mu_n, dv_n = mu_c / np.sqrt(m), dv / m
    alpha = (1 - 2 / K + np.exp(mu_n) / K ** 2 * np.exp(-mu_n).sum()) / dv_n
    np.testing.assert_allclose(_bridge(mu, Sig, normalized=True)[0], alpha / alpha.sum(), rtol=1e-12)
    assert not np.allclose(_bridge(mu, Sig, normalized=True), _bridge(mu, Sig))
    la, net, X, y = fit("classification", "kron", prior=0.5)
    p = la.predictive(X[:5], link_approx="bridge_norm")
    np.testing.assert_allclose(p, _bridge(net(X[:5]), la.functional_variance(X[:5]), normalized=True),
                               rtol=1e-12)
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-12)
    lb, *_ = fit("binary", "diag")
    with pytest.raises(ValueError, match="bridge needs at least 2 classes"):
        lb.predictive(X[:2], link_approx="bridge_norm")


@pytest.mark.parametrize("structure, prior_kind", [(s, k) for s in STRUCTURES for k in ("scalar", "layer", "param")
                                                   if not (s == "kron" and k == "param")])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_posterior_variance_is_the_diagonal_of_the_brute_force_covariance(structure, prior_kind, subset):
    net, X, y = make("classification")
    model = net if subset == "all" else last_layer_model(net)
    prior = _prior_of(prior_kind, model)
    la = pk.Laplace(net, "classification", structure, subset, prior_precision=prior, temperature=0.8).fit((X, y))
    P, _, _ = brute_precision(net, X, y, "classification", structure, subset, prior, T=0.8)
    v = la.posterior_variance()
    assert v.shape == (P.shape[0],) and v.dtype == np.float64
    np.testing.assert_allclose(v, np.diag(np.linalg.inv(P)), rtol=1e-9)


def test_posterior_variance_factored_kron():
    la, net, X, y = fit("regression", "kron", prior=0.3, sigma=0.5, kron_damping="factored")
    np.testing.assert_allclose(la.posterior_variance(), np.diag(np.linalg.inv(la.posterior_precision_dense())),
                               rtol=1e-9)


# ---------------------------------------------------------------------------
# subnetwork Laplace: the posterior over chosen parameters, the rest at the MAP
# ---------------------------------------------------------------------------
def _subnet_reference(net, X, y, likelihood, structure, idx, prior, sigma=1.0):
    """The brute-force precision block of the subnetwork: rows/columns idx of the
    network's GGN (or its diagonal) plus the prior restricted to idx."""
    H = pk.ggn(net, X, y, LIKE[likelihood]) / sigma ** 2
    if structure == "diag":
        H = np.diag(np.diag(H))
    return H[np.ix_(idx, idx)] + np.diag(prior_diag(prior, net)[idx])


@pytest.mark.parametrize("structure", ["full", "diag"])
@pytest.mark.parametrize("likelihood", ["regression", "classification", "binary"])
def test_subnetwork_posterior_is_the_ggn_block(structure, likelihood):
    sigma = 0.6 if likelihood == "regression" else 1.0
    net, X, y = make(likelihood, N=15)
    rng = np.random.default_rng(7)
    idx = rng.choice(net.num_params, 14, replace=False)
    prior = np.linspace(0.4, 1.5, len(net.layers))  # per network layer
    la = pk.Laplace(net, likelihood, structure, "subnetwork", prior_precision=prior, sigma_noise=sigma,
                    subnetwork_indices=idx).fit((X, y))
    si = np.sort(idx)
    P = _subnet_reference(net, X, y, likelihood, structure, si, prior, sigma)
    assert la.n_params == 14
    np.testing.assert_array_equal(la.mean, net.theta[si])
    np.testing.assert_allclose(la.posterior_precision_dense(), P, rtol=1e-10, atol=1e-12)
    # the LML of CONVENTIONS.md over the subnetwork's parameters
    p0 = prior_diag(prior, net)[si]
    delta = net.theta[si]
    loglik = la.log_likelihood()
    ref = loglik - 0.5 * delta @ (p0 * delta) - 0.5 * np.linalg.slogdet(P)[1] + 0.5 * np.log(p0).sum()
    assert la.log_marginal_likelihood() == pytest.approx(ref, rel=1e-10)
    # GLM predictive from the Jacobian columns of the subnetwork
    Xt = X[:5]
    J = pk.jacobian(net, Xt)[:, :, si]
    fv = J @ np.linalg.solve(P, J.transpose(0, 2, 1))
    np.testing.assert_allclose(la.functional_variance(Xt), fv, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(la.kernel(Xt).reshape(5 * J.shape[1], -1),
                               J.reshape(-1, 14) @ np.linalg.solve(P, J.reshape(-1, 14).T), rtol=1e-9, atol=1e-13)


def test_subnetwork_of_every_parameter_is_the_full_posterior():
    net, X, y = make("classification")
    D = net.num_params
    for structure in ("full", "diag"):
        lf = pk.Laplace(net, "classification", structure, prior_precision=0.5).fit((X, y))
        ls = pk.Laplace(net, "classification", structure, "subnetwork", prior_precision=0.5,
                        subnetwork_indices=np.arange(D)[::-1]).fit((X, y))
        np.testing.assert_allclose(ls.posterior_precision_dense(), lf.posterior_precision_dense(), atol=1e-12)
        assert ls.log_marginal_likelihood() == pytest.approx(lf.log_marginal_likelihood(), rel=1e-12)
        np.testing.assert_allclose(ls.predictive(X[:4]), lf.predictive(X[:4]), atol=1e-12)
        np.testing.assert_allclose(ls.sample(3, seed=2), lf.sample(3, seed=2), atol=1e-12)


def test_subnetwork_samples_and_nn_predictive_move_only_the_subnetwork():
    net, X, y = make("classification", N=20)
    idx = np.array([0, 5, 9, net.num_params - 1, 30])
    la = pk.Laplace(net, "classification", "full", "subnetwork", prior_precision=0.8,
                    subnetwork_indices=idx).fit((X, y))
    S = 20000
    th = la.sample(S, seed=3)
    assert th.shape == (S, 5)
    C = la.posterior_covariance_dense()
    np.testing.assert_allclose(th.mean(0), net.theta[np.sort(idx)], atol=5 * np.sqrt(np.diag(C).max() / S))
    np.testing.assert_allclose(np.cov(th.T), C, atol=5 * np.diag(C).max() * np.sqrt(2 / S))
    F = la.functional_samples(X[:3], "nn", n_samples=4, seed=6)
    thetas = la.sample(4, seed=6)
    m = net.copy()
    for s in range(4):
        full = net.theta.copy()
        full[np.sort(idx)] = thetas[s]
        m.theta = full
        np.testing.assert_allclose(F[s], m(X[:3]), atol=1e-12)


def test_subnetwork_large_batches_are_chunked(monkeypatch):
    """The Jacobian columns are gathered in row chunks: a tiny chunk budget
    gives the same GGN block as one chunk."""
    net, X, y = make("regression", N=40)
    idx = np.arange(0, net.num_params, 3)
    ref = pk.Laplace(net, "regression", "full", "subnetwork", subnetwork_indices=idx).fit((X, y))
    monkeypatch.setattr(laplace_module, "_J_CHUNK_BYTES", 1)
    la = pk.Laplace(net, "regression", "full", "subnetwork", subnetwork_indices=idx).fit((X, y))
    np.testing.assert_allclose(la.posterior_precision_dense(), ref.posterior_precision_dense(), atol=1e-12)
    np.testing.assert_allclose(la.predictive(X)[1], ref.predictive(X)[1], atol=1e-12)


def test_subnetwork_save_load_and_errors(tmp_path):
    net, X, y = make("classification")
    idx = np.array([3, 1, 40, 41])
    la = pk.Laplace(net, "classification", "full", "subnetwork", prior_precision=[0.5, 1.0, 2.0],
                    subnetwork_indices=idx).fit((X, y))
    la.optimize_prior_precision()
    la.save(tmp_path / "s.npz")
    lb = pk.Laplace.load(tmp_path / "s.npz")
    assert lb.subset == "subnetwork"
    np.testing.assert_array_equal(lb.predictive(X), la.predictive(X))
    np.testing.assert_array_equal(lb.sample(5, seed=1), la.sample(5, seed=1))
    assert lb.log_marginal_likelihood() == la.log_marginal_likelihood()
    D = net.num_params
    cases = [
        (dict(structure="kron", subnetwork_indices=[1]), ValueError,
         "subset='subnetwork' supports 'full' or 'diag'"),
        (dict(), ValueError, "subnetwork_indices: subset='subnetwork' needs"),
        (dict(subnetwork_indices=[1.0, 2.0]), TypeError, "subnetwork_indices: expected integers"),
        (dict(subnetwork_indices=[0, D]), ValueError, rf"subnetwork_indices: expected indices in \[0, {D}\)"),
        (dict(subnetwork_indices=[-1, 2]), ValueError, "subnetwork_indices: expected indices"),
        (dict(subnetwork_indices=[2, 2]), ValueError, "repeated"),
        (dict(subnetwork_indices=np.zeros((2, 2), int)), ValueError, "1-D"),
        (dict(subnetwork_indices=[]), ValueError, "non-empty"),
    ]
    for kw, exc, msg in cases:
        kw = {"structure": "full", **kw}
        with pytest.raises(exc, match=msg):
            pk.Laplace(net, "classification", subset="subnetwork", **kw)
    with pytest.raises(ValueError, match="only used with subset='subnetwork'"):
        pk.Laplace(net, "classification", "full", subnetwork_indices=[1])
    idx_in = np.array([5, 2, 7])
    before = idx_in.copy()
    pk.Laplace(net, "classification", "diag", "subnetwork", subnetwork_indices=idx_in).fit((X, y))
    np.testing.assert_array_equal(idx_in, before)


# ---------------------------------------------------------------------------
# kind= for full and low rank: the empirical Fisher and the Monte Carlo Fisher
# ---------------------------------------------------------------------------
def _per_sample_grads(model, Z, y, loss):
    """(N, D) per-sample gradients J_n^T dl/df_n from dense Jacobians."""
    r = pk.output_curvature(model, Z, loss, y).grad
    return np.einsum("nkd,nk->nd", pk.jacobian(model, Z), r)


@pytest.mark.parametrize("structure", ["full", "lowrank"])
@pytest.mark.parametrize("likelihood", ["regression", "classification", "binary"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_empirical_fisher_posteriors_are_the_sum_of_gradient_outer_products(structure, likelihood, subset):
    sigma = 0.7 if likelihood == "regression" else 1.0
    net, X, y = make(likelihood, N=9)
    la = pk.Laplace(net, likelihood, structure, subset, kind="empirical", prior_precision=0.6, sigma_noise=sigma,
                    temperature=1.3).fit([(X[:4], y[:4]), (X[4:], y[4:])])
    model, Z = (net, X) if subset == "all" else (last_layer_model(net), net.features(X))
    g = _per_sample_grads(model, Z, y, LIKE[likelihood])
    P = g.T @ g / (sigma ** 2 * 1.3) + 0.6 * np.eye(g.shape[1])
    np.testing.assert_allclose(la.posterior_precision_dense(), P, rtol=1e-10, atol=1e-12)
    assert la.log_det_posterior_precision() == pytest.approx(np.linalg.slogdet(P)[1], rel=1e-10)
    ld = pk.Laplace(net, likelihood, "diag", subset, kind="empirical", prior_precision=0.6, sigma_noise=sigma,
                    temperature=1.3).fit((X, y))
    np.testing.assert_allclose(np.diag(la.posterior_precision_dense()), np.diag(ld.posterior_precision_dense()),
                               rtol=1e-10)


def test_empirical_fisher_subnetwork_block():
    net, X, y = make("classification", N=11)
    idx = np.array([1, 7, 20, 33, 50])
    la = pk.Laplace(net, "classification", "full", "subnetwork", subnetwork_indices=idx, kind="empirical",
                    prior_precision=0.5).fit((X, y))
    g = _per_sample_grads(net, X, y, "ce")[:, idx]
    np.testing.assert_allclose(la.posterior_precision_dense(), g.T @ g + 0.5 * np.eye(5), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("likelihood", ["regression", "classification", "binary"])
def test_monte_carlo_fisher_posteriors(likelihood):
    """kind='mc': reproducible per seed, the same draws for full and untruncated
    low rank, unbiased for the GGN (many samples: within a few Monte Carlo
    standard errors), and PSD."""
    net, X, y = make(likelihood, N=8)
    kw = dict(kind="mc", prior_precision=0.8, seed=5)
    full = pk.Laplace(net, likelihood, "full", mc_samples=3, **kw).fit((X, y))
    again = pk.Laplace(net, likelihood, "full", mc_samples=3, **kw).fit((X, y))
    low = pk.Laplace(net, likelihood, "lowrank", mc_samples=3, **kw).fit((X, y))
    np.testing.assert_array_equal(full.posterior_precision_dense(), again.posterior_precision_dense())
    np.testing.assert_allclose(low.posterior_precision_dense(), full.posterior_precision_dense(), atol=1e-10)
    other = pk.Laplace(net, likelihood, "full", mc_samples=3, kind="mc", prior_precision=0.8, seed=6).fit((X, y))
    assert not np.allclose(other.posterior_precision_dense(), full.posterior_precision_dense())
    S = 4000
    many = pk.Laplace(net, likelihood, "full", mc_samples=S, **kw).fit((X, y))
    G = pk.ggn(net, X, y, LIKE[likelihood])
    err = many.posterior_precision_dense() - 0.8 * np.eye(G.shape[0]) - G
    assert np.abs(err).max() < 6 * np.sqrt(np.mean(np.diag(G)) ** 2 * 2 * len(X) / S) + 1e-12
    assert np.linalg.eigvalsh(full.posterior_precision_dense()).min() > 0.8 - 1e-10


# ---------------------------------------------------------------------------
# fit(..., override=False): adding data to a fit
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("structure, subset, kw", [
    ("full", "all", {}), ("full", "last_layer", {}), ("diag", "all", {}), ("kron", "all", {}),
    ("kron", "last_layer", {}), ("lowrank", "all", {}), ("lowrank", "all", {"rank": 6}),
    ("full", "subnetwork", {"subnetwork_indices": [0, 3, 17, 30, 44]}),
    ("diag", "subnetwork", {"subnetwork_indices": [0, 3, 17, 30, 44]}),
    ("full", "all", {"kind": "empirical"}), ("kron", "all", {"kind": "empirical"})])
def test_fit_without_override_adds_the_data(structure, subset, kw):
    """With the network unchanged, fit(A) then fit(B, override=False) is the fit
    on A and B together: precision, log-det, LML, n_data and the loss."""
    net, X, y = make("classification", N=14)
    args = dict(prior_precision=0.7, **kw)
    both = pk.Laplace(net, "classification", structure, subset, **args).fit([(X[:6], y[:6]), (X[6:], y[6:])])
    la = pk.Laplace(net, "classification", structure, subset, **args).fit((X[:6], y[:6]))
    assert la.fit((X[6:], y[6:]), override=False) is la
    assert la.n_data == 14 and la.loss == pytest.approx(both.loss, rel=1e-14)
    np.testing.assert_allclose(la.posterior_precision_dense(), both.posterior_precision_dense(), rtol=1e-12,
                               atol=1e-12)
    assert la.log_marginal_likelihood() == pytest.approx(both.log_marginal_likelihood(), rel=1e-11)
    np.testing.assert_allclose(la.predictive(X[:3]), both.predictive(X[:3]), atol=1e-12)


def test_fit_without_override_at_new_parameters_and_errors():
    """The curvature of each fit is taken at the parameters of its time; the mean
    moves to the current ones (online Laplace); Monte Carlo fits draw afresh."""
    net, X, y = make("regression", N=12)
    la = pk.Laplace(net, "regression", "full", prior_precision=0.5).fit((X[:5], y[:5]))
    H1 = pk.ggn(net, X[:5], y[:5], "mse")
    net.theta = net.theta * 0.9
    la.fit((X[5:], y[5:]), override=False)
    H2 = pk.ggn(net, X[5:], y[5:], "mse")
    np.testing.assert_allclose(la.posterior_precision_dense(), H1 + H2 + 0.5 * np.eye(len(H1)), atol=1e-12)
    np.testing.assert_array_equal(la.mean, net.theta)
    mc = pk.Laplace(net, "regression", "kron", kind="mc", seed=3).fit((X, y))
    G1 = [g.copy() for g in mc._post.kron.G]
    mc.fit((X, y), override=False)
    assert not np.allclose(mc._post.kron.G[0], 2 * G1[0])  # new draws, not the first fit's again
    with pytest.raises(TypeError, match="override"):
        la.fit((X, y), override="no")
    low = pk.Laplace(net, "regression", "lowrank").fit((X, y))
    low._post.gmat = None  # as loaded from a version-2 file
    before = low.posterior_precision_dense()
    with pytest.raises(ValueError, match="override: this low-rank posterior has no Gmat factors"):
        low.fit((X, y), override=False)
    np.testing.assert_array_equal(low.posterior_precision_dense(), before)
    fresh = pk.Laplace(net, "regression", "diag").fit((X, y), override=False)  # nothing to extend: a fit
    np.testing.assert_array_equal(fresh.posterior_precision_dense(),
                                  pk.Laplace(net, "regression", "diag").fit((X, y)).posterior_precision_dense())
