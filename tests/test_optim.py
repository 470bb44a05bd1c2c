"""Tests of pk.optim (KFAC, SGD, Adam) and pk.train.

The K-FAC maths is checked against dense float64 constructions written here
from CONVENTIONS.md (the damped F-tilde, the chain formula of the
block-tridiagonal inverse, the exact GGN quadratic model); SGD and Adam
against hand-written NumPy references of the PyTorch update rules.
"""
import math
import pickle

import numpy as np
import pytest
from scipy import optimize


def _pk():
    import pykfac

    return pykfac


# ---- helpers ------------------------------------------------------------------
def regression(N=40, d=5, K=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, d))
    Y = rng.normal(size=(N, K))
    return X, Y


def classification(N=30, d=4, K=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, d))
    y = rng.integers(0, K, size=N)
    return X, y


def wbar_perm(sizes):
    """perm[t] = Wbar-order index of theta-order index t (all layers)."""
    perm, off = [], 0
    for i, o in zip(sizes[:-1], sizes[1:]):
        q = i + 1
        for t in range(o * i):
            r, c = divmod(t, i)
            perm.append(off + r * q + c)
        for r in range(o):
            perm.append(off + r * q + i)
        off += o * q
    return np.array(perm)


def block_offsets(sizes):
    p = [o * (i + 1) for i, o in zip(sizes[:-1], sizes[1:])]
    return np.concatenate([[0], np.cumsum(p)]).astype(int)


def dense_ftilde(sizes, A, G, Ac, Gc, gamma, pi):
    """Damped F-tilde in Wbar order: diagonal blocks (G + γ/π I) ⊗ (A + γπ I),
    first off-diagonal blocks Gc ⊗ Ac (undamped), zero elsewhere."""
    L = len(sizes) - 1
    off = block_offsets(sizes)
    F = np.zeros((off[-1], off[-1]))
    for l in range(L):
        Gd = G[l] + gamma / pi[l] * np.eye(G[l].shape[0])
        Ad = A[l] + gamma * pi[l] * np.eye(A[l].shape[0])
        F[off[l]:off[l + 1], off[l]:off[l + 1]] = np.kron(Gd, Ad)
    if Ac is not None:
        for l in range(L - 1):
            B = np.kron(Gc[l], Ac[l])
            F[off[l]:off[l + 1], off[l + 1]:off[l + 2]] = B
            F[off[l + 1]:off[l + 2], off[l]:off[l + 1]] = B.T
    return F


def chain_inverse(sizes, F):
    """F-hat^-1 = Xi^T Lambda Xi from the blocks of F (CONVENTIONS.md)."""
    L = len(sizes) - 1
    off = block_offsets(sizes)
    D = off[-1]
    Xi, Lam = np.eye(D), np.zeros((D, D))

    def blk(i, j):
        return F[off[i]:off[i + 1], off[j]:off[j + 1]]

    for l in range(L):
        if l < L - 1:
            Psi = blk(l, l + 1) @ np.linalg.inv(blk(l + 1, l + 1))
            Xi[off[l]:off[l + 1], off[l + 1]:off[l + 2]] = -Psi
            S = blk(l, l) - Psi @ blk(l + 1, l + 1) @ Psi.T
        else:
            S = blk(l, l)
        Lam[off[l]:off[l + 1], off[l]:off[l + 1]] = np.linalg.inv(S)
    return Xi.T @ Lam @ Xi


def band_mask(sizes):
    L = len(sizes) - 1
    off = block_offsets(sizes)
    m = np.zeros((off[-1], off[-1]), bool)
    for i in range(L):
        for j in range(max(0, i - 1), min(L, i + 2)):
            m[off[i]:off[i + 1], off[j]:off[j + 1]] = True
    return m


def random_statistics(sizes, seed=0, N=200):
    """Statistics from ONE joint sample covariance (as the optimiser's are):
    A_l, A_cross from joint abar samples, G_l, G_cross from joint g samples."""
    rng = np.random.default_rng(seed)
    qs = [s + 1 for s in sizes[:-1]]
    outs = list(sizes[1:])
    L = len(outs)

    def joint(ns):
        n = sum(ns)
        Z = rng.normal(size=(N, n)) @ rng.normal(size=(n, n)) / np.sqrt(n)
        C = Z.T @ Z / N
        o = np.concatenate([[0], np.cumsum(ns)])
        diag = [C[o[l]:o[l + 1], o[l]:o[l + 1]].copy() for l in range(L)]
        cross = [C[o[l]:o[l + 1], o[l + 1]:o[l + 2]].copy() for l in range(L - 1)]
        return diag, cross

    A, Ac = joint(qs)
    G, Gc = joint(outs)
    return A, G, Ac, Gc


def precondition_dense(sizes, inv_wbar, v):
    perm = wbar_perm(sizes)
    return inv_wbar[np.ix_(perm, perm)] @ v


# ---- the C kernels: block-tridiagonal and block-diagonal inverse ------------------
@pytest.mark.parametrize("sizes", [[3, 4, 5, 2], [2, 3, 3, 4, 2], [4, 3]])
def test_tridiag_inverse_matches_chain_formula(sizes):
    pk = _pk()
    A, G, Ac, Gc = random_statistics(sizes, seed=len(sizes))
    gamma, pi = 0.3, [1.3, 0.7, 1.1, 0.9][:len(sizes) - 1]
    inv = pk._core.kfac_inverse(A, G, Ac if len(sizes) > 2 else [], Gc if len(sizes) > 2 else [],
                                gamma, pi)
    F = dense_ftilde(sizes, A, G, Ac, Gc, gamma, pi)
    perm = wbar_perm(sizes)
    D = F.shape[0]
    # F-hat^-1 column by column through the C kernel, back in Wbar order
    cols = np.stack([pk._core.kfac_apply(*inv, e) for e in np.eye(D)], axis=1)
    Finv = np.empty_like(cols)
    Finv[np.ix_(perm, perm)] = cols
    # (1) the chain formula
    np.testing.assert_allclose(Finv, chain_inverse(sizes, F), rtol=1e-9, atol=1e-11 * np.abs(Finv).max())
    # (2) the inverse is zero outside the tridiagonal band (exactly, by construction)
    assert np.all(Finv[~band_mask(sizes)] == 0.0)
    # (3) its inverse F-hat equals F-tilde on the band
    Fhat = np.linalg.inv(Finv)
    band = band_mask(sizes)
    np.testing.assert_allclose(Fhat[band], F[band], rtol=1e-8, atol=1e-10 * np.abs(F).max())
    # symmetric
    np.testing.assert_allclose(Finv, Finv.T, atol=1e-12 * np.abs(Finv).max())


