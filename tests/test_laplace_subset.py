"""Subset-of-data Laplace: ``fit(data, n_subset=M)`` (laplace-torch's FunctionalLaplace
``n_subset``). References: the curvature of the drawn rows times N / M is a plain fit on
those rows at temperature M / N (P = G_sub N/M + P0), while the loss covers every row;
with M = N the fit is the plain fit; the draw is uniform and independent of batching.
"""
import numpy as np
import pytest

import pykfac as pk
from problems import small_problem

LIKE = {"regression": "mse", "classification": "ce", "binary": "bce"}
CASES = [(s, sub) for s in ("full", "diag", "kron", "lowrank") for sub in ("all", "last_layer")]


def make(likelihood="classification", N=30, seed=0):
    return small_problem(LIKE[likelihood], N, seed)


def laplace(net, likelihood, structure, subset, **kw):
    sigma = 0.8 if likelihood == "regression" else 1.0
    return pk.Laplace(net, likelihood, structure, subset, prior_precision=0.7, sigma_noise=sigma, seed=3, **kw)


def batches(X, y, cuts):
    edges = [0, *cuts, len(X)]
    return [(X[a:b], y[a:b]) for a, b in zip(edges[:-1], edges[1:])]


@pytest.mark.parametrize("structure,subset", CASES)
def test_all_rows_is_the_plain_fit(structure, subset):
    net, X, y = make("regression")
    plain = laplace(net, "regression", structure, subset).fit((X, y))
    sod = laplace(net, "regression", structure, subset).fit((X, y), n_subset=len(X))
    assert np.array_equal(sod.subset_indices, np.arange(len(X)))
    np.testing.assert_allclose(sod.posterior_precision_dense(), plain.posterior_precision_dense(),
                               rtol=1e-12, atol=1e-12)
    assert sod.log_marginal_likelihood() == pytest.approx(plain.log_marginal_likelihood(), rel=1e-12)
    assert plain.subset_indices is None


@pytest.mark.parametrize("likelihood", ["regression", "classification", "binary"])
@pytest.mark.parametrize("structure,subset", CASES)
def test_subset_is_scaled_curvature_of_its_rows(likelihood, structure, subset):
    net, X, y = make(likelihood)
    M, N = 11, len(X)
    sod = laplace(net, likelihood, structure, subset).fit((X, y), n_subset=M)
    idx = sod.subset_indices
    assert idx.shape == (M,) and np.all(np.diff(idx) > 0) and 0 <= idx[0] and idx[-1] < N
    # the drawn rows' curvature at temperature M/N: P = G_sub N/M + P0
    ref = laplace(net, likelihood, structure, subset, temperature=M / N).fit((X[idx], y[idx]))
    np.testing.assert_allclose(sod.posterior_precision_dense(), ref.posterior_precision_dense(),
                               rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(sod.functional_variance(X[:5]), ref.functional_variance(X[:5]),
                               rtol=1e-8, atol=1e-10)
    # ... while the likelihood term covers all N rows
    assert sod.n_data == N
    assert sod.loss == pytest.approx(pk.loss(net, X, y, LIKE[likelihood]), rel=1e-12)
    rest_sod = sod.log_marginal_likelihood() - sod.log_likelihood()
    rest_ref = ref.log_marginal_likelihood() - ref.log_likelihood()
    assert rest_sod == pytest.approx(rest_ref, rel=1e-9)


def test_draw_ignores_batching_and_follows_the_seed():
    net, X, y = make()
    one = laplace(net, "classification", "full", "all").fit((X, y), n_subset=9)
    split = laplace(net, "classification", "full", "all").fit(batches(X, y, [4, 5, 17]), n_subset=9)
    gen = laplace(net, "classification", "full", "all").fit((b for b in batches(X, y, [20])), n_subset=9)
    for other in (split, gen):
        assert np.array_equal(other.subset_indices, one.subset_indices)
        np.testing.assert_allclose(other.posterior_precision_dense(), one.posterior_precision_dense(),
                                   rtol=1e-12)
    again = laplace(net, "classification", "full", "all").fit((X, y), n_subset=9)
    assert np.array_equal(again.subset_indices, one.subset_indices)
    seed9 = pk.Laplace(net, "classification", "full", seed=9).fit((X, y), n_subset=9)
    assert not np.array_equal(seed9.subset_indices, one.subset_indices)


def test_draw_is_uniform_without_replacement():
    """Every row is kept with probability M/N, whatever batch it arrives in."""
    net, X, y = make("regression", N=12)
    M, runs = 4, 600
    counts = np.zeros(12)
    for seed in range(runs):
        la = pk.Laplace(net, "regression", "diag", seed=seed).fit(batches(X, y, [2, 9]), n_subset=M)
        assert len(set(la.subset_indices)) == M
        counts[la.subset_indices] += 1
    p = M / 12
    sd = np.sqrt(runs * p * (1 - p))
    assert np.all(np.abs(counts - runs * p) < 5 * sd), counts


def test_online_fit_adds_the_scaled_subset():
    net, X, y = make()
    X1, y1, X2, y2 = X[:12], y[:12], X[12:], y[12:]
    both = laplace(net, "classification", "full", "all").fit((X1, y1))
    both.fit((X2, y2), override=False, n_subset=6)
    idx = both.subset_indices
    H1 = pk.ggn(net, X1, y1, "ce")
    H2 = pk.ggn(net, X2[idx], y2[idx], "ce") * (len(X2) / 6)
    np.testing.assert_allclose(both.posterior_precision_dense(), H1 + H2 + 0.7 * np.eye(net.num_params),
                               rtol=1e-10, atol=1e-12)
    assert both.n_data == len(X)
    assert both.loss == pytest.approx(pk.loss(net, X, y, "ce"), rel=1e-12)
    # and with every row drawn, the online fit equals one fit on all the data
    for structure in ("kron", "lowrank"):
        on = laplace(net, "classification", structure, "all").fit((X1, y1))
        on.fit((X2, y2), override=False, n_subset=len(X2))
        whole = laplace(net, "classification", structure, "all").fit((X, y))
        np.testing.assert_allclose(on.posterior_precision_dense(), whole.posterior_precision_dense(),
                                   rtol=1e-10, atol=1e-10)


def test_mc_subset_is_reproducible():
    net, X, y = make()
    a = pk.Laplace(net, "classification", "diag", kind="mc", seed=4).fit((X, y), n_subset=10)
    b = pk.Laplace(net, "classification", "diag", kind="mc", seed=4).fit((X, y), n_subset=10)
    assert np.array_equal(a.posterior_precision_dense(), b.posterior_precision_dense())


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "5"])
def test_bad_n_subset(bad):
    net, X, y = make()
    with pytest.raises(ValueError, match="n_subset: expected a positive int"):
        pk.Laplace(net, "classification", "diag").fit((X, y), n_subset=bad)


