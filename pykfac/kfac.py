r"""Kronecker-factored (K-FAC) approximations of the GGN / Fisher.

For dense layer l with augmented input :math:`\bar a = [a; 1]` and
pre-activation gradient :math:`g = \partial\ell/\partial s`, the GGN block of
:math:`\bar W_l = [W_l\ b_l]` is approximated by

.. math:: G_l \otimes A_l, \quad G_l = \sum_n g_n g_n^T, \quad A_l = \frac1N \sum_n \bar a_n \bar a_n^T

(CONVENTIONS.md; G carries the sum over data, A the average). ``kind`` chooses
how g is formed:

- ``"exact"`` (KFLR, Botev et al. 2017): one backward pass per column of
  :math:`S_n` (:math:`S_n S_n^T = \Lambda_n`), K passes in total;
- ``"mc"``: ``mc_samples`` targets sampled from the model's predictive (K-FAC
  of Martens & Grosse 2015), averaged;
- ``"empirical"``: gradients at the true labels (empirical Fisher);
- ``"kfra"``: Botev et al.'s recursive approximation of the batch-averaged
  pre-activation Hessian, :math:`\mathcal G_L = \mathrm{mean}_n \Lambda_n`,
  :math:`\mathcal G_{l} = (W_{l+1}^T \mathcal G_{l+1} W_{l+1}) \circ
  \mathrm{mean}_n(\phi'(s_l)\phi'(s_l)^T)`, :math:`G_l = N \mathcal G_l`.

Batches add up: exact and empirical factors of several batches equal those of
their union (MC factors only in expectation, as each batch draws its own targets). KFRA's averages are taken per batch (as in the paper), so its
factors depend on how the data are batched: :math:`G_l = \sum_b N_b \mathcal G_l^{(b)}`.
"""
import numpy as np

from . import _core
from ._data import iter_batches, resolve_seed, seed_stream
from .curvature import _mc_samples, _net
from .kron import EKFACCurvature, KronCurvature

__all__ = ["ekfac", "kfac", "KFAC_KINDS"]

KFAC_KINDS = {"exact": 0, "mc": 1, "empirical": 2, "kfra": 3}


def kfac(net, data, loss, kind="exact", mc_samples=1, seed=None, progress=False):
    """Kronecker factors of every layer, accumulated over ``data``.

    Parameters
    ----------
    net : MLP
    data : (X, y) tuple or iterable of (X, y) batches
    loss : {"mse", "ce", "bce"}
    kind : {"exact", "mc", "empirical", "kfra"}
    mc_samples : int
        Sampled targets per datum for ``kind="mc"`` (>= 1).
    seed : int or None
        Seeds the MC sampling (reproducible per seed; None draws fresh entropy).
    progress : bool
        Show a tqdm progress bar over batches.

    Returns
    -------
    KronCurvature
        ``A[l]`` of shape (in+1, in+1) and ``G[l]`` of shape (out, out); its
        ``to_dense()`` is the block-diagonal (D, D) approximation in theta order.
    """
    net = _net(net)
    if not isinstance(loss, str) and kind in ("mse", "ce", "bce"):
        raise TypeError(f"data: pass the data as one (X, y) tuple or an iterable of batches: "
                        f"pk.kfac(net, (X, y), {kind!r}, ...)")
    if kind not in KFAC_KINDS:
        raise ValueError(f"kind: expected one of {tuple(KFAC_KINDS)}, got {kind!r}")
    mc = _mc_samples(mc_samples)
    if kind == "mc" and mc < 1:
        raise ValueError(f"mc_samples: expected >= 1 for kind='mc', got {mc}")
    if seed is not None:
        resolve_seed(seed)  # validated for every kind, used by "mc" only
    code = KFAC_KINDS[kind]
    sizes = net.sizes
    # The accumulators, KronCurvature's private copies and their temporaries
    # (MemoryError now rather than an OOM kill while the C core fills them).
    elems = [(i + 1) ** 2 for i in sizes[:-1]] + [o * o for o in sizes[1:]]
    _core.check_memory(float(2 * sum(elems) + 2 * max(elems)) * net.dtype.itemsize, "kfac")
    A = [np.zeros((i + 1, i + 1), dtype=net.dtype) for i in sizes[:-1]]
    G = [np.zeros((o, o), dtype=net.dtype) for o in sizes[1:]]
    seeds = seed_stream(seed) if kind == "mc" else None
    n_total = 0
    for X, y in iter_batches(data, progress=progress, desc=f"kfac[{kind}]"):
        batch_seed = next(seeds) if seeds is not None else 0
        _core.kfac_factors(net, code, X, y, loss, max(mc, 1), batch_seed, A, G, None, None)
        n_total += np.shape(X)[0]
    for a in A:
        a /= n_total
    for l in range(len(A)):
        for name, fac in (("A", A[l]), ("G", G[l])):
            if not np.all(np.isfinite(fac)):
                raise ValueError(f"data: the Kronecker factor {name}[{l}] of layer {l} overflowed to "
                                 f"Inf/NaN in {net.dtype} (inputs or weights too large); rescale the "
                                 f"data or use a float64 network")
    return KronCurvature(A=A, G=G, sizes=sizes, num_data=n_total, kind=kind)


