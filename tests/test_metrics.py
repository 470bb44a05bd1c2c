"""pykfac.metrics against direct loop/closed-form references."""
import numpy as np
import pytest

import pykfac as pk
from pykfac import metrics


def _probs(rng, n, c):
    f = 3 * rng.normal(size=(n, c))
    p = np.exp(f - f.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def _ece_loop(p, y, bins):
    conf, correct = p.max(1), p.argmax(1) == y
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        m = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
        if m.any():
            total += m.sum() / len(y) * abs(correct[m].mean() - conf[m].mean())
    return total


@pytest.mark.parametrize("bins", [1, 2, 15, 40])
def test_ece_and_reliability_match_a_loop(bins):
    rng = np.random.default_rng(bins)
    p, y = _probs(rng, 500, 7), rng.integers(0, 7, 500)
    assert metrics.ece(p, y, bins) == pytest.approx(_ece_loop(p, y, bins), abs=1e-14)
    conf, acc, count = metrics.reliability(p, y, bins)
    assert count.sum() == 500 and len(conf) == bins
    for b in np.flatnonzero(count):
        lo, hi = b / bins, (b + 1) / bins
        m = (p.max(1) > lo) & (p.max(1) <= hi)
        assert count[b] == m.sum()
        assert conf[b] == pytest.approx(p.max(1)[m].mean())
        assert acc[b] == pytest.approx((p.argmax(1) == y)[m].mean())
    assert np.all(np.isnan(conf[count == 0]))


def test_perfectly_calibrated_and_overconfident():
    # confidence 0.75 everywhere, right 3 times out of 4: calibrated
    p = np.tile([0.75, 0.25], (400, 1))
    y = np.array([0, 0, 0, 1] * 100)
    assert metrics.ece(p, y) == pytest.approx(0.0, abs=1e-15)
    assert metrics.accuracy(p, y) == 0.75
    # confidence 1 but right half of the time: ECE = 0.5
    p = np.tile([1.0, 0.0], (10, 1))
    y = np.array([0, 1] * 5)
    assert metrics.ece(p, y) == pytest.approx(0.5)


def test_nll_closed_form_and_clipping():
    rng = np.random.default_rng(0)
    p, y = _probs(rng, 50, 4), rng.integers(0, 4, 50)
    assert metrics.nll(p, y) == pytest.approx(-np.mean(np.log(p[np.arange(50), y])), rel=1e-14)
    assert metrics.nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-np.log(1e-12))


def test_binary_probabilities_are_widened():
    q = np.array([0.9, 0.2, 0.6, 0.4])
    y = np.array([1, 0, 0, 1])
    wide = np.stack([1 - q, q], 1)
    assert metrics.accuracy(q, y) == metrics.accuracy(wide, y) == 0.5
    assert metrics.nll(q, y) == metrics.nll(wide, y)
    assert metrics.ece(q, y) == metrics.ece(wide, y)
    assert metrics.nll(q, y.astype(bool)) == metrics.nll(q, y)


def test_gaussian_nll_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    m, v, y = rng.normal(size=(30, 2)), rng.uniform(0.1, 2, (30, 2)), rng.normal(size=(30, 2))
    ref = -stats.norm.logpdf(y, m, np.sqrt(v)).sum(1).mean()
    assert metrics.gaussian_nll(m, v, y) == pytest.approx(ref, rel=1e-13)
    # (N,) targets against (N, 1) predictive arrays
    assert metrics.gaussian_nll(m[:, :1], v[:, :1], y[:, 0]) == pytest.approx(
        -stats.norm.logpdf(y[:, 0], m[:, 0], np.sqrt(v[:, 0])).mean(), rel=1e-13)


@pytest.mark.parametrize("probs, y, exc, text", [
    (np.ones((3, 2)) / 2, np.array([0, 1]), ValueError, "y: expected shape (3,)"),
    (np.ones((3, 2)) / 2, np.array([0, 1, 2]), ValueError, "y: expected labels in [0, 1]"),
    (np.ones((3, 2)) / 2, np.array([0, -1, 1]), ValueError, "y: expected labels"),
    (np.ones((3, 2)) / 2, np.array([0.0, 1.0, 1.0]), TypeError, "y: expected integer labels"),
    (np.array([[0.5, np.nan]]), np.array([0]), ValueError, "probs: expected finite"),
    (np.array([[1.5, -0.5]]), np.array([0]), ValueError, "probs: expected finite probabilities in [0, 1]"),
    (np.ones((2, 1)), np.array([0, 0]), ValueError, "probs: expected shape"),
    (np.ones((0, 3)), np.zeros(0, int), ValueError, "probs: expected shape"),
    (np.array([["a", "b"]]), np.array([0]), TypeError, "probs: expected a float"),
])
def test_bad_input(probs, y, exc, text):
    for fn in (metrics.accuracy, metrics.nll, metrics.ece, metrics.reliability):
        with pytest.raises(exc) as info:
            fn(probs, y)
        assert text in str(info.value)


def test_bad_bins_and_variances():
    p, y = np.ones((2, 2)) / 2, np.array([0, 1])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n_bins"):
            metrics.ece(p, y, bad)
    with pytest.raises(ValueError, match="var: expected variances > 0"):
        metrics.gaussian_nll(np.zeros((2, 1)), np.zeros((2, 1)), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="equal shapes"):
        metrics.gaussian_nll(np.zeros((2, 1)), np.ones((3, 1)), np.zeros((2, 1)))


def test_inputs_untouched_and_exported():
    rng = np.random.default_rng(2)
    p, y = _probs(rng, 20, 3).astype(np.float32), rng.integers(0, 3, 20)
    p0, y0 = p.copy(), y.copy()
    metrics.ece(p, y), metrics.nll(p, y), metrics.reliability(p, y)
    assert np.array_equal(p, p0) and np.array_equal(y, y0)
    assert pk.metrics is metrics
