"""Multi-output "bce" (multi-label logistic; kfac-jax's MultiBernoulliNegativeLogProbLoss).

A network with K outputs and labels y (N, K) in {0, 1} (-1 read as 0) has
    L = sum_n sum_k log(1 + exp(-t_nk f_nk)),  t = 2y - 1,
dl/df = sigmoid(f) - y, Lambda = diag(p (1 - p)), S = diag(sqrt(p (1 - p))),
and MC targets drawn independently per output from Bernoulli(p_k).

Every public function is checked against references that do not share the C
core's loss code: finite differences of pk.loss (gradients) and of pk's
gradient (Hessians), J^T Lambda J from pk.jacobian (GGN), the pure-NumPy
tests/reference.py (forward, per-sample pre-activation gradients, K-FAC
factors, KFRA, exact MC means and variances by enumerating all 2^K label
vectors), the Kronecker exactness identities of CONVENTIONS.md, and the
decomposition of a K-output problem into K single-output problems that share
the hidden layers. K = 1 keeps its (N,) labels, bit for bit equal to (N, 1).
"""
import re

import numpy as np
import pytest

import pykfac as pk
import reference as ref
from conftest import build_net

KS = (2, 3)
ACTS = ("tanh", "softplus")
DTYPES = (np.float64, np.float32)
# float32 results against the float64 reference of the same (float32) weights:
# the tolerance test_wrapper.py's float32 check uses
TOL32 = 2e-4


def problem(K, act="tanh", dtype=np.float64, N=7, hidden=(5, 4), seed=0):
    """(net, X, y): y (N, K) 0/1 with one -1 (read as 0); X exact in float32."""
    net = build_net([3, *hidden, K], act, seed, dtype)
    rng = np.random.default_rng(seed + 50)
    X = rng.normal(size=(N, 3)).astype(np.float32).astype(np.float64)
    y = rng.integers(0, 2, size=(N, K)).astype(np.float64)
    y[1, K - 1] = -1.0
    assert 0 < np.sum(y > 0) < N * K  # both labels present
    return net, X, y


def net64(net):
    """The float64 network with the same (possibly float32-rounded) weights."""
    return pk.MLP.from_params([(np.asarray(l.W, np.float64), np.asarray(l.b, np.float64)) for l in net.layers],
                              activation=list(net.activations))


def rnet_of(net):
    return ref.RefMLP([(np.asarray(l.W, np.float64), np.asarray(l.b, np.float64)) for l in net.layers],
                      list(net.activations))


def y01(y):
    return (np.asarray(y) > 0).astype(np.float64)


def tol(dtype, tight):
    return tight if dtype == np.float64 else TOL32


def at_theta(net, fn):
    """theta -> fn() evaluated with net.theta = theta (restored afterwards)."""
    def f(theta):
        old = net.theta.copy()
        net.theta[:] = theta
        try:
            return fn()
        finally:
            net.theta[:] = old
    return f


def dense_ggn(net, X):
    """sum_n J_n^T diag(p_n (1 - p_n)) J_n from pk.jacobian (float64)."""
    n64 = net64(net)
    J = pk.jacobian(n64, X)
    p = ref.sigmoid(n64(X))
    return np.einsum("nkp,nk,nkq->pq", J, p * (1 - p), J)


