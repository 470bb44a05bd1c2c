"""EKFAC (pk.ekfac, pk.EKFACCurvature) against dense references: each block is the
curvature block's diagonal in the K-FAC eigenbasis (George et al. 2018), written out here
with np.kron and the theta-order permutation; its algebra against dense NumPy.
"""
import numpy as np
import pytest

import pykfac as pk
from problems import small_problem


def theta_basis(QG, QA):
    """The eigenbasis QG (x) QA of a layer block, rows permuted from Wbar order
    (out x (in + 1), row-major) to theta order (W.ravel() then b)."""
    out, q = QG.shape[0], QA.shape[0]
    perm = np.empty(out * q, dtype=int)  # theta index -> Wbar index
    for i in range(out):
        perm[i * (q - 1):(i + 1) * (q - 1)] = i * q + np.arange(q - 1)
        perm[out * (q - 1) + i] = i * q + q - 1
    return np.kron(QG, QA)[perm]


def blocks(E):
    return [slice(E._offsets[l], E._offsets[l + 1]) for l in range(E.num_layers)]


@pytest.mark.parametrize("loss", ["mse", "ce", "bce"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_block_is_the_ggn_diagonal_in_the_kfac_basis(loss, activation):
    net, X, y = small_problem(loss, activation=activation)
    E = pk.ekfac(net, (X, y), loss)
    K = pk.kfac(net, (X, y), loss)
    G, dense, kdense = pk.ggn(net, X, y, loss), E.to_dense(), K.to_dense()
    for l, b in enumerate(blocks(E)):
        wG, QG, wA, QA = K.eigh()[l]
        Q = theta_basis(QG, QA)
        expected = Q @ np.diag(np.diag(Q.T @ G[b, b] @ Q)) @ Q.T
        np.testing.assert_allclose(dense[b, b], expected, rtol=1e-10, atol=1e-12)
        # closest to the GGN among matrices with K-FAC's eigenvectors
        assert np.linalg.norm(G[b, b] - dense[b, b]) <= np.linalg.norm(G[b, b] - kdense[b, b]) + 1e-12
    off = np.ones_like(dense, dtype=bool)
    for b in blocks(E):
        off[b, b] = False
    assert not dense[off].any()


def test_empirical_block_is_the_empirical_fisher_diagonal():
    net, X, y = small_problem("ce")
    E = pk.ekfac(net, (X, y), "ce", kind="empirical")
    K = pk.kfac(net, (X, y), "ce", kind="empirical")
    g = pk.grad_per_sample(net, X, y, "ce")
    F = g.T @ g
    for l, b in enumerate(blocks(E)):
        _, QG, _, QA = K.eigh()[l]
        Q = theta_basis(QG, QA)
        np.testing.assert_allclose(E.to_dense()[b, b], Q @ np.diag(np.diag(Q.T @ F[b, b] @ Q)) @ Q.T,
                                   rtol=1e-10, atol=1e-12)


def test_one_datum_is_kfac_and_batches_add_up():
    net, X, y = small_problem("ce")
    one = pk.ekfac(net, (X[:1], y[:1]), "ce")
    np.testing.assert_allclose(one.to_dense(), pk.kfac(net, (X[:1], y[:1]), "ce").to_dense(), atol=1e-12)
    whole = pk.ekfac(net, (X, y), "ce")
    split = pk.ekfac(net, [(X[:7], y[:7]), (X[7:], y[7:])], "ce")
    for a, b in zip(whole.scales, split.scales):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_float32_agrees_with_float64():
    net, X, y = small_problem("ce")
    net32 = pk.MLP.from_params([(L.W.astype(np.float32), L.b.astype(np.float32)) for L in net.layers],
                               activation="tanh")
    E64, E32 = pk.ekfac(net, (X, y), "ce"), pk.ekfac(net32, (X.astype(np.float32), y), "ce")
    assert E32.dtype == np.float32
    np.testing.assert_allclose(E32.to_dense(), E64.to_dense(), rtol=1e-3, atol=2e-4)


def test_algebra_against_dense():
    net, X, y = small_problem("mse")
    E = pk.ekfac(net, (X, y), "mse")
    B = E.to_dense()
    D = E.num_params
    rng = np.random.default_rng(1)
    V = rng.normal(size=(D, 4))
    np.testing.assert_allclose(E.matvec(V), B @ V, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(E @ V[:, 0], B @ V[:, 0], rtol=1e-10, atol=1e-12)
    damps = [0.3, 0.7, 1.1]
    shift = np.repeat(damps, np.diff(E._offsets))
    Bd = B + np.diag(shift)
    np.testing.assert_allclose(E.solve(V, damps), np.linalg.solve(Bd, V), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(E.solve(V, 0.5), np.linalg.solve(B + 0.5 * np.eye(D), V), rtol=1e-9)
    half = E.apply_power(V, -0.5, damping=damps)
    np.testing.assert_allclose(E.apply_power(half, -0.5, damping=damps), np.linalg.solve(Bd, V), rtol=1e-9,
                               atol=1e-12)
    assert E.logdet(damps) == pytest.approx(np.linalg.slogdet(Bd)[1], rel=1e-10)
    np.testing.assert_allclose(E.eigvals(), np.linalg.eigvalsh(B), atol=1e-10)
    assert E.trace() == pytest.approx(np.trace(B), rel=1e-12)
    assert E.frobenius_norm() == pytest.approx(np.linalg.norm(B), rel=1e-12)
    op = E.as_linear_operator(damping=damps, inverse=True)
    np.testing.assert_allclose(op.matvec(V[:, 1]), np.linalg.solve(Bd, V[:, 1]), rtol=1e-9)
    S = E.scaled(2.5)
    assert isinstance(S, pk.EKFACCurvature)
    np.testing.assert_allclose(S.to_dense(), 2.5 * B, rtol=1e-12, atol=1e-14)


def test_mc_is_seeded():
    net, X, y = small_problem("ce")
    a = pk.ekfac(net, (X, y), "ce", kind="mc", mc_samples=2, seed=5)
    b = pk.ekfac(net, (X, y), "ce", kind="mc", mc_samples=2, seed=5)
    c = pk.ekfac(net, (X, y), "ce", kind="mc", mc_samples=2, seed=6)
    assert all(np.array_equal(s, t) for s, t in zip(a.scales, b.scales))
    assert not all(np.array_equal(s, t) for s, t in zip(a.scales, c.scales))


def test_errors():
    net, X, y = small_problem("ce")
    with pytest.raises(TypeError, match="data: ekfac reads the data twice"):
        pk.ekfac(net, ((X, y) for _ in range(1)), "ce")
    with pytest.raises(ValueError, match="kind"):
        pk.ekfac(net, (X, y), "ce", kind="kfra")
    E = pk.ekfac(net, (X, y), "ce")
    with pytest.raises(ValueError, match="factored"):
        E.solve(np.ones(E.num_params), 1.0, factored=True)
    with pytest.raises(ValueError, match="V: expected shape"):
        E.matvec(np.ones(3))
    # an input that is always 0 leaves a zero eigenvalue: singular without damping
    X0 = X.copy()
    X0[:, 1] = 0
    E0 = pk.ekfac(net, (X0, y), "ce")
    with pytest.raises(pk.LinAlgError, match="layer 0 is singular"):
        E0.solve(np.ones(E0.num_params), 0.0)
    with pytest.raises(pk.LinAlgError, match="layer 0 is singular"):
        E0.logdet(0.0)
    E0.solve(np.ones(E0.num_params), 1e-3)  # fine with damping


# ---------------------------------------------------------------- Laplace with EKFAC
LIKE = {"regression": "mse", "classification": "ce", "binary": "bce"}


def laplace_case(likelihood, subset):
    net, X, y = small_problem(LIKE[likelihood])
    model, Z = net, X
    if subset == "last_layer":
        last = net.layers[-1]
        model, Z = pk.MLP.from_params([(last.W, last.b)]), net.features(X)
    return net, X, y, model, Z


@pytest.mark.parametrize("likelihood", ["regression", "classification", "binary"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_ekfac_laplace_against_dense(likelihood, subset):
    net, X, y, model, Z = laplace_case(likelihood, subset)
    sigma = 0.7 if likelihood == "regression" else 1.0
    L = model.n_layers
    prior = np.linspace(0.5, 2.0, L)
    la = pk.Laplace(net, likelihood, "ekfac", subset, prior_precision=prior, sigma_noise=sigma).fit((X, y))
    E = pk.ekfac(model, (Z, y), LIKE[likelihood])
    d = np.repeat(prior, np.diff(E._offsets))
    P = E.to_dense() / sigma ** 2 + np.diag(d)
    C = np.linalg.inv(P)
    np.testing.assert_allclose(la.posterior_precision_dense(), P, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(la.posterior_covariance_dense(), C, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(la.posterior_variance(), np.diag(C), rtol=1e-9)
    Jm = pk.jacobian(model, Z[:5])
    np.testing.assert_allclose(la.functional_variance(X[:5]), np.einsum("nkd,de,nle->nkl", Jm, C, Jm),
                               rtol=1e-9, atol=1e-12)
    # LML: CONVENTIONS.md with slogdet, and its gradient by central differences
    theta = la.mean
    loglik = la.log_likelihood()
    lml = loglik - 0.5 * theta @ (d * theta) - 0.5 * np.linalg.slogdet(P)[1] + 0.5 * np.sum(np.log(d))
    assert la.log_marginal_likelihood() == pytest.approx(lml, rel=1e-10)
    g, _ = la.log_marginal_likelihood_grad()
    h = 1e-5
    for i in range(L):
        up, dn = prior.copy(), prior.copy()
        up[i] *= np.exp(h)
        dn[i] *= np.exp(-h)
        fd = (la.log_marginal_likelihood(prior_precision=up) - la.log_marginal_likelihood(prior_precision=dn)) / (2 * h)
        assert g[i] == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_ekfac_laplace_samples_save_subset(tmp_path):
    net, X, y = small_problem("ce")
    la = pk.Laplace(net, "classification", "ekfac", prior_precision=1.5).fit((X, y))
    C = la.posterior_covariance_dense()
    S = la.sample(20000, seed=2)
    np.testing.assert_array_equal(S, la.sample(20000, seed=2))
    dev = S - la.mean
    se = np.sqrt((np.diag(C)[:, None] * np.diag(C)[None] + C ** 2) / 20000)  # sd of a sample covariance
    assert np.all(np.abs(np.cov(dev.T) - C) < 5 * se + 1e-12)
    assert np.all(np.abs(dev.mean(0)) < 5 * np.sqrt(np.diag(C) / 20000))
    la.save(tmp_path / "e.npz")
    back = pk.Laplace.load(tmp_path / "e.npz")
    assert back.structure == "ekfac"
    assert back.log_marginal_likelihood() == la.log_marginal_likelihood()
    np.testing.assert_array_equal(back.predictive(X[:4]), la.predictive(X[:4]))
    np.testing.assert_array_equal(back.sample(3, seed=1), la.sample(3, seed=1))
    # subset of data: the drawn rows' EKFAC times N / M
    sod = pk.Laplace(net, "classification", "ekfac", prior_precision=1.5, seed=1).fit((X, y), n_subset=12)
    idx = sod.subset_indices
    E = pk.ekfac(net, (X[idx], y[idx]), "ce")
    np.testing.assert_allclose(sod.posterior_precision_dense(),
                               E.to_dense() * (len(X) / 12) + 1.5 * np.eye(net.num_params), rtol=1e-9, atol=1e-10)
    # batches are read twice, so a generator works as well
    gen = pk.Laplace(net, "classification", "ekfac", prior_precision=1.5).fit(((X[i:i + 10], y[i:i + 10])
                                                                                for i in range(0, 30, 10)))
    np.testing.assert_allclose(gen.posterior_precision_dense(), la.posterior_precision_dense(), rtol=1e-10)


def test_ekfac_laplace_errors():
    net, X, y = small_problem("ce")
    la = pk.Laplace(net, "classification", "ekfac").fit((X, y))
    with pytest.raises(ValueError, match="override"):
        la.fit((X, y), override=False)
    with pytest.raises(ValueError, match="kron_damping"):
        pk.Laplace(net, "classification", "ekfac", kron_damping="factored")
    with pytest.raises(ValueError, match="prior"):
        pk.Laplace(net, "classification", "ekfac", prior_precision=np.ones(net.num_params)).fit((X, y))
    with pytest.raises(ValueError, match="kind"):
        pk.Laplace(net, "classification", "ekfac", kind="kfra")
    a = pk.Laplace(net, "classification", "ekfac", kind="mc", seed=3).fit((X, y))
    b = pk.Laplace(net, "classification", "ekfac", kind="mc", seed=3).fit((X, y))
    np.testing.assert_array_equal(a.posterior_precision_dense(), b.posterior_precision_dense())
