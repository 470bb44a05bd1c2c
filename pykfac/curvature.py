r"""Exact curvature of a dense network's loss.

Everything refers to the SUM over samples (CONVENTIONS.md)

.. math:: L(\theta) = \sum_n \ell(y_n, f(x_n, \theta)),

with ``loss`` one of ``"mse"`` (:math:`\tfrac12\|y-f\|^2`), ``"ce"``
(softmax cross-entropy, integer labels) or ``"bce"`` (logistic, one independent
sigmoid per output as kfac-jax's ``MultiBernoulliNegativeLogProbLoss``: labels
0/1 or -1/+1 of shape (N, K), or (N,) when K = 1;
:math:`\Lambda = \mathrm{diag}(\sigma(f) \odot (1-\sigma(f)))`), and every
vector/matrix over parameters in ``net.theta`` order. To compare with a
mean-reduced loss divide by N; PyTorch's ``MSELoss(reduction="sum")`` is twice
``"mse"`` here.
"""
from collections import namedtuple

import numpy as np
from scipy.linalg import solve_triangular
from scipy.sparse.linalg import LinearOperator

from . import _core
from ._data import resolve_seed
from .mlp import MLP

__all__ = [
    "loss",
    "loss_and_grad",
    "loss_per_sample",
    "grad_per_sample",
    "trace_estimate",
    "diag_estimate",
    "squared_frobenius_estimate",
    "jacobian",
    "jvp",
    "vjp",
    "hessian",
    "hvp",
    "ggn",
    "ggn_matvec",
    "residual_matvec",
    "diag_ggn",
    "diag_hessian",
    "empirical_fisher_diag",
    "output_curvature",
    "OutputCurvature",
    "EFOperator",
    "FisherMCOperator",
    "GGNOperator",
    "HessianOperator",
    "JacobianOperator",
]

_GGN, _HESSIAN, _RESIDUAL = 0, 1, 2
_EXACT, _MC, _EMPIRICAL = 0, 1, 2
_MAX_MC = 2**31 - 1  # the C core counts samples in an int


def _net(net):
    if not isinstance(net, MLP):
        raise TypeError(f"net: expected a pykfac.MLP, got {type(net).__name__}")
    return net


def _as_columns(V, D, name):
    """(D,) -> (D, 1) and a flag to squeeze the result back."""
    arr = np.asarray(V)
    if arr.ndim == 1:
        if arr.shape[0] != D:
            raise ValueError(f"{name}: expected shape (D,) or (D, m) with D = {D}, got {arr.shape}")
        return arr[:, None], True
    if arr.ndim == 2:
        if arr.shape[0] != D:
            raise ValueError(f"{name}: expected shape (D,) or (D, m) with D = {D}, got {arr.shape}")
        return arr, False
    raise ValueError(f"{name}: expected shape (D,) or (D, m) with D = {D}, got {arr.shape}")


def loss(net, X, y, loss):
    """Summed loss :math:`L = \\sum_n \\ell(y_n, f(x_n))` as a Python float.

    Parameters
    ----------
    net : MLP
    X : (N, d_in) array
    y : labels -- (N,) int for "ce", (N, K) float for "mse", (N, K) 0/1 for "bce"
        (both (N,) or (N, K) when K = 1)
    loss : {"mse", "ce", "bce"}
    """
    return _core.loss_grad(_net(net), X, y, loss, False)[0]


def loss_and_grad(net, X, y, loss):
    """``(L, dL/dtheta)``: the summed loss and its (D,) gradient (one forward and backward pass)."""
    return _core.loss_grad(_net(net), X, y, loss, True)


def loss_per_sample(net, X, y, loss):
    """(N,) float64 per-sample losses :math:`\\ell(y_n, f(x_n))`."""
    return _core.loss_per_sample(_net(net), X, y, loss)