# ---------------------------------------------------------------- loss and gradient
@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_and_grad(K, act, dtype):
    net, X, y = problem(K, act, dtype)
    f = rnet_of(net)(X)
    t = 2 * y01(y) - 1
    want_per = np.sum(np.logaddexp(0.0, -t * f), axis=1)
    per = pk.loss_per_sample(net, X, y, "bce")
    assert per.shape == (7,) and per.dtype == np.float64
    ref.assert_close(per, want_per, tol(dtype, 1e-13), "per-sample losses")
    L, g = pk.loss_and_grad(net, X, y, "bce")
    assert g.shape == (net.num_params,) and g.dtype == dtype
    assert L == pytest.approx(want_per.sum(), rel=tol(dtype, 1e-13))
    assert pk.loss(net, X, y, "bce") == L
    # dl/df = sigmoid(f) - y pushed back through the reference network
    rnet = rnet_of(net)
    want_g = rnet.vjp(X, ref.sigmoid(f) - y01(y))
    ref.assert_close(g, want_g, tol(dtype, 1e-12), "gradient vs J^T (p - y)")
    if dtype == np.float64:
        fd = ref.fd_gradient(at_theta(net, lambda: pk.loss(net, X, y, "bce")), net.theta.copy(), h=1e-6)
        ref.assert_close(g, fd, 1e-6, "gradient vs finite differences of pk.loss")


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_per_sample_and_empirical_fisher(K, dtype):
    net, X, y = problem(K, "tanh", dtype)
    G = pk.grad_per_sample(net, X, y, "bce")
    assert G.shape == (7, net.num_params) and G.dtype == dtype
    rnet = rnet_of(net)
    want = rnet.per_sample_grads(X, y, "bce")
    ref.assert_close(G, want, tol(dtype, 1e-12), "per-sample gradients")
    if dtype == np.float64:
        fd = ref.fd_jacobian(at_theta(net, lambda: pk.loss_per_sample(net, X, y, "bce")), net.theta.copy(), h=1e-6)
        ref.assert_close(G, fd, 1e-7, "per-sample gradients vs finite differences")
    ref.assert_close(pk.empirical_fisher_diag(net, X, y, "bce"), np.sum(want ** 2, axis=0), tol(dtype, 1e-12),
                     "empirical Fisher diagonal")
    V = np.random.default_rng(3).normal(size=(net.num_params, 2))
    ref.assert_close(pk.EFOperator(net, X, y, "bce") @ V, want.T @ (want @ V), tol(dtype, 1e-12), "EFOperator")


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_output_curvature(K, dtype):
    net, X, y = problem(K, "softplus", dtype)
    p = ref.sigmoid(rnet_of(net)(X))
    oc = pk.output_curvature(net, X, "bce", y)
    lam = np.stack([np.diag(r) for r in p * (1 - p)])
    ref.assert_close(oc.grad, p - y01(y), tol(dtype, 1e-13), "dl/df = sigmoid(f) - y")
    ref.assert_close(oc.hessian, lam, tol(dtype, 1e-13), "Lambda = diag(p (1 - p))")
    ref.assert_close(oc.sqrt, np.sqrt(lam), tol(dtype, 1e-13), "S = diag(sqrt(p (1 - p)))")
    # off-diagonal entries are exactly zero (independent outputs)
    off = ~np.eye(K, dtype=bool)
    assert np.all(oc.hessian[:, off] == 0) and np.all(oc.sqrt[:, off] == 0)
    assert pk.output_curvature(net, X, "bce").grad is None  # Lambda without labels


# ---------------------------------------------------------------- GGN and Hessian
@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ggn_family(K, act, dtype):
    net, X, y = problem(K, act, dtype)
    G = dense_ggn(net, X)
    t = tol(dtype, 1e-12)
    ref.assert_close(pk.ggn(net, X, y, "bce"), G, t, "ggn vs J^T Lambda J")
    V = np.random.default_rng(1).normal(size=(net.num_params, 3)).astype(dtype)
    GV = G @ V.astype(np.float64)
    ref.assert_close(pk.ggn_matvec(net, X, y, "bce", V), GV, t, "ggn_matvec")
    ref.assert_close(pk.ggn_matvec(net, X, y, "bce", V[:, 0]), GV[:, 0], t, "ggn_matvec (D,)")
    ref.assert_close(pk.GGNOperator(net, X, y, "bce") @ V, GV, t, "GGNOperator")
    ref.assert_close(pk.diag_ggn(net, X, y, "bce"), np.diag(G), t, "diag_ggn")
    # the quadratic model of the K-FAC optimiser: V^T G V by forward mode
    ref.assert_close(pk._core.ggn_gram(net, X, "bce", V), V.T.astype(np.float64) @ GV, t, "ggn_gram")


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("act", ACTS)
def test_hessian_family_float64(K, act):
    net, X, y = problem(K, act, np.float64)
    H = pk.hessian(net, X, y, "bce")
    grad = at_theta(net, lambda: pk.loss_and_grad(net, X, y, "bce")[1])
    fd = ref.fd_jacobian(grad, net.theta.copy(), h=1e-5)
    ref.assert_close(H, fd, 1e-7, "hessian vs finite differences of the gradient")
    ref.assert_close(H, rnet_of(net).hessian(X, y, "bce"), 1e-12, "hessian vs forward-mode reference")
    ref.assert_close(H, H.T, 1e-14, "symmetric")
    V = np.random.default_rng(2).normal(size=(net.num_params, 3))
    ref.assert_close(pk.hvp(net, X, y, "bce", V), H @ V, 1e-12, "hvp")
    ref.assert_close(pk.HessianOperator(net, X, y, "bce") @ V, H @ V, 1e-12, "HessianOperator")
    G = dense_ggn(net, X)
    ref.assert_close(pk.residual_matvec(net, X, y, "bce", V), (H - G) @ V, 1e-11, "residual_matvec")
    assert np.abs(H - G).max() > 1e-3 * np.abs(H).max()  # the residual term is really there
    ref.assert_close(pk.diag_hessian(net, X, y, "bce"), np.diag(fd), 1e-7, "diag_hessian vs FD")
    ref.assert_close(pk.diag_hessian(net, X, y, "bce"), np.diag(H), 1e-12, "diag_hessian vs hessian")


