"""The README's code snippets, run on toy data, and the behaviour the README
states next to them (shapes, included terms, equalities, errors).

Each test runs one snippet (or one README table/section) with small
placeholders for the README's free variables (X, y, Xt, X1, X2, Xv, yv, net,
la_reg) and checks what the README says about it against dense NumPy.
"""
import math

import numpy as np
import pytest

pk = pytest.importorskip("pykfac")

RNG = np.random.default_rng(1234)


# ---- toy placeholders --------------------------------------------------------
def _tour_problem():
    net = pk.MLP([4, 16, 16, 3], activation="tanh", seed=0)
    X = np.random.default_rng(0).normal(size=(32, 4))
    y = np.random.default_rng(1).integers(0, 3, size=32)
    return net, X, y


def _small_clf(seed=0, N=24):
    rng = np.random.default_rng(seed)
    net = pk.MLP([3, 6, 5, 3], activation="tanh", seed=seed)
    X = rng.normal(size=(N, 3))
    y = rng.integers(0, 3, size=N)
    return net, X, y


def _small_reg(seed=0, N=20):
    rng = np.random.default_rng(seed)
    net = pk.MLP([3, 6, 2], activation="tanh", seed=seed)
    X = rng.normal(size=(N, 3))
    Y = rng.normal(size=(N, 2))
    return net, X, Y


def _close(a, b, tol=1e-10, rel=True):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(1.0, float(np.abs(b).max())) if rel and b.size else 1.0
    err = float(np.abs(a - b).max()) if a.size else 0.0
    assert err <= tol * scale, f"max error {err:.3g} > {tol:g} * {scale:.3g}"


def _theta_perm(layer):
    """Index p with (Wbar-order vector)[p] = theta-order vector of the layer."""
    out, q = layer.out_features, layer.in_features + 1
    idx = np.arange(out * q).reshape(out, q)
    return np.concatenate([idx[:, :-1].ravel(), idx[:, -1]])


# ---- "A tour" -------------------------------------------------------------------
def test_tour_snippet():
    net = pk.MLP([4, 16, 16, 3], activation="tanh", seed=0)   # W: (out, in), like torch.nn.Linear
    X = np.random.default_rng(0).normal(size=(32, 4))
    y = np.random.default_rng(1).integers(0, 3, size=32)

    L, g = pk.loss_and_grad(net, X, y, "ce")
    J = pk.jacobian(net, X)
    H = pk.hessian(net, X, y, "ce")
    G = pk.ggn(net, X, y, "ce")
    Gv = pk.ggn_matvec(net, X, y, "ce", g)
    d = pk.diag_ggn(net, X, y, "ce")

    K = pk.kfac(net, (X, y), "ce", kind="exact")
    K.A[0], K.G[0]
    step = K.solve(g, damping=1e-3)
    logdet = K.logdet(1e-3)
    diff = np.abs(K.to_dense() - G).max()

    from scipy.sparse.linalg import eigsh
    top = eigsh(pk.GGNOperator(net, X, y, "ce"), k=5)[0]

    D = net.num_params
    assert D == 4 * 16 + 16 + 16 * 16 + 16 + 16 * 3 + 3
    assert net.layers[0].W.shape == (16, 4)                      # (out, in)
    assert isinstance(L, float) and g.shape == (D,)
    assert J.shape == (32, 3, D) and H.shape == (D, D) and G.shape == (D, D)
    assert Gv.shape == (D,) and d.shape == (D,) and step.shape == (D,)
    # summed loss and its gradient
    _close(L, pk.loss_per_sample(net, X, y, "ce").sum(), 1e-12)
    # GGN = sum J^T Lambda J; G v without forming J; exact diagonal
    Lam = pk.output_curvature(net, X, "ce").hessian
    _close(G, np.einsum("nkd,nkl,nle->de", J, Lam, J), 1e-12)
    _close(Gv, G @ g, 1e-12)
    _close(d, np.diag(G), 1e-12)
    # H - G is the residual term
    _close(H - G, pk.residual_matvec(net, X, y, "ce", np.eye(D)), 1e-12)
    # Kronecker factors: A (in+1, in+1), G (out, out)
    assert K.A[0].shape == (5, 5) and K.G[0].shape == (16, 16)
    # solve and logdet with exact damping: (K + delta I)
    Kd = K.to_dense()
    _close(step, np.linalg.solve(Kd + 1e-3 * np.eye(D), g), 1e-9)
    _close(logdet, np.linalg.slogdet(Kd + 1e-3 * np.eye(D))[1], 1e-10)
    assert np.isfinite(diff) and diff > 0           # K-FAC is an approximation for N > 1
    # eigsh on the operator = the top eigenvalues of the dense GGN
    _close(np.sort(top), np.linalg.eigvalsh(G)[-5:], 1e-8)
    # the MC diagonal is an estimate of the exact one
    dm = pk.diag_ggn(net, X, y, "ce", mc_samples=100, seed=0)
    assert 0 < np.abs(dm - d).max() < 0.2 * d.max()


