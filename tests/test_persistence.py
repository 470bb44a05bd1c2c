"""Save files of pk.Laplace and the optimisers (pykfac/_persist.py).

* Round trips are bit-exact: a Laplace posterior (from a network or from
  Jacobians) gives identical predictive, functional variance, LML and samples
  after load; an optimiser saved mid-run and loaded in place of the original
  continues bitwise identically to the uninterrupted run.
* Every damaged file is refused with a ValueError naming it, never loaded as
  garbage: truncation at many points, flipped bytes, edited metadata and
  arrays (with and without a recomputed checksum), missing and extra arrays,
  files that are not npz archives, files of the other kind, a mismatched
  network. Pickle is never used, for writing or reading.

The checksum is recomputed here from its documented definition (SHA-256 of
the metadata JSON, then name, dtype, shape and bytes of every array in name
order), independently of pykfac's implementation.
"""
import hashlib
import inspect
import io
import json
import pickle
import re

import numpy as np
import pytest

import pykfac as pk


# ---------------------------------------------------------------------------
# helpers: an independent reader/writer of the documented file layout
# ---------------------------------------------------------------------------
def sha256_of(meta_json, arrays):
    h = hashlib.sha256(meta_json.encode())
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(key.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def read_raw(path):
    """(meta dict, arrays dict, stored checksum) with plain NumPy."""
    with np.load(path, allow_pickle=False) as z:
        files = {k: z[k] for k in z.files}
    return json.loads(str(files.pop("meta"))), files, str(files.pop("checksum"))


def write_raw(path, meta, arrays, checksum="recompute"):
    """Write a file in the documented layout; checksum "recompute" makes it
    consistent with the (possibly edited) contents, a string is stored as is."""
    meta_json = json.dumps(meta, sort_keys=True)
    digest = sha256_of(meta_json, arrays) if checksum == "recompute" else checksum
    np.savez(path, meta=np.array(meta_json), checksum=np.array(digest), **arrays)


def refused(load, path, pattern=None):
    """load(path) raises ValueError whose message names the file."""
    with pytest.raises(ValueError) as info:
        load(path)
    msg = str(info.value)
    assert msg.startswith(str(path)), msg
    if pattern is not None:
        assert re.search(pattern, msg), msg
    return msg


# ---------------------------------------------------------------------------
# problems
# ---------------------------------------------------------------------------
def cls_data(N=24, d=4, K=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, d)), rng.integers(0, K, size=N)


def fitted_laplace(structure="kron", likelihood="classification", subset="all", dtype=np.float64, **kw):
    sizes = [4, 6, 5, 1 if likelihood == "binary" else 3]
    rng = np.random.default_rng(1)
    net = pk.MLP(sizes, activation=["tanh", "relu"], seed=2, dtype=dtype)
    X = rng.normal(size=(20, 4))
    if likelihood == "regression":
        y = rng.normal(size=(20, 3))
    elif likelihood == "binary":
        y = rng.integers(0, 2, size=20).astype(float)
    else:
        y = rng.integers(0, 3, size=20)
    la = pk.Laplace(net, likelihood, structure, subset, **kw).fit((X, y))
    return la, net, X


def jacobian_laplace(structure="full", dtype=np.float64, theta_map=True, loss=True, **kw):
    net = pk.MLP([3, 5, 3], seed=4, dtype=dtype)
    X, y = cls_data(N=10, d=3, K=3, seed=5)
    J = pk.jacobian(net, X)
    F = net(X)
    la = pk.Laplace.from_jacobians(J, f_map=F, likelihood="classification", structure=structure,
                                   theta_map=net.theta if theta_map else None,
                                   y=y if loss else None, **kw)
    Xt, _ = cls_data(N=7, d=3, K=3, seed=6)
    return la, pk.jacobian(net, Xt), net(Xt)