@pytest.mark.parametrize("K", KS)
def test_diag_hessian_three_curved_hidden_layers(K):
    """Three curved hidden layers reach diag_hessian's residual stack far below its origin."""
    net, X, y = problem(K, "tanh", np.float64, hidden=(4, 3, 4))
    grad = at_theta(net, lambda: pk.loss_and_grad(net, X, y, "bce")[1])
    fd = ref.fd_jacobian(grad, net.theta.copy(), h=1e-5)
    ref.assert_close(pk.diag_hessian(net, X, y, "bce"), np.diag(fd), 1e-7, "diag_hessian vs FD")


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_hessian_float32_matches_float64(K, dtype):
    net, X, y = problem(K, "softplus", dtype)
    H64 = pk.hessian(net64(net), X, y, "bce")
    t = tol(dtype, 1e-14)
    ref.assert_close(pk.hessian(net, X, y, "bce"), H64, t, "hessian")
    V = np.random.default_rng(4).normal(size=(net.num_params, 2))
    ref.assert_close(pk.hvp(net, X, y, "bce", V.astype(dtype)), H64 @ V.astype(dtype).astype(np.float64), t, "hvp")
    ref.assert_close(pk.diag_hessian(net, X, y, "bce"), np.diag(H64), t, "diag_hessian")


# ---------------------------------------------------------------- K independent problems
def _row_net(net, k):
    """The single-output network sharing the hidden layers and output row k."""
    params = [(l.W.copy(), l.b.copy()) for l in net.layers]
    W, b = params[-1]
    params[-1] = (W[k:k + 1].copy(), b[k:k + 1].copy())
    return pk.MLP.from_params(params, activation=list(net.activations))


def _row_index(net, k):
    """Positions in net.theta of the single-output network k's theta."""
    last = net.layers[-1]
    K, h = last.W.shape
    off = net.num_params - K * (h + 1)
    return np.concatenate([np.arange(off), off + k * h + np.arange(h), [off + K * h + k]])


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("act", ACTS)
def test_sum_of_single_output_problems(K, act):
    """L(theta) = sum_k L_k(shared, row k): the loss, per-sample losses and
    gradients add, and so do the Hessian, the GGN (Lambda is diagonal) and
    their diagonals, each single-output term embedded at its parameters."""
    net, X, y = problem(K, act, np.float64)
    D = net.num_params
    got = {"loss": pk.loss(net, X, y, "bce"), "per": pk.loss_per_sample(net, X, y, "bce"),
           "grad": pk.loss_and_grad(net, X, y, "bce")[1], "gps": pk.grad_per_sample(net, X, y, "bce"),
           "H": pk.hessian(net, X, y, "bce"), "G": pk.ggn(net, X, y, "bce"),
           "dG": pk.diag_ggn(net, X, y, "bce"), "dH": pk.diag_hessian(net, X, y, "bce")}
    want = {"loss": 0.0, "per": np.zeros(7), "grad": np.zeros(D), "gps": np.zeros((7, D)),
            "H": np.zeros((D, D)), "G": np.zeros((D, D)), "dG": np.zeros(D), "dH": np.zeros(D)}
    for k in range(K):
        nk, idx, yk = _row_net(net, k), _row_index(net, k), y[:, k]  # (N,) labels for K = 1
        want["loss"] += pk.loss(nk, X, yk, "bce")
        want["per"] += pk.loss_per_sample(nk, X, yk, "bce")
        want["grad"][idx] += pk.loss_and_grad(nk, X, yk, "bce")[1]
        want["gps"][:, idx] += pk.grad_per_sample(nk, X, yk, "bce")
        want["H"][np.ix_(idx, idx)] += pk.hessian(nk, X, yk, "bce")
        want["G"][np.ix_(idx, idx)] += pk.ggn(nk, X, yk, "bce")
        want["dG"][idx] += pk.diag_ggn(nk, X, yk, "bce")
        want["dH"][idx] += pk.diag_hessian(nk, X, yk, "bce")
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-14)
    for key in want:
        ref.assert_close(got[key], want[key], 1e-12, key)


