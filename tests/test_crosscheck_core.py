"""Cross-checks of pykfac's core curvature API, written independently of the
concept test files (test_mlp, test_curvature, test_kfac, test_optim, ...).

References are built here from scratch: central finite differences of
``pk.loss`` / ``net(X)``, dense matrices assembled from ``pk.jacobian`` and the
closed-form output Hessians of CONVENTIONS.md, dense Kronecker products in
theta order, and the exactness identities of CONVENTIONS.md.
"""
import os

import numpy as np
import pytest
from scipy.linalg import sqrtm
from scipy.special import log_softmax
from scipy.sparse.linalg import LinearOperator, aslinearoperator, cg, eigsh

import pykfac as pk

LOSSES = ("mse", "ce", "bce")


# ---------------------------------------------------------------- helpers
def _rng(seed=0):
    return np.random.default_rng(seed)


def _labels(loss, N, K, rng):
    if loss == "mse":
        return rng.normal(size=(N, K))
    if loss == "ce":
        return rng.integers(0, K, size=N)
    return rng.integers(0, 2, size=N)


def _problem(loss, sizes=(3, 4, 4, None), act="tanh", N=5, seed=0, dtype=np.float64):
    K = 1 if loss == "bce" else 3
    sizes = [s if s is not None else K for s in sizes]
    rng = _rng(seed)
    net = pk.MLP(sizes, activation=act, seed=seed + 1, dtype=dtype)
    X = rng.normal(size=(N, sizes[0]))
    y = _labels(loss, N, sizes[-1], rng)
    return net, X, y


def _fd_grad(net, X, y, loss, h=1e-6):
    th = net.theta.copy()
    g = np.zeros_like(th)
    try:
        for i in range(th.size):
            t = th.copy()
            t[i] += h
            net.theta = t
            a = pk.loss(net, X, y, loss)
            t[i] -= 2 * h
            net.theta = t
            b = pk.loss(net, X, y, loss)
            g[i] = (a - b) / (2 * h)
    finally:
        net.theta = th
    return g


def _fd_hess(net, X, y, loss, h=1e-5):
    th = net.theta.copy()
    D = th.size
    H = np.zeros((D, D))
    try:
        for i in range(D):
            t = th.copy()
            t[i] += h
            net.theta = t
            a = pk.loss_and_grad(net, X, y, loss)[1]
            t[i] -= 2 * h
            net.theta = t
            b = pk.loss_and_grad(net, X, y, loss)[1]
            H[i] = (a - b) / (2 * h)
    finally:
        net.theta = th
    return H


def _fd_jac(net, X, h=1e-6):
    th = net.theta.copy()
    N, K = X.shape[0], net.n_outputs
    J = np.zeros((N, K, th.size))
    try:
        for i in range(th.size):
            t = th.copy()
            t[i] += h
            net.theta = t
            a = net(X)
            t[i] -= 2 * h
            net.theta = t
            b = net(X)
            J[:, :, i] = (a - b) / (2 * h)
    finally:
        net.theta = th
    return J


def _out_hessian(net, X, loss):
    """Closed-form Lambda_n from CONVENTIONS.md (independent of pykfac's)."""
    F = np.asarray(net(X), dtype=np.float64)
    N, K = F.shape
    if loss == "mse":
        return np.broadcast_to(np.eye(K), (N, K, K)).copy()
    if loss == "ce":
        p = np.exp(log_softmax(F, axis=1))
        return np.einsum("nk,kl->nkl", p, np.eye(K)) - np.einsum("nk,nl->nkl", p, p)
    s = 1.0 / (1.0 + np.exp(-F))
    return (s * (1 - s))[:, :, None]


def _out_grad(net, X, y, loss):
    F = np.asarray(net(X), dtype=np.float64)
    if loss == "mse":
        return F - np.asarray(y, dtype=np.float64).reshape(F.shape)
    if loss == "ce":
        p = np.exp(log_softmax(F, axis=1))
        return p - np.eye(F.shape[1])[y]
    s = 1.0 / (1.0 + np.exp(-F))
    return s - (np.asarray(y).reshape(F.shape) == 1)


def _dense_ggn(net, X, loss):
    J = pk.jacobian(net, X)
    return np.einsum("nkd,nkl,nle->de", J, _out_hessian(net, X, loss), J)


def _wbar_to_theta_perm(o, i):
    """perm[k] = theta index (within the layer) of Wbar row-major index k."""
    return np.array([(r * i + c if c < i else o * i + r) for r in range(o) for c in range(i + 1)])


def _kron_theta(G, A, o, i):
    """G (x) A (Wbar row-major order) permuted to theta order (W.ravel() then b)."""
    p = _wbar_to_theta_perm(o, i)
    B = np.zeros((p.size, p.size))
    B[np.ix_(p, p)] = np.kron(G, A)
    return B


def _blockdiag_theta(net, As, Gs):
    D = net.num_params
    B = np.zeros((D, D))
    for l, L in enumerate(net.layers):
        B[L.slice, L.slice] = _kron_theta(Gs[l], As[l], L.out_features, L.in_features)
    return B


def _manual_factors(net, X, y, loss, kind):
    """K-FAC factors from jacobian_factors and the closed-form output derivatives
    (A: mean, G: sum, as in CONVENTIONS.md); kind exact or empirical.
    Returns As, Gs and the per-sample pre-activation gradients U_l (N, J, out_l)."""
    N = X.shape[0]
    fac = pk.jacobian_factors(net, X)
    Lam = _out_hessian(net, X, loss)
    if kind == "exact":
        # any S with S S^T = Lambda gives the same G; use the symmetric PSD root
        w, Q = np.linalg.eigh(Lam)
        S = np.einsum("nij,nj,nkj->nik", Q, np.sqrt(np.clip(w, 0, None)), Q)
    else:
        S = _out_grad(net, X, y, loss)[:, :, None]
    As, Gs, Us, Abars = [], [], [], []
    for Gl, Al in fac:
        Ab = np.hstack([Al, np.ones((N, 1))])
        As.append(Ab.T @ Ab / N)
        U = np.einsum("nko,nkj->njo", Gl, S)
        Gs.append(np.einsum("njo,njp->op", U, U))
        Us.append(U)
        Abars.append(Ab)
    return As, Gs, Us, Abars


