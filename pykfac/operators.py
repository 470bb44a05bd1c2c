r"""Operators built from other square operators: matrix-free inverses
:math:`(A + \delta I)^{-1}` (curvlinops' ``CGInverseLinearOperator``,
``LSMRInverseLinearOperator`` and ``NeumannInverseLinearOperator``) for
inverse-Hessian- or inverse-GGN-vector products (influence functions, Newton
steps), and blocks ``A[rows][:, cols]`` (curvlinops' ``SubmatrixLinearOperator``),
from products with ``A`` alone. The products are the C core's; the Krylov
recursions are SciPy's.
"""
import numbers

import numpy as np
from scipy.sparse.linalg import LinearOperator, cg, lsmr, minres

from ._core import LinAlgError
from .curvature import _apply, _probe_operator

__all__ = ["InverseOperator", "SubmatrixOperator"]

_METHODS = ("cg", "minres", "lsmr", "neumann")


def _transpose(A):
    """Aᵀ of an array or a real LinearOperator (its adjoint)."""
    return A.T if isinstance(A, np.ndarray) else A.H


def _positive_number(value, name, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or \
            value < 0 or (value == 0 and not allow_zero):
        want = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a finite number {want}, got {value!r}")
    return float(value)


class InverseOperator(LinearOperator):
    r"""Products with :math:`(A + \delta I)^{-1}` for a square operator ``A``, as a
    ``LinearOperator`` of the same shape, in float64.

    Parameters
    ----------
    A : square operator with ``A @ V`` (``GGNOperator``, ``HessianOperator``,
        ``KronCurvature.as_linear_operator()``, an array, ...)
    damping : float
        :math:`\delta \ge 0`, added to the diagonal.
    method : {"cg", "minres", "lsmr", "neumann"}
        * ``"cg"``: conjugate gradients, for symmetric positive definite
          :math:`A + \delta I` (a damped GGN or Fisher); ``M`` preconditions it
          (e.g. ``pk.kfac(...).as_linear_operator(damping, inverse=True)``).
        * ``"minres"``: for symmetric but indefinite :math:`A + \delta I` (a
          damped Hessian away from a minimum); ``M`` must be positive definite.
        * ``"lsmr"``: least squares :math:`\min_x \|(A + \delta I)x - b\|`, for
          any (also singular or non-symmetric) A; no preconditioner.
        * ``"neumann"``: the truncated series
          :math:`\alpha\sum_{k<K}(I - \alpha(A + \delta I))^k b` with
          :math:`K` = ``num_terms`` and :math:`\alpha` = ``scale``; converges
          when the eigenvalues of :math:`A + \delta I` lie in
          :math:`(0, 2/\alpha)`, error :math:`O(\max|1-\alpha\lambda|^K)`. Cheap,
          fixed cost, no convergence test (a diverging series raises).
    rtol : float
        Relative residual tolerance of cg/minres/lsmr, per column.
    maxiter : int or None
        Iteration limit of cg/minres/lsmr (SciPy's default when None).
    M : operator or None
        Preconditioner approximating :math:`(A + \delta I)^{-1}` (cg, minres).

    Products raise :class:`pykfac.LinAlgError` when a solver does not reach
    ``rtol`` within ``maxiter``; ``op.iterations`` holds the iteration counts of
    the last product's columns.
    """

    def __init__(self, A, damping=0.0, method="cg", rtol=1e-8, maxiter=None, M=None, num_terms=100,
                 scale=1.0):
        D, _ = _probe_operator(A, 1, 1)
        if method not in _METHODS:
            raise ValueError(f"method: expected one of {_METHODS}, got {method!r}")
        self.A, self.method = A, method
        self.damping = _positive_number(damping, "damping", allow_zero=True)
        self.rtol = _positive_number(rtol, "rtol")
        if maxiter is not None and (isinstance(maxiter, bool) or not isinstance(maxiter, numbers.Integral)
                                    or maxiter < 1):
            raise ValueError(f"maxiter: expected an int >= 1 or None, got {maxiter!r}")
        self.maxiter = None if maxiter is None else int(maxiter)
        if M is not None and method not in ("cg", "minres"):
            raise ValueError(f"M: a preconditioner needs method 'cg' or 'minres', not {method!r}")
        if M is not None and getattr(M, "shape", None) != (D, D):
            raise ValueError(f"M: expected a ({D}, {D}) operator, got shape {getattr(M, 'shape', None)}")
        self.M = M
        if isinstance(num_terms, bool) or not isinstance(num_terms, numbers.Integral) or num_terms < 1:
            raise ValueError(f"num_terms: expected an int >= 1, got {num_terms!r}")
        self.num_terms = int(num_terms)
        self.scale = _positive_number(scale, "scale")
        self.iterations = []
        self._shifted = LinearOperator((D, D), matvec=self._shifted_matvec, rmatvec=self._shifted_rmatvec,
                                       dtype=np.float64)
        super().__init__(dtype=np.float64, shape=(D, D))

    def _shifted_matvec(self, v):
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        return _apply(self.A, v[:, None])[:, 0] + self.damping * v

    def _shifted_rmatvec(self, v):  # lsmr's products with the transpose
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        return _apply(_transpose(self.A), v[:, None])[:, 0] + self.damping * v

    def _matmat(self, B):
        B = np.asarray(B, dtype=np.float64)
        if not np.all(np.isfinite(B)):
            raise ValueError("B: contains NaN or Inf")
        if self.method == "neumann":
            return self._neumann(B)
        X = np.empty_like(B)
        self.iterations = []
        for j in range(B.shape[1]):
            X[:, j] = self._solve(B[:, j])
        return X

    def _matvec(self, b):
        return self._matmat(np.asarray(b).reshape(-1, 1))[:, 0]

    def _adjoint(self):
        if self.method == "lsmr":  # A may be non-symmetric there
            raise NotImplementedError("InverseOperator: no adjoint with method='lsmr'")
        return self  # A symmetric

    def _solve(self, b):
        count = [0]

        def tick(*_):
            count[0] += 1

        if self.method == "lsmr":
            out = lsmr(self._shifted, b, atol=self.rtol, btol=self.rtol, maxiter=self.maxiter)
            x, info, count[0] = out[0], out[1], out[2]
            ok = info in (0, 1, 2, 4, 5)  # 3, 6: ill-conditioned; 7: maxiter
        elif self.method == "cg":
            x, info = cg(self._shifted, b, rtol=self.rtol, maxiter=self.maxiter, M=self.M, callback=tick)
            ok = info == 0
        else:
            x, info = minres(self._shifted, b, rtol=self.rtol, maxiter=self.maxiter, M=self.M, callback=tick)
            ok = info == 0
        self.iterations.append(count[0])
        if not ok or not np.all(np.isfinite(x)):
            raise LinAlgError(f"{self.method} did not reach rtol={self.rtol:g} in {count[0]} iterations "
                              f"(info {info}); raise maxiter, damping or rtol, or precondition with M")
        return x

    def _neumann(self, B):
        term = self.scale * B
        X = term.copy()
        # a term this much larger than the first can only come from a diverging series
        limit = 1e100 * max(float(np.abs(term).max()), np.finfo(np.float64).tiny)
        for _ in range(self.num_terms - 1):
            term = term - self.scale * (_apply(self.A, term) + self.damping * term)
            X += term
            if not np.abs(term).max() < limit:
                raise LinAlgError("neumann: the series diverged; use a smaller scale "
                                  "(below 2 / the largest eigenvalue of A + damping I)")
        self.iterations = [self.num_terms] * B.shape[1]
        return X


def _indices(idx, n, name):
    arr = np.asarray(idx)
    if arr.dtype.kind not in "iu" or arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D array of integer indices, got {arr.dtype} {arr.shape}")
    if arr.min() < 0 or arr.max() >= n:
        raise ValueError(f"{name}: expected indices in [0, {n - 1}], got range [{arr.min()}, {arr.max()}]")
    if np.unique(arr).size != arr.size:
        raise ValueError(f"{name}: expected distinct indices")
    return arr.astype(np.intp)


class SubmatrixOperator(LinearOperator):
    """The block ``A[rows][:, cols]`` of a square operator as a ``LinearOperator``
    (curvlinops' ``SubmatrixLinearOperator``), e.g. one layer's GGN or Hessian block,
    or its coupling to another layer: each product is one product with ``A`` of a
    vector that is zero outside ``cols``, of which ``rows`` are kept. Its adjoint
    uses ``A``'s (``A.T`` for arrays, ``A.H`` for operators), in float64."""

    def __init__(self, A, rows, cols):
        D, _ = _probe_operator(A, 1, 1)
        self.A = A
        self.rows, self.cols = _indices(rows, D, "rows"), _indices(cols, D, "cols")
        self._D = D
        super().__init__(dtype=np.float64, shape=(self.rows.size, self.cols.size))

    def _embed(self, V, idx):
        V = np.asarray(V, dtype=np.float64)
        full = np.zeros((self._D, V.shape[1]))
        full[idx] = V
        return full

    def _matmat(self, V):
        return _apply(self.A, self._embed(V, self.cols))[self.rows]

    def _matvec(self, v):
        return self._matmat(np.asarray(v).reshape(-1, 1))[:, 0]

    def _rmatmat(self, U):
        return _apply(_transpose(self.A), self._embed(U, self.rows))[self.cols]

    def _rmatvec(self, u):
        return self._rmatmat(np.asarray(u).reshape(-1, 1))[:, 0]
