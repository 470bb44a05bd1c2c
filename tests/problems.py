"""Small seeded problems shared by the Laplace / EKFAC test files: a [3, 5, 4, K]
network with random weights and matching targets for a loss."""
import numpy as np

import pykfac as pk


def small_problem(loss, N=30, seed=0, activation="tanh", dtype=np.float64):
    """(net, X, y): K = 1 for "bce", else 3; y real (mse), class indices (ce) or 0/1 (bce)."""
    rng = np.random.default_rng(seed)
    K = 1 if loss == "bce" else 3
    net = pk.MLP([3, 5, 4, K], activation=activation, seed=seed, dtype=dtype)
    net.theta = rng.normal(size=net.num_params) / 2
    X = rng.normal(size=(N, 3))
    if loss == "mse":
        y = rng.normal(size=(N, K))
    elif loss == "ce":
        y = rng.integers(0, K, size=N)
    else:
        y = rng.integers(0, 2, size=N).astype(float)
    return net, X, y