def grad_per_sample(net, X, y, loss):
    r"""(N, D) per-sample gradients :math:`g_n = J_n^\top \partial\ell(y_n, f_n)/\partial f`
    (theta order; they sum to the gradient of the summed loss; BackPACK's
    ``BatchGrad`` up to its mean reduction). One reverse pass per chunk of rows,
    memory N*D. Their norms, variance or :math:`\sum_n g_n g_n^\top` (the empirical
    Fisher) follow with NumPy."""
    return _core.grad_per_sample(_net(net), X, y, loss)


def jacobian(net, X):
    """(N, K, D) Jacobians :math:`J_n = \\partial f(x_n) / \\partial\\theta` (memory N*K*D)."""
    return _core.jacobian(_net(net), X)


def jacobian_factors(net, X):
    r"""The Jacobian rows in factored form, one pair per layer.

    A dense layer :math:`s = W a + b` has rank-one Jacobian rows:
    :math:`\partial f_k / \partial W = g_k a^\top` and :math:`\partial f_k / \partial b = g_k`
    with :math:`g_k = \partial f_k / \partial s`. Returns ``[(G_l, A_l), ...]`` with
    ``G_l`` (N, K, out_l) the pre-activation gradients and ``A_l`` (N, in_l) the
    layer inputs (``A_0 = X``): memory :math:`O(NK\sum_l \mathrm{out}_l)` instead of the
    :math:`O(NKD)` of :func:`jacobian`, whose W-columns of layer l are
    ``einsum("nki,nj->nkij", G_l, A_l)`` and b-columns ``G_l``.
    """
    Gs, As = _core.layer_jacobians(_net(net), X)
    return list(zip(Gs, As))


def jvp(net, X, v):
    """Forward-mode product :math:`J v`: v (D,) -> (N, K); v (D, m) -> (N, K, m)."""
    net = _net(net)
    V, squeeze = _as_columns(v, net.num_params, "v")
    out = _core.jvp(net, X, V)
    return out[:, :, 0] if squeeze else out


def vjp(net, X, u):
    """Reverse-mode product :math:`\\sum_n J_n^T u_n`: u (N, K) -> (D,); u (N, K, m) -> (D, m)."""
    net = _net(net)
    U = np.asarray(u)
    if U.ndim == 2:
        want = (np.shape(X)[0] if np.ndim(X) == 2 else None, net.n_outputs)
        # an empty or malformed X is reported by the core (naming X), not here
        if want[0] and U.shape != want:
            raise ValueError(f"u: expected shape (N, K) = {want} or (N, K, m), got {U.shape}")
        return _core.vjp(net, X, U[:, :, None])[:, 0]
    if U.ndim != 3:
        raise ValueError(f"u: expected shape (N, K) or (N, K, m), got {U.shape}")
    return _core.vjp(net, X, U)


def _matvec(which, net, X, y, loss, V, name="V"):
    net = _net(net)
    cols, squeeze = _as_columns(V, net.num_params, name)
    out = _core.curvature_matvec(net, which, X, y, loss, cols)
    return out[:, 0] if squeeze else out


def hessian(net, X, y, loss):
    """(D, D) exact Hessian :math:`\\nabla^2_\\theta L` (GGN + residual term), theta order.

    Built from D Hessian-vector products (Pearlmutter's R-operator) using the
    activations' exact second derivatives; cost O(D) forward/backward passes.
    """
    return _core.hessian(_net(net), X, y, loss)


def hvp(net, X, y, loss, V):
    """Exact Hessian-vector product :math:`H V` for V (D,) or (D, m), without forming H."""
    return _matvec(_HESSIAN, net, X, y, loss, V)


def ggn(net, X, y, loss):
    """(D, D) generalised Gauss-Newton :math:`G = \\sum_n J_n^T \\Lambda_n J_n`.

    For "ce" and "bce" this is also the (true) Fisher information. Built as
    :math:`B^T B` with B the stacked rows :math:`S_n^T J_n` (one SYRK).
    """
    return _core.ggn(_net(net), X, y, loss)


def ggn_matvec(net, X, y, loss, V):
    """:math:`G V = \\sum_n J_n^T \\Lambda_n J_n V` for V (D,) or (D, m) (Schraudolph's
    Jv -> Lambda -> J^T u, never forming J)."""
    return _matvec(_GGN, net, X, y, loss, V)


