"""pk.diag_hessian: the exact Hessian diagonal without forming H.

References, in float64:
- np.diag(pk.hessian(...)) (D Hessian-vector products, Pearlmutter's R-op) for
  every activation x loss on nets of depth 1 to 5, widths 1 included;
- the slow forward-mode Hessian of tests/reference.py (independent of pykfac);
- central differences of pk.loss_and_grad's gradient;
- single Hessian-vector products pk.hvp(e_i)[i] on a net wide enough that
  the C kernel cuts its residual stack into blocks of 2 rows;
- BackPACK's DiagHessian (optional, when torch and backpack import).
Exactness identities: the diagonal of a batch is the sum of single-sample
diagonals; for activations with phi'' = 0 (identity, relu, leaky_relu) the
residual's diagonal vanishes, so diag_hessian == diag_ggn, while a curved
activation makes them differ.
"""
import numpy as np
import pytest

import pykfac as pk
from conftest import build_data, build_net, output_width, ref_from_net

LOSSES = ("mse", "ce", "bce")
FLAT = ("identity", "relu", "leaky_relu")  # phi'' = 0

# depth 1 (no hidden layer) to 5; widths of 1; 3+ hidden layers exercise the
# C kernel's residual stack (hidden layers m >= 2), 1-2 hidden layers do not
ARCHS = {
    "L1": [3],
    "L2": [3, 4],
    "L2_w1": [1, 1],
    "L3": [4, 5, 3],
    "L4": [3, 4, 2, 5],
    "L5_w1": [2, 3, 1, 4, 3],
}


def problem(arch, activation, loss, dtype=np.float64, N=5, seed=0, scale=1.7):
    """A net (weights scaled out of the near-linear regime) and data."""
    K = output_width(loss)
    sizes = [*ARCHS[arch], K]
    net = build_net(sizes, activation, seed, np.float64)
    net.theta = net.theta * scale
    X, y = build_data(loss, N, sizes[0], K, seed + 1)
    if dtype == np.float32:
        net32 = pk.MLP(net.sizes, activation=list(net.activations), dtype=np.float32)
        net32.theta = net.theta.astype(np.float32)
        X = X.astype(np.float32)
        if loss != "ce":
            y = y.astype(np.float32)
        net.theta = net32.theta.astype(np.float64)  # the float64 twin of the float32 net
        return net32, net, X, y
    return net, net, X, y


