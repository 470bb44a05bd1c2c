"""Spectral density of a large symmetric operator by stochastic Lanczos quadrature
(Golub & Meurant; Ghorbani et al. 2019, Papyan 2020; curvlinops'
``lanczos_approximate_spectrum``), e.g. the Hessian or GGN spectrum of a network
from Hessian-vector products only.
"""
import numpy as np

from . import _core
from ._data import resolve_seed
from .curvature import _apply, _probe_operator

__all__ = ["spectral_density"]


def _lanczos(A, v, steps):
    """Ritz values and quadrature weights of the Lanczos tridiagonal started at v
    (full reorthogonalisation, so the basis stays orthonormal in floating point;
    stops early on an invariant subspace, where the quadrature is exact)."""
    D = v.size
    # basis vectors as contiguous rows: the reorthogonalisation reads only the j
    # vectors made so far, not whole (D, steps) rows
    Vb = np.empty((steps, D))
    Vb[0] = v / np.linalg.norm(v)
    alpha, beta = [], []
    scale = 0.0
    for j in range(steps):
        w = _apply(A, Vb[j][:, None])[:, 0]
        a = float(Vb[j] @ w)
        alpha.append(a)
        # the three-term recurrence, then one Gram-Schmidt pass against the whole
        # basis: "twice is enough" (Kahan-Parlett) with the recurrence as the first
        w -= a * Vb[j]
        if j:
            w -= beta[-1] * Vb[j - 1]
        basis = Vb[:j + 1]
        w -= (basis @ w) @ basis
        b = float(np.linalg.norm(w))
        scale = max(scale, abs(a), b)
        if j == steps - 1 or b <= D * np.finfo(np.float64).eps * scale:
            break
        beta.append(b)
        Vb[j + 1] = w / b
    T = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    theta, U = np.linalg.eigh(T)
    return theta, U[0] ** 2


def spectral_density(A, num_points=1024, num_repeats=10, num_steps=128, kappa=3.0, boundaries=None,
                     margin=0.05, log=False, epsilon=1e-5, seed=None):
    r"""Smoothed eigenvalue density of a symmetric operator, ``(grid, density)``.

    Each of ``num_repeats`` Lanczos runs of ``num_steps`` products, started at a
    normalised standard-normal vector :math:`v` (rows of the C core's seeded
    generator), gives nodes :math:`\theta_i` and weights :math:`\tau_i` with
    :math:`\sum_i\tau_i f(\theta_i) = v^\top f(A) v` exactly for polynomials
    :math:`f` of degree below :math:`2\cdot` ``num_steps`` (Gauss quadrature);
    the density is the average over runs of
    :math:`\sum_i \tau_i\,\mathcal N(t;\theta_i,\sigma^2)`, which integrates to 1.

    Parameters
    ----------
    A : square operator with ``A @ V`` (``HessianOperator``, ``GGNOperator``, an array, ...)
        Symmetric.
    num_points : int
        Grid points (>= 2).
    num_repeats : int
        Random start vectors (>= 1); more give a smoother, less noisy estimate.
    num_steps : int
        Lanczos steps per run (>= 1; capped at the dimension).
    kappa : float
        :math:`\sigma` = ``kappa`` grid spacings (> 0).
    boundaries : (float, float) or None
        The grid's ends; None: the extreme Ritz values, widened by ``margin``
        times their distance on each side.
    log : bool
        True: the density of :math:`t = \log(|\lambda| + \varepsilon)` instead
        (curvlinops' ``lanczos_approximate_log_spectrum``), the same quadrature
        with nodes :math:`\log(|\theta_i| + \varepsilon)`; grid, boundaries and
        ``kappa`` are then on that axis. For curvature spectra spanning many
        orders of magnitude, where a linear grid puts the bulk in one bin.
    epsilon : float
        The shift :math:`\varepsilon` > 0 of ``log=True``.
    seed : int or None

    Returns
    -------
    grid, density : ndarray (num_points,) each, float64
    """
    D, _ = _probe_operator(A, 1, 1)
    for name, value, least in (("num_points", num_points, 2), ("num_repeats", num_repeats, 1),
                               ("num_steps", num_steps, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name}: expected an int >= {least}, got {value!r}")
    if isinstance(kappa, bool) or not isinstance(kappa, (int, float, np.floating, np.integer)) or \
            not (np.isfinite(kappa) and kappa > 0):
        raise ValueError(f"kappa: expected a finite number > 0, got {kappa!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float, np.floating, np.integer)) or \
            not (np.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin: expected a finite number >= 0, got {margin!r}")
    if boundaries is not None:
        try:
            left, right = (float(b) for b in boundaries)
        except (TypeError, ValueError):
            raise TypeError(f"boundaries: expected (left, right) or None, got {boundaries!r}") from None
        if not (np.isfinite(left) and np.isfinite(right) and left < right):
            raise ValueError(f"boundaries: expected finite left < right, got ({left}, {right})")
    if not isinstance(log, (bool, np.bool_)):
        raise TypeError(f"log: expected True or False, got {log!r}")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating, np.integer)) or \
            not (np.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon: expected a finite number > 0, got {epsilon!r}")
    starts = _core.standard_normal(int(num_repeats), D, False, resolve_seed(seed))
    runs = [_lanczos(A, v, min(int(num_steps), D)) for v in starts]
    if log:
        runs = [(np.log(np.abs(theta) + epsilon), tau) for theta, tau in runs]
    if boundaries is None:
        lo = min(float(theta.min()) for theta, _ in runs)
        hi = max(float(theta.max()) for theta, _ in runs)
        scale = max(abs(lo), abs(hi))
        # one eigenvalue, up to roundoff: a grid around it rather than of width ~1e-16
        pad = margin * (hi - lo) if hi - lo > 1e-8 * scale else max(margin, 1e-3) * max(scale, 1e-3)
        left, right = lo - pad, hi + pad
    grid = np.linspace(left, right, int(num_points))
    sigma = kappa * (right - left) / (num_points - 1)
    density = np.zeros(grid.size)
    for theta, tau in runs:
        density += np.exp(-0.5 * ((grid[:, None] - theta[None]) / sigma) ** 2) @ tau
    density /= num_repeats * sigma * np.sqrt(2 * np.pi)
    return grid, density