def residual_matvec(net, X, y, loss, V):
    """:math:`(H - G) V = \\sum_n \\sum_k (\\partial\\ell/\\partial f_k) \\nabla^2 f_k\\, V`,
    the part of the Hessian the GGN drops."""
    return _matvec(_RESIDUAL, net, X, y, loss, V)


def _mc_samples(mc_samples):
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, (int, np.integer)):
        raise TypeError(f"mc_samples: expected an int, got {type(mc_samples).__name__}")
    if mc_samples < 0 or mc_samples > _MAX_MC:
        raise ValueError(f"mc_samples: expected 0 <= mc_samples <= {_MAX_MC}, got {mc_samples}")
    return int(mc_samples)


def diag_ggn(net, X, y, loss, mc_samples=0, seed=None):
    """(D,) diagonal of the GGN.

    Exact when ``mc_samples == 0`` (K backward passes of the columns of
    :math:`S_n`, :math:`S_n S_n^T = \\Lambda_n`); otherwise a Monte-Carlo
    estimate from ``mc_samples`` targets per datum sampled from the model's
    predictive (the MC Fisher), seeded by ``seed``.
    """
    mc = _mc_samples(mc_samples)
    kind = _MC if mc else _EXACT
    return _core.diag_curvature(_net(net), kind, X, y, loss, max(mc, 1), resolve_seed(seed))[0]


def diag_hessian(net, X, y, loss):
    r"""(D,) diagonal of the exact Hessian :math:`\nabla^2_\theta L` (GGN + residual term),
    theta order, without forming H: ``np.diag(hessian(net, X, y, loss))``, like
    BackPACK's ``DiagHessian`` (times N for its mean-reduced losses).

    Per sample, the Hessian of the loss with respect to layer l's pre-activation
    :math:`s_l` is backpropagated from :math:`\Lambda_n`,

    .. math:: H_l = D'_l W_{l+1}^\top H_{l+1} W_{l+1} D'_l
              + \mathrm{diag}\big(\phi''(s_l) \odot \partial\ell/\partial a_{l+1}\big),
              \qquad D'_l = \mathrm{diag}(\phi'(s_l)),

    and only its diagonal is needed: the W_l entries are
    :math:`\sum_n \mathrm{diag}(H_{l,n}) \otimes (a_{l,n} \odot a_{l,n})` (row-major), the
    b_l entries :math:`\sum_n \mathrm{diag}(H_{l,n})`. :math:`H_l` is kept factored (exact):
    the GGN part as the square-root stack of :func:`diag_ggn`, the residual of each
    hidden layer as signed rank-one terms.

    Cost: :func:`diag_ggn` plus one gradient pass and one GEMM per hidden layer.
    With three or more hidden layers whose activation has :math:`\phi'' \ne 0`,
    each hidden layer from the third on adds a backward pass of (its width)
    vectors per sample through the hidden layers below it (BackPACK does this
    for every hidden layer). identity, relu and leaky_relu have
    :math:`\phi'' = 0`: their residual vanishes and the result equals
    :func:`diag_ggn` (a.e.). Memory: the (D,) result, :math:`W \odot W` of the
    hidden layers (< D) and row chunks whose size does not grow with N.
    """
    return _core.diag_hessian(_net(net), X, y, loss)[0]


def empirical_fisher_diag(net, X, y, loss):
    """(D,) diagonal of the empirical Fisher :math:`\\sum_n \\nabla\\ell_n \\odot \\nabla\\ell_n`
    (per-sample gradients at the TRUE labels)."""
    return _core.diag_curvature(_net(net), _EMPIRICAL, X, y, loss, 1, 0)[0]