def test_tour_label_layouts_and_dtypes():
    net, X, _ = _tour_problem()
    # "mse" takes (N, K) floats ((N,) if K = 1)
    n1 = pk.MLP([4, 8, 1], seed=0)
    t = np.random.default_rng(5).normal(size=32)
    assert pk.loss(n1, X, t, "mse") == pk.loss(n1, X, t[:, None], "mse")
    with pytest.raises(ValueError, match="^y: "):
        pk.loss(net, X, t, "mse")       # K = 3 needs (N, 3)
    # everything accepts float32; outputs keep the model's dtype
    n32 = pk.MLP([4, 16, 16, 3], dtype=np.float32, seed=0)
    y = np.random.default_rng(1).integers(0, 3, size=32)
    v = np.ones(n32.num_params, dtype=np.float32)
    for out in (pk.loss_and_grad(n32, X, y, "ce")[1], pk.jacobian(n32, X), pk.hessian(n32, X, y, "ce"),
                pk.ggn(n32, X, y, "ce"), pk.ggn_matvec(n32, X, y, "ce", v), pk.diag_ggn(n32, X, y, "ce"),
                pk.kfac(n32, (X, y), "ce").A[0], n32(X), pk.jvp(n32, X, v)):
        assert out.dtype == np.float32
    # (exception, documented in the docstring: loss_per_sample is float64)
    assert pk.loss_per_sample(n32, X, y, "ce").dtype == np.float64
    # kfac data: any iterable of (X, y) batches, progress=True shows a bar
    y = np.random.default_rng(1).integers(0, 3, size=32)
    gen = ((X[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8))
    Kg = pk.kfac(net, gen, "ce", progress=True)
    assert Kg.num_data == 32


# ---- "API" table -------------------------------------------------------------------
def test_api_table_shapes_and_values():
    net, X, y = _small_clf()
    N, K, D = X.shape[0], 3, net.num_params
    J = pk.jacobian(net, X)
    v, V = RNG.normal(size=D), RNG.normal(size=(D, 2))
    u, U = RNG.normal(size=(N, K)), RNG.normal(size=(N, K, 2))
    # jvp: (N, K) or (N, K, m); vjp: (D,) or (D, m)
    _close(pk.jvp(net, X, v), J @ v, 1e-12)
    assert pk.jvp(net, X, V).shape == (N, K, 2)
    _close(pk.vjp(net, X, u), np.einsum("nkd,nk->d", J, u), 1e-12)
    _close(pk.vjp(net, X, U), np.einsum("nkd,nkm->dm", J, U), 1e-12)
    H = pk.hessian(net, X, y, "ce")
    _close(pk.hvp(net, X, y, "ce", V), H @ V, 1e-12)
    _close(H, H.T, 1e-12)
    # losses
    assert pk.loss_per_sample(net, X, y, "ce").shape == (N,)
    _close(pk.loss(net, X, y, "ce"), pk.loss_and_grad(net, X, y, "ce")[0], 1e-14)
    # empirical Fisher diagonal = sum of squared per-sample gradients
    pg = np.stack([pk.loss_and_grad(net, X[i:i + 1], y[i:i + 1], "ce")[1] for i in range(N)])
    _close(pk.empirical_fisher_diag(net, X, y, "ce"), (pg ** 2).sum(0), 1e-12)
    # output_curvature: dl/df, Lambda, S with S S^T = Lambda; y optional
    oc = pk.output_curvature(net, X, "ce", y)
    p = np.exp(net(X)); p /= p.sum(1, keepdims=True)
    _close(oc.grad, p - np.eye(K)[y], 1e-12)
    _close(oc.hessian, np.einsum("nk,kl->nkl", p, np.eye(K)) - np.einsum("nk,nl->nkl", p, p), 1e-12)
    _close(oc.sqrt @ oc.sqrt.transpose(0, 2, 1), oc.hessian, 1e-12)
    # CONVENTIONS: for ce, column v of S is sqrt(p_v) (e_v - p)
    _close(oc.sqrt[0], np.stack([np.sqrt(p[0, c]) * (np.eye(K)[c] - p[0]) for c in range(K)], 1), 1e-12)
    assert pk.output_curvature(net, X, "ce").grad is None
    # operators
    from scipy.sparse.linalg import LinearOperator
    Hop, Gop = pk.HessianOperator(net, X, y, "ce"), pk.GGNOperator(net, X, y, "ce")
    assert isinstance(Hop, LinearOperator) and Hop.shape == (D, D)
    _close(Hop @ v, H @ v, 1e-12)
    _close(Gop @ v, pk.ggn(net, X, y, "ce") @ v, 1e-12)
    # jacobian_factors: J[n,k,W_l] = G_l[n,k] (x) A_l[n], J[n,k,b_l] = G_l[n,k]
    facs = pk.jacobian_factors(net, X)
    assert len(facs) == len(net.layers)
    for layer, (Gl, Al) in zip(net.layers, facs):
        assert Gl.shape == (N, K, layer.out_features) and Al.shape == (N, layer.in_features)
        o, nw = layer.offset, layer.W.size
        _close(J[:, :, o:o + nw], np.einsum("nki,nj->nkij", Gl, Al).reshape(N, K, -1), 1e-12)
        _close(J[:, :, o + nw:o + layer.num_params], Gl, 1e-12)
    # show_config returns the versions and the BLAS
    cfg = pk.show_config(print_out=False)
    assert cfg["version"] == pk.__version__ and cfg["blas_library"]


def test_mlp_api():
    net, X, _ = _small_clf()
    # theta flat and writable; W / b are views into it in theta order
    assert all(np.shares_memory(l.W, net.theta) and np.shares_memory(l.b, net.theta) for l in net.layers)
    off = 0
    for l in net.layers:
        _close(net.theta[off:off + l.W.size].reshape(l.W.shape), l.W, 0)
        _close(net.theta[off + l.W.size:off + l.num_params], l.b, 0)
        off += l.num_params
    assert off == net.num_params
    W0 = net.layers[0].W
    net.theta = np.zeros(net.num_params)                 # assignment copies in
    assert net.layers[0].W is W0 and not W0.any()
    net, X, _ = _small_clf()
    assert net.features(X).shape == (X.shape[0], 5) and net(X).shape == (X.shape[0], 3)
    _close(net.features(X) @ net.layers[-1].W.T + net.layers[-1].b, net(X), 1e-12)
    net2 = pk.MLP.from_params([(l.W, l.b) for l in net.layers])
    _close(net2(X), net(X), 0)
    assert net2.theta is not net.theta


def test_set_num_threads_restores():
    before = pk.show_config(print_out=False)["blas_threads"]
    with pk.set_num_threads(1) as s:
        assert s.num_threads == 1 and s.previous == before
        assert pk.show_config(print_out=False)["blas_threads"] == 1
    assert pk.show_config(print_out=False)["blas_threads"] == before


@pytest.mark.parametrize("act", ["identity", "relu", "leaky_relu", "elu", "tanh", "sigmoid", "softplus", "gelu"])
def test_activations(act):
    from scipy.special import erf
    ref = {"identity": lambda x: x, "relu": lambda x: np.maximum(x, 0),
           "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x), "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
           "tanh": np.tanh, "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "softplus": lambda x: np.log1p(np.exp(x)),
           "gelu": lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2)))}[act]
    assert act in pk.ACTIVATIONS
    net = pk.MLP.from_params([(np.eye(5), np.zeros(5)), (np.eye(5), np.zeros(5))], activation=act)
    x = np.linspace(-2.5, 2.5, 5)[None]
    _close(net(x), ref(x), 1e-12)          # the output layer is linear


# ---- "Conventions" ------------------------------------------------------------------
def test_conventions_losses():
    net, X, Y = _small_reg()
    # mse is 1/2 ||y - f||^2 per sample, summed
    _close(pk.loss(net, X, Y, "mse"), 0.5 * ((net(X) - Y) ** 2).sum(), 1e-12)
    _close(pk.output_curvature(net, X, "mse").hessian, np.broadcast_to(np.eye(2), (X.shape[0], 2, 2)), 0)
    # bce: one output, labels 0/1, +-1 also accepted; Lambda = s(1 - s)
    nb = pk.MLP([3, 4, 1], seed=0)
    yb = (np.arange(X.shape[0]) % 2).astype(float)
    _close(pk.loss(nb, X, yb, "bce"), pk.loss(nb, X, 2 * yb - 1, "bce"), 1e-14)
    f = nb(X)[:, 0]
    _close(pk.loss(nb, X, yb, "bce"), np.sum(np.logaddexp(0, -(2 * yb - 1) * f)), 1e-12)
    s = 1 / (1 + np.exp(-f))
    _close(pk.output_curvature(nb, X, "bce").hessian[:, 0, 0], s * (1 - s), 1e-12)


