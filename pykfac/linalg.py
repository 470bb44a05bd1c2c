r"""Framework-agnostic linear algebra for Laplace approximations (``pk.linalg``).

Everything here takes plain arrays -- Jacobians, output Hessians, low-rank
factors, Kronecker factors -- so a network written in JAX or PyTorch can use
pykfac's C core for the expensive algebra (convert with ``np.asarray(x)``).
All arithmetic runs in C (``csrc/linalg.c``) with the GIL released; arrays
keep float32 when the first array argument is float32 and are float64
otherwise. Inputs are never modified.

Costs are stated per function with ``N`` samples, ``K`` outputs, ``D``
parameters and ``M`` low-rank columns.

Low rank plus diagonal (Woodbury)
---------------------------------
For :math:`P = \alpha I + G_m G_m^\top` with :math:`G_m` (``Gmat``) of shape
``(D, M)``,

.. math:: P^{-1} = \tfrac1\alpha\,[I - G_m(\alpha I + G_m^\top G_m)^{-1}G_m^\top],
          \qquad \log\det P = (D - M)\log\alpha + \log\det(\alpha I + G_m^\top G_m),

costing :math:`O(M^2 D + M^3)` through a Cholesky factorisation of the
:math:`M \times M` capacitance, never forming a ``D x D`` matrix (except in
:func:`woodbury_inverse`, which returns it). ``alpha`` may also be a ``(D,)``
vector of positive values (a diagonal prior precision).
"""
import numbers
from collections import namedtuple

import numpy as np

from . import _core
from ._data import flag as _flag, resolve_seed

__all__ = [
    "DensePrecision",
    "KronEigh",
    "ggn_from_jacobians",
    "ggn_linear",
    "ggn_factor",
    "psd_sqrt",
    "woodbury_solve",
    "woodbury_inverse",
    "woodbury_logdet",
    "woodbury_diag_inverse",
    "woodbury_sample",
    "lowrank_eigh",
    "kron_eigh",
    "kron_solve",
    "kron_inv_quad",
    "diag_inv_quad",
    "matrix_normal_sample",
    "LinAlgError",
]

LinAlgError = _core.LinAlgError


def _n_samples(n, name="n"):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"{name}: expected a number of samples >= 0, got {n}")
    # beyond the index range NumPy and the C core would fail with OverflowError
    if n > np.iinfo(np.intp).max:
        raise ValueError(f"{name}: expected a number of samples < 2**63, got {n}")
    return int(n)