OutputCurvature = namedtuple("OutputCurvature", ["grad", "hessian", "sqrt"])
OutputCurvature.__doc__ = """Output-space derivatives of the loss at f(X):
grad (N, K) = dl/df (None without labels), hessian (N, K, K) = Lambda_n,
sqrt (N, K, K) with S S^T = Lambda (for "ce", column v is sqrt(p_v)(e_v - p);
for "bce" both are diagonal, Lambda = diag(p (1 - p)) and S = diag(sqrt(p (1 - p))),
p = sigmoid(f))."""


def output_curvature(net, X, loss, y=None):
    """Loss derivatives with respect to the network outputs; see ``OutputCurvature``.

    :math:`\\Lambda` does not depend on the labels for these losses, so ``y``
    is only needed for the gradient -- hence the order ``(net, X, loss, y=None)``.
    """
    if not isinstance(loss, str) and isinstance(y, str):
        raise TypeError("loss: expected a loss name; note the order output_curvature(net, X, loss, y=None) "
                        "(Lambda does not depend on the labels)")
    return OutputCurvature(*_core.output_curvature(_net(net), X, y, loss))


class _CurvatureOperator(LinearOperator):
    _which = None

    def __init__(self, net, X, y, loss):
        self.net = _net(net)
        # Validate once up front so errors surface at construction, not in eigsh.
        _core.loss_grad(self.net, X, y, loss, False)
        self.X, self.y, self.loss = X, y, loss
        D = self.net.num_params
        super().__init__(dtype=self.net.dtype, shape=(D, D))

    def _matmat(self, V):
        return _core.curvature_matvec(self.net, self._which, self.X, self.y, self.loss, np.asarray(V))

    def _matvec(self, v):
        return self._matmat(np.asarray(v).reshape(-1, 1))[:, 0]

    def _adjoint(self):
        return self  # symmetric


class GGNOperator(_CurvatureOperator):
    """The GGN as a ``scipy.sparse.linalg.LinearOperator`` (symmetric PSD, D x D).

    Products use ``ggn_matvec`` at the network's CURRENT parameters, so
    ``eigsh``/``cg`` work without forming the matrix. Data are kept by reference.
    """

    _which = _GGN


class HessianOperator(_CurvatureOperator):
    """The exact Hessian as a symmetric ``LinearOperator`` (products via ``hvp``)."""

    _which = _HESSIAN


class _OutputStackOperator(LinearOperator):
    """:math:`\\sum_n J_n^\\top U_n U_n^\\top J_n` with the per-datum output columns
    :math:`U_n` of the C core's output stack, applied as a forward J V pass, a
    product with :math:`U_n U_n^\\top` and a reverse pass: memory O(N K (M + m)),
    no Jacobian, and the columns are drawn once, so the operator is fixed."""

    _kind = None

    def __init__(self, net, X, y, loss, mc_samples, seed):
        self.net = _net(net)
        _core.loss_grad(self.net, X, y, loss, False)  # errors at construction, not in eigsh
        self.X = X
        self.U = _core.output_stack(self.net, self._kind, X, y, loss, mc_samples, resolve_seed(seed))
        D = self.net.num_params
        super().__init__(dtype=self.net.dtype, shape=(D, D))

    def _matmat(self, V):
        JV = _core.jvp(self.net, self.X, np.asarray(V))
        return _core.vjp(self.net, self.X, np.matmul(self.U, np.matmul(self.U.transpose(0, 2, 1), JV)))

    def _matvec(self, v):
        return self._matmat(np.asarray(v).reshape(-1, 1))[:, 0]

    def _adjoint(self):
        return self  # symmetric


class FisherMCOperator(_OutputStackOperator):
    """The Monte Carlo Fisher :math:`\\frac1S\\sum_n\\sum_s g_{ns} g_{ns}^\\top` as a
    symmetric PSD ``LinearOperator`` (curvlinops' ``FisherMCLinearOperator``):
    :math:`g_{ns}` the gradient at a target drawn from the model's predictive,
    ``mc_samples`` per datum, drawn ONCE at construction (seeded), so repeated
    products agree. Its expectation is the GGN."""

    _kind = _MC

    def __init__(self, net, X, y, loss, mc_samples=1, seed=None):
        mc = _mc_samples(mc_samples)
        if mc < 1:
            raise ValueError(f"mc_samples: expected >= 1, got {mc}")
        super().__init__(net, X, y, loss, mc, seed)


