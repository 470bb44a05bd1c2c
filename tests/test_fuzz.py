"""Property-based fuzzing (hypothesis) of pykfac's public core API.

test_wrapper.py feeds every function a fixed catalogue of bad inputs and
layouts on one fixed problem. Here hypothesis draws the PROBLEM too -- depth
1-3, widths 1-4 (so N = 1, width 1 and K = 1 all occur), every activation,
every loss, float32 and float64 networks -- and then passes each array
argument in a random form:

* valid forms: float64/32/16, int8..int64, uint8..uint64, big-endian,
  Fortran order, strided, negative strides, transposed views, read-only,
  unaligned, 0-stride broadcasts, nested lists, memoryviews;
* invalid dtypes: complex, object, bool, str, bytes, datetime64,
  timedelta64, structured;
* at most one corruption per case: NaN/Inf, wrong length or width, wrong
  ndim, empty batch, zero columns, None, labels out of range or of the
  wrong kind, unknown or mismatched loss, bad mc_samples/seed/kind/damping/
  power/num_matvecs/method, a bad operator or spectral-density option, data
  that cannot be read twice (ekfac), a net that is not an MLP or has a NaN
  parameter.

The property of every case:

* a valid call returns exactly (bit for bit) what the same call returns on
  the canonical arguments (C-contiguous float64 arrays, int64 class labels),
  and the result is finite;
* an invalid call raises the documented exception (TypeError, ValueError or
  pykfac.LinAlgError) whose message starts with the argument's name;
* either way every array the caller passed is byte-identical afterwards
  (values, dtype, shape, strides, flags and address).

A second family checks maths identities on the random shapes (Jacobian vs
JVP/VJP/GGN/diagonal, Hessian vs HVP, residual = H - G, K-FAC vs dense),
and a third fuzzes ``KronCurvature`` and ``EKFACCurvature`` (random factors
of random rank and random eigenvalue scales, singular ones included) against
dense float64 linear algebra.

Cases are counted; the total is printed in pytest's terminal summary
("pykfac fuzz: N cases ...") and, with PYKFAC_FUZZ_REPORT=path, written to
that file as JSON together with what each kind of bad input returned.
PYKFAC_FUZZ_SCALE=k multiplies the number of examples (default 1: about
6000 cases in well under a minute).
"""
import collections
import json
import os
import re
import time

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import pykfac as pk  # noqa: E402
from pykfac.kfac import KFAC_KINDS  # noqa: E402

LOSSES = ("mse", "ce", "bce")
SCALE = float(os.environ.get("PYKFAC_FUZZ_SCALE", "1"))


def fuzz_settings(n):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None,
                    print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# ---------------------------------------------------------------------------
# case accounting and the terminal report
# ---------------------------------------------------------------------------
CASES = collections.Counter()  # per test function
OUTCOMES = collections.defaultdict(collections.Counter)  # bad-input label -> outcome -> count


def record(test, label, outcome):
    CASES[test] += 1
    OUTCOMES[label][outcome] += 1


def outcome_of(exc):
    if exc is None:
        return "ok"
    msg = str(exc)
    name = re.match(r"^([\w.\[\]]+)", msg)
    return f"{type(exc).__name__}({name.group(1) if name else '?'})"


class FuzzReport:
    """Counts cases per test and prints them at the end of the session (a pytest
    plugin registered once per title); ``env`` names a variable whose value, if
    set, is a path for the JSON summary. Shared by the fuzz modules."""

    def __init__(self, title, cases, outcomes, env):
        self.title, self.cases, self.outcomes, self.env = title, cases, outcomes, env
        self.start = time.perf_counter()

    def summary(self):
        return {"cases": sum(self.cases.values()), "per_test": dict(self.cases),
                "seconds": round(time.perf_counter() - self.start, 1),
                "bad_inputs": {k: dict(v) for k, v in sorted(self.outcomes.items())}}

    def pytest_terminal_summary(self, terminalreporter):
        s = self.summary()
        if not s["cases"]:
            return
        valid = sum(v.get("ok", 0) for k, v in self.outcomes.items() if k.endswith(":valid"))
        terminalreporter.write_sep("-", self.title)
        terminalreporter.write_line(
            f"{self.title}: {s['cases']} cases ({valid} valid calls checked against the canonical call, "
            f"the rest bad inputs) in {s['seconds']} s")
        for test, n in sorted(self.cases.items()):
            terminalreporter.write_line(f"  {test}: {n}")

    def session(self, config):
        """Register the report (once) and yield; then write the JSON summary if asked."""
        pm = config.pluginmanager
        if not pm.has_plugin(self.title):
            pm.register(self, self.title)
        yield
        path = os.environ.get(self.env)
        if path:
            with open(path, "w") as f:
                json.dump(self.summary(), f, indent=1, sort_keys=True)


@pytest.fixture(scope="module", autouse=True)
def _fuzz_report(request):
    yield from FuzzReport("pykfac fuzz", CASES, OUTCOMES, "PYKFAC_FUZZ_REPORT").session(request.config)


# ---------------------------------------------------------------------------
# array forms
# ---------------------------------------------------------------------------
INT_FORMS = ("int8", "int16", "int32", "int64", ">i4")
UINT_FORMS = ("uint8", "uint16", "uint32", "uint64")
FLOAT_FORMS = ("f64", "f32", "f16", ">f8")
LAYOUT_FORMS = ("fortran", "strided", "reversed", "transposed", "readonly", "unaligned", "broadcast",
                "list", "memoryview")
REAL_FORMS = FLOAT_FORMS + INT_FORMS + UINT_FORMS + LAYOUT_FORMS
LABEL_FORMS = INT_FORMS + UINT_FORMS + (">i2", "strided", "reversed", "readonly", "unaligned", "broadcast",
                                         "list", "memoryview")
BAD_DTYPES = ("complex128", "complex64", "object", "bool", "str", "bytes", "datetime64", "timedelta64",
              "structured")
