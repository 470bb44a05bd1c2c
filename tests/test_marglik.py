"""Tests of pk.marglik_training (pykfac/marglik.py): its training part against
pk.optim.Adam on the stated objective, its hyperparameter steps against Adam
written out on the exact log Z gradient, best-model restoring, and noise
recovery on toy regression."""
import math

import numpy as np
import pytest

import pykfac as pk


def toy_regression(N=60, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    X = np.sort(rng.uniform(-3, 3, N))[:, None]
    return X, np.sin(2 * X) + noise * rng.normal(size=X.shape)


def toy_classification(N=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, 2))
    return X, (X[:, 0] + 0.5 * X[:, 1] ** 2 > 0.3).astype(np.int64) + (X[:, 1] > 1).astype(np.int64)


def test_training_is_adam_on_the_tempered_negative_log_joint():
    """Without marglik steps (frequency > epochs) the network is trained by
    Adam on the mean loss with weight decay P0 sigma^2 T / N, and the returned
    posterior is a fresh fit at the end with the initial hyperparameters."""
    X, y = toy_regression(N=30)
    net = pk.MLP([1, 8, 1], seed=1)
    ref = net.copy()
    la, out, margliks, losses = pk.marglik_training(net, (X, y), "regression", "full", n_epochs=25, lr=0.02,
                                                    prior_precision=0.5, sigma_noise=0.3, temperature=2.0,
                                                    marglik_frequency=100)
    assert out is net and margliks.size == 0 and losses.shape == (25,)
    opt = pk.optim.Adam(ref, "mse", 0.02, weight_decay=0.5 * 0.3 ** 2 * 2.0 / 30)
    hist = pk.train(ref, opt, (X, y), epochs=25, progress=False)
    np.testing.assert_array_equal(net.theta, ref.theta)
    np.testing.assert_array_equal(losses, hist["loss"])
    fresh = pk.Laplace(ref, "regression", "full", prior_precision=0.5, sigma_noise=0.3,
                       temperature=2.0).fit((X, y))
    assert la.log_marginal_likelihood() == fresh.log_marginal_likelihood()


@pytest.mark.parametrize("prior_structure", ["scalar", "layer"])
def test_hyper_steps_are_adam_on_the_exact_log_evidence_gradient(prior_structure):
    X, y = toy_regression(N=30)
    net = pk.MLP([1, 8, 1], seed=2)
    ref = net.copy()
    la, _, margliks, _ = pk.marglik_training(net, (X, y), "regression", "kron", n_epochs=1, lr=0.01,
                                             prior_structure=prior_structure, prior_precision=2.0,
                                             sigma_noise=0.5, lr_hyp=0.05, n_hypersteps=3)
    pk.train(ref, pk.optim.Adam(ref, "mse", 0.01, weight_decay=2.0 * 0.25 / 30), (X, y), progress=False)
    np.testing.assert_array_equal(net.theta, ref.theta)
    L = 2 if prior_structure == "layer" else 1
    x = np.log(np.r_[np.full(L, 2.0), 0.5])
    lr0 = pk.Laplace(ref, "regression", "kron", prior_precision=2.0 if L == 1 else np.full(L, 2.0),
                     sigma_noise=0.5).fit((X, y))
    m, v, want = np.zeros_like(x), np.zeros_like(x), []
    for t in range(1, 4):
        prior = np.exp(x[:L]) if L > 1 else float(np.exp(x[0]))
        gp, gs = lr0.log_marginal_likelihood_grad(prior, float(np.exp(x[L])))
        g = -np.r_[gp, gs]
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        x = x - 0.05 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        prior = np.exp(x[:L]) if L > 1 else float(np.exp(x[0]))
        want.append(lr0.log_marginal_likelihood(prior, float(np.exp(x[L]))))
    np.testing.assert_allclose(margliks, want, rtol=1e-13)
    np.testing.assert_allclose(la.prior_precision, np.exp(x[:L]) if L > 1 else np.exp(x[0]), rtol=1e-13)
    assert la.sigma_noise == pytest.approx(np.exp(x[L]), rel=1e-13)
    # the first Adam step moves every log hyperparameter by lr_hyp up its gradient
    g0 = np.r_[lr0.log_marginal_likelihood_grad(2.0 if L == 1 else np.full(L, 2.0), 0.5)[0],
               lr0.log_marginal_likelihood_grad(2.0 if L == 1 else np.full(L, 2.0), 0.5)[1]]
    assert np.all(np.sign(x - np.log(np.r_[np.full(L, 2.0), 0.5])) == np.sign(g0))