# ---------------------------------------------------------------- K-FAC
def _ref_G(rnet, X, y, kind):
    """G factors from per-sample pre-activation gradients (reference.py's
    loss derivatives, here for K independent sigmoids)."""
    return rnet.kfac_G(X, y, "bce", kind)


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["exact", "empirical", "kfra"])
def test_kfac_factors(K, act, dtype, kind):
    net, X, y = problem(K, act, dtype)
    rnet = rnet_of(net)
    kf = pk.kfac(net, (X, y), "bce", kind=kind)
    A_ref, G_ref = rnet.kfac_A(X), _ref_G(rnet, X, y, kind)
    t = tol(dtype, 1e-12)
    for l in range(3):
        ref.assert_close(kf.A[l], A_ref[l], t, f"A[{l}]")
        ref.assert_close(kf.G[l], G_ref[l], t, f"G[{l}]")
    if kind == "exact":
        # the top factor is sum_n Lambda_n = diag(sum_n p (1 - p)): diagonal
        p = ref.sigmoid(rnet(X))
        ref.assert_close(kf.G[2], np.diag(np.sum(p * (1 - p), axis=0)), t, "top G = sum of Lambda")
    ref.assert_close(kf.to_dense(), ref.kfac_dense(A_ref, G_ref), t, "to_dense")


def test_kfac_reference_is_independent_of_the_loss_code():
    """The exact factor G_l = sum_n sum_k p_nk (1 - p_nk) g_nk g_nk^T with g_nk
    = d f_k / d s_l from pk.jacobian_factors (no loss involved)."""
    net, X, y = problem(3, "tanh", np.float64)
    kf = pk.kfac(net, (X, y), "bce", kind="exact")
    p = ref.sigmoid(net(X))
    for l, (Gl, _) in enumerate(pk.jacobian_factors(net, X)):
        ref.assert_close(kf.G[l], np.einsum("nk,nki,nkj->ij", p * (1 - p), Gl, Gl), 1e-12, f"G[{l}]")


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("kind", ["exact", "kfra"])
def test_kfac_single_datum_is_exact(K, kind):
    """Batch size 1: KFLR and KFRA equal the exact GGN block of every layer."""
    net, X, y = problem(K, "softplus", np.float64, N=7)
    X1, y1 = X[3:4], y[3:4]
    G = dense_ggn(net, X1)
    dense = pk.kfac(net, (X1, y1), "bce", kind=kind).to_dense()
    rnet = rnet_of(net)
    for l in range(3):
        sl = rnet.layer_slice(l)
        ref.assert_close(dense[sl, sl], G[sl, sl], 1e-12, f"layer {l}")
    # N copies of one datum: N times its block
    dense5 = pk.kfac(net, (np.repeat(X1, 5, 0), np.repeat(y1, 5, 0)), "bce", kind=kind).to_dense()
    ref.assert_close(dense5, 5 * dense, 1e-12, "5 copies")