def test_conventions_kronecker_order_and_factors():
    net, X, y = _small_clf()
    N = X.shape[0]
    K = pk.kfac(net, (X, y), "ce")
    Kd = K.to_dense()
    abar = np.hstack([X, np.ones((N, 1))])
    _close(K.A[0], abar.T @ abar / N, 1e-12)                  # A = (1/N) sum abar abar^T
    for l, layer in enumerate(net.layers):
        p = _theta_perm(layer)
        _close(Kd[layer.slice, layer.slice], np.kron(K.G[l], K.A[l])[np.ix_(p, p)], 1e-12)
        # (G (x) A) vec(X) = vec(G X A) (row-major vec of Wbar)
        Xm = RNG.normal(size=(layer.out_features, layer.in_features + 1))
        _close(np.kron(K.G[l], K.A[l]) @ Xm.ravel(), (K.G[l] @ Xm @ K.A[l]).ravel(), 1e-12)
    # KronCurvature methods in theta order
    v = RNG.normal(size=net.num_params)
    _close(K.matvec(v), Kd @ v, 1e-12)
    _close(K.as_linear_operator() @ v, Kd @ v, 1e-12)
    _close(K.trace(), np.trace(Kd), 1e-12)
    _close(K.frobenius_norm(), np.linalg.norm(Kd), 1e-12)
    assert len(K.eigh()) == len(net.layers) and len(K.eigh()[0]) == 4


def test_conventions_damping():
    net, X, y = _small_clf()
    K = pk.kfac(net, (X, y), "ce")
    Kd, D, delta = K.to_dense(), net.num_params, 0.3
    v = RNG.normal(size=D)
    # exact: delta added to the Kronecker eigenvalues, i.e. K + delta I
    _close(K.solve(v, delta), np.linalg.solve(Kd + delta * np.eye(D), v), 1e-10)
    _close(K.logdet(delta), np.linalg.slogdet(Kd + delta * np.eye(D))[1], 1e-10)
    # factored=True: (G + sqrt(d)/pi I) (x) (A + sqrt(d) pi I), pi = sqrt((trA/dimA)/(trG/dimG))
    s = K.solve(v, delta, factored=True)
    for l, layer in enumerate(net.layers):
        A, G = K.A[l], K.G[l]
        pi = math.sqrt((np.trace(A) / A.shape[0]) / (np.trace(G) / G.shape[0]))
        assert abs(K.factored_pi()[l] - pi) < 1e-12 * pi
        M = np.kron(G + math.sqrt(delta) / pi * np.eye(G.shape[0]), A + math.sqrt(delta) * pi * np.eye(A.shape[0]))
        p = _theta_perm(layer)
        vb = np.empty(len(p)); vb[p] = v[layer.slice]
        _close(s[layer.slice], np.linalg.solve(M, vb)[p], 1e-10)


@pytest.mark.parametrize("kind", ["exact", "kfra"])
def test_conventions_one_datum_exact(kind):
    net, X, y = _small_clf()
    K1 = pk.kfac(net, (X[:1], y[:1]), "ce", kind=kind).to_dense()
    G1 = pk.ggn(net, X[:1], y[:1], "ce")
    for layer in net.layers:
        _close(K1[layer.slice, layer.slice], G1[layer.slice, layer.slice], 1e-12)


def test_conventions_deep_linear_and_copies():
    rng = np.random.default_rng(3)
    lin = pk.MLP([3, 5, 4, 2], activation="identity", seed=0)
    X, Y = rng.normal(size=(20, 3)), rng.normal(size=(20, 2))
    Kd, G = pk.kfac(lin, (X, Y), "mse").to_dense(), pk.ggn(lin, X, Y, "mse")
    for layer in lin.layers:
        _close(Kd[layer.slice, layer.slice], G[layer.slice, layer.slice], 1e-11)
    net, X, y = _small_clf()
    one = pk.kfac(net, (X[:1], y[:1]), "ce").to_dense()
    many = pk.kfac(net, (np.repeat(X[:1], 6, 0), np.repeat(y[:1], 6)), "ce").to_dense()
    _close(many, 6 * one, 1e-12)


@pytest.mark.parametrize("kind", ["exact", "empirical"])
def test_conventions_batches_add_up(kind):
    net, X, y = _small_clf()
    whole = pk.kfac(net, (X, y), "ce", kind=kind)
    parts = pk.kfac(net, [(X[:5], y[:5]), (X[5:], y[5:])], "ce", kind=kind)
    for a, b in zip(whole.A + whole.G, parts.A + parts.G):
        _close(a, b, 1e-12)


def test_conventions_mc_factors_depend_on_batching():
    """MC factors equal the union's only in expectation: for one seed each batch
    draws its own targets."""
    net, X, y = _small_clf()
    whole = pk.kfac(net, (X, y), "ce", kind="mc", seed=0)
    parts = pk.kfac(net, [(X[:5], y[:5]), (X[5:], y[5:])], "ce", kind="mc", seed=0)
    assert max(np.abs(a - b).max() for a, b in zip(whole.G, parts.G)) > 1e-8
    np.testing.assert_allclose(whole.A[0], parts.A[0], atol=1e-12)  # A does not depend on the targets


def test_conventions_kfra_depends_on_batching():
    net, X, y = _small_clf()
    whole = pk.kfac(net, (X, y), "ce", kind="kfra")
    parts = pk.kfac(net, [(X[:5], y[:5]), (X[5:], y[5:])], "ce", kind="kfra")
    assert max(np.abs(a - b).max() for a, b in zip(whole.G, parts.G)) > 1e-8


def test_conventions_randomness_independent_of_threads():
    net, X, y = _small_clf()
    la = pk.Laplace(net, "classification", "kron").fit((X, y))
    with pk.set_num_threads(1):
        s1, k1 = la.sample(20, seed=3), pk.kfac(net, (X, y), "ce", kind="mc", seed=4)
    with pk.set_num_threads(2):
        s2, k2 = la.sample(20, seed=3), pk.kfac(net, (X, y), "ce", kind="mc", seed=4)
    assert np.array_equal(s1, s2)
    assert all(np.array_equal(a, b) for a, b in zip(k1.G, k2.G))
    assert not np.array_equal(s1, la.sample(20, seed=5))


