"""Scores of predictive distributions: accuracy, negative log-likelihood, Brier
score, expected calibration error and reliability-diagram bins.

``probs`` is what :meth:`pykfac.Laplace.predictive` returns for classification
(an (N, C) array of class probabilities) or for the binary likelihood (an (N,)
array of P(y = 1)); ``y`` holds integer labels. These are cheap O(N C)
reductions over arrays the C core produced, so they stay in NumPy.
"""
import numpy as np

__all__ = ["accuracy", "nll", "brier", "ece", "reliability", "gaussian_nll"]


def _probs_and_labels(probs, y):
    """(P (N, C) float64, y (N,) int64) with a binary (N,) input widened to 2 columns."""
    P = np.asarray(probs)
    if P.dtype.kind not in "fiu" or P.dtype == np.float16:
        raise TypeError(f"probs: expected a float32 or float64 array, got dtype {P.dtype}")
    P = P.astype(np.float64, copy=False)
    if P.ndim == 1:
        P = np.stack([1.0 - P, P], axis=1)
    if P.ndim != 2 or P.shape[0] == 0 or P.shape[1] < 2:
        raise ValueError(f"probs: expected shape (N,) or (N, C) with N >= 1 and C >= 2, "
                         f"got {np.shape(probs)}")
    if not np.all(np.isfinite(P)) or P.min() < 0 or P.max() > 1:
        raise ValueError("probs: expected finite probabilities in [0, 1]")
    Y = np.asarray(y)
    if Y.dtype == bool:
        Y = Y.astype(np.int64)
    if Y.dtype.kind not in "iu":
        raise TypeError(f"y: expected integer labels, got dtype {Y.dtype}")
    if Y.shape != (P.shape[0],):
        raise ValueError(f"y: expected shape ({P.shape[0]},), got {Y.shape}")
    if Y.min() < 0 or Y.max() >= P.shape[1]:
        raise ValueError(f"y: expected labels in [0, {P.shape[1] - 1}], "
                         f"got range [{Y.min()}, {Y.max()}]")
    return P, Y.astype(np.int64)


def accuracy(probs, y):
    """Fraction of rows whose most probable class is ``y`` (binary: P(y=1) > 1/2)."""
    P, Y = _probs_and_labels(probs, y)
    return float(np.mean(P.argmax(axis=1) == Y))


def nll(probs, y, eps=1e-12):
    r"""Mean negative log-likelihood :math:`-\frac1N\sum_n \log p_{n, y_n}`.

    Probabilities below ``eps`` count as ``eps``, so one confident mistake
    costs at most :math:`-\log \epsilon \approx 27.6` instead of infinity."""
    P, Y = _probs_and_labels(probs, y)
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"eps: expected a real number, got {type(eps).__name__}")
    if not 0 < eps < 1:
        raise ValueError(f"eps: expected a number in (0, 1), got {eps!r}")
    return float(-np.mean(np.log(np.maximum(P[np.arange(len(Y)), Y], eps))))


def brier(probs, y):
    r"""Brier score :math:`\frac1N\sum_n\sum_c (p_{nc} - [y_n = c])^2` (Brier 1950, summed
    over the classes); for binary (N,) probabilities :math:`\frac1N\sum_n (p_n - y_n)^2`.
    0 for certain correct predictions, at most 2 (binary: 1)."""
    P, Y = _probs_and_labels(probs, y)
    R = P.copy()
    R[np.arange(len(Y)), Y] -= 1.0
    score = float(np.mean(np.sum(R ** 2, axis=1)))
    # the widened binary pair counts (p - y)^2 twice
    return score / 2 if np.ndim(probs) == 1 else score


def reliability(probs, y, n_bins=15):
    """Reliability-diagram bins over the confidence ``max_c p_c``.

    Bins are the ``n_bins`` equal-width intervals (lo, hi] of [0, 1] (the first
    one also takes 0). Returns ``(confidence, accuracy, count)``, each of
    length ``n_bins``: the mean confidence and the accuracy of the rows in the
    bin (NaN for an empty bin) and the number of rows."""
    P, Y = _probs_and_labels(probs, y)
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins: expected a positive int, got {n_bins!r}")
    conf = P.max(axis=1)
    correct = (P.argmax(axis=1) == Y).astype(np.float64)
    # (lo, hi] bins: ceil(conf * n_bins) - 1, with conf = 0 in the first bin
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        mean_acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return mean_conf, mean_acc, count


def ece(probs, y, n_bins=15):
    r"""Expected calibration error :math:`\sum_b \frac{|B_b|}{N}\,|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)|`
    over the :func:`reliability` bins (15 equal-width bins, as in Guo et al. 2017)."""
    conf, acc, count = reliability(probs, y, n_bins)
    full = count > 0
    return float(np.sum(count[full] * np.abs(acc[full] - conf[full])) / count.sum())


def gaussian_nll(mean, var, y):
    r"""Mean negative log-likelihood of targets under independent Gaussians,
    :math:`\frac1N\sum_{n,k} \tfrac12\log(2\pi v_{nk}) + \frac{(y_{nk}-m_{nk})^2}{2 v_{nk}}`
    (summed over the K outputs, averaged over the N rows). ``(mean, var)`` is
    what the regression predictive returns; ``var`` must be > 0."""
    arrays = []
    for name, value in (("mean", mean), ("var", var), ("y", y)):
        arr = np.asarray(value)
        # complex, object, str, bool: no silent conversion to float
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"{name}: expected a real array, got dtype {arr.dtype}")
        arrays.append(arr.astype(np.float64, copy=False))
    M, V, Y = arrays
    # (N,) stands for (N, 1); any other difference in shape is an error
    M, V, Y = (a[:, None] if a.ndim == 1 else a for a in (M, V, Y))
    if M.ndim != 2 or V.shape != M.shape or Y.shape != M.shape or M.shape[0] == 0:
        raise ValueError(f"mean, var, y: expected equal shapes (N, K) with N >= 1, got "
                         f"{np.shape(mean)}, {np.shape(var)}, {np.shape(y)}")
    if not (np.all(np.isfinite(M)) and np.all(np.isfinite(V)) and np.all(np.isfinite(Y))):
        raise ValueError("mean, var, y: expected finite values")
    if V.min() <= 0:
        raise ValueError("var: expected variances > 0")
    terms = 0.5 * np.log(2 * np.pi * V) + 0.5 * (Y - M) ** 2 / V
    return float(terms.sum(axis=1).mean())