def laplace_outputs(la, X=None, Jt=None, Ft=None):
    """Everything a loaded posterior must reproduce bit for bit."""
    out = {}
    if X is not None:
        out["predictive"] = la.predictive(X)
        out["predictive_mc"] = la.predictive(X, link_approx="mc", n_samples=20, seed=3)
        out["fv"] = la.functional_variance(X)
        out["kernel"] = la.kernel(X[:3], X[3:6])
    else:
        out["predictive"] = la.predictive(jacobians=Jt, f_map=Ft)
        out["fv"] = la.functional_variance(jacobians=Jt)
    if la.loss is not None and la.mean is not None:
        out["lml"] = la.log_marginal_likelihood()
        out["lml_other_prior"] = la.log_marginal_likelihood(prior_precision=0.37)
    out["logdet"] = la.log_det_posterior_precision()
    out["samples"] = la.sample(6, seed=11)
    out["precision"] = la.posterior_precision_dense()
    out["prior"] = np.asarray(la.prior_precision)
    return out


def assert_same_outputs(a, b):
    assert a.keys() == b.keys()
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert np.array_equal(x, y), k


def run_steps(opt, batches, start, stop):
    for k in range(start, stop):
        X, y = batches[k % len(batches)]
        opt.step(X, y)


OPTIMIZERS = {
    "kfac_blockdiag": lambda net: pk.optim.KFAC(net, "ce", damping=1.0, inverse_every=4, damping_every=2,
                                                gamma_every=3, seed=7),
    "kfac_tridiag": lambda net: pk.optim.KFAC(net, "ce", damping=0.5, structure="tridiag", inverse_every=3,
                                              damping_every=2, gamma_every=4, seed=8, kl_clip=0.1),
    "kfac_kfra_fixed": lambda net: pk.optim.KFAC(net, "ce", lr=0.2, momentum=0.5, curvature="kfra",
                                                 damping=0.3, adapt_damping=False, stats_batch=6),
    "kfac_mc2_big_seed": lambda net: pk.optim.KFAC(net, "ce", curvature="mc", mc_samples=2, damping=2.0,
                                                weight_decay=1e-3, seed=2**63 + 5, min_damping=1.5),
    "sgd": lambda net: pk.optim.SGD(net, "ce", lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-4),
    "sgd_plain": lambda net: pk.optim.SGD(net, "ce", lr=0.05, momentum=0.0, nesterov=False),
    "adam": lambda net: pk.optim.Adam(net, "ce", lr=1e-2, betas=(0.8, 0.99), eps=1e-7, weight_decay=1e-4),
}


def opt_batches():
    X, y = cls_data(N=48, seed=3)
    return [(X[i:i + 12], y[i:i + 12]) for i in range(0, 48, 12)]


# ---------------------------------------------------------------------------
# optimisers: round trip
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("with_net", [False, True])
def test_optimizer_resume_from_file_is_bitwise(tmp_path, name, dtype, with_net):
    make = OPTIMIZERS[name]
    batches = opt_batches()
    net_a = pk.MLP([4, 6, 5, 3], activation=["tanh", "sigmoid"], seed=0, dtype=dtype)
    opt_a = make(net_a)
    run_steps(opt_a, batches, 0, 13)

    net_b = pk.MLP([4, 6, 5, 3], activation=["tanh", "sigmoid"], seed=0, dtype=dtype)
    opt_b = make(net_b)
    run_steps(opt_b, batches, 0, 5)
    path = tmp_path / "opt.npz"
    opt_b.save(path)
    if with_net:
        # a new process: a freshly initialised network of the same architecture
        net_c = pk.MLP([4, 6, 5, 3], activation=["tanh", "sigmoid"], seed=99, dtype=dtype)
        opt_c = type(opt_b).load(path, net=net_c)
        assert opt_c.net is net_c
    else:
        opt_c = pk.optim.Optimizer.load(path)
        net_c = opt_c.net
    assert type(opt_c) is type(opt_b) and opt_c.steps == 5 and opt_c.loss == "ce"
    assert net_c.dtype == dtype and net_c.activations == net_b.activations
    assert np.array_equal(net_c.theta, net_b.theta)
    assert opt_c._hyper() == opt_b._hyper()
    run_steps(opt_c, batches, 5, 13)
    assert np.array_equal(net_c.theta, net_a.theta)
    if isinstance(opt_a, pk.optim.KFAC):
        assert opt_c.damping == opt_a.damping and opt_c.gamma == opt_a.gamma
        for x, y in zip(opt_c.A + opt_c.G, opt_a.A + opt_a.G):
            assert np.array_equal(x, y)


