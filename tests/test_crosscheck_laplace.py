"""Cross-checks of pk.Laplace and pk.linalg over every combination a
laplace-torch user would try (likelihood x structure x subset x prior shape x
dtype), written independently of tests/test_laplace.py.

Every check is against an independent reference: dense NumPy algebra built from
pk.ggn / pk.diag_ggn / pk.kfac(...).to_dense() / pk.jacobian, finite
differences, closed forms, numerical quadrature or plain Monte Carlo.
"""
import inspect
import io
import itertools
import math
import warnings

import numpy as np
import pytest

import pykfac as pk
import reference

LIKE = {"regression": "mse", "classification": "ce", "binary": "bce"}
STRUCTURES = ("full", "diag", "kron", "lowrank")
SUBSETS = ("all", "last_layer")
TOL = {np.float64: 1e-8, np.float32: 3e-3}


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def make(lik, N=15, seed=0, dtype=np.float64, sizes=(3, 5, 4)):
    """Network sizes + [K] (K = 1 for binary), weights ~ N(0, 1/4), data."""
    K = 1 if lik == "binary" else 3
    rng = np.random.default_rng(seed)
    net = pk.MLP(list(sizes) + [K], activation="tanh", seed=seed, dtype=dtype)
    net.theta = (rng.normal(size=net.num_params) / 2).astype(dtype)
    X = rng.normal(size=(N, sizes[0]))
    if lik == "regression":
        y = rng.normal(size=(N, K))
    elif lik == "classification":
        y = rng.integers(0, K, size=N)
    else:
        y = rng.integers(0, 2, size=N).astype(np.float64)
    return net, X, y


def model_and_inputs(net, X, subset):
    if subset == "all":
        return net, X
    last = net.layers[-1]
    return pk.MLP.from_params([(last.W, last.b)], dtype=net.dtype), net.features(X)


layer_offsets = reference.layer_offsets
prior_vector = reference.prior_diag


def make_prior(kind, model, seed=5):
    rng = np.random.default_rng(seed)
    o = layer_offsets(model)
    return {"scalar": 0.8, "layer": rng.uniform(0.5, 2.0, len(o) - 1),
            "param": rng.uniform(0.5, 2.0, o[-1])}[kind]


def curvature(model, Z, y, lik, structure):
    loss = LIKE[lik]
    if structure in ("full", "lowrank"):
        H = pk.ggn(model, Z, y, loss)
    elif structure == "diag":
        H = np.diag(pk.diag_ggn(model, Z, y, loss))
    else:
        H = pk.kfac(model, (Z, y), loss, kind="exact").to_dense()
    return np.asarray(H, dtype=np.float64)


