r"""Laplace approximations of a trained network's posterior (``pk.Laplace``).

Conventions (CONVENTIONS.md, "Laplace approximation"):

- prior :math:`\theta \sim \mathcal N(\mu_0, P_0^{-1})`, :math:`P_0 = \mathrm{diag}(\delta)`
  with ``prior_precision`` :math:`\delta` a scalar, one value per layer (a layer's
  ``W`` and ``b`` share it) or one per parameter;
- posterior precision :math:`P = G / (\sigma^2 T) + P_0` with :math:`G` the GGN of the
  SUMMED loss at the MAP :math:`\theta^*` (or its diagonal, Kronecker or low-rank
  approximation), :math:`\sigma` the observation noise (regression only, else 1)
  and :math:`T` the temperature;
- log marginal likelihood

  .. math:: \log Z = \log p(y|\theta^*) - \tfrac12 (\theta^*-\mu_0)^\top P_0 (\theta^*-\mu_0)
            - \tfrac12 \log\det P + \tfrac12 \log\det P_0,

  with :math:`\log p(y|\theta) = -L(\theta)/\sigma^2 - NK\log(\sigma\sqrt{2\pi})` for
  regression (``L`` = pykfac's ``mse`` sum, :math:`\tfrac12\sum\|y-f\|^2`) and
  :math:`-L(\theta)` for classification. The temperature enters :math:`P` only
  (laplace-torch also divides the log-likelihood by T; at T = 1 both agree);
- linearised (GLM) predictive :math:`f \sim \mathcal N(f(x,\theta^*), J P^{-1} J^\top)`.

Structures: ``"full"`` (dense GGN, Cholesky), ``"diag"`` (exact GGN diagonal),
``"kron"`` (K-FAC; each factor eigendecomposed ONCE at fit, the prior added
exactly to the eigenvalues :math:`\lambda_{G,i}\lambda_{A,j}/(\sigma^2T) + \delta_l`),
``"lowrank"`` (:math:`G = G_m G_m^\top` from per-sample Jacobians and output-Hessian
square roots, handled through its thin eigendecomposition and the Woodbury
identity, never a D x D matrix). Changing ``prior_precision``, ``sigma_noise`` or
``temperature`` after ``fit`` never refits or re-decomposes.
"""
import math
import numbers

import numpy as np

from . import _core, _persist
from . import metrics as _metrics
from . import linalg as _la
from ._data import flag, iter_batches, resolve_seed, seed_stream
from .curvature import ggn, hessian, hvp, jacobian, jvp, loss as _loss_value
from .curvature import output_curvature
from .kfac import KFAC_KINDS
from .kron import EKFACCurvature, KronCurvature
from .mlp import MLP

__all__ = ["Laplace", "LIKELIHOODS", "STRUCTURES"]

#: likelihood -> pykfac loss
LIKELIHOODS = {"regression": "mse", "classification": "ce", "binary": "bce"}
STRUCTURES = ("full", "diag", "kron", "lowrank", "ekfac")
SUBSETS = ("all", "last_layer", "subnetwork")
PRED_TYPES = ("glm", "nn")
LINK_APPROXES = ("probit", "mc", "bridge", "bridge_norm")
# save files: version 2 added posteriors built by from_jacobians, version 3 the
# low-rank posterior's Gmat factors (older low-rank files load without them and
# use forward-mode products); version 1 files (always from a network) have the
# same layout and still load
FORMAT_VERSION = 3
_READ_VERSIONS = (1, 2, 3)
_FILE_FORMAT = "pykfac-laplace"

# pk_fisher_t codes of the diagonal kinds (as pk.diag_ggn / pk.empirical_fisher_diag)
_DIAG_KINDS = {"exact": 0, "mc": 1, "empirical": 2}
# Jacobian chunks in the predictive: at most this many bytes of J at once.
_J_CHUNK_BYTES = 1 << 29
# Woodbury factors above this many elements are refused (use rank= or last_layer).
_LOWRANK_MAX = 1 << 28


def _pos_float(value, name):
    # bools and strings are not numbers here, although float() takes them
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a positive number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: expected a finite number > 0, got {v}")
    return v


def _real_array(value, name):
    """``value`` as a float64 array; numbers only (no bool, complex, str or object)."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected real numbers, got {type(value).__name__} of dtype {arr.dtype}")
    return np.array(arr, dtype=np.float64)


def _subnet_indices(value, D):
    """Sorted unique int64 indices in [0, D) from subnetwork_indices."""
    idx = np.asarray(value)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"subnetwork_indices: expected a non-empty 1-D array, got shape {idx.shape}")
    if idx.dtype.kind not in "iu":
        raise TypeError(f"subnetwork_indices: expected integers, got dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= D:
        raise ValueError(f"subnetwork_indices: expected indices in [0, {D}) (net.theta), "
                         f"got range [{idx.min()}, {idx.max()}]")
    out = np.unique(idx.astype(np.int64))
    if out.size != idx.size:
        raise ValueError("subnetwork_indices: contains repeated indices")
    return out


def _choice(value, options, name):
    if value not in options:
        raise ValueError(f"{name}: expected one of {tuple(options)}, got {value!r}")
    return value


def _clip_eigs(w):
    """Factor eigenvalues in float64 with roundoff-level values (n eps max) set to 0,
    exactly as the C core's Kronecker kernels do."""
    eps = np.finfo(np.float32 if np.asarray(w).dtype == np.float32 else np.float64).eps
    w = np.asarray(w, dtype=np.float64)
    return np.where(w > w.size * eps * max(float(w.max(initial=0.0)), 0.0), w, 0.0)


# ---------------------------------------------------------------------------
# prior
# ---------------------------------------------------------------------------
class _Prior:
    """A diagonal prior precision: scalar, per layer, or per parameter.

    ``values`` (float64, length 1, L or D), ``kind`` in {"scalar", "layer",
    "param"}, ``diag`` the (D,) expansion, ``offsets`` the L + 1 layer offsets.
    The kind follows from the length unless given (or taken from a _Prior):
    a subnetwork may have as many parameters as the network has layers, and
    then L values read as one per layer."""

    def __init__(self, value, offsets, kind=None):
        D, L = offsets[-1], len(offsets) - 1
        if isinstance(value, _Prior):
            kind = kind or value.kind
        arr = _real_array(value, "prior_precision") if not isinstance(value, _Prior) else value.values
        if arr.ndim > 1:
            raise ValueError(f"prior_precision: expected a number or a 1-D array, got shape {arr.shape}")
        arr = arr.reshape(-1)
        if not np.all(np.isfinite(arr)):
            raise ValueError("prior_precision: contains NaN or Inf")
        if np.any(arr <= 0):
            raise ValueError(f"prior_precision: expected values > 0, got minimum {arr.min():g}")
        sizes = {"scalar": 1, "layer": L, "param": D}
        if kind is None:
            kind = next((k for k, n in sizes.items() if arr.size == n), None)
        if kind is None or arr.size != sizes[kind]:
            raise ValueError(f"prior_precision: expected a number, {L} values (one per layer) or "
                             f"{D} values (one per parameter), got {arr.size}")
        diag = {"scalar": lambda: np.full(D, arr[0]), "layer": lambda: np.repeat(arr, np.diff(offsets)),
                "param": lambda: arr.copy()}[kind]()
        self.values, self.kind, self.diag, self.offsets = arr, kind, diag, list(offsets)
        self.values.setflags(write=False)
        self.diag.setflags(write=False)
        self.key = (kind, arr.tobytes())

    def group_sum(self, v):
        """Sum a (D,) vector over the prior's groups (length of ``values``)."""
        v = np.asarray(v, dtype=np.float64)
        if self.kind == "scalar":
            return np.array([v.sum()])
        if self.kind == "layer":  # (reduceat would misread empty layers of a subnetwork)
            return np.array([v[o:p].sum() for o, p in zip(self.offsets[:-1], self.offsets[1:])])
        return v

    def group_sizes(self):
        if self.kind == "scalar":
            return np.array([float(self.offsets[-1])])
        if self.kind == "layer":
            return np.diff(self.offsets).astype(np.float64)
        return np.ones(self.offsets[-1])

    def layer_values(self):
        """One value per layer (scalar or per-layer priors only)."""
        L = len(self.offsets) - 1
        if self.kind == "scalar":
            return [float(self.values[0])] * L
        if self.kind == "layer":
            return [float(v) for v in self.values]
        raise ValueError("prior_precision: structure='kron' needs a scalar or per-layer prior "
                         "precision (the prior is added exactly to each layer's Kronecker "
                         "eigenvalues); use 'diag', 'full' or 'lowrank' for one per parameter")


# ---------------------------------------------------------------------------
# Jacobians of a chunk of inputs, formed only as far as a posterior needs them
# ---------------------------------------------------------------------------
class _Jacobians:
    """The Jacobians J (N, K, D) of the model at a chunk of inputs ``Z``.

    A dense layer's Jacobian rows are rank one, J[n, k, W_l] = g_nk,l (x) a_n,l
    and J[n, k, b_l] = g_nk,l, so the diagonal, Kronecker and low-rank posteriors
    work from the factors (g, a) of every layer (O(N K sum(widths)) memory) and
    from forward-mode products J V; only the full posterior forms J itself.
    Built from given Jacobians (``from_jacobians``) only ``dense`` is available.
    """

    def __init__(self, model=None, Z=None, J=None):
        self.model, self.Z, self._J = model, Z, J
        self._factors = None
        self._JV = (None, None)

    @property
    def has_factors(self):
        return self.model is not None

    @property
    def dense(self):
        if self._J is None:
            self._J = jacobian(self.model, self.Z)
        return self._J

    def factors(self):
        """Per layer (g (N, K, out), abar (N, in + 1) with the bias column 1)."""
        if self._factors is None:
            Gs, As = _core.layer_jacobians(self.model, self.Z)
            self._factors = [(G, np.concatenate([A, np.ones((A.shape[0], 1), dtype=A.dtype)], axis=1))
                             for G, A in zip(Gs, As)]
        return self._factors

    def times(self, V):
        """J V (N, K, m) for V (D, m); the last product is kept for repeated use."""
        if self._JV[0] is not V:
            JV = jvp(self.model, self.Z, V) if self._J is None else self._J @ V
            self._JV = (V, JV)
        return self._JV[1]


def _normals(n, d, dtype, seed):
    """(n, d) standard normals of ``dtype`` from the C core's generator."""
    return _core.standard_normal(n, d, np.dtype(dtype) == np.float32, seed)


def _wbar(seg, out):
    """A layer's theta-ordered segment [W.ravel(), b] as the (out, in + 1) matrix [W b]."""
    return np.concatenate([seg[:-out].reshape(out, -1), seg[-out:, None]], axis=1)


# ---------------------------------------------------------------------------
# posterior structures: P = c H + diag(p0), c = 1 / (sigma^2 T)
# ---------------------------------------------------------------------------
class _Posterior:
    """Common interface; ``c`` scales the curvature, ``prior`` is a _Prior.

    logdet_grad returns (log det P, d logdet / d prior values, d logdet / d c)."""

    def __init__(self, D, dtype, offsets):
        self.D, self.dtype, self.offsets = D, np.dtype(dtype), list(offsets)

    def _rhs(self, V):
        return np.ascontiguousarray(V, dtype=self.dtype)

    #: forms the dense Jacobians in the predictive (else layer factors and J V)
    dense_jacobians = True
    #: columns of V in J V products per predictive chunk
    jvp_columns = 0

    # default implementations built on solve
    def functional_variance(self, jac, c, prior):
        J = jac.dense
        N, K, D = J.shape
        R = self.solve(J.reshape(N * K, D).T, c, prior)
        return _core.batched_gram(J, R)

    def _layer_diag_quad(self, jac, var):
        """sum over layers of J_l diag(var_l) J_l^T from the layer factors; var (D,)."""
        fv = None
        for l, (G, Abar) in enumerate(jac.factors()):
            F = _wbar(np.asarray(var[self.offsets[l]:self.offsets[l + 1]], dtype=self.dtype), G.shape[2])
            part = _core.diag_inv_quad(F, G, Abar)
            fv = part if fv is None else fv + part
        return fv

    def covariance_dense(self, c, prior):
        return self.solve(np.eye(self.D, dtype=self.dtype), c, prior)

    def matvec(self, V, c, prior):
        """P V for V (D, m) in the posterior's dtype."""
        raise NotImplementedError

    def variance(self, c, prior):
        """(D,) float64 diagonal of P^-1."""
        raise NotImplementedError


class _FullPosterior(_Posterior):
    structure = "full"

    def __init__(self, H, offsets, psd=True):
        """psd=False (an exact Hessian): H may be indefinite, so its eigenvalues must
        not be clipped; every log-det and solve goes through a Cholesky of P."""
        super().__init__(H.shape[0], H.dtype, offsets)
        self.H = H
        self.psd = psd
        self._eig = None
        self._chol = (None, None)
        self._cov = (None, None)
        # Scalar priors in marglik loops: one eigendecomposition of H, then every
        # log-det and trace is O(D). Single evaluations use a Cholesky (cheaper).
        self.prefer_eig = False

    def _use_eig(self, prior):
        return self.psd and prior.kind == "scalar" and (self.prefer_eig or self._eig is not None)

    def state(self):
        return {"H": self.H}

    @classmethod
    def from_state(cls, st, offsets, meta):
        return cls(st["H"], offsets, psd=meta.get("kind") != "hessian")

    def _eigvals(self):
        if self._eig is None:
            self._eig = _clip_eigs(_core.sym_eigvals(self.H))
        return self._eig

    def _factor(self, c, prior):
        key = (c, prior.key)
        cached_key, chol = self._chol
        if cached_key != key:
            name = "posterior precision" if self.psd else \
                "posterior precision (kind='hessian': the Hessian is indefinite here; raise the prior precision)"
            chol = _la.DensePrecision(self.precision_dense(c, prior), name)
            self._chol = (key, chol)
        return chol

    def precision_dense(self, c, prior):
        P = self.H * self.dtype.type(c)
        P[np.diag_indices(self.D)] += prior.diag.astype(self.dtype)
        return P

    def logdet_grad(self, c, prior):
        if self._use_eig(prior):
            w, d = self._eigvals(), prior.values[0]
            den = c * w + d
            return float(np.log(den).sum()), np.array([np.sum(1 / den)]), float(np.sum(w / den))
        F = self._factor(c, prior)
        dinv = np.diag(F.inverse()).astype(np.float64)
        return F.logdet(), prior.group_sum(dinv), (self.D - float(prior.diag @ dinv)) / c

    def logdet(self, c, prior):
        if self._use_eig(prior):
            return float(np.log(c * self._eigvals() + prior.values[0]).sum())
        return self._factor(c, prior).logdet()

    def solve(self, V, c, prior):
        return self._factor(c, prior).solve(self._rhs(V))

    def matvec(self, V, c, prior):
        V = self._rhs(V)
        return (self.H @ V) * self.dtype.type(c) + prior.diag.astype(self.dtype)[:, None] * V

    def sample(self, n, seed, c, prior, mean):
        S = self._factor(c, prior).whiten(_normals(n, self.D, self.dtype, seed))
        return S if mean is None else np.add(S, mean, out=S)

    def covariance_dense(self, c, prior):
        return self._factor(c, prior).inverse()

    def variance(self, c, prior):
        return np.diag(self._factor(c, prior).inverse()).astype(np.float64)

    @property
    def dense_jacobians(self):
        return len(self.offsets) > 2

    def functional_variance(self, jac, c, prior):
        """A linear model (the last layer) has Jacobian rows I_K (x) abar_n: the
        variances come from the covariance and the inputs alone
        (pk_linear_cov_quad, O(N K^2 q^2) instead of O(N K D^2) for J P^-1 J^T)."""
        if self.dense_jacobians or not jac.has_factors:
            return super().functional_variance(jac, c, prior)
        key = (c, prior.key)
        cached_key, cov = self._cov
        if cached_key != key:
            cov = self._factor(c, prior).inverse()
            self._cov = (key, cov)
        G, Abar = jac.factors()[0]
        return _core.linear_cov_quad(cov, Abar, G.shape[2])


