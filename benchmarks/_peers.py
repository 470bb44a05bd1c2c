"""Torch-side peers for benchmarks/bench_core.py.

Every peer rebuilds the benchmark problem in PyTorch with pykfac's weights and
data and returns its result in pykfac's conventions, so bench_core.py can
check agreement before it times anything:

- theta order: per layer ``W.ravel()`` (row-major, out x in) then ``b``, the
  order of ``torch.nn.utils.parameters_to_vector`` for ``nn.Sequential``;
- the loss is the SUM over samples: ``CrossEntropyLoss(reduction="sum")``
  everywhere. (``MSELoss(reduction="sum")`` is sum (y - f)^2, twice pykfac's
  1/2 ||y - f||^2, so its GGN is twice ours: ``mse_ggn_matvec_check`` divides);
- K-FAC: ``A[l] = (1/N) sum_n abar abar^T`` with ``abar = [a; 1]`` (the bias
  row/column LAST) and ``G[l] = sum_n g g^T``. curvlinops with
  ``separate_weight_and_bias=False`` and a sum-reduced loss uses exactly this
  convention. BackPACK's KFLR/KFAC give the weight's ``[G, A_w]`` with
  ``A_w = (1/N) sum_n a a^T`` (no bias row) and the bias's ``[G]``, so their
  ``A`` is compared with the top-left ``in x in`` block of ours.

A peer is ``make(problem) -> (run, convert)``: ``run()`` does the timed work
and returns the peer's raw result, ``convert(raw)`` turns it into pykfac's
convention outside the timed region. Kernel results in pykfac's convention:

=============  ==========================================================
fwd_bwd        ``(loss: float, grad: (D,))``
jacobian       ``(N, K, D)``
ggn_mv         ``(D,)`` (one vector)
kfac_exact     ``[(A_l, G_l), ...]`` (``A_l`` may be the ``in x in`` block)
kfac_mc        same as kfac_exact
diag_ggn       ``(D,)``
diag_mc        ``(D,)`` (one sampled target per datum)
diag_hess      ``(D,)``
ekfac          ``(D, 3)``: the operator times ``ekfac_probe`` vectors
slq            ``(grid, density)``, each ``(num_points,)``
xtrace         ``float``
xdiag          ``(D,)``
=============  ==========================================================

The stochastic rows (slq, xtrace, xdiag) take ``make(problem, spec)``, with
``spec`` the settings pykfac used (see ``bench_core.stoch_setup``), and draw
their random vectors from torch's generator; ``fixed_vectors`` makes
curvlinops draw pykfac's vectors instead, for the deterministic agreement check.

A peer whose problem would not fit in memory raises ``PeerSkipped`` from
``make``: reported, not run, not a failure.
"""
import copy
import importlib.metadata as _md

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as _exc:  # pragma: no cover - depends on the machine
    torch = None
    _IMPORT_ERROR = str(_exc)
else:
    _IMPORT_ERROR = ""

__all__ = ["available", "versions", "Problem", "PEERS", "PeerSkipped", "mc_agreement", "mse_ggn_matvec_check",
           "fixed_vectors", "curvlinops_hessian", "curvlinops_product", "curvlinops_estimate", "peers_for",
           "missing_peers"]


class PeerSkipped(Exception):
    """A peer that is not run for this problem (the message says why)."""


def available():
    """``(True, "")`` when torch imports, else ``(False, reason)``."""
    if torch is None:
        return False, "torch is not importable (" + _IMPORT_ERROR + ")"
    return True, ""