# ---- "Errors" ----------------------------------------------------------------------
def test_errors_section():
    net, X, y = _tour_problem()
    with pytest.raises(ValueError, match=r"^X: expected shape \(N, 4\), got \(32, 5\)"):
        pk.ggn(net, np.zeros((32, 5)), y, "ce")
    with pytest.raises(ValueError, match=r"^y: class labels must lie in \[0, 3\)"):
        pk.ggn(net, X, y + 1, "ce")
    with pytest.raises(TypeError, match="^y: expected integer class labels for loss='ce'"):
        pk.ggn(net, X, y.astype(float), "ce")
    Xn = X.copy(); Xn[3, 1] = np.inf
    with pytest.raises(ValueError, match="^X: contains NaN or Inf"):
        pk.ggn(net, Xn, y, "ce")
    with pytest.raises(ValueError, match=r"^X: empty batch \(N = 0\)"):
        pk.ggn(net, X[:0], y[:0], "ce")
    with pytest.raises(ValueError, match=r"^y: loss='bce' with 3 outputs expects labels of shape \(32, 3\)"):
        pk.ggn(net, X, y, "bce")
    # a singular damped factor -> pk.LinAlgError, a numpy LinAlgError
    assert issubclass(pk.LinAlgError, np.linalg.LinAlgError)
    K = pk.kfac(net, (X[:1], y[:1]), "ce")
    with pytest.raises(pk.LinAlgError):
        K.solve(np.ones(net.num_params), 0.0)
    # inputs are never modified
    X2, y2 = X.copy(), y.copy()
    pk.hessian(net, X2, y2, "ce"); pk.kfac(net, (X2, y2), "ce", kind="mc", seed=0)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)


# ---- "Laplace" snippet ------------------------------------------------------------
@pytest.fixture(scope="module")
def laplace_toy():
    rng = np.random.default_rng(7)
    net, X, y = _small_clf(seed=1, N=30)
    Xv, yv = rng.normal(size=(12, 3)), rng.integers(0, 3, size=12)
    Xt = rng.normal(size=(8, 3))
    X1, X2 = Xt[:3], Xt[3:7]
    netr, Xr, Yr = _small_reg(seed=2)
    la_reg = pk.Laplace(netr, likelihood="regression", structure="kron", sigma_noise=0.4,
                        prior_precision=0.8).fit((Xr, Yr))
    return dict(net=net, X=X, y=y, Xv=Xv, yv=yv, Xt=Xt, X1=X1, X2=X2, la_reg=la_reg)


def test_laplace_snippet(laplace_toy, tmp_path):
    t = laplace_toy
    net, X, y, Xv, yv, Xt, X1, X2, la_reg = (t[k] for k in ("net", "X", "y", "Xv", "yv", "Xt", "X1", "X2", "la_reg"))
    la = pk.Laplace(net, likelihood="classification", structure="kron", subset="all",
                    prior_precision=1.0, sigma_noise=1.0, temperature=1.0)
    assert la.fit((X, y)) is la
    post = la._post
    lml = la.log_marginal_likelihood()
    la.optimize_prior_precision(method="marglik")
    assert la.log_marginal_likelihood() >= lml
    assert abs(la.log_marginal_likelihood_grad()[0][0]) < 1e-5       # a stationary point
    la.optimize_prior_precision(method="gridsearch", val_data=(Xv, yv))
    assert la.prior_precision in np.logspace(-4, 4, 21)
    assert la._post is post                                           # no refit
    la.prior_precision = 1.0
    N, K, D = Xt.shape[0], 3, net.num_params

    probs = la.predictive(Xt)
    assert probs.shape == (N, K)
    _close(probs.sum(1), np.ones(N), 1e-12)
    for link in ("mc", "bridge", "bridge_norm"):
        assert la.predictive(Xt, link_approx=link).shape == (N, K)
    assert la.predictive(Xt, pred_type="nn", n_samples=5).shape == (N, K)

    mean, var = la_reg.predictive(Xt)                   # regression: var INCLUDES sigma^2
    assert mean.shape == (N, 2) and var.shape == (N, 2)
    fvr = la_reg.functional_variance(Xt)
    _close(var, np.diagonal(fvr, axis1=1, axis2=2) + 0.4 ** 2, 1e-12)
    mean_j, cov = la_reg.predictive(Xt, joint=True)     # (N K,), (N K, N K) = J P^-1 J^T + sigma^2 I
    assert mean_j.shape == (N * 2,) and cov.shape == (N * 2, N * 2)
    _close(mean_j, mean.ravel(), 1e-12)
    _close(cov, la_reg.kernel(Xt).reshape(N * 2, N * 2) + 0.4 ** 2 * np.eye(N * 2), 1e-12)

    F = la.functional_samples(Xt, n_samples=100)
    assert F.shape == (100, N, K)
    assert la.functional_samples(Xt, n_samples=7, pred_type="nn").shape == (7, N, K)
    Ps = la.predictive_samples(Xt, n_samples=100, seed=3)
    assert Ps.shape == (100, N, K)
    _close(Ps.mean(0), la.predictive(Xt, link_approx="mc", n_samples=100, seed=3), 1e-12)
    p = np.exp(la.functional_samples(Xt, n_samples=100, seed=3)); p /= p.sum(-1, keepdims=True)
    _close(Ps, p, 1e-12)                                # softmax of those draws

    fv = la.functional_variance(Xt)                     # (N, K, K) = J P^-1 J^T
    Jt, C = pk.jacobian(net, Xt), la.posterior_covariance_dense()
    _close(fv, np.einsum("nkd,de,nle->nkl", Jt, C, Jt), 1e-10)
    k = la.kernel(X1, X2)                               # (N1, K, N2, K)
    assert k.shape == (3, K, 4, K)
    _close(k, np.einsum("nkd,de,mle->nkml", Jt[:3], C, Jt[3:7]), 1e-10)
    _close(la.kernel(Xt)[np.arange(N), :, np.arange(N), :], fv, 1e-10)

    thetas = la.sample(1000, seed=0)                    # (n, D)
    assert thetas.shape == (1000, D)
    lp = la.log_prob(thetas)
    P = la.posterior_precision_dense()
    dl = thetas - net.theta
    q = np.einsum("nd,de,ne->n", dl, P, dl)
    _close(la.square_norm(thetas), q, 1e-10)
    _close(lp, -0.5 * q + 0.5 * np.linalg.slogdet(P)[1] - 0.5 * D * math.log(2 * math.pi), 1e-10)
    Pd, Cd = la.posterior_precision_dense(), la.posterior_covariance_dense()
    assert Pd.shape == Cd.shape == (D, D)
    _close(Pd @ Cd, np.eye(D), 1e-9)
    _close(la.posterior_variance(), np.diag(Cd), 1e-10)

    path = str(tmp_path / "post.npz")
    la.save(path)
    la2 = pk.Laplace.load(path)
    assert np.array_equal(la2.predictive(Xt), la.predictive(Xt))
    assert la2.log_marginal_likelihood() == la.log_marginal_likelihood()
    assert np.array_equal(la2.sample(5, seed=1), la.sample(5, seed=1))
    la3 = pk.Laplace.load(path, net=net)
    assert np.array_equal(la3.predictive(Xt), la.predictive(Xt))
    other = net.copy(); other.theta = net.theta + 1e-3
    with pytest.raises(ValueError, match="^net: "):
        pk.Laplace.load(path, net=other)
    with open(path, "r+b") as fh:
        fh.truncate(200)
    with pytest.raises(ValueError, match="post.npz"):
        pk.Laplace.load(path)