@pytest.mark.parametrize("sizes", [[3, 4, 5, 2], [4, 3]])
def test_blockdiag_inverse_matches_dense(sizes):
    pk = _pk()
    A, G, _, _ = random_statistics(sizes, seed=3)
    gamma, pi = 0.05, [2.0, 0.4, 1.0][:len(sizes) - 1]
    inv = pk._core.kfac_inverse(A, G, None, None, gamma, pi)
    assert inv[4] is None and inv[5] is None
    F = dense_ftilde(sizes, A, G, None, None, gamma, pi)
    rng = np.random.default_rng(0)
    v = rng.normal(size=F.shape[0])
    ref = precondition_dense(sizes, np.linalg.inv(F), v)
    np.testing.assert_allclose(pk._core.kfac_apply(*inv, v), ref, rtol=1e-9, atol=1e-12)
    # and the same as KronCurvature's factored damping (delta = gamma^2, its own pi)
    K = pk.KronCurvature(A=A, G=G, sizes=sizes)
    inv2 = pk._core.kfac_inverse(A, G, None, None, gamma, K.factored_pi())
    np.testing.assert_allclose(pk._core.kfac_apply(*inv2, v), K.solve(v, damping=gamma ** 2, factored=True),
                               rtol=1e-9, atol=1e-12)


def test_float32_kernels_agree_with_float64():
    pk = _pk()
    sizes = [3, 4, 5, 2]
    A, G, Ac, Gc = random_statistics(sizes, seed=7)
    pi = [1.0, 1.0, 1.0]
    f32 = [[a.astype(np.float32) for a in lst] for lst in (A, G, Ac, Gc)]
    inv64 = pk._core.kfac_inverse(A, G, Ac, Gc, 0.5, pi)
    inv32 = pk._core.kfac_inverse(*f32, 0.5, pi)
    assert inv32[0][0].dtype == np.float32
    v = np.random.default_rng(1).normal(size=sum(o * (i + 1) for i, o in zip(sizes[:-1], sizes[1:])))
    r64 = pk._core.kfac_apply(*inv64, v)
    r32 = pk._core.kfac_apply(*inv32, v.astype(np.float32))
    assert r32.dtype == np.float32
    np.testing.assert_allclose(r32, r64, rtol=2e-3, atol=2e-4 * np.abs(r64).max())
    # tuples of arrays carry their dtype the same way as lists
    inv32t = pk._core.kfac_inverse(*(tuple(lst) for lst in f32), 0.5, tuple(pi))
    assert inv32t[0][0].dtype == np.float32
    r32t = pk._core.kfac_apply(*(tuple(x) if isinstance(x, list) else x for x in inv32t), v.astype(np.float32))
    assert r32t.dtype == np.float32
    np.testing.assert_array_equal(r32t, r32)


def test_kernel_errors():
    pk = _pk()
    sizes = [3, 4, 2]
    A, G, Ac, Gc = random_statistics(sizes)
    with pytest.raises(ValueError, match=r"G\[0\]: expected shape \(4, 4\)"):
        pk._core.kfac_inverse(A, [G[1], G[1]], None, None, 1.0, [1.0, 1.0])
    with pytest.raises(ValueError, match=r"A_cross\[0\]: expected shape \(4, 5\)"):
        pk._core.kfac_inverse(A, G, [Ac[0].T], Gc, 1.0, [1.0, 1.0])
    with pytest.raises(ValueError, match="both"):
        pk._core.kfac_inverse(A, G, Ac, None, 1.0, [1.0, 1.0])
    with pytest.raises(ValueError, match="gamma"):
        pk._core.kfac_inverse(A, G, None, None, -1.0, [1.0, 1.0])
    with pytest.raises(ValueError, match=r"pi\[1\]"):
        pk._core.kfac_inverse(A, G, None, None, 1.0, [1.0, 0.0])
    with pytest.raises(ValueError, match="pi: expected 2"):
        pk._core.kfac_inverse(A, G, None, None, 1.0, [1.0])
    bad = [a.copy() for a in A]
    bad[1][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"A\[1\]: contains NaN"):
        pk._core.kfac_inverse(bad, G, None, None, 1.0, [1.0, 1.0])
    # a singular factor with zero damping
    sing = [a.copy() for a in A]
    sing[0] = np.zeros_like(sing[0])
    with pytest.raises(pk.LinAlgError, match="singular"):
        pk._core.kfac_inverse(sing, G, None, None, 0.0, [1.0, 1.0])
    # joint statistics that are not PSD make a conditional covariance indefinite
    with pytest.raises(pk.LinAlgError, match="singular"):
        pk._core.kfac_inverse(A, G, [10 * Ac[0]], [10 * Gc[0]], 1e-3, [1.0, 1.0])
    inv = pk._core.kfac_inverse(A, G, None, None, 1.0, [1.0, 1.0])
    with pytest.raises(ValueError, match=r"V: expected shape \(26,\)"):
        pk._core.kfac_apply(*inv, np.zeros(25))