# ------------------------------------------------ derivatives vs finite differences
@pytest.mark.parametrize("act", pk.ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_grad_hessian_ggn_against_finite_differences(act, loss):
    net, X, y = _problem(loss, sizes=(3, 4, 3, None), act=act, N=4, seed=3)
    L, g = pk.loss_and_grad(net, X, y, loss)
    np.testing.assert_allclose(g, _fd_grad(net, X, y, loss), atol=2e-7, rtol=1e-6)
    H = pk.hessian(net, X, y, loss)
    np.testing.assert_allclose(H, _fd_hess(net, X, y, loss), atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(H, H.T, atol=1e-12)
    G = _dense_ggn(net, X, loss)
    np.testing.assert_allclose(pk.ggn(net, X, y, loss), G, atol=1e-12)
    V = _rng(1).normal(size=(net.num_params, 2))
    np.testing.assert_allclose(pk.hvp(net, X, y, loss, V), H @ V, atol=1e-10)
    np.testing.assert_allclose(pk.ggn_matvec(net, X, y, loss, V), G @ V, atol=1e-12)
    np.testing.assert_allclose(pk.residual_matvec(net, X, y, loss, V), (H - G) @ V, atol=1e-10)
    np.testing.assert_allclose(pk.diag_ggn(net, X, y, loss), np.diag(G), atol=1e-13)
    np.testing.assert_allclose(pk.loss_per_sample(net, X, y, loss).sum(), L, rtol=1e-13)


@pytest.mark.parametrize("act", ["tanh", "gelu", "elu", "softplus"])
def test_jacobian_jvp_vjp_against_finite_differences(act):
    net, X, _ = _problem("ce", sizes=(2, 3, 4), act=act, N=3, seed=5)
    J = pk.jacobian(net, X)
    np.testing.assert_allclose(J, _fd_jac(net, X), atol=1e-8)
    rng = _rng(2)
    v = rng.normal(size=net.num_params)
    V = rng.normal(size=(net.num_params, 3))
    np.testing.assert_allclose(pk.jvp(net, X, v), J @ v, atol=1e-12)
    np.testing.assert_allclose(pk.jvp(net, X, V), np.einsum("nkd,dm->nkm", J, V), atol=1e-12)
    u = rng.normal(size=(3, 4))
    U = rng.normal(size=(3, 4, 2))
    np.testing.assert_allclose(pk.vjp(net, X, u), np.einsum("nkd,nk->d", J, u), atol=1e-12)
    np.testing.assert_allclose(pk.vjp(net, X, U), np.einsum("nkd,nkm->dm", J, U), atol=1e-12)
    # factored rows reproduce the Jacobian in theta order
    for l, (Gl, Al) in enumerate(pk.jacobian_factors(net, X)):
        L_ = net.layers[l]
        JW = np.einsum("nki,nj->nkij", Gl, Al).reshape(3, 4, -1)
        np.testing.assert_allclose(J[:, :, L_.offset:L_.offset + L_.W.size], JW, atol=1e-13)
        np.testing.assert_allclose(J[:, :, L_.offset + L_.W.size:L_.slice.stop], Gl, atol=1e-13)


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_values_and_output_curvature_closed_form(loss):
    net, X, y = _problem(loss, sizes=(3, 5, None), N=6, seed=7)
    F = net(X)
    if loss == "mse":
        ref = 0.5 * np.sum((y - F) ** 2)
    elif loss == "ce":
        ref = -log_softmax(F, axis=1)[np.arange(6), y].sum()
    else:
        ref = np.logaddexp(0, -(2 * y - 1) * F[:, 0]).sum()
    assert pk.loss(net, X, y, loss) == pytest.approx(ref, rel=1e-13)
    oc = pk.output_curvature(net, X, loss, y)
    np.testing.assert_allclose(oc.grad, _out_grad(net, X, y, loss), atol=1e-14)
    np.testing.assert_allclose(oc.hessian, _out_hessian(net, X, loss), atol=1e-14)
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", oc.sqrt, oc.sqrt), oc.hessian, atol=1e-14)
    if loss == "ce":  # documented column convention: sqrt(p_v) (e_v - p)
        p = np.exp(log_softmax(F, axis=1))
        ref_S = np.sqrt(p)[:, None, :] * (np.eye(3)[None] - p[:, :, None])
        np.testing.assert_allclose(oc.sqrt, ref_S, atol=1e-14)
    assert pk.output_curvature(net, X, loss).grad is None


def test_bce_label_encodings_agree():
    net, X, _ = _problem("bce", sizes=(2, 3, 1), N=6, seed=1)
    y01 = np.array([0, 1, 1, 0, 1, 0])
    ref = pk.loss(net, X, y01, "bce")
    for y in (2 * y01 - 1, y01.astype(float), y01.astype(bool), y01[:, None], y01.tolist()):
        assert pk.loss(net, X, y, "bce") == ref
    np.testing.assert_array_equal(pk.ggn(net, X, y01, "bce"), pk.ggn(net, X, 2 * y01 - 1, "bce"))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("scale", [1e2, 1e4, 1e30])
def test_extreme_logits_are_stable(dtype, scale):
    rng = _rng(0)
    X = rng.normal(size=(4, 2))
    net = pk.MLP([2, 3], seed=0, dtype=dtype)
    net.theta = net.theta * dtype(scale)
    y = np.array([0, 1, 2, 0])
    F = np.asarray(net(X), dtype=np.float64)
    L, g = pk.loss_and_grad(net, X, y, "ce")
    assert L == pytest.approx(-log_softmax(F, 1)[np.arange(4), y].sum(), rel=1e-5)
    for M in (g, pk.hessian(net, X, y, "ce"), pk.ggn(net, X, y, "ce"), pk.loss_per_sample(net, X, y, "ce"),
              pk.kfac(net, (X, y), "ce").to_dense(), pk.output_curvature(net, X, "ce", y).hessian):
        assert np.all(np.isfinite(M))
    nb = pk.MLP([2, 1], seed=0, dtype=dtype)
    nb.theta = nb.theta * dtype(scale)
    yb = np.array([0, 1, 1, 0])
    f = np.asarray(nb(X), dtype=np.float64)[:, 0]
    L, g = pk.loss_and_grad(nb, X, yb, "bce")
    assert L == pytest.approx(np.logaddexp(0, -(2 * yb - 1) * f).sum(), rel=1e-5)
    assert np.all(np.isfinite(g)) and np.all(np.isfinite(pk.hessian(nb, X, yb, "bce")))


@pytest.mark.parametrize("act", pk.ACTIVATIONS)
def test_saturated_hidden_units_stay_finite(act):
    rng = _rng(0)
    X = rng.normal(size=(4, 2))
    y = np.array([0, 1, 1, 0])
    for dtype in (np.float64, np.float32):
        net = pk.MLP([2, 3, 2], activation=act, seed=0, dtype=dtype)
        net.layers[0].W[...] *= 1e4
        net.layers[0].b[...] *= 1e4
        for M in (pk.loss_and_grad(net, X, y, "ce")[1], pk.hessian(net, X, y, "ce"),
                  pk.kfac(net, (X, y), "ce", kind="kfra").to_dense(), pk.diag_ggn(net, X, y, "ce")):
            assert np.all(np.isfinite(M)), (act, dtype)


@pytest.mark.parametrize("act", pk.ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_float32_agrees_with_float64(act, loss):
    n64, X, y = _problem(loss, sizes=(3, 6, 5, None), act=act, N=7, seed=11)
    n32 = pk.MLP(n64.sizes, activation=act, seed=0, dtype=np.float32)
    n32.theta = n64.theta
    n64.theta = n32.theta.astype(np.float64)  # the same (rounded) parameters
    V = _rng(3).normal(size=(n64.num_params, 2))
    fns = [lambda n: pk.loss_and_grad(n, X, y, loss)[1], lambda n: pk.jacobian(n, X),
           lambda n: pk.hessian(n, X, y, loss), lambda n: pk.ggn(n, X, y, loss),
           lambda n: pk.hvp(n, X, y, loss, V), lambda n: pk.diag_ggn(n, X, y, loss),
           lambda n: pk.kfac(n, (X, y), loss, "exact").to_dense(),
           lambda n: pk.kfac(n, (X, y), loss, "kfra").to_dense()]
    for f in fns:
        a, b = f(n64), f(n32)
        assert b.dtype == np.float32
        assert np.abs(a - b).max() <= 1e-4 * max(np.abs(a).max(), 1e-30)


def test_deep_narrow_and_wide_networks():
    rng = _rng(4)
    net = pk.MLP([1] * 16, activation="tanh", seed=0)
    net.theta = net.theta * 3
    X = rng.normal(size=(3, 1))
    Y = rng.normal(size=3)  # K = 1: (N,) targets
    g = pk.loss_and_grad(net, X, Y, "mse")[1]
    np.testing.assert_allclose(g, _fd_grad(net, X, Y, "mse"), atol=1e-7, rtol=1e-6)
    assert pk.loss(net, X, Y, "mse") == pk.loss(net, X, Y[:, None], "mse")
    np.testing.assert_allclose(pk.ggn(net, X, Y, "mse"), _dense_ggn(net, X, "mse"), atol=1e-13)
    wide = pk.MLP([2, 300, 2], activation="relu", seed=0)
    Xw = rng.normal(size=(4, 2))
    yw = rng.integers(0, 2, 4)
    np.testing.assert_allclose(pk.ggn(wide, Xw, yw, "ce"), _dense_ggn(wide, Xw, "ce"), atol=1e-13)


def test_single_layer_network_hessian_is_ggn():
    net, X, y = _problem("ce", sizes=(3, None), N=5)
    np.testing.assert_allclose(pk.hessian(net, X, y, "ce"), pk.ggn(net, X, y, "ce"), atol=1e-14)
    np.testing.assert_allclose(net.features(X), X)


# ------------------------------------------------------------------ operators
@pytest.mark.parametrize("loss", LOSSES)
def test_operators_match_dense_and_work_with_scipy(loss):
    net, X, y = _problem(loss, sizes=(3, 5, None), N=6, seed=2)
    D = net.num_params
    G = pk.ggn(net, X, y, loss)
    H = pk.hessian(net, X, y, loss)
    rng = _rng(9)
    v, V = rng.normal(size=D), rng.normal(size=(D, 3))
    for Op, M in ((pk.GGNOperator(net, X, y, loss), G), (pk.HessianOperator(net, X, y, loss), H)):
        assert isinstance(Op, LinearOperator) and Op.shape == (D, D) and Op.dtype == np.float64
        np.testing.assert_allclose(Op @ v, M @ v, atol=1e-12)
        np.testing.assert_allclose(Op.matmat(V), M @ V, atol=1e-12)
        np.testing.assert_allclose(Op.T @ v, M @ v, atol=1e-12)
        np.testing.assert_allclose(Op.H.matmat(V), M @ V, atol=1e-12)
        np.testing.assert_allclose(Op.rmatvec(v), M @ v, atol=1e-12)
        np.testing.assert_allclose(Op @ np.asfortranarray(V), M @ V, atol=1e-12)
        np.testing.assert_allclose(Op @ np.arange(D), M @ np.arange(D), atol=1e-10)
        assert (Op @ v[:, None]).shape == (D, 1)
    w = eigsh(pk.GGNOperator(net, X, y, loss), k=3, which="LA")[0]
    np.testing.assert_allclose(np.sort(w), np.linalg.eigvalsh(G)[-3:], rtol=1e-8)
    wh = eigsh(pk.HessianOperator(net, X, y, loss), k=2, which="SA")[0]
    np.testing.assert_allclose(np.sort(wh), np.linalg.eigvalsh(H)[:2], rtol=1e-7, atol=1e-10)
    b = rng.normal(size=D)
    M = pk.GGNOperator(net, X, y, loss) + 0.1 * aslinearoperator(np.eye(D))
    x, info = cg(M, b, rtol=1e-11, maxiter=2000)
    assert info == 0
    np.testing.assert_allclose((G + 0.1 * np.eye(D)) @ x, b, atol=1e-8)


def test_float32_operator_keeps_float32():
    net, X, y = _problem("ce", sizes=(3, 5, None), dtype=np.float32)
    Op = pk.GGNOperator(net, X, y, "ce")
    v = _rng().normal(size=net.num_params)
    r = Op @ v
    assert Op.dtype == np.float32 and r.dtype == np.float32
    n64 = pk.MLP(net.sizes, seed=0)
    n64.theta = net.theta
    np.testing.assert_allclose(r, pk.ggn(n64, X, y, "ce") @ v, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ K-FAC
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("kind", ["exact", "empirical"])
def test_kfac_factors_match_definition_and_theta_order(loss, kind):
    net, X, y = _problem(loss, sizes=(3, 4, 5, None), act="gelu", N=7, seed=2)
    K = pk.kfac(net, (X, y), loss, kind=kind)
    As, Gs, _, _ = _manual_factors(net, X, y, loss, kind)
    for l in range(net.n_layers):
        np.testing.assert_allclose(K.A[l], As[l], atol=1e-13)
        np.testing.assert_allclose(K.G[l], Gs[l], atol=1e-13)
    np.testing.assert_allclose(K.to_dense(), _blockdiag_theta(net, As, Gs), atol=1e-13)
    assert K.num_data == 7


def _pre_activation_derivs(net, X):
    d = {"tanh": lambda s: 1 - np.tanh(s) ** 2, "sigmoid": lambda s: np.exp(-s) / (1 + np.exp(-s)) ** 2}
    a, out = X, []
    for L in net.layers:
        s = a @ L.W.T + L.b
        if L.activation:
            out.append(d[L.activation](s))
            a = np.tanh(s) if L.activation == "tanh" else 1 / (1 + np.exp(-s))
        else:
            a = s
    return out


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ["tanh", "sigmoid"])
def test_kfra_matches_botev_recursion(loss, act):
    net, X, y = _problem(loss, sizes=(3, 4, 5, None), act=act, N=6, seed=4)
    N = 6
    ds = _pre_activation_derivs(net, X)
    Gm = [None] * 3
    Gm[2] = _out_hessian(net, X, loss).mean(0)
    for l in (1, 0):
        W = net.layers[l + 1].W
        Gm[l] = (W.T @ Gm[l + 1] @ W) * (ds[l].T @ ds[l] / N)
    K = pk.kfac(net, (X, y), loss, kind="kfra")
    for l in range(3):
        np.testing.assert_allclose(K.G[l], N * Gm[l], atol=1e-13)
    # A is the same as for the other kinds
    Ke = pk.kfac(net, (X, y), loss, kind="exact")
    for l in range(3):
        np.testing.assert_allclose(K.A[l], Ke.A[l], atol=1e-15)


@pytest.mark.parametrize("loss", LOSSES)
def test_kfac_exactness_identities(loss):
    net, X, y = _problem(loss, sizes=(3, 4, 5, None), act="softplus", N=5, seed=6)
    G1 = pk.ggn(net, X[:1], y[:1], loss)
    for kind in ("exact", "kfra"):
        Kd = pk.kfac(net, (X[:1], y[:1]), loss, kind=kind).to_dense()
        for L_ in net.layers:
            np.testing.assert_allclose(Kd[L_.slice, L_.slice], G1[L_.slice, L_.slice], atol=1e-13)
    Xc, yc = np.repeat(X[:1], 4, 0), np.repeat(y[:1], 4, 0)
    for kind in ("exact", "kfra", "empirical"):
        one = pk.kfac(net, (X[:1], y[:1]), loss, kind=kind).to_dense()
        np.testing.assert_allclose(pk.kfac(net, (Xc, yc), loss, kind=kind).to_dense(), 4 * one, atol=1e-13)
    for kind in ("exact", "empirical"):
        a = pk.kfac(net, [(X[:2], y[:2]), (X[2:], y[2:])], loss, kind=kind).to_dense()
        np.testing.assert_allclose(a, pk.kfac(net, (X, y), loss, kind=kind).to_dense(), atol=1e-13)


def test_kfac_deep_linear_mse_equals_blockdiag_ggn():
    rng = _rng(8)
    net = pk.MLP([3, 4, 4, 2], activation="identity", seed=3)
    X, Y = rng.normal(size=(9, 3)), rng.normal(size=(9, 2))
    Kd = pk.kfac(net, (X, Y), "mse").to_dense()
    G = pk.ggn(net, X, Y, "mse")
    for L_ in net.layers:
        np.testing.assert_allclose(Kd[L_.slice, L_.slice], G[L_.slice, L_.slice], atol=1e-12)


@pytest.mark.parametrize("loss", LOSSES)
def test_mc_estimates_converge_and_are_seeded(loss):
    net, X, y = _problem(loss, sizes=(3, 4, None), N=5, seed=1)
    ex = pk.kfac(net, (X, y), loss, "exact")
    mc = pk.kfac(net, (X, y), loss, "mc", mc_samples=20000, seed=0)
    for a, b in zip(mc.G, ex.G):
        assert np.abs(a - b).max() <= 0.02 * np.abs(b).max()
    for a, b in zip(mc.A, ex.A):
        np.testing.assert_allclose(a, b, atol=1e-15)
    d_mc = pk.diag_ggn(net, X, y, loss, mc_samples=20000, seed=1)
    d = pk.diag_ggn(net, X, y, loss)
    assert np.abs(d_mc - d).max() <= 0.02 * d.max()
    a = pk.kfac(net, (X, y), loss, "mc", seed=3).G[0]
    np.testing.assert_array_equal(a, pk.kfac(net, (X, y), loss, "mc", seed=3).G[0])
    assert not np.array_equal(a, pk.kfac(net, (X, y), loss, "mc", seed=4).G[0])
    # per-sample empirical Fisher diagonal
    gs = np.array([pk.loss_and_grad(net, X[i:i + 1], y[i:i + 1], loss)[1] for i in range(5)])
    np.testing.assert_allclose(pk.empirical_fisher_diag(net, X, y, loss), (gs ** 2).sum(0), atol=1e-14)


def _kfac_fixture():
    net, X, y = _problem("ce", sizes=(3, 4, 2), N=3, seed=0)
    return net, pk.kfac(net, (X, y), "ce")


@pytest.mark.parametrize("damping", [1e-3, 0.5])
def test_kron_solve_logdet_power_vs_dense(damping):
    net, K = _kfac_fixture()
    D = net.num_params
    Kd = K.to_dense()
    Md = Kd + damping * np.eye(D)
    rng = _rng(1)
    v, V = rng.normal(size=D), rng.normal(size=(D, 2))
    np.testing.assert_allclose(K.matvec(V), Kd @ V, atol=1e-14)
    np.testing.assert_allclose(K @ v, Kd @ v, atol=1e-14)
    np.testing.assert_allclose(K.solve(V, damping), np.linalg.solve(Md, V), rtol=1e-8, atol=1e-8)
    assert K.logdet(damping) == pytest.approx(np.linalg.slogdet(Md)[1], abs=1e-9)
    S = np.real(sqrtm(Md))
    np.testing.assert_allclose(K.apply_power(V, 0.5, damping), S @ V, atol=1e-10)
    np.testing.assert_allclose(K.apply_power(V, -0.5, damping), np.linalg.solve(S, V), rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(K.apply_power(V, 1, damping), Md @ V, atol=1e-13)
    # factored (Martens & Grosse) damping, built densely
    g = np.sqrt(damping)
    Fd = np.zeros((D, D))
    for l, L_ in enumerate(net.layers):
        A, G = K.A[l], K.G[l]
        pi = np.sqrt((np.trace(A) / A.shape[0]) / (np.trace(G) / G.shape[0]))
        assert K.factored_pi()[l] == pytest.approx(pi, rel=1e-13)
        Fd[L_.slice, L_.slice] = _kron_theta(G + g / pi * np.eye(len(G)), A + g * pi * np.eye(len(A)),
                                            L_.out_features, L_.in_features)
    np.testing.assert_allclose(K.solve(V, damping, factored=True), np.linalg.solve(Fd, V), rtol=1e-8, atol=1e-8)
    assert K.logdet(damping, factored=True) == pytest.approx(np.linalg.slogdet(Fd)[1], abs=1e-9)
    # operators
    np.testing.assert_allclose(K.as_linear_operator(damping) @ V, Md @ V, atol=1e-13)
    np.testing.assert_allclose(K.as_linear_operator(damping) @ v, Md @ v, atol=1e-13)
    np.testing.assert_allclose(K.as_linear_operator(damping, inverse=True) @ v, np.linalg.solve(Md, v),
                               rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(K.as_linear_operator(damping, factored=True) @ v, Fd @ v, atol=1e-13)


def test_kron_per_layer_damping_summaries_and_scaling():
    net, K = _kfac_fixture()
    D = net.num_params
    Kd = K.to_dense()
    v = _rng(2).normal(size=D)
    dd = [0.1, 2.0]
    Dm = np.diag(np.concatenate([np.full(L_.num_params, x) for L_, x in zip(net.layers, dd)]))
    np.testing.assert_allclose(K.solve(v, dd), np.linalg.solve(Kd + Dm, v), rtol=1e-10)
    assert K.logdet(dd) == pytest.approx(np.linalg.slogdet(Kd + Dm)[1], abs=1e-10)
    np.testing.assert_allclose(K.as_linear_operator(dd) @ v, (Kd + Dm) @ v, atol=1e-13)
    np.testing.assert_allclose(K.eigvals(), np.linalg.eigvalsh(Kd), atol=1e-13)
    assert K.trace() == pytest.approx(np.trace(Kd), rel=1e-13)
    assert K.frobenius_norm() == pytest.approx(np.linalg.norm(Kd), rel=1e-13)
    np.testing.assert_allclose(K.scaled(3.0).to_dense(), 3 * Kd, atol=1e-14)
    K.eigh()  # cached eigendecompositions must be rescaled too
    np.testing.assert_allclose(K.scaled(3.0).solve(v, 0.1), np.linalg.solve(3 * Kd + 0.1 * np.eye(D), v),
                               rtol=1e-10)
    w = eigsh(K.as_linear_operator(), k=2)[0]
    np.testing.assert_allclose(np.sort(w), np.linalg.eigvalsh(Kd)[-2:], rtol=1e-10)


def test_kron_as_cg_preconditioner():
    net, X, y = _problem("ce", sizes=(3, 4, 2), N=3, seed=0)
    K = pk.kfac(net, (X, y), "ce")
    D = net.num_params
    G = pk.ggn(net, X, y, "ce")
    b = _rng(3).normal(size=D)
    A = pk.GGNOperator(net, X, y, "ce") + 0.1 * aslinearoperator(np.eye(D))
    x, info = cg(A, b, M=K.as_linear_operator(0.1, inverse=True), rtol=1e-11, maxiter=500)
    assert info == 0
    np.testing.assert_allclose((G + 0.1 * np.eye(D)) @ x, b, atol=1e-8)


def test_kron_singular_and_bad_damping_raise():
    net, X, y = _problem("ce", sizes=(3, 4, 2), N=3, seed=0)
    K = pk.kfac(net, (X[:1], y[:1]), "ce")  # rank-one factors
    D = net.num_params
    with pytest.raises(pk.LinAlgError, match="damping"):
        K.solve(np.ones(D), 0.0)
    with pytest.raises(pk.LinAlgError, match="damping"):
        K.logdet(0.0)
    with pytest.raises(ValueError, match="damping"):
        K.solve(np.ones(D), -1.0)
    with pytest.raises(ValueError, match="damping"):
        K.solve(np.ones(D), np.nan)
    with pytest.raises(ValueError, match="V"):
        K.solve(np.ones(D + 1), 1.0)
    with pytest.raises(ValueError, match="damping"):
        K.solve(np.ones(D), [1.0])
    with pytest.raises(TypeError, match="factored"):
        K.solve(np.ones(D), 1.0, factored="yes")


# --------------------------------------------------------------- optimiser
def _damped_blocks(net, A, G, gamma):
    """Factored-damped block-diagonal F in theta order (diag blocks only)."""
    blocks = []
    for l, L_ in enumerate(net.layers):
        a, g = A[l], G[l]
        pi = np.sqrt((np.trace(a) / a.shape[0]) / (np.trace(g) / g.shape[0]))
        blocks.append(_kron_theta(g + gamma / pi * np.eye(len(g)), a + gamma * pi * np.eye(len(a)),
                                  L_.out_features, L_.in_features))
    return blocks


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("lr", [0.5, None])
def test_kfac_first_step_equals_dense_formula(loss, lr):
    net, X, y = _problem(loss, sizes=(3, 5, None), N=8, seed=0)
    N, lam, eta = 8, 0.3, 0.01
    work = net.copy()
    opt = pk.optim.KFAC(work, loss=loss, lr=lr, momentum=0.0 if lr else None, damping=lam,
                        weight_decay=eta, curvature="exact", adapt_damping=False)
    th0 = net.theta.copy()
    As, Gs, _, _ = _manual_factors(net, X, y, loss, "exact")
    F = np.zeros((net.num_params,) * 2)
    for L_, B in zip(net.layers, _damped_blocks(net, As, [g / N for g in Gs], np.sqrt(lam + eta))):
        F[L_.slice, L_.slice] = B
    Lsum, g = pk.loss_and_grad(net, X, y, loss)
    grad = g / N + eta * th0
    Delta = -np.linalg.solve(F, grad)
    value = opt.step(X, y)
    assert value == pytest.approx(Lsum / N, rel=1e-14)
    if lr:
        ref = th0 + lr * Delta
    else:
        C = pk.ggn(net, X, y, loss) / N + (lam + eta) * np.eye(th0.size)
        ref = th0 + (-(grad @ Delta) / (Delta @ C @ Delta)) * Delta
    np.testing.assert_allclose(work.theta, ref, atol=1e-12)
    np.testing.assert_allclose(opt.last["direction"], Delta, atol=1e-12)
    np.testing.assert_allclose(opt.precondition(grad), -Delta, atol=1e-12)


@pytest.mark.parametrize("curv", ["exact", "empirical", "kfra"])
def test_kfac_second_step_ema_and_alpha_mu(curv):
    loss = "ce"
    net, X1, y1 = _problem(loss, sizes=(3, 5, 4, None), act="softplus", N=8, seed=0)
    _, X2, y2 = _problem(loss, sizes=(3, 5, 4, None), act="softplus", N=8, seed=1)
    N, lam, eta = 8, 0.2, 0.01
    ref, work = net.copy(), net.copy()
    opt = pk.optim.KFAC(work, loss=loss, damping=lam, weight_decay=eta, curvature=curv,
                        adapt_damping=False, ema_decay=0.95)
    opt.step(X1, y1)
    d1 = work.theta - ref.theta
    ref.theta = work.theta
    th = ref.theta.copy()
    k1, k2 = pk.kfac(net, (X1, y1), loss, curv), pk.kfac(ref, (X2, y2), loss, curv)
    # decay min(1 - 1/k, ema_decay) = 1/2 at step 2
    A = [0.5 * a + 0.5 * b for a, b in zip(k1.A, k2.A)]
    G = [0.5 * (a + b) / N for a, b in zip(k1.G, k2.G)]
    grad = pk.loss_and_grad(ref, X2, y2, loss)[1] / N + eta * th
    F = np.zeros((th.size,) * 2)
    for L_, B in zip(ref.layers, _damped_blocks(ref, A, G, np.sqrt(lam + eta))):
        F[L_.slice, L_.slice] = B
    Delta = -np.linalg.solve(F, grad)
    C = pk.ggn(ref, X2, y2, loss) / N + (lam + eta) * np.eye(th.size)
    Vm = np.stack([Delta, d1], 1)
    coef = np.linalg.solve(Vm.T @ C @ Vm, -Vm.T @ grad)
    opt.step(X2, y2)
    np.testing.assert_allclose(work.theta, th + Vm @ coef, atol=1e-12)
    assert opt.last["alpha"] == pytest.approx(coef[0], rel=1e-9)
    assert opt.last["mu"] == pytest.approx(coef[1], rel=1e-9, abs=1e-12)


def test_kfac_tridiag_statistics_and_inverse_vs_dense():
    loss = "ce"
    net, X, y = _problem(loss, sizes=(3, 4, 3, None), act="tanh", N=9, seed=2)
    N, lam = 9, 0.05
    work = net.copy()
    opt = pk.optim.KFAC(work, loss=loss, lr=1.0, momentum=0.0, damping=lam, weight_decay=0.0,
                        curvature="exact", structure="tridiag", adapt_damping=False)
    th0 = net.theta.copy()
    grad = pk.loss_and_grad(net, X, y, loss)[1] / N
    opt.step(X, y)
    As, Gs, Us, Abars = _manual_factors(net, X, y, loss, "exact")
    L = net.n_layers
    for l in range(L):
        np.testing.assert_allclose(opt.A[l], As[l], atol=1e-13)
        np.testing.assert_allclose(opt.G[l], Gs[l] / N, atol=1e-13)
    Ac = [Abars[l].T @ Abars[l + 1] / N for l in range(L - 1)]
    Gc = [np.einsum("njo,njp->op", Us[l], Us[l + 1]) / N for l in range(L - 1)]
    for l in range(L - 1):
        np.testing.assert_allclose(opt.A_cross[l], Ac[l], atol=1e-13)
        np.testing.assert_allclose(opt.G_cross[l], Gc[l], atol=1e-13)
    # damped F-tilde on the band (theta order)
    D = net.num_params
    diag = _damped_blocks(net, As, [g / N for g in Gs], np.sqrt(lam))
    sl = [L_.slice for L_ in net.layers]
    Ft = {}
    for l in range(L):
        Ft[l, l] = diag[l]
    for l in range(L - 1):
        a, b = net.layers[l], net.layers[l + 1]
        pa = _wbar_to_theta_perm(a.out_features, a.in_features)
        pb = _wbar_to_theta_perm(b.out_features, b.in_features)
        B = np.zeros((pa.size, pb.size))
        B[np.ix_(pa, pb)] = np.kron(Gc[l], Ac[l])
        Ft[l, l + 1] = B
    # chain formula: F-hat^{-1} = Xi^T Lambda Xi
    Xi = np.eye(D)
    Lam = np.zeros((D, D))
    for l in range(L):
        if l < L - 1:
            Psi = Ft[l, l + 1] @ np.linalg.inv(Ft[l + 1, l + 1])
            Xi[sl[l], sl[l + 1]] = -Psi
            Sig = Ft[l, l] - Psi @ Ft[l + 1, l + 1] @ Psi.T
        else:
            Sig = Ft[l, l]
        Lam[sl[l], sl[l]] = np.linalg.inv(Sig)
    Finv = Xi.T @ Lam @ Xi
    np.testing.assert_allclose(work.theta, th0 - Finv @ grad, atol=1e-10)
    # the optimiser's own inverse, column by column: block-tridiagonal, and its
    # inverse matches F-tilde on the band
    M = np.stack([opt.precondition(e) for e in np.eye(D)], 1)
    np.testing.assert_allclose(M, Finv, atol=1e-9)
    np.testing.assert_allclose(M[sl[0], sl[2]], 0.0, atol=1e-14)
    Fhat = np.linalg.inv(M)
    for (i, j), B in Ft.items():
        np.testing.assert_allclose(Fhat[sl[i], sl[j]], B, atol=1e-8)


def test_kfac_lm_rule_and_rho():
    net, X, y = _problem("mse", sizes=(3, 5, None), N=10, seed=3)
    work = net.copy()
    opt = pk.optim.KFAC(work, loss="mse", damping=0.5, weight_decay=0.0, curvature="exact",
                        damping_every=1, gamma_every=1000)
    th0 = work.theta.copy()
    h0 = pk.loss(net, X, y, "mse") / 10
    opt.step(X, y)
    h1 = pk.loss(work, X, y, "mse") / 10
    rho = (h1 - h0) / opt.last["qmodel0"]
    assert opt.last["rho"] == pytest.approx(rho, rel=1e-9)
    lam = 0.5 * 19 / 20 if rho > 0.75 else (0.5 * 20 / 19 if rho < 0.25 else 0.5)
    assert opt.damping == pytest.approx(lam, rel=1e-14)
    assert not np.array_equal(th0, work.theta)


@pytest.mark.parametrize("structure", ["blockdiag", "tridiag"])
def test_kfac_reproducible_and_resumable(structure, tmp_path):
    net, X, y = _problem("ce", sizes=(3, 5, 4, None), N=10, seed=0)

    def make(seed=0, n=None):
        return pk.optim.KFAC(net.copy() if n is None else n, loss="ce", damping=0.1, structure=structure,
                             seed=seed, damping_every=1, gamma_every=2, inverse_every=2)

    runs = []
    for seed in (0, 0, 1):
        o = make(seed)
        for _ in range(5):
            o.step(X, y)
        runs.append(o.net.theta.copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    o = make()
    for _ in range(3):
        o.step(X, y)
    path = os.path.join(tmp_path, "ckpt.npz")
    o.save(path)
    state = o.state_dict()
    theta3 = o.net.theta.copy()
    for _ in range(2):
        o.step(X, y)
    o2 = pk.optim.KFAC.load(path)
    o3 = make()
    o3.net.theta = theta3
    o3.load_state_dict(state)
    for _ in range(2):
        o2.step(X, y)
        o3.step(X, y)
    np.testing.assert_array_equal(o.net.theta, o2.net.theta)
    np.testing.assert_array_equal(o.net.theta, o3.net.theta)
    assert (o.damping, o.gamma) == (o2.damping, o2.gamma)


# ------------------------------------------------------------- wrapper hygiene
def test_input_layouts_give_identical_results_and_inputs_unchanged():
    net, X, y = _problem("ce", sizes=(3, 4, None), N=5, seed=0)
    ref = pk.ggn(net, X, y, "ce")
    ro = X.copy()
    ro.setflags(write=False)
    variants = [np.asfortranarray(X), np.repeat(X, 2, 0)[::2], ro, X.astype(">f8"), X.tolist()]
    for Xv in variants:
        np.testing.assert_array_equal(pk.ggn(net, Xv, y, "ce"), ref)
    Xi = np.round(X * 3).astype(np.int32)
    np.testing.assert_array_equal(pk.ggn(net, Xi, y, "ce"), pk.ggn(net, Xi.astype(float), y, "ce"))
    for yv in (y.astype(np.int32), y.astype(np.uint8), y.astype(">i8"), y.tolist(), np.repeat(y, 2)[::2]):
        assert pk.loss(net, X, yv, "ce") == pk.loss(net, X, y, "ce")
    # inputs left byte-identical by every entry point, including the optimiser
    Xc, yc = X.copy(), y.copy()
    V = np.asfortranarray(_rng(1).normal(size=(net.num_params, 2)))
    Vc = V.copy()
    pk.hvp(net, X, y, "ce", V)
    pk.kfac(net, (X, y), "ce", "mc", seed=0)
    K = pk.kfac(net, (X, y), "ce")
    K.solve(V, 0.1)
    pk.GGNOperator(net, X, y, "ce").matmat(V)
    pk.optim.KFAC(net.copy(), loss="ce", damping=0.1, stats_batch=3).step(X, y)
    np.testing.assert_array_equal(X, Xc)
    np.testing.assert_array_equal(y, yc)
    np.testing.assert_array_equal(V, Vc)


BAD = {
    "X wrong width": (lambda X, y: (X[:, :2], y), ValueError, "X"),
    "X 1-D": (lambda X, y: (X[0], y[:1]), ValueError, "X"),
    "X NaN": (lambda X, y: (np.where(X > 1, np.nan, X), y), ValueError, "X"),
    "X Inf": (lambda X, y: (X * np.inf, y), ValueError, "X"),
    "X complex": (lambda X, y: (X + 0j, y), TypeError, "X"),
    "X bool": (lambda X, y: (X > 0, y), TypeError, "X"),
    "X empty": (lambda X, y: (X[:0], y[:0]), ValueError, "X"),
    "y short": (lambda X, y: (X, y[:4]), ValueError, "y"),
    "y too large": (lambda X, y: (X, y + 1), ValueError, "y"),
    "y negative": (lambda X, y: (X, y - 1), ValueError, "y"),
    "y float": (lambda X, y: (X, y.astype(float)), TypeError, "y"),
    "y 2-D": (lambda X, y: (X, y[:, None]), ValueError, "y"),
    "y None": (lambda X, y: (X, None), TypeError, "y"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_raise_naming_the_argument(case):
    net, X, y = _problem("ce", sizes=(3, 4, None), N=5, seed=0)
    make, exc, name = BAD[case]
    Xb, yb = make(X, y)
    v = np.ones(net.num_params)
    calls = [lambda: pk.loss(net, Xb, yb, "ce"), lambda: pk.ggn(net, Xb, yb, "ce"),
             lambda: pk.hessian(net, Xb, yb, "ce"), lambda: pk.kfac(net, (Xb, yb), "ce"),
             lambda: pk.kfac(net, (Xb, yb), "ce", "kfra"), lambda: pk.ggn_matvec(net, Xb, yb, "ce", v),
             lambda: pk.GGNOperator(net, Xb, yb, "ce"), lambda: pk.diag_ggn(net, Xb, yb, "ce", 2, 0),
             lambda: pk.optim.KFAC(net.copy(), loss="ce").step(Xb, yb)]
    for call in calls:
        with pytest.raises(exc, match=rf"^{name}\b"):
            call()


def test_bad_vectors_and_options_raise():
    net, X, y = _problem("ce", sizes=(3, 4, None), N=5, seed=0)
    D = net.num_params
    for V, name in ((np.full(D, np.nan), "V"), (np.ones(D + 1), "V"), (np.zeros((D, 0)), "V")):
        with pytest.raises(ValueError, match=name):
            pk.hvp(net, X, y, "ce", V)
    with pytest.raises(ValueError, match="^u"):
        pk.vjp(net, X, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="^v"):
        pk.jvp(net, X, np.full(D, np.inf))
    with pytest.raises(ValueError, match=r"^y: loss='bce' with 3 outputs expects labels of shape \(5, 3\)"):
        pk.loss(net, X, y, "bce")  # class indices are not multi-label targets
    with pytest.raises(ValueError, match="^loss"):
        pk.loss(pk.MLP([3, 1]), X, np.zeros(5, int), "ce")
    with pytest.raises(ValueError, match="^kind"):
        pk.kfac(net, (X, y), "ce", kind="kflr")
    with pytest.raises(ValueError, match="^mc_samples"):
        pk.kfac(net, (X, y), "ce", kind="mc", mc_samples=0)
    with pytest.raises(ValueError, match="^data"):
        pk.kfac(net, [], "ce")
    with pytest.raises(TypeError, match="^seed"):
        pk.diag_ggn(net, X, y, "ce", mc_samples=1, seed=1.5)
    th = net.theta.copy()
    th[0] = np.nan
    bad = net.copy()
    bad.theta = th
    with pytest.raises(ValueError, match="theta"):
        pk.loss(bad, X, y, "ce")


def test_bce_bad_label_message_names_value_and_index():
    net, X, _ = _problem("bce", sizes=(2, 3, 1), N=4, seed=0)
    with pytest.raises(ValueError) as info:
        pk.loss(net, X, np.array([0.0, 1.0, 0.5, 0.0]), "bce")
    msg = str(info.value)
    assert msg.startswith("y:")
    assert "%" not in msg and "0.5" in msg and "index 2" in msg


def test_train_accepts_a_tuple_of_batches_like_kfac():
    net, X, y = _problem("ce", sizes=(3, 4, None), N=6, seed=0)
    batches = ((X[:3], y[:3]), (X[3:], y[3:]))
    assert pk.kfac(net, batches, "ce").num_data == 6
    ref = net.copy()
    o_ref = pk.optim.SGD(ref, "ce", lr=0.1)
    for Xb, yb in batches:
        o_ref.step(Xb, yb)
    opt = pk.optim.SGD(net, "ce", lr=0.1)
    hist = pk.train(net, opt, batches, progress=False)
    assert hist["steps"] == 2
    np.testing.assert_array_equal(net.theta, ref.theta)


def test_train_list_of_batches_matches_manual_steps():
    net, X, y = _problem("ce", sizes=(3, 4, None), N=6, seed=0)
    batches = [(X[:3], y[:3]), (X[3:], y[3:])]
    ref = net.copy()
    o_ref = pk.optim.SGD(ref, "ce", lr=0.1)
    losses = [o_ref.step(Xb, yb) for _ in range(2) for Xb, yb in batches]
    opt = pk.optim.SGD(net, "ce", lr=0.1)
    hist = pk.train(net, opt, batches, epochs=2, progress=False)
    np.testing.assert_array_equal(net.theta, ref.theta)
    np.testing.assert_allclose(hist["loss"], losses, rtol=0, atol=0)


def test_gaussian_nll_refuses_transposed_variances():
    rng = _rng(0)
    M, V, Y = rng.normal(size=(2, 3)), rng.uniform(1, 2, size=(2, 3)), rng.normal(size=(2, 3))
    ref = np.mean(np.sum(0.5 * np.log(2 * np.pi * V) + 0.5 * (Y - M) ** 2 / V, axis=1))
    assert pk.metrics.gaussian_nll(M, V, Y) == pytest.approx(ref, rel=1e-13)
    assert pk.metrics.gaussian_nll(M[:, :1], V[:, 0], Y[:, 0]) == pytest.approx(
        np.mean(0.5 * np.log(2 * np.pi * V[:, 0]) + 0.5 * (Y[:, 0] - M[:, 0]) ** 2 / V[:, 0]), rel=1e-13)
    with pytest.raises(ValueError):
        pk.metrics.gaussian_nll(M, V.T, Y)
