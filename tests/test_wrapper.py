"""Tests of the Python/C boundary (pykfac/_core*.c and the thin Python layer).

Not the maths (test_mlp.py, test_curvature.py, test_kfac.py check values
against references): here every public function is fed

* each class of bad input -- wrong shape, ndim, dtype, NaN/Inf, empty batch,
  mismatched N, bad labels, unknown names -- and must raise the documented
  exception naming the argument, after which a good call still works;
* every accepted memory layout -- float32/int/big-endian X, Fortran order,
  strided, reversed, unaligned, read-only arrays, lists -- and must give the
  result of the C-contiguous float64 copy, leaving the caller's arrays
  byte-identical and their reference counts unchanged.

Also: the status-code -> exception mapping (pykfac._core.raise_status), the
messages (pykfac._core.strerror) and which BLAS library is loaded.
"""
import gc
import os
import re
import sys
import tracemalloc

import numpy as np
import pytest

import pykfac as pk
from pykfac import _core

N, D_IN, HIDDEN, K = 6, 4, 5, 3
# "bce3": loss "bce" on a network with K = 3 outputs (multi-label, (N, 3) 0/1 labels)
LOSSES = ("mse", "ce", "bce", "bce3")


# ---------------------------------------------------------------------------
# problems
# ---------------------------------------------------------------------------
def make_args(loss, dtype=np.float64, seed=0):
    """Network and data for ``loss``; float values are exact in float32."""
    k = 1 if loss == "bce" else K
    name, loss = loss, "bce" if loss == "bce3" else loss
    net = pk.MLP([D_IN, HIDDEN, k], activation="tanh", dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 1)

    def f32(*shape):
        return rng.normal(size=shape).astype(np.float32).astype(np.float64)

    X = f32(N, D_IN)
    if loss == "mse":
        y = f32(N, k)
    elif loss == "ce":
        y = np.array([0, 1, 2, 2, 1, 0], dtype=np.int64)
    elif name == "bce3":
        y = np.array([[0, 1, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 0, 0]], dtype=np.float64)
    else:
        y = np.array([0, 1, 1, 0, 1, 0], dtype=np.float64)
    D = net.num_params
    return dict(net=net, X=X, y=y, loss=loss, V=f32(D, 2), v=f32(D), u=f32(N, k, 2), u2=f32(N, k))


def _kfac(kind, **kw):
    def call(a):
        return pk.kfac(a["net"], (a["X"], a["y"]), a["loss"], kind=kind, **kw).to_dense()

    return call


def _kron(method, *args, **kw):
    def call(a):
        kc = pk.kfac(a["net"], (a["X"], a["y"]), a["loss"])
        return getattr(kc, method)(a["V"], *args, **kw)

    return call


def _kfac_batches(a):
    X, y = a["X"], a["y"]
    return pk.kfac(a["net"], [(X[:2], y[:2]), (X[2:], y[2:])], a["loss"]).to_dense()


def _kfac_generator(a):
    X, y = a["X"], a["y"]
    return pk.kfac(a["net"], ((X[i:i + 3], y[i:i + 3]) for i in (0, 3)), a["loss"],
                   kind="mc", mc_samples=2, seed=5).to_dense()


# name -> (call(args), uses labels, vector argument: (key in args, public name
# in error messages, None where scipy checks it) or None)
FUNCS = {
    "forward": (lambda a: a["net"](a["X"]), False, None),
    "features": (lambda a: a["net"].features(a["X"]), False, None),
    "jacobian": (lambda a: pk.jacobian(a["net"], a["X"]), False, None),
    "jvp": (lambda a: pk.jvp(a["net"], a["X"], a["V"]), False, ("V", "v")),
    "jvp_1d": (lambda a: pk.jvp(a["net"], a["X"], a["v"]), False, ("v", "v")),
    "vjp": (lambda a: pk.vjp(a["net"], a["X"], a["u"]), False, ("u", "u")),
    "vjp_2d": (lambda a: pk.vjp(a["net"], a["X"], a["u2"]), False, ("u2", "u")),
    "loss": (lambda a: pk.loss(a["net"], a["X"], a["y"], a["loss"]), True, None),
    "loss_and_grad": (lambda a: pk.loss_and_grad(a["net"], a["X"], a["y"], a["loss"]), True, None),
    "loss_per_sample": (lambda a: pk.loss_per_sample(a["net"], a["X"], a["y"], a["loss"]), True, None),
    "grad_per_sample": (lambda a: pk.grad_per_sample(a["net"], a["X"], a["y"], a["loss"]), True, None),
    "hessian": (lambda a: pk.hessian(a["net"], a["X"], a["y"], a["loss"]), True, None),
    "hvp": (lambda a: pk.hvp(a["net"], a["X"], a["y"], a["loss"], a["V"]), True, ("V", "V")),
    "hvp_1d": (lambda a: pk.hvp(a["net"], a["X"], a["y"], a["loss"], a["v"]), True, ("v", "V")),
    "ggn": (lambda a: pk.ggn(a["net"], a["X"], a["y"], a["loss"]), True, None),
    "ggn_matvec": (lambda a: pk.ggn_matvec(a["net"], a["X"], a["y"], a["loss"], a["V"]), True, ("V", "V")),
    "residual_matvec": (lambda a: pk.residual_matvec(a["net"], a["X"], a["y"], a["loss"], a["V"]), True,
                        ("V", "V")),
    "diag_ggn": (lambda a: pk.diag_ggn(a["net"], a["X"], a["y"], a["loss"]), True, None),
    "diag_ggn_mc": (lambda a: pk.diag_ggn(a["net"], a["X"], a["y"], a["loss"], mc_samples=3, seed=11),
                    True, None),
    "diag_hessian": (lambda a: pk.diag_hessian(a["net"], a["X"], a["y"], a["loss"]), True, None),
    "ekfac": (lambda a: pk.ekfac(a["net"], (a["X"], a["y"]), a["loss"]).to_dense(), True, None),
    "EFOperator": (lambda a: pk.EFOperator(a["net"], a["X"], a["y"], a["loss"]) @ a["V"], True, ("V", None)),
    "FisherMCOperator": (lambda a: pk.FisherMCOperator(a["net"], a["X"], a["y"], a["loss"], seed=2) @ a["V"],
                         True, ("V", None)),
    "empirical_fisher_diag": (lambda a: pk.empirical_fisher_diag(a["net"], a["X"], a["y"], a["loss"]),
                              True, None),
    "output_curvature": (lambda a: pk.output_curvature(a["net"], a["X"], a["loss"], y=a["y"]), True, None),
    "kfac_exact": (_kfac("exact"), True, None),
    "kfac_mc": (_kfac("mc", mc_samples=2, seed=3), True, None),
    "kfac_empirical": (_kfac("empirical"), True, None),
    "kfac_kfra": (_kfac("kfra"), True, None),
    "kfac_batches": (_kfac_batches, True, None),
    "kron_matvec": (_kron("matvec"), True, ("V", "V")),
    "kron_solve": (_kron("solve", 0.1), True, ("V", "V")),
    "kron_solve_factored": (_kron("solve", [0.1, 0.2], factored=True), True, ("V", "V")),
    "kron_inverse_sqrt": (_kron("apply_power", -0.5, damping=0.3), True, ("V", "V")),
    "kfac_generator": (_kfac_generator, True, None),
    "GGNOperator": (lambda a: pk.GGNOperator(a["net"], a["X"], a["y"], a["loss"]) @ a["V"], True, ("V", None)),
    "HessianOperator": (lambda a: pk.HessianOperator(a["net"], a["X"], a["y"], a["loss"]).matvec(a["v"]),
                        True, ("v", None)),
}
# these slice X and y into batches themselves, so None and a longer y are
# caught (or not) by their own slicing rather than by pykfac
SLICING = ("kfac_batches", "kfac_generator")
WITH_VECTOR = [f for f, spec in FUNCS.items() if spec[2] is not None and spec[2][1] is not None]