def _has(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def versions():
    """Installed versions of torch and the peer packages (None when missing)."""
    out = {}
    for dist in ("torch", "curvlinops-for-pytorch", "backpack-for-pytorch"):
        try:
            out[dist] = _md.version(dist)
        except _md.PackageNotFoundError:
            out[dist] = None
    if torch is not None:
        out["torch_threads"] = torch.get_num_threads()
        cfg = torch.__config__.show()
        out["torch_blas"] = "MKL" if "BLAS_INFO=mkl" in cfg else ("OpenBLAS" if "openblas" in cfg.lower() else "?")
    return out


_ACTS = {
    "tanh": lambda: nn.Tanh(),
    "relu": lambda: nn.ReLU(),
    "sigmoid": lambda: nn.Sigmoid(),
    "identity": lambda: nn.Identity(),
    "elu": lambda: nn.ELU(),
    "softplus": lambda: nn.Softplus(),
    "gelu": lambda: nn.GELU(),
    "leaky_relu": lambda: nn.LeakyReLU(),
}


class Problem:
    """The benchmark problem on the torch side: the same weights and data.

    Parameters
    ----------
    Ws, bs : lists of arrays
        Per layer ``W`` (out x in) and ``b`` (out), e.g. ``net.layers[i].W``.
    activation : str
        Hidden activation name (pykfac's names).
    X : (N, in) array;  y : (N,) int class indices.
    """

    def __init__(self, Ws, bs, activation, X, y):
        dtype = X.dtype
        self.tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[dtype]
        layers = []
        for i, (W, b) in enumerate(zip(Ws, bs)):
            lin = nn.Linear(W.shape[1], W.shape[0], dtype=self.tdtype)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W, dtype=dtype)))
                lin.bias.copy_(torch.from_numpy(np.ascontiguousarray(b, dtype=dtype)))
            layers.append(lin)
            if i < len(Ws) - 1:
                layers.append(_ACTS[activation]())
        self.model = nn.Sequential(*layers)
        self.params = list(self.model.parameters())
        self.names = [n for n, _ in self.model.named_parameters()]
        self.shapes = [tuple(p.shape) for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.D = int(self.offsets[-1])
        self.X = torch.from_numpy(np.ascontiguousarray(X))
        self.y = torch.from_numpy(np.asarray(y, dtype=np.int64))
        self.N = X.shape[0]
        self.K = Ws[-1].shape[0]
        self.linear_idx = [i for i, m in enumerate(self.model) if isinstance(m, nn.Linear)]

    # -- helpers -----------------------------------------------------------
    def theta(self):
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def unflat(self, vec):
        """Views of a flat (D,) tensor shaped like the parameters."""
        return [vec[o:o + n].view(s) for o, n, s in zip(self.offsets[:-1], self.sizes, self.shapes)]

    def flat_np(self, tensors):
        return torch.cat([t.detach().reshape(-1) for t in tensors]).numpy()

    def loss_fn(self):
        return nn.CrossEntropyLoss(reduction="sum")

    def backpack_model(self):
        """A deep copy extended by BackPACK (so BackPACK's hooks never slow the
        plain-torch rows), with its extended sum-reduced loss."""
        from backpack import extend

        model = extend(copy.deepcopy(self.model))
        return model, extend(nn.CrossEntropyLoss(reduction="sum"))

    def subset(self, n):
        """The same network on the first n samples."""
        sub = Problem.__new__(Problem)
        sub.__dict__.update(self.__dict__)
        sub.X = self.X[:n].contiguous()
        sub.y = self.y[:n].contiguous()
        sub.N = n
        return sub


# ---------------------------------------------------------------------------
# forward + backward
def torch_fwd_bwd(P):
    model, lossf, X, y, params = P.model, P.loss_fn(), P.X, P.y, P.params

    def run():
        loss = lossf(model(X), y)
        grads = torch.autograd.grad(loss, params)
        return loss, grads

    return run, lambda r: (float(r[0].detach()), P.flat_np(r[1]))


# ---------------------------------------------------------------------------
# Jacobian (N, K, D)
def _functional_single(P):
    from torch.func import functional_call

    model, names = P.model, P.names

    def f_single(theta, x):
        return functional_call(model, dict(zip(names, P.unflat(theta))), (x.unsqueeze(0),)).squeeze(0)

    return f_single


def torchfunc_jacobian(P):
    from torch.func import jacrev, vmap

    jac = vmap(jacrev(_functional_single(P)), in_dims=(None, 0))
    theta, X = P.theta(), P.X

    def run():
        return jac(theta, X)

    return run, lambda r: r.numpy()


def backpack_jacobian(P):
    """K backward passes of sum_n f_k(x_n) with BatchGrad: per-sample grads."""
    from backpack import backpack
    from backpack.extensions import BatchGrad

    model, _ = P.backpack_model()
    params = list(model.parameters())
    X, N, K, D, offs = P.X, P.N, P.K, P.D, P.offsets

    def run():
        J = torch.empty((N, K, D), dtype=P.tdtype)
        out = model(X)
        for k in range(K):
            keep = k < K - 1
            with backpack(BatchGrad(), retain_graph=keep):
                out[:, k].sum().backward(retain_graph=keep)
            for i, p in enumerate(params):
                J[:, k, offs[i]:offs[i + 1]] = p.grad_batch.reshape(N, -1)
                p.grad = None
        return J

    return run, lambda r: r.numpy()


# ---------------------------------------------------------------------------
# GGN-vector product (one vector v, given as a (D,) numpy array)
def curvlinops_ggn_mv(P, v):
    from curvlinops import GGNLinearOperator

    op = GGNLinearOperator(P.model, P.loss_fn(), P.params, [(P.X, P.y)],
                           check_deterministic=False, num_data=P.N)
    vt = torch.from_numpy(v)

    def run():
        return op @ vt

    return run, lambda r: r.numpy()


def torchfunc_ggn_mv(P, v):
    """jvp -> analytic softmax-CE Hessian -> vjp (torch.func)."""
    from torch.func import functional_call, jvp, vjp

    model, names, X = P.model, P.names, P.X
    theta, vt = P.theta(), torch.from_numpy(v)

    def f(th):
        return functional_call(model, dict(zip(names, P.unflat(th))), (X,))

    def run():
        out, Jv = jvp(f, (theta,), (vt,))
        p = torch.softmax(out, dim=1)
        u = p * (Jv - (p * Jv).sum(dim=1, keepdim=True))
        _, pullback = vjp(f, theta)
        return pullback(u)[0]

    return run, lambda r: r.numpy()


def backpack_ggn_mv(P, v):
    from backpack.hessianfree.ggnvp import ggn_vector_product_from_plist

    model, lossf, X, y, params = P.model, P.loss_fn(), P.X, P.y, P.params
    vlist = P.unflat(torch.from_numpy(v))

    def run():
        out = model(X)
        loss = lossf(out, y)
        return ggn_vector_product_from_plist(loss, out, params, vlist)

    return run, lambda r: P.flat_np(r)


# ---------------------------------------------------------------------------
# K-FAC factors
def _curvlinops_kfac(P, fisher_type, mc_samples=1, seed=2147483647):
    from curvlinops import KFACLinearOperator

    def run():
        # A fresh operator each call: compute_kronecker_factors ADDS to cached factors.
        op = KFACLinearOperator(
            P.model, P.loss_fn(), P.params, [(P.X, P.y)], check_deterministic=False,
            fisher_type=fisher_type, mc_samples=mc_samples, seed=seed,
            separate_weight_and_bias=False, num_data=P.N, num_per_example_loss_terms=1)
        op.compute_kronecker_factors()
        return op

    def convert(op):
        names = [str(i) for i in P.linear_idx]
        return [(op._input_covariances[m].numpy(), op._gradient_covariances[m].numpy()) for m in names]

    return run, convert


def curvlinops_kfac_exact(P):
    return _curvlinops_kfac(P, "type-2")


def curvlinops_kfac_mc(P, mc_samples=1, seed=2147483647):
    return _curvlinops_kfac(P, "mc", mc_samples=mc_samples, seed=seed)


def ekfac_probe(D, dtype):
    """The fixed (D, 3) vectors an EKFAC row is compared on (both sides use them)."""
    return np.random.default_rng(12345).standard_normal((D, 3)).astype(dtype)


def curvlinops_ekfac(P):
    from curvlinops import EKFACLinearOperator

    def run():
        # a fresh operator each call: eigenbases and corrected eigenvalues from scratch
        op = EKFACLinearOperator(
            P.model, P.loss_fn(), P.params, [(P.X, P.y)], check_deterministic=False,
            fisher_type="type-2", separate_weight_and_bias=False, num_data=P.N, num_per_example_loss_terms=1)
        op.compute_kronecker_factors()
        op.compute_eigenvalue_correction()
        return op

    def convert(op):
        V = ekfac_probe(P.D, P.X.numpy().dtype)
        return (op @ torch.from_numpy(V)).numpy()

    return run, convert


def _backpack_kron(P, ext_factory, attr):
    from backpack import backpack

    model, lossf = P.backpack_model()
    X, y = P.X, P.y
    lins = [model[i] for i in P.linear_idx]

    def run():
        loss = lossf(model(X), y)
        with backpack(ext_factory()):
            loss.backward()
        out = [(getattr(m.weight, attr), getattr(m.bias, attr)) for m in lins]
        for p in model.parameters():
            p.grad = None
        return out

    def convert(r):
        # weight: [G, A_w] (A_w = (1/N) sum a a^T, no bias row); bias: [G].
        return [(w[1].numpy(), w[0].numpy()) for w, _ in r]

    return run, convert


def backpack_kflr(P):
    from backpack.extensions import KFLR

    return _backpack_kron(P, KFLR, "kflr")


def backpack_kfac_mc(P, mc_samples=1):
    from backpack.extensions import KFAC

    return _backpack_kron(P, lambda: KFAC(mc_samples=mc_samples), "kfac")


# ---------------------------------------------------------------------------
# diagonal of the GGN
def _backpack_diag(P, extension, attr):
    """A BackPACK diagonal extension's run: the loss, one backward pass with the
    extension, its per-parameter result `attr`, flattened in theta order."""
    from backpack import backpack

    model, lossf = P.backpack_model()
    X, y = P.X, P.y

    def run():
        loss = lossf(model(X), y)
        with backpack(extension):
            loss.backward()
        out = [getattr(p, attr) for p in model.parameters()]
        for p in model.parameters():
            p.grad = None
        return out

    return run, lambda r: P.flat_np(r)


def backpack_diag_ggn(P):
    from backpack.extensions import DiagGGNExact

    return _backpack_diag(P, DiagGGNExact(), "diag_ggn_exact")


def backpack_diag_ggn_mc(P, mc_samples=1):
    from backpack.extensions import DiagGGNMC

    return _backpack_diag(P, DiagGGNMC(mc_samples=mc_samples), "diag_ggn_mc")


# ---------------------------------------------------------------------------
# diagonal of the Hessian
def _mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def backpack_diag_hessian(P):
    from backpack.extensions import DiagHessian

    # BackPACK keeps per sample a (width x width) residual factor per hidden
    # layer, and a few copies of it while it moves down: skip rather than be
    # killed by the OOM killer (the whole benchmark would die with it).
    item = P.X.element_size()
    widths = [W.shape[0] for W in P.params[0::2]][:-1]
    need = 4 * P.N * sum(w * w for w in widths) * item
    avail = _mem_available()
    if avail is not None and need > avail / 2:
        raise PeerSkipped(f"BackPACK's residual factors need ~{need / 2**30:.1f} GiB, "
                          f"{avail / 2**30:.1f} GiB available")
    return _backpack_diag(P, DiagHessian(), "diag_h")


# ---------------------------------------------------------------------------
# matrix-free stochastic tools on the Hessian (spectral density, XTrace, XDiag)
def curvlinops_hessian(P):
    """curvlinops' HessianLinearOperator of the benchmark problem (sum-reduced CE)."""
    from curvlinops import HessianLinearOperator

    return HessianLinearOperator(P.model, P.loss_fn(), P.params, [(P.X, P.y)],
                                 check_deterministic=False, num_data=P.N)


def curvlinops_slq(P, spec):
    """lanczos_approximate_spectrum with pykfac's grid: the same boundaries
    (so no eigsh inside), margin 0, ncv = num_steps, num_repeats, num_points and
    curvlinops' own kappa (bench_core converts it to pykfac's)."""
    from curvlinops import lanczos_approximate_spectrum

    H = curvlinops_hessian(P)

    def run():
        return lanczos_approximate_spectrum(H, spec["num_steps"], num_points=spec["num_points"],
                                            num_repeats=spec["num_repeats"], kappa=spec["kappa"],
                                            boundaries=spec["boundaries"], margin=0.0)

    return run, lambda r: (r[0].numpy(), r[1].numpy())


def curvlinops_xtrace(P, spec):
    from curvlinops import xtrace

    H = curvlinops_hessian(P)
    return (lambda: xtrace(H, spec["num_matvecs"])), lambda r: float(r)


def curvlinops_xdiag(P, spec):
    from curvlinops import xdiag

    H = curvlinops_hessian(P)
    return (lambda: xdiag(H, spec["num_matvecs"])), lambda r: r.numpy()


def curvlinops_estimate(kernel, A, num_matvecs, seed):
    """curvlinops' xtrace (float) or xdiag ((D,) array) of A (a curvlinops
    operator or a dense tensor) with torch's generator seeded by ``seed``."""
    from curvlinops import xdiag, xtrace

    torch.manual_seed(seed)
    if kernel == "xtrace":
        return float(xtrace(A, num_matvecs))
    return xdiag(A, num_matvecs).numpy()


def curvlinops_product(P, k):
    """``run()`` = curvlinops' Hessian times k vectors ((D,) for k = 1, else (D, k)):
    the product the stochastic tools are made of, for the per-product time."""
    H = curvlinops_hessian(P)
    V = torch.from_numpy(np.random.default_rng(7).standard_normal((P.D, k)).astype(P.X.numpy().dtype))
    if k == 1:
        V = V[:, 0].contiguous()
    return lambda: H @ V


_SAMPLERS = {  # kernel -> (module, name of the sampler it calls per random vector)
    "slq": ("curvlinops.papyan2020traces.spectrum", "randn"),
    "xtrace": ("curvlinops.trace.epperly2024xtrace", "random_vector"),
    "xdiag": ("curvlinops.diagonal.epperly2024xtrace", "random_vector"),
}


class fixed_vectors:
    """Context manager: curvlinops' ``kernel`` draws the given vectors, in order,
    instead of sampling (its public API takes no start/test vectors, so the
    module-level sampler its function calls is replaced and restored).
    ``vectors``: a list of (D,) arrays (slq: one start vector per Lanczos run;
    xtrace/xdiag: the sign vectors, i.e. the columns of pykfac's Omega)."""

    def __init__(self, kernel, vectors):
        import importlib

        modname, self.attr = _SAMPLERS[kernel]
        self.module = importlib.import_module(modname)
        if not hasattr(self.module, self.attr):
            raise AttributeError(f"{modname}.{self.attr} not found: this curvlinops version samples elsewhere")
        self.vectors = list(vectors)
        self.used = 0

    def _draw(self, dim, *args, **kwargs):
        if self.used >= len(self.vectors):
            raise RuntimeError(f"curvlinops drew more than the {len(self.vectors)} vectors given")
        dtype = kwargs.get("dtype", args[-1] if args else None)
        v = torch.from_numpy(np.array(self.vectors[self.used], dtype=np.float64)).to(dtype)
        if v.shape != (dim,):
            raise RuntimeError(f"curvlinops asked for a vector of size {dim}, got {tuple(v.shape)}")
        self.used += 1
        return v

    def __enter__(self):
        self.saved = getattr(self.module, self.attr)
        setattr(self.module, self.attr, self._draw)
        return self

    def __exit__(self, *exc):
        setattr(self.module, self.attr, self.saved)
        if exc[0] is None and self.used != len(self.vectors):
            raise RuntimeError(f"curvlinops drew {self.used} of the {len(self.vectors)} vectors given")
        return False


# ---------------------------------------------------------------------------
# registry: kernel -> [(peer name, required module, make)]
PEERS = {
    "fwd_bwd": [("torch.autograd", "torch", torch_fwd_bwd)],
    "jacobian": [("torch.func vmap(jacrev)", "torch", torchfunc_jacobian),
                 ("backpack BatchGrad x K", "backpack", backpack_jacobian)],
    "ggn_mv": [("curvlinops GGNLinearOperator", "curvlinops", curvlinops_ggn_mv),
               ("torch.func jvp+vjp", "torch", torchfunc_ggn_mv),
               ("backpack ggnvp", "backpack", backpack_ggn_mv)],
    "kfac_exact": [("curvlinops KFAC type-2", "curvlinops", curvlinops_kfac_exact),
                   ("backpack KFLR", "backpack", backpack_kflr)],
    "kfac_mc": [("curvlinops KFAC mc", "curvlinops", curvlinops_kfac_mc),
                ("backpack KFAC", "backpack", backpack_kfac_mc)],
    "diag_ggn": [("backpack DiagGGNExact", "backpack", backpack_diag_ggn)],
    "diag_mc": [("backpack DiagGGNMC", "backpack", backpack_diag_ggn_mc)],
    "diag_hess": [("backpack DiagHessian", "backpack", backpack_diag_hessian)],
    "ekfac": [("curvlinops EKFAC type-2", "curvlinops", curvlinops_ekfac)],
    "slq": [("curvlinops lanczos_spectrum", "curvlinops", curvlinops_slq)],
    "xtrace": [("curvlinops xtrace", "curvlinops", curvlinops_xtrace)],
    "xdiag": [("curvlinops xdiag", "curvlinops", curvlinops_xdiag)],
}


def peers_for(kernel):
    """The installed peers of a kernel: [(name, make)]."""
    if torch is None:
        return []
    return [(name, make) for name, mod, make in PEERS.get(kernel, []) if _has(mod)]


def missing_peers(kernel):
    """The peers of a kernel that cannot run here: [(name, reason)]."""
    if torch is None:
        return []  # reported once, by available()
    return [(name, f"{mod} is not importable") for name, mod, _ in PEERS.get(kernel, []) if not _has(mod)]


# ---------------------------------------------------------------------------
# checks that need more than one run
def mc_agreement(kernel, P, pk_mc, mc_samples, rel):
    """Check the MC peers of ``kernel`` ("kfac_mc" or "diag_mc") against
    pykfac's MC result ``pk_mc`` for the same small problem and ``mc_samples``.

    The samples differ (each library has its own generator), so the sampled
    parts agree only statistically: with ``mc_samples`` draws per datum both
    estimates approach the exact value. ``rel(a, b)`` is the difference
    measure. Returns {peer: (deterministic part's difference, sampled part's
    difference)}: for K-FAC (A, G), for the diagonal (0, diagonal).
    """
    out = {}
    for name, mod, make in PEERS[kernel]:
        if not _has(mod):
            continue
        run, convert = make(P, mc_samples=mc_samples)
        res = convert(run())
        if kernel == "kfac_mc":
            dA = max(rel(a, pa[:a.shape[0], :a.shape[1]]) for (a, _), (pa, _) in zip(res, pk_mc))
            dG = max(rel(g, pg) for (_, g), (_, pg) in zip(res, pk_mc))
            out[name] = (dA, dG)
        else:
            out[name] = (0.0, rel(res, pk_mc))
    return out


def mse_ggn_matvec_check(Ws, bs, activation, X, Y, v):
    """curvlinops' GGN-vector product for ``MSELoss(reduction="sum")`` divided
    by 2 (PyTorch's MSE is sum (y - f)^2 = 2 x pykfac's 1/2 ||y - f||^2).
    Y: (N, K) float targets. Returns the (D,) product in pykfac's convention."""
    from curvlinops import GGNLinearOperator

    P = Problem(Ws, bs, activation, X, np.zeros(X.shape[0], dtype=np.int64))
    Yt = torch.from_numpy(np.ascontiguousarray(Y))
    op = GGNLinearOperator(P.model, nn.MSELoss(reduction="sum"), P.params, [(P.X, Yt)],
                           check_deterministic=False, num_data=P.N)
    return (op @ torch.from_numpy(v)).numpy() / 2.0