def rel_err(a, b):
    """max |a - b| / max(1e-300, max |b|)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# float64: the two routes differ only in summation order: a few hundred ulp
# of the largest entry at most. float32 (eps 6e-8): the same sums over ~N *
# width terms each, the GGN and residual parts partly cancelling for
# tanh/sigmoid: 1e-5 (~170 eps of the largest entry; the worst seen here is
# 1.3e-6) -- plus diag_ggn's own float32 error on the same problem, which
# isolates the output curvature: where a deep identity net saturates the
# sigmoid (|f| ~ 23), Lambda = p(1 - p) from a float32 p has few correct
# digits in every pykfac curvature, not only here.
TOL = {np.float64: 1e-11, np.float32: 1e-5}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", pk.ACTIVATIONS)
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_equals_dense_hessian_diagonal(arch, activation, loss, dtype):
    net, net64, X, y = problem(arch, activation, loss, dtype)
    d = pk.diag_hessian(net, X, y, loss)
    assert d.shape == (net.num_params,) and d.dtype == np.dtype(dtype)
    X64 = X.astype(np.float64)
    want = np.diag(pk.hessian(net64, X64, y, loss))
    tol = TOL[dtype]
    if dtype == np.float32:
        tol += rel_err(pk.diag_ggn(net, X, y, loss), pk.diag_ggn(net64, X64, y, loss))
    assert rel_err(d, want) <= tol, rel_err(d, want)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("arch", ["L1", "L3", "L5_w1"])
def test_equals_reference_hessian(arch, loss):
    """Against the pure-NumPy forward-mode Hessian (no pykfac code), a
    different curved activation per hidden layer."""
    K = output_width(loss)
    sizes = [*ARCHS[arch], K]
    acts = ["tanh", "gelu", "softplus", "elu", "sigmoid"][:len(sizes) - 2]
    net = build_net(sizes, acts, 3)
    net.theta = net.theta * 1.7
    X, y = build_data(loss, 4, sizes[0], K, 4)
    want = np.diag(ref_from_net(net).hessian(X, y, loss))
    assert rel_err(pk.diag_hessian(net, X, y, loss), want) <= 1e-11


@pytest.mark.parametrize("loss", LOSSES)
def test_finite_differences_of_gradient(loss):
    """d_i = (g(theta + h e_i) - g(theta - h e_i))_i / 2h: truncation O(h^2)
    ~ 1e-10 and rounding ~ 1e-16 / h ~ 1e-11 relative, so 1e-7 is loose
    enough for both and tight enough to see any missing term."""
    net, _, X, y = problem("L4", "tanh", loss, N=6, seed=5)
    theta0 = net.theta.copy()
    h = 1e-5
    fd = np.empty(net.num_params)
    for i in range(net.num_params):
        net.theta = theta0
        net.theta[i] += h
        gp = pk.loss_and_grad(net, X, y, loss)[1][i]
        net.theta = theta0
        net.theta[i] -= h
        gm = pk.loss_and_grad(net, X, y, loss)[1][i]
        fd[i] = (gp - gm) / (2 * h)
    net.theta = theta0
    d = pk.diag_hessian(net, X, y, loss)
    assert rel_err(d, fd) <= 1e-7
    # the residual term is not negligible here, so this checks more than the GGN
    assert rel_err(pk.diag_ggn(net, X, y, loss), fd) > 1e-3


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ["tanh", "gelu", "relu"])
def test_batch_is_sum_of_single_samples(activation, loss):
    net, _, X, y = problem("L5_w1", activation, loss, N=7, seed=2)
    whole = pk.diag_hessian(net, X, y, loss)
    parts = sum(pk.diag_hessian(net, X[i:i + 1], y[i:i + 1], loss) for i in range(len(X)))
    assert rel_err(whole, parts) <= 1e-12
    # and both agree with the dense reference (not merely with each other)
    assert rel_err(whole, np.diag(pk.hessian(net, X, y, loss))) <= 1e-11


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", FLAT)
@pytest.mark.parametrize("arch", ["L2", "L4", "L5_w1"])
def test_flat_activations_equal_diag_ggn(arch, activation, loss):
    """phi'' = 0: each parameter enters f through a piecewise-linear map, so
    d^2 f / d theta_i^2 = 0 and the Hessian diagonal is the GGN diagonal (the
    off-diagonal residual, e.g. between W_1 and W_2, is not zero)."""
    net, _, X, y = problem(arch, activation, loss)
    d = pk.diag_hessian(net, X, y, loss)
    assert rel_err(d, pk.diag_ggn(net, X, y, loss)) <= 1e-12
    H, G = pk.hessian(net, X, y, loss), pk.ggn(net, X, y, loss)
    assert np.abs(H - G).max() > 1e-3 * np.abs(H).max()  # the full residual is not zero


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", sorted(set(pk.ACTIVATIONS) - set(FLAT)))
def test_curved_activations_differ_from_diag_ggn(activation, loss):
    net, _, X, y = problem("L4", activation, loss)
    d = pk.diag_hessian(net, X, y, loss)
    assert rel_err(d, pk.diag_ggn(net, X, y, loss)) > 1e-3
    assert rel_err(d, np.diag(pk.hessian(net, X, y, loss))) <= 1e-11


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_wide_net_blocks_match_hvp(loss):
    """Hidden widths ~250 make the residual stack (the widths of hidden layers
    2 and 3 per sample) so tall that the C kernel processes it in blocks of
    two rows; N = 9 leaves a block of one. Entries of every layer, W and b,
    are checked against single Hessian-vector products."""
    K = output_width(loss)
    sizes = [6, 30, 260, 250, 240, K]
    net = build_net(sizes, ["tanh", "sigmoid", "gelu", "tanh"], 7)
    net.theta = net.theta * 1.5
    X, y = build_data(loss, 9, sizes[0], K, 8)
    d = pk.diag_hessian(net, X, y, loss)
    rng = np.random.default_rng(0)
    idx = []
    for layer in net.layers:
        s = layer.slice
        nW = layer.W.size
        idx += list(rng.choice(np.arange(s.start, s.start + nW), 6, replace=False))
        idx += list(rng.choice(np.arange(s.start + nW, s.stop), 2, replace=False))
    idx = np.array(idx)
    E = np.zeros((net.num_params, idx.size))
    E[idx, np.arange(idx.size)] = 1.0
    want = pk.hvp(net, X, y, loss, E)[idx, np.arange(idx.size)]
    assert np.abs(d[idx] - want).max() <= 1e-11 * np.abs(d).max()
    # batch additivity over the blocks (every row's offset into the chunk)
    parts = pk.diag_hessian(net, X[:4], y[:4], loss) + pk.diag_hessian(net, X[4:], y[4:], loss)
    assert rel_err(d, parts) <= 1e-12


def test_many_rows_cross_chunks():
    """More rows than one chunk holds (8192 for small nets): the second chunk's
    labels and rows line up."""
    net, _, X, y = problem("L4", "tanh", "ce", N=8300, seed=9)
    d = pk.diag_hessian(net, X, y, "ce")
    assert rel_err(d, np.diag(pk.hessian(net, X, y, "ce"))) <= 1e-11


# BackPACK's hooks make torch warn (full backward hooks without input gradients)
PEER_WARNINGS = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


@PEER_WARNINGS
@pytest.mark.parametrize("loss", ["mse", "ce", "bce"])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "elu", "relu", "leaky_relu"])
def test_vs_backpack_diag_hessian(activation, loss):
    """BackPACK's DiagHessian (it has no identity/softplus/gelu module) with
    sum-reduced losses: the same numbers, up to torch's MSELoss(sum) = 2 x ours."""
    torch = pytest.importorskip("torch")
    backpack = pytest.importorskip("backpack")
    from backpack.extensions import DiagHessian
    from test_peers import make  # builds nn.Sequential from the pykfac net (3 layers)

    net, X, y, model, Xt, yt, lossf, scale = make(loss, activation, seed=4)
    model, lossf = backpack.extend(model), backpack.extend(lossf)
    with backpack.backpack(DiagHessian()):
        lossf(model(Xt), yt).backward()
    theirs = torch.cat([p.diag_h.detach().reshape(-1) for p in model.parameters()]).numpy() * scale
    assert rel_err(pk.diag_hessian(net, X, y, loss), theirs) <= 1e-10