class _DiagPosterior(_Posterior):
    structure = "diag"

    def __init__(self, h, offsets, psd=True):
        """psd=False (an exact Hessian diagonal): negative entries are real curvature,
        not roundoff, so they are kept and a non-positive precision raises."""
        super().__init__(h.shape[0], h.dtype, offsets)
        self.h = h
        self.psd = psd
        self._h64 = np.maximum(h.astype(np.float64), 0.0) if psd else h.astype(np.float64)

    def state(self):
        return {"h": self.h}

    @classmethod
    def from_state(cls, st, offsets, meta):
        return cls(st["h"], offsets, psd=meta.get("kind") != "hessian")

    def _p(self, c, prior):
        p = c * self._h64 + prior.diag
        if not self.psd and not np.all(p > 0):
            raise _core.LinAlgError(
                f"posterior precision (kind='hessian'): the Hessian diagonal plus the prior is <= 0 at "
                f"{int(np.sum(~(p > 0)))} of {p.size} parameters; raise the prior precision")
        return p

    def precision_dense(self, c, prior):
        return np.diag(self._p(c, prior)).astype(self.dtype)

    def matvec(self, V, c, prior):
        return self._p(c, prior).astype(self.dtype)[:, None] * self._rhs(V)

    def variance(self, c, prior):
        return 1.0 / self._p(c, prior)

    def covariance_dense(self, c, prior):
        return np.diag(1.0 / self._p(c, prior)).astype(self.dtype)

    def logdet(self, c, prior):
        return float(np.log(self._p(c, prior)).sum())

    def logdet_grad(self, c, prior):
        p = self._p(c, prior)
        return float(np.log(p).sum()), prior.group_sum(1.0 / p), float(np.sum(self._h64 / p))

    def solve(self, V, c, prior):
        V = self._rhs(V)
        return (V / self._p(c, prior)[:, None]).astype(self.dtype)

    def sample(self, n, seed, c, prior, mean):
        # one fused C pass: mean + p^(-1/2) * z
        return _core.standard_normal(n, self.D, self.dtype == np.float32, seed, mean=mean,
                                     scale=(1.0 / np.sqrt(self._p(c, prior))).astype(self.dtype))

    dense_jacobians = False

    def functional_variance(self, jac, c, prior):
        var = 1.0 / self._p(c, prior)
        if jac.has_factors:
            return self._layer_diag_quad(jac, var)
        return _core.diag_quad(jac.dense, var)


class _KronPosterior(_Posterior):
    structure = "kron"

    def __init__(self, kron, offsets, damping="exact", eig=None):
        super().__init__(kron.num_params, kron.dtype, offsets)
        self.kron = kron
        self.factored = damping == "factored"
        if eig is not None:
            kron._eig = [tuple(np.asarray(a) for a in e) for e in eig]
        self.eig = kron.eigh()  # once, at fit
        self._w = [(_clip_eigs(wG), _clip_eigs(wA)) for wG, _, wA, _ in self.eig]
        self._E = [np.outer(g, a).ravel() for g, a in self._w]

    def state(self):
        st = {}
        for l, (A, G) in enumerate(zip(self.kron.A, self.kron.G)):
            st[f"A{l}"], st[f"G{l}"] = A, G
            wG, QG, wA, QA = self.eig[l]
            st[f"wG{l}"], st[f"QG{l}"], st[f"wA{l}"], st[f"QA{l}"] = wG, QG, wA, QA
        return st

    @classmethod
    def from_state(cls, st, offsets, meta):
        L = len(offsets) - 1
        K = KronCurvature([st[f"A{l}"] for l in range(L)], [st[f"G{l}"] for l in range(L)],
                          meta["sizes"], num_data=meta["n_data"], kind=meta["kind"])
        eig = [(st[f"wG{l}"], st[f"QG{l}"], st[f"wA{l}"], st[f"QA{l}"]) for l in range(L)]
        return cls(K, offsets, meta["kron_damping"], eig=eig)

    def _layers(self, prior):
        return prior.layer_values()

    def logdet_grad(self, c, prior):
        deltas = self._layers(prior)
        total, dd, dc = 0.0, [], 0.0
        for (g, a), E, d in zip(self._w, self._E, deltas):
            if self.factored:
                s = math.sqrt(d)
                tg, ta = c * g + s, a + s
                total += a.size * np.log(tg).sum() + g.size * np.log(ta).sum()
                dd.append((a.size * np.sum(1 / tg) + g.size * np.sum(1 / ta)) / (2 * s))
                dc += a.size * np.sum(g / tg)
            else:
                den = c * E + d
                total += np.log(den).sum()
                dd.append(np.sum(1 / den))
                dc += np.sum(E / den)
        dd = np.array(dd)
        if prior.kind == "scalar":
            dd = np.array([dd.sum()])
        return float(total), dd, float(dc)

    def logdet(self, c, prior):
        return self.logdet_grad(c, prior)[0]

    def _apply(self, V, c, prior, power):
        deltas = self._layers(prior)
        V = self._rhs(V)
        R = np.empty_like(V)
        for l in range(len(self.eig)):
            o, p = self.offsets[l], self.offsets[l + 1]
            R[o:p] = self._layer_apply(l, V[o:p], c, deltas[l], power)
        return R

    def _layer_apply(self, l, V, c, d, power):
        """Layer l's block of P^power times V (its theta-ordered rows)."""
        wG, QG, wA, QA = self.eig[l]
        try:
            return _core.kron_eig_apply(wG, QG, wA, QA, V, scale=c, damping=d, factored=self.factored, pi=1.0,
                                        power=power)
        except _core.LinAlgError:
            raise _core.LinAlgError(f"posterior precision of layer {l} is singular") from None

    def solve(self, V, c, prior):
        return self._apply(V, c, prior, -1.0)

    def matvec(self, V, c, prior):
        return self._apply(V, c, prior, 1.0)

    def _inverse_eigenvalues(self, l, c, d):
        """Layer l's (out, in + 1) matrix of 1 / (damped eigenvalue), float64."""
        g, a = self._w[l]
        if self.factored:
            s = math.sqrt(d)
            return np.outer(1.0 / (c * g + s), 1.0 / (a + s))
        return 1.0 / (c * np.outer(g, a) + d)

    def variance(self, c, prior):
        """Per layer, Var[Wbar] = (QG o QG) diag-inverse (QA o QA)^T: two GEMMs."""
        out = np.empty(self.D)
        for l, ((wG, QG, wA, QA), d) in enumerate(zip(self.eig, self._layers(prior))):
            inv = self._inverse_eigenvalues(l, c, d)
            QG2, QA2 = np.square(QG, dtype=np.float64), np.square(QA, dtype=np.float64)
            Vbar = QG2 @ inv @ QA2.T  # (out, in + 1): [W b]
            o, p = self.offsets[l], self.offsets[l + 1]
            out[o:p] = np.concatenate([Vbar[:, :-1].ravel(), Vbar[:, -1]])
        return out

    dense_jacobians = False

    def functional_variance(self, jac, c, prior):
        """From the layer factors of the Jacobian rows (pk.linalg.kron_inv_quad):
        J itself is never formed (given Jacobians: the solve-based default)."""
        if not jac.has_factors:
            return super().functional_variance(jac, c, prior)
        deltas = self._layers(prior)
        fv = None
        for l, ((wG, QG, wA, QA), (G, Abar)) in enumerate(zip(self.eig, jac.factors())):
            try:
                part = _core.kron_inv_quad(wG, QG, wA, QA, G, Abar, scale=c, damping=deltas[l],
                                           factored=self.factored)
            except _core.LinAlgError:
                raise _core.LinAlgError(f"posterior precision of layer {l} is singular") from None
            fv = part if fv is None else fv + part
        return fv

    def sample(self, n, seed, c, prior, mean):
        """Matrix-normal draws per layer, QG [F o Z] QAᵀ (pk_kron_sample), added by
        the C core straight into the theta-ordered rows that start at the mean."""
        deltas = self._layers(prior)
        out = np.zeros((n, self.D), dtype=self.dtype) if mean is None else np.tile(mean, (n, 1))
        for l, ((wG, QG, wA, QA), layer_seed) in enumerate(zip(self.eig, seed_stream(seed))):
            o, p = self.offsets[l], self.offsets[l + 1]
            try:
                _core.kron_sample(wG, QG, wA, QA, out[:, o:p], layer_seed, scale=c, damping=deltas[l],
                                  factored=self.factored)
            except _core.LinAlgError:
                raise _core.LinAlgError(f"posterior precision of layer {l} is singular") from None
        return out

    def precision_dense(self, c, prior):
        deltas = self._layers(prior)
        B = np.zeros((self.D, self.D), dtype=self.dtype)
        for l, (A, G) in enumerate(zip(self.kron.A, self.kron.G)):
            o, p = self.offsets[l], self.offsets[l + 1]
            if self.factored:
                s = math.sqrt(deltas[l])
                Gs = G * self.dtype.type(c) + self.dtype.type(s) * np.eye(len(G), dtype=self.dtype)
                As = A + self.dtype.type(s) * np.eye(len(A), dtype=self.dtype)
                _core.kron_to_dense(Gs, As, out=B[o:p, o:p])
            else:
                _core.kron_to_dense(G * self.dtype.type(c), A, out=B[o:p, o:p])
                B[np.arange(o, p), np.arange(o, p)] += self.dtype.type(deltas[l])
        return B

    def covariance_dense(self, c, prior):
        C = np.zeros((self.D, self.D), dtype=self.dtype)
        deltas = self._layers(prior)
        for l, (wG, QG, wA, QA) in enumerate(self.eig):
            o, p = self.offsets[l], self.offsets[l + 1]
            C[o:p, o:p] = _core.kron_eig_apply(wG, QG, wA, QA, np.eye(p - o, dtype=self.dtype),
                                               scale=c, damping=deltas[l], factored=self.factored,
                                               pi=1.0, power=-1.0)
        return C


