"""pk.MLP: forward pass, theta layout and views, construction, dtypes.

Every forward value is checked against tests/reference.py (float64 NumPy).
"""
import numpy as np
import pytest

import pykfac as pk
import reference as ref

HIDDEN = [(5,), (4, 6), (3, 4, 5)]


@pytest.mark.parametrize("hidden", HIDDEN, ids=lambda h: "x".join(map(str, h)))
@pytest.mark.parametrize("activation", ref.ACTIVATIONS)
def test_forward_matches_reference(make_net, ref_of, activation, hidden):
    sizes = [3, *hidden, 2]
    net = make_net(sizes, activation, seed=len(hidden))
    X = np.random.default_rng(7).normal(size=(9, 3)) * 2.0
    out = net(X)
    assert out.shape == (9, 2)
    assert out.dtype == np.float64
    rnet = ref_of(net)
    assert rnet.activations == [activation] * len(hidden)
    ref.assert_close(out, rnet(X), 1e-13, f"forward {activation}")


def test_forward_single_layer_is_affine(make_net):
    net = make_net([4, 3], "tanh", seed=3)
    assert list(net.activations) == []
    X = np.random.default_rng(0).normal(size=(5, 4))
    W, b = np.array(net.layers[0].W), np.array(net.layers[0].b)
    ref.assert_close(net(X), X @ W.T + b, 1e-14, "single layer")


def test_mixed_activations(make_net, ref_of):
    acts = ["relu", "gelu", "softplus"]
    net = make_net([3, 4, 5, 4, 2], acts, seed=11)
    assert list(net.activations) == acts
    X = np.random.default_rng(1).normal(size=(6, 3))
    rnet = ref_of(net)
    assert rnet.activations == acts
    ref.assert_close(net(X), rnet(X), 1e-13, "mixed activations")
    # a permutation of the activations gives a different function
    other = ref.RefMLP(rnet.params, ["gelu", "relu", "softplus"])
    assert ref.max_rel_err(net(X), other(X)) > 1e-3


def test_activation_kinks_match_pytorch_convention(make_net):
    # relu'(0) = 0 is invisible in values; check the values at exactly 0 and
    # the negative branches of relu / leaky_relu / elu through a 1-unit net.
    for act, expect in [("relu", lambda s: np.maximum(s, 0)),
                        ("leaky_relu", lambda s: np.where(s > 0, s, 0.01 * s)),
                        ("elu", lambda s: np.where(s > 0, s, np.expm1(s)))]:
        net = pk.MLP.from_params([(np.array([[1.0]]), np.array([0.0])),
                                  (np.array([[1.0]]), np.array([0.0]))], activation=act)
        s = np.array([[-2.0], [-0.5], [0.0], [0.5], [3.0]])
        ref.assert_close(net(s), expect(s), 1e-15, act)


def test_theta_layout_and_views(make_net):
    sizes = [3, 5, 4, 2]
    net = make_net(sizes, "tanh", seed=0)
    D = sum(o * (i + 1) for i, o in zip(sizes[:-1], sizes[1:]))
    assert net.num_params == D
    assert net.theta.shape == (D,)
    assert net.theta.dtype == np.float64
    assert list(net.sizes) == sizes
    assert len(net.layers) == 3
    theta = net.theta
    off = 0
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        W, b = net.layers[l].W, net.layers[l].b
        assert W.shape == (n_out, n_in) and b.shape == (n_out,)
        np.testing.assert_array_equal(W, theta[off:off + n_out * n_in].reshape(n_out, n_in))
        np.testing.assert_array_equal(b, theta[off + n_out * n_in:off + n_out * (n_in + 1)])
        assert np.shares_memory(W, theta) and np.shares_memory(b, theta)
        off += n_out * (n_in + 1)
    assert off == D