_EKFAC_KINDS = {"exact": 0, "mc": 1, "empirical": 2}


def ekfac(net, data, loss, kind="exact", mc_samples=1, seed=None, progress=False):
    """Eigenvalue-corrected K-FAC (EKFAC, George et al. 2018; curvlinops' ``EKFACLinearOperator``).

    Two passes over ``data``: :func:`kfac` for the eigenbases ``Q_G ⊗ Q_A``, then
    the curvature's diagonal in those bases from per-sample output-gradient
    columns ``uₙc = Jₙ(s_l)ᵀ Sₙ[:, c]`` (``Sₙ Sₙᵀ`` the output curvature of
    ``kind``: the GGN's Λₙ, sampled gradients, or the true-label gradient),
    ``S_l[i, j] = Σₙ Σ_c (q_G,iᵀ uₙc)² (q_A,jᵀ āₙ)²`` -- three GEMMs per layer and
    chunk of rows, never a per-sample Kronecker product.

    Parameters are those of :func:`kfac` (``kind`` in {"exact", "mc",
    "empirical"}; ``"mc"`` draws independent targets in the second pass).
    ``data`` must be an ``(X, y)`` tuple or a re-iterable collection of batches
    (it is read twice).

    Returns
    -------
    EKFACCurvature
        With ``kind="exact"`` its block is the exact GGN block's diagonal in the
        K-FAC eigenbasis, so ``‖GGN_l − EKFAC_l‖_F ≤ ‖GGN_l − KFAC_l‖_F``.
    """
    if kind not in _EKFAC_KINDS:
        raise ValueError(f"kind: expected one of {tuple(_EKFAC_KINDS)}, got {kind!r}")
    if iter(data) is data:
        raise TypeError("data: ekfac reads the data twice; pass an (X, y) tuple or a list of batches, "
                        "not an iterator")
    K = kfac(net, data, loss, kind=kind, mc_samples=mc_samples, seed=seed, progress=progress)
    net = _net(net)
    mc = _mc_samples(mc_samples)
    eig = K.eigh()
    scales = [np.zeros((o, i + 1), dtype=net.dtype) for i, o in zip(net.sizes[:-1], net.sizes[1:])]
    seeds = seed_stream(seed) if kind == "mc" else None
    batches = list(iter_batches(data))
    if seeds is not None:  # continue kfac's stream: independent targets
        for _ in batches:
            next(seeds)
    for X, y in batches:
        batch_seed = next(seeds) if seeds is not None else 0
        Sout = _core.output_stack(net, _EKFAC_KINDS[kind], X, y, loss, max(mc, 1), batch_seed)
        St = np.ascontiguousarray(Sout.transpose(0, 2, 1))
        Gs, As = _core.layer_jacobians(net, X)
        for l, (wG, QG, wA, QA) in enumerate(eig):
            scales[l] += _core.ekfac_scales(QG, QA, np.matmul(St, Gs[l]), As[l])
    E = EKFACCurvature(K.A, K.G, K.sizes, scales, num_data=K.num_data, kind=kind)
    E._eig = K._eig
    return E