class _LowRankPosterior(_Posterior):
    structure = "lowrank"

    def __init__(self, s, Q, offsets, gmat=None):
        """gmat: None, or the factors (U, A, C) of Gmat and Q = Gmat C (see
        fit), for J Q through the kernel J Gmat in the predictive."""
        super().__init__(Q.shape[0], Q.dtype, offsets)
        self.s, self.Q, self.gmat = s, Q, gmat
        self._s64 = s.astype(np.float64)
        self.rank = s.shape[0]

    def state(self):
        st = {"s": self.s, "Q": self.Q}
        if self.gmat is not None:
            U, A, C = self.gmat
            st["gC"] = C
            for l, (u, a) in enumerate(zip(U, A)):
                st[f"gU{l}"], st[f"gA{l}"] = u, a
        return st

    @classmethod
    def from_state(cls, st, offsets, meta):
        gmat = None
        if "gC" in st:
            L = len(offsets) - 1
            U, A, C = [st[f"gU{l}"] for l in range(L)], [st[f"gA{l}"] for l in range(L)], st["gC"]
            if C.shape[0] != U[0].shape[0] * U[0].shape[1]:
                raise ValueError(f"gC: expected {U[0].shape[0] * U[0].shape[1]} rows, got {C.shape[0]}")
            gmat = (U, A, C)
        return cls(st["s"], st["Q"], offsets, gmat)

    def _jq(self, jac, layer_weights=None):
        """J diag(w) Q (N, K, r) with w constant per layer (None: 1): through the
        kernel J Gmat when Gmat's factors are known, else by forward mode."""
        if self.gmat is not None and jac.has_factors:
            U, A, C = self.gmat
            F = jac.factors()
            return _core.lowrank_jq_layers([g for g, _ in F], [a for _, a in F], U, A, layer_weights, C)
        if layer_weights is None:
            return jac.times(self.Q)
        w = np.repeat(np.asarray(layer_weights), np.diff(self.offsets)).astype(self.dtype)
        return jac.times(np.ascontiguousarray(self.Q * w[:, None]))

    def _U(self, c):
        return self.Q * np.sqrt(c * self._s64).astype(self.dtype)

    def _spectral(self, c, d, power):
        """a0, dvec of (c Q S Q^T + d I)^power = a0 I + Q diag(dvec) Q^T."""
        lam = c * self._s64 + d
        return d ** power, lam ** power - d ** power

    def logdet_grad(self, c, prior):
        s = self._s64
        if prior.kind == "scalar":
            d = prior.values[0]
            den = c * s + d
            ld = (self.D - self.rank) * math.log(d) + np.log(den).sum()
            return float(ld), np.array([(self.D - self.rank) / d + np.sum(1 / den)]), float(np.sum(s / den))
        U = self._U(c)
        ld = _la.woodbury_logdet(prior.diag, U)
        dinv = _la.woodbury_diag_inverse(prior.diag, U).astype(np.float64)
        return ld, prior.group_sum(dinv), (self.D - float(prior.diag @ dinv)) / c

    def logdet(self, c, prior):
        if prior.kind == "scalar":
            return self.logdet_grad(c, prior)[0]
        return _la.woodbury_logdet(prior.diag, self._U(c))

    def solve(self, V, c, prior):
        V = self._rhs(V)
        if prior.kind == "scalar":
            a0, dv = self._spectral(c, prior.values[0], -1.0)
            return _core.lowrank_apply(self.Q, a0, dv, V)
        return _la.woodbury_solve(prior.diag, self._U(c), V)

    def matvec(self, V, c, prior):
        V = self._rhs(V)
        return _core.lowrank_apply(self.Q, 0.0, c * self._s64, V) + prior.diag.astype(self.dtype)[:, None] * V

    def variance(self, c, prior):
        if prior.kind == "scalar":
            a0, dv = self._spectral(c, prior.values[0], -1.0)
            return a0 + np.square(self.Q, dtype=np.float64) @ dv
        return _la.woodbury_diag_inverse(prior.diag, self._U(c)).astype(np.float64)

    def sample(self, n, seed, c, prior, mean):
        if prior.kind == "scalar":
            Zt = _normals(self.D, n, self.dtype, seed)  # columns are draws
            a0, dv = self._spectral(c, prior.values[0], -0.5)
            S = np.ascontiguousarray(_core.lowrank_apply(self.Q, a0, dv, Zt).T)
        else:
            S = _core.woodbury_sample(prior.diag, self._U(c), n, seed)
        return S if mean is None else np.add(S, mean, out=S)

    dense_jacobians = False

    @property
    def jvp_columns(self):
        return self.rank

    def functional_variance(self, jac, c, prior):
        """J P^-1 J^T = J A^-1 J^T - (J A^-1 U) C^-1 (J A^-1 U)^T with P = A + U U^T,
        A the prior's diagonal: the first term from the layer factors, J V by
        forward mode (O(N M) passes' worth of work, never J itself)."""
        if not jac.has_factors:
            if prior.kind != "scalar":
                return super().functional_variance(jac, c, prior)
            a0, dv = self._spectral(c, prior.values[0], -1.0)
            return _core.lowrank_quad(jac.dense, self.Q, a0, dv)
        if prior.kind == "scalar":
            a0, dv = self._spectral(c, prior.values[0], -1.0)
            fv = self._layer_diag_quad(jac, np.full(self.D, a0))
            return fv + _core.diag_quad(self._jq(jac), dv)
        ainv = 1.0 / prior.diag
        V = np.ascontiguousarray(self._U(c) * ainv[:, None].astype(self.dtype))
        Cap = np.eye(self.rank) + self._U(c).T.astype(np.float64) @ V.astype(np.float64)
        e, E = np.linalg.eigh(Cap)
        if prior.kind == "layer":  # V = diag(ainv) Q diag(sqrt(c s)), ainv constant per layer
            JV = self._jq(jac, 1.0 / prior.values) * np.sqrt(c * self._s64).astype(self.dtype)
        else:
            JV = jac.times(V)
        JVE = np.ascontiguousarray(JV @ E.astype(self.dtype))
        return self._layer_diag_quad(jac, ainv) - _core.diag_quad(JVE, 1.0 / e)

    def precision_dense(self, c, prior):
        P = _core.lowrank_apply(self.Q, 0.0, c * self._s64, np.eye(self.D, dtype=self.dtype))
        P[np.diag_indices(self.D)] += prior.diag.astype(self.dtype)
        return P

    def covariance_dense(self, c, prior):
        if prior.kind == "scalar":
            return self.solve(np.eye(self.D, dtype=self.dtype), c, prior)
        return _la.woodbury_inverse(prior.diag, self._U(c))


class _EKFACPosterior(_KronPosterior):
    """P = c EKFAC + prior per layer: K-FAC's eigenbasis QG (x) QA with the eigenvalues
    c S_l + delta_l (S_l the curvature's own diagonal in that basis). Every product
    is a basis change with an explicit eigenvalue matrix (pk_kron_basis_apply)."""
    structure = "ekfac"

    def __init__(self, kron, offsets, eig=None):
        super().__init__(kron, offsets, "exact", eig)
        self._E = [S.astype(np.float64).ravel() for S in kron.scales]

    def state(self):
        st = super().state()
        for l, S in enumerate(self.kron.scales):
            st[f"S{l}"] = S
        return st

    @classmethod
    def from_state(cls, st, offsets, meta):
        L = len(offsets) - 1
        K = EKFACCurvature([st[f"A{l}"] for l in range(L)], [st[f"G{l}"] for l in range(L)], meta["sizes"],
                           [st[f"S{l}"] for l in range(L)], num_data=meta["n_data"], kind=meta["kind"])
        eig = [(st[f"wG{l}"], st[f"QG{l}"], st[f"wA{l}"], st[f"QA{l}"]) for l in range(L)]
        return cls(K, offsets, eig=eig)

    def _F(self, l, c, d, power):
        """(c S_l + d)^power as the (out, in + 1) matrix, in the posterior's dtype."""
        den = c * self.kron.scales[l].astype(np.float64) + d
        if not np.all(den > 0):
            raise _core.LinAlgError(f"posterior precision of layer {l} is singular")
        return (den ** power).astype(self.dtype)

    def _layer_apply(self, l, V, c, d, power):
        _, QG, _, QA = self.eig[l]
        return _core.kron_basis_apply(QG, QA, self._F(l, c, d, power), V)

    def _inverse_eigenvalues(self, l, c, d):
        return self._F(l, c, d, -1.0).astype(np.float64)

    def functional_variance(self, jac, c, prior):
        """The Jacobian's layer factors rotated into the eigenbasis (G QG, Abar QA),
        then the diagonal quadratic form with 1/(c S + delta) (pk.linalg.diag_inv_quad)."""
        if not jac.has_factors:
            return _Posterior.functional_variance(self, jac, c, prior)
        fv = None
        for l, ((_, QG, _, QA), (G, Abar), d) in enumerate(zip(self.eig, jac.factors(), self._layers(prior))):
            part = _core.diag_inv_quad(self._F(l, c, d, -1.0), np.matmul(G, QG), np.matmul(Abar, QA))
            fv = part if fv is None else fv + part
        return fv

    def sample(self, n, seed, c, prior, mean):
        """Per layer (QG (x) QA) (c S + delta)^(-1/2) (QG (x) QA)^T z: the symmetric root
        (four GEMMs per draw, where kron's matrix normal needs two)."""
        deltas = self._layers(prior)
        out = np.zeros((n, self.D), dtype=self.dtype) if mean is None else np.tile(mean, (n, 1))
        for l, ((_, QG, _, QA), layer_seed) in enumerate(zip(self.eig, seed_stream(seed))):
            o, p = self.offsets[l], self.offsets[l + 1]
            Z = _core.standard_normal(p - o, n, self.dtype == np.float32, layer_seed)
            out[:, o:p] += _core.kron_basis_apply(QG, QA, self._F(l, c, deltas[l], -0.5), Z).T
        return out

    def precision_dense(self, c, prior):
        return self._block_dense(c, prior, 1.0)

    def covariance_dense(self, c, prior):
        return self._block_dense(c, prior, -1.0)

    def _block_dense(self, c, prior, power):
        B = np.zeros((self.D, self.D), dtype=self.dtype)
        deltas = self._layers(prior)
        for l, (_, QG, _, QA) in enumerate(self.eig):
            o, p = self.offsets[l], self.offsets[l + 1]
            B[o:p, o:p] = _core.kron_basis_apply(QG, QA, self._F(l, c, deltas[l], power),
                                                 np.eye(p - o, dtype=self.dtype))
        return B


_POSTERIORS = {"full": _FullPosterior, "diag": _DiagPosterior, "kron": _KronPosterior,
               "lowrank": _LowRankPosterior, "ekfac": _EKFACPosterior}


# ---------------------------------------------------------------------------
# predictive helpers (output space, tiny K x K algebra)
# ---------------------------------------------------------------------------
def _softmax(f):
    z = f - f.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(f):
    return np.where(f >= 0, 1 / (1 + np.exp(-np.abs(f))), np.exp(-np.abs(f)) / (1 + np.exp(-np.abs(f))))


def _bridge(mu, var, normalized=False):
    """Laplace bridge (Hobbhahn et al. 2022): Gaussian logits -> Dirichlet -> its mean.

    The logits are first projected onto the sum-zero subspace (softmax is
    invariant to shifts), then alpha_k = (1 - 2/K + e^{mu_k}/K^2 sum_l e^{-mu_l}) / Sigma_kk.
    normalized: laplace-torch's "bridge_norm", which first divides mu by sqrt(m)
    and diag(Sigma) by m, m = mean_k Sigma_kk / sqrt(K/2)."""
    mu = np.asarray(mu, dtype=np.float64)
    var = np.asarray(var, dtype=np.float64)
    K = mu.shape[-1]
    s_row = var.sum(-1)  # (N, K) = Sigma 1
    s_all = s_row.sum(-1, keepdims=True)  # 1^T Sigma 1
    # 1^T Sigma 1 = 0 means Sigma 1 = 0 (PSD): Sigma already lives on the
    # sum-zero subspace, only the mean needs centring
    proj = s_all > 0
    safe = np.where(proj, s_all, 1.0)
    mu = np.where(proj, mu - s_row * mu.sum(-1, keepdims=True) / safe, mu - mu.mean(-1, keepdims=True))
    var = var - np.einsum("ni,nj->nij", s_row, s_row) / safe[:, :, None] * proj[:, :, None]
    dvar = np.diagonal(var, axis1=1, axis2=2)
    # a logit without variance: the Dirichlet's concentration is infinite; the
    # zero-variance limit of the predictive is the softmax of the mean
    certain = np.any(dvar <= 0, axis=-1)
    mu_c = mu
    if normalized:
        m = dvar.mean(-1, keepdims=True) / math.sqrt(K / 2)
        m = np.where(m > 0, m, 1.0)
        mu, dvar = mu / np.sqrt(m), dvar / m
    # log alpha: e^{mu_k} sum_l e^{-mu_l} overflows once the logits spread by ~700
    log_sum_exp = np.logaddexp.reduce(-mu, axis=-1, keepdims=True)
    log_num = np.logaddexp(math.log(1 - 2 / K) if K > 2 else -np.inf, mu + log_sum_exp - 2 * math.log(K))
    out = _softmax(log_num - np.log(np.where(dvar > 0, dvar, 1.0)))
    out[certain] = _softmax(mu_c[certain])
    return out


def _add_scaled_sums(prev, new, weight):
    """The fit's curvature sums (H, h, [A], [G], Gmat factors): prev + weight * new,
    for a subset-of-data fit scaled to all rows. Both Kronecker factor sums scale,
    so G (x) A / N is weight times the subset's K-FAC; Gmat's columns scale by
    sqrt(weight)."""
    def add(p, x):
        if x is None:
            return p
        x = x * x.dtype.type(weight)
        return x if p is None else p + x

    (pH, ph, pA, pG, pgmat), (H, h, A, G, gmat) = prev, new
    if A is not None:
        A = [add(p, a) for p, a in zip(pA or [None] * len(A), A)]
        G = [add(p, g) for p, g in zip(pG or [None] * len(G), G)]
    root = math.sqrt(weight)
    return add(pH, H), add(ph, h), A, G, pgmat + [([u * u.dtype.type(root) for u in U], As) for U, As in gmat]


# ---------------------------------------------------------------------------
# the public class
# ---------------------------------------------------------------------------