def test_writing_layer_views_changes_theta_and_output(make_net, ref_of):
    net = make_net([3, 4, 2], "sigmoid", seed=2)
    X = np.random.default_rng(3).normal(size=(5, 3))
    before = net(X).copy()
    theta_before = net.theta.copy()

    net.layers[0].W[1, 2] += 0.75  # theta index 1 * 3 + 2 = 5
    expected = theta_before.copy()
    expected[5] += 0.75
    np.testing.assert_array_equal(net.theta, expected)
    after = net(X)
    assert ref.max_rel_err(after, before) > 1e-3
    ref.assert_close(after, ref_of(net)(X), 1e-13, "after writing W")

    net.layers[1].b[:] = [1.5, -2.0]  # the last two entries of theta
    np.testing.assert_array_equal(net.theta[-2:], [1.5, -2.0])
    ref.assert_close(net(X), ref_of(net)(X), 1e-13, "after writing b")

    net.theta[0] = -4.0  # and theta writes are seen by the layer views
    assert net.layers[0].W[0, 0] == -4.0
    ref.assert_close(net(X), ref_of(net)(X), 1e-13, "after writing theta")


def test_from_params_round_trip(make_net):
    net = make_net([3, 5, 4, 2], ["elu", "tanh"], seed=4)
    params = [(np.array(layer.W), np.array(layer.b)) for layer in net.layers]
    net2 = pk.MLP.from_params(params, activation=["elu", "tanh"])
    assert list(net2.sizes) == [3, 5, 4, 2]
    assert list(net2.activations) == ["elu", "tanh"]
    assert net2.num_params == net.num_params
    np.testing.assert_array_equal(net2.theta, net.theta)
    for l in range(3):
        np.testing.assert_array_equal(net2.layers[l].W, params[l][0])
        np.testing.assert_array_equal(net2.layers[l].b, params[l][1])
    X = np.random.default_rng(5).normal(size=(4, 3))
    np.testing.assert_array_equal(net2(X), net(X))


def test_from_params_matches_reference_directly():
    rng = np.random.default_rng(6)
    params = [(rng.normal(size=(4, 3)), rng.normal(size=4)),
              (rng.normal(size=(2, 4)), rng.normal(size=2))]
    net = pk.MLP.from_params(params, activation="gelu")
    X = rng.normal(size=(7, 3))
    ref.assert_close(net(X), ref.RefMLP(params, "gelu")(X), 1e-13, "from_params gelu")
    ref.assert_close(net.theta, ref.RefMLP(params, "gelu").theta(), 0.0, "theta layout")


def test_float32_model_outputs_float32(make_net, ref_of):
    sizes = [3, 6, 2]
    net = make_net(sizes, "tanh", seed=8, dtype=np.float32)
    assert net.dtype == np.float32
    assert net.theta.dtype == np.float32
    assert net.layers[0].W.dtype == np.float32
    X = np.random.default_rng(9).normal(size=(5, 3)).astype(np.float32)
    out = net(X)
    assert out.dtype == np.float32
    assert out.shape == (5, 2)
    # the float64 reference on the same (float32-representable) weights
    ref.assert_close(out, ref_of(net)(X.astype(np.float64)), 1e-5, "float32 forward")


def test_seed_is_reproducible():
    a = pk.MLP([3, 4, 2], activation="relu", seed=123)
    b = pk.MLP([3, 4, 2], activation="relu", seed=123)
    c = pk.MLP([3, 4, 2], activation="relu", seed=124)
    np.testing.assert_array_equal(a.theta, b.theta)
    assert not np.array_equal(a.theta, c.theta)
    assert np.all(np.isfinite(a.theta)) and np.any(a.theta != 0)


def test_unknown_activation_raises():
    with pytest.raises(ValueError):
        pk.MLP([3, 4, 2], activation="swishy", seed=0)