class EFOperator(_OutputStackOperator):
    """The empirical Fisher :math:`\\sum_n \\nabla\\ell_n \\nabla\\ell_n^\\top` (true labels)
    as a symmetric PSD ``LinearOperator`` (curvlinops' ``EFLinearOperator``)."""

    _kind = _EMPIRICAL

    def __init__(self, net, X, y, loss):
        super().__init__(net, X, y, loss, 1, 0)


class JacobianOperator(LinearOperator):
    """The Jacobian of the outputs as an (N K, D) ``LinearOperator`` (curvlinops'
    ``JacobianLinearOperator``; ``.T`` is its ``TransposedJacobianLinearOperator``):
    ``J @ V`` by forward mode (``jvp``), ``J.T @ U`` by reverse mode (``vjp``),
    rows in (n, k) order as ``pk.jacobian(net, X).reshape(N * K, D)``, J never
    formed. Uses the network's CURRENT parameters; X is kept by reference."""

    def __init__(self, net, X):
        self.net = _net(net)
        self._N, self._K = _core.forward(self.net, X).shape  # validates X at construction
        self.X = X
        super().__init__(dtype=self.net.dtype, shape=(self._N * self._K, self.net.num_params))

    def _matmat(self, V):
        JV = _core.jvp(self.net, self.X, np.asarray(V))  # (N, K, m)
        return JV.reshape(self.shape[0], -1)

    def _matvec(self, v):
        return self._matmat(np.asarray(v).reshape(-1, 1))[:, 0]

    def _rmatmat(self, U):
        return _core.vjp(self.net, self.X, np.asarray(U).reshape(self._N, self._K, -1))

    def _rmatvec(self, u):
        return self._rmatmat(np.asarray(u).reshape(-1, 1))[:, 0]