def softmax(f):
    e = np.exp(f - f.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def sigmoid(f):
    return 0.5 * (1 + np.tanh(0.5 * f))


def bridge_reference(mu, S, normalized=False):
    """laplace-torch's Laplace bridge (zero-mean correction, optional variance
    normalisation), written out for one input: mu (K,), S (K, K)."""
    mu = np.array(mu, dtype=np.float64)
    S = np.array(S, dtype=np.float64)
    K = mu.size
    s_row, s_all = S.sum(1), S.sum()
    mu = mu - s_row * mu.sum() / s_all
    S = S - np.outer(s_row, s_row) / s_all
    d = np.diag(S).copy()
    if normalized:
        m = d.mean() / math.sqrt(K / 2)
        mu, d = mu / math.sqrt(m), d / m
    alpha = (1 - 2 / K + np.exp(mu) / K ** 2 * np.exp(-mu).sum()) / d
    return alpha / alpha.sum()


def maxdiff(a, b):
    if isinstance(a, tuple):
        return max(maxdiff(x, z) for x, z in zip(a, b))
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def fit(lik, structure, subset="all", N=15, seed=0, dtype=np.float64, **kw):
    net, X, y = make(lik, N=N, seed=seed, dtype=dtype)
    la = pk.Laplace(net, lik, structure, subset, **kw).fit((X, y))
    return la, net, X, y


def combos(with_param=True):
    out = []
    for lik, st, sub in itertools.product(LIKE, STRUCTURES, SUBSETS):
        for pk_ in ("scalar", "layer", "param"):
            if st == "kron" and pk_ == "param":
                continue
            if not with_param and pk_ == "param":
                continue
            out.append((lik, st, sub, pk_))
    return out


# ---------------------------------------------------------------------------
# 1. every likelihood x structure x subset x prior shape x dtype vs dense algebra
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("lik,structure,subset,prior_kind", combos())
def test_posterior_against_dense_algebra(lik, structure, subset, prior_kind, dtype):
    net, X, y = make(lik, dtype=dtype)
    model, Z = model_and_inputs(net, X, subset)
    D = model.num_params
    prior = make_prior(prior_kind, model)
    sigma = 0.7 if lik == "regression" else 1.0
    T = 2.5
    pmean = np.random.default_rng(3).normal(size=D) * 0.1
    la = pk.Laplace(net, lik, structure, subset, prior_precision=prior, sigma_noise=sigma,
                    temperature=T, prior_mean=pmean).fit((X, y))
    p0 = prior_vector(prior, model)
    P = curvature(model, Z, y, lik, structure) / (sigma ** 2 * T) + np.diag(p0)
    C = np.linalg.inv(P)
    tol = TOL[dtype]
    assert la.n_params == D and la.n_data == X.shape[0]
    np.testing.assert_allclose(la.posterior_precision_dense(), P, rtol=tol, atol=tol * np.abs(P).max())
    np.testing.assert_allclose(la.posterior_covariance_dense(), C, rtol=tol, atol=tol * np.abs(C).max())
    ld = np.linalg.slogdet(P)[1]
    assert abs(la.log_det_posterior_precision() - ld) <= tol * max(1.0, abs(ld))
    # LML (CONVENTIONS.md) written out
    loss = float(pk.loss(model, Z, y, LIKE[lik]))
    N, K = X.shape[0], net.n_outputs
    ll = -loss / sigma ** 2 - N * K * math.log(sigma * math.sqrt(2 * math.pi)) if lik == "regression" else -loss
    th = np.asarray(model.theta, dtype=np.float64) - pmean
    lml = ll - 0.5 * th @ (p0 * th) - 0.5 * ld + 0.5 * np.log(p0).sum()
    assert abs(la.log_marginal_likelihood() - lml) <= tol * max(1.0, abs(lml))
    # GLM predictive from J C J^T
    Xt = np.random.default_rng(9).normal(size=(6, 3))
    _, Zt = model_and_inputs(net, Xt, subset)
    Jt = np.asarray(pk.jacobian(model, Zt), dtype=np.float64)
    mu = np.asarray(model(Zt), dtype=np.float64)
    fv = np.einsum("nkd,de,nle->nkl", Jt, C, Jt)
    np.testing.assert_allclose(la.functional_variance(Xt), fv, rtol=tol, atol=tol * np.abs(fv).max())
    kern = np.einsum("nkd,de,mle->nkml", Jt, C, Jt)
    np.testing.assert_allclose(la.kernel(Xt), kern, rtol=tol, atol=tol * np.abs(kern).max())
    out = la.predictive(Xt)
    dvar = np.diagonal(fv, axis1=1, axis2=2)
    if lik == "regression":
        np.testing.assert_allclose(out[0], mu, atol=tol)
        np.testing.assert_allclose(out[1], dvar + sigma ** 2, rtol=tol, atol=tol)
    elif lik == "classification":
        np.testing.assert_allclose(out, softmax(mu / np.sqrt(1 + np.pi / 8 * dvar)), atol=tol)
    else:
        assert out.shape == (6,)
        np.testing.assert_allclose(out, sigmoid(mu[:, 0] / np.sqrt(1 + np.pi / 8 * dvar[:, 0])), atol=tol)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_kernel_of_two_input_sets_and_factored_kron(structure):
    for subset in SUBSETS:
        la, net, X, y = fit("classification", structure, subset, prior_precision=0.6)
        model, Z = model_and_inputs(net, X, subset)
        C = np.linalg.inv(curvature(model, Z, y, "classification", structure) + 0.6 * np.eye(model.num_params))
        rng = np.random.default_rng(1)
        X1, X2 = rng.normal(size=(4, 3)), rng.normal(size=(3, 3))
        J1 = pk.jacobian(model, model_and_inputs(net, X1, subset)[1])
        J2 = pk.jacobian(model, model_and_inputs(net, X2, subset)[1])
        ref = np.einsum("nkd,de,mle->nkml", J1, C, J2)
        k = la.kernel(X1, X2)
        assert k.shape == (4, 3, 3, 3)
        np.testing.assert_allclose(k, ref, atol=1e-10)
        # kernel(X)[n, :, n, :] is functional_variance(X)[n]
        kk = la.kernel(X1)
        np.testing.assert_allclose(np.einsum("nknl->nkl", kk), la.functional_variance(X1), atol=1e-12)


def test_kron_factored_damping_against_dense():
    delta, sigma, T = 0.3, 0.8, 1.7
    la, net, X, y = fit("regression", "kron", prior_precision=delta, sigma_noise=sigma, temperature=T,
                        kron_damping="factored")
    K = pk.kfac(net, (X, y), "mse", kind="exact")
    c, s = 1 / (sigma ** 2 * T), math.sqrt(delta)
    o = layer_offsets(net)
    P = np.zeros((o[-1], o[-1]))
    for l, (A, G) in enumerate(zip(K.A, K.G)):
        blk = np.kron(c * G + s * np.eye(len(G)), A + s * np.eye(len(A)))  # [W b] row-major order
        n_out, n_in = G.shape[0], A.shape[0] - 1
        perm = np.array([i * (n_in + 1) + j for i in range(n_out) for j in range(n_in)]
                        + [i * (n_in + 1) + n_in for i in range(n_out)])
        P[o[l]:o[l + 1], o[l]:o[l + 1]] = blk[np.ix_(perm, perm)]
    np.testing.assert_allclose(la.posterior_precision_dense(), P, atol=1e-10)
    assert abs(la.log_det_posterior_precision() - np.linalg.slogdet(P)[1]) < 1e-8
    Xt = np.random.default_rng(4).normal(size=(5, 3))
    J = pk.jacobian(net, Xt)
    np.testing.assert_allclose(la.functional_variance(Xt), np.einsum("nkd,de,nle->nkl", J, np.linalg.inv(P), J),
                               atol=1e-10)


@pytest.mark.parametrize("lik", LIKE)
def test_lowrank_rank_truncation_against_top_eigenpairs(lik):
    # classification/binary/regression on all layers: no degenerate eigenvalues
    net, X, y = make(lik, N=10)
    G = pk.ggn(net, X, y, LIKE[lik])
    w, V = np.linalg.eigh(G)
    for r in (1, 4, 9):
        for prior in (0.5, np.linspace(0.5, 2, net.num_params)):
            la = pk.Laplace(net, lik, "lowrank", rank=r, prior_precision=prior).fit([(X[:4], y[:4]), (X[4:], y[4:])])
            P = (V[:, -r:] * w[-r:]) @ V[:, -r:].T + np.diag(prior_vector(prior, net))
            np.testing.assert_allclose(la.posterior_precision_dense(), P, atol=1e-9)
            assert abs(la.log_det_posterior_precision() - np.linalg.slogdet(P)[1]) < 1e-9
            Xt = np.random.default_rng(3).normal(size=(3, 3))
            J = pk.jacobian(net, Xt)
            np.testing.assert_allclose(la.functional_variance(Xt),
                                       np.einsum("nkd,de,nle->nkl", J, np.linalg.inv(P), J), atol=1e-9)


@pytest.mark.parametrize("lik", LIKE)
def test_curvature_kinds_match_public_functions(lik):
    net, X, y = make(lik, N=10)
    loss = LIKE[lik]
    D = net.num_params
    la = pk.Laplace(net, lik, "diag", kind="empirical").fit((X, y))
    np.testing.assert_allclose(np.diag(la.posterior_precision_dense()) - 1,
                               pk.empirical_fisher_diag(net, X, y, loss), atol=1e-12)
    for kind in ("empirical", "kfra", "mc"):
        la = pk.Laplace(net, lik, "kron", kind=kind, seed=5).fit((X, y))
        K = pk.kfac(net, (X, y), loss, kind=kind, seed=5).to_dense()
        np.testing.assert_allclose(la.posterior_precision_dense(), K + np.eye(D), atol=1e-12)
    # MC curvature converges to the exact one and is reproducible per seed
    la = pk.Laplace(net, lik, "diag", kind="mc", seed=5, mc_samples=3000).fit((X, y))
    ex = pk.diag_ggn(net, X, y, loss)
    assert np.abs(np.diag(la.posterior_precision_dense()) - 1 - ex).max() < 0.05 * ex.max()
    a = pk.Laplace(net, lik, "diag", kind="mc", seed=5).fit((X, y)).posterior_precision_dense()
    b = pk.Laplace(net, lik, "diag", kind="mc", seed=5).fit((X, y)).posterior_precision_dense()
    c = pk.Laplace(net, lik, "diag", kind="mc", seed=6).fit((X, y)).posterior_precision_dense()
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# ---------------------------------------------------------------------------
# 2. batches, refits
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("lik,structure,subset", list(itertools.product(LIKE, STRUCTURES, SUBSETS)))
def test_unequal_batches_equal_concatenation_and_refit_replaces(lik, structure, subset):
    net, X, y = make(lik, N=17)
    kinds = {"kron": ("exact", "empirical"), "diag": ("exact", "empirical")}.get(structure, ("exact",))
    for kind in kinds:
        one = pk.Laplace(net, lik, structure, subset, kind=kind, prior_precision=0.7).fit((X, y))
        batches = [(X[:3], y[:3]), (X[3:4], y[3:4]), (X[4:], y[4:])]
        many = pk.Laplace(net, lik, structure, subset, kind=kind, prior_precision=0.7).fit(iter(batches))
        assert many.n_data == 17
        assert abs(many.loss - one.loss) < 1e-10
        np.testing.assert_allclose(many.posterior_precision_dense(), one.posterior_precision_dense(), atol=1e-10)
        assert abs(many.log_marginal_likelihood() - one.log_marginal_likelihood()) < 1e-8
        # a second fit replaces the first (different data AND different weights)
        net2 = net.copy()
        twice = pk.Laplace(net2, lik, structure, subset, kind=kind, prior_precision=0.7)
        net2.theta = net.theta + 0.3
        twice.fit((X[:5], y[:5]))
        net2.theta = net.theta
        twice.fit((X, y))
        assert twice.n_data == 17 and twice.loss == one.loss
        np.testing.assert_array_equal(twice.mean, one.mean)
        np.testing.assert_allclose(twice.posterior_precision_dense(), one.posterior_precision_dense(), atol=1e-12)
        assert abs(twice.log_marginal_likelihood() - one.log_marginal_likelihood()) < 1e-10


def test_network_changes_after_fit_do_not_leak_and_fit_uses_current_weights():
    net, X, y = make("classification")
    la = pk.Laplace(net, "classification", "full")
    net.theta = net.theta * 1.1  # after construction, before fit: fit must use these
    la.fit((X, y))
    np.testing.assert_array_equal(la.mean, net.theta)
    before = la.predictive(X[:3])
    net.theta = net.theta * 0
    np.testing.assert_array_equal(la.predictive(X[:3]), before)
    m = la.mean
    m[:] = 0
    assert np.any(la.mean != 0)


def test_failed_refit_leaves_the_fitted_posterior_unchanged():
    net, X, y = make("classification", N=10)
    la = pk.Laplace(net, "classification", "kron").fit((X, y))
    mean0, lml0, pred0 = la.mean, la.log_marginal_likelihood(), la.predictive(X[:3])
    net.theta = net.theta + 0.5  # the user keeps training ...
    with pytest.raises(ValueError, match="y"):
        la.fit((X, y + 10))  # ... and a refit fails on bad labels
    np.testing.assert_array_equal(la.mean, mean0)
    assert la.log_marginal_likelihood() == lml0
    np.testing.assert_array_equal(la.predictive(X[:3]), pred0)


# ---------------------------------------------------------------------------
# 3. marginal likelihood without refit, gradients, optimisation
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("lik,structure,subset", list(itertools.product(LIKE, STRUCTURES, SUBSETS)))
def test_lml_at_other_settings_equals_fresh_fit_and_gradient_is_fd(lik, structure, subset):
    la, net, X, y = fit(lik, structure, subset, N=12, prior_precision=1.0)
    model, _ = model_and_inputs(net, X, subset)
    o = layer_offsets(model)
    rng = np.random.default_rng(1)
    priors = [0.3, rng.uniform(0.2, 3, len(o) - 1)]
    if structure != "kron":
        priors.append(rng.uniform(0.2, 3, o[-1]))
    sigmas = [None, 0.6] if lik == "regression" else [None]
    eps = 1e-5
    for pp, s in itertools.product(priors, sigmas):
        v = la.log_marginal_likelihood(prior_precision=pp, sigma_noise=s)
        ref = pk.Laplace(net, lik, structure, subset, prior_precision=pp,
                         sigma_noise=1.0 if s is None else s).fit((X, y)).log_marginal_likelihood()
        assert abs(v - ref) < 1e-8 * max(1, abs(ref))
        g_prior, g_sigma = la.log_marginal_likelihood_grad(prior_precision=pp, sigma_noise=s)
        pv = np.atleast_1d(np.asarray(pp, dtype=np.float64))
        assert g_prior.shape == pv.shape

        def f(q, sig=s):
            return la.log_marginal_likelihood(prior_precision=q if pv.size > 1 else float(q[0]), sigma_noise=sig)
        for i in range(min(pv.size, 3)):
            e = np.zeros_like(pv)
            e[i] = eps
            fd = (f(pv * np.exp(e)) - f(pv * np.exp(-e))) / (2 * eps)
            assert abs(fd - g_prior[i]) < 1e-5 * max(1, abs(fd))
        if lik == "regression":
            s0 = 1.0 if s is None else s
            fd = (f(pv, s0 * math.exp(eps)) - f(pv, s0 * math.exp(-eps))) / (2 * eps)
            assert abs(fd - g_sigma) < 1e-5 * max(1, abs(fd))
        else:
            assert g_sigma is None
    assert la.prior_precision == 1.0 and la.sigma_noise == 1.0  # evaluations did not change the object


@pytest.mark.parametrize("lik,structure", list(itertools.product(LIKE, STRUCTURES)))
def test_optimize_prior_precision_leaves_consistent_state(lik, structure):
    net, X, y = make(lik, N=15)
    Xt = np.random.default_rng(2).normal(size=(4, 3))
    for ps in (("scalar", "layer", "param") if structure != "kron" else ("scalar", "layer")):
        la = pk.Laplace(net, lik, structure).fit((X, y))
        lml_before = la.log_marginal_likelihood()
        la.optimize_prior_precision(prior_structure=ps, optimize_sigma=lik == "regression")
        pp, sg = la.prior_precision, la.sigma_noise
        assert np.size(pp) == {"scalar": 1, "layer": 3, "param": net.num_params}[ps]
        assert la.log_marginal_likelihood() >= lml_before - 1e-9
        g_prior, g_sigma = la.log_marginal_likelihood_grad()
        assert np.abs(g_prior).max() < 1e-3 and (g_sigma is None or abs(g_sigma) < 1e-3)
        ref = pk.Laplace(net, lik, structure, prior_precision=pp, sigma_noise=sg).fit((X, y))
        assert maxdiff(la.predictive(Xt), ref.predictive(Xt)) < 1e-10
        assert abs(la.log_marginal_likelihood() - ref.log_marginal_likelihood()) < 1e-8
        np.testing.assert_allclose(la.posterior_covariance_dense(), ref.posterior_covariance_dense(), atol=1e-10)
        np.testing.assert_array_equal(la.sample(3, seed=1), ref.sample(3, seed=1))


def test_gridsearch_picks_argmin_of_validation_nll_regression():
    la, net, X, y = fit("regression", "kron", N=15, sigma_noise=0.5)
    rng = np.random.default_rng(7)
    Xv = rng.normal(size=(10, 3))
    yv = np.asarray(net(Xv)) + rng.normal(size=(10, 3)) * 0.5
    grid = np.logspace(-2, 2, 9)
    nlls = []
    for p in grid:
        mu, var = pk.Laplace(net, "regression", "kron", prior_precision=p, sigma_noise=0.5).fit((X, y)).predictive(Xv)
        nlls.append(np.mean(np.sum(0.5 * np.log(2 * np.pi * var) + 0.5 * (yv - mu) ** 2 / var, axis=1)))
    la.optimize_prior_precision(method="gridsearch", val_data=(Xv, yv), grid=grid)
    assert la.prior_precision == grid[int(np.argmin(nlls))]


def test_temperature_and_sigma_setters_equal_fresh_fit():
    la, net, X, y = fit("regression", "full")
    la.temperature, la.sigma_noise = 0.4, 1.7
    ref = pk.Laplace(net, "regression", "full", temperature=0.4, sigma_noise=1.7).fit((X, y))
    Xt = X[:4]
    assert maxdiff(la.predictive(Xt), ref.predictive(Xt)) < 1e-12
    assert abs(la.log_marginal_likelihood() - ref.log_marginal_likelihood()) < 1e-10
    np.testing.assert_allclose(la.posterior_precision_dense(), ref.posterior_precision_dense(), atol=1e-12)


# ---------------------------------------------------------------------------
# 4. predictive: links, nn, rows vs batch, layouts, immutability
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("structure", STRUCTURES)
def test_bridge_against_laplace_torch_formula(structure):
    la, net, X, y = fit("classification", structure, prior_precision=0.5)
    Xt = np.random.default_rng(3).normal(size=(5, 3))
    mu = np.asarray(net(Xt), dtype=np.float64)
    fv = la.functional_variance(Xt)
    out = la.predictive(Xt, link_approx="bridge")
    ref = np.array([bridge_reference(m, S) for m, S in zip(mu, fv)])
    np.testing.assert_allclose(out, ref, atol=1e-10)
    if "bridge_norm" in pk.laplace.LINK_APPROXES:
        out = la.predictive(Xt, link_approx="bridge_norm")
        ref = np.array([bridge_reference(m, S, normalized=True) for m, S in zip(mu, fv)])
        np.testing.assert_allclose(out, ref, atol=1e-10)


def test_bridge_is_finite_for_large_logits():
    net, X, y = make("classification", N=12)
    net.layers[-1].W[...] *= 1000
    net.layers[-1].b[...] *= 1000
    la = pk.Laplace(net, "classification", "kron").fit((X, y))
    Xt = np.random.default_rng(0).normal(size=(4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = la.predictive(Xt, link_approx="bridge")
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)


@pytest.mark.parametrize("lik", ["classification", "binary"])
def test_mc_link_against_quadrature_and_reproducibility(lik):
    la, net, X, y = fit(lik, "diag", prior_precision=0.3)
    Xt = np.random.default_rng(3).normal(size=(4, 3))
    mu = np.asarray(net(Xt), dtype=np.float64)
    fv = np.asarray(la.functional_variance(Xt), dtype=np.float64)
    out = la.predictive(Xt, link_approx="mc", n_samples=20000, seed=1)
    if lik == "binary":
        x, w = np.polynomial.hermite_e.hermegauss(80)
        ref = np.array([(w * sigmoid(m[0] + math.sqrt(S[0, 0]) * x)).sum() / w.sum() for m, S in zip(mu, fv)])
    else:
        rng = np.random.default_rng(0)
        ref = np.array([softmax(rng.multivariate_normal(m, S, size=200000, method="eigh")).mean(0)
                        for m, S in zip(mu, fv)])
    assert np.abs(out - ref).max() < 0.01
    np.testing.assert_array_equal(out, la.predictive(Xt, link_approx="mc", n_samples=20000, seed=1))
    a = la.predictive(Xt, link_approx="mc", n_samples=20)
    b = la.predictive(Xt, link_approx="mc", n_samples=20)
    assert not np.array_equal(a, b)  # seed=None draws fresh randomness


@pytest.mark.parametrize("lik,structure,subset", list(itertools.product(LIKE, STRUCTURES, SUBSETS)))
def test_nn_predictive_is_the_average_over_sample(lik, structure, subset):
    sigma = 0.8 if lik == "regression" else 1.0
    la, net, X, y = fit(lik, structure, subset, N=12, prior_precision=2.0, sigma_noise=sigma)
    Xt = np.random.default_rng(5).normal(size=(4, 3))
    out = la.predictive(Xt, pred_type="nn", n_samples=30, seed=7)
    model, Zt = model_and_inputs(net, Xt, subset)
    model = model.copy()
    F = []
    for th in la.sample(30, seed=7):
        model.theta = th
        F.append(np.asarray(model(Zt), dtype=np.float64))
    F = np.array(F)
    if lik == "regression":
        assert maxdiff(out, (F.mean(0), F.var(0) + sigma ** 2)) < 1e-10
    elif lik == "binary":
        assert maxdiff(out, sigmoid(F[..., 0]).mean(0)) < 1e-10
    else:
        assert maxdiff(out, softmax(F).mean(0)) < 1e-10


@pytest.mark.parametrize("lik,structure", list(itertools.product(LIKE, STRUCTURES)))
def test_single_row_equals_batch_and_layouts(lik, structure):
    for subset in SUBSETS:
        la, net, X, y = fit(lik, structure, subset, prior_precision=0.5)
        Xt = np.random.default_rng(2).normal(size=(7, 3))
        links = ["probit"] + (["bridge"] if lik == "classification" else [])
        for link in links:
            full = la.predictive(Xt, link_approx=link)
            rows = [la.predictive(Xt[i:i + 1], link_approx=link) for i in range(7)]
            if isinstance(full, tuple):
                rows = tuple(np.concatenate([r[j] for r in rows]) for j in range(2))
            else:
                rows = np.concatenate(rows)
            assert maxdiff(full, rows) < 1e-12
        fv = la.functional_variance(Xt)
        np.testing.assert_allclose(np.concatenate([la.functional_variance(Xt[i:i + 1]) for i in range(7)]), fv,
                                   atol=1e-13)
        # Fortran order, strided, read-only views give identical results; int inputs = float inputs
        buf = np.zeros((7, 6))
        buf[:, ::2] = Xt
        ro = Xt.copy()
        ro.setflags(write=False)
        for Xv in (np.asfortranarray(Xt), buf[:, ::2], ro, Xt.tolist()):
            assert maxdiff(la.predictive(Xv), la.predictive(Xt)) == 0
            assert maxdiff(la.functional_variance(Xv), fv) == 0
            assert maxdiff(la.kernel(Xv), la.kernel(Xt)) == 0
        Xi = np.round(Xt * 2).astype(np.int32)
        assert maxdiff(la.predictive(Xi), la.predictive(Xi.astype(np.float64))) == 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_inputs_not_modified_and_fit_layouts(structure, dtype):
    for lik in LIKE:
        net, X, y = make(lik, dtype=dtype)
        X = X.astype(dtype)
        if lik == "regression":
            y = y.astype(dtype)
        prior = np.full(3, 0.9)
        pmean = np.full(net.num_params, 0.01)
        copies = [a.copy() for a in (X, y, prior, pmean, net.theta)]
        la = pk.Laplace(net, lik, structure, prior_precision=prior, prior_mean=pmean).fit((X, y))
        ref = la.posterior_precision_dense()
        la.predictive(X)
        la.predictive(X, pred_type="nn", n_samples=3, seed=0)
        la.functional_variance(X)
        la.kernel(X, X[:2])
        la.log_marginal_likelihood(prior_precision=prior)
        la.optimize_prior_precision()
        for a, c in zip((X, y, prior, pmean, net.theta), copies):
            assert a.dtype == c.dtype and a.tobytes() == c.tobytes()
        prior[:] = 5.0  # the posterior holds its own copy
        assert np.all(np.asarray(la.prior_precision) != 5.0)
        # fitting from Fortran / strided / read-only / int inputs gives the same posterior
        Xs = np.zeros((X.shape[0], 6), dtype=dtype)
        Xs[:, ::2] = X
        Xr = X.copy()
        Xr.setflags(write=False)
        for Xv in (np.asfortranarray(X), Xs[:, ::2], Xr):
            la2 = pk.Laplace(net, lik, structure, prior_precision=0.9, prior_mean=pmean).fit((Xv, y))
            np.testing.assert_array_equal(la2.posterior_precision_dense(),
                                          pk.Laplace(net, lik, structure, prior_precision=0.9,
                                                     prior_mean=pmean).fit((X, y)).posterior_precision_dense())
        assert ref.dtype == dtype


def test_regression_labels_layouts_and_int_labels():
    net, X, y = make("regression")
    base = pk.Laplace(net, "regression", "full").fit((X, y))
    for yv in (np.asfortranarray(y), y.tolist()):
        la = pk.Laplace(net, "regression", "full").fit((X, yv))
        assert la.loss == base.loss
    yi = np.round(y).astype(np.int64)
    la = pk.Laplace(net, "regression", "full").fit((X, yi))
    assert abs(la.loss - pk.loss(net, X, yi.astype(float), "mse")) < 1e-12
    # binary: 0/1 floats, +-1, bool and (N, 1) all mean the same labels
    net, X, y = make("binary")
    ref = pk.Laplace(net, "binary", "kron").fit((X, y))
    for yv in (2 * y - 1, y.astype(bool), y.astype(np.int8)[:, None]):
        la = pk.Laplace(net, "binary", "kron").fit((X, yv))
        assert la.loss == ref.loss
        assert la.log_marginal_likelihood() == ref.log_marginal_likelihood()


@pytest.mark.skipif("joint" not in inspect.signature(pk.Laplace.predictive).parameters,
                    reason="no joint predictive in this version")
@pytest.mark.parametrize("structure", STRUCTURES)
def test_joint_regression_predictive(structure):
    for subset in SUBSETS:
        la, net, X, y = fit("regression", structure, subset, sigma_noise=0.6, prior_precision=0.8)
        Xt = np.random.default_rng(1).normal(size=(4, 3))
        m, C = la.predictive(Xt, joint=True)
        mu, var = la.predictive(Xt)
        np.testing.assert_allclose(m, mu.ravel(), atol=1e-12)
        np.testing.assert_allclose(C, la.kernel(Xt).reshape(12, 12) + 0.36 * np.eye(12), atol=1e-12)
        np.testing.assert_allclose(np.diag(C), var.ravel(), atol=1e-12)


# ---------------------------------------------------------------------------
# 5. sampling
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("lik,structure,subset", [(l, s, b) for l, s, b in itertools.product(LIKE, STRUCTURES, SUBSETS)
                                                  if l != "binary"])
def test_sample_mean_covariance_and_seeds(lik, structure, subset, dtype):
    net, X, y = make(lik, N=12, dtype=dtype)
    model, _ = model_and_inputs(net, X, subset)
    L = len(layer_offsets(model)) - 1
    prior = np.linspace(0.5, 3, L) if L > 1 else 2.0
    la = pk.Laplace(net, lik, structure, subset, prior_precision=prior, temperature=0.5,
                    sigma_noise=0.8 if lik == "regression" else 1.0).fit((X, y))
    n = 20000
    S = la.sample(n, seed=4)
    assert S.shape == (n, model.num_params) and S.dtype == dtype
    np.testing.assert_array_equal(S, la.sample(n, seed=4))
    assert not np.array_equal(la.sample(3), la.sample(3))
    assert not np.array_equal(la.sample(3, seed=4), la.sample(3, seed=5))
    C = np.asarray(la.posterior_covariance_dense(), dtype=np.float64)
    z_mean = np.abs((S.mean(0) - la.mean) / np.sqrt(np.diag(C) / n)).max()
    sd = np.sqrt(np.outer(np.diag(C), np.diag(C)) + C ** 2) / math.sqrt(n)
    z_cov = np.abs((np.cov(S.T.astype(np.float64)) - C) / sd).max()
    assert z_mean < 5.5 and z_cov < 6.5
    assert la.sample(0).shape == (0, model.num_params)


# ---------------------------------------------------------------------------
# 6. from_jacobians, save / load
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("lik,structure", list(itertools.product(LIKE, ("full", "lowrank"))))
def test_from_jacobians_equals_network_posterior(lik, structure, dtype):
    net, X, y = make(lik, N=10, dtype=dtype)
    J, F = pk.jacobian(net, X), net(X)
    sizes = list(np.diff(layer_offsets(net)))
    prior = np.array([0.5, 1.5, 2.0])
    sigma = 0.7 if lik == "regression" else 1.0
    Jc, Fc = J.copy(), F.copy()
    ln = pk.Laplace(net, lik, structure, prior_precision=prior, sigma_noise=sigma, temperature=1.3).fit((X, y))
    lj = pk.Laplace.from_jacobians(J, f_map=F, likelihood=lik, structure=structure, prior_precision=prior,
                                   layer_sizes=sizes, sigma_noise=sigma, temperature=1.3, theta_map=net.theta, y=y)
    assert J.tobytes() == Jc.tobytes() and F.tobytes() == Fc.tobytes()
    tol = TOL[dtype]
    assert abs(ln.log_marginal_likelihood() - lj.log_marginal_likelihood()) < tol * abs(ln.log_marginal_likelihood())
    np.testing.assert_allclose(lj.log_marginal_likelihood_grad()[0], ln.log_marginal_likelihood_grad()[0],
                               rtol=10 * tol, atol=10 * tol)
    Xt = np.random.default_rng(0).normal(size=(4, 3))
    Jt, Ft = pk.jacobian(net, Xt), net(Xt)
    np.testing.assert_allclose(lj.functional_variance(jacobians=Jt), ln.functional_variance(Xt), atol=tol)
    assert maxdiff(lj.predictive(jacobians=Jt, f_map=Ft), ln.predictive(Xt)) < tol
    ln.optimize_prior_precision()
    lj.optimize_prior_precision()
    np.testing.assert_allclose(lj.prior_precision, ln.prior_precision, rtol=100 * tol)
    # the file round trip is bit-exact
    buf = io.BytesIO()
    lj.save(buf)
    buf.seek(0)
    l2 = pk.Laplace.load(buf)
    assert l2.log_marginal_likelihood() == lj.log_marginal_likelihood()
    assert maxdiff(l2.predictive(jacobians=Jt, f_map=Ft), lj.predictive(jacobians=Jt, f_map=Ft)) == 0
    np.testing.assert_array_equal(l2.sample(3, seed=2), lj.sample(3, seed=2))
    buf.seek(0)
    with pytest.raises(ValueError, match="net"):
        pk.Laplace.load(buf, net=net)


@pytest.mark.parametrize("structure", ["full", "diag", "lowrank"])
def test_precomputed_jacobians_equal_inputs(structure):
    for lik, subset in itertools.product(LIKE, SUBSETS):
        la, net, X, y = fit(lik, structure, subset, N=12, prior_precision=0.7)
        Xt = np.random.default_rng(1).normal(size=(4, 3))
        model, Zt = model_and_inputs(net, Xt, subset)
        Jt = pk.jacobian(model, Zt)
        np.testing.assert_allclose(la.functional_variance(jacobians=Jt), la.functional_variance(Xt), atol=1e-12)
        assert maxdiff(la.predictive(jacobians=Jt, f_map=model(Zt)), la.predictive(Xt)) < 1e-12


@pytest.mark.parametrize("subset", SUBSETS)
def test_kron_precomputed_jacobians_equal_inputs(subset):
    la, net, X, y = fit("classification", "kron", subset, N=12, prior_precision=0.7)
    Xt = np.random.default_rng(1).normal(size=(4, 3))
    model, Zt = model_and_inputs(net, Xt, subset)
    Jt = pk.jacobian(model, Zt)
    np.testing.assert_allclose(la.functional_variance(jacobians=Jt), la.functional_variance(Xt), atol=1e-12)
    assert maxdiff(la.predictive(jacobians=Jt, f_map=model(Zt)), la.predictive(Xt)) < 1e-12


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("lik,structure,subset", list(itertools.product(LIKE, STRUCTURES, SUBSETS)))
def test_save_load_bit_exact_after_optimize(lik, structure, subset, dtype):
    net, X, y = make(lik, N=12, dtype=dtype)
    kw = {}
    if structure == "kron":
        kw = {"kron_damping": "factored"} if subset == "last_layer" else {"kind": "kfra"}
    la = pk.Laplace(net, lik, structure, subset, temperature=0.7, prior_mean=0.1, **kw).fit((X, y))
    Xt = np.random.default_rng(0).normal(size=(4, 3))
    for ps in ("scalar", "layer") + (("param",) if structure != "kron" else ()):
        la.optimize_prior_precision(prior_structure=ps, optimize_sigma=lik == "regression")
        buf = io.BytesIO()
        la.save(buf)
        for net_arg in (None, net):
            buf.seek(0)
            l2 = pk.Laplace.load(buf, net=net_arg)
            assert l2.log_marginal_likelihood() == la.log_marginal_likelihood()
            assert l2.log_det_posterior_precision() == la.log_det_posterior_precision()
            np.testing.assert_array_equal(l2.log_marginal_likelihood_grad()[0], la.log_marginal_likelihood_grad()[0])
            np.testing.assert_array_equal(np.asarray(l2.prior_precision), np.asarray(la.prior_precision))
            assert (l2.sigma_noise, l2.temperature, l2.n_data, l2.loss) == (la.sigma_noise, la.temperature,
                                                                           la.n_data, la.loss)
            assert maxdiff(l2.predictive(Xt), la.predictive(Xt)) == 0
            assert maxdiff(l2.predictive(Xt, pred_type="nn", n_samples=4, seed=3),
                           la.predictive(Xt, pred_type="nn", n_samples=4, seed=3)) == 0
            np.testing.assert_array_equal(l2.sample(4, seed=1), la.sample(4, seed=1))
            np.testing.assert_array_equal(l2.kernel(Xt), la.kernel(Xt))
            np.testing.assert_array_equal(l2.posterior_covariance_dense(), la.posterior_covariance_dense())
            np.testing.assert_array_equal(l2.mean, la.mean)


def test_load_with_mismatched_net_raises():
    net, X, y = make("classification")
    la = pk.Laplace(net, "classification", "kron").fit((X, y))
    buf = io.BytesIO()
    la.save(buf)
    moved = net.copy()
    moved.theta = net.theta + np.r_[1e-12, np.zeros(net.num_params - 1)]
    for other in (moved, pk.MLP([3, 6, 4, 3]), pk.MLP([3, 5, 4, 3], activation="relu"),
                  pk.MLP([3, 5, 4, 3], dtype=np.float32)):
        buf.seek(0)
        with pytest.raises(ValueError, match="net"):
            pk.Laplace.load(buf, net=other)
    buf.seek(0)
    with pytest.raises(TypeError, match="net"):
        pk.Laplace.load(buf, net="not a net")


# ---------------------------------------------------------------------------
# 7. bad input: a clear exception naming the argument
# ---------------------------------------------------------------------------
def _bad_cases():
    net, X, y = make("classification")
    netb, Xb, yb = make("binary")
    netr, Xr, yr = make("regression")
    Xn = X.copy()
    Xn[0, 0] = np.nan
    yrn = yr.copy()
    yrn[1, 1] = np.inf
    L = pk.Laplace
    return [
        ("X shape", ValueError, "X", lambda: L(net, "classification", "kron").fit((X[:, :2], y))),
        ("X nan", ValueError, "X", lambda: L(net, "classification", "diag").fit((Xn, y))),
        ("X empty", ValueError, "X", lambda: L(net, "classification", "diag").fit((X[:0], y[:0]))),
        ("X complex", TypeError, "X", lambda: L(net, "classification", "diag").fit((X + 0j, y))),
        ("y length", ValueError, "y", lambda: L(net, "classification", "full").fit((X, y[:-1]))),
        ("y range", ValueError, "y", lambda: L(net, "classification", "full").fit((X, y + 3))),
        ("y negative", ValueError, "y", lambda: L(net, "classification", "lowrank").fit((X, y - 1))),
        ("y float", TypeError, "y", lambda: L(net, "classification", "kron").fit((X, y.astype(float)))),
        ("y 2-D", ValueError, "y", lambda: L(net, "classification", "kron").fit((X, y[:, None]))),
        ("binary y=2", ValueError, "y", lambda: L(netb, "binary", "kron").fit((Xb, 2 * yb))),
        ("binary y=0.5", ValueError, "y", lambda: L(netb, "binary", "diag").fit((Xb, 0.5 * yb))),
        ("regression y inf", ValueError, "y", lambda: L(netr, "regression", "full").fit((Xr, yrn))),
        ("regression y K", ValueError, "y", lambda: L(netr, "regression", "full").fit((Xr, yr[:, :2]))),
        ("binary K", ValueError, "y", lambda: L(net, "binary", "full").fit((X, y))),  # (N,) labels, 3 outputs
        ("prior 0", ValueError, "prior_precision", lambda: L(net, "classification", "diag", prior_precision=0.0)),
        ("prior <0", ValueError, "prior_precision", lambda: L(net, "classification", "full", prior_precision=-1.0)),
        ("prior nan", ValueError, "prior_precision", lambda: L(net, "classification", "kron", prior_precision=np.nan)),
        ("prior vec 0", ValueError, "prior_precision",
         lambda: L(net, "classification", "kron", prior_precision=[1.0, 0.0, 1.0])),
        ("prior length", ValueError, "prior_precision",
         lambda: L(net, "classification", "diag", prior_precision=np.ones(2))),
        ("prior per-param kron", ValueError, "prior_precision",
         lambda: L(net, "classification", "kron", prior_precision=np.ones(net.num_params))),
        ("prior str", TypeError, "prior_precision", lambda: L(net, "classification", "diag", prior_precision="1")),
        ("sigma classif", ValueError, "sigma_noise", lambda: L(net, "classification", "diag", sigma_noise=2.0)),
        ("sigma 0", ValueError, "sigma_noise", lambda: L(netr, "regression", "diag", sigma_noise=0.0)),
        ("temperature <0", ValueError, "temperature", lambda: L(net, "classification", "diag", temperature=-1.0)),
        ("prior_mean shape", ValueError, "prior_mean", lambda: L(net, "classification", "diag", prior_mean=np.ones(3))),
        ("structure", ValueError, "structure", lambda: L(net, "classification", "dense")),
        ("kind", ValueError, "kind", lambda: L(net, "classification", "full", kind="kfra")),
        ("rank not lowrank", ValueError, "rank", lambda: L(net, "classification", "full", rank=3)),
        ("predictive before fit", RuntimeError, "fit", lambda: L(net, "classification", "kron").predictive(X)),
        ("sample before fit", RuntimeError, "fit", lambda: L(net, "classification", "kron").sample(2)),
        ("lml before fit", RuntimeError, "fit", lambda: L(net, "classification", "kron").log_marginal_likelihood()),
        ("empty data", ValueError, "data", lambda: L(net, "classification", "kron").fit([])),
        ("not a net", TypeError, "net", lambda: L("net", "classification", "kron")),
        ("J nan", ValueError, "J", lambda: L.from_jacobians(np.full((2, 3, 4), np.nan), Lam=np.ones((2, 3, 3)))),
        ("J 2-D", ValueError, "J", lambda: L.from_jacobians(np.ones((2, 3)), Lam=np.ones((2, 3, 3)))),
        ("Lam shape", ValueError, "Lam", lambda: L.from_jacobians(np.ones((2, 3, 4)), Lam=np.ones((2, 2, 2)))),
        ("Lam missing", ValueError, "Lam", lambda: L.from_jacobians(np.ones((2, 3, 4)))),
        ("theta_map", ValueError, "theta_map",
         lambda: L.from_jacobians(np.ones((2, 3, 4)), f_map=np.zeros((2, 3)), theta_map=np.ones(3))),
        ("layer_sizes", ValueError, "layer_sizes",
         lambda: L.from_jacobians(np.ones((2, 3, 4)), f_map=np.zeros((2, 3)), layer_sizes=[2, 1])),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_raises_naming_the_argument(case):
    _, exc, name, call = case
    with pytest.raises(exc, match=name):
        call()


def test_bad_input_after_fit():
    la, net, X, y = fit("classification", "kron")
    Xn = X.copy()
    Xn[0, 1] = np.inf
    cases = [
        (ValueError, "X", lambda: la.predictive(X[:, :2])),
        (ValueError, "X", lambda: la.predictive(X[0])),
        (ValueError, "X", lambda: la.predictive(Xn)),
        (ValueError, "X", lambda: la.functional_variance(X[:0])),
        (TypeError, "X", lambda: la.functional_variance()),
        (ValueError, "X2", lambda: la.kernel(X, X[:, :2])),
        (ValueError, "link_approx", lambda: la.predictive(X, link_approx="laplace")),
        (ValueError, "pred_type", lambda: la.predictive(X, pred_type="lin")),
        (ValueError, "n_samples", lambda: la.predictive(X, link_approx="mc", n_samples=0)),
        (TypeError, "n_samples", lambda: la.predictive(X, pred_type="nn", n_samples=2.0)),
        (ValueError, "prior_precision", lambda: la.log_marginal_likelihood(prior_precision=0.0)),
        (ValueError, "sigma_noise", lambda: la.log_marginal_likelihood(sigma_noise=2.0)),
        (ValueError, "n", lambda: la.sample(-1)),
        (TypeError, "n", lambda: la.sample(2.5)),
        (ValueError, "seed", lambda: la.sample(2, seed=-1)),
        (ValueError, "method", lambda: la.optimize_prior_precision(method="cv")),
        (ValueError, "val_data", lambda: la.optimize_prior_precision(method="gridsearch")),
        (ValueError, "prior_structure", lambda: la.optimize_prior_precision(prior_structure="param")),
        (ValueError, "optimize_sigma", lambda: la.optimize_prior_precision(optimize_sigma=True)),
        (ValueError, "jacobians", lambda: la.functional_variance(jacobians=np.ones((2, 3, 5)))),
        (TypeError, "f_map", lambda: la.predictive(jacobians=np.ones((2, 3, la.n_params)))),
    ]
    before = la.log_marginal_likelihood()
    for exc, name, call in cases:
        with pytest.raises(exc, match=name):
            call()

    def set_prior():
        la.prior_precision = -1.0
    with pytest.raises(ValueError, match="prior_precision"):
        set_prior()
    assert la.log_marginal_likelihood() == before  # failed calls changed nothing
    lb, *_ = fit("binary", "full")
    with pytest.raises(ValueError, match="link_approx"):
        lb.predictive(X, link_approx="bridge")


# ---------------------------------------------------------------------------
# 8. float32 consistency (posterior algebra rounding)
# ---------------------------------------------------------------------------
def test_float32_kron_logdet_matches_float64_for_small_prior():
    worst = 0.0
    for seed in range(6):
        vals = []
        for dtype in (np.float64, np.float32):
            la, *_ = fit("classification", "kron", "last_layer", N=20, seed=seed, dtype=dtype,
                         prior_precision=1e-6)
            vals.append(la.log_det_posterior_precision())
        worst = max(worst, abs(vals[0] - vals[1]))
    assert worst < 0.05


def test_float32_full_lml_does_not_depend_on_optimize_history():
    worst = 0.0
    for seed in range(3):
        ref = fit("classification", "full", N=8, seed=seed, prior_precision=1e-5)[0].log_marginal_likelihood()
        la = fit("classification", "full", N=8, seed=seed, dtype=np.float32, prior_precision=1e-5)[0]
        chol = la.log_marginal_likelihood()
        assert abs(chol - ref) < 0.05  # the Cholesky path is accurate
        la.optimize_prior_precision()
        la.prior_precision = 1e-5
        worst = max(worst, abs(la.log_marginal_likelihood() - ref))
    assert worst < 0.05


def test_float32_untruncated_lowrank_matches_float64():
    net, X, y = make("classification", N=200, dtype=np.float32)
    net64, *_ = make("classification", N=200)
    a = pk.Laplace(net, "classification", "lowrank", prior_precision=1e-3).fit((X, y)).log_marginal_likelihood()
    f = pk.Laplace(net, "classification", "full", prior_precision=1e-3).fit((X, y)).log_marginal_likelihood()
    ref = pk.Laplace(net64, "classification", "full", prior_precision=1e-3).fit((X, y)).log_marginal_likelihood()
    assert abs(f - ref) < 0.1
    assert abs(a - ref) < 0.5


# ---------------------------------------------------------------------------
# 9. pk.linalg against dense NumPy
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_linalg_woodbury_and_lowrank_eigh(dtype):
    rng = np.random.default_rng(0)
    tol = 1e-10 if dtype == np.float64 else 2e-5
    L = pk.linalg
    for D, M in ((9, 4), (4, 7)):
        U = rng.normal(size=(D, M)).astype(dtype)
        Uc = U.copy()
        for alpha in (0.7, rng.uniform(0.5, 2, D)):
            P = np.diag(np.broadcast_to(alpha, (D,))) + U.astype(np.float64) @ U.T.astype(np.float64)
            Pi = np.linalg.inv(P)
            V = rng.normal(size=(D, 3)).astype(dtype)
            R = L.woodbury_solve(alpha, U, V)
            assert R.dtype == dtype and R.shape == (D, 3)
            np.testing.assert_allclose(R, Pi @ V, atol=tol * 10)
            np.testing.assert_allclose(L.woodbury_solve(alpha, U, V[:, 0]), Pi @ V[:, 0], atol=tol * 10)
            np.testing.assert_allclose(L.woodbury_inverse(alpha, U), Pi, atol=tol)
            assert abs(L.woodbury_logdet(alpha, U) - np.linalg.slogdet(P)[1]) < tol * 10
            np.testing.assert_allclose(L.woodbury_diag_inverse(alpha, U), np.diag(Pi), atol=tol)
            S = L.woodbury_sample(alpha, U, 30000, seed=1)
            assert S.shape == (30000, D)
            np.testing.assert_array_equal(S, L.woodbury_sample(alpha, U, 30000, seed=1))
            sd = np.sqrt(np.outer(np.diag(Pi), np.diag(Pi)) + Pi ** 2) / math.sqrt(30000)
            assert np.abs((np.cov(S.T.astype(np.float64)) - Pi) / sd).max() < 6
        assert U.tobytes() == Uc.tobytes()
        s, Q = L.lowrank_eigh(U)
        w = np.linalg.eigvalsh(U.astype(np.float64) @ U.T.astype(np.float64))[::-1][:min(D, M)]
        assert s.shape == (min(D, M),) and Q.shape == (D, min(D, M))
        np.testing.assert_allclose(s, w, rtol=tol * 100)
        np.testing.assert_allclose(Q.T @ Q, np.eye(len(s)), atol=tol * 100)
        s2, Q2 = L.lowrank_eigh(U, rank=2)
        np.testing.assert_allclose(s2, w[:2], rtol=tol * 100)
        np.testing.assert_allclose(np.abs(Q2.T @ Q[:, :2]), np.eye(2), atol=1e-3 if dtype == np.float32 else 1e-8)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_linalg_kron_dense_and_ggn_pieces(dtype):
    rng = np.random.default_rng(1)
    L = pk.linalg
    tol = 1e-10 if dtype == np.float64 else 1e-4
    a = rng.normal(size=(4, 4))
    g = rng.normal(size=(3, 3))
    A, G = (a @ a.T).astype(dtype), (g @ g.T).astype(dtype)
    A64, G64 = A.astype(np.float64), G.astype(np.float64)
    eig = L.kron_eigh(A, G)
    for damp, sc in ((0.3, 1.0), (0.1, 2.5)):
        Kd = sc * np.kron(G64, A64) + damp * np.eye(12)
        B = rng.normal(size=(3, 4)).astype(dtype)
        np.testing.assert_allclose(L.kron_solve(A, G, B, damping=damp, scale=sc),
                                   np.linalg.solve(Kd, B.ravel()).reshape(3, 4), rtol=tol, atol=tol)
        Bb = rng.normal(size=(5, 3, 4))
        np.testing.assert_allclose(L.kron_solve(None, None, Bb, damping=damp, scale=sc, eig=eig),
                                   np.linalg.solve(Kd, Bb.reshape(5, 12).T).T.reshape(5, 3, 4), rtol=tol, atol=tol)
        Bm = rng.normal(size=(12, 2))
        np.testing.assert_allclose(L.kron_solve(A, G, Bm, damping=damp, scale=sc), np.linalg.solve(Kd, Bm),
                                   rtol=tol, atol=tol)
        Gv = rng.normal(size=(5, 2, 3)).astype(dtype)
        Av = rng.normal(size=(5, 4)).astype(dtype)
        Jr = np.einsum("nki,nj->nkij", Gv.astype(np.float64), Av.astype(np.float64)).reshape(5, 2, 12)
        ref = np.einsum("nkd,de,nle->nkl", Jr, np.linalg.inv(Kd), Jr)
        np.testing.assert_allclose(L.kron_inv_quad(eig, Gv, Av, damping=damp, scale=sc), ref, rtol=tol * 10,
                                   atol=tol * np.abs(ref).max())
        s = math.sqrt(damp)
        Kf = np.kron(sc * G64 + s * np.eye(3), A64 + s * np.eye(4))
        ref = np.einsum("nkd,de,nle->nkl", Jr, np.linalg.inv(Kf), Jr)
        np.testing.assert_allclose(L.kron_inv_quad(eig, Gv, Av, damping=damp, scale=sc, factored=True), ref,
                                   rtol=tol * 10, atol=tol * np.abs(ref).max())
        F = rng.uniform(0.1, 1, size=(3, 4)).astype(dtype)
        ref = np.einsum("nkd,d,nld->nkl", Jr, F.ravel().astype(np.float64), Jr)
        np.testing.assert_allclose(L.diag_inv_quad(F, Gv, Av), ref, rtol=tol * 10, atol=tol)
    # matrix normal: mean M, Cov(vec X) = U kron V
    Mn = rng.normal(size=(3, 4)).astype(dtype)
    Us, Vs = G + np.eye(3, dtype=dtype), A + np.eye(4, dtype=dtype)
    n = 30000
    S = L.matrix_normal_sample(Mn, Us, Vs, n, seed=3)
    C = np.kron(Us.astype(np.float64), Vs.astype(np.float64))
    assert S.shape == (n, 3, 4)
    assert np.abs((S.mean(0) - Mn).ravel() / np.sqrt(np.diag(C) / n)).max() < 5.5
    sd = np.sqrt(np.outer(np.diag(C), np.diag(C)) + C ** 2) / math.sqrt(n)
    assert np.abs((np.cov(S.reshape(n, 12).T.astype(np.float64)) - C) / sd).max() < 6
    # DensePrecision
    b = rng.normal(size=(6, 6))
    P = (b @ b.T + np.eye(6)).astype(dtype)
    dp = L.DensePrecision(P)
    Pi = np.linalg.inv(P.astype(np.float64))
    assert abs(dp.logdet() - np.linalg.slogdet(P.astype(np.float64))[1]) < tol * 10
    np.testing.assert_allclose(dp.solve(np.ones(6)), Pi.sum(1), rtol=tol * 10, atol=tol)
    np.testing.assert_allclose(dp.inverse(), Pi, rtol=tol * 10, atol=tol)
    # GGN pieces
    J = rng.normal(size=(5, 3, 8)).astype(dtype)
    l = rng.normal(size=(5, 3, 3))
    Lam = (l @ l.transpose(0, 2, 1)).astype(dtype)
    ref = np.einsum("nkd,nkl,nle->de", J.astype(np.float64), Lam.astype(np.float64), J.astype(np.float64))
    np.testing.assert_allclose(L.ggn_from_jacobians(J, Lam), ref, rtol=tol * 10, atol=tol * np.abs(ref).max())
    Gm = L.ggn_factor(J, Lam=Lam)
    np.testing.assert_allclose(Gm @ Gm.T, ref, rtol=tol * 10, atol=tol * np.abs(ref).max() * 10)
    Sq = L.psd_sqrt(Lam)
    np.testing.assert_allclose(Sq @ Sq.transpose(0, 2, 1), Lam, atol=tol * 100)
    Phi = rng.normal(size=(5, 2)).astype(dtype)
    K, h = 3, 2
    Jl = np.zeros((5, K, K * h + K))
    for k in range(K):
        Jl[:, k, k * h:(k + 1) * h] = Phi
        Jl[:, k, K * h + k] = 1
    ref = np.einsum("nkd,nkl,nle->de", Jl, Lam.astype(np.float64), Jl)
    np.testing.assert_allclose(L.ggn_linear(Phi, Lam), ref, rtol=tol * 10, atol=tol * np.abs(ref).max())


def test_linalg_bad_input():
    L = pk.linalg
    U, V = np.ones((6, 2)), np.ones((6, 2))
    cases = [
        (ValueError, "alpha", lambda: L.woodbury_solve(0.0, U, V)),
        (ValueError, "alpha", lambda: L.woodbury_logdet(-1.0, U)),
        (ValueError, "alpha", lambda: L.woodbury_solve(np.ones(5), U, V)),
        (ValueError, "alpha", lambda: L.woodbury_inverse(np.r_[np.ones(5), 0.0], U)),
        (ValueError, "Gmat", lambda: L.woodbury_solve(1.0, np.full((6, 2), np.nan), V)),
        (ValueError, "Gmat", lambda: L.woodbury_solve(1.0, U[:, 0], V)),
        (ValueError, "V", lambda: L.woodbury_solve(1.0, U, V[:5])),
        (ValueError, "V", lambda: L.woodbury_solve(1.0, U, np.full((6, 2), np.inf))),
        (TypeError, "Gmat", lambda: L.woodbury_solve(1.0, U + 0j, V)),
        (ValueError, "rank", lambda: L.lowrank_eigh(U, rank=0)),
        (pk.LinAlgError, "precision", lambda: L.DensePrecision(-np.eye(3))),
        (ValueError, "precision", lambda: L.DensePrecision(np.eye(3)[:2])),
        (pk.LinAlgError, "singular", lambda: L.kron_solve(np.zeros((2, 2)), np.eye(2), np.ones((2, 2)))),
        (ValueError, "B", lambda: L.kron_solve(np.eye(2), np.eye(3), np.ones((2, 3)))),
        (ValueError, "A", lambda: L.kron_solve(np.full((2, 2), np.nan), np.eye(3), np.ones((3, 2)))),
        (ValueError, "Av", lambda: L.kron_inv_quad(L.kron_eigh(np.eye(2), np.eye(3)), np.ones((4, 2, 3)),
                                                   np.ones((5, 2)))),
        (TypeError, "eig", lambda: L.kron_inv_quad((1, 2), np.ones((4, 2, 3)), np.ones((4, 2)))),
        (pk.LinAlgError, "U", lambda: L.matrix_normal_sample(np.zeros((2, 3)), -np.eye(2), np.eye(3), 2)),
        (ValueError, "V", lambda: L.matrix_normal_sample(np.zeros((2, 3)), np.eye(2), np.eye(2), 2)),
        (pk.LinAlgError, "Lam", lambda: L.psd_sqrt(-np.eye(3)[None])),
        (ValueError, "Lam", lambda: L.ggn_from_jacobians(np.ones((3, 2, 4)), np.ones((3, 3, 3)))),
        (ValueError, "J", lambda: L.ggn_factor(np.full((3, 2, 4), np.nan))),
        (ValueError, "n", lambda: L.woodbury_sample(1.0, U, -1)),
    ]
    for exc, name, call in cases:
        with pytest.raises(exc, match=name):
            call()
