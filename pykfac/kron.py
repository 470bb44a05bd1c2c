"""Kronecker-factored (K-FAC) curvature: one ``G ⊗ A`` block per dense layer.

For layer ``l`` with ``in`` inputs and ``out`` outputs the parameters are
``Wbar = [W b]`` (``out x q``, ``q = in + 1``) and the curvature block is

    K_l ≈ G_l ⊗ A_l,   A_l = (1/N) Σₙ āₙ āₙᵀ  (q x q),   G_l = Σₙ gₙ gₙᵀ  (out x out),

in row-major order of ``Wbar`` (``(G ⊗ A) vec(X) = vec(G X A)``), so that with
``G`` a sum and ``A`` a mean, ``K_l`` approximates the SUMMED GGN block (see
CONVENTIONS.md). ``K = blockdiag(K_1, ..., K_L)`` is exposed in theta order:
per layer ``W.ravel()`` then ``b``. Everything below is computed per layer
from the factors and their eigendecompositions ``G = Q_G Λ_G Q_Gᵀ``,
``A = Q_A Λ_A Q_Aᵀ``; ``K`` itself (``D x D``) is never formed unless asked
for with :meth:`KronCurvature.to_dense`.

Damping ``δ`` comes in two forms:

* exact (default): ``K_l + δ I``, eigenvalues ``λ_G,i λ_A,j + δ``;
* factored (Martens & Grosse 2015): ``(G + (γ/π) I) ⊗ (A + γ π I)`` with
  ``γ = √δ`` and ``π_l = √((tr A / q) / (tr G / out))`` per layer
  (``π = 1`` if a trace is 0).

``δ`` may be one number or one per layer (e.g. a per-layer prior precision).
"""
import numbers

import numpy as np

from . import _core
from ._data import flag as _flag

__all__ = ["EKFACCurvature", "KronCurvature"]

_POWERS = (1.0, -1.0, 0.5, -0.5)


def _power(power):
    """``power`` as a float in {1, -1, 0.5, -0.5} (TypeError / ValueError otherwise)."""
    try:
        power = float(power)
    except (TypeError, ValueError):
        raise TypeError(f"power: expected a number, got {power!r}") from None
    if power not in _POWERS:
        raise ValueError(f"power: expected 1, -1, 0.5 or -0.5, got {power:g}")
    return power


def _factor(M, name, n, dtype):
    """Validated, symmetrised, read-only private copy of a factor (n x n)."""
    arr = np.asarray(M)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected a real array, got dtype {arr.dtype}")
    if arr.shape != (n, n):
        raise ValueError(f"{name}: expected shape ({n}, {n}), got {arr.shape}")
    arr = np.array(arr, dtype=dtype, order="C", copy=True)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or Inf")
    scale = float(np.abs(arr).max()) if arr.size else 0.0
    tol = np.sqrt(np.finfo(dtype).eps) * scale
    if arr.size and float(np.abs(arr - arr.T).max()) > tol:
        raise ValueError(f"{name}: expected a symmetric matrix")
    # Exactly symmetric from here on, so products and eigendecompositions agree.
    arr = (arr + arr.T) * dtype.type(0.5)
    arr.setflags(write=False)
    return arr