@pytest.mark.parametrize("K", KS)
def test_kfac_empirical_single_datum_is_exact(K):
    """One datum: the empirical K-FAC block is the exact empirical-Fisher block g g^T."""
    net, X, y = problem(K, "tanh", np.float64)
    X1, y1 = X[:1], y[:1]
    g = pk.grad_per_sample(net, X1, y1, "bce")[0]
    dense = pk.kfac(net, (X1, y1), "bce", kind="empirical").to_dense()
    rnet = rnet_of(net)
    for l in range(3):
        sl = rnet.layer_slice(l)
        ref.assert_close(dense[sl, sl], np.outer(g[sl], g[sl]), 1e-12, f"layer {l}")


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ekfac(K, dtype):
    net, X, y = problem(K, "tanh", dtype)
    rnet = rnet_of(net)
    # one datum: the eigenbasis of the exact block with its true eigenvalues, so exact
    X1, y1 = X[2:3], y[2:3]
    G1 = dense_ggn(net, X1)
    E1 = pk.ekfac(net, (X1, y1), "bce").to_dense()
    for l in range(3):
        sl = rnet.layer_slice(l)
        scale = np.abs(G1[sl, sl]).max()
        np.testing.assert_allclose(E1[sl, sl], G1[sl, sl], rtol=0, atol=tol(dtype, 1e-11) * scale)
    # more data: never farther from the GGN block than K-FAC (Frobenius)
    G = dense_ggn(net, X)
    E = pk.ekfac(net, (X, y), "bce").to_dense()
    Kd = pk.kfac(net, (X, y), "bce").to_dense()
    for l in range(3):
        sl = rnet.layer_slice(l)
        e, k = np.linalg.norm(E[sl, sl] - G[sl, sl]), np.linalg.norm(Kd[sl, sl] - G[sl, sl])
        assert e <= k * (1 + tol(dtype, 1e-12))
        assert k > 1e-3 * np.linalg.norm(G[sl, sl])  # K-FAC is not exact here
    # ekfac's trace is the GGN's (the diagonal in any orthonormal basis keeps it)
    assert np.trace(E) == pytest.approx(np.trace(G), rel=tol(dtype, 1e-12))
    # empirical kind: the trace of the empirical Fisher
    Ee = pk.ekfac(net, (X, y), "bce", kind="empirical").to_dense()
    gps = rnet.per_sample_grads(X, y, "bce")
    assert np.trace(Ee) == pytest.approx(np.sum(gps ** 2), rel=tol(dtype, 1e-12))


# ---------------------------------------------------------------- Monte Carlo
# Exact mean and single-draw variance by enumerating all 2^K label vectors
# (reference.mc_*_stats). With M samples per datum the estimate's error per
# entry is a sum of many independent draws, close to normal; |z| <= 5 over
# ~60 entries fails by chance with probability < 1e-4, for the fixed seed never.
M = 4000


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mc_diag_ggn_converges(K, dtype):
    net, X, y = problem(K, "tanh", dtype)
    mean, var = rnet_of(net).mc_diag_stats(X, "bce")
    est = pk.diag_ggn(net, X, y, "bce", mc_samples=M, seed=123)
    zmax, ratio = ref.mc_check(est[None], mean, var, M)
    assert zmax < 5, zmax
    # dependent sampling across outputs (one uniform for all k) would bias the
    # mean by cross terms 2 u_j u_k J_j J_k: many z-scores in the hundreds
    assert 0.1 < ratio < 4, ratio
    # the same seed draws the same targets; another seed others
    np.testing.assert_array_equal(pk.diag_ggn(net, X, y, "bce", mc_samples=M, seed=123), est)
    assert not np.array_equal(pk.diag_ggn(net, X, y, "bce", mc_samples=M, seed=124), est)


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mc_kfac_converges(K, dtype):
    net, X, y = problem(K, "softplus", dtype)
    rnet = rnet_of(net)
    kf = pk.kfac(net, (X, y), "bce", kind="mc", mc_samples=M, seed=7)
    A_ref = rnet.kfac_A(X)
    for l, (mean, var) in enumerate(rnet.mc_kfac_G_stats(X, "bce")):
        ref.assert_close(kf.A[l], A_ref[l], tol(dtype, 1e-12), f"A[{l}] (no sampling)")
        zmax, ratio = ref.mc_check(np.asarray(kf.G[l], np.float64)[None], mean, var, M)
        assert zmax < 5, (l, zmax)
        assert 0.1 < ratio < 4, (l, ratio)


@pytest.mark.parametrize("K", KS)
def test_mc_stats_reference_matches_lambda(K):
    """The enumeration in reference.py is right: E[g g^T] = Lambda = diag(p (1 - p))."""
    f = np.random.default_rng(0).normal(size=K)
    probs, grads = ref.output_grad_distribution(f, "bce")
    assert probs.shape == (2 ** K,) and probs.sum() == pytest.approx(1.0, rel=1e-15)
    p = ref.sigmoid(f)
    np.testing.assert_allclose(np.einsum("v,vi,vj->ij", probs, grads, grads), np.diag(p * (1 - p)),
                               rtol=0, atol=1e-15)