@pytest.mark.parametrize("loss", ["mse", "ce", "bce"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ggn_gram_equals_ggn_matvec(loss, dtype):
    """The quadratic model's V^T G V from forward-mode products equals
    V^T (pk.ggn_matvec V) (and the dense GGN)."""
    pk = _pk()
    K = {"mse": 3, "ce": 4, "bce": 1}[loss]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(37, 5))
    y = {"mse": rng.normal(size=(37, K)), "ce": rng.integers(0, K, 37),
         "bce": rng.integers(0, 2, 37).astype(float)}[loss]
    net = pk.MLP([5, 6, 4, K], activation="tanh", dtype=dtype, seed=1)
    V = rng.normal(size=(net.num_params, 3)).astype(dtype)
    gram = pk._core.ggn_gram(net, X, loss, V)
    assert gram.dtype == np.float64 and gram.shape == (3, 3)
    ref = V.astype(np.float64).T @ pk.ggn_matvec(net, X, y, loss, V).astype(np.float64)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(gram, ref, rtol=tol, atol=tol * np.abs(ref).max())
    np.testing.assert_array_equal(gram, gram.T)
    with pytest.raises(ValueError, match="V: expected shape"):
        pk._core.ggn_gram(net, X, loss, V[1:])


# ---- the optimiser: exactness on a quadratic --------------------------------------
@pytest.mark.parametrize("structure", ["blockdiag", "tridiag"])
def test_one_step_lands_on_least_squares_minimiser(structure):
    pk = _pk()
    X, Y = regression()
    net = pk.MLP([5, 3], seed=1)
    opt = pk.optim.KFAC(net, "mse", lr=1.0, momentum=0.0, damping=0.0, weight_decay=0.0,
                        curvature="exact", structure=structure)
    opt.step(X, Y)
    Xb = np.hstack([X, np.ones((len(X), 1))])
    Wb = np.linalg.lstsq(Xb, Y, rcond=None)[0].T
    np.testing.assert_allclose(net.layers[0].W, Wb[:, :5], atol=1e-12)
    np.testing.assert_allclose(net.layers[0].b, Wb[:, 5], atol=1e-12)
    _, g = pk.loss_and_grad(net, X, Y, "mse")
    assert np.abs(g).max() < 1e-10


def test_one_step_with_weight_decay_minimises_ridge():
    """With η > 0, λ = 0 the damping is exactly η: the step solves ridge regression."""
    pk = _pk()
    X, Y = regression()
    eta = 0.3
    net = pk.MLP([5, 3], seed=1)
    opt = pk.optim.KFAC(net, "mse", lr=1.0, momentum=0.0, damping=0.0, weight_decay=eta,
                        curvature="exact", adapt_damping=False)
    # factored damping with gamma = sqrt(eta) is not eta*I, so compare with the
    # K-FAC step written out densely instead
    theta0 = net.theta.copy()
    opt.step(X, Y)
    N = len(X)
    Xb = np.hstack([X, np.ones((N, 1))])
    A = Xb.T @ Xb / N
    G = np.eye(3)
    gamma = math.sqrt(eta)
    pi = math.sqrt((np.trace(A) / 6) / (np.trace(G) / 3))
    F = dense_ftilde([5, 3], [A], [G], None, None, gamma, [pi])
    _, g = pk.loss_and_grad(pk.MLP.from_params([(theta0[:15].reshape(3, 5), theta0[15:])],
                                               activation=[]), X, Y, "mse")
    grad = g / N + eta * theta0
    step = -precondition_dense([5, 3], np.linalg.inv(F), grad)
    np.testing.assert_allclose(net.theta, theta0 + step, atol=1e-12)


# ---- the optimiser's preconditioner equals the dense constructions -----------------
@pytest.mark.parametrize("structure", ["blockdiag", "tridiag"])
def test_precondition_matches_dense_from_optimiser_state(structure):
    pk = _pk()
    X, y = classification(N=25)
    sizes = [4, 5, 4, 3]
    net = pk.MLP(sizes, seed=2)
    opt = pk.optim.KFAC(net, "ce", damping=0.1, structure=structure, seed=3)
    for _ in range(3):
        opt.step(X, y)
    pi = opt.factored_pi()
    F = dense_ftilde(sizes, opt.A, opt.G, opt.A_cross, opt.G_cross, opt.gamma, pi)
    Finv = chain_inverse(sizes, F) if structure == "tridiag" else np.linalg.inv(F)
    v = np.random.default_rng(4).normal(size=net.num_params)
    np.testing.assert_allclose(opt.precondition(v), precondition_dense(sizes, Finv, v), rtol=1e-8,
                               atol=1e-10 * np.abs(Finv).max())
    # the last direction is -F^-1 grad with the inverse of step 3
    np.testing.assert_allclose(opt.last["direction"], -opt.precondition(opt.last["grad"]), rtol=1e-12,
                               atol=1e-14)
    D = net.num_params
    with pytest.raises(ValueError, match=rf"^v: expected shape \({D},\), got \({D - 1},\)"):
        opt.precondition(v[1:])
    with pytest.raises(ValueError, match="^v: contains NaN"):
        opt.precondition(np.where(np.arange(D) == 2, np.nan, v))
    with pytest.raises(TypeError, match="^v: expected a real array"):
        opt.precondition(v.astype(complex))


# ---- α and μ from the quadratic model ------------------------------------------
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_alpha_mu_minimise_the_quadratic_model(loss):
    pk = _pk()
    if loss == "ce":
        X, y = classification(N=30)
        sizes = [4, 6, 3]
    else:
        X, y = regression(N=30, d=4, K=2)
        sizes = [4, 6, 2]
    net = pk.MLP(sizes, activation="tanh", seed=5)
    opt = pk.optim.KFAC(net, loss, damping=0.5, weight_decay=1e-3, seed=1)
    opt.step(X, y)
    prev = opt.last["update"].copy()
    theta1 = net.theta.copy()
    lam = opt.damping
    opt.step(X, y)
    info = opt.last
    N = len(X)
    net1 = net.copy()
    net1.theta = theta1
    F = pk.ggn(net1, X, y, loss) / N
    C = F + (lam + opt.weight_decay) * np.eye(net.num_params)
    Delta, g = info["direction"], info["grad"]

    def M(x):
        d = x[0] * Delta + x[1] * prev
        return 0.5 * d @ C @ d + g @ d

    res = optimize.brute(M, [(-3, 3), (-3, 3)], Ns=61, finish=optimize.fmin, full_output=True,
                         disp=False)
    # refine the brute-force point to machine precision
    res2 = optimize.minimize(M, res[0], method="BFGS", options={"gtol": 1e-13})
    np.testing.assert_allclose([info["alpha"], info["mu"]], res2.x, rtol=1e-5, atol=1e-7)
    assert info["qmodel"] == pytest.approx(M(res2.x), rel=1e-8, abs=1e-12)
    np.testing.assert_allclose(info["update"], info["alpha"] * Delta + info["mu"] * prev, rtol=1e-12)
    np.testing.assert_allclose(net.theta, theta1 + info["update"], rtol=1e-13, atol=1e-15)


def test_alpha_only_on_first_step_and_fixed_momentum():
    pk = _pk()
    X, y = classification(N=20)
    net = pk.MLP([4, 5, 3], seed=0)
    opt = pk.optim.KFAC(net, "ce", momentum=0.5, damping=1.0, seed=0)
    theta0 = net.theta.copy()
    opt.step(X, y)
    info = opt.last
    assert info["mu"] == 0.0
    net0 = net.copy()
    net0.theta = theta0
    F = pk.ggn(net0, X, y, "ce") / len(X)
    d, g = info["direction"], info["grad"]
    alpha = -(g @ d) / (d @ F @ d + (opt.damping + opt.weight_decay) * d @ d)
    assert info["alpha"] == pytest.approx(alpha, rel=1e-10)
    opt.step(X, y)
    assert opt.last["mu"] == 0.5


# ---- Levenberg-Marquardt -----------------------------------------------------------
def _rho_reference(pk, net_before, X, y, loss, info, eta):
    N = len(X)
    theta = net_before.theta
    h0 = pk.loss(net_before, X, y, loss) / N + 0.5 * eta * theta @ theta
    after = net_before.copy()
    after.theta = theta + info["update"]
    h1 = pk.loss(after, X, y, loss) / N + 0.5 * eta * after.theta @ after.theta
    F = pk.ggn(net_before, X, y, loss) / N
    d = info["update"]
    pred = 0.5 * d @ (F @ d + eta * d) + info["grad"] @ d
    return (h1 - h0) / pred


def test_lm_rho_is_one_on_a_quadratic_and_lambda_decreases():
    pk = _pk()
    X, Y = regression()
    net = pk.MLP([5, 3], seed=1)
    opt = pk.optim.KFAC(net, "mse", damping=2.0, weight_decay=0.0, damping_every=1, curvature="exact")
    before = net.copy()
    opt.step(X, Y)
    rho = opt.last["rho"]
    assert rho == pytest.approx(_rho_reference(pk, before, X, Y, "mse", opt.last, 0.0), rel=1e-9)
    assert rho == pytest.approx(1.0, abs=1e-9)          # quadratic objective: the model is exact
    assert opt.damping == pytest.approx(2.0 * 19 / 20, rel=1e-15)


def test_lm_damping_stops_at_min_damping():
    """rho = 1 on a quadratic every step: lambda shrinks by 19/20 per step until
    the floor, never below it; a floor above the current lambda does not raise it."""
    pk = _pk()
    X, Y = regression()
    net = pk.MLP([5, 3], seed=1)
    opt = pk.optim.KFAC(net, "mse", damping=1.2, weight_decay=0.0, damping_every=1,
                        curvature="exact", min_damping=1.0)
    seen = []
    for _ in range(6):
        opt.step(X, Y)
        seen.append(opt.damping)
    assert seen[:3] == pytest.approx([1.2 * 0.95, 1.2 * 0.95 ** 2, 1.2 * 0.95 ** 3], rel=1e-14)
    assert seen[3:] == [1.0, 1.0, 1.0]
    low = pk.optim.KFAC(pk.MLP([5, 3], seed=1), "mse", damping=0.5, weight_decay=0.0,
                        damping_every=1, curvature="exact", min_damping=1.0)
    low.step(X, Y)
    assert low.damping == 0.5
    with pytest.raises(ValueError, match="min_damping"):
        pk.optim.KFAC(net, "mse", min_damping=-1.0)


def test_lm_rho_from_real_loss_change_and_lambda_increases_after_a_bad_step():
    pk = _pk()
    X, y = classification(N=30)
    net = pk.MLP([4, 8, 3], activation="relu", seed=2)
    net.theta = 3 * net.theta
    # a too long fixed step: the real loss change is much worse than the
    # Gauss-Newton model predicts (a relu kink), rho < 1/4 and lambda grows by 20/19
    opt = pk.optim.KFAC(net, "ce", lr=1.2, momentum=0.0, damping=0.01, weight_decay=1e-3,
                        damping_every=1, seed=0)
    before = net.copy()
    opt.step(X, y)
    rho = opt.last["rho"]
    assert opt.last["qmodel0"] < 0          # the model predicted a decrease
    assert rho == pytest.approx(_rho_reference(pk, before, X, y, "ce", opt.last, 1e-3), rel=1e-8)
    assert rho < 0.25
    assert opt.damping == pytest.approx(0.01 * 20 / 19, rel=1e-15)


def test_lm_rho_is_minus_inf_when_the_model_predicts_no_decrease():
    pk = _pk()
    X, Y = regression(N=30, d=4, K=2)
    net = pk.MLP([4, 8, 2], seed=2)
    # exact curvature keeps the scenario independent of sampled targets: a fixed
    # step of 3x the natural-gradient length overshoots the quadratic model
    opt = pk.optim.KFAC(net, "mse", lr=3.0, momentum=0.0, damping=0.1, weight_decay=1e-3,
                        damping_every=1, seed=0, curvature="exact")
    opt.step(X, Y)
    assert opt.last["qmodel0"] > 0 and opt.last["rho"] == -math.inf
    assert opt.damping == pytest.approx(0.1 * 20 / 19, rel=1e-15)


def test_lm_period_and_omega():
    pk = _pk()
    X, Y = regression()
    net = pk.MLP([5, 3], seed=1)
    opt = pk.optim.KFAC(net, "mse", damping=4.0, weight_decay=0.0, damping_every=3, curvature="exact")
    rhos = []
    for _ in range(6):
        opt.step(X, Y)
        rhos.append(opt.last["rho"])
    assert [r is not None for r in rhos] == [False, False, True, False, False, True]
    assert opt.damping == pytest.approx(4.0 * ((19 / 20) ** 3) ** 2, rel=1e-12)


def test_no_adaptation_keeps_damping():
    pk = _pk()
    X, y = classification()
    net = pk.MLP([4, 5, 3], seed=0)
    opt = pk.optim.KFAC(net, "ce", damping=3.0, weight_decay=0.01, adapt_damping=False)
    for _ in range(25):
        opt.step(X, y)
    assert opt.damping == 3.0 and opt.gamma == pytest.approx(math.sqrt(3.01))
    assert opt.last["rho"] is None


def test_gamma_search_every_20_steps():
    pk = _pk()
    X, y = classification(N=40)
    net = pk.MLP([4, 6, 3], seed=0)
    opt = pk.optim.KFAC(net, "ce", damping=2.0, weight_decay=0.0, damping_every=1000, seed=0)
    g0 = opt.gamma
    seen = []
    for _ in range(40):
        opt.step(X, y)
        seen.append(opt.gamma)
    w2 = (19 / 20) ** 10
    assert all(s == g0 for s in seen[:19])
    assert seen[19] in (pytest.approx(g0), pytest.approx(g0 * w2), pytest.approx(g0 / w2))
    assert all(s == seen[19] for s in seen[19:39])


def test_inverse_refresh_schedule():
    pk = _pk()
    X, y = classification()
    net = pk.MLP([4, 5, 3], seed=0)
    opt = pk.optim.KFAC(net, "ce", inverse_every=4, adapt_damping=False)
    calls = []
    orig = opt._inverse

    def counting(gamma):
        calls.append(opt.steps + 1)
        return orig(gamma)

    opt._inverse = counting
    for _ in range(12):
        opt.step(X, y)
    assert calls == [1, 2, 3, 4, 8, 12]


def test_ema_of_statistics():
    """Statistics of step k enter with decay min(1 - 1/k, ema_decay); with exact
    curvature they equal pk.kfac's factors (A mean, G / N) at the parameters
    before each update."""
    pk = _pk()
    X, y = classification(N=20)
    net = pk.MLP([4, 5, 3], seed=0)
    opt = pk.optim.KFAC(net, "ce", curvature="exact", ema_decay=0.6, structure="blockdiag")
    A_ref = G_ref = None
    for k in range(1, 5):
        K = pk.kfac(net, (X, y), "ce", kind="exact")
        eps = min(1 - 1 / k, 0.6)
        A_new, G_new = K.A, [G / len(X) for G in K.G]
        if A_ref is None:
            A_ref, G_ref = A_new, G_new
        else:
            A_ref = [eps * a + (1 - eps) * b for a, b in zip(A_ref, A_new)]
            G_ref = [eps * a + (1 - eps) * b for a, b in zip(G_ref, G_new)]
        opt.step(X, y)
        for a, b in zip(opt.A + opt.G, A_ref + G_ref):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_stats_batch_uses_a_reproducible_subset():
    pk = _pk()
    X, y = classification(N=40)
    runs = []
    for _ in range(2):
        net = pk.MLP([4, 5, 3], seed=0)
        opt = pk.optim.KFAC(net, "ce", curvature="exact", stats_batch=10, seed=5)
        for _ in range(3):
            opt.step(X, y)
        runs.append((net.theta.copy(), opt.A[0].copy()))
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])
    net = pk.MLP([4, 5, 3], seed=0)
    opt = pk.optim.KFAC(net, "ce", curvature="exact", stats_batch=10, seed=5)
    opt.step(X, y)
    # the subset of step k: 10 rows drawn by numpy.random.default_rng([seed, k, 1])
    idx = np.sort(np.random.default_rng([5, 1, 1]).choice(40, 10, replace=False))
    K = pk.kfac(pk.MLP([4, 5, 3], seed=0), (X[idx], y[idx]), "ce", kind="exact")
    for a, b in zip(opt.A + opt.G, K.A + [G / 10 for G in K.G]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="stats_batch"):
        pk.optim.KFAC(net, "ce", stats_batch=0)