class KronCurvature:
    """Block-diagonal Kronecker-factored curvature ``K = blockdiag_l(G_l ⊗ A_l)``.

    Parameters
    ----------
    A : sequence of array_like, length L
        Input factors; ``A[l]`` has shape ``(sizes[l] + 1, sizes[l] + 1)``
        (the last row/column belongs to the bias), symmetric positive
        semi-definite.
    G : sequence of array_like, length L
        Output-gradient factors; ``G[l]`` has shape
        ``(sizes[l+1], sizes[l+1])``, symmetric positive semi-definite.
    sizes : sequence of int, length L + 1
        Layer widths of the network, ``sizes[0]`` inputs to ``sizes[L]``
        outputs.
    num_data : int, optional
        Number of samples the factors were estimated from (informational:
        the ``1/N`` is already in ``A``).
    kind : str, optional
        How the factors were built (e.g. ``"exact"``, ``"mc"``,
        ``"empirical"``, ``"kfra"``); informational.

    The dtype is the dtype of ``A[0]`` (float32 or float64); the other
    factors are cast to it. The factors are copied: later changes to the
    caller's arrays do not affect this object.

    Attributes
    ----------
    A, G : list of ndarray
        The (read-only) factors.
    sizes : tuple of int
    num_data : int or None
    kind : str or None
    dtype : numpy.dtype
    num_params : int
        ``D = Σ_l sizes[l+1] * (sizes[l] + 1)``.
    shape : tuple of int
        ``(D, D)``.
    """

    def __init__(self, A, G, sizes, num_data=None, kind=None):
        try:
            sizes = tuple(int(s) for s in sizes)
        except (TypeError, ValueError):
            raise TypeError(f"sizes: expected a sequence of ints, got {sizes!r}") from None
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"sizes: expected at least 2 widths, each >= 1, got {sizes}")
        L = len(sizes) - 1
        A, G = list(A), list(G)
        for name, fac in (("A", A), ("G", G)):
            if len(fac) != L:
                raise ValueError(f"{name}: expected {L} factors (one per layer), got {len(fac)}")
        a0 = np.asarray(A[0])
        if a0.dtype not in (np.float32, np.float64):
            raise TypeError(f"A[0]: expected a float32 or float64 array, got dtype {a0.dtype}")
        dtype = a0.dtype
        self.A = [_factor(A[l], f"A[{l}]", sizes[l] + 1, dtype) for l in range(L)]
        self.G = [_factor(G[l], f"G[{l}]", sizes[l + 1], dtype) for l in range(L)]
        if num_data is not None:
            if not isinstance(num_data, numbers.Integral) or num_data < 1:
                raise ValueError(f"num_data: expected a positive int or None, got {num_data!r}")
            num_data = int(num_data)
        self.sizes = sizes
        self.num_data = num_data
        self.kind = kind
        self.dtype = dtype
        self._psize = [sizes[l + 1] * (sizes[l] + 1) for l in range(L)]
        self._offsets = np.concatenate([[0], np.cumsum(self._psize)]).astype(int).tolist()
        self.num_params = self._offsets[-1]
        self.shape = (self.num_params, self.num_params)
        self._eig = None

    # ---- helpers ------------------------------------------------------------
    @property
    def num_layers(self):
        """Number of layers L."""
        return len(self.sizes) - 1

    def __repr__(self):
        return (f"KronCurvature(sizes={self.sizes}, num_params={self.num_params}, "
                f"dtype={self.dtype}, kind={self.kind!r}, num_data={self.num_data})")

    def _rhs(self, V):
        """V as a C-contiguous (D, m) array of self.dtype, and its original ndim."""
        arr = np.asarray(V)
        D = self.num_params
        if arr.ndim not in (1, 2) or arr.shape[0] != D:
            raise ValueError(f"V: expected shape (D,) or (D, m) with D = {D}, got {arr.shape}")
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"V: expected a real array, got dtype {arr.dtype}")
        out = np.ascontiguousarray(arr.reshape(D, -1), dtype=self.dtype)
        # before any layer is computed (the C core would find it layer by layer,
        # after an earlier layer may have raised for another reason)
        if not np.all(np.isfinite(out)):
            raise ValueError("V: contains NaN or Inf")
        return out, arr.ndim

    def _per_layer(self, V, fn):
        """out[o_l:o_l+p_l] = fn(l, V[o_l:o_l+p_l]) for a (D,) or (D, m) V."""
        V2, ndim = self._rhs(V)
        # the result, and per layer the C core's two scratch copies and its output
        m = V2.shape[1]
        _core.check_memory(float(V2.size + 3 * max(self._psize) * m) * self.dtype.itemsize, "V")
        R = np.empty_like(V2)
        for l in range(self.num_layers):
            o, p = self._offsets[l], self._psize[l]
            R[o:o + p] = fn(l, V2[o:o + p])
        return R[:, 0] if ndim == 1 else R

    def _dampings(self, damping):
        """One finite damping >= 0 per layer, from a number or a sequence."""
        L = self.num_layers
        if isinstance(damping, numbers.Real) or np.ndim(damping) == 0:
            vals = [damping] * L
        else:
            vals = list(damping)
            if len(vals) != L:
                raise ValueError(f"damping: expected a number or {L} values (one per layer), "
                                 f"got {len(vals)} values")
        out = []
        for d in vals:
            if isinstance(d, (bool, np.bool_, str, bytes)):  # float() would take True and "1"
                raise TypeError(f"damping: expected a real number, got {d!r}")
            try:
                d = float(d)
            except (TypeError, ValueError):
                raise TypeError(f"damping: expected a real number, got {d!r}") from None
            if not np.isfinite(d) or d < 0:
                raise ValueError(f"damping: expected a finite number >= 0, got {d}")
            out.append(d)
        return out

    def _singular(self, l, damping):
        if damping > 0:
            # 1/(eigenvalue + damping) or the solution overflows the dtype
            return _core.LinAlgError(
                f"damping: the damped curvature of layer {l} is numerically singular (a Kronecker "
                f"factor has a zero eigenvalue and damping = {damping:g} is too small: the result "
                f"overflows {self.dtype}); use a larger damping")
        return _core.LinAlgError(
            f"damping: the damped curvature of layer {l} is singular (a Kronecker factor has "
            f"a zero eigenvalue and damping = {damping:g}); use damping > 0")

    # ---- eigendecompositions ---------------------------------------------
    def eigh(self):
        """Eigendecompositions of the factors, computed once and cached.

        Returns
        -------
        list of tuple (wG, QG, wA, QA)
            Per layer, ``G = QG diag(wG) QGᵀ`` and ``A = QA diag(wA) QAᵀ``
            (eigenvalues ascending, eigenvectors as columns; read-only).
            The eigenvalues of the block ``G ⊗ A`` are ``wG[i] * wA[j]`` with
            eigenvector ``QG[:, i] ⊗ QA[:, j]`` (in ``Wbar`` order).

        Raises
        ------
        ValueError
            If a factor has a clearly negative eigenvalue (not PSD).
        pykfac.LinAlgError
            If the eigensolver fails.
        """
        if self._eig is None:
            # per factor: w, Q and syevd's workspace (1 + 6n + 2n^2)
            orders = [M.shape[0] for M in self.A + self.G]
            elems = sum(n * n + n for n in orders)
            big = max(orders)
            _core.check_memory(float(elems + 2 * big * big) * self.dtype.itemsize, "eigh")
            eig = []
            for l in range(self.num_layers):
                parts = []
                for name, M in ((f"G[{l}]", self.G[l]), (f"A[{l}]", self.A[l])):
                    try:
                        w, Q = _core.sym_eigh(M)
                    except (ValueError, _core.LinAlgError) as exc:
                        # name the layer, not the C call (e.g. a factor
                        # changed in place to hold NaN, or syevd failing)
                        raise type(exc)(f"{name}: eigendecomposition of layer {l}'s factor "
                                        f"failed: {exc}") from None
                    top = float(np.abs(w).max()) if w.size else 0.0
                    if w.size and w[0] < -np.sqrt(np.finfo(self.dtype).eps) * top:
                        raise ValueError(f"{name}: expected a positive semi-definite factor, "
                                         f"smallest eigenvalue {w[0]:.3g} (largest {w[-1]:.3g})")
                    w.setflags(write=False)
                    Q.setflags(write=False)
                    parts += [w, Q]
                eig.append(tuple(parts))
            self._eig = eig
        return list(self._eig)

    def eigvals(self):
        """All ``D`` eigenvalues of ``K``, ascending.

        Returns
        -------
        ndarray, shape (D,)
            The union over layers of ``max(wG[i], 0) * max(wA[j], 0)``
            (factor eigenvalues are clipped at 0: the factors are PSD and
            roundoff must not produce negative curvature).
        """
        vals = [np.outer(np.maximum(wG, 0), np.maximum(wA, 0)).ravel()
                for wG, _, wA, _ in self.eigh()]
        return np.sort(np.concatenate(vals))

    def factored_pi(self):
        """Per-layer ``π_l = √((tr A_l / q_l) / (tr G_l / out_l))`` of factored damping.

        Returns
        -------
        list of float
            ``π_l``, or 1.0 for a layer where either trace is not positive.
        """
        pis = []
        for l in range(self.num_layers):
            ta = float(np.trace(self.A[l], dtype=np.float64)) / self.A[l].shape[0]
            tg = float(np.trace(self.G[l], dtype=np.float64)) / self.G[l].shape[0]
            pi = np.sqrt(ta / tg) if ta > 0 and tg > 0 else 1.0
            pis.append(float(pi) if np.isfinite(pi) and pi > 0 else 1.0)
        return pis

    # ---- products -----------------------------------------------------------
    def matvec(self, V):
        """Product with the undamped curvature, ``K V``.

        Parameters
        ----------
        V : array_like, shape (D,) or (D, m)
            Vectors in theta order.

        Returns
        -------
        ndarray, same shape as V, dtype ``self.dtype``
            Per layer ``vec(G X A)`` for each column (``X``: the layer's part
            of the column as ``Wbar``), two GEMMs for all ``m`` columns.
        """
        return self._per_layer(V, lambda l, Vl: _core.kron_matvec(self.G[l], self.A[l], Vl))

    def __matmul__(self, V):
        return self.matvec(V)

    def apply_power(self, V, power, damping=0.0, factored=False):
        """``(K_δ)^power V`` for ``power`` in {1, -1, 0.5, -0.5}.

        Parameters
        ----------
        V : array_like, shape (D,) or (D, m)
        power : {1, -1, 0.5, -0.5}
        damping : float or sequence of float (one per layer), >= 0
        factored : bool
            Exact damping ``K + δI`` (False) or factored damping (True); see
            the module docstring.

        Returns
        -------
        ndarray, same shape as V
            Per layer ``Q (Λ_δ^power ∘ (Qᵀ V))`` with ``Q = Q_G ⊗ Q_A`` and the
            damped eigenvalues ``Λ_δ``. ``power = -0.5`` gives the symmetric
            inverse square root used to sample ``N(0, K_δ⁻¹)``.

        Raises
        ------
        pykfac.LinAlgError
            If ``power < 0`` and a damped eigenvalue is 0 (a singular factor
            with ``damping = 0``).
        """
        power = _power(power)
        damps = self._dampings(damping)
        pis = self.factored_pi() if factored else [1.0] * self.num_layers
        V2, ndim = self._rhs(V)  # validate V before the (cached, maybe costly) eigh
        eig = self.eigh()

        def one(l, Vl):
            wG, QG, wA, QA = eig[l]
            try:
                R = _core.kron_eig_apply(wG, QG, wA, QA, Vl, damping=damps[l],
                                         factored=_flag(factored, "factored"), pi=pis[l], power=power)
            except _core.LinAlgError:
                raise self._singular(l, damps[l]) from None
            # finite V, finite 1/d: a non-finite result is an overflow of |V|/d
            # (tiny damping on a zero eigenvalue), never a number to return
            if power < 0 and not np.all(np.isfinite(R)):
                raise self._singular(l, damps[l])
            return R

        R = self._per_layer(V2, one)
        return R[:, 0] if ndim == 1 else R

    def solve(self, V, damping, factored=False):
        """Damped inverse product ``(K + δ I)⁻¹ V`` (or the factored form).

        Parameters
        ----------
        V : array_like, shape (D,) or (D, m)
        damping : float or sequence of float (one per layer), >= 0
            ``δ``; must be > 0 when a factor is singular.
        factored : bool
            False: exact damping, eigenvalues ``λ_G,i λ_A,j + δ``.
            True: ``(G + (γ/π) I)⁻¹ ⊗ (A + γπ I)⁻¹``, ``γ = √δ``,
            ``π`` from :meth:`factored_pi` (Martens & Grosse).

        Returns
        -------
        ndarray, same shape as V

        Raises
        ------
        ValueError
            If ``damping`` is negative or not finite.
        pykfac.LinAlgError
            If the damped curvature is singular (``damping = 0`` with a
            singular factor).
        """
        return self.apply_power(V, -1.0, damping=damping, factored=factored)

    def logdet(self, damping, factored=False):
        """``log det`` of the damped curvature (see :meth:`solve` for the damping).

        Returns
        -------
        float
            ``Σ_l Σ_ij log(damped eigenvalue_ij)``, accumulated in float64.

        Raises
        ------
        pykfac.LinAlgError
            If a damped eigenvalue is 0.
        """
        damps = self._dampings(damping)
        pis = self.factored_pi() if factored else [1.0] * self.num_layers
        total = 0.0
        for l, (wG, _, wA, _) in enumerate(self.eigh()):
            try:
                total += _core.kron_logdet(wG, wA, damping=damps[l], factored=_flag(factored, "factored"),
                                           pi=pis[l])
            except _core.LinAlgError:
                raise self._singular(l, damps[l]) from None
        return total

    # ---- dense and scalar summaries --------------------------------------
    def to_dense(self):
        """The block-diagonal ``D x D`` matrix ``K`` in theta order.

        Returns
        -------
        ndarray, shape (D, D), dtype ``self.dtype``
            Block ``l`` is ``G_l ⊗ A_l`` with rows and columns permuted from
            ``Wbar`` order to theta order (``W.ravel()`` then ``b``).
        """
        D = self.num_params
        _core.check_memory(float(D) * D * self.dtype.itemsize, "to_dense")
        B = np.zeros((D, D), dtype=self.dtype)
        for l in range(self.num_layers):
            o, p = self._offsets[l], self._psize[l]
            _core.kron_to_dense(self.G[l], self.A[l], out=B[o:o + p, o:o + p])
        return B

    def trace(self):
        """``tr K = Σ_l tr(G_l) tr(A_l)`` (float64)."""
        return float(sum(np.trace(G, dtype=np.float64) * np.trace(A, dtype=np.float64)
                         for G, A in zip(self.G, self.A)))

    def frobenius_norm(self):
        """``‖K‖_F = √(Σ_l ‖G_l‖_F² ‖A_l‖_F²)`` (float64)."""
        sq = sum(np.sum(np.square(G, dtype=np.float64)) * np.sum(np.square(A, dtype=np.float64))
                 for G, A in zip(self.G, self.A))
        return float(np.sqrt(sq))

    def scaled(self, c):
        """A new ``KronCurvature`` for ``c K`` (``G_l → c G_l``), ``c > 0``.

        Cached eigendecompositions are reused (eigenvalues of ``G`` times
        ``c``), e.g. for a Laplace posterior precision ``K / (σ² T) + δ I``:
        ``K.scaled(1 / (sigma**2 * T)).solve(v, damping=prior_precision)``.
        """
        c = float(c)
        if not (np.isfinite(c) and c > 0):
            raise ValueError(f"c: expected a finite number > 0, got {c}")
        new = KronCurvature(self.A, [G * self.dtype.type(c) for G in self.G], self.sizes,
                            num_data=self.num_data, kind=self.kind)
        if self._eig is not None:
            eig = []
            for wG, QG, wA, QA in self._eig:
                w = wG * self.dtype.type(c)
                w.setflags(write=False)
                eig.append((w, QG, wA, QA))
            new._eig = eig
        return new

    def as_linear_operator(self, damping=0.0, inverse=False, factored=False):
        """``K_δ`` (or ``K_δ⁻¹``) as a symmetric ``scipy.sparse.linalg.LinearOperator``.

        Parameters
        ----------
        damping : float or sequence of float (one per layer), >= 0
        inverse : bool
            If True the operator applies ``K_δ⁻¹`` (useful as a
            preconditioner ``M`` for ``scipy.sparse.linalg.cg``).
        factored : bool
            Damping form, as in :meth:`solve`.

        Returns
        -------
        scipy.sparse.linalg.LinearOperator, shape (D, D), dtype ``self.dtype``
            ``rmatvec == matvec`` (the operator is symmetric), so ``eigsh``
            and ``cg`` work on it.

        Raises
        ------
        pykfac.LinAlgError
            Immediately (not at the first product) when ``inverse`` and the
            damped curvature is singular.
        """
        from scipy.sparse.linalg import LinearOperator

        damps = self._dampings(damping)
        if inverse:
            self.logdet(damps, factored=factored)  # raises now if singular

            def apply(V):
                return self.apply_power(V, -1.0, damping=damps, factored=factored)
        elif factored:
            def apply(V):
                return self.apply_power(V, 1.0, damping=damps, factored=True)
        elif any(damps):
            shift = np.repeat(np.asarray(damps, dtype=self.dtype), self._psize)

            def apply(V):
                R = self.matvec(V)
                V = np.asarray(V, dtype=self.dtype)
                return R + (shift * V.T).T
        else:
            apply = self.matvec
        return LinearOperator(self.shape, matvec=apply, rmatvec=apply, matmat=apply,
                              rmatmat=apply, dtype=self.dtype)