@pytest.mark.parametrize("K", KS)
def test_fisher_mc_operator_converges(K):
    """FisherMCOperator: (1/M) sum_s sum_n J^T u u^T J with u = p - t, t drawn
    per output; its diagonal is the MC diagonal statistic and it is fixed per seed."""
    net, X, y = problem(K, "tanh", np.float64)
    mean, var = rnet_of(net).mc_diag_stats(X, "bce")
    op = pk.FisherMCOperator(net, X, y, "bce", mc_samples=M, seed=5)
    F = op @ np.eye(net.num_params)
    zmax, _ = ref.mc_check(np.diag(F)[None], mean, var, M)
    assert zmax < 5, zmax
    np.testing.assert_allclose(F, F.T, rtol=0, atol=1e-12 * np.abs(F).max())
    assert np.linalg.eigvalsh(F).min() > -1e-10 * np.abs(F).max()
    # the targets are drawn once: products repeat exactly
    v = np.ones(net.num_params)
    np.testing.assert_array_equal(op @ v, op @ v)
    # far from the GGN with a single sample, close with many (relative Frobenius)
    G = dense_ggn(net, X)
    err = np.linalg.norm(F - G) / np.linalg.norm(G)
    one = pk.FisherMCOperator(net, X, y, "bce", mc_samples=1, seed=5) @ np.eye(net.num_params)
    assert err < 0.1 < np.linalg.norm(one - G) / np.linalg.norm(G)


# ---------------------------------------------------------------- the K-FAC optimiser
@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("curvature", ["mc", "exact", "empirical"])
def test_kfac_optimiser_fits_multilabel_data(K, curvature):
    """K-FAC on a multi-label problem whose labels a network of the same shape
    produced (each output split at its median): 40 full-batch steps cut the
    mean loss to a fifth (measured: to about a tenth)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 3))
    f = build_net([3, 6, K], "tanh", seed=9)(X)
    y = (f > np.median(f, axis=0)).astype(np.float64)
    net = build_net([3, 6, K], "tanh", seed=1)
    opt = pk.optim.KFAC(net, "bce", curvature=curvature, damping=1.0, seed=0)
    start = pk.loss(net, X, y, "bce") / 64
    for _ in range(40):
        opt.step(X, y)
    end = pk.loss(net, X, y, "bce") / 64
    assert end < start / 5, (start, end)


def test_kfac_optimiser_k1_labels_shapes_agree():
    """K = 1: (N,) and (N, 1) labels give the same optimiser trajectory, bit for bit."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    y = (rng.normal(size=20) > 0).astype(np.float64)
    thetas = []
    for labels in (y, y[:, None]):
        net = build_net([3, 5, 1], "tanh", seed=2)
        opt = pk.optim.KFAC(net, "bce", seed=0)
        for _ in range(5):
            opt.step(X, labels)
        thetas.append(net.theta.copy())
    np.testing.assert_array_equal(thetas[0], thetas[1])
    assert not np.array_equal(thetas[0], build_net([3, 5, 1], "tanh", seed=2).theta)


# ---------------------------------------------------------------- K = 1 label shapes
def _k1_results(net, X, y):
    V = np.random.default_rng(8).normal(size=(net.num_params, 2)).astype(net.dtype)
    out = [pk.loss(net, X, y, "bce"), *pk.loss_and_grad(net, X, y, "bce"), pk.loss_per_sample(net, X, y, "bce"),
           pk.grad_per_sample(net, X, y, "bce"), pk.hessian(net, X, y, "bce"), pk.ggn(net, X, y, "bce"),
           pk.ggn_matvec(net, X, y, "bce", V), pk.hvp(net, X, y, "bce", V), pk.residual_matvec(net, X, y, "bce", V),
           pk.diag_ggn(net, X, y, "bce"), pk.diag_ggn(net, X, y, "bce", mc_samples=3, seed=1),
           pk.diag_hessian(net, X, y, "bce"), pk.empirical_fisher_diag(net, X, y, "bce"),
           *pk.output_curvature(net, X, "bce", y),
           pk.GGNOperator(net, X, y, "bce") @ V, pk.HessianOperator(net, X, y, "bce") @ V,
           pk.EFOperator(net, X, y, "bce") @ V, pk.FisherMCOperator(net, X, y, "bce", mc_samples=2, seed=4) @ V]
    for kind in ("exact", "mc", "empirical", "kfra"):
        out.append(pk.kfac(net, (X, y), "bce", kind=kind, mc_samples=2, seed=3).to_dense())
    for kind in ("exact", "mc", "empirical"):
        out.append(pk.ekfac(net, (X, y), "bce", kind=kind, mc_samples=2, seed=3).to_dense())
    return [np.asarray(r) for r in out]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