def _lml_dense(P, L_loglik, theta, prior_diag):
    return (L_loglik - 0.5 * prior_diag @ (theta * theta) - 0.5 * np.linalg.slogdet(P)[1]
            + 0.5 * np.sum(np.log(prior_diag)))


@pytest.mark.parametrize("T", [1.0, 2.5])
def test_laplace_full_precision_and_lml(T):
    net, X, y = _small_clf()
    D = net.num_params
    G, L = pk.ggn(net, X, y, "ce"), pk.loss(net, X, y, "ce")
    la = pk.Laplace(net, "classification", "full", prior_precision=0.7, temperature=T).fit((X, y))
    P = G / T + 0.7 * np.eye(D)
    _close(la.posterior_precision_dense(), P, 1e-12)
    # the temperature scales the GGN in P only: log p(y|theta*) = -L (not -L/T)
    _close(la.log_marginal_likelihood(), _lml_dense(P, -L, net.theta, np.full(D, 0.7)), 1e-10)


def test_laplace_regression_lml_and_sigma():
    net, X, Y = _small_reg()
    D, NK = net.num_params, Y.size
    G, L = pk.ggn(net, X, Y, "mse"), pk.loss(net, X, Y, "mse")
    la = pk.Laplace(net, "regression", "full", sigma_noise=0.5, prior_precision=0.7).fit((X, Y))
    for s in (0.5, 0.3):
        P = G / s ** 2 + 0.7 * np.eye(D)
        loglik = -L / s ** 2 - NK * math.log(s * math.sqrt(2 * math.pi))
        _close(la.log_marginal_likelihood(sigma_noise=s), _lml_dense(P, loglik, net.theta, np.full(D, 0.7)), 1e-10)
    post = la._post
    la.optimize_prior_precision(optimize_sigma=True)
    assert la.sigma_noise != 0.5 and la._post is post
    g_prior, g_sigma = la.log_marginal_likelihood_grad()
    assert abs(g_prior[0]) < 1e-4 and abs(g_sigma) < 1e-4
    with pytest.raises(ValueError, match="^sigma_noise"):
        pk.Laplace(pk.MLP([3, 3]), "classification", sigma_noise=0.5)


def test_laplace_lml_gradient_is_exact():
    net, X, y = _small_clf()
    la = pk.Laplace(net, "classification", "kron", prior_precision=[0.5, 1.0, 2.0]).fit((X, y))
    g, _ = la.log_marginal_likelihood_grad()
    v0, h = np.array([0.5, 1.0, 2.0]), 1e-5
    fd = [(la.log_marginal_likelihood(prior_precision=v0 * np.exp(h * e))
           - la.log_marginal_likelihood(prior_precision=v0 * np.exp(-h * e))) / (2 * h) for e in np.eye(3)]
    _close(g, fd, 1e-6)


def test_laplace_structures_table():
    net, X, y = _small_clf()
    D = net.num_params
    G = pk.ggn(net, X, y, "ce")
    # diag: exact GGN diagonal + P0 (also kind="mc"/"empirical")
    ld = pk.Laplace(net, "classification", "diag", prior_precision=0.7).fit((X, y))
    _close(ld.posterior_precision_dense(), np.diag(np.diag(G) + 0.7), 1e-12)
    le = pk.Laplace(net, "classification", "diag", kind="empirical", prior_precision=0.7).fit((X, y))
    _close(np.diag(le.posterior_precision_dense()), pk.empirical_fisher_diag(net, X, y, "ce") + 0.7, 1e-12)
    pk.Laplace(net, "classification", "diag", kind="mc", seed=0).fit((X, y))
    # kron: per layer (G (x) A)/(sigma^2 T) + delta_l I, prior exactly on the eigenvalues
    Kd = pk.kfac(net, (X, y), "ce").to_dense()
    pp = [0.5, 1.0, 2.0]
    lk = pk.Laplace(net, "classification", "kron", prior_precision=pp, temperature=2.0).fit((X, y))
    dv = np.concatenate([np.full(l.num_params, p) for l, p in zip(net.layers, pp)])
    _close(lk.posterior_precision_dense(), Kd / 2.0 + np.diag(dv), 1e-12)
    # ... prior/sigma/T changes never refit
    post = lk._post
    lk.prior_precision, lk.temperature = 3.0, 1.0
    assert lk._post is post
    _close(lk.posterior_precision_dense(), Kd + 3.0 * np.eye(D), 1e-12)
    _close(lk.log_det_posterior_precision(), np.linalg.slogdet(Kd + 3.0 * np.eye(D))[1], 1e-10)
    # ... one prior per parameter is refused for kron
    with pytest.raises(ValueError, match="^prior_precision"):
        pk.Laplace(net, "classification", "kron", prior_precision=np.ones(D))
    for kind in ("mc", "empirical", "kfra"):
        pk.Laplace(net, "classification", "kron", kind=kind, seed=0).fit((X, y))
    with pytest.raises(ValueError, match="^kind"):
        pk.Laplace(net, "classification", "full", kind="kfra")
    # lowrank: alpha I + Gmat Gmat^T with Gmat the exact GGN factor -> equals full
    lf = pk.Laplace(net, "classification", "full", prior_precision=0.7).fit((X, y))
    lr = pk.Laplace(net, "classification", "lowrank", prior_precision=0.7).fit((X, y))
    _close(lr.posterior_precision_dense(), lf.posterior_precision_dense(), 1e-10)
    _close(lr.log_marginal_likelihood(), lf.log_marginal_likelihood(), 1e-10)
    Xt = RNG.normal(size=(4, 3))
    _close(lr.predictive(Xt), lf.predictive(Xt), 1e-10)
    # factored kron damping: (lambda_G/(sigma^2 T) + sqrt d)(lambda_A + sqrt d)
    lkf = pk.Laplace(net, "classification", "kron", kron_damping="factored", prior_precision=0.3).fit((X, y))
    K = pk.kfac(net, (X, y), "ce")
    Pf = lkf.posterior_precision_dense()
    for l, layer in enumerate(net.layers):
        wG, wA = np.linalg.eigvalsh(K.G[l]), np.linalg.eigvalsh(K.A[l])
        want = np.sort(np.outer(wG + math.sqrt(0.3), wA + math.sqrt(0.3)).ravel())
        _close(np.linalg.eigvalsh(Pf[layer.slice, layer.slice]), want, 1e-10)