def test_constructor_errors_name_the_argument():
    cases = [
        (lambda: pk.MLP([3, 2], seed=-1), ValueError, "seed"),
        (lambda: pk.MLP([3, 2], seed=1.5), TypeError, "seed"),
        (lambda: pk.MLP([3, 2], dtype="nonsense"), TypeError, "dtype"),
        (lambda: pk.MLP.from_params(5), TypeError, "params"),
        (lambda: pk.MLP.from_params([(np.ones((2, 3)) + 1j, np.ones(2))]), TypeError, "params"),
        (lambda: pk.MLP([1, 2**31]), ValueError, "sizes"),  # rejected before allocating 16 GB
        (lambda: pk.MLP([3, 2], activation="swish"), ValueError, "activation"),
    ]
    for make, exc, name in cases:
        with pytest.raises(exc, match=rf"^{name}\b"):
            make()
    net = pk.MLP([3, 2])
    with pytest.raises(TypeError, match=r"^theta\b"):
        net.theta = np.ones(net.num_params) + 1j
    assert np.all(np.isreal(net.theta))


# ------------------------------------------- curvature kernels: chunks and blocks
def _curvature_parts(net, X, y, loss, kinds, cross):
    """diag_ggn, empirical_fisher_diag and K-FAC factors (with cross-layer
    statistics when cross) of (X, y), as one dict of arrays."""
    from pykfac import _core

    out = {"diag": pk.diag_ggn(net, X, y, loss), "efd": pk.empirical_fisher_diag(net, X, y, loss)}
    sizes = net.sizes
    for name, code in kinds.items():
        A = [np.zeros((i + 1, i + 1), dtype=net.dtype) for i in sizes[:-1]]
        G = [np.zeros((o, o), dtype=net.dtype) for o in sizes[1:]]
        Ac = [np.zeros((i + 1, j + 1), dtype=net.dtype) for i, j in zip(sizes[:-2], sizes[1:-1])] if cross else None
        Gc = [np.zeros((i, j), dtype=net.dtype) for i, j in zip(sizes[1:-1], sizes[2:])] if cross else None
        _core.kfac_factors(net, code, X, y, loss, 1, 0, A, G, Ac, Gc)
        for l in range(len(A)):
            out[f"{name}A{l}"], out[f"{name}G{l}"] = A[l], G[l]
        for l in range(len(Ac or [])):
            out[f"{name}Ac{l}"], out[f"{name}Gc{l}"] = Ac[l], Gc[l]
    return out


@pytest.mark.parametrize("loss,dtype", [("ce", np.float64), ("mse", np.float64), ("bce", np.float64),
                                        ("ce", np.float32)])
def test_curvature_kernels_across_row_chunks_and_stack_blocks(make_net, make_data, loss, dtype):
    """diag_ggn, empirical_fisher_diag and the K-FAC factors (exact and
    empirical, with cross-layer statistics; KFRA's A) of 1500 rows, which the kernels split into
    several row chunks and, within each, several reverse-mode blocks (widths
    300 and 200 make a block under 100 rows), equal the sums over batches of
    40 rows (one chunk and one block each) up to rounding."""
    K = 1 if loss == "bce" else 10
    sizes = [20, 300, 200, K]
    net = make_net(sizes, "tanh", 3, dtype)
    X, y = make_data(loss, 1500, sizes[0], K, 4)
    X = X.astype(dtype)
    if loss != "ce":
        y = y.astype(dtype)
    kinds = {"exact": 0, "empirical": 2}
    whole = _curvature_parts(net, X, y, loss, kinds, True)
    parts = None
    for i in range(0, 1500, 40):
        p = _curvature_parts(net, X[i:i + 40], y[i:i + 40], loss, kinds, True)
        parts = p if parts is None else {k: parts[k] + p[k] for k in p}
    tol = 2e-5 if dtype == np.float32 else 1e-11
    for name, value in parts.items():
        assert whole[name].dtype == dtype, name
        ref.assert_close(whole[name], value, tol, f"{name}: one call vs 40-row batches")
    # KFRA's G is not a sum over batches, but its A is the same
    kfra = _curvature_parts(net, X, y, loss, {"kfra": 3}, False)
    for l in range(len(sizes) - 1):
        ref.assert_close(kfra[f"kfraA{l}"], whole[f"exactA{l}"], tol, f"kfra A{l}")