def _scalar(value, name):
    """A real scalar argument as float (finiteness is checked by the C core)."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    return float(value)


def _real_array(arr, name):
    """The C core would name a right-hand side by its own parameter name; check here."""
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected a real (integer or floating) array, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or Inf")


def _kron_eig(eig):
    try:
        wG, QG, wA, QA = eig
    except (TypeError, ValueError):
        raise TypeError(f"eig: expected a KronEigh (wG, QG, wA, QA) from kron_eigh, "
                        f"got {type(eig).__name__}") from None
    return wG, QG, wA, QA


def _rhs(V, D, name="V"):
    arr = np.asarray(V)
    _real_array(arr, name)
    if arr.ndim == 1:
        if arr.shape[0] != D:
            raise ValueError(f"{name}: expected shape ({D},) or ({D}, m), got {arr.shape}")
        return arr[:, None], True
    if arr.ndim != 2 or arr.shape[0] != D:
        raise ValueError(f"{name}: expected shape ({D},) or ({D}, m), got {arr.shape}")
    return arr, False


def _gmat(Gmat):
    U = np.asarray(Gmat)
    if U.ndim != 2:
        raise ValueError(f"Gmat: expected a 2-D array of shape (D, M), got shape {U.shape}")
    return U


# ---------------------------------------------------------------------------
# GGN pieces
# ---------------------------------------------------------------------------
def ggn_from_jacobians(J, Lam=None):
    r"""Generalised Gauss-Newton :math:`G = \sum_n J_n^\top \Lambda_n J_n`.

    Parameters
    ----------
    J : array_like, shape (N, K, D)
        Per-sample Jacobians of the network outputs with respect to the parameters.
    Lam : array_like, shape (N, K, K), optional
        Output Hessians of the loss :math:`\Lambda_n = \partial^2\ell/\partial f^2`
        (identity, i.e. ``mse``, when omitted). Need not be PSD.

    Returns
    -------
    ndarray, shape (D, D)
        Exactly symmetric. Cost :math:`O(N K^2 D + N K D^2)` (GEMMs over chunks of samples).
    """
    return _core.ggn_from_jacobians(J, Lam)


def ggn_linear(Phi, Lam):
    r"""Exact GGN of a linear (last) layer :math:`f = W\phi + b` from its input features.

    With :math:`J_n = I_K \otimes [\phi_n; 1]^\top`,
    :math:`G = \sum_n \Lambda_n \otimes \bar\phi_n\bar\phi_n^\top`, returned in theta
    order (``W.ravel()`` row-major, then ``b``), shape ``(K (h+1), K (h+1))``.

    Parameters
    ----------
    Phi : array_like, shape (N, h)
        Features (e.g. ``net.features(X)``, or a JAX/PyTorch model's penultimate layer).
    Lam : array_like, shape (N, K, K)
        Output Hessians of the loss.

    Cost :math:`O(K^2 N h^2 / 2)` (one GEMM per pair of outputs), instead of
    :math:`O(N K D^2)` through Jacobians.
    """
    return _core.ggn_linear(Phi, Lam)


def psd_sqrt(Lam):
    r"""Symmetric square roots :math:`S_n` with :math:`S_n S_n^\top = \Lambda_n`.

    ``Lam`` (N, K, K) symmetric PSD; eigenvalues at roundoff level are set to 0,
    clearly negative ones raise :class:`pykfac.LinAlgError`. Cost :math:`O(N K^3)`.
    """
    return _core.psd_sqrt(Lam)


def ggn_factor(J, Lam=None, S=None):
    r"""Woodbury factor ``Gmat`` (D, N K) of the GGN: :math:`G_m G_m^\top = \sum_n J_n^\top \Lambda_n J_n`.

    Column ``n K + j`` is :math:`J_n^\top S_n[:, j]`. Pass either the output
    Hessians ``Lam`` (their square roots are taken with :func:`psd_sqrt`) or
    square roots ``S`` directly (e.g. ``pk.output_curvature(...).sqrt``);
    with neither, :math:`\Lambda = I`. Cost :math:`O(N K^2 D)`, memory ``D N K``.
    """
    J = np.asarray(J)
    if J.ndim != 3:
        raise ValueError(f"J: expected shape (N, K, D), got {J.shape}")
    if S is None:
        if Lam is None:
            S = np.broadcast_to(np.eye(J.shape[1]), (J.shape[0], J.shape[1], J.shape[1]))
        else:
            S = psd_sqrt(Lam)
    elif Lam is not None:
        raise ValueError("ggn_factor: pass Lam or S, not both")
    return _core.ggn_factor(J, S)


# ---------------------------------------------------------------------------
# Woodbury
# ---------------------------------------------------------------------------
def woodbury_solve(alpha, Gmat, V):
    r""":math:`(\alpha I + G_m G_m^\top)^{-1} V` by the Woodbury identity.

    Parameters
    ----------
    alpha : float or array_like (D,)
        Positive scalar (or diagonal) part.
    Gmat : array_like, shape (D, M)
    V : array_like, shape (D,) or (D, m)

    Returns
    -------
    ndarray, same shape as V
        Cost :math:`O(M^2 D + M^3 + D M m)`.

    Raises
    ------
    pykfac.LinAlgError
        If the capacitance :math:`\alpha I + G_m^\top G_m` is not positive
        definite (only through roundoff: it is PD in exact arithmetic).
    """
    U = _gmat(Gmat)
    V2, squeeze = _rhs(V, U.shape[0])
    R = _core.woodbury_solve(alpha, U, V2)
    return R[:, 0] if squeeze else R


def woodbury_inverse(alpha, Gmat):
    r"""Dense :math:`(\alpha I + G_m G_m^\top)^{-1}`, shape (D, D).

    :math:`\frac1\alpha[I - G_m(\alpha I + G_m^\top G_m)^{-1}G_m^\top]`, cost
    :math:`O(D^2 M + M^2 D + M^3)`; exactly symmetric.
    """
    return _core.woodbury_inverse(alpha, _gmat(Gmat))


def woodbury_logdet(alpha, Gmat):
    r""":math:`\log\det(\alpha I + G_m G_m^\top) = (D-M)\log\alpha + \log\det(\alpha I + G_m^\top G_m)`.

    Cost :math:`O(M^2 D + M^3)`; accumulated in float64.
    """
    return _core.woodbury_logdet(alpha, _gmat(Gmat))


def woodbury_diag_inverse(alpha, Gmat):
    r"""Diagonal of :math:`(\alpha I + G_m G_m^\top)^{-1}`, shape (D,). Cost :math:`O(M^2 D + M^3)`."""
    return _core.woodbury_diag_inverse(alpha, _gmat(Gmat))


def woodbury_sample(alpha, Gmat, n, seed=None):
    r"""``n`` draws of :math:`\mathcal N(0, (\alpha I + G_m G_m^\top)^{-1})`, shape (n, D).

    Perturb-then-solve: :math:`y = \sqrt\alpha\, z_1 + G_m z_2 \sim \mathcal N(0, P)`,
    :math:`x = P^{-1} y`. Cost :math:`O(M^2 D + M^3 + n D M)`. Reproducible per ``seed``.
    """
    return _core.woodbury_sample(alpha, _gmat(Gmat), _n_samples(n), resolve_seed(seed))


def _leading(buf, rows, cols):
    """The compact (rows, cols) row-major matrix at the start of ``buf``, no
    copy: the C core's layout for a result whose width it finds itself."""
    return buf.reshape(-1)[:rows * cols].reshape(rows, cols)


def lowrank_eigh(Gmat, rank=None):
    r"""Thin eigendecomposition :math:`G_m G_m^\top = Q\,\mathrm{diag}(s)\,Q^\top`.

    Parameters
    ----------
    Gmat : array_like, shape (D, M)
    rank : int, optional
        Keep only the ``rank`` largest eigenvalues.

    Returns
    -------
    s : ndarray, shape (r,)
        Positive eigenvalues, descending. Those at roundoff level are dropped:
        below :math:`\max(M\epsilon_{64}, (\max(M, D)\epsilon)^2)\max s` with
        :math:`\epsilon` that of the dtype. The Gram matrix is formed and
        decomposed in float64 for float32 input too, so a float32 ``Gmat``
        keeps every direction above its own rounding.
    Q : ndarray, shape (D, r)
        Orthonormal eigenvectors.

    Cost :math:`O(M^2 D + M^3)` (eigendecomposition of the Gram matrix
    :math:`G_m^\top G_m`).
    """
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
            raise ValueError(f"rank: expected a positive int or None, got {rank!r}")
    U = _gmat(Gmat)
    s, Qbuf, r = _core.lowrank_eigh(U)
    Q = _leading(Qbuf, U.shape[0], r)
    if rank is not None and rank < r:
        return s[:rank].copy(), np.ascontiguousarray(Q[:, :rank])
    return s[:r].copy(), Q


# ---------------------------------------------------------------------------
# dense SPD precision
# ---------------------------------------------------------------------------
class DensePrecision:
    r"""A dense symmetric positive-definite precision matrix, Cholesky-factored once.

    ``P = L Lᵀ`` (LAPACK ``potrf``); all methods reuse ``L``.

    Parameters
    ----------
    P : array_like, shape (D, D)
        Symmetric positive definite (its lower triangle is read).
    name : str
        Used in error messages.

    Raises
    ------
    pykfac.LinAlgError
        If ``P`` is not positive definite.
    """

    def __init__(self, P, name="precision"):
        # read-only and finite (chol's output), so solves and draws skip re-scanning it
        self.L = _core.chol(P, name)
        self.L.setflags(write=False)
        self.dtype = self.L.dtype
        self.shape = self.L.shape

    def logdet(self):
        """:math:`\\log\\det P = 2\\sum_i \\log L_{ii}` (float64)."""
        return _core.chol_logdet(self.L)

    def solve(self, V):
        """:math:`P^{-1} V` for V (D,) or (D, m); cost :math:`O(D^2 m)`."""
        V2, squeeze = _rhs(V, self.shape[0])
        R = _core.chol_solve(self.L, V2, check_L=False)
        return R[:, 0] if squeeze else R

    def inverse(self):
        """Dense :math:`P^{-1}` (the covariance), exactly symmetric; cost :math:`O(D^3)`."""
        return _core.chol_inverse(self.L)

    def sample(self, n, seed=None):
        """``n`` draws of :math:`\\mathcal N(0, P^{-1})` as rows (n, D): :math:`L^{-\\top} z`."""
        Z = _core.standard_normal(_n_samples(n), self.shape[0], self.dtype == np.float32,
                                  resolve_seed(seed))
        return _core.chol_sample(self.L, Z, check_L=False)

    def whiten(self, Z):
        """Rows :math:`L^{-\\top} z` for standard-normal rows ``Z`` (m, D)."""
        return _core.chol_sample(self.L, Z, check_L=False)


# ---------------------------------------------------------------------------
# Kronecker
# ---------------------------------------------------------------------------
KronEigh = namedtuple("KronEigh", ["wG", "QG", "wA", "QA"])
KronEigh.__doc__ = """Eigendecompositions of the factors of ``G ⊗ A``:
``G = QG diag(wG) QGᵀ``, ``A = QA diag(wA) QAᵀ`` (ascending, eigenvectors as
columns). The eigenvalues of ``G ⊗ A`` are ``wG[i] * wA[j]``."""


def kron_eigh(A, G):
    """Eigendecompositions of both Kronecker factors (LAPACK ``syevd``).

    Parameters
    ----------
    A : array_like, shape (nA, nA)
    G : array_like, shape (nG, nG)
        Symmetric (the lower triangles are read).

    Returns
    -------
    KronEigh
        ``(wG, QG, wA, QA)``. Cost :math:`O(n_A^3 + n_G^3)`.
    """
    return KronEigh(*_core.kron_eigh(A, G))


def kron_solve(A, G, B, damping=0.0, scale=1.0, eig=None):
    r"""Solve :math:`(s\,G \otimes A + \delta I)\,\mathrm{vec}(X) = \mathrm{vec}(B)`.

    Kronecker order is NumPy's: ``np.kron(G, A) @ X.ravel()`` for an
    ``(nG, nA)`` matrix ``X`` (row-major vec), i.e.
    :math:`(G \otimes A)\mathrm{vec}(X) = \mathrm{vec}(G X A^\top)`. The damping
    is added exactly to the eigenvalues :math:`s\,\lambda_{G,i}\lambda_{A,j} + \delta`.

    Parameters
    ----------
    A, G : array_like or None
        Factors (nA, nA) and (nG, nG); may be None when ``eig`` is given.
    B : array_like
        ``(nG, nA)``, a batch ``(m, nG, nA)``, or flat ``(nG*nA,)`` / ``(nG*nA, m)``.
    damping : float
        :math:`\delta`.
    scale : float
        :math:`s`.
    eig : KronEigh, optional
        Precomputed :func:`kron_eigh` (reuse it across many solves).

    Returns
    -------
    ndarray, same shape as B
        Cost :math:`O(m\,n_G n_A (n_G + n_A))` plus the eigendecompositions.

    Raises
    ------
    pykfac.LinAlgError
        If a damped eigenvalue is <= 0.
    """
    if eig is None:
        if A is None or G is None:
            raise TypeError("A, G: kron_solve needs the factors A and G, or eig=kron_eigh(A, G)")
        eig = kron_eigh(A, G)
    wG, QG, wA, QA = _kron_eig(eig)
    nG, nA = np.shape(QG)[0], np.shape(QA)[0]
    Barr = np.asarray(B)
    _real_array(Barr, "B")
    shape = Barr.shape
    if Barr.ndim == 2 and shape == (nG, nA):
        X = Barr[None]
        back = lambda R: R[0]  # noqa: E731
    elif Barr.ndim == 3 and shape[1:] == (nG, nA):
        X = Barr
        back = lambda R: R  # noqa: E731
    elif Barr.ndim == 1 and shape[0] == nG * nA:
        X = Barr.reshape(1, nG, nA)
        back = lambda R: R.reshape(nG * nA)  # noqa: E731
    elif Barr.ndim == 2 and shape[0] == nG * nA:
        X = Barr.T.reshape(-1, nG, nA)
        back = lambda R: R.reshape(-1, nG * nA).T  # noqa: E731
    else:
        raise ValueError(f"B: expected shape ({nG}, {nA}), (m, {nG}, {nA}), ({nG * nA},) or "
                         f"({nG * nA}, m), got {shape}")
    R = _core.kron_spectral_apply(wG, QG, wA, QA, X, scale=_scalar(scale, "scale"),
                                  damping=_scalar(damping, "damping"),
                                  power=-1.0)
    return back(R)


def kron_inv_quad(eig, Gv, Av, damping=0.0, scale=1.0, factored=False):
    r"""GLM variances :math:`J_n (s\,G\otimes A + \delta I)^{-1} J_n^\top` of a dense layer
    whose Jacobian rows are rank one, :math:`J_{n,k} = \mathrm{vec}(g_{nk} a_n^\top)`.

    Parameters
    ----------
    eig : KronEigh
        :func:`kron_eigh` of the layer's factors (eigenvalues at roundoff level
        are treated as 0).
    Gv : array_like, shape (N, K, nG)
        Pre-activation gradients :math:`g_{nk} = \partial f_k / \partial s` (the
        Jacobian of the bias).
    Av : array_like, shape (N, nA)
        Layer inputs :math:`a_n` (ending with the constant 1 of the bias).
    damping, scale : float
    factored : bool
        Ritter et al.'s :math:`(s\lambda_G + \sqrt\delta)(\lambda_A + \sqrt\delta)` instead of
        :math:`s\lambda_G\lambda_A + \delta`.

    Returns
    -------
    ndarray, shape (N, K, K)
        Cost :math:`O(N(K n_G^2 + n_A^2 + n_A n_G + K^2 n_G))` -- no Kronecker solve
        per Jacobian row (that would be :math:`O(N K n_G n_A (n_G + n_A))`).
    """
    wG, QG, wA, QA = _kron_eig(eig)
    return _core.kron_inv_quad(wG, QG, wA, QA, Gv, Av, scale=_scalar(scale, "scale"),
                               damping=_scalar(damping, "damping"),
                               factored=_flag(factored, "factored"))


def diag_inv_quad(F, Gv, Av):
    r"""GLM variances :math:`J_n \Sigma J_n^\top` of a dense layer with a DIAGONAL
    covariance :math:`\Sigma`, from the rank-one Jacobian rows
    :math:`J_{n,k} = \mathrm{vec}(g_{nk} a_n^\top)`:
    ``out[n, k, k'] = sum_ij Gv[n,k,i] Gv[n,k',i] Av[n,j]**2 F[i,j]``.

    Parameters
    ----------
    F : array_like, shape (nG, nA)
        The variances arranged like the layer's :math:`[W\; b]` (the bias in the
        last column, matching a last column of ones in ``Av``).
    Gv : array_like, shape (N, K, nG)
        Pre-activation gradients (the Jacobian of the bias).
    Av : array_like, shape (N, nA)
        Layer inputs ending with the constant 1 of the bias.

    Returns
    -------
    ndarray, shape (N, K, K)
        Cost :math:`O(N(n_A n_G + K^2 n_G))` instead of :math:`O(N K^2 n_G n_A)` for
        the formed Jacobian rows.
    """
    return _core.diag_inv_quad(F, Gv, Av)


def matrix_normal_sample(M, U, V, n, seed=None):
    r"""``n`` draws of the matrix normal :math:`\mathcal{MN}(M, U, V)`.

    :math:`X = M + \mathrm{chol}(U)\, Z\, \mathrm{chol}(V)^\top` with standard
    normal ``Z`` (r, c), so that :math:`\mathrm{Cov}(\mathrm{vec}\,X) = U \otimes V`
    (row-major vec, ``np.kron(U, V)``).

    Parameters
    ----------
    M : array_like, shape (r, c)
    U : array_like, shape (r, r)
        Row covariance, symmetric positive definite.
    V : array_like, shape (c, c)
        Column covariance, symmetric positive definite.
    n : int
    seed : int or None

    Returns
    -------
    ndarray, shape (n, r, c)
        Cost :math:`O(r^3 + c^3 + n\,r c (r + c))`.

    Raises
    ------
    pykfac.LinAlgError
        Naming ``U`` or ``V`` if it is not positive definite.
    """
    return _core.matrix_normal_sample(M, U, V, _n_samples(n), resolve_seed(seed))