def test_laplace_last_layer_and_subnetwork():
    net, X, y = _small_clf()
    G = pk.ggn(net, X, y, "ce")
    sl = net.layers[-1].slice
    ll = pk.Laplace(net, "classification", "full", subset="last_layer", prior_precision=0.7).fit((X, y))
    assert ll.n_params == sl.stop - sl.start
    _close(ll.posterior_precision_dense(), G[sl, sl] + 0.7 * np.eye(ll.n_params), 1e-12)
    _close(ll.mean, net.theta[sl], 0)
    # the README's choice of indices: largest marginal variances of a diagonal posterior
    data = (X, y)
    idx = np.argsort(pk.Laplace(net, "classification", structure="diag").fit(data).posterior_variance())[-20:]
    ls = pk.Laplace(net, "classification", "full", subset="subnetwork", subnetwork_indices=idx,
                    prior_precision=0.7).fit(data)
    s = np.sort(idx)
    assert ls.n_params == 20
    _close(ls.posterior_precision_dense(), G[np.ix_(s, s)] + 0.7 * np.eye(20), 1e-12)
    _close(ls.mean, net.theta[s], 0)
    assert ls.sample(3, seed=0).shape == (3, 20)
    assert ls.predictive(X[:4], pred_type="nn", n_samples=3).shape == (4, 3)
    # priors: scalar, per network layer, per subnetwork parameter
    for prior in (1.0, [1.0, 2.0, 3.0], np.ones(20)):
        pk.Laplace(net, "classification", "diag", subset="subnetwork", subnetwork_indices=idx,
                   prior_precision=prior).fit(data)
    with pytest.raises(ValueError, match="^structure"):
        pk.Laplace(net, "classification", "kron", subset="subnetwork", subnetwork_indices=idx)