def call(name, a):
    return FUNCS[name][0](a)


def as_arrays(result):
    """A result as a list of ndarrays (tuples flattened, floats wrapped)."""
    if isinstance(result, (tuple, list)):
        return [x for r in result for x in as_arrays(r)]
    if result is None:
        return []
    return [np.asarray(result)]


_REFERENCE = {}


def reference(name, loss, dtype=np.float64):
    """The result on the canonical (C-contiguous float64) inputs, computed once."""
    key = (name, loss, np.dtype(dtype).name)
    if key not in _REFERENCE:
        _REFERENCE[key] = as_arrays(call(name, make_args(loss, dtype)))
    return _REFERENCE[key]


def assert_same(got, want, exact=True):
    got, want = as_arrays(got), as_arrays(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        if exact:
            np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)


def losses_for(name):
    return LOSSES if FUNCS[name][1] else ("ce",)


def all_cases(names):
    return [(f, loss) for f in names for loss in losses_for(f)]


# ---------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------
def _with_nan(x, value=np.nan):
    x = np.array(x, dtype=np.float64)
    x.flat[x.size // 2] = value
    return x


def _set(key, make):
    def mutate(a):
        a[key] = make(a)

    return mutate


def _theta(value):
    def mutate(a):
        net = a["net"].copy()
        net.theta[1] = value
        a["net"] = net

    return mutate


# (name, applies(func, loss), mutate(args), exception, message regex)
X_NAME = r"^(X|data)\b"  # kfac takes its batches as `data`
BAD = [
    ("X_wrong_width", lambda f, l: f not in SLICING, _set("X", lambda a: a["X"][:, :3]), ValueError,
     r"^X: expected shape \(N, 4\), got \(6, 3\)$"),
    ("X_wrong_width_batch", lambda f, l: f in SLICING, _set("X", lambda a: a["X"][:, :3]), ValueError,
     r"^X: expected shape \(N, 4\), got \([23], 3\)$"),
    ("X_1d", lambda f, l: True, _set("X", lambda a: a["X"][0]), ValueError, X_NAME),
    ("X_3d", lambda f, l: True, _set("X", lambda a: a["X"][None]), ValueError, X_NAME),
    ("X_nan", lambda f, l: True, _set("X", lambda a: _with_nan(a["X"])), ValueError, r"^X\b.*NaN"),
    ("X_inf", lambda f, l: True, _set("X", lambda a: _with_nan(a["X"], np.inf)), ValueError, r"^X\b.*Inf"),
    ("X_neg_inf", lambda f, l: True, _set("X", lambda a: _with_nan(a["X"], -np.inf)), ValueError, r"^X\b"),
    ("X_complex", lambda f, l: True, _set("X", lambda a: a["X"] + 0j), TypeError, X_NAME),
    ("X_object", lambda f, l: True, _set("X", lambda a: a["X"].astype(object)), TypeError, X_NAME),
    ("X_str", lambda f, l: True, _set("X", lambda a: a["X"].astype(str)), TypeError, X_NAME),
    ("X_bool", lambda f, l: True, _set("X", lambda a: a["X"] > 0), TypeError, X_NAME),
    ("X_none", lambda f, l: f not in SLICING, _set("X", lambda a: None), TypeError, X_NAME),
    ("X_datetime", lambda f, l: True, _set("X", lambda a: np.zeros((N, D_IN), "datetime64[s]")), TypeError, X_NAME),
    ("empty_batch", lambda f, l: True,
     lambda a: a.update(X=a["X"][:0], y=a["y"][:0], u=a["u"][:0], u2=a["u2"][:0]), ValueError, r"^X\b.*empty"),
    ("net_not_mlp", lambda f, l: not f.startswith(("forward", "features")),
     _set("net", lambda a: object()), TypeError, r"^net\b"),
    ("theta_nan", lambda f, l: True, _theta(np.nan), ValueError, r"theta.*NaN"),
    ("theta_inf", lambda f, l: True, _theta(-np.inf), ValueError, r"theta.*Inf"),
    # labels
    ("y_wrong_N", lambda f, l: FUNCS[f][1], _set("y", lambda a: a["y"][:-1]), ValueError, r"^y\b"),
    ("y_longer", lambda f, l: FUNCS[f][1] and f != "kfac_generator", _set("y", lambda a: np.concatenate([a["y"], a["y"][:1]])),
     ValueError, r"^y\b"),
    ("y_wrong_ndim", lambda f, l: FUNCS[f][1],
     _set("y", lambda a: a["y"][:, 0] if a["y"].ndim == 2 else np.stack([a["y"], a["y"]], 1)),
     ValueError, r"^y\b"),
    ("y_complex", lambda f, l: FUNCS[f][1], _set("y", lambda a: a["y"] + 0j), TypeError, r"^y\b"),
    ("y_object", lambda f, l: FUNCS[f][1], _set("y", lambda a: a["y"].astype(object)), TypeError, r"^y\b"),
    ("y_str", lambda f, l: FUNCS[f][1], _set("y", lambda a: a["y"].astype(str)), TypeError, r"^y\b"),
    # booleans are valid binary labels (see test_bce_bool_labels), nothing else
    ("y_bool", lambda f, l: FUNCS[f][1] and not l.startswith("bce"), _set("y", lambda a: a["y"] > 0), TypeError, r"^y\b"),
    ("y_none", lambda f, l: FUNCS[f][1] and f not in SLICING + ("output_curvature",), _set("y", lambda a: None), TypeError, r"^y\b"),
    ("y_nan", lambda f, l: FUNCS[f][1] and l != "ce", _set("y", lambda a: _with_nan(a["y"])), ValueError,
     r"^y\b.*NaN"),
    ("y_inf", lambda f, l: FUNCS[f][1] and l != "ce", _set("y", lambda a: _with_nan(a["y"], np.inf)),
     ValueError, r"^y\b"),
    ("y_float_labels", lambda f, l: FUNCS[f][1] and l == "ce", _set("y", lambda a: a["y"].astype(np.float64)),
     TypeError, r"^y\b"),
    ("y_float_label_list", lambda f, l: FUNCS[f][1] and l == "ce",
     _set("y", lambda a: [float(v) for v in a["y"]]), TypeError, r"^y\b"),
    ("y_label_negative", lambda f, l: FUNCS[f][1] and l == "ce",
     _set("y", lambda a: np.where(np.arange(N) == 3, -1, a["y"])), ValueError, r"^y\b"),
    ("y_label_too_big", lambda f, l: FUNCS[f][1] and l == "ce",
     _set("y", lambda a: np.where(np.arange(N) == 5, K, a["y"])), ValueError, r"^y\b"),
    ("y_label_huge", lambda f, l: FUNCS[f][1] and l == "ce",
     _set("y", lambda a: np.where(np.arange(N) == 0, np.iinfo(np.int64).max, a["y"])), ValueError, r"^y\b"),
    ("y_label_uint64_huge", lambda f, l: FUNCS[f][1] and l == "ce",
     _set("y", lambda a: np.where(np.arange(N) == 0, np.iinfo(np.uint64).max, a["y"]).astype(np.uint64)),
     ValueError, r"^y\b"),
    ("y_bce_two", lambda f, l: FUNCS[f][1] and l.startswith("bce"), _set("y", lambda a: a["y"] * 2), ValueError,
     r"^y\b"),
    ("y_bce_half", lambda f, l: FUNCS[f][1] and l.startswith("bce"), _set("y", lambda a: a["y"] * 0.5), ValueError,
     r"^y\b"),
    # names
    ("loss_unknown", lambda f, l: FUNCS[f][1], _set("loss", lambda a: "nll"), ValueError, r"^loss\b"),
    ("loss_uppercase", lambda f, l: FUNCS[f][1], _set("loss", lambda a: a["loss"].upper()), ValueError, r"^loss\b"),
    ("loss_none", lambda f, l: FUNCS[f][1], _set("loss", lambda a: None), ValueError, r"^loss\b"),
    ("loss_bytes", lambda f, l: FUNCS[f][1], _set("loss", lambda a: a["loss"].encode()), ValueError, r"^loss\b"),
    # bce on the K = 3 net needs (N, 3) labels, not (N,) class indices
    ("bce_needs_N_K_labels", lambda f, l: FUNCS[f][1] and l == "ce", _set("loss", lambda a: "bce"), ValueError,
     r"^y: loss='bce' with 3 outputs expects labels of shape \([236], 3\)"),
    ("ce_needs_two_outputs", lambda f, l: FUNCS[f][1] and l == "bce", _set("loss", lambda a: "ce"), ValueError,
     r"^loss\b"),
]

# vector arguments (V of hvp/ggn_matvec, v of jvp, u of vjp)
BAD_VECTOR = [
    ("wrong_length", lambda v: v[:-1], ValueError),
    ("too_long", lambda v: np.concatenate([v, v[:1]]), ValueError),
    ("ndim_3", lambda v: v[..., None, None] if v.ndim < 3 else v[..., None], ValueError),
    ("scalar", lambda v: np.float64(1.0), ValueError),
    ("nan", lambda v: _with_nan(v), ValueError),
    ("inf", lambda v: _with_nan(v, np.inf), ValueError),
    ("complex", lambda v: v + 0j, TypeError),
    ("object", lambda v: v.astype(object), TypeError),
    ("str", lambda v: v.astype(str), TypeError),
    ("bool", lambda v: v > 0, TypeError),
    ("none", lambda v: None, (TypeError, ValueError)),
]

# option arguments: (name, applies(func), call(args), exception, regex)
BAD_OPTIONS = [
    ("mc_samples_negative", lambda a: pk.diag_ggn(a["net"], a["X"], a["y"], a["loss"], mc_samples=-1),
     ValueError, r"^mc_samples\b"),
    ("mc_samples_negative_kfac", lambda a: pk.kfac(a["net"], (a["X"], a["y"]), a["loss"], kind="mc",
                                                   mc_samples=-2), ValueError, r"^mc_samples\b"),
    ("mc_samples_zero_kfac_mc", lambda a: pk.kfac(a["net"], (a["X"], a["y"]), a["loss"], kind="mc",
                                                  mc_samples=0), ValueError, r"^mc_samples\b"),
    ("mc_samples_float", lambda a: pk.diag_ggn(a["net"], a["X"], a["y"], a["loss"], mc_samples=1.5),
     TypeError, r"^mc_samples\b"),
    ("mc_samples_huge", lambda a: pk.diag_ggn(a["net"], a["X"], a["y"], a["loss"], mc_samples=2**40),
     (ValueError, OverflowError), r"mc_samples|int"),
    ("kind_unknown", lambda a: pk.kfac(a["net"], (a["X"], a["y"]), a["loss"], kind="fisher"),
     ValueError, r"^kind\b"),
    ("kind_none", lambda a: pk.kfac(a["net"], (a["X"], a["y"]), a["loss"], kind=None), ValueError, r"^kind\b"),
    ("seed_negative", lambda a: pk.diag_ggn(a["net"], a["X"], a["y"], a["loss"], mc_samples=1, seed=-1),
     ValueError, r"^seed\b"),
    ("seed_str", lambda a: pk.kfac(a["net"], (a["X"], a["y"]), a["loss"], kind="mc", seed="0"),
     TypeError, r"^seed\b"),
    ("data_not_iterable", lambda a: pk.kfac(a["net"], 3, a["loss"]), TypeError, r"^data\b"),
    ("data_empty", lambda a: pk.kfac(a["net"], [], a["loss"]), ValueError, r"^data\b"),
    ("damping_negative", lambda a: pk.kfac(a["net"], (a["X"], a["y"]), a["loss"]).solve(a["V"], -0.1),
     ValueError, r"^damping\b"),
    ("damping_nan", lambda a: pk.kfac(a["net"], (a["X"], a["y"]), a["loss"]).solve(a["V"], float("nan")),
     ValueError, r"^damping\b"),
    ("damping_inf", lambda a: pk.kfac(a["net"], (a["X"], a["y"]), a["loss"]).solve(a["V"], np.inf),
     ValueError, r"^damping\b"),
    ("damping_str", lambda a: pk.kfac(a["net"], (a["X"], a["y"]), a["loss"]).solve(a["V"], "a"),
     TypeError, r"^damping\b"),
    ("damping_none", lambda a: pk.kfac(a["net"], (a["X"], a["y"]), a["loss"]).solve(a["V"], None),
     TypeError, r"^damping\b"),
    ("damping_wrong_count", lambda a: pk.kfac(a["net"], (a["X"], a["y"]), a["loss"]).solve(a["V"], [0.1] * 3),
     ValueError, r"^damping\b"),
    ("power_unknown", lambda a: pk.kfac(a["net"], (a["X"], a["y"]), a["loss"]).apply_power(a["V"], 2, 0.1),
     ValueError, r"^power\b"),
    ("data_bad_batch", lambda a: pk.kfac(a["net"], [(a["X"], a["y"]), a["X"]], a["loss"]), TypeError, r"^data\b"),
]


def check_still_works(name, loss):
    """A good call after a failure gives the reference result."""
    assert sys.exc_info() == (None, None, None)
    assert_same(call(name, make_args(loss)), reference(name, loss))


BAD_CASES = [(f, loss, bad) for (f, loss) in all_cases(FUNCS) for bad in BAD if bad[1](f, loss)]


def test_bce_bool_labels():
    a = make_args("bce")
    as_bool = a["y"] > 0.5
    assert pk.loss(a["net"], a["X"], as_bool, "bce") == pk.loss(a["net"], a["X"], as_bool.astype(float), "bce")
    assert not np.array_equal(as_bool, np.ones_like(as_bool))  # both classes present


@pytest.mark.parametrize("name,loss,bad", BAD_CASES,
                         ids=[f"{f}-{loss}-{bad[0]}" for f, loss, bad in BAD_CASES])
def test_bad_input(name, loss, bad):
    _, _, mutate, exc, pattern = bad
    a = make_args(loss)
    mutate(a)
    with pytest.raises(exc, match=pattern):
        call(name, a)
    check_still_works(name, loss)


VECTOR_CASES = [(f, loss, bad) for (f, loss) in all_cases(WITH_VECTOR) for bad in BAD_VECTOR]


@pytest.mark.parametrize("name,loss,bad", VECTOR_CASES,
                         ids=[f"{f}-{loss}-{bad[0]}" for f, loss, bad in VECTOR_CASES])
def test_bad_vector(name, loss, bad):
    key, public = FUNCS[name][2]
    bad_name, make, exc = bad
    a = make_args(loss)
    a[key] = make(a[key])
    with pytest.raises(exc, match=rf"^{public}\b"):
        call(name, a)
    check_still_works(name, loss)


@pytest.mark.parametrize("name,loss", [(f, l) for f in ("jvp", "ggn_matvec", "hvp", "vjp") for l in ("ce",)])
def test_zero_columns(name, loss):
    """(D, 0) right-hand sides are rejected with a message (not an empty result
    by accident or a crash)."""
    key, public = FUNCS[name][2]
    a = make_args(loss)
    a[key] = a[key][..., :0]
    with pytest.raises(ValueError, match=rf"^{public}\b"):
        call(name, a)
    check_still_works(name, loss)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("bad", BAD_OPTIONS, ids=[b[0] for b in BAD_OPTIONS])
def test_bad_option(bad, loss):
    _, fn, exc, pattern = bad
    with pytest.raises(exc, match=pattern):
        fn(make_args(loss))
    check_still_works("kfac_mc", loss)
    check_still_works("diag_ggn_mc", loss)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_singular_solve_raises_linalg_error(loss):
    """Undamped K-FAC of a network whose last G factor is singular (ce: the
    softmax Hessian annihilates the all-ones vector; mse: more outputs than
    samples) cannot be inverted: pykfac.LinAlgError, a numpy LinAlgError."""
    a = make_args(loss)
    if loss == "mse":
        a["net"] = pk.MLP([D_IN, HIDDEN, 8], seed=0)
        a["X"], a["y"] = a["X"][:2], np.zeros((2, 8))
        a["V"] = np.ones((a["net"].num_params, 2))
    kc = pk.kfac(a["net"], (a["X"], a["y"]), loss)
    for fn in (lambda: kc.solve(a["V"], 0.0), lambda: kc.apply_power(a["V"], -0.5), lambda: kc.logdet(0.0)):
        with pytest.raises(np.linalg.LinAlgError) as info:
            fn()
        assert isinstance(info.value, pk.LinAlgError)
        assert "damping" in str(info.value)
    assert np.all(np.isfinite(kc.solve(a["V"], 1e-3)))
    check_still_works("kron_solve", "ce")


def test_bad_network_descriptions():
    for sizes, exc in [([4], ValueError), ([], ValueError), ([4, 0, 3], ValueError), ([4, -1], ValueError),
                       ([4, 2.5], TypeError), ([4, True], TypeError), (4, TypeError), ([4] * 66, ValueError)]:
        with pytest.raises(exc, match=r"^sizes\b"):
            pk.MLP(sizes)
    for act in ["swish", None, ["tanh"], ["tanh", "relu", "relu"]]:
        with pytest.raises((ValueError, TypeError), match=r"^activation\b"):
            pk.MLP([4, 5, 5, 3], activation=act)
    for dtype in [np.int64, np.complex128, np.float16, object, bool]:
        with pytest.raises(TypeError, match=r"^dtype\b"):
            pk.MLP([4, 3], dtype=dtype)
    net = pk.MLP([4, 3])
    with pytest.raises(ValueError, match=r"^theta\b"):
        net.theta = np.zeros(net.num_params + 1)
    check_still_works("loss_and_grad", "ce")


def test_corrupted_network_object():
    """The C side re-checks what it reads from the MLP object."""
    a = make_args("ce")
    net = a["net"]
    corruptions = [
        ("_theta", np.zeros(net.num_params + 1), ValueError),   # wrong length
        ("_theta", np.zeros(net.num_params, np.int64), TypeError),  # wrong dtype
        ("_theta", np.zeros((net.num_params, 2))[:, 0], TypeError),  # not contiguous
        ("_theta", [0.0] * net.num_params, TypeError),  # not an array
        ("_sizes", (4, 5), ValueError),  # one activation too many
        ("_sizes", [4, 5, 3], TypeError),  # not a tuple
        ("_sizes", (4, 0, 3), ValueError),
        ("_act_codes", (99,), ValueError),  # unknown activation code
        ("_act_codes", (-1,), ValueError),
    ]
    for attr, value, exc in corruptions:
        bad = net.copy()
        setattr(bad, attr, value)
        with pytest.raises(exc, match=r"^net\b"):
            pk.loss_and_grad(bad, a["X"], a["y"], "ce")
        with pytest.raises(exc, match=r"^net\b"):
            pk.jacobian(bad, a["X"])
    check_still_works("loss_and_grad", "ce")


# ---------------------------------------------------------------------------
# accepted layouts and dtypes
# ---------------------------------------------------------------------------
def _strided(x):
    """The same values as a view with every stride doubled (never contiguous)."""
    x = np.asarray(x)
    big = np.zeros(tuple(2 * s for s in x.shape), dtype=x.dtype)
    view = big[tuple(slice(None, None, 2) for _ in x.shape)]
    view[...] = x
    return view


def _reversed(x):
    x = np.asarray(x)
    return x[::-1].copy()[::-1]


def _unaligned(x):
    x = np.asarray(x)
    buf = np.zeros(x.nbytes + 1, dtype=np.uint8)
    out = buf[1:].view(x.dtype).reshape(x.shape)
    out[...] = x
    assert not out.flags.aligned or x.dtype.itemsize == 1
    return out


def _readonly(x):
    x = np.array(x)
    x.setflags(write=False)
    return x


def _ints(x):
    return np.round(np.asarray(x) * 4)


# (name, key in args, transform for the variant, losses it applies to or None for all)
VARIANTS = [
    ("float32", "X", lambda x: x.astype(np.float32), None),
    ("int64", "X", lambda x: _ints(x).astype(np.int64), None),
    ("int32", "X", lambda x: _ints(x).astype(np.int32), None),
    ("int8", "X", lambda x: _ints(x).astype(np.int8), None),
    ("uint8", "X", lambda x: np.abs(_ints(x)).astype(np.uint8), None),
    ("big_endian", "X", lambda x: x.astype(">f8"), None),
    ("fortran", "X", np.asfortranarray, None),
    ("strided", "X", _strided, None),
    ("reversed", "X", _reversed, None),
    ("transposed_view", "X", lambda x: np.ascontiguousarray(x.T).T, None),
    ("unaligned", "X", _unaligned, None),
    ("readonly", "X", _readonly, None),
    ("list", "X", lambda x: x.tolist(), None),
    ("int32", "y", lambda y: y.astype(np.int32), ("ce",)),
    ("uint8", "y", lambda y: y.astype(np.uint8), ("ce",)),
    ("int16_big_endian", "y", lambda y: y.astype(">i2"), ("ce",)),
    ("list", "y", lambda y: y.tolist(), ("ce", "mse", "bce", "bce3")),
    ("strided", "y", _strided, None),
    ("reversed", "y", _reversed, None),
    ("unaligned", "y", _unaligned, None),
    ("readonly", "y", _readonly, None),
    ("fortran", "y", np.asfortranarray, ("mse", "bce3")),
    ("float32", "y", lambda y: y.astype(np.float32), ("mse", "bce", "bce3")),
    ("int", "y", lambda y: y.astype(np.int64), ("bce", "bce3")),
    ("column", "y", lambda y: y[:, None], ("bce",)),
    ("plus_minus_one", "y", lambda y: 2 * y - 1, ("bce", "bce3")),
    ("bool", "y", lambda y: y > 0, ("bce", "bce3")),
]
VECTOR_VARIANTS = [
    ("fortran", np.asfortranarray),
    ("strided", _strided),
    ("reversed", _reversed),
    ("unaligned", _unaligned),
    ("readonly", _readonly),
    ("float32", lambda v: v.astype(np.float32)),
    ("int", lambda v: _ints(v).astype(np.int64)),
    ("list", lambda v: v.tolist()),
]


def canonical(key, value, loss):
    """What the variant means: the C-contiguous float64 (int64 for ce labels) copy."""
    arr = np.array(value)
    if key == "y":
        if loss == "ce":
            return np.ascontiguousarray(arr, dtype=np.int64)
        if loss == "bce":
            return np.ascontiguousarray((arr.reshape(-1) > 0).astype(np.float64))
        if loss == "bce3":
            return np.ascontiguousarray((arr > 0).astype(np.float64))
    return np.ascontiguousarray(arr, dtype=np.float64)


def snapshot(a):
    """Bytes, dtype, shape, strides and flags of every array argument (incl. net.theta)."""
    out = {}
    for key, val in a.items():
        if key == "net":
            val = val.theta
        if isinstance(val, np.ndarray):
            out[key] = (val.tobytes(), val.dtype, val.shape, val.strides, val.flags.writeable,
                        val.__array_interface__["data"][0])
        elif isinstance(val, list):
            out[key] = repr(val)
    return out


VARIANT_CASES = [(f, loss, var) for (f, loss) in all_cases(FUNCS) for var in VARIANTS
                 if (var[1] != "y" or FUNCS[f][1]) and (var[3] is None or loss in var[3])]


@pytest.mark.parametrize("name,loss,var", VARIANT_CASES,
                         ids=[f"{f}-{loss}-{v[1]}_{v[0]}" for f, loss, v in VARIANT_CASES])
def test_accepted_layouts(name, loss, var):
    _, key, transform, _ = var
    a = make_args(loss)
    a[key] = transform(a[key])
    want_args = dict(a)
    want_args[key] = canonical(key, a[key], loss)
    before = snapshot(a)
    got = call(name, a)
    assert snapshot(a) == before, "the caller's arrays were modified"
    assert_same(got, call(name, want_args))


VECTOR_VARIANT_CASES = [(f, loss, var) for (f, loss) in all_cases(FUNCS) if FUNCS[f][2] for var in VECTOR_VARIANTS]


@pytest.mark.parametrize("name,loss,var", VECTOR_VARIANT_CASES,
                         ids=[f"{f}-{loss}-{v[0]}" for f, loss, v in VECTOR_VARIANT_CASES])
def test_accepted_vector_layouts(name, loss, var):
    key = FUNCS[name][2][0]
    a = make_args(loss)
    a[key] = var[1](a[key])
    want_args = dict(a)
    want_args[key] = canonical(key, a[key], loss)
    before = snapshot(a)
    got = call(name, a)
    assert snapshot(a) == before, "the caller's arrays were modified"
    assert_same(got, call(name, want_args))


@pytest.mark.parametrize("name,loss", all_cases(FUNCS))
def test_float32_network(name, loss):
    """A float32 network casts float64/int inputs to float32 and returns float32."""
    a = make_args(loss, dtype=np.float32)
    got = as_arrays(call(name, a))
    for arr, ref64 in zip(got, reference(name, loss)):
        if name in ("loss_per_sample",) or arr.ndim == 0:
            assert arr.dtype == np.float64
        else:
            assert arr.dtype == np.float32, name
        scale = max(1.0, float(np.abs(ref64).max())) if ref64.size else 1.0
        np.testing.assert_allclose(arr, ref64, rtol=2e-4, atol=2e-5 * scale)
    # float32 inputs to a float32 network are used as they are
    a32 = dict(a)
    for key in ("X", "V", "v", "u", "u2") + (("y",) if loss == "mse" else ()):
        a32[key] = np.ascontiguousarray(a[key], dtype=np.float32)
    assert_same(call(name, a32), got)


@pytest.mark.parametrize("name,loss", all_cases(FUNCS))
def test_outputs_are_fresh(name, loss):
    """Outputs are new arrays: never views of an input, never shared between
    calls, and writing to one does not change the next result."""
    a = make_args(loss)
    first = as_arrays(call(name, a))
    inputs = [a["X"], a["y"], a["V"], a["v"], a["u"], a["u2"], a["net"].theta]
    for arr in first:
        for inp in inputs:
            assert not np.shares_memory(arr, inp)
        if arr.ndim:
            assert arr.flags.writeable
            arr[...] = 12345.0
    second = as_arrays(call(name, a))
    for arr in second:
        for other in first:
            assert not np.shares_memory(arr, other)
    assert_same(second, reference(name, loss))


def test_output_dtypes_and_shapes():
    a = make_args("ce")
    net, X, y = a["net"], a["X"], a["y"]
    D = net.num_params
    assert net(X).shape == (N, K)
    assert net.features(X).shape == (N, HIDDEN)
    assert pk.jacobian(net, X).shape == (N, K, D)
    assert pk.jvp(net, X, a["v"]).shape == (N, K)
    assert pk.jvp(net, X, a["V"]).shape == (N, K, 2)
    assert pk.vjp(net, X, a["u2"]).shape == (D,)
    assert pk.vjp(net, X, a["u"]).shape == (D, 2)
    value, grad = pk.loss_and_grad(net, X, y, "ce")
    assert isinstance(value, float) and grad.shape == (D,)
    assert isinstance(pk.loss(net, X, y, "ce"), float)
    assert pk.loss_per_sample(net, X, y, "ce").shape == (N,)
    for fn in (pk.hessian, pk.ggn):
        assert fn(net, X, y, "ce").shape == (D, D)
    for fn in (pk.hvp, pk.ggn_matvec, pk.residual_matvec):
        assert fn(net, X, y, "ce", a["v"]).shape == (D,)
        assert fn(net, X, y, "ce", a["V"]).shape == (D, 2)
    assert pk.diag_ggn(net, X, y, "ce").shape == (D,)
    assert pk.empirical_fisher_diag(net, X, y, "ce").shape == (D,)
    kc = pk.kfac(net, (X, y), "ce")
    assert kc.to_dense().shape == (D, D)
    assert kc.matvec(a["v"]).shape == (D,)
    assert kc.solve(a["V"], 1.0).shape == (D, 2)
    op = pk.GGNOperator(net, X, y, "ce")
    assert op.shape == (D, D) and op.dtype == np.float64


def test_mc_seed_reproducible():
    a = make_args("ce")
    net, X, y = a["net"], a["X"], a["y"]
    d1 = pk.diag_ggn(net, X, y, "ce", mc_samples=2, seed=7)
    d2 = pk.diag_ggn(net, X, y, "ce", mc_samples=2, seed=7)
    d3 = pk.diag_ggn(net, X, y, "ce", mc_samples=2, seed=8)
    np.testing.assert_array_equal(d1, d2)
    assert not np.array_equal(d1, d3)
    k1 = pk.kfac(net, (X, y), "ce", kind="mc", seed=np.uint64(2**63 + 5)).to_dense()
    k2 = pk.kfac(net, (X, y), "ce", kind="mc", seed=2**63 + 5).to_dense()
    np.testing.assert_array_equal(k1, k2)
    # seed=None draws fresh entropy: two calls differ
    n1 = pk.diag_ggn(net, X, y, "ce", mc_samples=1, seed=None)
    n2 = pk.diag_ggn(net, X, y, "ce", mc_samples=1, seed=None)
    assert not np.array_equal(n1, n2)


def test_kfac_data_forms_agree():
    """(X, y), a list of batches, a tuple of batches and a generator give the
    same exact K-FAC (factors add over batches)."""
    a = make_args("ce")
    net, X, y = a["net"], a["X"], a["y"]
    want = pk.kfac(net, (X, y), "ce").to_dense()
    batches = [(X[:2], y[:2]), (X[2:5], y[2:5]), (X[5:], y[5:])]
    for data in (batches, iter(batches), (b for b in batches), tuple(batches), batches[:2] + [list(batches[2])]):
        np.testing.assert_allclose(pk.kfac(net, data, "ce").to_dense(), want, rtol=1e-12, atol=1e-14)


def test_kfac_tuple_of_two_batches():
    """A tuple holding exactly two (X, y) batches is data, not one (X, y) pair."""
    a = make_args("ce")
    net, X, y = a["net"], a["X"], a["y"]
    want = pk.kfac(net, (X, y), "ce").to_dense()
    data = ((X[:3], y[:3]), (X[3:], y[3:]))
    np.testing.assert_allclose(pk.kfac(net, data, "ce").to_dense(), want, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------
# reference counts and memory
# ---------------------------------------------------------------------------
def _refcounts(a):
    objs = [a["net"], a["net"].theta, a["X"], a["y"], a["V"], a["v"], a["u"], a["u2"]]
    return [sys.getrefcount(o) for o in objs]


@pytest.mark.parametrize("name,loss", all_cases(FUNCS))
def test_refcounts_stable(name, loss):
    a = make_args(loss)
    for _ in range(3):
        call(name, a)
    gc.collect()
    before = _refcounts(a)
    for _ in range(25):
        call(name, a)
    gc.collect()
    assert _refcounts(a) == before


@pytest.mark.parametrize("name,loss", all_cases(["loss_and_grad", "ggn_matvec", "jvp", "vjp", "diag_ggn_mc",
                                                 "kfac_exact", "output_curvature"]))
def test_refcounts_stable_on_errors(name, loss):
    """Failing calls release what they took: the good arguments' counts do not move."""
    a = make_args(loss)
    bads = [("X", a["X"][:, :3]), ("X", _with_nan(a["X"])), ("X", a["X"] + 0j)]
    if FUNCS[name][1]:
        bads += [("y", a["y"][:-1]), ("loss", "nope")]
    if FUNCS[name][2]:
        key = FUNCS[name][2][0]
        bads += [(key, a[key][:-1]), (key, _with_nan(a[key]))]
    gc.collect()
    before = _refcounts(a)
    for _ in range(10):
        for key, value in bads:
            b = dict(a)
            b[key] = value
            with pytest.raises((ValueError, TypeError)):
                call(name, b)
            del b
    gc.collect()
    assert _refcounts(a) == before


@pytest.mark.parametrize("name", ["hessian", "ggn", "jacobian", "loss_and_grad", "ggn_matvec", "vjp",
                                  "kfac_exact", "output_curvature", "diag_ggn_mc"])
def test_no_memory_growth(name):
    """Repeated calls (good and failing) do not accumulate Python-visible memory
    (NumPy reports its array buffers to tracemalloc)."""
    loss = "ce"
    a = make_args(loss)
    bad = dict(a, X=a["X"][:, :-1])

    def batch():
        for _ in range(40):
            call(name, a)
            with pytest.raises(ValueError):
                call(name, bad)

    batch()
    gc.collect()
    tracemalloc.start()
    try:
        batch()
        gc.collect()
        first, _ = tracemalloc.get_traced_memory()
        for _ in range(3):
            batch()
        gc.collect()
        second, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # one leaked D x D output would be ~15 kB per call, 1.8 MB over 120 calls
    assert second - first < 64 * 1024, f"{second - first} bytes more after 120 more calls"


# ---------------------------------------------------------------------------
# status codes, messages, build information
# ---------------------------------------------------------------------------
ERR_NAMES = ["BAD_ARG", "NOMEM", "SHAPE", "NONFINITE", "LABEL", "NOT_PD", "EIG_FAILED", "SINGULAR",
             "TOO_LARGE", "EMPTY", "DTYPE", "LOSS"]
CODES = {name: -(i + 1) for i, name in enumerate(ERR_NAMES)}
# pykfac/_core.h: NOMEM -> MemoryError; NOT_PD, EIG_FAILED, SINGULAR ->
# pykfac.LinAlgError; DTYPE -> TypeError; BAD_ARG (a pykfac bug, never the
# user's) -> RuntimeError; everything else ValueError.
EXPECTED_EXC = {"NOMEM": MemoryError, "NOT_PD": pk.LinAlgError, "EIG_FAILED": pk.LinAlgError,
                "SINGULAR": pk.LinAlgError, "DTYPE": TypeError, "BAD_ARG": RuntimeError}


def test_error_code_range():
    assert _core.ERR_MIN == min(CODES.values()) == -len(ERR_NAMES)


@pytest.mark.parametrize("name", ERR_NAMES)
def test_raise_status_maps_every_code(name):
    code = CODES[name]
    want = EXPECTED_EXC.get(name, ValueError)
    with pytest.raises(Exception) as info:
        _core.raise_status(code)
    # exactly the documented type (a RuntimeError or a bare Exception would not do)
    assert type(info.value) is want, f"{name} ({code}) raised {type(info.value).__name__}, documented {want.__name__}"
    message = _core.strerror(code)
    assert message and message in str(info.value)
    # the interpreter is fine afterwards
    check_still_works("loss", "ce")


def test_raise_status_ok_and_unknown():
    assert _core.raise_status(0) is None
    for code in (1, 7, _core.ERR_MIN - 1, -1000, 2**31 - 1, -(2**31)):
        with pytest.raises(ValueError):
            _core.raise_status(code)
    with pytest.raises((OverflowError, TypeError, ValueError)):
        _core.raise_status(2**80)
    with pytest.raises(TypeError):
        _core.raise_status("x")


def test_linalg_error_type():
    assert issubclass(pk.LinAlgError, np.linalg.LinAlgError)
    assert pk.LinAlgError is _core.LinAlgError
    assert pk.LinAlgError.__module__ == "pykfac"
    assert pk.LinAlgError.__doc__


def test_strerror_every_code():
    messages = {}
    for code in range(_core.ERR_MIN, 1):
        msg = _core.strerror(code)
        assert isinstance(msg, str) and msg.strip(), code
        messages[code] = msg
    assert len(set(messages.values())) == len(messages), "two codes share a message"
    fallback = _core.strerror(1)
    assert fallback and fallback not in messages.values()
    for code in (2, _core.ERR_MIN - 1, -(2**31), 2**31 - 1):
        assert _core.strerror(code) == fallback
    assert "success" in messages[0].lower() or "ok" in messages[0].lower()


def test_show_config(capsys):
    cfg = pk.show_config()
    printed = capsys.readouterr().out
    for key in ("version", "numpy", "blas_source", "blas_library", "blas_config", "blas_corename", "blas_threads"):
        assert key in cfg
        assert key in printed
    assert cfg["version"] == pk.__version__
    assert cfg["numpy"] == np.__version__
    assert cfg["blas_library"] in printed
    assert "OpenBLAS" in cfg["blas_config"]
    assert isinstance(cfg["blas_threads"], int) and cfg["blas_threads"] >= 1
    quiet = pk.show_config(print_out=False)
    assert capsys.readouterr().out == ""
    assert quiet == cfg


def _loaded_libraries():
    with open("/proc/self/maps") as f:
        return {line.split()[-1] for line in f if "/" in line.split()[-1]}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps and ELF names")
def test_blas_library_is_the_expected_one():
    """The core uses the bundled libscipy_openblas next to the extension when
    built against scipy-openblas32, else a system libopenblas -- never, say,
    NumPy's own OpenBLAS copy."""
    cfg = pk.show_config(print_out=False)
    lib = cfg["blas_library"]
    assert lib and os.path.isabs(lib) and os.path.exists(lib), lib
    real = os.path.realpath(lib)
    loaded = {os.path.realpath(p) for p in _loaded_libraries()}
    assert real in loaded, f"{lib} is not mapped into this process"
    ext_dir = os.path.dirname(os.path.realpath(_core.__file__))
    base = os.path.basename(real)
    if "bundled" in cfg["blas_source"] or "scipy-openblas" in cfg["blas_source"]:
        assert re.match(r"libscipy_openblas\.(so|dylib)", base), base
        assert os.path.dirname(real) == ext_dir, f"{real} is not the copy next to {_core.__file__}"
    else:
        assert "system" in cfg["blas_source"]
        assert re.match(r"libopenblas.*\.so", base), base
        assert not real.startswith(ext_dir)
    assert "numpy.libs" not in real and "scipy_openblas64" not in real


def test_blas_info_consistent():
    info = _core.blas_info()
    cfg = pk.show_config(print_out=False)
    assert info["library"] == cfg["blas_library"]
    assert info["source"] == cfg["blas_source"]
    assert info["corename"] in info["config"] or info["corename"].lower() in info["config"].lower()