_DTYPE = {"f64": np.float64, "f32": np.float32, "f16": np.float16, ">f8": ">f8", "int8": np.int8,
          "int16": np.int16, "int32": np.int32, "int64": np.int64, ">i4": ">i4", ">i2": ">i2",
          "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64}


def _strided(x):
    big = np.zeros(tuple(2 * s for s in x.shape), dtype=x.dtype)
    view = big[tuple(slice(None, None, 2) for _ in x.shape)]
    view[...] = x
    return view


def _reversed(x):
    full = tuple(slice(None, None, -1) for _ in x.shape)
    return x[full].copy()[full]


def _unaligned(x):
    buf = np.zeros(x.nbytes + 1, dtype=np.uint8)
    out = buf[1:].view(x.dtype).reshape(x.shape)
    out[...] = x
    return out


def canonical_values(form, base, integral):
    """The values a form can carry exactly (ints for integer dtypes)."""
    if form in INT_FORMS + UINT_FORMS + (">i2",) and not integral:
        base = np.round(base)
        if form in UINT_FORMS:
            base = np.abs(base)
    if form == "broadcast" and base.ndim and base.shape[0]:
        base = np.broadcast_to(base[:1], base.shape).copy()
    return base


def as_form(form, x):
    """x (C-contiguous, exact in every dtype the form uses) passed as `form`."""
    if form in _DTYPE:
        return x.astype(_DTYPE[form])
    if form == "fortran":
        return np.asfortranarray(x)
    if form == "strided":
        return _strided(x)
    if form == "reversed":
        return _reversed(x)
    if form == "transposed":
        return np.ascontiguousarray(x.T).T
    if form == "readonly":
        y = x.copy()
        y.setflags(write=False)
        return y
    if form == "unaligned":
        return _unaligned(x)
    if form == "broadcast":
        return np.broadcast_to(x[:1], x.shape) if x.ndim and x.shape[0] else x.copy()
    if form == "list":
        return x.tolist()
    if form == "memoryview":
        return memoryview(x.copy())
    # invalid dtypes
    if form == "complex128":
        return x.astype(np.complex128)
    if form == "complex64":
        return x.astype(np.complex64)
    if form == "object":
        return x.astype(object)
    if form == "bool":
        return x != 0
    if form == "str":
        return x.astype(str)
    if form == "bytes":
        return x.astype("S8")
    if form == "datetime64":
        return np.zeros(x.shape, "datetime64[s]")
    if form == "timedelta64":
        return np.round(x).astype(np.int64).astype("m8[s]")
    if form == "structured":
        return np.zeros(x.shape, dtype=[("a", "f8")])
    raise AssertionError(form)


def snapshot(args):
    """Everything observable about the caller's arrays (and lists) in args."""
    out = {}
    for key, val in args.items():
        if isinstance(val, pk.MLP):
            val = val.theta
        if isinstance(val, memoryview):
            val = np.asarray(val)
        if isinstance(val, np.ndarray):
            out[key] = (val.tobytes(), val.dtype.str, val.shape, val.strides, val.flags.writeable,
                        val.flags.c_contiguous, val.__array_interface__["data"][0])
        elif isinstance(val, (list, tuple)):
            out[key] = repr(val)
    return out


def as_arrays(result):
    if isinstance(result, pk.EKFACCurvature):
        return [result.to_dense(), *result.A, *result.G, *result.scales]
    if isinstance(result, pk.KronCurvature):
        return [result.to_dense(), *result.A, *result.G]
    if isinstance(result, (tuple, list)):
        return [x for r in result for x in as_arrays(r)]
    if result is None:
        return []
    return [np.asarray(result)]


def assert_identical(got, want):
    got, want = as_arrays(got), as_arrays(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        np.testing.assert_array_equal(g, w)
        assert np.all(np.isfinite(g))


def check_case(test, label, fn, args, canon, expect):
    """Run fn(args); check against fn(canon) or the expected exception.
    label: the bad input ("X:nan", ...) or "<function>:valid"."""
    before = snapshot(args)
    exc = None
    try:
        got = fn(args)
    except (TypeError, ValueError, pk.LinAlgError, MemoryError) as e:
        exc = e
    record(test, label, outcome_of(exc))
    assert snapshot(args) == before, f"{label}: the caller's arrays changed"
    if expect is None:
        if exc is not None:
            raise AssertionError(f"{label}: valid call raised {type(exc).__name__}: {exc}") from exc
        assert_identical(got, fn(canon))
    else:
        types, pattern = expect
        if exc is None:
            raise AssertionError(f"{label}: expected {types} matching {pattern!r}, got a result")
        assert isinstance(exc, types), f"{label}: {type(exc).__name__}: {exc}"
        assert re.match(pattern, str(exc)), f"{label}: message {str(exc)!r} does not match {pattern!r}"


# ---------------------------------------------------------------------------
# problems
# ---------------------------------------------------------------------------
@st.composite
def problems(draw, max_layers=3, max_width=4, max_n=5):
    loss = draw(st.sampled_from(LOSSES), label="loss")
    L = draw(st.integers(1, max_layers), label="layers")
    K = draw(st.integers(2 if loss == "ce" else 1, max_width), label="K")
    sizes = [draw(st.integers(1, max_width)) for _ in range(L)] + [K]
    acts = [draw(st.sampled_from(pk.ACTIVATIONS)) for _ in range(L - 1)]
    dtype = draw(st.sampled_from([np.float64, np.float32]), label="dtype")
    net = pk.MLP(sizes, activation=acts, dtype=dtype, seed=draw(st.integers(0, 2**16)))
    N = draw(st.integers(1, max_n), label="N")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="values"))
    return net, loss, N, rng


def eighths(rng, shape):
    """Values exact in float16 and float32: k/8 with |k| <= 16."""
    return rng.integers(-16, 17, size=shape) / 8.0


def draw_real(draw, rng, shape, name, allow_forms=True):
    """(canonical, passed, form) for a real-valued argument."""
    form = draw(st.sampled_from(REAL_FORMS), label=f"{name} form") if allow_forms else "f64"
    base = eighths(rng, shape)
    canon = canonical_values(form, base, False)
    return canon, as_form(form, canon), form


def draw_labels(draw, rng, loss, N, K, name="y"):
    """(canonical, passed, form) for valid labels of `loss`."""
    if loss == "ce":
        form = draw(st.sampled_from(LABEL_FORMS), label="y form")
        canon = canonical_values(form, rng.integers(0, K, size=N).astype(np.int64), True)
        return canon, as_form(form, canon), form
    if loss == "bce":
        # one 0/1 label per output: (N,) (or a column) for one output, (N, K) otherwise
        form = draw(st.sampled_from(("f64", "f32", "f16", "int8", "uint8", "int64", "bool", "pm1", "strided",
                                     "reversed", "readonly", "unaligned", "list") + (("column",) if K == 1 else ())),
                    label="y form")
        base = rng.integers(0, 2, size=N if K == 1 else (N, K)).astype(np.float64)
        if form == "pm1":
            canon = 2 * base - 1
            return canon, canon.astype(np.int8), form
        if form == "column":
            return base[:, None], base[:, None].copy(), form
        if form == "bool":
            return base, base > 0, form
        return base, as_form(form, base), form
    shape = (N,) if K == 1 and draw(st.booleans(), label="y 1-D") else (N, K)
    return draw_real(draw, rng, shape, name)


# ---------------------------------------------------------------------------
# corruptions: each returns (new value, (exception types, message regex))
# ---------------------------------------------------------------------------
def _nan_at(rng, x, value):
    x = np.array(x, dtype=np.float64)
    x.flat[rng.integers(0, x.size)] = value
    return x


def _num(name):
    return rf"^{re.escape(name)}\b"