class Laplace:
    r"""Laplace approximation :math:`\mathcal N(\theta^*, P^{-1})` of a trained network.

    Parameters
    ----------
    net : MLP or None
        The trained network; ``net.theta`` at ``fit`` time is the MAP
        :math:`\theta^*` (a private copy is kept, so later changes to ``net``
        do not affect the posterior). None only via :meth:`from_jacobians`.
    likelihood : {"regression", "classification", "binary"}
        Losses ``mse`` (labels (N, K) floats), ``ce`` (integer labels (N,)) and
        ``bce`` (labels 0/1: (N,) for one output, or (N, K) for K independent
        binary outputs, i.e. multi-label classification).
    structure : {"full", "diag", "kron", "lowrank", "ekfac"}
        ``"ekfac"``: K-FAC's eigenbasis with the curvature's own diagonal in it
        (George et al. 2018; :func:`pykfac.ekfac`), one more pass over the data
        at fit; the prior is added to those eigenvalues exactly.
    subset : {"all", "last_layer", "subnetwork"}
        ``"last_layer"``: the posterior over the last layer only, with
        features ``net.features(X)`` and the exact GGN of that (linear) layer.
        ``"subnetwork"``: over the parameters ``subnetwork_indices`` only (the
        others stay at the MAP; Daxberger et al. 2021), with ``"full"`` (the
        exact GGN block, from the Jacobian columns of the subnetwork, which are
        gathered from the layer factors: O(N K S) memory, never O(N K D)) or
        ``"diag"``.
    subnetwork_indices : array_like of int, optional
        With ``subset="subnetwork"``: indices into ``net.theta`` (unique; the
        posterior's parameters are these in ascending order).
    prior_precision : float or array_like
        Scalar, one value per layer (``W`` and ``b`` of a layer share it) or
        one per parameter (not for ``"kron"``). Must be > 0.
    sigma_noise : float
        Observation noise :math:`\sigma` (regression; must be 1 otherwise).
    temperature : float
        :math:`T` in :math:`P = G/(\sigma^2 T) + P_0`.
    prior_mean : float or array_like (D,)
        :math:`\mu_0`, used in the log marginal likelihood only.
    kind : {"exact", "mc", "empirical", "kfra", "hessian"}
        The curvature: the exact GGN, its Monte Carlo (Fisher) estimate with
        ``mc_samples`` targets per datum sampled from the model, or the
        empirical Fisher :math:`\sum_n g_n g_n^\top` (true-label gradients),
        for every structure; ``"kfra"`` for ``"kron"`` only; ``"hessian"``
        (the exact Hessian of the loss, which may be indefinite away from a
        minimum: then P is not positive definite and its use raises
        ``pk.LinAlgError``) for ``"full"`` and ``"diag"``.
    mc_samples : int
        Sampled targets per datum for ``kind="mc"``.
    rank : int or None
        ``"lowrank"`` only: keep the ``rank`` largest eigenvalues of the GGN.
    kron_damping : {"exact", "factored"}
        ``"factored"``: Ritter et al.'s :math:`(\lambda_G/(\sigma^2T) + \sqrt\delta)(\lambda_A + \sqrt\delta)`
        instead of the exact :math:`\lambda_G\lambda_A/(\sigma^2T) + \delta`.
    seed : int or None
        Seeds ``kind="mc"`` and the rows of ``fit(..., n_subset=)``.

    Attributes
    ----------
    mean : ndarray (D,)
        :math:`\theta^*` of the parameters under the posterior (the last layer's for
        ``subset="last_layer"``, ``net.theta[subnetwork_indices]`` for a subnetwork).
    n_params, n_data, n_outputs, loss : int, int, int, float
        ``loss`` is the summed training loss at the MAP.
    subset_indices : ndarray or None
        The rows the last ``fit(..., n_subset=)`` drew (sorted), else None.
    """

    def __init__(self, net, likelihood="classification", structure="kron", subset="all",
                 prior_precision=1.0, sigma_noise=1.0, temperature=1.0, prior_mean=0.0,
                 kind="exact", mc_samples=1, rank=None, kron_damping="exact", seed=None,
                 subnetwork_indices=None):
        self._sub = None  # the subnetwork's indices into net.theta (set by _set_model)
        if net is not None and not isinstance(net, MLP):
            raise TypeError(f"net: expected a pykfac.MLP, got {type(net).__name__}")
        self.likelihood = _choice(likelihood, LIKELIHOODS, "likelihood")
        self.structure = _choice(structure, STRUCTURES, "structure")
        self.subset = _choice(subset, SUBSETS, "subset")
        if subset == "subnetwork":
            if subnetwork_indices is None:
                raise ValueError("subnetwork_indices: subset='subnetwork' needs the indices of its parameters")
            if structure not in ("full", "diag"):
                raise ValueError(f"structure: subset='subnetwork' supports 'full' or 'diag', got {structure!r}")
        elif subnetwork_indices is not None:
            raise ValueError("subnetwork_indices: only used with subset='subnetwork'")
        self._sub_init = subnetwork_indices
        self.lossname = LIKELIHOODS[likelihood]
        kinds = {"kron": tuple(KFAC_KINDS), "full": ("exact", "mc", "empirical", "hessian"),
                 "diag": ("exact", "mc", "empirical", "hessian")}.get(structure, ("exact", "mc", "empirical"))
        self.kind = _choice(kind, kinds, f"kind (structure={structure!r})")
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, (int, np.integer)) or mc_samples < 1:
            raise ValueError(f"mc_samples: expected a positive int, got {mc_samples!r}")
        self.mc_samples = int(mc_samples)
        if rank is not None:
            if structure != "lowrank":
                raise ValueError("rank: only used with structure='lowrank'")
            if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
                raise ValueError(f"rank: expected a positive int or None, got {rank!r}")
            rank = int(rank)
        self.rank = rank
        self.kron_damping = _choice(kron_damping, ("exact", "factored"), "kron_damping")
        if structure == "ekfac" and kron_damping != "exact":
            raise ValueError("kron_damping: EKFAC's eigenvalues are not a Kronecker product; only 'exact'")
        if seed is not None:
            resolve_seed(seed)  # a bad seed fails here, not at fit and only for kind="mc"
        self.seed = seed
        self.net = net
        K = None
        if net is not None:
            K = net.n_outputs
            if likelihood == "classification" and K < 2:
                raise ValueError("likelihood: 'classification' needs at least 2 outputs (use 'binary' for 1)")
            self._set_model(net)
        self.n_outputs = K
        self._temperature = _pos_float(temperature, "temperature")
        self.sigma_noise = sigma_noise
        self._prior_init = prior_precision
        self._prior = self._make_prior(prior_precision) if net is not None else None
        self._prior_mean_init = prior_mean
        self._prior_mean = self._check_prior_mean(prior_mean) if net is not None else None
        self._post = None
        self.subset_indices = None
        self._n_batches = 0  # batches behind the fit: where an override=False fit continues the MC seeds
        self.loss = None
        self.n_data = None
        self._from_jac = False

    # ---- model pieces --------------------------------------------------------
    def _set_model(self, net):
        """Private copies: the full net (features) and the model the posterior is over."""
        self._net = net.copy()
        if self.subset == "last_layer":
            last = self._net.layers[-1]
            self._model = MLP.from_params([(last.W, last.b)], dtype=self._net.dtype)
        else:
            self._model = self._net
        self._offsets = [0]
        for layer in self._model.layers:
            self._offsets.append(self._offsets[-1] + layer.num_params)
        self._sub = None
        if self.subset == "subnetwork":
            self._sub = _subnet_indices(self._sub_init, self._offsets[-1])
            # the posterior's layers: the subnetwork's parameters in each (some may be empty)
            self._offsets = [int(v) for v in np.searchsorted(self._sub, self._offsets)]
        self.dtype = self._model.dtype

    def _inputs(self, X):
        """What the posterior's model sees: X, or the penultimate features."""
        if self.subset != "last_layer":
            return X
        return self._net.features(X)

    def _theta_star(self):
        """The MAP of the posterior's parameters (None: from Jacobians without theta_map)."""
        if self._from_jac:
            return self._theta_map
        theta = self._model.theta
        return theta if self._sub is None else theta[self._sub]

    def _full_thetas(self, thetas):
        """Rows of the posterior model's parameters from rows of the posterior's own."""
        if self._sub is None:
            return thetas
        full = np.tile(self._model.theta, (thetas.shape[0], 1))
        full[:, self._sub] = thetas
        return full

    def _jacobians(self, Z):
        """_Jacobians of the posterior's parameters at model inputs Z: for a
        subnetwork, its columns gathered from the layer factors, J[n, k, (i, j)]
        = g[n, k, i] abar[n, j]."""
        jac = _Jacobians(self._model, Z)
        if self._sub is None:
            return jac
        N, K = Z.shape[0], self.n_outputs
        J = np.empty((N, K, self.n_params), dtype=self.dtype)
        full_off = np.cumsum([0] + [layer.num_params for layer in self._model.layers])
        for l, (G, Abar) in enumerate(jac.factors()):
            o, p = self._offsets[l], self._offsets[l + 1]
            if o == p:
                continue
            local = self._sub[o:p] - full_off[l]
            n_in = Abar.shape[1] - 1
            n_w = G.shape[2] * n_in
            rows = np.where(local < n_w, local // n_in, local - n_w)
            cols = np.where(local < n_w, local % n_in, n_in)
            np.multiply(G[:, :, rows], Abar[:, None, cols], out=J[:, :, o:p])
        return _Jacobians(J=J)

    @property
    def n_params(self):
        return self._offsets[-1]

    @property
    def mean(self):
        self._check_fit()
        theta = self._theta_star()
        return None if theta is None else theta.copy()

    def _check_fit(self):
        if self._post is None:
            raise RuntimeError("Laplace: call fit(data) first (the posterior is not fitted)")

    def _check_prior_mean(self, m):
        arr = _real_array(m, "prior_mean")
        if not np.all(np.isfinite(arr)):
            raise ValueError("prior_mean: contains NaN or Inf")
        if arr.ndim == 0 or arr.shape == (1,):
            return np.full(self._offsets[-1], float(arr.reshape(-1)[0]))
        if arr.shape != (self._offsets[-1],):
            raise ValueError(f"prior_mean: expected a number or shape ({self._offsets[-1]},), got {arr.shape}")
        return arr

    # ---- hyperparameters (never refit) -------------------------------------------
    @property
    def prior_precision(self):
        """Prior precision values (length 1, L or D); setting it never refits."""
        return self._prior.values.copy() if self._prior.kind != "scalar" else float(self._prior.values[0])

    @prior_precision.setter
    def prior_precision(self, value):
        self._prior = self._make_prior(value)

    def _make_prior(self, value, kind=None):
        D, L = self._offsets[-1], len(self._offsets) - 1
        if kind is None and self._sub is not None and D == L > 1 and np.size(value) == D:
            kind = "param"  # a subnetwork with as many parameters as layers: its own parameters win
        prior = _Prior(value, self._offsets, kind)
        if self.structure in ("kron", "ekfac"):
            prior.layer_values()  # Kronecker bases: scalar or per layer only (raises otherwise)
        return prior

    @property
    def prior_precision_diag(self):
        """(D,) diagonal of :math:`P_0`."""
        return self._prior.diag.copy()

    @property
    def sigma_noise(self):
        return self._sigma

    @sigma_noise.setter
    def sigma_noise(self, value):
        v = _pos_float(value, "sigma_noise")
        if self.likelihood != "regression" and v != 1.0:
            raise ValueError(f"sigma_noise: only regression has observation noise; must be 1 for "
                             f"likelihood={self.likelihood!r}, got {v}")
        self._sigma = v

    @property
    def temperature(self):
        return self._temperature

    @temperature.setter
    def temperature(self, value):
        self._temperature = _pos_float(value, "temperature")

    def _c(self, sigma=None):
        s = self._sigma if sigma is None else sigma
        return 1.0 / (s * s * self._temperature)

    # ---- fitting -------------------------------------------------------------------
    def _labels(self, y, n):
        """Validate labels for the likelihood (clear messages before the C core)."""
        y = np.asarray(y)
        if y.shape[:1] != (n,):
            raise ValueError(f"y: expected {n} labels (one per row of X), got shape {y.shape}")
        if self.likelihood == "classification":
            if y.dtype.kind not in "iu":
                raise TypeError(f"y: expected integer class labels for likelihood='classification', "
                                f"got dtype {y.dtype}")
            if y.ndim != 1:
                raise ValueError(f"y: expected shape ({n},) of class indices, got {y.shape}")
            K = self.n_outputs
            if n and (y.min() < 0 or y.max() >= K):
                raise ValueError(f"y: class labels must lie in [0, {K}), got range [{y.min()}, {y.max()}]")
            y = y.astype(np.int64)
        elif self.likelihood == "binary":
            if y.dtype.kind not in "iufb":
                raise TypeError(f"y: expected 0/1 (or bool) labels for likelihood='binary', got dtype {y.dtype}")
            K = self.n_outputs
            shapes = ((n,), (n, 1)) if K == 1 else ((n, K),)
            if y.shape not in shapes:
                want = f"({n},) or ({n}, 1)" if K == 1 else f"({n}, {K}) (one 0/1 label per output)"
                raise ValueError(f"y: expected shape {want} for likelihood='binary', got {y.shape}")
            y = y.reshape(n) if K == 1 else y
            if not np.all(np.isin(y, (0, 1, -1))):
                raise ValueError("y: binary labels for likelihood='binary' must be 0/1 (or -1/+1)")
            y = y.astype(self.dtype)
        else:
            if y.dtype.kind not in "iuf":
                raise TypeError(f"y: expected real targets for likelihood='regression', got dtype {y.dtype}")
            K = self.n_outputs
            if y.ndim == 1 and K == 1:
                y = y.reshape(n, 1)
            if y.shape != (n, K):
                raise ValueError(f"y: expected shape ({n}, {K}) for likelihood='regression', got {y.shape}")
            if not np.all(np.isfinite(y)):
                raise ValueError("y: contains NaN or Inf")
            y = y.astype(self.dtype)
        return y

    def _check_X(self, X, name="X"):
        X = np.asarray(X)
        d = self._net.sizes[0]
        if X.ndim != 2 or X.shape[1] != d:
            raise ValueError(f"{name}: expected shape (N, {d}), got {X.shape}")
        if X.dtype.kind not in "iuf":
            raise TypeError(f"{name}: expected a real array, got dtype {X.dtype}")
        if X.shape[0] == 0:
            raise ValueError(f"{name}: empty batch (N = 0)")
        if not np.all(np.isfinite(X)):
            raise ValueError(f"{name}: contains NaN or Inf")
        return X.astype(self._net.dtype, copy=False)

    def fit(self, data, progress=False, override=True, n_subset=None):
        """Fit the posterior at the network's current parameters (the MAP).

        Parameters
        ----------
        data : (X, y) tuple or iterable of (X, y) batches
        progress : bool
            tqdm progress bar over batches.
        override : bool
            False adds ``data``'s curvature, loss and count to the current fit
            (online / continual learning, laplace-torch's ``override=False``);
            the mean moves to the network's current parameters. With the
            network unchanged this equals one fit on all the data (for
            ``"kron"``: the factors are summed, then decomposed again).
        n_subset : int or None
            Subset of data (laplace-torch's ``FunctionalLaplace(n_subset=)``):
            the curvature of ``n_subset`` rows drawn uniformly without
            replacement (seeded by ``seed``), times N / n_subset, an unbiased
            estimate of the whole data's; the loss and ``n_data`` still cover
            all N rows. The rows drawn are ``subset_indices`` (positions in the
            data's row order, the same however the data are batched).

        Returns
        -------
        self

        Notes
        -----
        Curvature of the SUMMED loss over all batches. ``"kron"`` eigendecomposes
        every factor here, once; ``"lowrank"`` eigendecomposes ``Gmat Gmatᵀ``
        through the Gram matrix of ``Gmat`` (D x N K), which it builds from the
        per-sample Jacobians' layer factors without forming ``Gmat`` or the
        Jacobians (memory: the N K x N K Gram and the D x r eigenvectors).
        """
        if self.net is None:
            raise RuntimeError("Laplace: built from Jacobians; there is no network to fit")
        # a fit that fails (bad batch, memory) leaves the previous posterior intact:
        # it replaces attributes, never mutates them, so a shallow copy restores it
        saved = dict(self.__dict__)
        if not isinstance(override, (bool, np.bool_)):
            raise TypeError(f"override: expected True or False, got {type(override).__name__}")
        if n_subset is not None and (isinstance(n_subset, (bool, np.bool_)) or not isinstance(n_subset, (int, np.integer))
                                     or n_subset < 1):
            raise ValueError(f"n_subset: expected a positive int or None, got {n_subset!r}")
        try:
            return self._fit(data, progress, None if override else self._post, n_subset)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise

    def _subset_of_data(self, data, progress, n_subset):
        """One pass over ``data``: (rows, summed loss, X and y of n_subset rows drawn
        uniformly without replacement, their row indices). The rows kept are those
        with the smallest of i.i.d. uniform keys drawn in row order, so batching
        does not change the draw; only n_subset + one batch of rows are held."""
        rng = np.random.default_rng(self.seed)
        n, loss = 0, 0.0
        keys, Xs, ys, idx = np.empty(0), [], [], np.empty(0, dtype=np.int64)
        for X, y in iter_batches(data, progress=progress, desc=f"laplace[{self.structure}] subset"):
            X = self._check_X(X)
            y = self._labels(y, X.shape[0])
            loss += _loss_value(self._model, self._inputs(X), y, self.lossname)
            keys = np.concatenate([keys, rng.random(X.shape[0])])
            Xs, ys = Xs + [X], ys + [y]
            idx = np.concatenate([idx, np.arange(n, n + X.shape[0])])
            n += X.shape[0]
            if keys.size > n_subset:
                keep = np.sort(np.argpartition(keys, n_subset - 1)[:n_subset])
                Xs, ys = [np.concatenate(Xs)[keep]], [np.concatenate(ys)[keep]]
                keys, idx = keys[keep], idx[keep]
        if n < n_subset:
            raise ValueError(f"n_subset: expected at most the number of data points ({n}), got {n_subset}")
        return n, loss, np.concatenate(Xs), np.concatenate(ys), idx

    def _fit(self, data, progress, prev, n_subset=None):
        """prev: the posterior whose sums this fit extends (None: a fresh fit);
        n_subset: fit the curvature on that many rows, scaled to all of them."""
        self._set_model(self.net)  # the MAP is the net's CURRENT theta
        self._prior = _Prior(self._prior, self._offsets)
        model, lossname, D = self._model, self.lossname, self._offsets[-1]
        n_total, loss_total, n_batches = 0, 0.0, 0
        H = h = None
        A = G = None
        gmat_factors = []
        if prev is not None:  # start from the previous sums (copies: a failed fit changes nothing)
            n_total, loss_total, n_batches = self.n_data, self.loss, self._n_batches
            if self.structure == "full":
                H = prev.H
            elif self.structure == "diag":
                h = prev.h
            elif self.structure == "ekfac":
                raise ValueError("override: an EKFAC posterior's eigenbasis depends on all the data; "
                                 "fit it again on all of it with override=True")
            elif self.structure == "kron":
                A = [a * a.dtype.type(n_total) for a in prev.kron.A]
                G = [g.copy() for g in prev.kron.G]
            elif prev.gmat is None:
                raise ValueError("override: this low-rank posterior has no Gmat factors to extend (a file "
                                 "saved before format version 3); fit it again with override=True")
            else:
                gmat_factors.append(prev.gmat[:2])
        seeds = None
        if self.kind == "mc":  # later fits continue the stream: fresh draws
            seeds = seed_stream(self.seed)
            for _ in range(n_batches):
                next(seeds)
        subset_indices, weight = None, 1.0
        if n_subset is None:
            batches = iter_batches(data, progress=progress, desc=f"laplace[{self.structure}]")
            if self.structure == "ekfac":  # read twice: the eigenbasis needs all the data first
                batches = list(batches)
        else:
            n_all, loss_all, X_sub, y_sub, subset_indices = self._subset_of_data(data, progress, n_subset)
            batches, weight = [(X_sub, y_sub)], n_all / n_subset
            n_before, loss_before = n_total, loss_total
            # the curvature sums start at zero and are scaled to all rows below; the
            # previous fit's sums (override=False) and the loss are added unscaled
            prev_sums = (H, h, A, G, gmat_factors)
            H = h = A = G = None
            gmat_factors = []
        for X, y in batches:
            n_batches += 1
            X = self._check_X(X)
            y = self._labels(y, X.shape[0])
            Z = self._inputs(X)
            bseed = next(seeds) if seeds is not None else 0
            if self.structure == "full":
                if self.kind == "hessian":
                    Hb = self._dense_hessian(Z, y)
                elif model.n_layers == 1 and self._sub is None:  # a linear model: Kronecker-sum GGN
                    Hb = _la.ggn_linear(Z, self._output_lam(Z, y, bseed))
                elif self.kind == "exact" and self._sub is None:
                    Hb = ggn(model, Z, y, lossname)
                else:
                    Hb = self._dense_ggn(Z, y, bseed)
                H = Hb if H is None else H + Hb
                loss_total += _loss_value(model, Z, y, lossname)
            elif self.structure == "diag":
                # the kernel returns the batch loss from its own forward pass
                if self.kind == "hessian":
                    hb, lb = _core.diag_hessian(model, Z, y, lossname)
                else:
                    hb, lb = _core.diag_curvature(model, _DIAG_KINDS[self.kind], Z, y, lossname,
                                                  self.mc_samples, bseed)
                if self._sub is not None:
                    hb = hb[self._sub]
                h = hb if h is None else h + hb
                loss_total += lb
            elif self.structure in ("kron", "ekfac"):
                if A is None:
                    A = [np.zeros((i + 1, i + 1), dtype=self.dtype) for i in model.sizes[:-1]]
                    G = [np.zeros((o, o), dtype=self.dtype) for o in model.sizes[1:]]
                loss_total += _core.kfac_factors(model, KFAC_KINDS[self.kind], Z, y, lossname,
                                                 self.mc_samples, bseed, A, G, None, None)
            else:
                # Gmat in factored form: per layer, column (n, j) is
                # (sum_k S_n[k, j] G_n[k, :]) (x) [a_n; 1] (never formed)
                S = self._output_stack(Z, y, bseed)
                Gs, As = _core.layer_jacobians(model, Z)
                M = S.shape[2] * (X.shape[0] + sum(u[0].shape[0] for u, _ in gmat_factors))
                r = M if self.rank is None else min(M, self.rank)
                if D * r > _LOWRANK_MAX or M * M > _LOWRANK_MAX:
                    raise MemoryError(f"structure='lowrank': the eigenvectors (D x r = {D} x {r}) or the Gram "
                                      f"matrix ({M} x {M}) would hold more than {_LOWRANK_MAX} values; "
                                      "pass rank=, use subset='last_layer' or fewer data")
                St = np.ascontiguousarray(S.transpose(0, 2, 1))
                gmat_factors.append(([np.matmul(St, g) for g in Gs], As))
                loss_total += _loss_value(model, Z, y, lossname)
            n_total += X.shape[0]
        if subset_indices is not None:
            n_total, loss_total = n_before + n_all, loss_before + loss_all
            H, h, A, G, gmat_factors = _add_scaled_sums(prev_sums, (H, h, A, G, gmat_factors), weight)
        if self.structure == "full":
            post = _FullPosterior(H, self._offsets, psd=self.kind != "hessian")
        elif self.structure == "diag":
            post = _DiagPosterior(h, self._offsets, psd=self.kind != "hessian")
        elif self.structure == "kron":
            for a in A:
                a /= n_total
            K = KronCurvature(A, G, model.sizes, num_data=n_total, kind=self.kind)
            post = _KronPosterior(K, self._offsets, self.kron_damping)
        elif self.structure == "ekfac":
            for a in A:
                a /= n_total
            K = KronCurvature(A, G, model.sizes, num_data=n_total, kind=self.kind)
            scales = self._ekfac_scales(K.eigh(), batches, seeds)
            E = EKFACCurvature(A, G, model.sizes, [S * S.dtype.type(weight) for S in scales], num_data=n_total,
                               kind=self.kind)
            E._eig = K._eig
            post = _EKFACPosterior(E, self._offsets)
        else:
            if len(gmat_factors) == 1:
                U, A = gmat_factors[0]
            else:  # the batches' factors stacked, layer by layer
                U = [np.concatenate(f) for f in zip(*(u for u, _ in gmat_factors))]
                A = [np.concatenate(f) for f in zip(*(a for _, a in gmat_factors))]
            M = U[0].shape[0] * U[0].shape[1]
            s, Qbuf, Cbuf, r = _core.lowrank_eigh_layers(U, A, M if self.rank is None else self.rank)
            post = _LowRankPosterior(s[:r].copy(), _la._leading(Qbuf, D, r), self._offsets,
                                     (U, A, _la._leading(Cbuf, M, r)))
        self._post = post
        self.subset_indices = subset_indices
        self._n_batches = n_batches
        self.loss = float(loss_total)
        self.n_data = n_total
        self._prior_mean = self._check_prior_mean(self._prior_mean_init)
        return self

    def _ekfac_scales(self, eig, batches, seeds):
        """EKFAC's eigenvalues: the curvature's diagonal in the K-FAC bases, from a
        second pass (output-gradient columns through the layer factors; MC draws
        continue the seed stream)."""
        model = self._model
        scales = [np.zeros((o, i + 1), dtype=self.dtype) for i, o in zip(model.sizes[:-1], model.sizes[1:])]
        for X, y in batches:
            X = self._check_X(X)
            y = self._labels(y, X.shape[0])
            Z = self._inputs(X)
            St = np.ascontiguousarray(self._output_stack(Z, y, next(seeds) if seeds is not None else 0)
                                      .transpose(0, 2, 1))
            Gs, As = _core.layer_jacobians(model, Z)
            for l, (_, QG, _, QA) in enumerate(eig):
                scales[l] += _core.ekfac_scales(QG, QA, np.matmul(St, Gs[l]), As[l])
        return scales

    def _output_stack(self, Z, y, seed):
        """(N, K, M) columns U_n with U_n U_n^T the output curvature of self.kind
        (exact Lambda_n, its Monte Carlo estimate, or the empirical g_n g_n^T)."""
        return _core.output_stack(self._model, _DIAG_KINDS[self.kind], Z, y, self.lossname, self.mc_samples,
                                  seed)

    def _output_lam(self, Z, y, seed):
        if self.kind == "exact":
            return output_curvature(self._model, Z, self.lossname).hessian
        U = self._output_stack(Z, y, seed)
        return np.matmul(U, U.transpose(0, 2, 1))

    def _dense_hessian(self, Z, y):
        """The exact Hessian of the summed loss over Z; for a subnetwork its S x S
        block, from Hessian-vector products with the subnetwork's unit vectors in
        column chunks of about _J_CHUNK_BYTES (never the D x D matrix)."""
        if self._sub is None:
            return hessian(self._model, Z, y, self.lossname)
        D, S = self._model.num_params, self._sub.size
        cols = max(1, _J_CHUNK_BYTES // (D * self.dtype.itemsize))
        H = np.empty((S, S), dtype=self.dtype)
        for j in range(0, S, cols):
            E = np.zeros((D, min(cols, S - j)), dtype=self.dtype)
            E[self._sub[j:j + cols], np.arange(E.shape[1])] = 1
            H[:, j:j + E.shape[1]] = hvp(self._model, Z, y, self.lossname, E)[self._sub]
        return H

    def _dense_ggn(self, Z, y, seed):
        """sum_n J_n^T Lambda_n J_n over Z from Jacobians (the subnetwork's columns,
        or all of them for a Fisher or empirical Fisher), in row chunks whose
        Jacobians stay near _J_CHUNK_BYTES (Lambda_n, and its Monte Carlo draws, are
        those of the whole batch, as for the other structures)."""
        sizes = self._model.sizes
        per_row = self.n_outputs * (self.n_params + sum(sizes[1:])) + sum(s + 1 for s in sizes[:-1])
        rows = max(1, _J_CHUNK_BYTES // (per_row * self.dtype.itemsize))
        lam = self._output_lam(Z, y, seed)
        H = np.zeros((self.n_params, self.n_params), dtype=self.dtype)
        for i in range(0, Z.shape[0], rows):
            H += _la.ggn_from_jacobians(self._jacobians(Z[i:i + rows]).dense, lam[i:i + rows])
        return H

    # ---- marginal likelihood ---------------------------------------------------------
    def log_likelihood(self, sigma_noise=None):
        r""":math:`\log p(y|\theta^*)`: :math:`-L/\sigma^2 - NK\log(\sigma\sqrt{2\pi})` (regression), :math:`-L` otherwise."""
        self._check_fit()
        if self.loss is None:
            raise RuntimeError("Laplace: the training loss is unknown (pass y or loss to from_jacobians)")
        if self.likelihood != "regression":
            return -self.loss
        s = self._sigma if sigma_noise is None else _pos_float(sigma_noise, "sigma_noise")
        NK = self.n_data * self.n_outputs
        return -self.loss / s ** 2 - NK * math.log(s * math.sqrt(2 * math.pi))

    def _theta_delta(self):
        if self._from_jac and self._theta_map is None:
            raise RuntimeError("Laplace: pass theta_map to from_jacobians for the marginal likelihood")
        return np.asarray(self._theta_star(), dtype=np.float64) - self._prior_mean

    def _lml_and_grad(self, prior, sigma, want_sigma_grad):
        c = self._c(sigma)
        ld, d_prior, d_c = self._post.logdet_grad(c, prior)
        delta = self._theta_delta()
        sq = prior.group_sum(delta * delta)
        ld0 = float(np.sum(np.log(prior.diag)))
        lml = self.log_likelihood(sigma) - 0.5 * float(prior.diag @ (delta * delta)) - 0.5 * ld + 0.5 * ld0
        vals = prior.values
        g_logprior = vals * (-0.5 * sq - 0.5 * d_prior + 0.5 * prior.group_sizes() / vals)
        g_logsigma = None
        if want_sigma_grad:
            NK = self.n_data * self.n_outputs
            g_logsigma = 2 * self.loss / sigma ** 2 - NK + c * d_c
        return lml, g_logprior, g_logsigma

    def log_marginal_likelihood(self, prior_precision=None, sigma_noise=None):
        r"""Laplace log marginal likelihood (CONVENTIONS.md), a float.

        .. math:: \log Z = \log p(y|\theta^*) - \tfrac12 (\theta^*-\mu_0)^\top P_0 (\theta^*-\mu_0)
                  - \tfrac12 \log\det P + \tfrac12 \log\det P_0

        ``prior_precision`` / ``sigma_noise`` evaluate it at other values without
        changing the object (no refit). Cost: O(D) for kron/diag and for
        full/lowrank with a scalar prior (cached eigenvalues); a Cholesky or
        Woodbury factorisation otherwise.
        """
        self._check_fit()
        prior = self._prior if prior_precision is None else self._make_prior(prior_precision)
        if sigma_noise is not None and self.likelihood != "regression" and sigma_noise != 1:
            raise ValueError("sigma_noise: only regression has observation noise")
        sigma = self._sigma if sigma_noise is None else _pos_float(sigma_noise, "sigma_noise")
        return self._lml_and_grad(prior, sigma, False)[0]

    def log_marginal_likelihood_grad(self, prior_precision=None, sigma_noise=None):
        """Exact gradient of :meth:`log_marginal_likelihood` with respect to
        ``log prior_precision`` (one entry per prior value) and ``log sigma_noise``
        (regression; None otherwise). Returns ``(g_log_prior, g_log_sigma)``."""
        self._check_fit()
        prior = self._prior if prior_precision is None else self._make_prior(prior_precision)
        if sigma_noise is not None and self.likelihood != "regression" and sigma_noise != 1:
            raise ValueError("sigma_noise: only regression has observation noise")
        sigma = self._sigma if sigma_noise is None else _pos_float(sigma_noise, "sigma_noise")
        _, gp, gs = self._lml_and_grad(prior, sigma, self.likelihood == "regression")
        return gp, gs

    def optimize_prior_precision(self, method="marglik", val_data=None, prior_structure=None,
                                 optimize_sigma=False, grid=None, pred_type="glm",
                                 link_approx="probit", n_samples=100, seed=None, loss="nll"):
        r"""Tune the prior precision (and optionally :math:`\sigma`) post hoc; no refit.

        Parameters
        ----------
        method : {"marglik", "gridsearch"}
            ``"marglik"`` maximises :meth:`log_marginal_likelihood` over
            :math:`\log\delta` (and :math:`\log\sigma` when ``optimize_sigma``)
            with L-BFGS and exact gradients
            :math:`\partial\log Z/\partial\log\delta_g = \delta_g[-\tfrac12\|\theta^*_g\|^2
            - \tfrac12\partial_{\delta_g}\log\det P + \tfrac12|g|/\delta_g]` (Kronecker:
            from the cached eigenvalues). ``"gridsearch"`` picks the scalar value on
            ``grid`` (default ``logspace(-4, 4, 21)``) with the smallest
            validation ``loss`` of the predictive (the first of ties).
        val_data : (X, y) or batches
            Required by ``"gridsearch"``.
        prior_structure : {"scalar", "layer", "param"} or None
            Structure to optimise (default: that of the current prior).
        optimize_sigma : bool
            Also fit :math:`\sigma` by marginal likelihood (regression only).
        loss : {"nll", "brier", "ece"} or callable
            The gridsearch criterion over the whole validation set: negative
            log-likelihood (Gaussian with :math:`\sigma^2` for regression),
            :func:`pykfac.metrics.brier` or :func:`pykfac.metrics.ece` (15 bins;
            both classification/binary only), or ``loss(out, y) -> float`` with
            ``out`` the predictive of all validation rows (probabilities, or
            ``(mean, var)`` for regression) and ``y`` their labels.

        Returns
        -------
        self
        """
        from scipy.optimize import minimize

        self._check_fit()
        _choice(method, ("marglik", "gridsearch"), "method")
        if optimize_sigma and self.likelihood != "regression":
            raise ValueError("optimize_sigma: only regression has observation noise")
        if method == "gridsearch":
            if val_data is None:
                raise ValueError("val_data: method='gridsearch' needs validation data")
            if optimize_sigma:
                raise ValueError("optimize_sigma: only with method='marglik'")
            if grid is None:
                grid = np.logspace(-4, 4, 21)
            else:
                grid = _real_array(grid, "grid")
                if grid.ndim != 1 or grid.size == 0:
                    raise ValueError(f"grid: expected a non-empty 1-D array of prior precisions, got shape {grid.shape}")
                if not np.all(np.isfinite(grid) & (grid > 0)):
                    raise ValueError("grid: expected finite prior precisions > 0")
            criterion = self._grid_criterion(loss)
            n_samples = self._pred_args(pred_type, link_approx, n_samples)
            batches = [(self._check_X(X), self._labels(y, np.shape(X)[0]))
                       for X, y in iter_batches(val_data)]
            cache = [self._glm_cache(X) if pred_type == "glm" else None for X, _ in batches]
            y_all = np.concatenate([y for _, y in batches])
            best, best_value = None, np.inf
            for p in grid:
                prior = _Prior(p, self._offsets)
                outs = [self._predict_from_cache(cch, prior, pred_type, link_approx, n_samples, seed, X)
                        for (X, _), cch in zip(batches, cache)]
                if self.likelihood == "regression":
                    out = tuple(np.concatenate(part) for part in zip(*outs))
                else:
                    out = np.concatenate(outs)
                value = float(criterion(out, y_all))
                if not np.isfinite(value):
                    raise ValueError(f"loss: returned {value} at prior precision {p}")
                if value < best_value:
                    best, best_value = p, value
            self.prior_precision = float(best)
            return self
        L, D = len(self._offsets) - 1, self._offsets[-1]
        structure = prior_structure or self._prior.kind
        _choice(structure, ("scalar", "layer", "param"), "prior_structure")
        if self.structure in ("kron", "ekfac") and structure == "param":
            raise ValueError(f"prior_structure: structure={self.structure!r} supports 'scalar' or 'layer' priors")
        size = {"scalar": 1, "layer": L, "param": D}[structure]
        cur = self._prior.values
        if self._prior.kind == structure:
            x0 = np.log(cur)
        elif cur.size == 1:
            x0 = np.full(size, np.log(cur[0]))
        else:
            x0 = np.full(size, np.log(np.mean(cur)))
        if optimize_sigma:
            x0 = np.append(x0, np.log(self._sigma))

        def fun(x):
            prior = _Prior(np.exp(x[:size]), self._offsets, structure)
            sigma = float(np.exp(x[size])) if optimize_sigma else self._sigma
            lml, gp, gs = self._lml_and_grad(prior, sigma, optimize_sigma)
            g = -gp if not optimize_sigma else -np.append(gp, gs)
            return -lml, g

        if isinstance(self._post, _FullPosterior) and size == 1:
            self._post.prefer_eig = True
        bounds = [(-25.0, 25.0)] * len(x0)
        res = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": 500, "ftol": 1e-12, "gtol": 1e-8})
        x = res.x
        self._prior = self._make_prior(np.exp(x[:size]), structure)
        if optimize_sigma:
            self.sigma_noise = float(np.exp(x[size]))
        return self

    # ---- posterior access -------------------------------------------------------------
    def posterior_precision_dense(self):
        """(D, D) posterior precision :math:`P = G/(\\sigma^2T) + P_0` in theta order."""
        self._check_fit()
        return self._post.precision_dense(self._c(), self._prior)

    def posterior_covariance_dense(self):
        """(D, D) posterior covariance :math:`P^{-1}` in theta order."""
        self._check_fit()
        return self._post.covariance_dense(self._c(), self._prior)

    def posterior_variance(self):
        """(D,) marginal variances, the diagonal of :math:`P^{-1}` (float64), without
        forming :math:`P^{-1}` except for ``"full"``: O(D) diag, two GEMMs per layer
        for kron, O(D r) low rank (scalar prior), O(D³) full."""
        self._check_fit()
        return self._post.variance(self._c(), self._prior)

    def log_det_posterior_precision(self):
        """:math:`\\log\\det P` (float)."""
        self._check_fit()
        return self._post.logdet(self._c(), self._prior)

    def log_det_prior_precision(self):
        """:math:`\\log\\det P_0 = \\sum_i \\log (P_0)_{ii}` (float; laplace-torch's property of that name)."""
        self._check_fit()
        return float(np.sum(np.log(self._prior.diag)))

    def log_det_ratio(self):
        """:math:`\\log\\det P - \\log\\det P_0` (float), the Occam factor of
        :meth:`log_marginal_likelihood` = ``log_likelihood() - (scatter() + log_det_ratio()) / 2``."""
        return self.log_det_posterior_precision() - self.log_det_prior_precision()

    def scatter(self):
        """:math:`(\\theta^*-\\mu_0)^\\top P_0 (\\theta^*-\\mu_0)` (float), the prior term of
        :meth:`log_marginal_likelihood`."""
        self._check_fit()
        delta = self._theta_delta()
        return float(self._prior.diag @ (delta * delta))

    def square_norm(self, theta):
        r""":math:`(\theta - \theta^*)^\top P (\theta - \theta^*)` for ``theta`` (D,) -> float,
        or for rows (n, D) -> (n,) float64. Cost: one product with P per row
        (O(D) diag, O(Σ widths) per weight for kron, O(D r) low rank, O(D²) full).
        """
        self._check_fit()
        theta_map = self.mean
        if theta_map is None:
            raise ValueError("square_norm: the posterior mean is unknown (pass theta_map= to from_jacobians)")
        T = _real_array(theta, "theta")
        D = self.n_params
        if T.shape not in ((D,),) and (T.ndim != 2 or T.shape[1] != D):
            raise ValueError(f"theta: expected shape ({D},) or (n, {D}), got {T.shape}")
        if not np.all(np.isfinite(T)):
            raise ValueError("theta: contains NaN or Inf")
        # the difference in float64 before the posterior's dtype: theta close to
        # theta* would otherwise lose its digits to cancellation
        delta = (np.atleast_2d(T) - np.asarray(theta_map, dtype=np.float64)).T
        Pd = self._post.matvec(delta.astype(self.dtype), self._c(), self._prior).astype(np.float64)
        q = np.einsum("dn,dn->n", delta, Pd)
        return float(q[0]) if T.ndim == 1 else q

    def log_prob(self, theta, normalized=True):
        r"""Log density of the posterior :math:`\mathcal N(\theta^*, P^{-1})` at ``theta``
        (D,) -> float, or at rows (n, D) -> (n,):
        :math:`-\tfrac12 (\theta-\theta^*)^\top P (\theta-\theta^*) + \tfrac12\log\det P - \tfrac D2 \log 2\pi`.
        ``normalized=False`` keeps only the first term (laplace-torch's ``log_prob``).
        """
        q = -0.5 * self.square_norm(theta)
        if not normalized:
            return q
        return q + 0.5 * self.log_det_posterior_precision() - 0.5 * self.n_params * math.log(2 * math.pi)

    def sample(self, n, seed=None):
        r"""``n`` parameter draws :math:`\theta^* + P^{-1/2} z`, shape (n, D).

        Kronecker blocks use the matrix-normal form through the factors'
        eigendecompositions; low rank the Woodbury/spectral form; full the
        Cholesky factor (:math:`L^{-\top}z`). Reproducible per ``seed``. A posterior
        from :meth:`from_jacobians` without ``theta_map`` has no mean: its draws
        are the deviations :math:`P^{-1/2} z`.
        """
        self._check_fit()
        n = _la._n_samples(n)
        theta = self._theta_star()
        mean = None if theta is None else np.asarray(theta, dtype=self.dtype)
        return self._post.sample(n, resolve_seed(seed), self._c(), self._prior, mean)

    # ---- predictive -----------------------------------------------------------------
    def _chunk_rows(self):
        """Input rows per predictive chunk, so its Jacobian data stays near _J_CHUNK_BYTES."""
        K, item = self.n_outputs, self.dtype.itemsize
        if self._sub is not None:  # the layer factors, then the gathered columns
            sizes = self._model.sizes
            per_row = K * (self.n_params + sum(sizes[1:])) + sum(s + 1 for s in sizes[:-1])
        elif self._post.dense_jacobians:
            per_row = K * self.n_params
        else:
            sizes = self._model.sizes
            per_row = K * sum(sizes[1:]) + sum(s + 1 for s in sizes[:-1])
            per_row += self._post.jvp_columns * (K + sum(sizes[1:]))  # J V and its tangents
        return max(1, _J_CHUNK_BYTES // (per_row * item))

    def _jac_chunks(self, X):
        """Yield (f_map, _Jacobians) over row chunks of X (posterior model's inputs)."""
        Z = self._inputs(X)
        rows = self._chunk_rows()
        for i in range(0, Z.shape[0], rows):
            Zc = Z[i:i + rows]
            yield self._model(Zc), self._jacobians(Zc)

    def _glm_cache(self, X):
        """Jacobians of X kept in memory (formed lazily, then reused) when they fit
        in one chunk, else recomputed per use."""
        Z = self._inputs(X)
        if Z.shape[0] <= self._chunk_rows():
            return ("mem", [(self._model(Z), self._jacobians(Z))])
        return ("lazy", X)

    def _fv_and_mean(self, cache, prior):
        c = self._c()
        kind, payload = cache
        chunks = payload if kind == "mem" else self._jac_chunks(payload)
        mus, fvs = [], []
        for mu, jac in chunks:
            mus.append(mu)
            fvs.append(self._post.functional_variance(jac, c, prior))
        return np.concatenate(mus), np.concatenate(fvs)

    def functional_variance(self, X=None, jacobians=None):
        r"""(N, K, K) GLM functional variance :math:`J_n P^{-1} J_n^\top` (no :math:`\sigma^2`).

        ``X`` for a network posterior; ``jacobians`` (N, K, D) for one built by
        :meth:`from_jacobians` (or to pass precomputed Jacobians).
        """
        self._check_fit()
        if jacobians is not None:
            J = self._check_J(jacobians)
            return self._post.functional_variance(_Jacobians(J=J), self._c(), self._prior)
        X = self._check_X_net(X)
        return self._fv_and_mean(("lazy", X), self._prior)[1]

    def kernel(self, X1, X2=None):
        r"""Laplace tangent kernel :math:`J(X_1) P^{-1} J(X_2)^\top`, shape (N1, K, N2, K).

        ``.reshape(N1 * K, N2 * K)`` gives the matrix; ``kernel(X)[n, :, n, :]``
        is ``functional_variance(X)[n]``. Memory O((N1 + N2) K D).
        """
        self._check_fit()
        X1 = self._check_X_net(X1, "X1")
        X2 = X1 if X2 is None else self._check_X_net(X2, "X2")
        J1 = self._jacobians(self._inputs(X1)).dense
        J2 = J1 if X2 is X1 else self._jacobians(self._inputs(X2)).dense
        return self._kernel_dense(J1, J2).astype(self.dtype).reshape(J1.shape[0], self.n_outputs, J2.shape[0], -1)

    def _kernel_dense(self, J1, J2):
        """J1 P^-1 J2^T as an (N1 K, N2 K) float64 matrix from (N, K, D) Jacobians."""
        D = J1.shape[2]
        R = self._post.solve(J2.reshape(-1, D).T, self._c(), self._prior)
        return (J1.reshape(-1, D) @ R).astype(np.float64)

    def _check_X_net(self, X, name="X"):
        if self._from_jac:
            raise RuntimeError("Laplace: built from Jacobians; pass jacobians= and f_map= instead of X")
        if X is None:
            raise TypeError(f"{name}: expected an array, got None")
        return self._check_X(X, name)

    def _check_J(self, J):
        J = np.asarray(J)
        if J.dtype.kind not in "iuf":
            raise TypeError(f"jacobians: expected a real array, got dtype {J.dtype}")
        J = np.ascontiguousarray(J, dtype=self.dtype)
        if J.ndim != 3 or J.shape[1] != self.n_outputs or J.shape[2] != self.n_params:
            raise ValueError(f"jacobians: expected shape (N, {self.n_outputs}, {self.n_params}), got {J.shape}")
        if not np.all(np.isfinite(J)):
            raise ValueError("jacobians: contains NaN or Inf")
        return J

    def _pred_args(self, pred_type, link_approx, n_samples):
        """Checked (pred_type, link_approx, n_samples) of the predictive family."""
        _choice(pred_type, PRED_TYPES, "pred_type")
        _choice(link_approx, LINK_APPROXES, "link_approx")
        if link_approx.startswith("bridge") and self.likelihood == "binary":
            raise ValueError("link_approx: the Laplace bridge needs at least 2 classes; use 'probit' or 'mc'")
        n_samples = _la._n_samples(n_samples, "n_samples")
        if n_samples == 0 and (pred_type == "nn" or link_approx == "mc"):
            raise ValueError(f"n_samples: expected >= 1 for pred_type={pred_type!r}, "
                             f"link_approx={link_approx!r}, got 0")
        return n_samples

    def _test_points(self, X, jacobians, f_map, pred_type):
        """The predictive's inputs as (cache, X): test inputs X of the network, or,
        for a posterior from Jacobians, their Jacobians and MAP outputs."""
        self._check_fit()
        if jacobians is None and f_map is None:
            X = self._check_X_net(X)
            return (("lazy", X) if pred_type == "glm" else None), X
        if jacobians is None or f_map is None:
            raise TypeError("predictive: pass both jacobians= and f_map=")
        if pred_type != "glm":
            raise ValueError("pred_type: only 'glm' is available from Jacobians")
        J = self._check_J(jacobians)
        N, K = J.shape[0], self.n_outputs
        mu = _real_array(f_map, "f_map")
        if mu.shape not in ((N, K),) + (((N,),) if K == 1 else ()):
            raise ValueError(f"f_map: expected shape ({N}, {K}) like the jacobians' first two axes, "
                             f"got {mu.shape}")
        if not np.all(np.isfinite(mu)):
            raise ValueError("f_map: contains NaN or Inf")
        mu = mu.reshape(N, K).astype(self.dtype)
        return ("mem", [(mu, _Jacobians(J=J))]), None

    def predictive(self, X=None, pred_type="glm", link_approx="probit", n_samples=100, seed=None,
                   jacobians=None, f_map=None, joint=False):
        r"""Posterior predictive at inputs ``X``.

        Parameters
        ----------
        X : (N, d_in) array
        pred_type : {"glm", "nn"}
            ``"glm"``: linearised network :math:`f \sim \mathcal N(f(x,\theta^*), J P^{-1} J^\top)`;
            ``"nn"``: average over ``n_samples`` posterior parameter draws.
        link_approx : {"probit", "mc", "bridge", "bridge_norm"}
            Classification with ``"glm"``: probit
            :math:`\mathrm{softmax}(\mu/\sqrt{1 + \tfrac\pi8 \mathrm{diag}\Sigma})`, Monte
            Carlo over ``n_samples`` function draws, or the Laplace bridge
            (multi-class only); ``"bridge_norm"`` first rescales the centred
            logits by :math:`1/\sqrt{m}` and their variances by :math:`1/m`, with
            :math:`m = \mathrm{mean}_k \Sigma_{kk} / \sqrt{K/2}` (laplace-torch's
            normalised bridge).
        n_samples : int
        seed : int or None
        jacobians, f_map : arrays
            For a posterior built by :meth:`from_jacobians`: (N, K, D) Jacobians
            and (N, K) MAP outputs at the test points (instead of ``X``).
        joint : bool
            Regression with ``"glm"`` only: the joint predictive over all test
            points, mean (N K,) and covariance (N K, N K)
            :math:`J P^{-1} J^\top + \sigma^2 I`, rows ordered (point, output).
            Memory O(N K D) for the Jacobians and O(N² K²) for the result.

        Returns
        -------
        regression : (mean, variance), each (N, K)
            The variance INCLUDES the observation noise: ``diag(J P⁻¹ Jᵀ) + σ²``
            (GLM) or the sample variance of f plus ``σ²`` (NN). With
            ``joint=True``: (mean (N K,), covariance (N K, N K)).
        classification : (N, C) class probabilities.
        binary : (N,) probabilities of y = 1; (N, K) of y_k = 1 with K outputs
            (multi-label: each output its own sigmoid, probit per output).
        """
        n_samples = self._pred_args(pred_type, link_approx, n_samples)
        if flag(joint, "joint"):
            if self.likelihood != "regression" or pred_type != "glm":
                raise ValueError("joint: only for likelihood='regression' with pred_type='glm'")
            cache, X = self._test_points(X, jacobians, f_map, pred_type)
            if X is None:
                (mu, jac), = cache[1]
                J = jac.dense
            else:
                Z = self._inputs(X)
                mu, J = self._model(Z), self._jacobians(Z).dense
            cov = self._kernel_dense(J, J)
            cov[np.diag_indices_from(cov)] += self._sigma ** 2
            return np.asarray(mu, dtype=np.float64).reshape(-1), cov
        cache, X = self._test_points(X, jacobians, f_map, pred_type)
        return self._predict_from_cache(cache, self._prior, pred_type, link_approx, n_samples, seed, X)

    __call__ = predictive

    def functional_samples(self, X=None, pred_type="glm", n_samples=100, seed=None,
                           jacobians=None, f_map=None):
        r"""Draws of the network outputs :math:`f(x)` under the posterior, (n_samples, N, K).

        ``"glm"``: :math:`f \sim \mathcal N(f(x,\theta^*), J_n P^{-1} J_n^\top)` per
        input (the correlations between outputs are kept, those between inputs
        are not); ``"nn"``: :math:`f(x, \theta_s)` for parameter draws
        :math:`\theta_s` (:meth:`sample`). Same ``seed`` as :meth:`predictive`
        gives the draws its Monte Carlo average uses. No observation noise.
        """
        n_samples = self._pred_args(pred_type, "mc", n_samples)
        cache, X = self._test_points(X, jacobians, f_map, pred_type)
        return self._f_samples(cache, self._prior, pred_type, n_samples, seed, X)

    def predictive_samples(self, X=None, pred_type="glm", n_samples=100, seed=None,
                           jacobians=None, f_map=None):
        r"""The inverse link applied to :meth:`functional_samples`, as laplace-torch's
        ``predictive_samples``: class probabilities (n_samples, N, C) for
        classification, P(y = 1) (n_samples, N) for binary ((n_samples, N, K)
        with K outputs), the outputs
        themselves (n_samples, N, K) for regression (no observation noise: add
        ``sigma_noise`` draws for samples of y). ``predictive(..., link_approx="mc")``
        is their mean for the same ``seed``.
        """
        return self._inverse_link(self.functional_samples(X, pred_type, n_samples, seed, jacobians, f_map))

    def _inverse_link(self, F):
        if self.likelihood == "classification":
            return _softmax(F)
        if self.likelihood == "binary":
            return _sigmoid(F[..., 0] if F.shape[-1] == 1 else F)
        return F

    def _f_samples(self, cache, prior, pred_type, n_samples, seed, X):
        """(n_samples, N, K) float64 output draws (see functional_samples)."""
        if pred_type == "nn":
            theta = np.asarray(self._theta_star(), dtype=self.dtype)
            thetas = self._full_thetas(self._post.sample(n_samples, resolve_seed(seed), self._c(), prior, theta))
            Z = self._inputs(X)
            model = self._model.copy()
            F = []
            for th in thetas:
                model.theta = th
                F.append(np.asarray(model(Z), dtype=np.float64))
            return np.stack(F)
        mu, fv = self._fv_and_mean(cache, prior)
        # f = mu + S z with S S^T = Sigma_n; the square root tolerates the rounding
        # of the posterior's precision
        S = _core.psd_sqrt(fv).astype(np.float64)
        N, K = mu.shape
        Z = _core.standard_normal(n_samples, N * K, False, resolve_seed(seed)).reshape(n_samples, N, K)
        return mu.astype(np.float64)[None] + np.einsum("nkj,snj->snk", S, Z)

    def _predict_from_cache(self, cache, prior, pred_type, link_approx, n_samples, seed, X):
        if pred_type == "nn" or link_approx == "mc" and self.likelihood != "regression":
            F = self._f_samples(cache, prior, pred_type, n_samples, seed, X)
            if self.likelihood == "regression":
                return F.mean(0), F.var(0) + self._sigma ** 2
            return self._inverse_link(F).mean(0)
        mu, fv = self._fv_and_mean(cache, prior)
        mu, fv = mu.astype(np.float64), fv.astype(np.float64)
        if self.likelihood == "regression":
            return mu, np.diagonal(fv, axis1=1, axis2=2) + self._sigma ** 2
        if link_approx == "probit":
            kappa = 1.0 / np.sqrt(1.0 + math.pi / 8.0 * np.diagonal(fv, axis1=1, axis2=2))
            return self._inverse_link(kappa * mu)
        return _bridge(mu, fv, normalized=link_approx == "bridge_norm")

    def _grid_criterion(self, loss):
        """The gridsearch criterion ``(out, y) -> float`` named or given by ``loss``."""
        if callable(loss):
            return loss
        if not isinstance(loss, str):
            raise TypeError(f"loss: expected 'nll', 'brier', 'ece' or a callable, got {type(loss).__name__}")
        _choice(loss, ("nll", "brier", "ece"), "loss")
        if loss == "nll":
            return self._nll
        if self.likelihood == "regression":
            raise ValueError(f"loss: {loss!r} scores class probabilities; regression takes 'nll' or a callable")
        score = _metrics.brier if loss == "brier" else _metrics.ece
        if self.likelihood == "binary" and self.n_outputs > 1:
            raise ValueError(f"loss: {loss!r} takes one binary output; with {self.n_outputs} outputs use 'nll' "
                             f"or a callable")
        if self.likelihood == "binary":
            return lambda out, y: score(out, (np.asarray(y).reshape(-1) > 0).astype(np.int64))
        return score

    def _nll(self, out, y):
        """Mean negative log-likelihood of labels y under a predictive output."""
        eps = 1e-12
        if self.likelihood == "regression":
            mu, var = out
            return float(np.mean(np.sum(0.5 * np.log(2 * math.pi * var) + 0.5 * (y - mu) ** 2 / var, axis=1)))
        if self.likelihood == "binary":  # summed over the outputs of a row, averaged over rows
            p = np.clip(out, eps, 1 - eps)
            yb = (np.asarray(y) > 0).astype(np.float64).reshape(p.shape)
            terms = yb * np.log(p) + (1 - yb) * np.log(1 - p)
            return float(-np.mean(terms.reshape(len(terms), -1).sum(1)))
        return float(-np.mean(np.log(np.clip(out[np.arange(len(y)), y], eps, None))))

    # ---- framework-agnostic constructor ------------------------------------------------
    @classmethod
    def from_jacobians(cls, J, Lam=None, f_map=None, likelihood="classification", structure="full",
                       prior_precision=1.0, sigma_noise=1.0, temperature=1.0, prior_mean=0.0,
                       theta_map=None, y=None, loss=None, rank=None, layer_sizes=None):
        r"""A full or low-rank posterior from Jacobians computed anywhere (JAX, PyTorch, ...).

        Parameters
        ----------
        J : array_like (N, K, D)
            Per-sample Jacobians of the outputs w.r.t. the parameters at the MAP.
        Lam : array_like (N, K, K), optional
            Output Hessians of the loss. Default: identity (regression) or computed
            from ``f_map`` (softmax ``diag(p) - ppᵀ`` / logistic ``σ(1-σ)``).
        f_map : array_like (N, K), optional
            MAP outputs on the training data (needed for the default ``Lam`` in
            classification and for ``y``).
        likelihood, prior_precision, sigma_noise, temperature, prior_mean :
            As for :class:`Laplace`; ``prior_precision`` scalar or per parameter,
            or per layer with ``layer_sizes`` (parameters per layer).
        structure : {"full", "lowrank"}
        theta_map : array_like (D,), optional
            MAP parameters (the mean of :meth:`sample`, the prior term of the LML).
        y, loss : optional
            Training labels (the log-likelihood is computed from ``f_map``) or
            the summed training loss itself, for the marginal likelihood.
        rank : int, optional
            Low-rank truncation.

        Then :meth:`predictive` / :meth:`functional_variance` take
        ``jacobians=`` (and ``f_map=``) at test points.
        """
        _choice(structure, ("full", "lowrank"), "structure (from_jacobians)")
        self = cls(None, likelihood=likelihood, structure=structure, rank=rank,
                   sigma_noise=sigma_noise, temperature=temperature)
        J = np.asarray(J)
        if J.dtype.kind not in "iuf":
            raise TypeError(f"J: expected a real array, got dtype {J.dtype}")
        if J.ndim != 3 or 0 in J.shape:
            raise ValueError(f"J: expected shape (N, K, D) with N, K, D >= 1, got {J.shape}")
        dtype = np.float32 if J.dtype == np.float32 else np.float64
        J = np.ascontiguousarray(J, dtype=dtype)
        if not np.all(np.isfinite(J)):
            raise ValueError("J: contains NaN or Inf")
        N, K, D = J.shape
        self.n_outputs, self.dtype = K, np.dtype(dtype)
        if layer_sizes is None:
            sizes = [D]
        else:
            sizes = list(layer_sizes) if np.ndim(layer_sizes) == 1 else None
            if sizes is None or not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                                        for v in sizes):
                raise TypeError(f"layer_sizes: expected a sequence of ints, got {layer_sizes!r}")
            if not sizes or min(sizes) < 1:
                raise ValueError(f"layer_sizes: expected positive parameter counts, got {sizes}")
            sizes = [int(v) for v in sizes]
        if sum(sizes) != D:
            raise ValueError(f"layer_sizes: expected sizes summing to D = {D}, got {sum(sizes)}")
        self._offsets = [0] + list(np.cumsum(sizes).astype(int))
        self._prior = _Prior(prior_precision, self._offsets)
        self._prior_mean = self._check_prior_mean(prior_mean)
        if f_map is not None:
            f_map = _real_array(f_map, "f_map")
            if f_map.shape not in ((N, K),) + (((N,),) if K == 1 else ()):
                raise ValueError(f"f_map: expected shape ({N}, {K}) like J's first two axes, got {f_map.shape}")
            if not np.all(np.isfinite(f_map)):
                raise ValueError("f_map: contains NaN or Inf")
            f_map = f_map.reshape(N, K)
        if Lam is None:
            if likelihood == "regression":
                Lam = np.broadcast_to(np.eye(K, dtype=dtype), (N, K, K))
            else:
                if f_map is None:
                    raise ValueError("Lam: pass the output Hessians, or f_map to compute them")
                if likelihood == "binary":  # independent outputs: diag(p (1 - p))
                    p = _sigmoid(f_map)
                    Lam = np.einsum("nk,kl->nkl", p * (1 - p), np.eye(K))
                else:
                    p = _softmax(f_map)
                    Lam = np.einsum("nk,kl->nkl", p, np.eye(K)) - np.einsum("nk,nl->nkl", p, p)
        Lam = np.ascontiguousarray(_real_array(Lam, "Lam"), dtype=dtype)
        if Lam.shape != (N, K, K):
            raise ValueError(f"Lam: expected shape ({N}, {K}, {K}), got {Lam.shape}")
        if not np.all(np.isfinite(Lam)):
            raise ValueError("Lam: contains NaN or Inf")
        if structure == "full":
            self._post = _FullPosterior(_la.ggn_from_jacobians(J, Lam), self._offsets)
        else:
            s, Q = _la.lowrank_eigh(_la.ggn_factor(J, Lam=Lam), rank=rank)
            self._post = _LowRankPosterior(s, Q, self._offsets)
        self._from_jac = True
        self.n_data = N
        self._theta_map = None
        if theta_map is not None:
            t = _real_array(theta_map, "theta_map")
            if t.shape != (D,):
                raise ValueError(f"theta_map: expected shape ({D},), got {t.shape}")
            if not np.all(np.isfinite(t)):
                raise ValueError("theta_map: contains NaN or Inf")
            self._theta_map = t
        if loss is not None:
            if isinstance(loss, (bool, np.bool_)) or not isinstance(loss, numbers.Real):
                raise TypeError(f"loss: expected a number (the summed training loss), got {loss!r}")
            if not math.isfinite(float(loss)):
                raise ValueError(f"loss: expected a finite number, got {loss}")
            self.loss = float(loss)
        elif y is not None:
            if f_map is None:
                raise ValueError("y: pass f_map too (the loss is computed from the MAP outputs)")
            self.loss = self._loss_from_outputs(f_map, self._labels(y, N))
        return self

    def _loss_from_outputs(self, f, y):
        """Summed loss of outputs f (N, K) for labels y (pykfac's conventions)."""
        N = f.shape[0]
        if self.likelihood == "regression":
            y = np.asarray(y, dtype=np.float64).reshape(N, -1)
            return float(0.5 * np.sum((y - f) ** 2))
        if self.likelihood == "binary":
            yt = 2 * (np.asarray(y, dtype=np.float64).reshape(f.shape) > 0) - 1.0
            return float(np.sum(np.logaddexp(0.0, -yt * f)))
        y = np.asarray(y)
        if y.dtype.kind not in "iu":
            raise TypeError("y: expected integer class labels for likelihood='classification'")
        m = f.max(1, keepdims=True)
        lse = (m + np.log(np.exp(f - m).sum(1, keepdims=True)))[:, 0]
        return float(np.sum(lse - f[np.arange(N), y]))

    # ---- save / load -------------------------------------------------------------------
    def _meta(self):
        """Settings of the fitted posterior, as JSON for the save file."""
        meta = {
            "source": "jacobians" if self._from_jac else "net",
            "likelihood": self.likelihood, "structure": self.structure, "rank": self.rank,
            "sigma_noise": self._sigma, "temperature": self._temperature, "n_data": int(self.n_data),
            "n_outputs": int(self.n_outputs), "loss": self.loss, "dtype": np.dtype(self.dtype).name,
            "offsets": [int(o) for o in self._offsets], "D": int(self._offsets[-1]),
            # full + scalar prior after optimize_prior_precision: log-dets from the eigenvalues
            "prefer_eig": bool(getattr(self._post, "prefer_eig", False)),
            # the prior's reading (a subnetwork's D can equal its L); the MC seed
            # and batch count, where a fit(..., override=False) after load continues
            "prior_kind": self._prior.kind,
            "seed": getattr(self, "seed", None), "n_batches": int(getattr(self, "_n_batches", 0)),
            # low rank: the file holds Gmat's factors (version 3)
            "lowrank_factors": getattr(self._post, "gmat", None) is not None,
        }
        if self._from_jac:
            meta["has_theta_map"] = self._theta_map is not None
        else:
            net = self._net
            meta.update({"subset": self.subset, "kind": self.kind, "mc_samples": self.mc_samples,
                         "kron_damping": self.kron_damping, "net_sizes": list(net.sizes),
                         "net_activations": list(net.activations), "sizes": list(self._model.sizes)})
        return meta

    @staticmethod
    def _file_spec(meta):
        """(arrays {name: (shape, dtype)}, layer offsets) a save file must hold,
        derived from its metadata alone (checked before anything is built)."""
        dtype = _persist.float_dtype(meta["dtype"])
        source = meta.get("source", "net")  # version 1 files: always from a net
        structure = _choice(meta["structure"], STRUCTURES, "structure")
        f64 = np.dtype(np.float64)
        spec = {}
        sizes = None
        if source == "net":
            net_sizes = _persist.int_list(meta["net_sizes"], "net_sizes")
            if len(net_sizes) < 2:
                raise ValueError(f"net_sizes: expected at least 2 sizes, got {net_sizes}")
            subset = _choice(meta["subset"], SUBSETS, "subset")
            sizes = net_sizes[-2:] if subset == "last_layer" else net_sizes
            if meta["sizes"] != sizes:
                raise ValueError(f"sizes: {meta['sizes']} does not match net_sizes {net_sizes}")
            offsets = [0]
            for i, o in zip(sizes[:-1], sizes[1:]):
                offsets.append(offsets[-1] + (i + 1) * o)
            net_params = sum((i + 1) * o for i, o in zip(net_sizes[:-1], net_sizes[1:]))
            spec["net_theta"] = ((net_params,), dtype)
            if subset == "subnetwork":  # per layer, the subnetwork's parameters in it
                sub = _persist.int_list(meta["offsets"], "offsets", lo=0)
                counts = np.diff(sub)
                if (len(sub) != len(offsets) or sub[0] != 0 or np.any(counts < 0)
                        or np.any(counts > np.diff(offsets)) or sub[-1] == 0):
                    raise ValueError(f"offsets: {meta['offsets']} is not a subnetwork of the network sizes")
                offsets = sub
                spec["subnetwork_indices"] = ((offsets[-1],), np.dtype(np.int64))
            elif meta["offsets"] != offsets:
                raise ValueError(f"offsets: {meta['offsets']} does not match the network sizes")
        elif source == "jacobians":
            _choice(structure, ("full", "lowrank"), "structure (from_jacobians)")
            offsets = _persist.int_list(meta["offsets"], "offsets", lo=0)
            if len(offsets) < 2 or offsets[0] != 0 or any(b <= a for a, b in zip(offsets, offsets[1:])):
                raise ValueError(f"offsets: expected 0 followed by increasing layer ends, got {offsets}")
            if not isinstance(meta["has_theta_map"], bool):
                raise ValueError("has_theta_map: expected a bool")
            if meta["has_theta_map"]:
                spec["theta_map"] = ((offsets[-1],), f64)
        else:
            raise ValueError(f"source: expected 'net' or 'jacobians', got {source!r}")
        D = offsets[-1]
        if meta["D"] != D:
            raise ValueError(f"D: {meta['D']} does not match the layer offsets ({D})")
        spec["prior_precision"] = (("n_prior",), f64)
        spec["prior_mean"] = ((D,), f64)
        if structure == "full":
            spec["post_H"] = ((D, D), dtype)
        elif structure == "diag":
            spec["post_h"] = ((D,), dtype)
        elif structure == "lowrank":
            spec["post_s"] = (("rank",), dtype)
            spec["post_Q"] = ((D, "rank"), dtype)
            factors = meta.get("lowrank_factors", False)
            if not isinstance(factors, bool) or (factors and sizes is None):
                raise ValueError(f"lowrank_factors: expected a bool (false without a network), got {factors!r}")
            if factors:
                spec["post_gC"] = (("gmat_columns", "rank"), dtype)
                for l, (i, o) in enumerate(zip(sizes[:-1], sizes[1:])):
                    spec[f"post_gU{l}"] = (("gmat_samples", "gmat_outputs", o), dtype)
                    spec[f"post_gA{l}"] = (("gmat_samples", i), dtype)
        else:
            for l, (i, o) in enumerate(zip(sizes[:-1], sizes[1:])):
                q = i + 1
                spec.update({f"post_A{l}": ((q, q), dtype), f"post_G{l}": ((o, o), dtype),
                             f"post_wG{l}": ((o,), dtype), f"post_QG{l}": ((o, o), dtype),
                             f"post_wA{l}": ((q,), dtype), f"post_QA{l}": ((q, q), dtype)})
                if structure == "ekfac":
                    spec[f"post_S{l}"] = ((o, q), dtype)
        return spec, offsets

    def save(self, path):
        """Save the fitted posterior to an ``.npz`` file (no pickle).

        Stores the format name and version, the settings, the network's
        architecture and MAP parameters (or, for a posterior built by
        :meth:`from_jacobians`, its layer sizes and ``theta_map``), the prior,
        and the structure's arrays (GGN, diagonal, Kronecker factors with
        their eigendecompositions, or the low-rank eigenpairs with Gmat's
        layer factors), with a SHA-256 checksum over the metadata and every
        array. Loading gives bit-identical results.
        """
        self._check_fit()
        arrays = {"prior_precision": self._prior.values, "prior_mean": self._prior_mean}
        if self._from_jac:
            if self._theta_map is not None:
                arrays["theta_map"] = self._theta_map
        else:
            arrays["net_theta"] = self._net.theta
            if self._sub is not None:
                arrays["subnetwork_indices"] = self._sub
        arrays.update({"post_" + k: v for k, v in self._post.state().items()})
        _persist.write(path, _FILE_FORMAT, FORMAT_VERSION, self._meta(), arrays)

    @classmethod
    def load(cls, path, net=None):
        """Load a posterior saved by :meth:`save`.

        Parameters
        ----------
        path : str, path-like or binary file
        net : MLP, optional
            If given it must match the saved network exactly (sizes,
            activations, dtype and MAP parameters); otherwise ValueError.
            Without it the network is rebuilt from the file. Must be None for
            a posterior built by :meth:`from_jacobians` (none is needed).

        Raises
        ------
        ValueError
            Naming the file if it is not a pykfac Laplace file, is truncated or
            corrupted (checksum), has another format version, or lacks, adds or
            reshapes an array.
        """
        meta, files = _persist.read(path, _FILE_FORMAT, _READ_VERSIONS, "Laplace")
        with _persist.malformed(path):
            spec, offsets = cls._file_spec(meta)
        _persist.check_arrays(path, files, spec)
        post_state = {k[5:]: v for k, v in files.items() if k.startswith("post_")}
        dtype = np.dtype(meta["dtype"])
        if meta.get("source", "net") == "jacobians":
            if net is not None:
                raise ValueError("net: the saved posterior was built by from_jacobians and has no "
                                 "network; load it without net")
            with _persist.malformed(path):
                la = cls(None, likelihood=meta["likelihood"], structure=meta["structure"],
                         rank=meta["rank"], sigma_noise=meta["sigma_noise"],
                         temperature=meta["temperature"])
                K = meta["n_outputs"]
                if isinstance(K, bool) or not isinstance(K, int) or K < 1:
                    raise ValueError(f"n_outputs: expected an int >= 1, got {K!r}")
                la.n_outputs, la.dtype, la._offsets = K, dtype, offsets
                la._prior = _Prior(files["prior_precision"], offsets, cls._prior_kind(meta))
                la._prior_mean = la._check_prior_mean(files["prior_mean"])
                la._from_jac = True
                la._theta_map = files.get("theta_map")
                la._post = _POSTERIORS[meta["structure"]].from_state(post_state, offsets, meta)
                cls._load_scalars(la, meta)
            return la
        theta = files["net_theta"]
        if net is None:
            with _persist.malformed(path):
                net = MLP(meta["net_sizes"], activation=meta["net_activations"] or "tanh", dtype=dtype)
                net.theta = theta
        else:
            if not isinstance(net, MLP):
                raise TypeError(f"net: expected a pykfac.MLP, got {type(net).__name__}")
            got = (list(net.sizes), list(net.activations), net.dtype.name)
            want = (meta["net_sizes"], meta["net_activations"], dtype.name)
            if got != want:
                raise ValueError(f"net: does not match the saved Laplace: sizes/activations/dtype "
                                 f"{want}, got {got}")
            if not np.array_equal(net.theta, theta):
                raise ValueError("net: its parameters differ from the MAP the saved posterior was "
                                 "fitted at")
        with _persist.malformed(path):
            la = cls(net, likelihood=meta["likelihood"], structure=meta["structure"],
                     subset=meta["subset"], prior_precision=files["prior_precision"],
                     sigma_noise=meta["sigma_noise"], temperature=meta["temperature"],
                     prior_mean=files["prior_mean"], kind=meta["kind"], mc_samples=meta["mc_samples"],
                     rank=meta["rank"], kron_damping=meta["kron_damping"],
                     subnetwork_indices=files.get("subnetwork_indices"), seed=meta.get("seed"))
            if la._offsets != offsets:
                raise ValueError("subnetwork_indices: do not match the layer offsets")
            la._prior = la._make_prior(files["prior_precision"], cls._prior_kind(meta))
            la._post = _POSTERIORS[meta["structure"]].from_state(post_state, la._offsets, meta)
            cls._load_scalars(la, meta)
        return la

    @staticmethod
    def _prior_kind(meta):
        """The saved prior's kind (None in files before it was stored: from its length)."""
        kind = meta.get("prior_kind")
        return None if kind is None else _choice(kind, ("scalar", "layer", "param"), "prior_kind")

    @staticmethod
    def _load_scalars(la, meta):
        n_data, loss = meta["n_data"], meta["loss"]
        if isinstance(n_data, bool) or not isinstance(n_data, int) or n_data < 1:
            raise ValueError(f"n_data: expected an int >= 1, got {n_data!r}")
        if loss is not None and (isinstance(loss, bool) or not isinstance(loss, (int, float))
                                 or not math.isfinite(loss)):
            raise ValueError(f"loss: expected a finite number or None, got {loss!r}")
        la.n_data, la.loss = n_data, None if loss is None else float(loss)
        n_batches = meta.get("n_batches", 0)
        if isinstance(n_batches, bool) or not isinstance(n_batches, int) or n_batches < 0:
            raise ValueError(f"n_batches: expected an int >= 0, got {n_batches!r}")
        la._n_batches = n_batches
        if meta.get("prefer_eig") and isinstance(la._post, _FullPosterior):
            la._post.prefer_eig = True

    def __repr__(self):
        state = "fitted" if self._post is not None else "not fitted"
        return (f"Laplace(likelihood={self.likelihood!r}, structure={self.structure!r}, "
                f"subset={self.subset!r}, D={self._offsets[-1] if hasattr(self, '_offsets') else None}, {state})")