def test_laplace_predictive_links():
    net, X, y = _small_clf()
    la = pk.Laplace(net, "classification", "kron").fit((X, y))
    Xt = RNG.normal(size=(5, 3))
    mu, fv = net(Xt), np.diagonal(la.functional_variance(Xt), axis1=1, axis2=2)
    z = mu / np.sqrt(1 + math.pi / 8 * fv)
    p = np.exp(z - z.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    _close(la.predictive(Xt), p, 1e-12)                          # per-class probit
    with pytest.raises(ValueError, match="^link_approx"):
        la.predictive(Xt, link_approx="laplace")
    nb = pk.MLP([3, 4, 1], seed=0)
    yb = (np.arange(X.shape[0]) % 2)
    lb = pk.Laplace(nb, "binary", "kron").fit((X, yb))
    assert lb.predictive(Xt).shape == (5,)                        # binary: (N,) P(y = 1)
    assert lb.predictive_samples(Xt, n_samples=4).shape == (4, 5)
    with pytest.raises(ValueError, match="^link_approx"):
        lb.predictive(Xt, link_approx="bridge")


def test_laplace_from_jacobians(tmp_path):
    net, X, y = _small_clf()
    Xt = RNG.normal(size=(5, 3))
    J, F, Jt, Ft = pk.jacobian(net, X), net(X), pk.jacobian(net, Xt), net(Xt)
    ref = pk.Laplace(net, "classification", "full").fit((X, y))
    for structure in ("full", "lowrank"):
        la = pk.Laplace.from_jacobians(J, Lam=None, f_map=F, likelihood="classification",
                                       structure=structure, theta_map=net.theta, y=y)
        _close(la.predictive(jacobians=Jt, f_map=Ft), ref.predictive(Xt), 1e-10)
        _close(la.functional_variance(jacobians=Jt), ref.functional_variance(Xt), 1e-10)
        _close(la.log_marginal_likelihood(), ref.log_marginal_likelihood(), 1e-10)
        assert la.sample(4, seed=0).shape == (4, net.num_params)
        path = str(tmp_path / f"{structure}.npz")
        la.save(path)
        assert pk.Laplace.load(path).log_marginal_likelihood() == la.log_marginal_likelihood()
        with pytest.raises(ValueError, match="^net: "):
            pk.Laplace.load(path, net=net)


# ---- pk.linalg ------------------------------------------------------------------------
def test_linalg_list():
    L = pk.linalg
    net, X, y = _small_clf()
    J = pk.jacobian(net, X)
    Lam = pk.output_curvature(net, X, "ce").hessian
    G = pk.ggn(net, X, y, "ce")
    D = net.num_params
    _close(L.ggn_from_jacobians(J, Lam), G, 1e-12)
    sl = net.layers[-1].slice
    _close(L.ggn_linear(net.features(X), Lam), G[sl, sl], 1e-12)
    S = L.psd_sqrt(Lam)
    _close(S @ S.transpose(0, 2, 1), Lam, 1e-12)
    Gm = L.ggn_factor(J, Lam)
    _close(Gm @ Gm.T, G, 1e-12)
    Gm2 = L.ggn_factor(J, S=pk.output_curvature(net, X, "ce").sqrt)
    _close(Gm2 @ Gm2.T, G, 1e-12)
    v = RNG.normal(size=D)
    for alpha in (0.5, RNG.uniform(0.5, 1.5, size=D)):          # alpha may be a (D,) diagonal
        P = np.diag(np.broadcast_to(alpha, (D,))) + Gm @ Gm.T
        _close(L.woodbury_solve(alpha, Gm, v), np.linalg.solve(P, v), 1e-10)
        _close(L.woodbury_inverse(alpha, Gm), np.linalg.inv(P), 1e-10)
        _close(L.woodbury_logdet(alpha, Gm), np.linalg.slogdet(P)[1], 1e-10)
        _close(L.woodbury_diag_inverse(alpha, Gm), np.diag(np.linalg.inv(P)), 1e-10)
        assert L.woodbury_sample(alpha, Gm, 3, seed=0).shape == (3, D)
    s, Q = L.lowrank_eigh(Gm)
    _close((Q * s) @ Q.T, G, 1e-10)
    assert L.lowrank_eigh(Gm, rank=4)[0].shape == (4,)
    P = 0.5 * np.eye(D) + G
    dp = L.DensePrecision(P)
    _close(dp.logdet(), np.linalg.slogdet(P)[1], 1e-10)
    _close(dp.solve(v), np.linalg.solve(P, v), 1e-10)
    _close(dp.inverse(), np.linalg.inv(P), 1e-10)
    assert dp.sample(2, seed=0).shape == (2, D)
    with pytest.raises(pk.LinAlgError, match="precision"):
        L.DensePrecision(-P)
    K = pk.kfac(net, (X, y), "ce")
    A0, G0 = K.A[0], K.G[0]
    B = RNG.normal(size=(G0.shape[0], A0.shape[0]))
    # np.kron order: (s G (x) A + d I) vec(X) = vec(B)
    _close(L.kron_solve(A0, G0, B, damping=0.1, scale=2.0).ravel(),
           np.linalg.solve(2 * np.kron(G0, A0) + 0.1 * np.eye(B.size), B.ravel()), 1e-10)
    M, U, V = RNG.normal(size=(3, 4)), 2 * np.eye(3), 0.5 * np.eye(4)
    assert L.matrix_normal_sample(M, U, V, 5, seed=0).shape == (5, 3, 4)
    with pytest.raises(pk.LinAlgError, match="^U"):
        L.matrix_normal_sample(M, -U, V, 5, seed=0)
    assert L.LinAlgError is pk.LinAlgError


def test_linalg_inv_quad_with_bias_column():
    """diag_inv_quad / kron_inv_quad against dense algebra, with Av = the
    jacobian_factors layer inputs plus a column of ones (the bias)."""
    L = pk.linalg
    net, X, y = _small_clf()
    Xt = RNG.normal(size=(6, 3))
    Gv, A = pk.jacobian_factors(net, Xt)[0]
    Av = np.hstack([A, np.ones((len(A), 1))])
    rows = np.einsum("nki,nj->nkij", Gv, Av).reshape(len(Av), 3, -1)   # Wbar order
    F = RNG.uniform(size=(Gv.shape[2], Av.shape[1]))
    _close(L.diag_inv_quad(F, Gv, Av), np.einsum("nkd,d,nld->nkl", rows, F.ravel(), rows), 1e-12)
    K = pk.kfac(net, (X, y), "ce")
    eig = L.kron_eigh(K.A[0], K.G[0])
    C = np.linalg.inv(np.kron(K.G[0], K.A[0]) + 0.1 * np.eye(rows.shape[2]))
    _close(L.kron_inv_quad(eig, Gv, Av, damping=0.1), np.einsum("nkd,de,nle->nkl", rows, C, rows), 1e-10)


def test_linalg_diag_inv_quad_from_jacobian_factors_with_the_ones_column():
    """README: Gv, Av from pk.jacobian_factors with a column of ones appended to Av."""
    net, X, _ = _small_clf()
    Gv, A = pk.jacobian_factors(net, X)[0]
    Av = np.hstack([A, np.ones((A.shape[0], 1))])
    F = np.random.default_rng(2).uniform(0.5, 1.5, size=(Gv.shape[2], Av.shape[1]))
    J = np.einsum("nki,nj->nkij", Gv, Av).reshape(Gv.shape[0], Gv.shape[1], -1)   # rows in [W b] order
    ref = np.einsum("nkd,d,nld->nkl", J, F.ravel(), J)
    np.testing.assert_allclose(pk.linalg.diag_inv_quad(F, Gv, Av), ref, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="Av"):
        pk.linalg.diag_inv_quad(F, Gv, A)


# ---- "K-FAC optimiser" --------------------------------------------------------------
def test_optimiser_snippet(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(50, 8))                       # stands for the digits, scaled to [0, 1]
    net = pk.MLP([8, 6, 3, 6, 8], activation="tanh", seed=0)
    opt = pk.optim.KFAC(net, loss="mse", damping=0.01)
    assert opt.lr is None and opt.momentum is None
    hist = pk.train(net, opt, (X, X), epochs=3, batch_size=20, progress=False)
    assert hist["steps"] == 9                           # ceil(50/20) batches per epoch
    for key in ("loss", "time", "cpu_time"):
        assert hist[key].shape == (9,)
    assert np.all(np.diff(hist["time"]) >= 0) and np.all(np.diff(hist["cpu_time"]) >= 0)
    assert hist["loss"][-1] < hist["loss"][0]

    y = rng.integers(0, 3, size=50)
    netc = pk.MLP([8, 6, 3], seed=0)
    pk.optim.KFAC(netc, loss="ce", lr=None, momentum=None, damping=150.0, weight_decay=1e-5,
                  ema_decay=0.95, inverse_every=20, damping_every=5, structure="blockdiag",
                  curvature="mc", adapt_damping=True, seed=0, mc_samples=1, kl_clip=None,
                  gamma_every=20, stats_batch=None, min_damping=1e-8)
    for structure in ("blockdiag", "tridiag"):
        for curvature in ("mc", "exact", "empirical", "kfra"):
            if structure == "tridiag" and curvature == "kfra":   # (in the docstring, not the README)
                with pytest.raises(ValueError, match="^structure"):
                    pk.optim.KFAC(netc, loss="ce", structure=structure, curvature=curvature)
                continue
            o = pk.optim.KFAC(pk.MLP([8, 6, 3], seed=0), loss="ce", damping=1.0,
                              structure=structure, curvature=curvature)
            assert np.isfinite(o.step(X, y)) and np.isfinite(o.step(X, y))
    pk.optim.SGD(netc, "ce", 0.1, momentum=0.9, nesterov=True, weight_decay=0.0)
    pk.optim.Adam(netc, "ce", 0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    opt = pk.optim.KFAC(netc, loss="ce", damping=1.0)
    before = pk.loss(netc, X, y, "ce") / len(X)
    value = opt.step(X, y)                              # the mean batch loss before the update
    assert value == before
    assert opt.precondition(np.ones(netc.num_params)).shape == (netc.num_params,)
    for key in ("alpha", "mu", "rho", "damping", "gamma", "direction", "update", "grad"):
        assert key in opt.last
    path = str(tmp_path / "ckpt.npz")
    opt.save(path)
    opt_a = pk.optim.KFAC.load(path)                    # a new optimiser and network
    assert opt_a.net is not netc and np.array_equal(opt_a.net.theta, netc.theta)
    mine = pk.MLP([8, 6, 3], seed=9)
    opt_b = pk.optim.KFAC.load(path, net=mine)          # theta is set
    assert opt_b.net is mine and np.array_equal(mine.theta, netc.theta)
    assert type(pk.optim.Optimizer.load(path)) is pk.optim.KFAC
    with pytest.raises(ValueError, match="ckpt.npz"):
        pk.optim.SGD.load(path)
    with pytest.raises(ValueError, match="^net: "):
        pk.optim.KFAC.load(path, net=pk.MLP([8, 5, 3]))
    # a resumed run is bitwise identical
    state = opt.state_dict()
    opt2 = pk.optim.KFAC(pk.MLP([8, 6, 3], seed=0), loss="ce", damping=1.0)
    opt2.net.theta = netc.theta
    opt2.load_state_dict(state)
    run = [opt.step(X, y) for _ in range(3)]
    assert run == [opt_a.step(X, y) for _ in range(3)] == [opt2.step(X, y) for _ in range(3)]
    assert np.array_equal(opt.net.theta, opt_a.net.theta)
    # corrupted files: ValueError naming the file
    with open(path, "r+b") as fh:
        fh.truncate(300)
    with pytest.raises(ValueError, match="ckpt.npz"):
        pk.optim.KFAC.load(path)


def test_optimiser_objective_and_step():
    rng = np.random.default_rng(0)
    X, y, N = rng.normal(size=(40, 4)), rng.integers(0, 3, size=40), 40
    net = pk.MLP([4, 6, 3], seed=0)
    th0 = net.theta.copy()
    ref = pk.kfac(net.copy(), (X, y), "ce", kind="exact")
    L, g = pk.loss_and_grad(net, X, y, "ce")
    o = pk.optim.KFAC(net, loss="ce", damping=0.5, weight_decay=1e-3, curvature="exact", adapt_damping=False)
    assert o.step(X, y) == L / N
    # h = mean loss + eta/2 ||theta||^2, and its gradient
    _close(o.last["h"], L / N + 0.5e-3 * th0 @ th0, 1e-13)
    _close(o.last["grad"], g / N + 1e-3 * th0, 1e-13)
    # statistics of the mean: A = E[abar abar^T], G = E[g g^T] (= pk.kfac's G / N)
    for a, b in zip(o.A, ref.A):
        _close(a, b, 1e-13)
    for a, b in zip(o.G, ref.G):
        _close(a, b / N, 1e-13)
    th1 = net.theta.copy()
    o.step(X, y)
    st = o.last
    # alpha, mu minimise 1/2 d^T (F + (lambda + eta) I) d + grad^T d with the exact GGN F = ggn / N
    V = np.stack([st["direction"], th1 - th0], 1)
    at1 = net.copy(); at1.theta = th1
    C = V.T @ pk.ggn_matvec(at1, X, y, "ce", V) / N + (0.5 + 1e-3) * V.T @ V
    _close([st["alpha"], st["mu"]], np.linalg.solve(C, -V.T @ st["grad"]), 1e-9)
    _close(st["update"], V @ [st["alpha"], st["mu"]], 1e-12)
    _close(st["quad_fisher"], st["update"] @ pk.ggn_matvec(at1, X, y, "ce", st["update"]) / N, 1e-10)
    # Levenberg-Marquardt: lambda moves by omega = (19/20)^damping_every, only every damping_every steps
    o = pk.optim.KFAC(pk.MLP([4, 6, 3], seed=0), loss="ce", damping=0.5, damping_every=5)
    lams = [o.damping]
    for _ in range(10):
        o.step(X, y)
        lams.append(o.damping)
    ratios = np.array(lams[1:]) / np.array(lams[:-1])
    w = (19 / 20) ** 5
    assert all(r == 1.0 for i, r in enumerate(ratios) if (i + 1) % 5)
    assert all(min(abs(r - w), abs(r - 1 / w), abs(r - 1)) < 1e-12 for r in ratios)


def test_optimiser_baselines_and_failures():
    rng = np.random.default_rng(0)
    X, y, N = rng.normal(size=(40, 4)), rng.integers(0, 3, size=40), 40
    net = pk.MLP([4, 6, 3], seed=0)
    th = net.theta.copy()
    g = pk.loss_and_grad(net, X, y, "ce")[1] / N
    pk.optim.SGD(net, "ce", 0.1, momentum=0.9).step(X, y)   # Nesterov, b = g on the first step
    _close(net.theta, th - 0.1 * (g + 0.9 * g), 1e-14)
    net = pk.MLP([4, 6, 3], seed=0)
    pk.optim.Adam(net, "ce", 0.01).step(X, y)                # first Adam step ~ lr * sign(g)
    _close(net.theta, th - 0.01 * np.sign(g), 1e-6)
    # zero damping on singular statistics: pk.LinAlgError, optimiser unchanged
    net = pk.MLP([4, 6, 3], seed=0)
    Xs = X.copy(); Xs[:, 0] = 0
    o = pk.optim.KFAC(net, loss="ce", damping=0.0, weight_decay=0.0)
    with pytest.raises(pk.LinAlgError):
        o.step(Xs, y)
    assert o.steps == 0 and np.array_equal(net.theta, th)
    # a diverging run raises FloatingPointError
    net = pk.MLP([4, 6, 4], seed=0)
    sgd = pk.optim.SGD(net, "mse", 1e6, momentum=0.9)
    with pytest.raises(FloatingPointError):
        for _ in range(100):
            sgd.step(X, X)


# ---- pk.metrics ---------------------------------------------------------------------
def test_metrics():
    rng = np.random.default_rng(0)
    P, y = rng.dirichlet(np.ones(3), size=60), rng.integers(0, 3, 60)
    conf, correct = P.max(1), P.argmax(1) == y
    ece = 0.0
    for b in range(15):                                  # 15 equal-width bins
        sel = (conf > b / 15) & (conf <= (b + 1) / 15)
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    _close(pk.metrics.ece(P, y), ece, 1e-12)
    _close(pk.metrics.accuracy(P, y), correct.mean(), 0)
    _close(pk.metrics.nll(P, y), -np.log(P[np.arange(60), y]).mean(), 1e-12)
    assert all(a.shape == (15,) for a in pk.metrics.reliability(P, y))
    pb, yb = rng.random(60), rng.integers(0, 2, 60)        # binary (N,) probabilities accepted
    _close(pk.metrics.accuracy(pb, yb), np.mean((pb > 0.5) == yb), 0)
    _close(pk.metrics.nll(pb, yb), -np.mean(np.where(yb == 1, np.log(pb), np.log(1 - pb))), 1e-12)
    _close(pk.metrics.gaussian_nll(np.zeros((5, 2)), np.ones((5, 2)), np.zeros((5, 2))), math.log(2 * math.pi), 1e-12)


# ---- command line ---------------------------------------------------------------------
def test_cli_help_and_config(tmp_path):
    from test_demo import cli  # runs outside the checkout, with the tested pykfac on PYTHONPATH

    out = cli("demo", "--help", cwd=tmp_path)
    assert out.returncode == 0
    for opt in ("--out", "--seed", "--no-progress"):
        assert opt in out.stdout
    cfg = cli("config", cwd=tmp_path)
    assert cfg.returncode == 0 and "blas_library" in cfg.stdout and pk.__version__ in cfg.stdout
