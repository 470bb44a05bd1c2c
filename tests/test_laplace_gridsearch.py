"""Laplace.optimize_prior_precision(method="gridsearch", loss=...) and metrics.brier:
the chosen prior is the argmin of the criterion recomputed by hand from
la.predictive over ALL validation rows (batched validation data included, which
matters for ECE: it is not a mean of per-batch values)."""
import numpy as np
import pytest

import pykfac as pk
from pykfac import metrics


def toy(likelihood, N=60, seed=0):
    rng = np.random.default_rng(seed)
    K = {"classification": 3, "binary": 1, "regression": 2}[likelihood]
    net = pk.MLP([2, 8, K], activation="tanh", seed=seed)
    X = rng.normal(size=(N, 2))
    if likelihood == "classification":
        y = rng.integers(0, 3, N)
    elif likelihood == "binary":
        y = rng.integers(0, 2, N).astype(np.float64)
    else:
        y = rng.normal(size=(N, 2))
    return net, X, y


GRID = [0.01, 0.1, 1.0, 10.0, 100.0]
FINE = list(np.logspace(-3, 3, 13))


def trained_classifier(binary=False):
    """A small classifier trained to ~90 % validation accuracy, where the criteria
    have interior minima on FINE (binary: one logit for class 0 against the rest)."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 2))
    y = (np.arctan2(X[:, 1], X[:, 0]) > 0).astype(int) + (X[:, 0] > 0.5)
    if binary:
        y = (y > 0).astype(np.float64)
    net = pk.MLP([2, 16, 1 if binary else 3], activation="tanh", seed=1)
    pk.train(net, pk.optim.Adam(net, "bce" if binary else "ce", lr=0.03), (X[:40], y[:40]), epochs=150,
             batch_size=40, progress=False)
    return net, X, y


def scores_by_hand(la, X, y, score, grid=GRID):
    values = []
    for p in grid:
        la.prior_precision = p
        values.append(score(la.predictive(X), y))
    return values


@pytest.mark.parametrize("loss, score", [("brier", metrics.brier), ("ece", metrics.ece), ("nll", metrics.nll)])
def test_classification_criteria_over_the_whole_validation_set(loss, score):
    net, X, y = trained_classifier()
    la = pk.Laplace(net, "classification", "full").fit((X[:40], y[:40]))
    Xv, yv = X[40:], y[40:]
    # uneven batches: a per-batch mean of ECE would differ from the ECE of all rows
    batches = [(Xv[:7], yv[:7]), (Xv[7:20], yv[7:20]), (Xv[20:], yv[20:])]
    values = scores_by_hand(la, Xv, yv, score, FINE)
    assert 0 < int(np.argmin(values)) < len(FINE) - 1  # an interior minimum
    la.prior_precision = 1.0
    la.optimize_prior_precision(method="gridsearch", val_data=batches, grid=FINE, loss=loss)
    assert la.prior_precision == FINE[int(np.argmin(values))]


def test_binary_brier_uses_the_labels_as_events():
    net, X, y = trained_classifier(binary=True)
    la = pk.Laplace(net, "binary", "diag").fit((X[:40], y[:40]))
    Xv, yv = X[40:], y[40:]
    values = []
    for p in FINE:
        la.prior_precision = p
        values.append(np.mean((la.predictive(Xv) - yv) ** 2))
    assert 0 < int(np.argmin(values)) < len(FINE) - 1
    la.prior_precision = 1.0
    la.optimize_prior_precision(method="gridsearch", val_data=(Xv, yv), grid=FINE, loss="brier")
    assert la.prior_precision == FINE[int(np.argmin(values))]


def test_callable_gets_all_rows_and_regression_gets_mean_and_variance():
    net, X, y = toy("regression", seed=2)
    la = pk.Laplace(net, "regression", "kron", sigma_noise=0.5).fit((X[:30], y[:30]))
    Xv, yv = X[30:], y[30:]
    seen = []

    def width_penalised_mse(out, target):
        mean, var = out
        seen.append((mean.shape, var.shape, target.shape))
        return float(np.mean((mean - target) ** 2) + 0.1 * np.mean(np.sqrt(var)))

    values, nll = [], []
    for p in GRID:
        la.prior_precision = p
        values.append(width_penalised_mse(la.predictive(Xv), yv))
        nll.append(metrics.gaussian_nll(*la.predictive(Xv), yv))
    assert np.argmin(values) != np.argmin(nll)  # the two criteria disagree here
    seen.clear()
    la.optimize_prior_precision(method="gridsearch", val_data=[(Xv[:10], yv[:10]), (Xv[10:], yv[10:])],
                                grid=GRID, loss=width_penalised_mse)
    assert seen == [((30, 2), (30, 2), (30, 2))] * len(GRID)
    assert la.prior_precision == GRID[int(np.argmin(values))]
    # the default is still the Gaussian NLL with sigma^2 in the variance
    la.optimize_prior_precision(method="gridsearch", val_data=(Xv, yv), grid=GRID)
    assert la.prior_precision == GRID[int(np.argmin(nll))]


def test_gridsearch_loss_errors():
    net, X, y = toy("regression")
    la = pk.Laplace(net, "regression", "diag").fit((X, y))
    with pytest.raises(ValueError, match="loss: 'ece' scores class probabilities"):
        la.optimize_prior_precision(method="gridsearch", val_data=(X, y), loss="ece")
    with pytest.raises(ValueError, match="loss: expected one of"):
        la.optimize_prior_precision(method="gridsearch", val_data=(X, y), loss="mae")
    with pytest.raises(TypeError, match="loss: expected 'nll', 'brier', 'ece' or a callable"):
        la.optimize_prior_precision(method="gridsearch", val_data=(X, y), loss=3)
    with pytest.raises(ValueError, match="loss: returned nan"):
        la.optimize_prior_precision(method="gridsearch", val_data=(X, y), loss=lambda out, t: float("nan"))
    before = la.prior_precision
    with pytest.raises(ValueError, match="loss"):
        la.optimize_prior_precision(method="gridsearch", val_data=(X, y), loss=lambda out, t: np.inf)
    assert la.prior_precision == before  # a failed search leaves the prior alone


def test_brier_score():
    P = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [1.0, 0.0, 0.0]])
    y = np.array([0, 1, 0])
    want = ((0.3 ** 2 + 0.2 ** 2 + 0.1 ** 2) + (0.1 ** 2 + 0.9 ** 2 + 0.8 ** 2) + 0.0) / 3
    assert metrics.brier(P, y) == pytest.approx(want, rel=1e-14)
    p = np.array([0.9, 0.2, 0.5])
    assert metrics.brier(p, np.array([1, 1, 0])) == pytest.approx((0.01 + 0.64 + 0.25) / 3, rel=1e-14)
    # the binary form equals the two-class form halved, and float32 is accepted
    assert metrics.brier(p.astype(np.float32), [1, 1, 0]) == pytest.approx(
        metrics.brier(np.stack([1 - p, p], 1), [1, 1, 0]) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="y: expected labels in"):
        metrics.brier(P, np.array([0, 3, 1]))
    with pytest.raises(ValueError, match="probs"):
        metrics.brier(np.array([[0.5, 1.5]]), [0])
    with pytest.raises(TypeError, match="y: expected integer labels"):
        metrics.brier(P, y.astype(float))