def test_too_large_n_subset_leaves_the_fit_unchanged():
    net, X, y = make()
    la = laplace(net, "classification", "full", "all").fit((X, y), n_subset=10)
    P, idx = la.posterior_precision_dense(), la.subset_indices
    with pytest.raises(ValueError, match=r"n_subset: expected at most the number of data points \(30\), got 31"):
        la.fit((X, y), n_subset=31)
    assert np.array_equal(la.posterior_precision_dense(), P) and np.array_equal(la.subset_indices, idx)


@pytest.mark.parametrize("likelihood", ["regression", "classification"])
def test_lowrank_subset_is_the_gp_laplace(likelihood):
    """The function-space (GP) form of Immer et al. 2021, written out with NumPy: prior
    kernel K = J P0^-1 J^T on the M drawn rows, output-Hessian roots S (S S^T = Lambda,
    full blocks), B = I + c S^T K_MM S with c = (N/M) / sigma^2; then
    J* P^-1 J*^T = K** - c K*M S B^-1 S^T K_M* and log det P - log det P0 = log det B."""
    net, X, y = make(likelihood, N=40)
    M, N = 13, 40
    sigma = 0.8 if likelihood == "regression" else 1.0
    la = pk.Laplace(net, likelihood, "lowrank", prior_precision=0.7, sigma_noise=sigma, seed=1)
    la.fit((X, y), n_subset=M)
    idx = la.subset_indices
    Jm = pk.jacobian(net, X[idx])                        # (M, K, D)
    Js = pk.jacobian(net, X[:6])
    K = Jm.shape[1]
    S = pk.output_curvature(net, X[idx], LIKE[likelihood]).sqrt  # (M, K, r)
    Kmm = np.einsum("akd,bld->akbl", Jm, Jm).reshape(M * K, M * K) / 0.7
    Ksm = np.einsum("akd,bld->akbl", Js, Jm).reshape(6 * K, M * K) / 0.7
    Kss = np.einsum("akd,ald->akl", Js, Js) / 0.7
    r = S.shape[2]
    Sb = np.zeros((M * K, M * r))
    for m in range(M):
        Sb[m * K:(m + 1) * K, m * r:(m + 1) * r] = S[m]
    c = (N / M) / sigma ** 2
    B = np.eye(M * r) + c * Sb.T @ Kmm @ Sb
    V = Ksm @ Sb
    cov = Kss - c * np.einsum("aki,ij,alj->akl", V.reshape(6, K, -1), np.linalg.inv(B), V.reshape(6, K, -1))
    np.testing.assert_allclose(la.functional_variance(X[:6]), cov, rtol=1e-8, atol=1e-10)
    logdet_ratio = la.log_det_posterior_precision() - net.num_params * np.log(0.7)
    assert logdet_ratio == pytest.approx(np.linalg.slogdet(B)[1], rel=1e-9)
