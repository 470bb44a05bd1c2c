"""Cross-checks of the new toolbox features against independent references:
dense NumPy built from pk.jacobian, closed-form output Hessians, finite
differences, scipy.stats and hand-written optimiser steps.

Covers subnetwork Laplace, kind="mc"/"empirical" for full/lowrank, fit(override=False),
joint / bridge_norm / sample-based predictives, log_prob, posterior_variance,
marglik_training, per-parameter weight decay in SGD/Adam, grad_per_sample and
the stochastic trace / diagonal estimators, plus bad inputs for each.
"""
import io
import math

import numpy as np
import pytest
import scipy.stats

import pykfac as pk

LOSS = {"regression": "mse", "classification": "ce", "binary": "bce"}


# ---------------------------------------------------------------------------
# helpers (independent references)
# ---------------------------------------------------------------------------
def make_net(sizes=(3, 4, 2), act="tanh", dtype=np.float64, seed=0):
    net = pk.MLP(list(sizes), activation=act, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 100)
    net.theta = (0.7 * rng.standard_normal(net.num_params)).astype(dtype)
    return net


def make_data(lik, N=7, d=3, K=2, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, d))
    if lik == "regression":
        y = rng.standard_normal((N, K))
    elif lik == "classification":
        y = rng.integers(0, K, N)
    else:
        y = rng.integers(0, 2, N).astype(np.float64)
    return X, y


def net_for(lik, dtype=np.float64, sizes=None, act="tanh", seed=0):
    K = 1 if lik == "binary" else 2
    sizes = sizes or (3, 4, K)
    return make_net(sizes, act, dtype, seed)