class EKFACCurvature(KronCurvature):
    """Eigenvalue-corrected K-FAC (George et al. 2018): per layer
    ``(Q_G ⊗ Q_A) diag(vec S_l) (Q_G ⊗ Q_A)ᵀ`` with the K-FAC eigenbasis and the
    curvature's own diagonal in that basis, ``S_l[i, j] = Σₙ Σ_c (q_G,iᵀ uₙc)² (q_A,jᵀ āₙ)²``.

    Among all matrices with K-FAC's eigenvectors it is the closest to the
    curvature block in Frobenius norm, so it is never farther from it than
    K-FAC. Built by :func:`pykfac.ekfac`; ``A``, ``G``, ``eigh()`` are the K-FAC
    factors and their eigendecompositions, ``scales`` the (out, in + 1)
    eigenvalue matrices. Damping is exact only (``S + δ``); ``factored=True``
    raises ValueError.
    """

    def __init__(self, A, G, sizes, scales, num_data=None, kind=None):
        super().__init__(A, G, sizes, num_data=num_data, kind=kind)
        scales = list(scales)
        if len(scales) != self.num_layers:
            raise ValueError(f"scales: expected {self.num_layers} matrices (one per layer), got {len(scales)}")
        self.scales = []
        for l, S in enumerate(scales):
            kind = np.asarray(S).dtype.kind
            if kind not in "iuf":  # as the factors: no silent cast of bool, complex or strings
                raise TypeError(f"scales[{l}]: expected a real array, got dtype {np.asarray(S).dtype}")
            S = np.array(S, dtype=self.dtype, order="C", copy=True)
            shape = (self.sizes[l + 1], self.sizes[l] + 1)
            if S.shape != shape:
                raise ValueError(f"scales[{l}]: expected shape {shape}, got {S.shape}")
            if not np.all(np.isfinite(S)) or S.size and S.min() < 0:
                raise ValueError(f"scales[{l}]: expected finite values >= 0")
            S.setflags(write=False)
            self.scales.append(S)

    def __repr__(self):
        return (f"EKFACCurvature(sizes={self.sizes}, num_params={self.num_params}, "
                f"dtype={self.dtype}, kind={self.kind!r}, num_data={self.num_data})")

    def _basis(self, l, F, V):
        _, QG, _, QA = self.eigh()[l]
        return _core.kron_basis_apply(QG, QA, np.ascontiguousarray(F, dtype=self.dtype), V)

    def _damped(self, l, damping, power):
        """(S_l + δ)^power in float64; LinAlgError if a negative power meets a zero."""
        d = self.scales[l].astype(np.float64) + damping
        if power < 0 and not np.all(d > 0):
            raise self._singular(l, damping)
        with np.errstate(over="ignore", divide="ignore"):
            F = d ** power
        if not np.all(np.isfinite(F.astype(self.dtype))):
            raise self._singular(l, damping)
        return F

    def _singular(self, l, damping):
        return _core.LinAlgError(
            f"damping: the damped EKFAC block of layer {l} is singular (an eigenvalue is 0 and damping = "
            f"{damping:g}, or 1/(eigenvalue + damping) overflows {self.dtype}); use a larger damping")

    @staticmethod
    def _no_factored(factored):
        if _flag(factored, "factored"):
            raise ValueError("factored: EKFAC has exact damping only (its eigenvalues are not a Kronecker product)")

    def matvec(self, V):
        """``K V`` with four GEMMs per layer for all columns."""
        return self._per_layer(V, lambda l, Vl: self._basis(l, self.scales[l], Vl))

    def apply_power(self, V, power, damping=0.0, factored=False):
        """``(K + δ I)^power V`` for ``power`` in {1, -1, 0.5, -0.5} (see KronCurvature)."""
        self._no_factored(factored)
        power = _power(power)
        damps = self._dampings(damping)
        V2, ndim = self._rhs(V)
        Fs = [self._damped(l, damps[l], power) for l in range(self.num_layers)]
        R = self._per_layer(V2, lambda l, Vl: self._basis(l, Fs[l], Vl))
        return R[:, 0] if ndim == 1 else R

    def logdet(self, damping, factored=False):
        """``Σ_l Σ_ij log(S_l[i, j] + δ_l)`` (float64)."""
        self._no_factored(factored)
        damps = self._dampings(damping)
        total = 0.0
        for l in range(self.num_layers):
            d = self.scales[l].astype(np.float64) + damps[l]
            if not np.all(d > 0):
                raise self._singular(l, damps[l])
            total += float(np.log(d).sum())
        return total

    def eigvals(self):
        """All ``D`` eigenvalues, ascending: the entries of the scales."""
        return np.sort(np.concatenate([S.ravel() for S in self.scales]))

    def to_dense(self):
        """The block-diagonal ``D x D`` matrix in theta order."""
        D = self.num_params
        _core.check_memory(float(D) * D * self.dtype.itemsize, "to_dense")
        B = np.zeros((D, D), dtype=self.dtype)
        for l in range(self.num_layers):
            o, p = self._offsets[l], self._psize[l]
            B[o:o + p, o:o + p] = self._basis(l, self.scales[l], np.eye(p, dtype=self.dtype))
        return B

    def trace(self):
        """``Σ_l Σ_ij S_l[i, j]`` (float64)."""
        return float(sum(np.sum(S, dtype=np.float64) for S in self.scales))

    def frobenius_norm(self):
        """``√(Σ S²)``: the basis is orthonormal (float64)."""
        return float(np.sqrt(sum(np.sum(np.square(S, dtype=np.float64)) for S in self.scales)))

    def scaled(self, c):
        """A new ``EKFACCurvature`` for ``c K`` (the basis is reused)."""
        base = super().scaled(c)
        c = self.dtype.type(c)
        new = EKFACCurvature(self.A, base.G, self.sizes, [S * c for S in self.scales],
                             num_data=self.num_data, kind=self.kind)
        new._eig = base._eig
        return new