def test_cross_statistics_are_collected_for_tridiag():
    pk = _pk()
    X, y = classification(N=20)
    net = pk.MLP([4, 5, 6, 3], seed=0)
    opt = pk.optim.KFAC(net, "ce", structure="tridiag")
    opt.step(X, y)
    assert [a.shape for a in opt.A_cross] == [(5, 6), (6, 7)]
    assert [g.shape for g in opt.G_cross] == [(5, 6), (6, 3)]
    opt2 = pk.optim.KFAC(pk.MLP([4, 5, 6, 3], seed=0), "ce")
    opt2.step(X, y)
    assert opt2.A_cross is None and opt2.G_cross is None


# ---- training behaviour ---------------------------------------------------------------
@pytest.mark.parametrize("curvature,structure", [("mc", "blockdiag"), ("mc", "tridiag"),
                                                 ("exact", "blockdiag"), ("exact", "tridiag"),
                                                 ("empirical", "blockdiag"), ("kfra", "blockdiag")])
def test_kfac_variants_reduce_the_loss(curvature, structure):
    pk = _pk()
    X, _ = classification(N=60, d=4, K=3, seed=1)
    y = np.argmax(X @ np.random.default_rng(2).normal(size=(4, 3)), axis=1)   # learnable labels
    net = pk.MLP([4, 8, 8, 3], seed=0)
    opt = pk.optim.KFAC(net, "ce", damping=1.0, curvature=curvature, structure=structure, seed=0)
    hist = pk.train(net, opt, (X, y), epochs=30, progress=False)
    assert hist["loss"][-1] < 0.25 * hist["loss"][0]
    assert np.isfinite(hist["loss"]).all()