@pytest.mark.parametrize("name", ["kfac_tridiag", "sgd", "adam"])
def test_optimizer_saved_before_any_step(tmp_path, name):
    """A fresh optimiser (no statistics, no inverse) saves and resumes too."""
    batches = opt_batches()
    net_a = pk.MLP([4, 6, 5, 3], seed=0)
    opt_a = OPTIMIZERS[name](net_a)
    run_steps(opt_a, batches, 0, 4)
    buf = io.BytesIO()  # a file object instead of a path
    OPTIMIZERS[name](pk.MLP([4, 6, 5, 3], seed=0)).save(buf)
    buf.seek(0)
    opt_c = pk.optim.Optimizer.load(buf)
    run_steps(opt_c, batches, 0, 4)
    assert np.array_equal(opt_c.net.theta, net_a.theta)


@pytest.mark.parametrize("cls", [pk.optim.KFAC, pk.optim.SGD, pk.optim.Adam])
def test_optimizer_file_stores_every_hyperparameter(cls):
    """Every constructor argument but net and loss is saved, so a loaded
    optimiser is the one that was saved (a new argument must be added to
    the file too)."""
    opt = cls(pk.MLP([4, 5, 3], seed=0), "ce", **({} if cls is pk.optim.KFAC else {"lr": 0.1}))
    params = set(inspect.signature(cls.__init__).parameters) - {"self", "net", "loss"}
    assert set(opt._hyper()) == params


def test_optimizer_file_layout(tmp_path):
    """The file is the documented layout: format, version, sizes, dtype, type,
    hyperparameters and a checksum that an independent SHA-256 reproduces."""
    net = pk.MLP([4, 6, 3], seed=0, dtype=np.float32)
    opt = OPTIMIZERS["kfac_tridiag"](net)
    run_steps(opt, opt_batches(), 0, 2)
    opt.save(tmp_path / "o.npz")
    meta, arrays, digest = read_raw(tmp_path / "o.npz")
    assert meta["format"] == "pykfac-optimizer" and meta["version"] == 1
    assert meta["type"] == "KFAC" and meta["net_sizes"] == [4, 6, 3] and meta["dtype"] == "float32"
    assert meta["hyper"]["structure"] == "tridiag" and meta["hyper"]["kl_clip"] == 0.1
    assert digest == sha256_of(json.dumps(meta, sort_keys=True), arrays)
    assert np.array_equal(arrays["net_theta"], net.theta)
    assert all(a.dtype == np.float32 for a in arrays.values())
    # the statistics are stored exactly
    state = opt.state_dict()
    for l, A in enumerate(state["A"]):
        assert np.array_equal(arrays[f"A_{l}"], A)