def out_hessians(lik, F):
    """Closed-form Lambda_n (N, K, K) from outputs F (N, K), float64."""
    F = np.asarray(F, dtype=np.float64)
    N, K = F.shape
    if lik == "regression":
        return np.broadcast_to(np.eye(K), (N, K, K)).copy()
    if lik == "binary":
        p = 1 / (1 + np.exp(-F[:, 0]))
        return (p * (1 - p)).reshape(N, 1, 1)
    e = np.exp(F - F.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    return np.einsum("nk,kl->nkl", p, np.eye(K)) - np.einsum("nk,nl->nkl", p, p)


def out_grads(lik, F, y):
    """d loss / d f per sample (N, K), float64."""
    F = np.asarray(F, dtype=np.float64)
    if lik == "regression":
        return F - np.asarray(y, dtype=np.float64).reshape(F.shape)
    if lik == "binary":
        yt = np.asarray(y, dtype=np.float64).reshape(-1)
        yt = (yt > 0).astype(np.float64)
        return (1 / (1 + np.exp(-F[:, 0])) - yt)[:, None]
    e = np.exp(F - F.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    p[np.arange(len(y)), np.asarray(y)] -= 1
    return p


def dense_ggn(net, X, lik):
    J = pk.jacobian(net, X).astype(np.float64)
    Lam = out_hessians(lik, net(X))
    return np.einsum("nkd,nkl,nle->de", J, Lam, J)


def summed_loss(lik, F, y):
    F = np.asarray(F, dtype=np.float64)
    if lik == "regression":
        return 0.5 * np.sum((F - np.asarray(y).reshape(F.shape)) ** 2)
    if lik == "binary":
        yt = 2 * (np.asarray(y).reshape(-1) > 0) - 1.0
        return np.sum(np.logaddexp(0, -yt * F[:, 0]))
    lse = np.logaddexp.reduce(F, axis=1)
    return np.sum(lse - F[np.arange(len(y)), y])


def dense_P(la):
    return np.asarray(la.posterior_precision_dense(), dtype=np.float64)


def saved_copy(la, net=None):
    f = io.BytesIO()
    la.save(f)
    f.seek(0)
    return pk.Laplace.load(f, net=net)


# ---------------------------------------------------------------------------
# subnetwork Laplace
# ---------------------------------------------------------------------------
SUB_IDX = np.array([0, 5, 7, 14, 15, 20, 25])  # 26 params: layer 0 [0,16), layer 1 [16,26)


@pytest.mark.parametrize("lik", ["regression", "classification", "binary"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_subnetwork_full_and_diag_precision(lik, dtype):
    net = net_for(lik, dtype)
    X, y = make_data(lik, K=net.n_outputs)
    idx = np.array([0, 3, 7, 13, 16, net.num_params - 1])
    sigma = 0.7 if lik == "regression" else 1.0
    T = 1.3
    pp = np.linspace(0.5, 2.0, idx.size)
    G = dense_ggn(net.copy() if dtype == np.float64 else make_net(net.sizes, "tanh", np.float64, 0), X, lik)
    Gs = G[np.ix_(idx, idx)]
    want = Gs / (sigma ** 2 * T) + np.diag(pp)
    tol = 1e-10 if dtype == np.float64 else 2e-4
    la = pk.Laplace(net, lik, "full", subset="subnetwork", subnetwork_indices=idx[::-1].copy(),
                    prior_precision=pp, sigma_noise=sigma, temperature=T).fit((X, y))
    assert la.n_params == idx.size
    np.testing.assert_allclose(la.mean, net.theta[idx])
    np.testing.assert_allclose(dense_P(la), want, rtol=tol, atol=tol)
    ld = la_diag = pk.Laplace(net, lik, "diag", subset="subnetwork", subnetwork_indices=idx,
                              prior_precision=pp, sigma_noise=sigma, temperature=T).fit((X, y))
    np.testing.assert_allclose(dense_P(ld), np.diag(np.diag(want)), rtol=tol, atol=tol)
    # log marginal likelihood, closed form
    for l in (la, la_diag):
        P = dense_P(l)
        L = summed_loss(lik, make_net(net.sizes, "tanh", np.float64, 0)(X), y)
        if lik == "regression":
            ll = -L / sigma ** 2 - X.shape[0] * net.n_outputs * math.log(sigma * math.sqrt(2 * math.pi))
        else:
            ll = -L
        th = np.asarray(net.theta[idx], dtype=np.float64)
        lml = ll - 0.5 * th @ (pp * th) - 0.5 * np.linalg.slogdet(P)[1] + 0.5 * np.sum(np.log(pp))
        assert abs(l.log_marginal_likelihood() - lml) < (1e-8 if dtype == np.float64 else 2e-3) * max(1, abs(lml))


def test_subnetwork_predictive_kernel_sample_nn():
    lik = "regression"
    net = net_for(lik)
    X, y = make_data(lik)
    Xt = make_data(lik, N=4, seed=9)[0]
    la = pk.Laplace(net, lik, "full", subset="subnetwork", subnetwork_indices=SUB_IDX,
                    prior_precision=0.8, sigma_noise=0.5).fit((X, y))
    C = np.linalg.inv(dense_P(la))
    Jt = pk.jacobian(net, Xt)[:, :, SUB_IDX]
    fv = np.einsum("nkd,de,nle->nkl", Jt, C, Jt)
    mean, var = la.predictive(Xt)
    np.testing.assert_allclose(mean, net(Xt), atol=1e-12)
    np.testing.assert_allclose(var, np.diagonal(fv, axis1=1, axis2=2) + 0.25, rtol=1e-9)
    np.testing.assert_allclose(la.functional_variance(Xt), fv, rtol=1e-9, atol=1e-12)
    Ker = la.kernel(Xt, X[:3])
    J2 = pk.jacobian(net, X[:3])[:, :, SUB_IDX]
    np.testing.assert_allclose(Ker, np.einsum("nkd,de,mle->nkml", Jt, C, J2), rtol=1e-9, atol=1e-12)
    # joint predictive
    mu, cov = la.predictive(Xt, joint=True)
    Jf = Jt.reshape(-1, SUB_IDX.size)
    np.testing.assert_allclose(cov, Jf @ C @ Jf.T + 0.25 * np.eye(Jf.shape[0]), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(mu, net(Xt).reshape(-1))
    # nn functional samples = f(x, theta with the subnetwork replaced by la.sample)
    S = la.sample(5, seed=4)
    F = la.functional_samples(Xt, pred_type="nn", n_samples=5, seed=4)
    for s, th in zip(F, S):
        m = net.copy()
        full = m.theta.copy()
        full[SUB_IDX] = th
        m.theta = full
        np.testing.assert_allclose(s, m(Xt), rtol=1e-12, atol=1e-12)
    # samples: empirical covariance approaches P^-1
    S = la.sample(20000, seed=1)
    np.testing.assert_allclose(np.cov(S.T), C, atol=0.05 * np.abs(C).max())


def test_subnetwork_layer_prior_with_empty_layer_and_optimize():
    lik = "classification"
    net = net_for(lik)
    X, y = make_data(lik)
    idx = np.array([1, 2, 9, 12])  # all in layer 0
    la = pk.Laplace(net, lik, "full", subset="subnetwork", subnetwork_indices=idx,
                    prior_precision=[2.0, 3.0]).fit((X, y))
    np.testing.assert_array_equal(la.prior_precision_diag, [2.0] * 4)
    lml = la.log_marginal_likelihood()
    assert np.isfinite(lml)
    g, _ = la.log_marginal_likelihood_grad()
    assert g.shape == (2,) and g[1] == 0.0
    la.optimize_prior_precision(method="marglik")
    pp = la.prior_precision
    assert la.log_marginal_likelihood() >= lml - 1e-9
    # stationary in the non-empty layer's prior
    for f in (1.05, 1 / 1.05):
        assert la.log_marginal_likelihood([pp[0] * f, pp[1]]) <= la.log_marginal_likelihood() + 1e-9
    # save / load keeps the posterior
    lb = saved_copy(la)
    np.testing.assert_array_equal(dense_P(lb), dense_P(la))
    np.testing.assert_array_equal(lb.sample(3, seed=2), la.sample(3, seed=2))
    assert lb.log_marginal_likelihood() == la.log_marginal_likelihood()


@pytest.mark.parametrize("structure", ["full", "diag"])
def test_subnetwork_gridsearch_and_save_load(structure):
    lik = "classification"
    net = net_for(lik)
    X, y = make_data(lik)
    Xv, yv = make_data(lik, N=5, seed=3)
    la = pk.Laplace(net, lik, structure, subset="subnetwork", subnetwork_indices=SUB_IDX).fit((X, y))
    grid = [0.01, 0.1, 1.0, 10.0]
    la.optimize_prior_precision(method="gridsearch", val_data=(Xv, yv), grid=grid)
    nlls = []
    for g in grid:
        lg = pk.Laplace(net, lik, structure, subset="subnetwork", subnetwork_indices=SUB_IDX,
                        prior_precision=g).fit((X, y))
        p = lg.predictive(Xv)
        nlls.append(-np.mean(np.log(p[np.arange(len(yv)), yv])))
    assert la.prior_precision == grid[int(np.argmin(nlls))]
    lb = saved_copy(la, net=net)
    np.testing.assert_array_equal(lb.predictive(Xv), la.predictive(Xv))
    np.testing.assert_array_equal(lb.predictive(Xv, pred_type="nn", n_samples=3, seed=1),
                                  la.predictive(Xv, pred_type="nn", n_samples=3, seed=1))
    np.testing.assert_array_equal(lb.mean, la.mean)


def test_subnetwork_bad_inputs():
    net = net_for("classification")
    D = net.num_params
    with pytest.raises(ValueError, match="subnetwork_indices"):
        pk.Laplace(net, "classification", "full", subset="subnetwork")
    for bad, exc in [([0, 0], ValueError), ([D], ValueError), ([-1], ValueError), ([], ValueError),
                     ([[0, 1]], ValueError), ([0.0, 1.0], TypeError), (np.ones(D, bool), TypeError)]:
        with pytest.raises(exc, match="subnetwork_indices"):
            pk.Laplace(net, "classification", "full", subset="subnetwork", subnetwork_indices=bad)
    with pytest.raises(ValueError, match="structure"):
        pk.Laplace(net, "classification", "kron", subset="subnetwork", subnetwork_indices=[0])
    with pytest.raises(ValueError, match="subnetwork_indices"):
        pk.Laplace(net, "classification", "full", subnetwork_indices=[0])
    with pytest.raises(ValueError, match="prior_precision"):
        pk.Laplace(net, "classification", "full", subset="subnetwork", subnetwork_indices=[0, 1, 2],
                   prior_precision=np.ones(5))


def test_subnetwork_param_prior_when_size_equals_layers():
    net = net_for("classification")
    X, y = make_data("classification")
    la = pk.Laplace(net, "classification", "diag", subset="subnetwork", subnetwork_indices=[0, 1],
                    prior_precision=[1.0, 5.0]).fit((X, y))
    np.testing.assert_array_equal(la.prior_precision_diag, [1.0, 5.0])


# ---------------------------------------------------------------------------
# kind = "mc" / "empirical"
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("lik", ["regression", "classification", "binary"])
def test_empirical_fisher_all_structures(lik):
    net = net_for(lik)
    X, y = make_data(lik, K=net.n_outputs)
    g = pk.grad_per_sample(net, X, y, LOSS[lik])
    EF = g.T @ g
    for st in ("full", "lowrank", "diag"):
        la = pk.Laplace(net, lik, st, kind="empirical", prior_precision=0.3).fit((X, y))
        want = EF + 0.3 * np.eye(EF.shape[0])
        if st == "diag":
            want = np.diag(np.diag(want))
        np.testing.assert_allclose(dense_P(la), want, rtol=1e-9, atol=1e-10)
    ls = pk.Laplace(net, lik, "full", kind="empirical", subset="subnetwork",
                    subnetwork_indices=SUB_IDX[:-1] if net.num_params < 26 else SUB_IDX).fit((X, y))
    sub = SUB_IDX[:-1] if net.num_params < 26 else SUB_IDX
    np.testing.assert_allclose(dense_P(ls), EF[np.ix_(sub, sub)] + np.eye(sub.size), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("lik", ["regression", "classification", "binary"])
def test_mc_fisher_converges_to_ggn_and_matches_lowrank(lik):
    net = net_for(lik)
    X, y = make_data(lik, N=4, K=net.n_outputs)
    G = dense_ggn(net, X, lik)
    la = pk.Laplace(net, lik, "full", kind="mc", mc_samples=4000, seed=5, prior_precision=1.0).fit((X, y))
    H = dense_P(la) - np.eye(G.shape[0])
    assert np.linalg.norm(H - G) < 0.1 * np.linalg.norm(G)
    lr = pk.Laplace(net, lik, "lowrank", kind="mc", mc_samples=4000, seed=5).fit((X, y))
    np.testing.assert_allclose(dense_P(lr), dense_P(la), rtol=1e-7, atol=1e-8)
    # seeds: reproducible and distinct
    P1 = dense_P(pk.Laplace(net, lik, "full", kind="mc", seed=1).fit((X, y)))
    P1b = dense_P(pk.Laplace(net, lik, "full", kind="mc", seed=1).fit((X, y)))
    P2 = dense_P(pk.Laplace(net, lik, "full", kind="mc", seed=2).fit((X, y)))
    np.testing.assert_array_equal(P1, P1b)
    assert np.abs(P1 - P2).max() > 1e-6
    # sub network mc = block of the full mc with the same seed
    sub = np.array([0, 3, 9, net.num_params - 1])
    ls = pk.Laplace(net, lik, "full", kind="mc", seed=1, subset="subnetwork", subnetwork_indices=sub).fit((X, y))
    np.testing.assert_allclose(dense_P(ls), P1[np.ix_(sub, sub)], rtol=1e-9, atol=1e-12)


def test_kind_bad_inputs():
    net = net_for("classification")
    for st in ("full", "lowrank", "diag"):
        with pytest.raises(ValueError, match="kind"):
            pk.Laplace(net, "classification", st, kind="kfra")
    for bad in (0, True, 1.5, -2):
        with pytest.raises(ValueError, match="mc_samples"):
            pk.Laplace(net, "classification", "full", kind="mc", mc_samples=bad)
    for bad, exc in ((-1, ValueError), (1.5, TypeError), (True, TypeError), ("1", TypeError)):
        with pytest.raises(exc, match="seed"):
            pk.Laplace(net, "classification", "full", kind="mc", seed=bad)


# ---------------------------------------------------------------------------
# fit(override=False)
# ---------------------------------------------------------------------------
CASES = [("full", "all", None), ("diag", "all", None), ("kron", "all", None), ("lowrank", "all", None),
         ("full", "last_layer", None), ("diag", "last_layer", None), ("kron", "last_layer", None),
         ("lowrank", "last_layer", None), ("full", "subnetwork", SUB_IDX), ("diag", "subnetwork", SUB_IDX)]


@pytest.mark.parametrize("structure,subset,idx", CASES)
def test_online_fit_equals_batch_fit(structure, subset, idx):
    lik = "regression"
    net = net_for(lik)
    X, y = make_data(lik, N=8)
    b1, b2, b3 = (X[:3], y[:3]), (X[3:6], y[3:6]), (X[6:], y[6:])
    kw = dict(subset=subset, subnetwork_indices=idx, prior_precision=0.7, sigma_noise=0.8)
    ref = pk.Laplace(net, lik, structure, **kw).fit([b1, b2, b3])
    la = pk.Laplace(net, lik, structure, **kw).fit(b1)
    la.fit(b2, override=False)
    lb = saved_copy(la)
    lb.fit(b3, override=False)
    la.optimize_prior_precision(method="marglik")
    pp = la.prior_precision
    la.fit(b3, override=False)
    assert la.prior_precision == pp  # kept
    la.prior_precision = 0.7
    for l in (la, lb):
        assert l.n_data == 8
        assert abs(l.loss - ref.loss) < 1e-10
        np.testing.assert_allclose(dense_P(l), dense_P(ref), rtol=1e-9, atol=1e-10)
        assert abs(l.log_marginal_likelihood() - ref.log_marginal_likelihood()) < 1e-8


@pytest.mark.parametrize("structure", ["full", "diag", "kron", "lowrank"])
def test_failed_online_fit_leaves_posterior(structure):
    lik = "classification"
    net = net_for(lik)
    X, y = make_data(lik, N=8)
    la = pk.Laplace(net, lik, structure, kind="mc" if structure != "kron" else "exact", seed=3).fit((X[:4], y[:4]))
    P, lml, s = dense_P(la), la.log_marginal_likelihood(), la.sample(2, seed=1)
    Xbad = X[4:].copy()
    Xbad[1, 0] = np.nan
    with pytest.raises(ValueError, match="X"):
        la.fit([(X[4:], y[4:]), (Xbad, y[4:])], override=False)
    with pytest.raises(ValueError, match="y"):
        la.fit((X[4:], y[4:] + 5), override=False)
    with pytest.raises(TypeError, match="override"):
        la.fit((X[4:], y[4:]), override="no")
    np.testing.assert_array_equal(dense_P(la), P)
    assert la.log_marginal_likelihood() == lml and la.n_data == 4
    np.testing.assert_array_equal(la.sample(2, seed=1), s)
    # and an online MC fit continues the seed stream: equals one fit of both batches
    if structure != "kron":
        ref = pk.Laplace(net, lik, structure, kind="mc", seed=3).fit([(X[:4], y[:4]), (X[4:], y[4:])])
        la.fit((X[4:], y[4:]), override=False)
        np.testing.assert_allclose(dense_P(la), dense_P(ref), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("structure", ["full"])
def test_online_mc_fit_after_load(structure):
    lik = "regression"
    net = net_for(lik)
    X, y = make_data(lik, N=8)
    b1, b2 = (X[:4], y[:4]), (X[4:], y[4:])
    ref = pk.Laplace(net, lik, structure, kind="mc", seed=3).fit([b1, b2])
    lb = saved_copy(pk.Laplace(net, lik, structure, kind="mc", seed=3).fit(b1))
    lb.fit(b2, override=False)
    np.testing.assert_allclose(dense_P(lb), dense_P(ref), rtol=1e-10)


# ---------------------------------------------------------------------------
# predictive: joint, bridge_norm, samples; log_prob; posterior_variance
# ---------------------------------------------------------------------------
ALL_STRUCT = [("full", {}), ("diag", {}), ("kron", {}), ("kron", {"kron_damping": "factored"}), ("lowrank", {}),
              ("lowrank", {"prior_precision": "param"}), ("full", {"subset": "last_layer"})]


def _build(net, lik, st, kw, X, y):
    kw = dict(kw)
    if kw.get("prior_precision") == "param":
        kw["prior_precision"] = np.linspace(0.5, 1.5, net.num_params)
    return pk.Laplace(net, lik, st, **kw).fit((X, y))


@pytest.mark.parametrize("st,kw", ALL_STRUCT)
def test_joint_predictive_regression(st, kw):
    lik = "regression"
    net = net_for(lik)
    X, y = make_data(lik)
    Xt = make_data(lik, N=3, seed=4)[0]
    la = _build(net, lik, st, kw, X, y)
    la.sigma_noise = 0.3
    C = np.linalg.inv(dense_P(la))
    if kw.get("subset") == "last_layer":
        J = np.asarray(pk.jacobian(net, Xt))[:, :, -la.n_params:]
    else:
        J = pk.jacobian(net, Xt)
    Jf = J.reshape(-1, J.shape[2])
    mu, cov = la.predictive(Xt, joint=True)
    np.testing.assert_allclose(cov, Jf @ C @ Jf.T + 0.09 * np.eye(Jf.shape[0]), rtol=1e-8, atol=1e-11)
    m2, v2 = la.predictive(Xt)
    np.testing.assert_allclose(np.diag(cov).reshape(v2.shape), v2, rtol=1e-8)
    np.testing.assert_allclose(mu, m2.reshape(-1))
    with pytest.raises(ValueError, match="joint"):
        la.predictive(Xt, joint=True, pred_type="nn")


def test_joint_rejected_for_classification_and_from_jacobians():
    net = net_for("classification")
    X, y = make_data("classification")
    la = pk.Laplace(net, "classification", "diag").fit((X, y))
    with pytest.raises(ValueError, match="joint"):
        la.predictive(X, joint=True)
    rn = net_for("regression")
    Xr, yr = make_data("regression")
    J = pk.jacobian(rn, Xr)
    lj = pk.Laplace.from_jacobians(J, f_map=rn(Xr), likelihood="regression", theta_map=rn.theta, y=yr)
    ln = pk.Laplace(rn, "regression", "full").fit((Xr, yr))
    mu, cov = lj.predictive(jacobians=J[:3], f_map=rn(Xr[:3]), joint=True)
    mu2, cov2 = ln.predictive(Xr[:3], joint=True)
    np.testing.assert_allclose(cov, cov2, rtol=1e-9)
    np.testing.assert_allclose(mu, mu2)


def ref_bridge_norm(mu, S):
    """laplace-torch 0.2's 'bridge_norm' (with its sum-zero correction), float64."""
    out = []
    for m, V in zip(mu, S):
        K = m.size
        s = V.sum(1)
        m = m - s * m.sum() / V.sum()
        V = V - np.outer(s, s) / V.sum()
        d = np.diag(V).copy()
        vm = d.mean() / math.sqrt(K / 2)
        m = m / math.sqrt(vm)
        d = d / vm
        a = (1 - 2 / K + np.exp(m) / K ** 2 * np.exp(-m).sum()) / d
        out.append(a / a.sum())
    return np.array(out)


@pytest.mark.parametrize("st", ["full", "kron", "diag"])
def test_bridge_norm_against_reference(st):
    net = make_net((3, 5, 3), seed=2)
    X, y = make_data("classification", N=9, K=3)
    Xt = make_data("classification", N=4, K=3, seed=7)[0]
    la = pk.Laplace(net, "classification", st, prior_precision=0.5).fit((X, y))
    fv = la.functional_variance(Xt)
    p = la.predictive(Xt, link_approx="bridge_norm")
    np.testing.assert_allclose(p, ref_bridge_norm(net(Xt), fv), rtol=1e-8)
    np.testing.assert_allclose(p.sum(1), 1.0)
    pb = la.predictive(Xt, link_approx="bridge")
    assert np.abs(p - pb).max() > 1e-6


@pytest.mark.parametrize("lik", ["classification", "binary", "regression"])
def test_functional_and_predictive_samples(lik):
    net = net_for(lik)
    X, y = make_data(lik, K=net.n_outputs)
    Xt = make_data(lik, N=3, K=net.n_outputs, seed=4)[0]
    la = pk.Laplace(net, lik, "kron", prior_precision=0.5).fit((X, y))
    F = la.functional_samples(Xt, n_samples=40000, seed=3)
    assert F.shape == (40000, 3, net.n_outputs)
    fv = la.functional_variance(Xt)
    np.testing.assert_allclose(F.mean(0), net(Xt), atol=0.03 * math.sqrt(fv.max()) + 1e-9)
    cov = np.einsum("snk,snl->nkl", F - F.mean(0), F - F.mean(0)) / F.shape[0]
    np.testing.assert_allclose(cov, fv, atol=0.05 * fv.max())
    Ps = la.predictive_samples(Xt, n_samples=50, seed=8)
    if lik != "regression":
        np.testing.assert_allclose(la.predictive(Xt, link_approx="mc", n_samples=50, seed=8), Ps.mean(0), rtol=1e-12)
    # nn samples are f(x, theta_s) with theta_s = la.sample(seed)
    Fn = la.functional_samples(Xt, pred_type="nn", n_samples=4, seed=6)
    for f, th in zip(Fn, la.sample(4, seed=6)):
        m = net.copy()
        m.theta = th
        np.testing.assert_allclose(f, m(Xt), rtol=1e-12, atol=1e-12)
    for bad in (0, -1, 1.5, True):
        with pytest.raises((ValueError, TypeError), match="n_samples"):
            la.functional_samples(Xt, n_samples=bad)


def test_samples_from_jacobians():
    net = net_for("classification")
    X, y = make_data("classification")
    J = pk.jacobian(net, X)
    lj = pk.Laplace.from_jacobians(J, f_map=net(X), likelihood="classification", theta_map=net.theta, y=y)
    ln = pk.Laplace(net, "classification", "full").fit((X, y))
    Xt = X[:3]
    a = lj.predictive_samples(jacobians=J[:3], f_map=net(Xt), n_samples=7, seed=2)
    b = ln.predictive_samples(Xt, n_samples=7, seed=2)
    np.testing.assert_allclose(a, b, rtol=1e-9)
    with pytest.raises(ValueError, match="pred_type"):
        lj.functional_samples(jacobians=J[:3], f_map=net(Xt), pred_type="nn")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("st,kw", ALL_STRUCT + [("diag", {"subset": "subnetwork", "subnetwork_indices": SUB_IDX}),
                                                ("kron", {"kron_damping": "factored", "prior_precision": [0.3, 4.0]})])
def test_posterior_variance_log_prob_square_norm(st, kw, dtype):
    lik = "classification"
    net = net_for(lik, dtype)
    X, y = make_data(lik)
    la = _build(net, lik, st, kw, X, y)
    P = dense_P(la)
    C = np.linalg.inv(P)
    tol = 1e-9 if dtype == np.float64 else 2e-3
    np.testing.assert_allclose(la.posterior_variance(), np.diag(C), rtol=tol)
    assert la.posterior_variance().dtype == np.float64
    rng = np.random.default_rng(0)
    T = np.asarray(la.mean, dtype=np.float64) + 0.3 * rng.standard_normal((4, la.n_params))
    want = scipy.stats.multivariate_normal(np.asarray(la.mean, dtype=np.float64), C).logpdf(T)
    np.testing.assert_allclose(la.log_prob(T), want, rtol=tol)
    assert abs(la.log_prob(T[0]) - want[0]) < tol * abs(want[0])
    d = T - la.mean
    np.testing.assert_allclose(la.square_norm(T), np.einsum("nd,de,ne->n", d, P, d), rtol=tol)
    np.testing.assert_allclose(la.log_prob(T, normalized=False), -0.5 * np.einsum("nd,de,ne->n", d, P, d), rtol=tol)
    for bad, exc in ((T[:, :-1], ValueError), (np.full(la.n_params, np.nan), ValueError),
                     (np.zeros((2, 2, la.n_params)), ValueError), (np.array(["a"] * la.n_params), TypeError),
                     (np.ones(la.n_params, bool), TypeError)):
        with pytest.raises(exc, match="theta"):
            la.log_prob(bad)


# ---------------------------------------------------------------------------
# marglik_training
# ---------------------------------------------------------------------------
def test_marglik_weight_decay_matches_manual_adam():
    X, y = make_data("regression", N=10)
    net = net_for("regression")
    n2 = net.copy()
    la, out, ml, losses = pk.marglik_training(net, (X, y), "regression", "diag", n_epochs=4, lr=0.01,
                                              prior_precision=2.0, sigma_noise=0.5, temperature=3.0,
                                              marglik_frequency=100)
    assert out is net and ml.size == 0 and losses.shape == (4,)
    opt = pk.optim.Adam(n2, "mse", 0.01, weight_decay=np.full(n2.num_params, 2.0 * 0.25 * 3.0 / 10))
    manual = [opt.step(X, y) for _ in range(4)]
    np.testing.assert_allclose(net.theta, n2.theta, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(losses, manual, rtol=1e-12)
    assert np.all(la.prior_precision == 2.0) and la.sigma_noise == 0.5 and la.temperature == 3.0


@pytest.mark.parametrize("structure,prior_structure", [("kron", "layer"), ("full", "param"), ("diag", "scalar"),
                                                       ("lowrank", "layer")])
def test_marglik_training_structures(structure, prior_structure):
    X, y = make_data("regression", N=10)
    net = net_for("regression")
    la, _, ml, losses = pk.marglik_training(net, [(X[:5], y[:5]), (X[5:], y[5:])], "regression", structure,
                                            n_epochs=3, lr=0.01, prior_structure=prior_structure,
                                            n_hypersteps=2, marglik_frequency=1)
    assert ml.shape == (6,) and losses.shape == (3,)
    size = {"scalar": 1, "layer": 2, "param": net.num_params}[prior_structure]
    assert np.size(la.prior_precision) == size
    # la is fitted at the restored net, with the hyperparameters of the best end-of-step log Z
    assert abs(la.log_marginal_likelihood() - max(ml[1::2])) < 1e-8 * max(1, abs(ml).max())
    ref = pk.Laplace(net, "regression", structure, prior_precision=la.prior_precision,
                     sigma_noise=la.sigma_noise).fit((X, y))
    assert abs(ref.log_marginal_likelihood() - la.log_marginal_likelihood()) < 1e-8 * abs(ref.log_marginal_likelihood())


def test_marglik_options_and_bad_args():
    X, y = make_data("regression", N=10)
    net = net_for("regression")
    la, _, ml, _ = pk.marglik_training(net, (X, y), "regression", "kron", n_epochs=2, batch_size=4,
                                       fix_sigma_noise=True, sigma_noise=0.4, n_hypersteps=3, optimizer="sgd")
    assert la.sigma_noise == 0.4 and ml.shape == (6,)
    Xc, yc = make_data("classification", N=10)
    netc = net_for("classification")
    la, _, ml, _ = pk.marglik_training(netc, (Xc, yc), "classification", "diag", n_epochs=2, n_hypersteps=0)
    assert ml.shape == (2,) and np.all(np.isfinite(ml))
    bad = [dict(n_epochs=0), dict(n_epochs=True), dict(lr_hyp=float("nan")), dict(n_hypersteps=-1),
           dict(marglik_frequency=0), dict(prior_precision=0.0), dict(temperature=-1.0),
           dict(prior_structure="param", structure="kron"), dict(prior_structure="block"),
           dict(optimizer="lbfgs"), dict(likelihood="poisson"), dict(sigma_noise=2.0, likelihood="classification")]
    for b in bad:
        kw = dict(likelihood="regression", structure="diag", n_epochs=1)
        kw.update(b)
        with pytest.raises(ValueError, match=next(iter(b)) if "likelihood" not in b or len(b) == 1 else "sigma_noise"):
            pk.marglik_training(net.copy(), (X, y) if kw["likelihood"] == "regression" else (Xc, yc), **kw)
    with pytest.raises((TypeError, ValueError), match="prior_precision"):
        pk.marglik_training(net, (X, y), "regression", "diag", n_epochs=1, prior_precision=[1.0, 2.0])
    with pytest.raises(TypeError, match="subset"):
        pk.marglik_training(net, (X, y), "regression", "diag", n_epochs=1, subset="last_layer")
    with pytest.raises(TypeError, match="net"):
        pk.marglik_training("net", (X, y), "regression", "diag", n_epochs=1)
    with pytest.raises(ValueError, match="batch_size"):
        pk.marglik_training(net, [(X, y)], "regression", "diag", n_epochs=1, batch_size=3)


def test_marglik_fix_sigma_noise_must_be_bool():
    X, y = make_data("regression", N=6)
    with pytest.raises(TypeError, match="fix_sigma_noise"):
        pk.marglik_training(net_for("regression"), (X, y), "regression", "diag", n_epochs=1, fix_sigma_noise="no")


# ---------------------------------------------------------------------------
# SGD / Adam with per-parameter weight decay
# ---------------------------------------------------------------------------
def _mean_grad(net, X, y, loss):
    L, g = pk.loss_and_grad(net, X, y, loss)
    return L / X.shape[0], np.asarray(g, dtype=np.float64) / X.shape[0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sgd_adam_vector_weight_decay_manual(dtype):
    net = net_for("classification", dtype)
    X, y = make_data("classification")
    wd = np.linspace(0.0, 0.5, net.num_params)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    # SGD, Nesterov: b = g (first), theta -= lr (g + mu b)
    n1 = net.copy()
    opt = pk.optim.SGD(n1, "ce", 0.1, momentum=0.5, weight_decay=wd)
    th = np.asarray(net.theta, dtype=np.float64)
    b = None
    for _ in range(3):
        m = net.copy()
        m.theta = th.astype(dtype)
        _, g = _mean_grad(m, X, y, "ce")
        g = g + wd * th
        b = g if b is None else 0.5 * b + g
        th = th - 0.1 * (g + 0.5 * b)
        opt.step(X, y)
    np.testing.assert_allclose(n1.theta, th, rtol=tol, atol=tol)
    # Adam
    n2 = net.copy()
    opt = pk.optim.Adam(n2, "ce", 0.05, weight_decay=wd)
    th = np.asarray(net.theta, dtype=np.float64)
    mm = vv = 0
    for t in range(1, 4):
        m = net.copy()
        m.theta = th.astype(dtype)
        _, g = _mean_grad(m, X, y, "ce")
        g = g + wd * th
        mm = 0.9 * mm + 0.1 * g
        vv = 0.999 * vv + 0.001 * g * g
        th = th - 0.05 * (mm / (1 - 0.9 ** t)) / (np.sqrt(vv / (1 - 0.999 ** t)) + 1e-8)
        opt.step(X, y)
    np.testing.assert_allclose(n2.theta, th, rtol=10 * tol, atol=10 * tol)


def test_vector_weight_decay_save_load_and_constant():
    net = net_for("regression")
    X, y = make_data("regression")
    for cls, kw in ((pk.optim.SGD, dict(momentum=0.9)), (pk.optim.Adam, {})):
        a, b = net.copy(), net.copy()
        oa = cls(a, "mse", 0.01, weight_decay=np.full(net.num_params, 0.3), **kw)
        ob = cls(b, "mse", 0.01, weight_decay=0.3, **kw)
        for _ in range(2):
            oa.step(X, y)
            ob.step(X, y)
        np.testing.assert_allclose(a.theta, b.theta, rtol=1e-13, atol=1e-15)
        wd = np.linspace(0, 1, net.num_params)
        c = net.copy()
        oc = cls(c, "mse", 0.01, weight_decay=wd, **kw)
        oc.step(X, y)
        f = io.BytesIO()
        oc.save(f)
        f.seek(0)
        od = cls.load(f)
        np.testing.assert_array_equal(od.weight_decay, wd)
        sd = oc.state_dict()
        c2 = c.copy()
        oe = cls(c2, "mse", 0.01, weight_decay=wd, **kw)
        oe.load_state_dict(sd)
        for o in (oc, od, oe):
            o.step(X, y)
        np.testing.assert_array_equal(od.net.theta, c.theta)
        np.testing.assert_array_equal(c2.theta, c.theta)


def test_vector_weight_decay_bad():
    net = net_for("regression")
    D = net.num_params
    for bad, exc in ((np.ones(D - 1), ValueError), (np.ones((D, 1)), ValueError), (np.full(D, np.nan), ValueError),
                     (-np.ones(D), ValueError), (np.ones(D, bool), TypeError), (np.array(["a"] * D), TypeError),
                     (np.full(D, np.inf), ValueError), (True, TypeError), ("0.1", TypeError)):
        for cls in (pk.optim.SGD, pk.optim.Adam):
            with pytest.raises(exc, match="weight_decay"):
                cls(net, "mse", 0.01, weight_decay=bad)
    with pytest.raises(TypeError, match="weight_decay"):
        pk.optim.KFAC(net, "mse", weight_decay=np.ones(D))


# ---------------------------------------------------------------------------
# grad_per_sample
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("lik", ["regression", "classification", "binary"])
@pytest.mark.parametrize("act", ["tanh", "relu", "sigmoid", "gelu", "elu", "softplus", "leaky_relu", "identity"])
def test_grad_per_sample_reference(lik, act):
    net = net_for(lik, act=act)
    X, y = make_data(lik, K=net.n_outputs)
    g = pk.grad_per_sample(net, X, y, LOSS[lik])
    J = pk.jacobian(net, X)
    want = np.einsum("nkd,nk->nd", J, out_grads(lik, net(X), y))
    np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.sum(0), pk.loss_and_grad(net, X, y, LOSS[lik])[1], rtol=1e-10, atol=1e-12)


def test_grad_per_sample_finite_differences_and_float32():
    lik = "classification"
    net = net_for(lik)
    X, y = make_data(lik, N=3)
    g = pk.grad_per_sample(net, X, y, "ce")
    th = net.theta.copy()
    eps = 1e-6
    fd = np.zeros_like(g)
    m = net.copy()
    for i in range(th.size):
        for s in (1, -1):
            t = th.copy()
            t[i] += s * eps
            m.theta = t
            fd[:, i] += s * pk.loss_per_sample(m, X, y, "ce") / (2 * eps)
    np.testing.assert_allclose(g, fd, atol=1e-7)
    n32 = net_for(lik, np.float32)
    g32 = pk.grad_per_sample(n32, X.astype(np.float32), y, "ce")
    assert g32.dtype == np.float32
    np.testing.assert_allclose(g32, g, rtol=1e-4, atol=1e-5)


def test_grad_per_sample_layouts_unchanged_inputs():
    lik = "regression"
    net = net_for(lik)
    X, y = make_data(lik, N=6)
    ref = pk.grad_per_sample(net, X, y, "mse")
    big = np.zeros((12, 6))
    big[::2, ::2] = X
    Xs, yf = big[::2, ::2], np.asfortranarray(y)
    Xr = X.copy()
    Xr.setflags(write=False)
    X0, y0, th0 = X.copy(), y.copy(), net.theta.copy()
    for Xi, yi in ((Xs, y), (np.asfortranarray(X), yf), (Xr, y), (X.tolist(), y.tolist())):
        np.testing.assert_allclose(pk.grad_per_sample(net, Xi, yi, "mse"), ref, rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(net.theta, th0)


def test_grad_per_sample_bad_inputs():
    net = net_for("classification")
    X, y = make_data("classification")
    cases = [((X[:, :2], y, "ce"), "X"), ((X, y[:-1], "ce"), "y"), ((X, y + 7, "ce"), "y"),
             ((X, y, "hinge"), "loss"), ((np.full_like(X, np.nan), y, "ce"), "X"),
             ((X[0], y, "ce"), "X"), ((X, y.astype(float) + 0.5, "ce"), "y")]
    for args, name in cases:
        with pytest.raises((ValueError, TypeError), match=name):
            pk.grad_per_sample(net, *args)
    with pytest.raises(TypeError, match="net"):
        pk.grad_per_sample("net", X, y, "ce")


# ---------------------------------------------------------------------------
# trace_estimate / diag_estimate
# ---------------------------------------------------------------------------
def test_trace_diag_estimates():
    rng = np.random.default_rng(0)
    D = 12
    U = rng.standard_normal((D, 2))
    A = U @ U.T
    assert abs(pk.trace_estimate(A, 6, seed=1) - np.trace(A)) < 1e-9 * np.trace(A)  # rank 2 <= 6/3
    Dg = np.diag(rng.uniform(1, 2, D))
    assert abs(pk.trace_estimate(Dg, 1, method="hutchinson", seed=3) - np.trace(Dg)) < 1e-12
    np.testing.assert_allclose(pk.diag_estimate(Dg, 1, seed=2), np.diag(Dg), rtol=1e-12)
    B = rng.standard_normal((D, D))
    B = B + B.T
    est = np.mean([pk.trace_estimate(B, 4, method="hutchinson", seed=s) for s in range(400)])
    assert abs(est - np.trace(B)) < 0.15 * np.linalg.norm(B)
    dest = np.mean([pk.diag_estimate(B, 5, seed=s) for s in range(400)], axis=0)
    assert np.abs(dest - np.diag(B)).max() < 0.5
    assert pk.trace_estimate(B, 9, seed=5) == pk.trace_estimate(B, 9, seed=5)
    # operators: GGN, float32 network and a float32 dense array
    net = net_for("classification")
    X, y = make_data("classification", N=2)
    G = dense_ggn(net, X, "classification")  # rank <= 2 (softmax: K - 1 per datum)
    op = pk.GGNOperator(net, X, y, "ce")
    assert abs(pk.trace_estimate(op, 9, seed=0) - np.trace(G)) < 1e-8 * np.trace(G)
    n32 = net_for("classification", np.float32)
    op32 = pk.GGNOperator(n32, X.astype(np.float32), y, "ce")
    assert abs(pk.trace_estimate(op32, 9, seed=0) - np.trace(G)) < 1e-3 * np.trace(G)
    d32 = pk.diag_estimate(op32, 3, seed=0)
    assert d32.shape == (net.num_params,) and np.all(np.isfinite(d32))
    assert abs(pk.trace_estimate(A.astype(np.float32), 6, seed=1) - np.trace(A)) < 1e-4 * np.trace(A)


def test_trace_diag_bad_inputs():
    A = np.eye(4)
    for bad in (0, True, 2.0, -1, None):
        with pytest.raises(ValueError, match="num_matvecs"):
            pk.trace_estimate(A, bad)
        with pytest.raises(ValueError, match="num_matvecs"):
            pk.diag_estimate(A, bad)
    with pytest.raises(ValueError, match="num_matvecs"):
        pk.trace_estimate(A, 2)  # hutch++ needs 3
    for badA in (np.ones((3, 4)), np.ones(4), [[1.0]], np.ones((0, 0))):
        with pytest.raises(ValueError, match="A"):
            pk.trace_estimate(badA, 3)
        with pytest.raises(ValueError, match="A"):
            pk.diag_estimate(badA, 3)
    with pytest.raises(ValueError, match="method"):
        pk.trace_estimate(A, 3, method="girard")
    with pytest.raises(TypeError, match="seed"):
        pk.trace_estimate(A, 3, seed=1.5)
    with pytest.raises(TypeError, match="seed"):
        pk.diag_estimate(A, 3, seed=True)


# ---------------------------------------------------------------------------
# additions: last-layer kinds, LML gradient of a subnetwork, joint flag
# ---------------------------------------------------------------------------
def test_last_layer_empirical_and_mc_agree():
    net = make_net((3, 4, 2), seed=3)
    X, y = make_data("classification")
    g = pk.grad_per_sample(net, X, y, "ce")
    EF = (g.T @ g)[-10:, -10:]
    Ps = {}
    for st in ("full", "lowrank", "diag"):
        la = pk.Laplace(net, "classification", st, subset="last_layer", kind="empirical").fit((X, y))
        want = EF if st != "diag" else np.diag(np.diag(EF))
        np.testing.assert_allclose(dense_P(la) - np.eye(10), want, atol=1e-12)
        Ps[st] = dense_P(pk.Laplace(net, "classification", st, subset="last_layer", kind="mc", seed=2).fit((X, y)))
    np.testing.assert_allclose(Ps["lowrank"], Ps["full"], atol=1e-12)
    np.testing.assert_allclose(np.diag(Ps["diag"]), np.diag(Ps["full"]), atol=1e-12)


def test_subnetwork_lml_grad_finite_differences():
    net = net_for("regression")
    X, y = make_data("regression")
    idx = np.array([2, 6, 17, 22])
    pp = np.array([0.5, 1.2, 2.0, 0.9])
    la = pk.Laplace(net, "regression", "full", subset="subnetwork", subnetwork_indices=idx,
                    prior_precision=pp, sigma_noise=0.6).fit((X, y))
    gp, gs = la.log_marginal_likelihood_grad()
    h = 1e-6
    for i in range(4):
        e = np.zeros(4)
        e[i] = h
        fd = (la.log_marginal_likelihood(pp * np.exp(e)) - la.log_marginal_likelihood(pp * np.exp(-e))) / (2 * h)
        assert abs(fd - gp[i]) < 1e-6 * max(1, abs(fd))
    fd = (la.log_marginal_likelihood(sigma_noise=0.6 * math.exp(h))
          - la.log_marginal_likelihood(sigma_noise=0.6 * math.exp(-h))) / (2 * h)
    assert abs(fd - gs) < 1e-6 * max(1, abs(fd))


def test_joint_flag_must_be_bool():
    net = net_for("regression")
    X, y = make_data("regression")
    la = pk.Laplace(net, "regression", "diag").fit((X, y))
    with pytest.raises(TypeError, match="joint"):
        la.predictive(X, joint="no")