def test_k1_vector_and_column_labels_bit_identical(dtype, act):
    net, X, y = problem(1, act, dtype)
    a, b = _k1_results(net, X, y[:, 0]), _k1_results(net, X, y)
    assert len(a) == len(b) == 28
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.dtype == v.dtype and u.shape == v.shape, i
        np.testing.assert_array_equal(u, v, err_msg=f"result #{i}")
    # and the labels matter (the comparison is not vacuous)
    assert pk.loss(net, X, 1 - y01(y), "bce") != a[0]


# ---------------------------------------------------------------- bad labels
@pytest.mark.parametrize("K", KS)
def test_vector_labels_for_several_outputs_raise(K):
    net, X, y = problem(K)
    for fn in (lambda yy: pk.loss(net, X, yy, "bce"), lambda yy: pk.ggn(net, X, yy, "bce"),
               lambda yy: pk.kfac(net, (X, yy), "bce"), lambda yy: pk.output_curvature(net, X, "bce", yy),
               lambda yy: pk.optim.KFAC(net.copy(), "bce").step(X, yy)):
        with pytest.raises(ValueError, match=rf"^y: loss='bce' with {K} outputs expects labels of shape "
                                             rf"\(7, {K}\), one 0/1 label per output, got shape \(7,\)$"):
            fn(y[:, 0])
        with pytest.raises(ValueError, match=rf"^y: expected shape \(7, {K}\), got \(7, {K - 1}\)$"):
            fn(y[:, :K - 1])
        with pytest.raises(ValueError, match=r"^y: expected shape"):
            fn(y[:6])


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("bad,msg", [(0.5, r"got 0\.5 at"), (2.0, r"got 2 at"), (-2.0, r"got -2 at"),
                                     (np.nan, r"NaN"), (np.inf, r"Inf")])
def test_bad_label_values_raise(K, bad, msg):
    net, X, y = problem(K)
    yb = y.copy()
    yb[4, K - 1] = bad
    for fn in (lambda: pk.loss_and_grad(net, X, yb, "bce"), lambda: pk.hessian(net, X, yb, "bce"),
               lambda: pk.diag_ggn(net, X, yb, "bce"), lambda: pk.kfac(net, (X, yb), "bce", kind="empirical"),
               lambda: pk.EFOperator(net, X, yb, "bce")):
        with pytest.raises(ValueError, match=r"^y: ") as info:
            fn()
        assert re.search(msg, str(info.value)), str(info.value)
        if np.isfinite(bad):  # the position names both axes
            assert f"at index (4, {K - 1})" in str(info.value)
    # the same check as for K = 1 (message, value and index)
    n1, X1, y1 = problem(1)
    y1b = y1[:, 0].copy()
    y1b[4] = bad
    with pytest.raises(ValueError, match=r"^y: ") as info1:
        pk.loss(n1, X1, y1b, "bce")
    assert re.search(msg, str(info1.value))
    if np.isfinite(bad):
        assert str(info1.value).endswith("at index 4")
        assert str(info.value) == str(info1.value).replace("at index 4", f"at index (4, {K - 1})")


@pytest.mark.parametrize("K", KS)
def test_accepted_label_encodings(K):
    """-1 reads as 0, booleans and integers as their values, for every output."""
    net, X, y = problem(K)
    base = pk.loss_and_grad(net, X, y01(y), "bce")
    for yy in (2 * y01(y) - 1, y01(y) > 0, y01(y).astype(np.int64), y01(y).tolist(), np.asfortranarray(y01(y))):
        L, g = pk.loss_and_grad(net, X, yy, "bce")
        assert L == base[0]
        np.testing.assert_array_equal(g, base[1])