def bad_real(draw, rng, canon, name, public, kind, allow_none=True):
    """Corruptions of a real array argument with canonical value `canon`.
    kind: "X" (rows = samples), "cols" (last axis = columns, > 0), "y".
    (More rows of X are not an error by themselves: the other arguments'
    corruptions cover a mismatched N.)"""
    options = ["nan", "inf", "-inf", "dtype", "ndim+", "ndim-"] + (["none"] if allow_none else [])
    if kind == "X":
        options += ["width+", "width-", "empty"]
    else:
        options += ["len+", "len-"]
    if kind == "cols":
        options += ["zero_cols"]
    if kind == "y" and canon.ndim == 2:
        options += ["width+"]
    what = draw(st.sampled_from(options), label=f"{public} corruption")
    val = ValueError, _num(public)
    if what in ("nan", "inf", "-inf"):
        return _nan_at(rng, canon, {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[what]), \
            (ValueError, rf"^{public}\b.*(NaN|Inf)"), what
    if what == "dtype":
        form = draw(st.sampled_from(BAD_DTYPES), label=f"{public} bad dtype")
        return as_form(form, canon), (TypeError, _num(public)), f"dtype_{form}"
    if what == "none":
        return None, ((TypeError, ValueError), _num(public)), what
    if what == "ndim+":  # two axes more: one more can be valid ((D,) -> (D, 1))
        return canon[..., None, None], val, what
    if what == "ndim-":
        return np.float64(1.0), val, what
    if what == "len+":
        return np.concatenate([canon, canon[:1]]), val, what
    if what == "len-":
        return canon[1:] if len(canon) > 1 else canon[:0], (ValueError, _num(public)), what
    if what == "width+":
        return np.concatenate([canon, canon[:, :1]], axis=1), val, what
    if what == "width-":
        return canon[:, :-1], val, what
    if what == "empty":
        return canon[:0], (ValueError, rf"^{public}\b.*empty"), what
    if what == "zero_cols":
        return canon[..., :0], val, what
    raise AssertionError(what)


def bad_labels(draw, rng, loss, canon, K, allow_none=True):
    N = canon.shape[0]
    if loss == "mse":
        return bad_real(draw, rng, canon, "y", "y", "y", allow_none)
    common = ["len+", "len-", "ndim+", "dtype"] + (["none"] if allow_none else [])
    common += ["one_per_row"] if loss == "bce" and K > 1 else []
    if loss == "ce":
        what = draw(st.sampled_from(common + ["negative", "too_big", "huge", "uint64_max", "float",
                                              "float_list"]), label="y corruption")
    else:
        what = draw(st.sampled_from(common + ["two", "half", "nan", "minus_two"]), label="y corruption")
    val, typ = (ValueError, r"^y\b"), (TypeError, r"^y\b")
    i = int(rng.integers(0, N))
    if what == "len+":
        return np.concatenate([canon, canon[:1]]), val, what
    if what == "len-":
        return canon[1:], val, what
    if what == "ndim+":
        return np.stack([canon, canon], axis=-1), val, what
    if what == "one_per_row":  # single-output labels for a multi-label network
        return np.ascontiguousarray(canon[:, 0]), val, what
    if what == "none":
        return None, typ, what
    if what == "dtype":
        bad = [f for f in BAD_DTYPES if not (loss == "bce" and f == "bool")]
        form = draw(st.sampled_from(bad), label="y bad dtype")
        return as_form(form, canon), typ, f"dtype_{form}"
    y = np.array(canon)
    if what == "negative":
        y[i] = -1
    elif what == "too_big":
        y[i] = K
    elif what == "huge":
        y[i] = np.iinfo(np.int64).max
    elif what == "uint64_max":
        y = y.astype(np.uint64)
        y[i] = np.iinfo(np.uint64).max
    elif what == "float":
        return y.astype(np.float64), typ, what
    elif what == "float_list":
        return [float(v) for v in y], typ, what
    elif what in ("two", "half", "nan", "minus_two"):
        y = y.astype(np.float64)
        y[i] = {"two": 2.0, "half": 0.5, "nan": np.nan, "minus_two": -2.0}[what]
    return y, val, what


def bad_net(draw, net):
    what = draw(st.sampled_from(["not_mlp", "theta_nan", "theta_inf"]), label="net corruption")
    if what == "not_mlp":
        return object(), (TypeError, r"^net\b"), what
    bad = net.copy()
    bad.theta[int(draw(st.integers(0, net.num_params - 1)))] = np.nan if what == "theta_nan" else -np.inf
    return bad, (ValueError, r"^net\.theta\b.*(NaN|Inf)"), what


def bad_loss(draw, net):
    K = net.n_outputs
    options = ["nll", "CE", "ce ", "", None, b"ce", 3]
    options += ["ce"] if K < 2 else []
    return draw(st.sampled_from(options), label="loss corruption")


def bad_operator(draw):
    """A bad ``A`` for spectral_density / trace_estimate: (value, expected, label)."""
    what = draw(st.sampled_from(["rectangular", "vector", "empty", "string", "complex", "nan_products",
                                 "inf_products"]), label="A corruption")
    val = (ValueError, r"^A\b")
    if what == "rectangular":
        return np.ones((3, 2)), val, what
    if what == "vector":
        return np.ones(3), val, what
    if what == "empty":
        return np.zeros((0, 0)), val, what
    if what == "string":
        return "A", val, what
    if what == "complex":
        return np.eye(3, dtype=np.complex128), (TypeError, r"^A\b"), what
    bad = np.eye(3)
    bad[1, 2] = np.nan if what == "nan_products" else np.inf
    return bad, (ValueError, r"^A\b.*(NaN|Inf)"), what


# (option, bad value, exception) for spectral_density's own options
BAD_SPECTRAL = [
    ("num_points", 1, ValueError), ("num_points", 2.0, ValueError), ("num_points", True, ValueError),
    ("num_repeats", 0, ValueError), ("num_repeats", None, ValueError), ("num_steps", 0, ValueError),
    ("num_steps", "8", ValueError), ("kappa", 0.0, ValueError), ("kappa", -1, ValueError),
    ("kappa", float("nan"), ValueError), ("kappa", "3", ValueError), ("margin", -0.1, ValueError),
    ("margin", float("inf"), ValueError), ("boundaries", (1.0, 0.0), ValueError),
    ("boundaries", (0.0, float("nan")), ValueError), ("boundaries", (2.0, 2.0), ValueError),
    ("boundaries", "ab", TypeError), ("boundaries", (1.0,), TypeError), ("boundaries", 3.0, TypeError),
]


# ---------------------------------------------------------------------------
# the core functions
# ---------------------------------------------------------------------------
def _ops(cls):
    def call(a):
        return cls(a["net"], a["X"], a["y"], a["loss"]) @ a["V"]
    return call


def _fisher_mc(a):
    op = pk.FisherMCOperator(a["net"], a["X"], a["y"], a["loss"], mc_samples=a["mc_samples"], seed=a["seed"])
    return op @ a["V"]


def _ekfac(a):
    return pk.ekfac(a["net"], a["data"](a["X"], a["y"]), a["loss"], kind=a["kind"], mc_samples=a["mc_samples"],
                    seed=a["seed"])


# spectral_density and trace_estimate take an operator: a["op"] builds it from
# (net, X, y, loss), so the corruptions of those arguments reach them through
# the operator's constructor ("A" replaces the operator itself)
def _spectral_density(a):
    return pk.spectral_density(a["op"](a["net"], a["X"], a["y"], a["loss"]), seed=a["seed"], **a["sd"])


def _xtrace(a):
    return pk.trace_estimate(a["op"](a["net"], a["X"], a["y"], a["loss"]), a["num_matvecs"],
                             method=a["method"], seed=a["seed"])


# name -> (call(args), arguments it takes besides net, public name of V)
FUNCS = {
    "forward": (lambda a: a["net"](a["X"]), ("X",), None),
    "features": (lambda a: a["net"].features(a["X"]), ("X",), None),
    "loss": (lambda a: pk.loss(a["net"], a["X"], a["y"], a["loss"]), ("X", "y", "loss"), None),
    "loss_and_grad": (lambda a: pk.loss_and_grad(a["net"], a["X"], a["y"], a["loss"]), ("X", "y", "loss"), None),
    "loss_per_sample": (lambda a: pk.loss_per_sample(a["net"], a["X"], a["y"], a["loss"]), ("X", "y", "loss"),
                        None),
    "jacobian": (lambda a: pk.jacobian(a["net"], a["X"]), ("X",), None),
    "jvp": (lambda a: pk.jvp(a["net"], a["X"], a["V"]), ("X", "V"), "v"),
    "vjp": (lambda a: pk.vjp(a["net"], a["X"], a["U"]), ("X", "U"), "u"),
    "hessian": (lambda a: pk.hessian(a["net"], a["X"], a["y"], a["loss"]), ("X", "y", "loss"), None),
    "hvp": (lambda a: pk.hvp(a["net"], a["X"], a["y"], a["loss"], a["V"]), ("X", "y", "loss", "V"), "V"),
    "ggn": (lambda a: pk.ggn(a["net"], a["X"], a["y"], a["loss"]), ("X", "y", "loss"), None),
    "ggn_matvec": (lambda a: pk.ggn_matvec(a["net"], a["X"], a["y"], a["loss"], a["V"]),
                   ("X", "y", "loss", "V"), "V"),
    "residual_matvec": (lambda a: pk.residual_matvec(a["net"], a["X"], a["y"], a["loss"], a["V"]),
                        ("X", "y", "loss", "V"), "V"),
    "diag_ggn": (lambda a: pk.diag_ggn(a["net"], a["X"], a["y"], a["loss"], mc_samples=a["mc_samples"],
                                       seed=a["seed"]), ("X", "y", "loss", "mc_samples", "seed"), None),
    "empirical_fisher_diag": (lambda a: pk.empirical_fisher_diag(a["net"], a["X"], a["y"], a["loss"]),
                              ("X", "y", "loss"), None),
    "output_curvature": (lambda a: pk.output_curvature(a["net"], a["X"], a["loss"], y=a["y"]),
                         ("X", "y", "loss"), None),
    "kfac": (lambda a: pk.kfac(a["net"], a["data"](a["X"], a["y"]), a["loss"], kind=a["kind"],
                               mc_samples=a["mc_samples"], seed=a["seed"]),
             ("X", "y", "loss", "kind", "mc_samples", "seed"), None),
    "GGNOperator": (_ops(pk.GGNOperator), ("X", "y", "loss", "V"), None),
    "HessianOperator": (_ops(pk.HessianOperator), ("X", "y", "loss", "V"), None),
    "diag_hessian": (lambda a: pk.diag_hessian(a["net"], a["X"], a["y"], a["loss"]), ("X", "y", "loss"), None),
    "ekfac": (_ekfac, ("X", "y", "loss", "kind", "mc_samples", "seed", "data"), None),
    "EFOperator": (_ops(pk.EFOperator), ("X", "y", "loss", "V"), None),
    "FisherMCOperator": (_fisher_mc, ("X", "y", "loss", "V", "mc_samples", "seed"), None),
    "spectral_density": (_spectral_density, ("X", "y", "loss", "A", "sd", "seed"), None),
    "trace_estimate_xtrace": (_xtrace, ("X", "y", "loss", "A", "num_matvecs", "method", "seed"), None),
}
EKFAC_KINDS = ("empirical", "exact", "mc")  # kfac's kinds but "kfra"
OPERATORS = {"ggn": pk.GGNOperator, "hessian": pk.HessianOperator, "ef": pk.EFOperator}

DATA_FORMS = {
    "pair": lambda X, y: (X, y),
    "list": lambda X, y: [(X, y)],
    "generator": lambda X, y: (b for b in [(X, y)]),
    "two_batches": lambda X, y: [(X[:1], y[:1]), (X[1:], y[1:])],
}


def build_case(draw, name):
    """(args, canonical args, expected error or None, label)."""
    fn, takes, vname = FUNCS[name]
    net, loss, N, rng = draw(problems())
    d_in, K, D = net.sizes[0], net.n_outputs, net.num_params
    # which single argument is corrupted (None: all valid)
    targets = [None, None, None, "net"] + [t for t in takes if t not in ("data",) or name == "ekfac"]
    if name in ("forward", "features"):
        targets.remove("net")
    if name.endswith("Operator"):
        targets = [t for t in targets if t != "V"]  # scipy checks V's shape itself
    target = draw(st.sampled_from(targets), label="corrupted argument")
    args, canon = {"net": net}, {"net": net}
    expect, label = None, "valid"

    X_c, X, _ = draw_real(draw, rng, (N, d_in), "X")
    args["X"], canon["X"] = X, X_c
    if "y" in takes:
        y_c, y, _ = draw_labels(draw, rng, loss, N, K)
        if name == "output_curvature" and draw(st.booleans(), label="without y"):
            y_c = y = None
        args["y"], canon["y"] = y, y_c
        args["loss"] = canon["loss"] = np.str_(loss) if draw(st.booleans(), label="np.str_ loss") else loss
    m = draw(st.integers(1, 3), label="m")
    one_col = draw(st.booleans(), label="1-D vector")
    if "V" in takes:
        shape = (D,) if one_col else (D, m)
        V_c, V, form = draw_real(draw, rng, shape, "V")
        if form == "memoryview" and name.endswith("Operator"):
            V = np.asarray(V)  # scipy's `op @ x` takes a memoryview for a scalar
        args["V"], canon["V"] = V, V_c
    if "U" in takes:
        shape = (N, K) if one_col else (N, K, m)
        U_c, U, _ = draw_real(draw, rng, shape, "u")
        args["U"], canon["U"] = U, U_c
    if "mc_samples" in takes:
        mc = draw(st.sampled_from([0, 1, 2, 3]) if name == "diag_ggn" else st.integers(1, 3), label="mc_samples")
        args["mc_samples"] = canon["mc_samples"] = mc
    if "seed" in takes:
        seed = draw(st.integers(0, 2**64 - 1), label="seed")
        args["seed"] = canon["seed"] = draw(st.sampled_from([seed, np.uint64(seed)]), label="seed type")
    if "kind" in takes:
        kinds = EKFAC_KINDS if name == "ekfac" else sorted(KFAC_KINDS)
        args["kind"] = canon["kind"] = draw(st.sampled_from(kinds), label="kind")
        # ekfac reads the data twice: an iterator is a corruption ("data" target)
        forms = [f for f in sorted(DATA_FORMS) if not (name == "ekfac" and f == "generator")]
        form = draw(st.sampled_from(forms), label="data form")
        sliceable = isinstance(args["X"], (np.ndarray, list)) and isinstance(args["y"], (np.ndarray, list))
        if form == "two_batches" and (N < 2 or target in ("X", "y") or not sliceable):
            form = "pair"
        args["data"] = canon["data"] = DATA_FORMS[form]
    if "A" in takes:
        op = draw(st.sampled_from(sorted(OPERATORS)), label="operator")
        args["op"] = canon["op"] = OPERATORS[op]
    if "sd" in takes:
        sd = {"num_points": draw(st.sampled_from([2, 17, np.int64(40)]), label="num_points"),
              "num_repeats": draw(st.sampled_from([1, 2]), label="num_repeats"),
              "num_steps": draw(st.sampled_from([1, 3, 8, 100]), label="num_steps"),  # capped at D
              "kappa": draw(st.sampled_from([3.0, 1, np.float32(0.5)]), label="kappa")}
        extra = draw(st.sampled_from(["default", "margin0", "boundaries"]), label="grid")
        if extra == "margin0":
            sd["margin"] = 0.0
        elif extra == "boundaries":
            sd["boundaries"] = (-1.0, np.float32(2.5))
        args["sd"], canon["sd"] = sd, dict(sd)
    if "num_matvecs" in takes:
        args["num_matvecs"] = canon["num_matvecs"] = draw(st.sampled_from([4, 5, 8, np.int32(9)]),
                                                          label="num_matvecs")
        args["method"] = canon["method"] = "xtrace"

    if target == "net":
        args["net"], expect, what = bad_net(draw, net)
        label = f"net:{what}"
    elif target == "X":
        args["X"], expect, what = bad_real(draw, rng, X_c, "X", "X", "X")
        label = f"X:{what}"
    elif target == "y":
        if canon["y"] is None:  # output_curvature without labels: corrupt them anyway
            canon["y"] = draw_labels(draw, rng, loss, N, K)[0]
        # y=None is valid for output_curvature
        args["y"], expect, what = bad_labels(draw, rng, loss, canon["y"], K,
                                             allow_none=name != "output_curvature")
        label = f"y[{loss}]:{what}"
    elif target == "loss":
        args["loss"] = bad_loss(draw, net)
        expect, label = (ValueError, r"^loss\b"), f"loss:{args['loss']!r}"
    elif target == "V":
        args["V"], expect, what = bad_real(draw, rng, canon["V"], "V", vname, "cols")
        label = f"{vname}:{what}"
    elif target == "U":
        args["U"], expect, what = bad_real(draw, rng, canon["U"], "u", vname, "cols")
        label = f"u:{what}"
    if target in ("V", "U") and expect is not None and vname != "V":
        label = f"{vname}:{label.split(':', 1)[1]}"
    elif target == "mc_samples":
        zero_bad = name in ("kfac", "ekfac", "FisherMCOperator")
        bad = draw(st.sampled_from([-1, 1.5, True, 2**40, "2", None] + ([0] if zero_bad else [])),
                   label="bad mc_samples")
        if name in ("kfac", "ekfac") and bad == 0 and args["kind"] != "mc":
            bad = -1
        args["mc_samples"] = bad
        isint = isinstance(bad, int) and not isinstance(bad, bool)
        expect = ((ValueError if isint else TypeError), r"^mc_samples\b")
        label = f"mc_samples:{bad!r}"
    elif target == "seed":
        bad = draw(st.sampled_from([-1, 2**64, 1.5, "0", True, [1]]), label="bad seed")
        args["seed"] = bad
        isint = isinstance(bad, int) and not isinstance(bad, bool)
        expect = ((ValueError if isint else TypeError), r"^seed\b")
        label = f"seed:{bad!r}"
    elif target == "kind":
        bad_kinds = ["fisher", "EXACT", None, 0] + (["kfra"] if name == "ekfac" else [])
        args["kind"] = draw(st.sampled_from(bad_kinds), label="bad kind")
        expect, label = (ValueError, r"^kind\b"), f"kind:{args['kind']!r}"
    elif target == "data":  # ekfac: an iterator cannot be read twice
        args["data"] = DATA_FORMS["generator"]
        expect, label = (TypeError, r"^data\b"), "data:iterator"
    elif target == "A":
        bad, expect, what = bad_operator(draw)
        args["op"] = lambda *_: bad
        label = f"A:{what}"
    elif target == "sd":
        key, bad, typ = draw(st.sampled_from(BAD_SPECTRAL), label="bad spectral option")
        args["sd"] = {**args["sd"], key: bad}
        expect, label = (typ, rf"^{key}\b"), f"{key}:{bad!r}"
    elif target == "num_matvecs":
        args["num_matvecs"] = draw(st.sampled_from([3, 0, -4, 4.0, True, "6", None]), label="bad num_matvecs")
        expect, label = (ValueError, r"^num_matvecs\b"), f"num_matvecs:{args['num_matvecs']!r}"
    elif target == "method":
        args["method"] = draw(st.sampled_from(["XTrace", "xtrace ", "x-trace", None, 3]), label="bad method")
        expect, label = (ValueError, r"^method\b"), f"method:{args['method']!r}"
    if expect is not None and target in ("X", "y") and name in ("kfac", "ekfac") and args["X"] is None:
        expect = ((TypeError, ValueError), r"^(X|data)\b")
    return fn, args, canon, expect, label


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_fuzz_core_function(name):
    n_examples = {"hessian": 150, "HessianOperator": 120, "GGNOperator": 120, "kfac": 400, "ekfac": 300,
                  "EFOperator": 120, "FisherMCOperator": 120, "spectral_density": 150,
                  "trace_estimate_xtrace": 150}.get(name, 220)

    @fuzz_settings(n_examples)
    @given(data=st.data())
    def run(data):
        fn, args, canon, expect, label = build_case(data.draw, name)
        check_case(f"core:{name}", label if expect else f"{name}:valid", fn, args, canon, expect)

    run()


# ---------------------------------------------------------------------------
# maths identities on random shapes (float64)
# ---------------------------------------------------------------------------
def _close(a, b, what, rtol=1e-9, atol=1e-10):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(1.0, float(np.abs(b).max()) if b.size else 1.0)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    err = float(np.abs(a - b).max()) if a.size else 0.0
    assert err <= atol * scale + rtol * scale, f"{what}: max error {err:.3g} (scale {scale:.3g})"


@fuzz_settings(300)
@given(data=st.data())
def test_fuzz_identities(data):
    """Consistency of every quantity with the Jacobian and output curvature
    on random shapes (N = 1, width 1, K = 1 included)."""
    draw = data.draw
    net, loss, N, rng = draw(problems(max_n=4))
    net = pk.MLP(net.sizes, activation=list(net.activations), dtype=np.float64,
                 seed=draw(st.integers(0, 999)))
    K, D = net.n_outputs, net.num_params
    X = rng.normal(size=(N, net.sizes[0]))
    if loss == "ce":
        y = rng.integers(0, K, size=N)
    elif loss == "bce":
        y = rng.integers(0, 2, size=N if K == 1 else (N, K)).astype(float)
    else:
        y = rng.normal(size=(N, K))
    V = rng.normal(size=(D, 2))
    U = rng.normal(size=(N, K, 2))
    J = pk.jacobian(net, X)
    oc = pk.output_curvature(net, X, loss, y=y)
    G = np.einsum("nkd,nkl,nle->de", J, oc.hessian, J)
    _close(np.einsum("nkl,njl->nkj", oc.sqrt, oc.sqrt), oc.hessian, "S S^T = Lambda")
    _close(pk.jvp(net, X, V), np.einsum("nkd,dm->nkm", J, V), "jvp")
    _close(pk.vjp(net, X, U), np.einsum("nkd,nkm->dm", J, U), "vjp")
    _close(pk.ggn(net, X, y, loss), G, "ggn = J^T Lambda J")
    _close(pk.ggn_matvec(net, X, y, loss, V), G @ V, "ggn_matvec")
    _close(pk.diag_ggn(net, X, y, loss), np.diag(G), "diag_ggn")
    value, grad = pk.loss_and_grad(net, X, y, loss)
    _close(grad, np.einsum("nkd,nk->d", J, oc.grad), "grad = J^T dl/df")
    per = pk.loss_per_sample(net, X, y, loss)
    assert value == pytest.approx(per.sum(), rel=1e-12, abs=1e-12)
    grads = np.stack([pk.loss_and_grad(net, X[i:i + 1], y[i:i + 1], loss)[1] for i in range(N)])
    _close(pk.empirical_fisher_diag(net, X, y, loss), (grads ** 2).sum(0), "empirical Fisher diagonal")
    H = pk.hessian(net, X, y, loss)
    _close(H, H.T, "Hessian symmetric")
    _close(pk.hvp(net, X, y, loss, V), H @ V, "hvp")
    _close(pk.residual_matvec(net, X, y, loss, V), (H - G) @ V, "residual = H - G")
    _close(pk.diag_hessian(net, X, y, loss), np.diag(H), "diag_hessian = diag(H)")
    _close(pk.EFOperator(net, X, y, loss) @ V, grads.T @ (grads @ V), "EFOperator = sum_n g_n g_n^T")
    # XTrace with k = m/2 > D sign vectors: every projector P_i is I, so exact
    tr = pk.trace_estimate(pk.GGNOperator(net, X, y, loss), 2 * D + 2, method="xtrace",
                           seed=draw(st.integers(0, 99), label="xtrace seed"))
    _close(np.float64(tr), np.trace(G), "xtrace with m > 2D = tr(GGN)")
    kc = pk.kfac(net, (X[:1], y[:1]), loss, kind=draw(st.sampled_from(["exact", "kfra"])))
    G1 = pk.ggn(net, X[:1], y[:1], loss)
    # one datum: K-FAC's block is the GGN's, so EKFAC's (that block's diagonal in its own eigenbasis) is too
    E1 = pk.ekfac(net, (X[:1], y[:1]), loss).to_dense()
    for layer in net.layers:
        s = layer.slice
        _close(kc.to_dense()[s, s], G1[s, s], "K-FAC of one datum = GGN block")
        _close(E1[s, s], G1[s, s], "EKFAC of one datum = GGN block")
    CASES["identities"] += 1
    OUTCOMES["identities:valid"]["ok"] += 1


# ---------------------------------------------------------------------------
# MLP construction
# ---------------------------------------------------------------------------
@fuzz_settings(300)
@given(data=st.data())
def test_fuzz_mlp_construction(data):
    draw = data.draw
    n = draw(st.integers(0, 5), label="len(sizes)")
    widths = [draw(st.one_of(st.integers(1, 4), st.sampled_from([0, -1, 2.0, 2.5, True, "3", None,
                                                                  np.int64(2), np.uint8(3)])))
              for _ in range(n)]
    container = draw(st.sampled_from([list, tuple, np.array, iter]), label="container")
    try:
        elems = list(container(widths))  # what MLP sees (np.array converts the items)
        sizes = container(widths)
    except (TypeError, ValueError):
        elems = sizes = widths
    hidden = max(n - 2, 0)
    act = draw(st.one_of(st.sampled_from(pk.ACTIVATIONS),
                         st.lists(st.sampled_from(pk.ACTIVATIONS), min_size=hidden, max_size=hidden),
                         st.sampled_from(["swish", None, 3, ["tanh"] * (hidden + 1)])), label="activation")
    dtype = draw(st.sampled_from([np.float64, np.float32, "float32", np.dtype("float64"), float,
                                  np.int64, np.float16, np.complex128, bool, object]), label="dtype")
    ok_sizes = (2 <= n <= 65 and all(isinstance(w, (int, np.integer)) and not isinstance(w, (bool, np.bool_))
                                       and w >= 1 for w in elems))
    # a single name is checked even when no hidden layer uses it
    ok_act = (isinstance(act, str) and act in pk.ACTIVATIONS) or (
        isinstance(act, list) and len(act) == hidden and all(a in pk.ACTIVATIONS for a in act))
    ok_dtype = np.dtype(dtype) in (np.float32, np.float64)
    exc = None
    try:
        net = pk.MLP(sizes, activation=act, dtype=dtype, seed=draw(st.integers(0, 2**32)))
    except (TypeError, ValueError) as e:
        exc = e
    label = "MLP:valid" if ok_sizes and ok_act and ok_dtype else "MLP|bad"
    record("MLP", label, outcome_of(exc))
    if ok_sizes and ok_act and ok_dtype:
        assert exc is None, exc
        D = sum(o * (i + 1) for i, o in zip(net.sizes[:-1], net.sizes[1:]))
        assert net.num_params == D and net.theta.shape == (D,) and net.dtype == np.dtype(dtype)
        assert np.all(np.isfinite(net.theta))
        X = np.ones((2, net.sizes[0]))
        assert net(X).shape == (2, net.sizes[-1])
    else:
        assert exc is not None, (sizes, act, dtype)
        names = ([] if ok_sizes else ["sizes"]) + ([] if ok_act else ["activation"]) + \
            ([] if ok_dtype else ["dtype"])
        assert re.match(rf"^({'|'.join(names)})\b", str(exc)), str(exc)


@fuzz_settings(200)
@given(data=st.data())
def test_fuzz_from_params_and_theta(data):
    """MLP.from_params and the theta setter accept any real layout and copy it."""
    draw = data.draw
    net, _, _, rng = draw(problems())
    params, canon = [], []
    for layer in net.layers:
        Wc, W, _ = draw_real(draw, rng, layer.W.shape, "W")
        bc, b, _ = draw_real(draw, rng, layer.b.shape, "b")
        params.append((W, b))
        canon.append((Wc, bc))
    before = [snapshot({"W": W, "b": b}) for W, b in params]
    new = pk.MLP.from_params(params, activation=list(net.activations), dtype=net.dtype)
    assert [snapshot({"W": W, "b": b}) for W, b in params] == before
    want = np.concatenate([np.concatenate([W.ravel(), b]) for W, b in canon]).astype(net.dtype)
    np.testing.assert_array_equal(new.theta, want)
    theta_c, theta, form = draw_real(draw, rng, (net.num_params,), "theta")
    snap = snapshot({"t": theta})
    new.theta = theta
    assert snapshot({"t": theta}) == snap
    np.testing.assert_array_equal(new.theta, theta_c.astype(net.dtype))
    assert not np.shares_memory(new.theta, np.asarray(theta))
    record("from_params", "from_params:valid", "ok")


# ---------------------------------------------------------------------------
# KronCurvature
# ---------------------------------------------------------------------------
def theta_perm(out, inp):
    q = inp + 1
    return [i * q + k for i in range(out) for k in range(inp)] + [i * q + inp for i in range(out)]


def dense_blocks(A, G, sizes, shift_g=None, shift_a=None):
    blocks = []
    for l, (a, g) in enumerate(zip(A, G)):
        a, g = np.asarray(a, np.float64), np.asarray(g, np.float64)
        if shift_g is not None:
            g = g + shift_g[l] * np.eye(len(g))
            a = a + shift_a[l] * np.eye(len(a))
        p = theta_perm(sizes[l + 1], sizes[l])
        blocks.append(np.kron(g, a)[np.ix_(p, p)])
    return blocks


def block_diag(blocks):
    D = sum(len(b) for b in blocks)
    out = np.zeros((D, D))
    o = 0
    for b in blocks:
        out[o:o + len(b), o:o + len(b)] = b
        o += len(b)
    return out


def psd_factor(rng, n, singular):
    """A symmetric PSD (n x n) matrix exact in float32; `singular` zeroes one
    row and column so an eigenvalue is exactly 0."""
    B = rng.integers(-4, 5, size=(n, n + 2)) / 4.0
    M = B @ B.T / 4.0 + (np.eye(n) / 2 if not singular else 0)
    if singular:
        i = rng.integers(0, n)
        M[i, :] = 0
        M[:, i] = 0
    return M


KRON_METHODS = ("matvec", "matmul", "solve", "solve_factored", "apply_power", "logdet", "logdet_factored",
                "to_dense", "eigvals", "trace", "frobenius_norm", "scaled_solve", "operator", "operator_inverse",
                "factored_pi", "eigh")


def kron_call(method, kc, a):
    V, damp, power = a.get("V"), a.get("damping"), a.get("power")
    if method == "matvec":
        return kc.matvec(V)
    if method == "matmul":
        return kc @ V
    if method == "solve":
        return kc.solve(V, damp)
    if method == "solve_factored":
        return kc.solve(V, damp, factored=True)
    if method == "apply_power":
        return kc.apply_power(V, power, damping=damp, factored=a.get("factored", False))
    if method == "logdet":
        return kc.logdet(damp)
    if method == "logdet_factored":
        return kc.logdet(damp, factored=True)
    if method == "to_dense":
        return kc.to_dense()
    if method == "eigvals":
        return kc.eigvals()
    if method == "trace":
        return kc.trace()
    if method == "frobenius_norm":
        return kc.frobenius_norm()
    if method == "scaled_solve":
        return kc.scaled(a["c"]).solve(V, damp)
    if method == "operator":
        return kc.as_linear_operator(damping=damp) @ np.asarray(V, dtype=np.float64)
    if method == "operator_inverse":
        return kc.as_linear_operator(damping=damp, inverse=True) @ np.asarray(V, dtype=np.float64)
    if method == "factored_pi":
        return kc.factored_pi()
    if method == "eigh":
        return [x for t in kc.eigh() for x in t]
    raise AssertionError(method)


def kron_reference(method, A, G, sizes, a):
    """Dense float64 value of the call (None where not checked densely)."""
    blocks = dense_blocks(A, G, sizes)
    L = len(sizes) - 1
    damp = a.get("damping")
    damps = [float(damp)] * L if np.ndim(damp) == 0 and damp is not None else \
        (None if damp is None else [float(d) for d in damp])
    V = None if a.get("V") is None else np.asarray(a["V"], dtype=np.float64)

    def pis():
        out = []
        for Al, Gl in zip(A, G):
            ta, tg = np.trace(Al) / len(Al), np.trace(Gl) / len(Gl)
            out.append(np.sqrt(ta / tg) if ta > 0 and tg > 0 else 1.0)
        return out

    def damped(factored):
        if factored:
            gam = [np.sqrt(d) for d in damps]
            p = pis()
            return block_diag(dense_blocks(A, G, sizes, [g / q for g, q in zip(gam, p)],
                                           [g * q for g, q in zip(gam, p)]))
        shift = np.concatenate([[d] * len(b) for d, b in zip(damps, blocks)])
        return block_diag(blocks) + np.diag(shift)

    if method in ("matvec", "matmul", "operator"):
        M = block_diag(blocks) + (damped(False) - block_diag(blocks) if method == "operator" else 0)
        return M @ V
    if method in ("solve", "solve_factored", "operator_inverse"):
        return np.linalg.solve(damped(method == "solve_factored"), V)
    if method == "scaled_solve":
        c = a["c"]
        shift = np.concatenate([[d] * len(b) for d, b in zip(damps, blocks)])
        return np.linalg.solve(c * block_diag(blocks) + np.diag(shift), V)
    if method == "apply_power":
        w, Q = np.linalg.eigh(damped(a.get("factored", False)))
        w = np.where(np.abs(w) < 1e-12 * max(1.0, np.abs(w).max()), 0.0, w)
        return (Q * w ** float(a["power"])) @ Q.T @ V
    if method in ("logdet", "logdet_factored"):
        return np.linalg.slogdet(damped(method == "logdet_factored"))[1]
    if method == "to_dense":
        return block_diag(blocks)
    if method == "eigvals":
        return np.sort(np.linalg.eigvalsh(block_diag(blocks)))
    if method == "trace":
        return np.trace(block_diag(blocks))
    if method == "frobenius_norm":
        return np.linalg.norm(block_diag(blocks))
    return None


def bad_damping(draw, L):
    bad = draw(st.sampled_from([-0.5, float("nan"), float("inf"), "a", None, [0.1] * (L + 1), [-1.0] * L,
                                [[0.1]] * L, np.full(L, np.nan)]), label="bad damping")
    if isinstance(bad, str) or bad is None or (isinstance(bad, list) and bad and isinstance(bad[0], list)):
        return bad, (TypeError, r"^damping\b")
    return bad, (ValueError, r"^damping\b")


def bad_factors(draw, rng, A, G, sizes, num_data):
    """One corrupted constructor argument: the exception names it."""
    L = len(sizes) - 1
    which = draw(st.sampled_from(["A", "G"]), label="factor list")
    facs = list(A if which == "A" else G)
    l = draw(st.integers(0, L - 1), label="factor index")
    M = np.array(facs[l], dtype=np.float64)
    what = draw(st.sampled_from(["nan", "inf", "complex", "object", "str", "bool", "shape", "ndim", "asymmetric",
                                 "negative", "count", "none", "sizes", "num_data"]), label="factor corruption")
    name = f"{which}[{l}]"
    typ, val = (TypeError, rf"^{re.escape(name)}(?!\w)"), (ValueError, rf"^{re.escape(name)}(?!\w)")
    expect = val
    if what in ("nan", "inf"):
        M.flat[rng.integers(0, M.size)] = np.nan if what == "nan" else np.inf
        facs[l] = M
    elif what in ("complex", "object", "str", "bool"):
        facs[l] = as_form({"complex": "complex128"}.get(what, what), M)
        if l == 0 and which == "A":
            expect = (TypeError, r"^A\[0\](?!\w)")
        else:
            expect = typ
    elif what == "shape":
        facs[l] = np.eye(M.shape[0] + 1)
    elif what == "ndim":
        facs[l] = M.ravel()
    elif what == "asymmetric":
        if M.shape[0] < 2:
            M = np.eye(2)  # then a shape error: still this factor
        else:
            M[0, -1] += 1.0
        facs[l] = M
    elif what == "negative":  # clearly not PSD: found by the first eigh
        facs[l] = -np.eye(M.shape[0])
        expect = (ValueError, rf"^{re.escape(name)}: expected a positive semi-definite")
    elif what == "count":
        facs = facs[:-1] if draw(st.booleans()) else facs + facs[:1]
        expect = (ValueError, rf"^{which}: expected {L} factors")
    elif what == "none":
        facs[l] = None
        expect = (TypeError, rf"^{re.escape(name)}(?!\w)") if (which, l) == ("A", 0) else \
            ((TypeError, ValueError), rf"^{re.escape(name)}(?!\w)")
    args = {"A": A, "G": G, "sizes": sizes, "num_data": num_data}
    args[which] = facs
    if what == "sizes":
        args["sizes"] = draw(st.sampled_from([sizes[:1], [s + 1 for s in sizes], [0] + list(sizes[1:]),
                                              ["a"] * len(sizes)]), label="bad sizes")
        bad = args["sizes"]
        if len(bad) < 2 or 0 in bad:
            expect = (ValueError, r"^sizes(?!\w)")
        elif isinstance(bad[0], str):
            expect = (TypeError, r"^sizes(?!\w)")
        else:  # every factor has the wrong shape: the first one is named
            expect = (ValueError, r"^A\[0\](?!\w)")
    elif what == "num_data":
        args["num_data"] = draw(st.sampled_from([0, -1, 1.5, "3"]), label="bad num_data")
        expect = (ValueError, r"^num_data(?!\w)")
    exc = None
    before = snapshot({f"{k}{i}": x for k in ("A", "G") for i, x in enumerate(args[k]) if x is not None})
    try:
        kc = pk.KronCurvature(args["A"], args["G"], args["sizes"], num_data=args["num_data"])
        if what == "negative":
            kc.eigh()
    except (TypeError, ValueError, pk.LinAlgError) as e:
        exc = e
    record("kron", f"KronCurvature|{what}", outcome_of(exc))
    assert snapshot({f"{k}{i}": x for k in ("A", "G") for i, x in enumerate(args[k]) if x is not None}) == before
    assert exc is not None, f"KronCurvature accepted a bad {what}"
    assert isinstance(exc, expect[0]) and re.match(expect[1], str(exc)), (what, type(exc), str(exc))


def draw_kron_call(draw, rng, methods, D, L, tag, factored):
    """A KronCurvature / EKFACCurvature method and its arguments, at most one of them
    corrupted: (method, args, canonical args, expected error or None, label,
    whether the method takes damping). `factored`: the strategy of apply_power's flag."""
    method = draw(st.sampled_from(methods), label="method")
    one_col = draw(st.booleans(), label="1-D V")
    V_c, V, _ = draw_real(draw, rng, (D,) if one_col else (D, draw(st.integers(1, 3))), "V")
    args, canon = {"V": V}, {"V": V_c}
    damping = draw(st.sampled_from([0.0, 0.25, 1, np.float32(0.5), "per-layer", "array"]), label="damping")
    if damping == "per-layer":
        damping = [float(draw(st.sampled_from([0.0, 0.25, 2.0]))) for _ in range(L)]
    elif isinstance(damping, str):
        damping = np.full(L, 0.5)
    args["damping"] = canon["damping"] = damping
    if method == "apply_power":
        args["power"] = canon["power"] = draw(st.sampled_from([1, -1, 0.5, -0.5, 1.0, np.float64(-0.5)]))
        args["factored"] = canon["factored"] = draw(factored, label="factored")
    if method == "scaled_solve":
        args["c"] = canon["c"] = draw(st.sampled_from([0.5, 2.0, 3]))
    uses_v = method not in ("logdet", "logdet_factored", "to_dense", "eigvals", "trace", "frobenius_norm",
                            "factored_pi", "eigh")
    uses_damping = method in ("solve", "solve_factored", "apply_power", "logdet", "logdet_factored",
                              "scaled_solve", "operator", "operator_inverse")
    targets = [None, None] + (["V"] if uses_v and not method.startswith("operator") else []) + \
        (["damping"] if uses_damping else []) + (["power"] if method == "apply_power" else [])
    target = draw(st.sampled_from(targets), label="corrupted argument")
    expect, label = None, f"{tag}.{method}:valid"
    if target == "V":
        # (D, 0) is accepted (an empty result), so no zero_cols here
        args["V"], expect, what = bad_real(draw, rng, V_c, "V", "V", "kron")
        label = f"{tag}|V:{what}"
    elif target == "damping":
        args["damping"], expect = bad_damping(draw, L)
        label = f"{tag}|damping:{args['damping']!r}"
    elif target == "power":
        args["power"] = draw(st.sampled_from([2, 0, -2, "x", None]), label="bad power")
        expect = ((ValueError if isinstance(args["power"], int) else TypeError), r"^power\b")
        label = f"{tag}|power:{args['power']!r}"
    return method, args, canon, expect, label, uses_damping


@fuzz_settings(900)
@given(data=st.data())
def test_fuzz_kron(data):
    draw = data.draw
    L = draw(st.integers(1, 3), label="layers")
    sizes = [draw(st.integers(1, 4)) for _ in range(L + 1)]
    dtype = draw(st.sampled_from([np.float64, np.float32]), label="dtype")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    singular = [draw(st.booleans()) if draw(st.integers(0, 3)) == 0 else False for _ in range(2 * L)]
    A = [psd_factor(rng, s + 1, singular[l]) for l, s in enumerate(sizes[:-1])]
    G = [psd_factor(rng, s, singular[L + l]) for l, s in enumerate(sizes[1:])]
    any_singular = any(singular)
    # factor forms: the first factor fixes the dtype; the others any real form
    A_pass = [A[0].astype(dtype)] + [as_form(draw(st.sampled_from(REAL_FORMS[:4] + LAYOUT_FORMS[:6]),
                                                  label="A form"), a) for a in A[1:]]
    G_pass = [as_form(draw(st.sampled_from(REAL_FORMS[:4] + LAYOUT_FORMS[:6]), label="G form"), g) for g in G]
    num_data = draw(st.one_of(st.none(), st.integers(1, 9)), label="num_data")
    if draw(st.integers(0, 4), label="corrupt the constructor") == 0:
        bad_factors(draw, rng, A_pass, G_pass, sizes, num_data)
        return
    kc = pk.KronCurvature(A_pass, G_pass, sizes, num_data=num_data, kind="exact")
    kc_c = pk.KronCurvature([a.astype(dtype) for a in A], [g.astype(dtype) for g in G], sizes)
    A32 = [np.asarray(a, dtype=dtype) for a in A]
    G32 = [np.asarray(g, dtype=dtype) for g in G]
    D = kc.num_params

    method, args, canon, expect, label, uses_damping = draw_kron_call(draw, rng, KRON_METHODS, D, L, "kron",
                                                                        st.booleans())

    # a singular factor and zero damping make negative powers and log-dets fail
    def zero_damped():
        d = args["damping"]
        ds = [float(d)] * L if np.ndim(d) == 0 else [float(x) for x in d]
        return any(x == 0.0 for x in ds)

    if expect is None and uses_damping and any_singular and zero_damped():
        power = args.get("power", -1)
        negative = method in ("solve", "solve_factored", "logdet", "logdet_factored", "scaled_solve",
                              "operator_inverse") or (method == "apply_power" and float(power) < 0)
        if negative:
            # singular only if the zero-damped layer has a singular factor
            d = args["damping"]
            ds = [float(d)] * L if np.ndim(d) == 0 else [float(x) for x in d]
            if any(ds[l] == 0.0 and (singular[l] or singular[L + l]) for l in range(L)):
                expect = (pk.LinAlgError, r"^damping\b.*layer \d")
                label = "kron|singular factor, zero damping"

    def fn(a):
        return kron_call(method, kc, a)

    def fn_canon(a):
        return kron_call(method, kc_c, a)

    before = snapshot({**args, **{f"A{i}": x for i, x in enumerate(A_pass)},
                       **{f"G{i}": x for i, x in enumerate(G_pass)}})
    exc = None
    try:
        got = fn(args)
    except (TypeError, ValueError, pk.LinAlgError, MemoryError) as e:
        exc = e
    record("kron", label, outcome_of(exc))
    after = snapshot({**args, **{f"A{i}": x for i, x in enumerate(A_pass)},
                      **{f"G{i}": x for i, x in enumerate(G_pass)}})
    assert after == before, "the caller's arrays changed"
    if expect is not None:
        assert exc is not None, f"{label}: expected {expect}, got a result"
        assert isinstance(exc, expect[0]), f"{label}: {type(exc).__name__}: {exc}"
        assert re.match(expect[1], str(exc)), f"{label}: {exc}"
        return
    assert exc is None, f"{label}: {type(exc).__name__}: {exc}"
    # bit-identical to the call on C-contiguous canonical inputs
    ref_canon = fn_canon(canon)
    got_l, ref_l = as_arrays(got), as_arrays(ref_canon)
    assert len(got_l) == len(ref_l)
    for g, r in zip(got_l, ref_l):
        assert g.dtype == r.dtype and g.shape == r.shape
        np.testing.assert_array_equal(g, r)
        assert np.all(np.isfinite(g))
    want = kron_reference(method, A32, G32, sizes, canon)
    if want is not None:
        # damped eigenvalues lie in [1/16, ~1e3]: condition numbers below 1e5
        tol = 1e-9 if dtype == np.float64 else 1e-3
        got64 = np.asarray(got, dtype=np.float64)
        scale = max(1.0, float(np.max(np.abs(want))))
        assert np.abs(got64 - want).max() <= tol * scale, (method, np.abs(got64 - want).max(), scale)


# ---------------------------------------------------------------------------
# EKFACCurvature
# ---------------------------------------------------------------------------
EKFAC_METHODS = KRON_METHODS  # the factored variants must raise ValueError naming `factored`


def ekfac_reference(method, kc, a):
    """Dense float64 value of an EKFAC call from the object's own eigenbasis
    (Q_G ⊗ Q_A, not unique for repeated eigenvalues) and scales; None where
    not checked densely."""
    damp = a.get("damping")
    L = kc.num_layers
    damps = None if damp is None else ([float(damp)] * L if np.ndim(damp) == 0 else [float(d) for d in damp])
    V = None if a.get("V") is None else np.asarray(a["V"], dtype=np.float64)
    c = float(a.get("c", 1.0)) if method == "scaled_solve" else 1.0
    parts = []  # per layer: Q (rows in theta order) and the eigenvalues
    for l, (_, QG, _, QA) in enumerate(kc.eigh()):
        Q = np.kron(np.asarray(QG, np.float64), np.asarray(QA, np.float64))
        S = c * np.asarray(kc.scales[l], np.float64).ravel()
        parts.append((Q[theta_perm(kc.sizes[l + 1], kc.sizes[l])], S))

    def apply(f):
        blocks = [(Q * f(l, S)) @ Q.T for l, (Q, S) in enumerate(parts)]
        return block_diag(blocks)

    if method in ("matvec", "matmul"):
        return apply(lambda l, S: S) @ V
    if method == "operator":
        return apply(lambda l, S: S + damps[l]) @ V
    if method in ("solve", "operator_inverse", "scaled_solve"):
        return apply(lambda l, S: 1.0 / (S + damps[l])) @ V
    if method == "apply_power":
        return apply(lambda l, S: (S + damps[l]) ** float(a["power"])) @ V
    if method == "logdet":
        return sum(float(np.log(S + d).sum()) for (_, S), d in zip(parts, damps))
    if method == "to_dense":
        return apply(lambda l, S: S)
    if method == "eigvals":
        return np.sort(np.concatenate([S for _, S in parts]))
    if method == "trace":
        return sum(float(S.sum()) for _, S in parts)
    if method == "frobenius_norm":
        return float(np.sqrt(sum(float((S ** 2).sum()) for _, S in parts)))
    return None


def ekfac_scales(rng, sizes, singular):
    """Per layer (out, in + 1) eigenvalues k/4, 1 <= k <= 8 (exact in float16);
    a `singular` layer gets one exact zero."""
    out = []
    for l in range(len(sizes) - 1):
        S = rng.integers(1, 9, size=(sizes[l + 1], sizes[l] + 1)) / 4.0
        if singular[l]:
            S.flat[rng.integers(0, S.size)] = 0.0
        out.append(S)
    return out


def bad_scales(draw, rng, A, G, sizes, scales):
    """One corrupted `scales` constructor argument: ValueError naming it (TypeError for
    None, which is not a real array, as for the factors)."""
    L = len(sizes) - 1
    l = draw(st.integers(0, L - 1), label="scales index")
    S = np.array(scales[l], dtype=np.float64)
    what = draw(st.sampled_from(["nan", "inf", "negative", "shape", "ndim", "none", "count"]),
                label="scales corruption")
    bad = list(scales)
    if what in ("nan", "inf", "negative"):
        S.flat[rng.integers(0, S.size)] = {"nan": np.nan, "inf": np.inf, "negative": -0.25}[what]
        bad[l] = S
    elif what == "shape":
        bad[l] = np.ones((S.shape[0], S.shape[1] + 1))
    elif what == "ndim":
        bad[l] = S.ravel() if S.size > 1 else S[..., None]
    elif what == "none":
        bad[l] = None
    elif what == "count":
        bad = bad[:-1] if draw(st.booleans()) else bad + bad[:1]
    before = snapshot({f"S{i}": x for i, x in enumerate(bad) if isinstance(x, np.ndarray)})
    exc = None
    try:
        pk.EKFACCurvature(A, G, sizes, bad)
    except (TypeError, ValueError, pk.LinAlgError) as e:
        exc = e
    record("ekfac", f"EKFACCurvature|scales:{what}", outcome_of(exc))
    assert snapshot({f"S{i}": x for i, x in enumerate(bad) if isinstance(x, np.ndarray)}) == before
    assert exc is not None, f"EKFACCurvature accepted bad scales ({what})"
    want = TypeError if what == "none" else ValueError
    assert isinstance(exc, want) and re.match(r"^scales(\[\d+\])?(?!\w)", str(exc)), \
        (what, type(exc), str(exc))


@fuzz_settings(300)
@given(data=st.data())
def test_fuzz_ekfac_methods(data):
    """EKFACCurvature's overrides (matvec, apply_power, solve, logdet, dense and
    scalar summaries) and the KronCurvature methods it inherits, on random
    factors and random scales (exact zeros included): the properties of
    test_fuzz_kron, a dense reference in the object's own eigenbasis, and the
    factored forms refused with ValueError."""
    draw = data.draw
    L = draw(st.integers(1, 3), label="layers")
    sizes = [draw(st.integers(1, 4)) for _ in range(L + 1)]
    dtype = draw(st.sampled_from([np.float64, np.float32]), label="dtype")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    singular = [draw(st.integers(0, 3)) == 0 for _ in range(L)]
    A = [psd_factor(rng, s + 1, draw(st.integers(0, 5)) == 0) for s in sizes[:-1]]
    G = [psd_factor(rng, s, draw(st.integers(0, 5)) == 0) for s in sizes[1:]]
    S = ekfac_scales(rng, sizes, singular)
    forms = FLOAT_FORMS + LAYOUT_FORMS[:6]
    A_c = [a.astype(dtype) for a in A]
    G_c = [g.astype(dtype) for g in G]
    S_pass = [as_form(draw(st.sampled_from(forms), label="scales form"), x) for x in S]
    if draw(st.integers(0, 4), label="corrupt the constructor") == 0:
        bad_scales(draw, rng, A_c, G_c, sizes, S_pass)
        return
    snap_S = snapshot({f"S{i}": x for i, x in enumerate(S_pass)})
    kc = pk.EKFACCurvature(A_c, G_c, sizes, S_pass, num_data=draw(st.one_of(st.none(), st.integers(1, 9))),
                           kind="exact")
    assert snapshot({f"S{i}": x for i, x in enumerate(S_pass)}) == snap_S
    kc_c = pk.EKFACCurvature(A_c, G_c, sizes, [x.astype(dtype) for x in S])
    D = kc.num_params

    # factored=True (refused) in a quarter of the apply_power calls
    method, args, canon, expect, label, uses_damping = draw_kron_call(
        draw, rng, EKFAC_METHODS, D, L, "ekfac", st.integers(0, 3).map(lambda i: i == 0))
    if method in ("solve_factored", "logdet_factored") or (method == "apply_power" and args["factored"]):
        # refused before any other argument is looked at
        expect, label = (ValueError, r"^factored\b"), f"ekfac|{method}:factored"
    if expect is None and uses_damping:
        # a zero scale and zero damping make negative powers and log-dets fail
        d = args["damping"]
        ds = [float(d)] * L if np.ndim(d) == 0 else [float(x) for x in d]
        negative = method in ("solve", "logdet", "scaled_solve", "operator_inverse") or \
            (method == "apply_power" and float(args["power"]) < 0)
        if negative and any(ds[l] == 0.0 and singular[l] for l in range(L)):
            expect, label = (pk.LinAlgError, r"^damping\b.*layer \d"), "ekfac|zero scale, zero damping"

    before = snapshot({**args, **{f"S{i}": x for i, x in enumerate(S_pass)}})
    exc = None
    try:
        got = kron_call(method, kc, args)
    except (TypeError, ValueError, pk.LinAlgError, MemoryError) as e:
        exc = e
    record("ekfac", label, outcome_of(exc))
    after = snapshot({**args, **{f"S{i}": x for i, x in enumerate(S_pass)}})
    assert after == before, "the caller's arrays changed"
    if expect is not None:
        assert exc is not None, f"{label}: expected {expect}, got a result"
        assert isinstance(exc, expect[0]), f"{label}: {type(exc).__name__}: {exc}"
        assert re.match(expect[1], str(exc)), f"{label}: {exc}"
        return
    assert exc is None, f"{label}: {type(exc).__name__}: {exc}"
    assert_identical(got, kron_call(method, kc_c, canon))
    want = ekfac_reference(method, kc, canon)
    if want is not None:
        # damped eigenvalues lie in [1/4, 4] (zeros only where not inverted): well conditioned
        tol = 1e-9 if dtype == np.float64 else 1e-4
        got64 = np.asarray(got, dtype=np.float64)
        scale = max(1.0, float(np.max(np.abs(want))))
        assert np.abs(got64 - want).max() <= tol * scale, (method, np.abs(got64 - want).max(), scale)


@pytest.mark.parametrize("form", ["str", "complex128", "bool", "object"])
@pytest.mark.filterwarnings("ignore:Casting complex values to real")
def test_ekfac_scales_bad_dtype(form):
    """Non-real scales are refused like non-real factors: TypeError naming the argument."""
    A, G, sizes = [np.eye(3), np.eye(4)], [np.eye(3), np.eye(2)], [2, 3, 2]
    scales = [np.ones((3, 3)), as_form(form, np.ones((2, 4)))]
    with pytest.raises(TypeError, match=r"^scales\[1\](?!\w)"):
        pk.EKFACCurvature(A, G, sizes, scales)