@PEER_WARNINGS
def test_deep_vs_backpack_diag_hessian():
    """Four tanh hidden layers: BackPACK's residual factors travel down two
    layers, like pykfac's stack."""
    torch = pytest.importorskip("torch")
    backpack = pytest.importorskip("backpack")
    from backpack.extensions import DiagHessian

    sizes = [4, 6, 5, 7, 3, 3]
    net = build_net(sizes, "tanh", 11)
    net.theta = net.theta * 1.7
    X, y = build_data("ce", 8, 4, 3, 12)
    layers = []
    for i, layer in enumerate(net.layers):
        lin = torch.nn.Linear(layer.in_features, layer.out_features, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(layer.W.copy()))
            lin.bias.copy_(torch.from_numpy(layer.b.copy()))
        layers += [lin] + ([torch.nn.Tanh()] if i < net.n_layers - 1 else [])
    model = backpack.extend(torch.nn.Sequential(*layers))
    lossf = backpack.extend(torch.nn.CrossEntropyLoss(reduction="sum"))
    with backpack.backpack(DiagHessian()):
        lossf(model(torch.from_numpy(X)), torch.from_numpy(y)).backward()
    theirs = torch.cat([p.diag_h.detach().reshape(-1) for p in model.parameters()]).numpy()
    assert rel_err(pk.diag_hessian(net, X, y, "ce"), theirs) <= 1e-10


# ---------------------------------------------------------------------------
# the wrapper: bad input, layouts, inputs untouched
# ---------------------------------------------------------------------------
def _args(loss="ce", dtype=np.float64):
    net, _, X, y = problem("L4", "tanh", loss, dtype)
    return net, X, y