# ---------------------------------------------------------------------------
# Laplace: round trip
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("structure", ["full", "lowrank"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("variant", ["plain", "no_theta_map", "no_loss", "layer_prior", "rank"])
def test_from_jacobians_round_trip(tmp_path, structure, dtype, variant):
    kw = {"prior_precision": 0.6, "temperature": 0.8}
    if variant == "layer_prior":
        kw.update(layer_sizes=[20, 18], prior_precision=[0.5, 2.0], prior_mean=0.1)
    if variant == "rank":
        if structure != "lowrank":
            pytest.skip("rank is a low-rank option")
        kw["rank"] = 4
    la, Jt, Ft = jacobian_laplace(structure, dtype, theta_map=variant != "no_theta_map",
                                  loss=variant != "no_loss", **kw)
    path = tmp_path / "jac.npz"
    la.save(path)
    lb = pk.Laplace.load(path)
    assert lb._from_jac and lb.structure == structure and lb.dtype == la.dtype
    assert lb.n_params == la.n_params and lb.n_outputs == la.n_outputs and lb.n_data == la.n_data
    assert lb.loss == la.loss and lb.temperature == la.temperature
    assert (lb.mean is None) == (la.mean is None)
    assert_same_outputs(laplace_outputs(la, Jt=Jt, Ft=Ft), laplace_outputs(lb, Jt=Jt, Ft=Ft))
    # still a Jacobian posterior: X is refused, as before saving
    with pytest.raises(RuntimeError):
        lb.predictive(np.zeros((2, 3)))


@pytest.mark.parametrize("structure", ["full", "diag", "kron", "lowrank"])
@pytest.mark.parametrize("case", ["float32", "regression", "binary_last_layer", "factored"])
def test_network_laplace_round_trip(tmp_path, structure, case):
    if case == "float32":
        la, net, X = fitted_laplace(structure, dtype=np.float32, prior_precision=0.7)
    elif case == "regression":
        la, net, X = fitted_laplace(structure, "regression", sigma_noise=0.4, temperature=1.3,
                                    prior_mean=0.05)
    elif case == "binary_last_layer":
        la, net, X = fitted_laplace(structure, "binary", "last_layer")
    else:
        if structure != "kron":
            pytest.skip("factored damping is a Kronecker option")
        la, net, X = fitted_laplace(structure, kron_damping="factored", prior_precision=[0.5, 1.0, 2.0])
    la.save(tmp_path / "la.npz")
    for lb in (pk.Laplace.load(tmp_path / "la.npz"), pk.Laplace.load(tmp_path / "la.npz", net=net)):
        assert_same_outputs(laplace_outputs(la, X), laplace_outputs(lb, X))


@pytest.mark.parametrize("structure", ["full", "lowrank", "kron"])
def test_laplace_round_trip_after_prior_optimisation(tmp_path, structure):
    """optimize_prior_precision switches a full posterior to eigenvalue log-dets;
    the loaded posterior takes the same path, so the LML is bit-identical."""
    la, net, X = fitted_laplace(structure)
    la.optimize_prior_precision()
    la.save(tmp_path / "la.npz")
    lb = pk.Laplace.load(tmp_path / "la.npz")
    assert lb.prior_precision == la.prior_precision
    assert lb.log_marginal_likelihood() == la.log_marginal_likelihood()
    assert lb.log_marginal_likelihood(prior_precision=0.3) == la.log_marginal_likelihood(prior_precision=0.3)


def test_laplace_file_layout_and_version_1(tmp_path):
    """A version-1 file (the previous layout: no 'source', always a network)
    still loads, bit-exactly; files are written as version 3."""
    la, net, X = fitted_laplace("kron", prior_precision=[0.5, 1.0, 2.0])
    la.save(tmp_path / "la.npz")
    meta, arrays, digest = read_raw(tmp_path / "la.npz")
    assert meta["format"] == "pykfac-laplace" and meta["version"] == 3 and meta["source"] == "net"
    assert digest == sha256_of(json.dumps(meta, sort_keys=True), arrays)
    v1 = {k: v for k, v in meta.items() if k not in ("source", "prefer_eig", "lowrank_factors")}
    v1["version"] = 1
    write_raw(tmp_path / "v1.npz", v1, arrays)
    assert_same_outputs(laplace_outputs(la, X), laplace_outputs(pk.Laplace.load(tmp_path / "v1.npz"), X))
    meta, arrays, _ = read_raw(tmp_path / "la.npz")
    write_raw(tmp_path / "v4.npz", {**meta, "version": 4}, arrays)
    refused(pk.Laplace.load, tmp_path / "v4.npz", r"version 4 is not supported.*reads versions 1, 2, 3")


@pytest.mark.parametrize("prior", [0.7, [0.5, 1.0, 2.0]])
def test_lowrank_file_holds_gmat_factors_and_version_2_loads_without(tmp_path, prior):
    """Version 3 stores the low-rank posterior's Gmat factors (the predictive's
    kernel route) and reloads bit-exactly; a version-2 file, without them,
    still loads and predicts through forward-mode products, equal up to
    rounding; factors that do not fit together are refused."""
    la, net, X = fitted_laplace("lowrank", prior_precision=prior)
    la.save(tmp_path / "la.npz")
    meta, arrays, _ = read_raw(tmp_path / "la.npz")
    assert meta["lowrank_factors"] is True
    assert {"post_gC", "post_gU0", "post_gA0", "post_gU2", "post_gA2"} <= set(arrays)
    ref = laplace_outputs(la, X)
    assert_same_outputs(ref, laplace_outputs(pk.Laplace.load(tmp_path / "la.npz"), X))
    v2 = {k: v for k, v in meta.items() if k != "lowrank_factors"}
    v2["version"] = 2
    write_raw(tmp_path / "v2.npz", v2, {k: v for k, v in arrays.items() if not k.startswith("post_g")})
    old = pk.Laplace.load(tmp_path / "v2.npz")
    assert old._post.gmat is None
    got = laplace_outputs(old, X)
    for k in ref:
        np.testing.assert_allclose(np.asarray(got[k], dtype=float), np.asarray(ref[k], dtype=float),
                                   rtol=1e-10, atol=1e-12, err_msg=k)
    # fewer Gram columns in gC than the factors' samples x outputs
    write_raw(tmp_path / "bad.npz", meta, {**arrays, "post_gC": arrays["post_gC"][:-1]})
    refused(pk.Laplace.load, tmp_path / "bad.npz", r"gC: expected \d+ rows")
    # factors claimed without a network's sizes
    write_raw(tmp_path / "bad2.npz", {**meta, "lowrank_factors": "yes"}, arrays)
    refused(pk.Laplace.load, tmp_path / "bad2.npz", r"lowrank_factors: expected a bool")


# ---------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------
def _laplace_kron(tmp_path):
    la, net, X = fitted_laplace("kron", prior_precision=[0.5, 1.0, 2.0])
    la.save(tmp_path / "f.npz")
    return tmp_path / "f.npz", pk.Laplace.load, lambda lb: laplace_outputs(lb, X), laplace_outputs(la, X)


def _laplace_jac(tmp_path):
    la, Jt, Ft = jacobian_laplace("lowrank", prior_precision=0.4)
    la.save(tmp_path / "f.npz")
    return (tmp_path / "f.npz", pk.Laplace.load, lambda lb: laplace_outputs(lb, Jt=Jt, Ft=Ft),
            laplace_outputs(la, Jt=Jt, Ft=Ft))


def _kfac(tmp_path):
    opt = OPTIMIZERS["kfac_tridiag"](pk.MLP([4, 6, 5, 3], seed=0))
    run_steps(opt, opt_batches(), 0, 3)
    opt.save(tmp_path / "f.npz")
    return tmp_path / "f.npz", pk.optim.KFAC.load, lambda o: (o.state_dict(), o.net.theta), \
        (opt.state_dict(), opt.net.theta)


def _adam(tmp_path):
    opt = OPTIMIZERS["adam"](pk.MLP([4, 5, 3], seed=0, dtype=np.float32))
    run_steps(opt, opt_batches(), 0, 2)
    opt.save(tmp_path / "f.npz")
    return tmp_path / "f.npz", pk.optim.Adam.load, lambda o: (o.state_dict(), o.net.theta), \
        (opt.state_dict(), opt.net.theta)


KINDS = {"laplace_kron": _laplace_kron, "laplace_jac": _laplace_jac, "kfac": _kfac, "adam": _adam}


def same_state(a, b):
    """Equality of nested outputs/state_dicts (arrays bit for bit)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    return a == b


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_truncated_file_is_refused(tmp_path, kind):
    path, load, _, _ = KINDS[kind](tmp_path)
    data = path.read_bytes()
    n = len(data)
    cuts = sorted({0, 1, 21, 22, 100, n // 3, n // 2, n - 200, n - 23, n - 22, n - 1}
                  | set(range(0, n, max(1, n // 40))))
    for cut in cuts:
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        refused(load, bad)


def _array_offset(data, arr):
    """Byte offset of an array's data inside the (uncompressed) npz file."""
    raw = np.ascontiguousarray(arr).tobytes()
    pos = data.find(raw)
    assert pos >= 0 and data.find(raw, pos + 1) < 0
    return pos, len(raw)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_flipped_bytes_are_refused_or_harmless(tmp_path, kind):
    """A flipped byte inside an array's data is refused (the zip CRC and the
    SHA-256 both cover it). Flipping any other byte either is refused too or,
    when it hits a field nothing reads (zip timestamps, ...), loads a
    posterior/optimiser identical to the original -- never a different one."""
    path, load, outputs, want = KINDS[kind](tmp_path)
    data = path.read_bytes()
    _, arrays, _ = read_raw(path)
    name = max(arrays, key=lambda k: arrays[k].nbytes)
    pos, size = _array_offset(data, arrays[name])
    for off in (pos, pos + size // 2, pos + size - 1):
        bad = bytearray(data)
        bad[off] ^= 0x10
        (tmp_path / "flip.npz").write_bytes(bytes(bad))
        refused(load, tmp_path / "flip.npz")
    rng = np.random.default_rng(0)
    outcomes = {"refused": 0, "identical": 0}
    for off in rng.choice(len(data), size=min(len(data), 150), replace=False):
        bad = bytearray(data)
        bad[off] ^= 1 << int(rng.integers(0, 8))
        p = tmp_path / "flip.npz"
        p.write_bytes(bytes(bad))
        try:
            got = load(p)
        except ValueError as e:
            assert str(e).startswith(str(p)), e
            outcomes["refused"] += 1
            continue
        assert same_state(outputs(got), want), f"byte {off}: loaded something different"
        outcomes["identical"] += 1
    assert outcomes["refused"] > 100, outcomes


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_edited_array_is_refused(tmp_path, kind):
    """An array changed and the archive rewritten (valid zip CRCs): the
    SHA-256 catches it. Changed dtype or shape with a recomputed checksum:
    the shape/dtype validation catches it."""
    path, load, _, _ = KINDS[kind](tmp_path)
    meta, arrays, digest = read_raw(path)
    name = max(arrays, key=lambda k: arrays[k].size)
    bad = tmp_path / "bad.npz"

    changed = dict(arrays)
    changed[name] = arrays[name].copy()
    changed[name].flat[0] = np.nextafter(changed[name].flat[0], np.inf)  # one ulp
    write_raw(bad, meta, changed, checksum=digest)
    refused(load, bad, "checksum mismatch")

    other = np.float32 if arrays[name].dtype == np.float64 else np.float64
    write_raw(bad, meta, {**arrays, name: arrays[name].astype(other)})
    refused(load, bad, rf"{name}.*dtype")
    write_raw(bad, meta, {**arrays, name: arrays[name].astype(other)}, checksum=digest)
    refused(load, bad, "checksum mismatch")

    write_raw(bad, meta, {**arrays, name: arrays[name].ravel()[:-1]})
    refused(load, bad, rf"{name}.*shape")
    if arrays[name].ndim == 2:
        # (a low-rank Q then disagrees with its eigenvalues s: either may be named)
        write_raw(bad, meta, {**arrays, name: np.ascontiguousarray(arrays[name][:, :-1])})
        refused(load, bad, r"array '\w+' has shape \([\d, ]*\), expected")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_missing_and_extra_arrays_are_refused(tmp_path, kind):
    path, load, _, _ = KINDS[kind](tmp_path)
    meta, arrays, digest = read_raw(path)
    bad = tmp_path / "bad.npz"
    for name in sorted(arrays):
        rest = {k: v for k, v in arrays.items() if k != name}
        write_raw(bad, meta, rest, checksum=digest)
        refused(load, bad, "checksum mismatch")
        write_raw(bad, meta, rest)  # consistent checksum: the layout check refuses it
        refused(load, bad, rf"missing arrays \['{name}'\]")
    extra = {**arrays, "zz_extra": np.zeros(3)}
    write_raw(bad, meta, extra, checksum=digest)
    refused(load, bad, "checksum mismatch")
    write_raw(bad, meta, extra)
    refused(load, bad, r"unexpected arrays \['zz_extra'\]")
    # the reserved members
    for drop in ("meta", "checksum"):
        members = {"meta": np.array(json.dumps(meta, sort_keys=True)), "checksum": np.array(digest),
                   **arrays}
        del members[drop]
        np.savez(bad, **members)
        refused(load, bad, "not a pykfac")


def _meta_edits(kind, meta):
    """(description, edited meta) of plausible metadata edits for this kind of file."""
    edits = [("version", {**meta, "version": meta["version"] + 1}),
             ("version_str", {**meta, "version": str(meta["version"])}),
             ("dtype", {**meta, "dtype": "float32" if meta["dtype"] == "float64" else "float64"}),
             ("dtype_bad", {**meta, "dtype": "int64"}),
             ("no_dtype", {k: v for k, v in meta.items() if k != "dtype"}),
             ("format", {**meta, "format": "pykfac-other"})]
    if "net_sizes" in meta:
        edits.append(("sizes", {**meta, "net_sizes": [s + 1 for s in meta["net_sizes"]]}))
    if kind.startswith("laplace"):
        edits += [("D", {**meta, "D": meta["D"] + 1}),
                  ("offsets", {**meta, "offsets": meta["offsets"][:-1] + [meta["offsets"][-1] + 2]}),
                  ("structure", {**meta, "structure": "diag" if meta["structure"] != "diag" else "full"}),
                  ("likelihood", {**meta, "likelihood": "poisson"}),
                  ("source", {**meta, "source": "torch"}),
                  ("n_data", {**meta, "n_data": -3}),
                  ("loss", {**meta, "loss": "abc"}),
                  ("no_structure", {k: v for k, v in meta.items() if k != "structure"})]
        if kind == "laplace_kron":
            edits += [("subset", {**meta, "subset": "last_layer"}),
                      ("kron_damping", {**meta, "kron_damping": "none"})]
        else:
            edits += [("has_theta_map", {**meta, "has_theta_map": False})]
    else:
        edits += [("type", {**meta, "type": "SGD" if meta["type"] != "SGD" else "Adam"}),
                  ("type_unknown", {**meta, "type": "LBFGS"}),
                  ("loss", {**meta, "loss": "nll"}),
                  ("hyper_unknown", {**meta, "hyper": {**meta["hyper"], "foo": 1}}),
                  ("hyper_bad", {**meta, "hyper": {**meta["hyper"], "lr": -1.0}}),
                  ("steps", {**meta, "state": {**meta["state"], "steps": -1}}),
                  ("state_type", {**meta, "state": {**meta["state"], "type": "SGD"}}),
                  ("state_array_ref", {**meta, "state": {**meta["state"], "steps": {"array": "net_theta"}}}),
                  ("no_state", {k: v for k, v in meta.items() if k != "state"})]
    return edits


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_edited_metadata_is_refused(tmp_path, kind):
    """Edited metadata: refused by the checksum; with the checksum recomputed
    (a consistent forgery), refused by the validation -- version, dtype,
    sizes, shapes, kinds -- always as a ValueError naming the file."""
    path, load, _, _ = KINDS[kind](tmp_path)
    meta, arrays, digest = read_raw(path)
    bad = tmp_path / "bad.npz"
    for what, edited in _meta_edits(kind, meta):
        write_raw(bad, edited, arrays, checksum=digest)
        msg = refused(load, bad)
        if what not in ("version", "version_str", "format"):
            assert "checksum mismatch" in msg, (what, msg)
        write_raw(bad, edited, arrays)
        msg = refused(load, bad)
        assert "checksum" not in msg, (what, msg)
        if what.startswith("version"):
            assert "version" in msg and "not supported" in msg, msg


def test_wrong_kind_of_file_is_refused(tmp_path):
    la, net, X = fitted_laplace("diag")
    la.save(tmp_path / "la.npz")
    sgd = pk.optim.SGD(pk.MLP([4, 5, 3], seed=0), "ce", lr=0.1)
    sgd.save(tmp_path / "sgd.npz")
    for load in (pk.optim.Optimizer.load, pk.optim.KFAC.load, pk.optim.SGD.load):
        refused(load, tmp_path / "la.npz", r"not a pykfac optimizer file \(format 'pykfac-laplace'")
    refused(pk.Laplace.load, tmp_path / "sgd.npz", r"not a pykfac Laplace file \(format 'pykfac-optimizer'")
    refused(pk.optim.KFAC.load, tmp_path / "sgd.npz", "holds a SGD optimiser, not KFAC")
    refused(pk.optim.Adam.load, tmp_path / "sgd.npz", "holds a SGD optimiser, not Adam")
    assert isinstance(pk.optim.SGD.load(tmp_path / "sgd.npz"), pk.optim.SGD)


@pytest.mark.parametrize("load", [pk.Laplace.load, pk.optim.Optimizer.load])
def test_non_npz_files_are_refused(tmp_path, load):
    rng = np.random.default_rng(0)
    files = {
        "empty": b"",
        "text": b"hello, not an archive\n" * 10,
        "random": rng.integers(0, 256, size=5000, dtype=np.uint8).tobytes(),
        "zip_magic_only": b"PK\x03\x04" + b"\x00" * 100,
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        refused(load, tmp_path / name, "not a pykfac")
    np.save(tmp_path / "plain.npy", np.zeros(4))
    refused(load, tmp_path / "plain.npy", "not a pykfac")
    np.savez(tmp_path / "junk.npz", a=np.zeros(3))
    refused(load, tmp_path / "junk.npz", "not a pykfac")
    # a pickled object array where the metadata should be: refused without unpickling
    np.savez(tmp_path / "obj.npz", meta=np.array([{"format": "pykfac-laplace"}], dtype=object),
             checksum=np.array("0"))
    refused(load, tmp_path / "obj.npz", "not a pykfac")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "does-not-exist.npz")


def test_pickle_is_never_used(tmp_path, monkeypatch):
    """Saving and loading both kinds of file work with pickle disabled, and an
    archive whose metadata is a pickled object is refused without unpickling."""
    la, Jt, Ft = jacobian_laplace("full")
    la.save(tmp_path / "ref.npz")
    meta, arrays, digest = read_raw(tmp_path / "ref.npz")
    np.savez(tmp_path / "evil.npz", meta=np.array([meta], dtype=object), checksum=np.array(digest), **arrays)
    opt = OPTIMIZERS["kfac_blockdiag"](pk.MLP([4, 6, 3], seed=0))
    run_steps(opt, opt_batches(), 0, 2)

    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle was used")

    for name in ("load", "loads", "dump", "dumps"):
        monkeypatch.setattr(pickle, name, no_pickle)
    la.save(tmp_path / "la.npz")
    opt.save(tmp_path / "opt.npz")
    assert pk.Laplace.load(tmp_path / "la.npz").log_det_posterior_precision() == la.log_det_posterior_precision()
    assert np.array_equal(pk.optim.KFAC.load(tmp_path / "opt.npz").net.theta, opt.net.theta)
    refused(pk.Laplace.load, tmp_path / "evil.npz", "not a pykfac")


def test_mismatched_network_is_refused(tmp_path):
    batches = opt_batches()
    net = pk.MLP([4, 6, 3], activation="tanh", seed=0)
    opt = pk.optim.KFAC(net, "ce", damping=1.0)
    run_steps(opt, batches, 0, 2)
    opt.save(tmp_path / "o.npz")
    for other in (pk.MLP([4, 7, 3], seed=1), pk.MLP([4, 6, 3], activation="relu", seed=1),
                  pk.MLP([4, 6, 3], activation="tanh", seed=1, dtype=np.float32),
                  pk.MLP([4, 6, 6, 3], seed=1)):
        before = other.theta.copy()
        with pytest.raises(ValueError, match=r"^net: does not match the saved optimiser"):
            pk.optim.KFAC.load(tmp_path / "o.npz", net=other)
        assert np.array_equal(other.theta, before)  # a refused load leaves the network alone
    with pytest.raises(TypeError, match=r"^net\b"):
        pk.optim.KFAC.load(tmp_path / "o.npz", net="not a net")
    # a damaged file with a good network: refused, network untouched
    data = (tmp_path / "o.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])
    good = pk.MLP([4, 6, 3], activation="tanh", seed=5)
    before = good.theta.copy()
    refused(lambda p: pk.optim.KFAC.load(p, net=good), tmp_path / "cut.npz")
    assert np.array_equal(good.theta, before)

    la, Jt, Ft = jacobian_laplace("full")
    la.save(tmp_path / "j.npz")
    with pytest.raises(ValueError, match=r"^net: the saved posterior was built by from_jacobians"):
        pk.Laplace.load(tmp_path / "j.npz", net=pk.MLP([3, 5, 3], seed=4))
    la, net, X = fitted_laplace("lowrank")
    la.save(tmp_path / "la.npz")
    with pytest.raises(ValueError, match=r"^net: does not match"):
        pk.Laplace.load(tmp_path / "la.npz", net=pk.MLP([4, 6, 5, 3], activation="tanh", seed=2))
    with pytest.raises(ValueError, match=r"^net: its parameters differ"):
        moved = net.copy()
        moved.theta = moved.theta * 1.0000001
        pk.Laplace.load(tmp_path / "la.npz", net=moved)