def test_float32_network():
    pk = _pk()
    X, y = classification(N=30)
    net = pk.MLP([4, 6, 3], dtype=np.float32, seed=0)
    opt = pk.optim.KFAC(net, "ce", damping=1.0, structure="tridiag")
    losses = [opt.step(X, y) for _ in range(10)]
    assert net.theta.dtype == np.float32
    assert losses[-1] < losses[0]
    for cls, kw in ((pk.optim.SGD, {"lr": 0.1}), (pk.optim.Adam, {"lr": 1e-2})):
        net = pk.MLP([4, 6, 3], dtype=np.float32, seed=0)
        o = cls(net, "ce", **kw)
        first = o.step(X, y)
        for _ in range(10):
            last = o.step(X, y)
        assert last < first and net.theta.dtype == np.float32


def test_kl_clip_bounds_the_fixed_lr_step():
    pk = _pk()
    X, y = classification(N=30)
    net = pk.MLP([4, 6, 3], seed=0)
    opt = pk.optim.KFAC(net, "ce", lr=1.0, momentum=0.0, damping=1e-2, kl_clip=1e-4)
    opt.step(X, y)
    d, g = opt.last["direction"], opt.last["grad"]
    alpha = opt.last["alpha"]
    assert alpha < 1.0
    assert alpha ** 2 * abs(d @ g) == pytest.approx(1e-4, rel=1e-9)
    # adaptive α: the exact curvature norm of the step is bounded
    net = pk.MLP([4, 6, 3], seed=0)
    opt = pk.optim.KFAC(net, "ce", damping=1e-2, kl_clip=1e-5)
    opt.step(X, y)
    assert opt.last["quad_fisher"] <= 1e-5 * (1 + 1e-9)