def test_the_best_model_is_restored():
    X, y = toy_classification()
    net = pk.MLP([2, 10, 3], activation="tanh", seed=0)
    la, net, margliks, losses = pk.marglik_training(net, (X, y), "classification", "kron", n_epochs=60,
                                                    lr=0.03, n_hypersteps=1, marglik_frequency=5,
                                                    n_epochs_burnin=10)
    assert margliks.shape == (11,)  # epochs 10, 15, ..., 60
    assert la.log_marginal_likelihood() == margliks.max()
    np.testing.assert_array_equal(la.mean, net.theta)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("structure", ["full", "kron"])
def test_recovers_the_noise_of_toy_regression(structure):
    """sin(2x) + 0.1 noise: the tuned sigma within 20 % of the truth."""
    X, y = toy_regression(N=80)
    net = pk.MLP([1, 20, 20, 1], activation="tanh", seed=0)
    la, *_ = pk.marglik_training(net, (X, y), "regression", structure, n_epochs=1500, lr=1e-2,
                                 marglik_frequency=100, n_epochs_burnin=200)
    assert abs(la.sigma_noise - 0.1) < 0.02
    assert abs(np.sqrt(np.mean((net(X) - y) ** 2)) - 0.1) < 0.03


def test_prior_structures_minibatches_and_fixed_sigma():
    X, y = toy_regression(N=40)
    net = pk.MLP([1, 6, 1], seed=3)
    la, *_ = pk.marglik_training(net, (X, y), "regression", "diag", n_epochs=4, batch_size=16,
                                 prior_structure="param", fix_sigma_noise=True, sigma_noise=0.2,
                                 marglik_frequency=2, n_hypersteps=2)
    assert np.shape(la.prior_precision) == (net.num_params,)
    assert la.sigma_noise == 0.2
    batches = [(X[:25], y[:25]), (X[25:], y[25:])]
    la2, *_ = pk.marglik_training(pk.MLP([1, 6, 1], seed=3), batches, "regression", "lowrank", n_epochs=3,
                                  n_hypersteps=1, optimizer="sgd", lr=1e-3)
    assert la2.n_data == 40 and la2.structure == "lowrank"


def test_argument_errors():
    X, y = toy_classification()
    net = pk.MLP([2, 4, 3], seed=0)
    before = net.theta.copy()
    cases = [
        (dict(likelihood="poisson"), ValueError, "likelihood"),
        (dict(structure="kron", prior_structure="param"), ValueError, "prior_structure"),
        (dict(prior_structure="layers"), ValueError, "prior_structure"),
        (dict(n_epochs=0), ValueError, "n_epochs"),
        (dict(n_hypersteps=-1), ValueError, "n_hypersteps"),
        (dict(marglik_frequency=0), ValueError, "marglik_frequency"),
        (dict(n_epochs_burnin=3), ValueError, "n_epochs_burnin: expected <= n_epochs"),
        (dict(fix_sigma_noise="no"), TypeError, "fix_sigma_noise"),
        (dict(lr_hyp=0), ValueError, "lr_hyp"),
        (dict(prior_precision=-1.0), ValueError, "prior_precision"),
        (dict(sigma_noise=2.0), ValueError, "sigma_noise: only regression"),
        (dict(optimizer="kfac"), ValueError, "optimizer"),
        (dict(subset="last_layer"), TypeError, "subset: set by marglik_training"),
    ]
    for kw, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            pk.marglik_training(net, (X, y), **{"structure": "kron", "n_epochs": 2, **kw})
    with pytest.raises(TypeError, match="net"):
        pk.marglik_training("net", (X, y))
    np.testing.assert_array_equal(net.theta, before)
    assert math.isfinite(pk.marglik_training(net, (X, y), n_epochs=1)[0].log_marginal_likelihood())