# ---------------------------------------------------------------------------
# stochastic trace and diagonal (curvlinops' hutchinson_trace / hutchpp_trace /
# hutchinson_diag) for operators too large to form
# ---------------------------------------------------------------------------
def _probe_operator(A, num_matvecs, least):
    if isinstance(A, np.ndarray) and A.dtype.kind not in "iuf":
        raise TypeError(f"A: expected a real matrix, got dtype {A.dtype}")
    shape = getattr(A, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
        raise ValueError(f"A: expected a square operator or matrix, got shape {shape}")
    if isinstance(num_matvecs, bool) or not isinstance(num_matvecs, (int, np.integer)) or num_matvecs < least:
        raise ValueError(f"num_matvecs: expected an int >= {least}, got {num_matvecs!r}")
    return int(shape[0]), int(num_matvecs)


def _rademacher(D, m, seed):
    """(D, m) random signs from the C core's generator (reproducible per seed)."""
    return np.where(_core.standard_normal(D, m, False, seed) >= 0, 1.0, -1.0)


def _apply(A, V):
    AV = np.asarray(A @ V, dtype=np.float64).reshape(V.shape)
    if not np.all(np.isfinite(AV)):
        raise ValueError("A: its products contain NaN or Inf")
    return AV


def _tall_qr(Y):
    """Y = Q R for a tall (D, k) Y, Q with orthonormal columns. CholeskyQR2 (two Gram
    matrices, two triangular solves: BLAS-3, several times faster than Householder
    for D >> k) when Y is well conditioned, which makes it as accurate; Householder
    otherwise (rank-deficient sketches, where exactness of the estimators matters)."""
    try:
        R1 = np.linalg.cholesky(Y.T @ Y).T
        if np.linalg.cond(R1) < 1e5:  # then the second pass restores orthogonality to eps
            Q1 = solve_triangular(R1, Y.T, trans="T", lower=False).T
            R2 = np.linalg.cholesky(Q1.T @ Q1).T
            return solve_triangular(R2, Q1.T, trans="T", lower=False).T, R2 @ R1
    except np.linalg.LinAlgError:
        pass
    return np.linalg.qr(Y)


def trace_estimate(A, num_matvecs, method="hutch++", seed=None):
    r"""Estimate :math:`\mathrm{tr}(A)` from ``num_matvecs`` products with random signs.

    ``A``: any square operator with ``A @ V`` (``GGNOperator``,
    ``HessianOperator``, ``KronCurvature.as_linear_operator()``, an array).

    * ``"hutchinson"``: :math:`\frac1m\sum_i z_i^\top A z_i`, unbiased, variance
      :math:`\frac2m\sum_{i\ne j} a_{ij}^2`.
    * ``"hutch++"`` (Meyer et al. 2021): a third of the products sketch the range,
      :math:`Q = \mathrm{orth}(AS)`; :math:`\mathrm{tr}(Q^\top AQ)` exactly plus Hutchinson
      on :math:`(I-QQ^\top)A(I-QQ^\top)`. Unbiased; for PSD A the error falls like
      :math:`1/m` instead of :math:`1/\sqrt m`, and it is exact when
      :math:`\mathrm{rank}(A) \le m/3` (a GGN of rank N K, say). Needs ``num_matvecs >= 3``.
    * ``"xtrace"`` (Epperly, Tropp & Webber 2024; curvlinops' ``xtrace``): every
      one of :math:`k = m/2` sign vectors :math:`\omega_i` serves both as a sketch
      and as a test vector: with :math:`P_i` the projector onto
      :math:`\mathrm{range}(A\Omega_{-i})`, the estimate is the mean over i of
      :math:`\mathrm{tr}(P_iAP_i) + \omega_i^\top(I-P_i)A(I-P_i)\omega_i`
      (each unbiased, as :math:`P_i` does not depend on :math:`\omega_i`). The
      second half of the products is :math:`A Q`, from which every term follows
      in :math:`O(Dk^2 + k^4)`. Exact when :math:`\mathrm{rank}(A) < m/2`. Needs
      ``num_matvecs >= 4`` (rounded down to even).

    Returns a float.
    """
    if method not in ("hutchinson", "hutch++", "xtrace"):
        raise ValueError(f"method: expected 'hutchinson', 'hutch++' or 'xtrace', got {method!r}")
    D, m = _probe_operator(A, num_matvecs, {"hutchinson": 1, "hutch++": 3, "xtrace": 4}[method])
    seed = resolve_seed(seed)
    if method == "hutchinson":
        Z = _rademacher(D, m, seed)
        return float(np.einsum("ij,ij->", Z, _apply(A, Z)) / m)
    if method == "xtrace":
        return _xtrace(A, D, m // 2, seed)
    k = m // 3
    S = _rademacher(D, 2 * k, seed)
    Q = _tall_qr(_apply(A, S[:, :k]))[0]
    G = S[:, k:]
    G = G - Q @ (Q.T @ G)
    return float(np.einsum("ij,ij->", Q, _apply(A, Q)) + np.einsum("ij,ij->", G, _apply(A, G)) / k)


def _xtrace(A, D, k, seed):
    """XTrace with k sign vectors and 2k products (see trace_estimate)."""
    Om = _rademacher(D, k, seed)
    Y = _apply(A, Om)
    Q, R = _tall_qr(Y)
    QtAQ = Q.T @ _apply(A, Q)
    QtAQ = (QtAQ + QtAQ.T) / 2  # A is symmetric
    QtOm, QtY = Q.T @ Om, Q.T @ Y
    total = 0.0
    for i in range(k):
        # range(A Omega_{-i}) = range(Q R_{-i}): an orthonormal basis Q U_i
        U = np.linalg.qr(np.delete(R, i, axis=1))[0]
        c, d = U.T @ QtOm[:, i], U.T @ QtY[:, i]  # coordinates of P_i omega_i and P_i A omega_i
        B = U.T @ QtAQ @ U
        # omega^T (I-P) A (I-P) omega = w^T A w - 2 (P w)^T A w + (P w)^T A (P w)
        total += np.trace(B) + Om[:, i] @ Y[:, i] - 2 * c @ d + c @ B @ c
    return float(total / k)


def diag_estimate(A, num_matvecs, method="hutchinson", seed=None):
    r"""Estimate :math:`\mathrm{diag}(A)` (D,) from ``num_matvecs`` products with random signs.

    * ``"hutchinson"`` (Bekas et al. 2007): :math:`\frac1m\sum_i z_i \circ A z_i`;
      unbiased, entry i with variance :math:`\frac1m\sum_{j\ne i} a_{ij}^2`; exact
      for a diagonal A.
    * ``"xdiag"`` (Epperly, Tropp & Webber 2024; curvlinops' ``xdiag``), for
      symmetric A: each of :math:`k = m/2` sign vectors :math:`\omega_i` both
      sketches and tests. With :math:`P_i` the projector onto
      :math:`\mathrm{range}(A\Omega_{-i})`, the estimate is the mean over i of
      :math:`\mathrm{diag}(P_iA) + \omega_i \circ (I-P_i)A\omega_i`, each term
      unbiased as :math:`P_i` does not depend on :math:`\omega_i`. Exact when
      :math:`\mathrm{rank}(A) < m/2`; far more accurate than Hutchinson when the
      spectrum decays. Needs ``num_matvecs >= 4`` (rounded down to even);
      extra cost :math:`O(Dk^2 + k^4)`.

    For the GGN itself :func:`diag_ggn` is exact and cheaper; this serves the
    Hessian (:func:`diag_hessian` is exact too) and other operators."""
    if method not in ("hutchinson", "xdiag"):
        raise ValueError(f"method: expected 'hutchinson' or 'xdiag', got {method!r}")
    D, m = _probe_operator(A, num_matvecs, {"hutchinson": 1, "xdiag": 4}[method])
    seed = resolve_seed(seed)
    if method == "xdiag":
        return _xdiag(A, D, m // 2, seed)
    Z = _rademacher(D, m, seed)
    return np.einsum("ij,ij->i", Z, _apply(A, Z)) / m


def _leave_one_out_normals(R):
    """Column i: a unit vector orthogonal to every column of R but the i-th, so that
    Q (I - s_i s_iᵀ) Qᵀ projects onto range(Q R_{-i})."""
    k = R.shape[1]
    S = np.empty((k, k))
    for i in range(k):
        S[:, i] = np.linalg.qr(np.delete(R, i, axis=1), mode="complete")[0][:, -1]
    return S


def _xdiag(A, D, k, seed):
    """XDiag with k sign vectors and 2k products (see diag_estimate)."""
    Om = _rademacher(D, k, seed)
    Y = _apply(A, Om)
    Q, R = _tall_qr(Y)
    AQ = _apply(A, Q)  # (Qᵀ A)ᵀ, A symmetric
    S = _leave_one_out_normals(R)
    QS = Q @ S
    # diag(P_i A) = diag(Q Qᵀ A) - (Q s_i) o (A Q s_i), averaged over i
    est = np.einsum("dj,dj->d", Q, AQ) - np.einsum("dj,dj->d", QS, AQ @ S) / k
    # (I - P_i) A w_i = Q R e_i - Q (I - s_i s_iᵀ) R e_i = (Q s_i)(s_iᵀ R e_i)
    c = np.einsum("ji,ji->i", S, R)
    return est + np.einsum("di,di->d", Om, QS * c) / k


def squared_frobenius_estimate(A, num_matvecs, seed=None):
    r"""Estimate :math:`\|A\|_F^2 = \mathrm{tr}(A^\top A)` as
    :math:`\frac1m\sum_i \|A z_i\|^2` with random signs (curvlinops'
    ``hutchinson_squared_fro``): unbiased, for any square operator; exact for a
    diagonal A. Returns a float."""
    D, m = _probe_operator(A, num_matvecs, 1)
    Z = _rademacher(D, m, resolve_seed(seed))
    return float(np.sum(_apply(A, Z) ** 2) / m)