# ---- resuming ---------------------------------------------------------------------------
@pytest.mark.parametrize("structure", ["blockdiag", "tridiag"])
def test_resume_from_state_dict_is_bitwise(structure):
    pk = _pk()
    X, y = classification(N=64, seed=3)
    batches = [(X[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    kw = dict(damping=1.0, structure=structure, inverse_every=7, damping_every=2, gamma_every=5, seed=11)

    def run(net, opt, start, stop):
        for k in range(start, stop):
            Xb, yb = batches[k % 4]
            opt.step(Xb, yb)

    net_a = pk.MLP([4, 6, 5, 3], seed=0)
    opt_a = pk.optim.KFAC(net_a, "ce", **kw)
    run(net_a, opt_a, 0, 23)

    net_b = pk.MLP([4, 6, 5, 3], seed=0)
    opt_b = pk.optim.KFAC(net_b, "ce", **kw)
    run(net_b, opt_b, 0, 9)
    state = pickle.loads(pickle.dumps(opt_b.state_dict()))
    theta = net_b.theta.copy()
    # a fresh process: new network and optimiser (different seed on purpose)
    net_c = pk.MLP([4, 6, 5, 3], seed=99)
    net_c.theta = theta
    opt_c = pk.optim.KFAC(net_c, "ce", **{**kw, "seed": 0})
    opt_c.load_state_dict(state)
    run(net_c, opt_c, 9, 23)
    assert np.array_equal(net_c.theta, net_a.theta)
    assert opt_c.damping == opt_a.damping and opt_c.gamma == opt_a.gamma and opt_c.steps == 23
    # the state is a copy: continuing the original does not change it
    run(net_b, opt_b, 9, 10)
    assert state["steps"] == 9


@pytest.mark.parametrize("cls,kw", [("SGD", {"lr": 0.05}), ("Adam", {"lr": 1e-2})])
def test_first_order_resume_is_bitwise(cls, kw):
    pk = _pk()
    X, y = classification(N=40)
    make = getattr(pk.optim, cls)
    net_a = pk.MLP([4, 5, 3], seed=0)
    opt_a = make(net_a, "ce", **kw)
    for _ in range(8):
        opt_a.step(X, y)
    net_b = pk.MLP([4, 5, 3], seed=0)
    opt_b = make(net_b, "ce", **kw)
    for _ in range(3):
        opt_b.step(X, y)
    state = opt_b.state_dict()
    net_c = net_b.copy()
    opt_c = make(net_c, "ce", **kw)
    opt_c.load_state_dict(state)
    for _ in range(5):
        opt_c.step(X, y)
    assert np.array_equal(net_c.theta, net_a.theta)


def test_load_state_dict_errors():
    pk = _pk()
    X, y = classification()
    net = pk.MLP([4, 5, 3], seed=0)
    opt = pk.optim.KFAC(net, "ce")
    opt.step(X, y)
    state = opt.state_dict()
    with pytest.raises(ValueError, match="sizes"):
        pk.optim.KFAC(pk.MLP([4, 6, 3]), "ce").load_state_dict(state)
    with pytest.raises(ValueError, match="structure"):
        pk.optim.KFAC(pk.MLP([4, 5, 3]), "ce", structure="tridiag").load_state_dict(state)
    with pytest.raises(ValueError, match="KFAC state_dict"):
        pk.optim.KFAC(pk.MLP([4, 5, 3]), "ce").load_state_dict(pk.optim.SGD(net, "ce", 0.1).state_dict())
    bad = dict(state)
    bad["A"] = [a[:-1] for a in state["A"]]
    with pytest.raises(ValueError, match=r"state\['A'\]"):
        pk.optim.KFAC(pk.MLP([4, 5, 3]), "ce").load_state_dict(bad)


# ---- SGD and Adam against NumPy references --------------------------------------------
def _mean_grad(pk, net, X, y, loss):
    total, g = pk.loss_and_grad(net, X, y, loss)
    return total / len(X), g / len(X)


def _decay(kind, D):
    """A scalar weight decay, or one per parameter (SGD and Adam take both)."""
    return 1e-2 if kind == "scalar" else np.linspace(0.0, 0.05, D)


@pytest.mark.parametrize("nesterov,momentum", [(True, 0.9), (False, 0.9), (False, 0.0)])
@pytest.mark.parametrize("decay", ["scalar", "per_parameter"])
def test_sgd_matches_numpy_reference(nesterov, momentum, decay):
    pk = _pk()
    X, y = classification(N=25)
    net = pk.MLP([4, 5, 3], seed=0)
    ref = net.copy()
    lr, wd = 0.07, _decay(decay, net.num_params)
    opt = pk.optim.SGD(net, "ce", lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    buf = None
    for _ in range(5):
        value = opt.step(X, y)
        v_ref, g = _mean_grad(pk, ref, X, y, "ce")
        assert value == pytest.approx(v_ref, rel=1e-14)
        g = g + wd * ref.theta
        buf = g.copy() if buf is None else momentum * buf + g
        d = g + momentum * buf if nesterov else buf
        ref.theta = ref.theta - lr * d
        np.testing.assert_allclose(net.theta, ref.theta, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("decay", ["scalar", "per_parameter"])
def test_adam_matches_numpy_reference(decay):
    pk = _pk()
    X, Y = regression(N=20, d=4, K=2)
    net = pk.MLP([4, 5, 2], seed=0)
    ref = net.copy()
    lr, b1, b2, eps, wd = 3e-3, 0.8, 0.95, 1e-6, _decay(decay, net.num_params)
    opt = pk.optim.Adam(net, "mse", lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    m = np.zeros(net.num_params)
    v = np.zeros(net.num_params)
    for t in range(1, 6):
        opt.step(X, Y)
        _, g = _mean_grad(pk, ref, X, Y, "mse")
        g = g + wd * ref.theta
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        ref.theta = ref.theta - lr * mhat / (np.sqrt(vhat) + eps)
        np.testing.assert_allclose(net.theta, ref.theta, rtol=1e-12, atol=1e-15)


def test_kernels_accept_strided_inputs_and_leave_them_unchanged():
    pk = _pk()
    sizes = [3, 4, 5, 2]
    A, G, Ac, Gc = random_statistics(sizes, seed=2)
    ref = pk._core.kfac_inverse(A, G, Ac, Gc, 0.2, [1.0, 1.0, 1.0])
    Af = [np.asfortranarray(a) for a in A]                      # F-order
    Gs = [np.kron(g, np.ones((1, 1)))[:, :] for g in G]
    Acs = [np.repeat(a, 2, axis=1)[:, ::2] for a in Ac]         # strided views
    for a in Af + Acs:
        a.setflags(write=False)
    copies = [a.copy() for a in Af + Gs + Acs + Gc]
    got = pk._core.kfac_inverse(Af, Gs, Acs, Gc, 0.2, (1.0, 1.0, 1.0))
    for r, g in zip(ref, got):
        for x, y in zip(r, g):
            np.testing.assert_array_equal(x, y)
    for a, c in zip(Af + Gs + Acs + Gc, copies):
        np.testing.assert_array_equal(a, c)
    v = np.random.default_rng(0).normal(size=2 * 53)[::2]      # strided vector (D = 53)
    np.testing.assert_array_equal(pk._core.kfac_apply(*got, v), pk._core.kfac_apply(*ref, v.copy()))
    ro = np.zeros(5)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="theta: expected a writeable"):
        pk._core.sgd_update(ro, np.ones(5), np.zeros(5), 0.1, 0.9, True, 0.0, True)


def test_update_kernels_validate_in_place_arrays():
    pk = _pk()
    theta = np.zeros(5)
    with pytest.raises(ValueError, match="buf: expected a writeable contiguous 1-D float64 array of length 5"):
        pk._core.sgd_update(theta, np.ones(5), np.zeros(4), 0.1, 0.9, True, 0.0, True)
    with pytest.raises(ValueError, match="theta"):
        pk._core.sgd_update(np.zeros(10)[::2], np.ones(5), np.zeros(5), 0.1, 0.9, True, 0.0, True)
    with pytest.raises(ValueError, match="t: expected"):
        pk._core.adam_update(theta, np.ones(5), np.zeros(5), np.zeros(5), 0, 0.1, 0.9, 0.99, 1e-8, 0.0)
    with pytest.raises(ValueError, match="beta"):
        pk._core.adam_update(theta, np.ones(5), np.zeros(5), np.zeros(5), 1, 0.1, 1.0, 0.99, 1e-8, 0.0)


# ---- argument errors ---------------------------------------------------------------------
def test_constructor_errors():
    pk = _pk()
    net = pk.MLP([4, 5, 3])
    K = pk.optim.KFAC
    with pytest.raises(ValueError, match="loss: expected one of"):
        K(net, "hinge")
    assert K(net, "bce").loss == "bce"  # multi-label: one logistic loss per output (tests/test_bce_multi.py)
    with pytest.raises(ValueError, match="structure"):
        K(net, "ce", structure="full")
    with pytest.raises(ValueError, match="curvature"):
        K(net, "ce", curvature="hessian")
    with pytest.raises(ValueError, match="KFRA"):
        K(net, "ce", curvature="kfra", structure="tridiag")
    with pytest.raises(ValueError, match="damping: expected a finite number >= 0"):
        K(net, "ce", damping=-1.0)
    with pytest.raises(ValueError, match="lr"):
        K(net, "ce", lr=0.0)
    with pytest.raises(ValueError, match="ema_decay"):
        K(net, "ce", ema_decay=1.0)
    with pytest.raises(TypeError, match="inverse_every"):
        K(net, "ce", inverse_every=2.5)
    with pytest.raises(ValueError, match="damping_every"):
        K(net, "ce", damping_every=0)
    with pytest.raises(TypeError, match="net: expected a pykfac.MLP"):
        K("net", "ce")
    with pytest.raises(ValueError, match="lr"):
        pk.optim.SGD(net, "ce", -0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        pk.optim.SGD(net, "ce", 0.1, momentum=0.0)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        pk.optim.Adam(net, "ce", 1e-3, betas=(0.9, 1.5))


def test_step_input_errors_and_divergence():
    pk = _pk()
    X, y = classification()
    net = pk.MLP([4, 5, 3])
    opt = pk.optim.KFAC(net, "ce")
    with pytest.raises(ValueError, match=r"X: expected shape \(N, 4\)"):
        opt.step(X[:, :3], y)
    with pytest.raises(ValueError, match=r"y: class labels must lie in \[0, 3\)"):
        opt.step(X, y + 3)
    with pytest.raises(ValueError, match="X: contains NaN"):
        opt.step(np.full_like(X, np.nan), y)
    assert opt.steps == 0
    with pytest.raises(RuntimeError, match="call step"):
        opt.precondition(np.zeros(net.num_params))
    # zero damping on a rank-deficient batch: a clear LinAlgError
    net2 = pk.MLP([4, 5, 3])
    opt2 = pk.optim.KFAC(net2, "ce", damping=0.0, weight_decay=0.0)
    theta = net2.theta.copy()
    with pytest.raises(pk.LinAlgError, match="use damping > 0"):
        opt2.step(X[:2], y[:2])
    # the failed step changed nothing: it can be retried with more damping
    assert opt2.steps == 0 and opt2.A is None and np.array_equal(net2.theta, theta)
    opt2.damping, opt2.gamma = 1.0, 1.0
    opt2.step(X[:2], y[:2])
    assert opt2.steps == 1
    # a divergent SGD run
    Xr, Yr = regression()
    net3 = pk.MLP([5, 3])
    sgd = pk.optim.SGD(net3, "mse", lr=50.0)
    with pytest.raises(FloatingPointError, match="diverged"):
        for _ in range(200):
            sgd.step(Xr * 100, Yr)


# ---- pk.train ------------------------------------------------------------------------
def test_train_history_minibatches_and_stopping():
    pk = _pk()
    X, y = classification(N=50)
    net = pk.MLP([4, 5, 3], seed=0)
    opt = pk.optim.Adam(net, "ce", 1e-2)
    hist = pk.train(net, opt, (X, y), epochs=3, batch_size=16, progress=False)
    assert hist["steps"] == 12 and len(hist["loss"]) == 12 and len(hist["time"]) == 12
    assert list(hist["epoch"]) == [0] * 4 + [1] * 4 + [2] * 4
    assert np.all(np.diff(hist["time"]) >= 0) and np.all(np.diff(hist["cpu_time"]) >= 0)
    assert len(hist["cpu_time"]) == 12
    assert opt.steps == 12
    hist = pk.train(net, opt, (X, y), epochs=100, progress=False, max_steps=5)
    assert hist["steps"] == 5
    hist = pk.train(net, opt, (X, y), epochs=1000, progress=False, target_loss=np.inf)
    assert hist["steps"] == 1
    batches = [(X[:25], y[:25]), (X[25:], y[25:])]
    hist = pk.train(net, opt, batches, epochs=2, progress=True)
    assert hist["steps"] == 4
    stops = pk.train(net, opt, batches, epochs=5, progress=False, callback=lambda i, l: i == 3)
    assert stops["steps"] == 3


def test_train_full_batch_matches_manual_steps():
    pk = _pk()
    X, y = classification(N=30)
    net_a = pk.MLP([4, 5, 3], seed=0)
    net_b = pk.MLP([4, 5, 3], seed=0)
    opt_a = pk.optim.KFAC(net_a, "ce", damping=1.0, seed=4)
    opt_b = pk.optim.KFAC(net_b, "ce", damping=1.0, seed=4)
    hist = pk.train(net_a, opt_a, (X, y), epochs=6, progress=False)
    manual = [opt_b.step(X, y) for _ in range(6)]
    assert np.array_equal(hist["loss"], np.array(manual))
    assert np.array_equal(net_a.theta, net_b.theta)


def test_train_errors():
    pk = _pk()
    X, y = classification()
    net = pk.MLP([4, 5, 3])
    opt = pk.optim.SGD(pk.MLP([4, 5, 3]), "ce", 0.1)
    with pytest.raises(ValueError, match="another network"):
        pk.train(net, opt, (X, y), progress=False)
    opt = pk.optim.SGD(net, "ce", 0.1)
    with pytest.raises(ValueError, match="epochs"):
        pk.train(net, opt, (X, y), epochs=0, progress=False)
    with pytest.raises(TypeError, match="data"):
        pk.train(net, opt, 5, progress=False)
    with pytest.raises(ValueError, match="exhausted"):
        pk.train(net, opt, iter([(X, y)]), epochs=2, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        pk.train(net, opt, [(X, y)], batch_size=4, progress=False)


def test_per_parameter_weight_decay_constant_is_the_scalar():
    """A constant (D,) weight decay gives the scalar run bit for bit (the
    references above check both against NumPy)."""
    pk = _pk()
    X, Y = regression(N=20, d=4, K=2)
    for cls, kw in ((pk.optim.SGD, {"lr": 0.05}), (pk.optim.Adam, {"lr": 1e-2})):
        a, b = pk.MLP([4, 5, 2], seed=2), pk.MLP([4, 5, 2], seed=2)
        oa = cls(a, "mse", weight_decay=0.01, **kw)
        ob = cls(b, "mse", weight_decay=np.full(a.num_params, 0.01), **kw)
        for _ in range(3):
            assert oa.step(X, Y) == ob.step(X, Y)
        np.testing.assert_array_equal(a.theta, b.theta)


def test_per_parameter_weight_decay_checks_and_files(tmp_path):
    pk = _pk()
    X, y = classification(N=12)
    net = pk.MLP([4, 5, 3], seed=0)
    D = net.num_params
    for bad, exc, msg in (
            (np.ones(D - 1), ValueError, rf"weight_decay: expected a number or shape \({D},\)"),
            (np.full(D, -1.0), ValueError, "weight_decay: expected finite values >= 0"),
            (np.full(D, np.nan), ValueError, "weight_decay: expected finite values >= 0"),
            (np.array(["a"] * D), TypeError, "weight_decay: expected real numbers")):
        with pytest.raises(exc, match=msg):
            pk.optim.Adam(net, "ce", 0.1, weight_decay=bad)
    with pytest.raises(TypeError, match="weight_decay: expected a real number"):
        pk.optim.KFAC(net, "ce", weight_decay=np.ones(D))  # K-FAC's damping needs one η
    wd = np.linspace(0, 1e-2, D)
    opt = pk.optim.Adam(net, "ce", 0.05, weight_decay=wd)
    opt.step(X, y)
    opt.save(tmp_path / "a.npz")
    back = pk.optim.Optimizer.load(tmp_path / "a.npz")
    np.testing.assert_array_equal(back.weight_decay, wd)
    opt.step(X, y)
    back.step(X, y)
    np.testing.assert_array_equal(back.net.theta, net.theta)