def _nan(a, v=np.nan):
    a = np.array(a, dtype=np.float64)
    a.flat[a.size // 2] = v
    return a


BAD = [
    # (id, loss, mutate (net, X, y, loss) -> same, exception, message regex)
    ("X_nan", "ce", lambda n, X, y, l: (n, _nan(X), y, l), ValueError, r"^X\b.*NaN"),
    ("X_inf", "mse", lambda n, X, y, l: (n, _nan(X, np.inf), y, l), ValueError, r"^X\b.*Inf"),
    ("X_wrong_width", "ce", lambda n, X, y, l: (n, X[:, :2], y, l), ValueError,
     r"^X: expected shape \(N, 3\), got \(5, 2\)$"),
    ("X_1d", "ce", lambda n, X, y, l: (n, X[0], y, l), ValueError, r"^X\b"),
    ("X_empty", "ce", lambda n, X, y, l: (n, X[:0], y[:0], l), ValueError, r"^X\b.*empty"),
    ("X_complex", "ce", lambda n, X, y, l: (n, X + 0j, y, l), TypeError, r"^X\b"),
    ("X_none", "ce", lambda n, X, y, l: (n, None, y, l), TypeError, r"^X\b"),
    ("y_short", "ce", lambda n, X, y, l: (n, X, y[:-1], l), ValueError, r"^y\b"),
    ("y_label_too_big", "ce", lambda n, X, y, l: (n, X, np.where(np.arange(5) == 2, 3, y), l), ValueError,
     r"^y\b"),
    ("y_label_negative", "ce", lambda n, X, y, l: (n, X, np.where(np.arange(5) == 0, -1, y), l), ValueError,
     r"^y\b"),
    ("y_float_class_labels", "ce", lambda n, X, y, l: (n, X, y.astype(np.float64), l), TypeError, r"^y\b"),
    ("y_none", "ce", lambda n, X, y, l: (n, X, None, l), TypeError, r"^y\b"),
    ("y_bce_two", "bce", lambda n, X, y, l: (n, X, y * 2, l), ValueError, r"^y\b"),
    ("y_mse_nan", "mse", lambda n, X, y, l: (n, X, _nan(y), l), ValueError, r"^y\b.*NaN"),
    ("y_mse_wrong_K", "mse", lambda n, X, y, l: (n, X, y[:, :2], l), ValueError, r"^y\b"),
    ("loss_unknown", "ce", lambda n, X, y, l: (n, X, y, "nll"), ValueError, r"^loss\b"),
    ("bce_3_outputs_N_labels", "ce", lambda n, X, y, l: (n, X, y, "bce"), ValueError, r"^y\b.*bce.*\(5, 3\)"),
    ("net_not_mlp", "ce", lambda n, X, y, l: (object(), X, y, l), TypeError, r"^net\b"),
]


@pytest.mark.parametrize("bad", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_naming_argument(bad):
    _, loss, mutate, exc, pattern = bad
    net, X, y = _args(loss)
    with pytest.raises(exc, match=pattern):
        pk.diag_hessian(*mutate(net, X, y, loss))
    want = np.diag(pk.hessian(net, X, y, loss))  # a good call still works
    assert rel_err(pk.diag_hessian(net, X, y, loss), want) <= 1e-11


def test_nan_parameter_raises():
    net, X, y = _args()
    net.theta[2] = np.nan
    with pytest.raises(ValueError, match=r"^net\.theta\b.*NaN"):
        pk.diag_hessian(net, X, y, "ce")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("loss", LOSSES)
def test_layouts_and_inputs_untouched(loss, dtype):
    """Fortran-order, strided, read-only and integer-typed inputs give the
    C-contiguous result bit for bit, and no caller array changes."""
    net, X, y = _args(loss, dtype)
    want = pk.diag_hessian(net, X, y, loss)
    theta0 = net.theta.copy()
    Xf = np.asfortranarray(X)
    Xs = np.repeat(X, 2, axis=0)[::2]
    Xr = X.copy()
    Xr.setflags(write=False)
    yr = y.copy()
    yr.setflags(write=False)
    ylist = y.tolist()
    for Xv, yv in [(Xf, y), (Xs, y), (Xr, yr), (X, ylist)]:
        before = (Xv.copy(), np.array(yv, copy=True))
        got = pk.diag_hessian(net, Xv, yv, loss)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(Xv, before[0])
        np.testing.assert_array_equal(np.asarray(yv), before[1])
    np.testing.assert_array_equal(net.theta, theta0)
    if loss == "ce":  # any integer label dtype
        np.testing.assert_array_equal(pk.diag_hessian(net, X, y.astype(np.int32), loss), want)


def test_exported():
    assert "diag_hessian" in pk.__all__
    assert pk.diag_hessian is pk.curvature.diag_hessian
